"""vLLM's Qwen2.5-VL as our policy: images only, and the ids a policy never writes left out of its
logits. Loaded inside vLLM only (registered by models/engines/vllm_plugin.py), so it imports vLLM at the
top; the vLLM engine selects it through ``hf_overrides`` (models/engines/vllm.py).

- **Never-written ids.** The transformers engine and the learner drop the vision placeholder ids and the
  padded embedding rows (ids >= the tokenizer's length) from every distribution they sample or score
  (models.scoring, ``VLProcessor.banned_token_ids`` and ``vocab_size``). Doing the same here, on the
  logits, makes vLLM agree with them in both of its paths: sampled-token log-probs (after temperature
  and top-k) and prompt log-probs (the scoring path, which no sampling option reaches; a logit bias would
  only reach the first).
- **Images only.** The stock processor loads a video processor, which needs torchvision (not installed
  beside the CPU torch: README, "vLLM"); our prompts never hold a video.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from models.engines.vllm_plugin import NEVER_WRITTEN, WRITABLE_VOCAB


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without a video processor. transformers takes a processor's parts from its
    ``__init__`` signature, so ``from_pretrained`` loads only the image processor and the tokenizer."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
        self.video_processor = None


class ImageOnlyProcessingInfo(Qwen2_5_VLProcessingInfo):
    def get_hf_processor(self, **kwargs: object) -> ImageOnlyProcessor:
        return self.ctx.get_hf_processor(ImageOnlyProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2_5_VLMultiModalProcessor, info=ImageOnlyProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class PolicyQwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        self._never = [int(t) for t in getattr(config, NEVER_WRITTEN, None) or []]
        self._writable = getattr(config, WRITABLE_VOCAB, None)
        self._never_index: torch.Tensor | None = None  # on the logits' device, made at the first call

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)  # (N, V): a fresh tensor
        if logits is None:
            return None
        if self._never:
            if self._never_index is None or self._never_index.device != logits.device:
                self._never_index = torch.tensor(self._never, dtype=torch.long, device=logits.device)
            logits.index_fill_(-1, self._never_index, float("-inf"))
        if self._writable is not None and self._writable < logits.shape[-1]:
            logits[..., self._writable :] = float("-inf")
        return logits
