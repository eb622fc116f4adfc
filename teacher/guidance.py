"""Turning the teacher's outputs into guidance for the learner (GTR-Turbo, DESIGN.md section 2).

KL: one teacher forward over the same prompt, image and the student's exactly sampled response
tokens (the published code passed no image, shifted by one token and re-serialised the JSON) gives
the teacher's log-prob of every sampled token. The learner turns them into the per-step penalty (the
mean clipped k1 over thought tokens, core/kl.py) against its own log-probs of the same tokens, so the
student side is the learner's policy, not the rollout engine's numerics (issue 17).

SFT: the teacher answers the same prompt; its thoughts with the student's own action put back form
a label whose loss covers only the thought tokens (the action is context, "masked").
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from core.answer import PromptSpec
from core.batch import SFTLabel, Transition
from models.engines.base import SamplingParams, prompt_input
from models.tokenizer import token_char_spans


def teacher_logprobs(
    teacher, transitions: Sequence[Transition], temperature: float, micro_batch: int = 16
) -> list[list[float]]:
    """The teacher's log-prob of every sampled response token, one list per transition."""
    out: list[list[float]] = []
    for start in range(0, len(transitions), micro_batch):
        chunk = transitions[start : start + micro_batch]
        out.extend(
            teacher.score([prompt_input(t.observation) for t in chunk], [t.response_ids for t in chunk], temperature)
        )
    return out


def sft_labels(
    teacher, transitions: Sequence[Transition], spec: PromptSpec, sampling: SamplingParams
) -> list[SFTLabel]:
    """Teacher thoughts + the student's action for each step the teacher answered in the right shape."""
    generations = teacher.generate([prompt_input(t.observation) for t in transitions], sampling, spec)
    tokenizer = teacher.engine.processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = []
    for transition, gen in zip(transitions, generations, strict=True):
        key = gen.parsed.action_key_start if gen.parsed else None
        if key is None or not gen.text[:key].strip():
            continue  # nothing usable: no thoughts before an action key
        action = spec.actions[transition.action] if spec.actions is not None else str(transition.action)
        text = gen.text[:key] + f'"action": {json.dumps(action)}}}'
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [end]
        _, spans = token_char_spans(tokenizer, ids)
        mask = [end_char <= key and end_char > start for start, end_char in spans]
        labels.append(SFTLabel(transition.observation, ids, mask))
    return labels
