"""A PolicyEngine that answers like the scripted expert (or writes garbage), for rollout tests."""

from __future__ import annotations

from actors.engines.base import Generation, finish
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
