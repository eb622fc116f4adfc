"""A PolicyEngine that answers like the scripted expert (or writes garbage), for rollout tests."""

from __future__ import annotations

from models.engines.base import Generation, finish
from models.loading import load_processor


class ScriptedEngine:
    """Answers with ``answer_for(prompt)``; log-probs are -0.5 per token so sums are checkable."""

    def __init__(self, answer_for):
        self.processor = load_processor("embedded:xs")
        self.answer_for = answer_for
        self.adapter_version = 0
        self.calls = 0

    def generate(self, prompts, sampling, spec=None):
        self.calls += 1
        tok = self.processor.tokenizer
        end = tok.convert_tokens_to_ids("<|im_end|>")
        out = []
        for prompt in prompts:
            ids = tok(self.answer_for(prompt), add_special_tokens=False)["input_ids"] + [end]
            out.append(finish(Generation([1, 2, 3], ids, [-0.5] * len(ids), "", []), tok, spec))
        return out

    def score(self, prompts, responses, temperature):
        return [[-0.5] * len(r) for r in responses]

    def load_adapter(self, adapter, version):
        self.adapter_version = version


def random_adapter(settings, seed: int) -> dict:
    """A LoRA state dict for embedded:xs with every factor drawn from N(0, 0.3) (B too: a visible update)."""
    import torch

    from models.loading import load_vlm
    from models.lora import adapter_state, add_lora

    model, _ = load_vlm("embedded:xs")
    policy = add_lora(model, settings)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    return adapter_state(policy)
