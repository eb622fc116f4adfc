"""The project's vLLM plugin: vLLM runs ``register`` in each of its processes (the ``vllm.general_plugins``
entry point in pyproject.toml), before it resolves a model.

It does four things, and only inside vLLM's processes:
1. Registers ``POLICY_ARCHITECTURE``: vLLM's Qwen2.5-VL whose logits leave out the ids a policy never
   writes (models/engines/vllm_model.py). The vLLM engine asks for it through ``hf_overrides``, so any
   other use of vLLM in the same environment is untouched.
2. Without torchvision (the CPU build is installed without it: README, "vLLM"), vLLM's
   Qwen2-VL module still imports ``smart_resize`` from transformers' torchvision image processor module.
   The same function (identical source) lives in the PIL image processor module; this makes the
   torchvision module's name resolve to a module holding just that function. Where torchvision is
   installed (vLLM's GPU build), nothing is changed.
3. On vLLM's CPU build, replaces its LoRA ops with ones that take one matmul when a single adapter serves
   the batch (models/engines/vllm_cpu_lora.py; ``GTR_VLLM_FAST_CPU_LORA=0`` keeps vLLM's).
4. Makes each process vLLM starts die with its parent. Seen here: after SIGTERM to a script holding an
   engine, vLLM's engine-core and worker processes lived on as orphans with 4.5 GB; a rollout actor that
   Ray kills would leave the same behind.
"""

from __future__ import annotations

import ctypes
import importlib.util
import multiprocessing
import os
import signal
import sys
import types

POLICY_ARCHITECTURE = "GTRPolicyQwen2_5_VLForConditionalGeneration"
POLICY_MODEL_CLASS = "models.engines.vllm_model:PolicyQwen2_5_VL"
NEVER_WRITTEN = "gtr_never_written_token_ids"  # hf_overrides key: ids left out of the logits
WRITABLE_VOCAB = "gtr_writable_vocab_size"  # hf_overrides key: ids from here on are left out (padded rows)
FAST_CPU_LORA = "GTR_VLLM_FAST_CPU_LORA"  # "0": keep vLLM's own CPU LoRA ops (for before/after timing)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
TORCHVISION_IMAGE_PROCESSING = "transformers.models.qwen2_vl.image_processing_qwen2_vl"


def register() -> None:
    die_with_parent()
    smart_resize_without_torchvision()
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    ModelRegistry.register_model(POLICY_ARCHITECTURE, POLICY_MODEL_CLASS)
    if current_platform.is_cpu() and os.environ.get(FAST_CPU_LORA, "1") != "0":
        from models.engines import vllm_cpu_lora

        vllm_cpu_lora.install()


def die_with_parent() -> None:
    """In a process vLLM started (a multiprocessing child), ask Linux for SIGKILL when its parent dies. Our own
    processes (a script, a Ray actor) are not multiprocessing children and are left alone."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return  # not permitted here: vLLM's own shutdown still runs when the parent exits cleanly
    if os.getppid() != parent.pid:  # the parent died before the request took effect
        os._exit(1)


def smart_resize_without_torchvision() -> None:
    """Make ``from transformers...image_processing_qwen2_vl import smart_resize`` work without torchvision."""
    if importlib.util.find_spec("torchvision") is not None or TORCHVISION_IMAGE_PROCESSING in sys.modules:
        return
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    module = types.ModuleType(TORCHVISION_IMAGE_PROCESSING, "smart_resize only: torchvision is not installed")
    module.smart_resize = smart_resize
    sys.modules[TORCHVISION_IMAGE_PROCESSING] = module
