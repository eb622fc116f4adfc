"""The project's vLLM plugin: vLLM runs ``register`` in each of its processes (the ``vllm.general_plugins``
entry point in pyproject.toml), before it resolves a model.

It does two things, and only inside vLLM's processes:
1. Registers ``POLICY_ARCHITECTURE``: vLLM's Qwen2.5-VL whose logits leave out the ids a policy never
   writes (actors/engines/vllm_model.py). The vLLM engine asks for it through ``hf_overrides``, so any
   other use of vLLM in the same environment is untouched.
2. Without torchvision (the CPU build is installed without it: README, "vLLM on this CPU"), vLLM's
   Qwen2-VL module still imports ``smart_resize`` from transformers' torchvision image processor module.
   The same function (identical source) lives in the PIL image processor module; this makes the
   torchvision module's name resolve to a module holding just that function. Where torchvision is
   installed (vLLM's GPU build), nothing is changed.
"""

from __future__ import annotations

import importlib.util
import sys
import types

POLICY_ARCHITECTURE = "GTRPolicyQwen2_5_VLForConditionalGeneration"
POLICY_MODEL_CLASS = "actors.engines.vllm_model:PolicyQwen2_5_VL"
NEVER_WRITTEN = "gtr_never_written_token_ids"  # hf_overrides key: ids left out of the logits
WRITABLE_VOCAB = "gtr_writable_vocab_size"  # hf_overrides key: ids from here on are left out (padded rows)
TORCHVISION_IMAGE_PROCESSING = "transformers.models.qwen2_vl.image_processing_qwen2_vl"


def register() -> None:
    smart_resize_without_torchvision()
    from vllm import ModelRegistry

    ModelRegistry.register_model(POLICY_ARCHITECTURE, POLICY_MODEL_CLASS)


def smart_resize_without_torchvision() -> None:
    """Make ``from transformers...image_processing_qwen2_vl import smart_resize`` work without torchvision."""
    if importlib.util.find_spec("torchvision") is not None or TORCHVISION_IMAGE_PROCESSING in sys.modules:
        return
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    module = types.ModuleType(TORCHVISION_IMAGE_PROCESSING, "smart_resize only: torchvision is not installed")
    module.smart_resize = smart_resize
    sys.modules[TORCHVISION_IMAGE_PROCESSING] = module
