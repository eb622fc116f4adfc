import json

import pytest
import torch

from actors.rollout import RolloutSettings, RolloutWorker
from configs import load_config
from core.answer import parse_response
from core.kl import thought_kl
from core.ties import ties_merge
from envs.tasks import spec_for
from models.embedded import fingerprint
from models.engines.base import SamplingParams
from models.engines.hf import HFEngine
from models.loading import load_vlm
from models.lora import LoraSettings, adapter_state, add_lora, lora_deltas
from teacher.guidance import sft_labels, teacher_logprobs
from teacher.teacher import Teacher

LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)


def _adapter(seed: int) -> dict[str, torch.Tensor]:
    model, _ = load_vlm("embedded:xs")
    policy = add_lora(model, LORA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
    return adapter_state(policy)


def _teacher(tmp_path, *overrides, folder="buffer"):
    cfg = load_config(None, list(overrides)).teacher
    return Teacher(cfg, "embedded:xs", LORA, tmp_path / folder)


def test_weights_change_with_every_checkpoint_and_equal_the_ties_merge(tmp_path):
    teacher = _teacher(tmp_path, "teacher.density=0.5")
    prints = [fingerprint(teacher.engine.model)]
    adapters = [_adapter(i) for i in range(3)]
    for version, adapter in enumerate(adapters, start=1):
        teacher.add_checkpoint(adapter, version)
        prints.append(fingerprint(teacher.engine.model))
        assert teacher.merged_version == version
    assert len(set(prints)) == 4  # the published code's teacher froze after the first merge
    module = "model.language_model.layers.1.mlp.down_proj"
    stacked = torch.stack([lora_deltas(a, LORA.scaling)[module] for a in adapters])
    expected = teacher.engine.merged.base[module] + ties_merge(stacked, torch.full((3,), 1 / 3), 0.5)
    assert torch.allclose(teacher.engine.model.get_submodule(module).weight, expected, atol=1e-6)


def test_rebuilt_from_disk_chunked_interval_and_eviction(tmp_path):
    teacher = _teacher(tmp_path, "teacher.merge_interval=2", "teacher.max_checkpoints=2")
    base = fingerprint(teacher.engine.model)
    teacher.add_checkpoint(_adapter(0), 1)
    assert fingerprint(teacher.engine.model) == base and teacher.merged_version == 0  # waits for the 2nd
    teacher.add_checkpoint(_adapter(1), 2)
    teacher.add_checkpoint(_adapter(2), 3)
    teacher.add_checkpoint(_adapter(3), 4)
    assert teacher.buffer.versions() == [3, 4] and teacher.merged_version == 4
    rebuilt = _teacher(tmp_path, "teacher.max_checkpoints=2")  # the same folder
    assert rebuilt.merged_version == 4
    for name in teacher.engine.merged.base:
        assert torch.allclose(
            teacher.engine.model.get_submodule(name).weight, rebuilt.engine.model.get_submodule(name).weight, atol=1e-6
        )


def test_static_initial_reference_never_changes(tmp_path):
    teacher = _teacher(tmp_path, "teacher.reference=initial")
    base = fingerprint(teacher.engine.model)
    teacher.add_checkpoint(_adapter(0), 1)
    assert fingerprint(teacher.engine.model) == base and teacher.buffer.versions() == []


def test_linear_merge_is_the_weighted_mean(tmp_path):
    teacher = _teacher(tmp_path, "teacher.merge=linear", "teacher.weights=ema")
    adapters = [_adapter(i) for i in range(3)]
    for version, adapter in enumerate(adapters, start=1):
        teacher.add_checkpoint(adapter, version)
    module = "model.language_model.layers.0.self_attn.q_proj"
    deltas = [lora_deltas(a, LORA.scaling)[module] for a in adapters]
    expected = teacher.engine.merged.base[module] + 0.25 * deltas[0] + 0.25 * deltas[1] + 0.5 * deltas[2]
    assert torch.allclose(teacher.engine.model.get_submodule(module).weight, expected, atol=1e-6)


def _rollout(adapter, k=3, rounds=2):
    cfg = load_config(None, ["env.id=gym_cards/NumberLine-v0", "env.obs_mode=image"]).env
    engine = HFEngine("embedded:xs", LORA, seed=0)
    engine.load_adapter(adapter, 1)
    sampling = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=16)
    return RolloutWorker(cfg, engine, RolloutSettings(num_envs=k, sampling=sampling), seed=0).sample(rounds)


def _kl(teacher, transitions):
    """Per-step thought KL of the rollout's own log-probs against the teacher's (what the learner does)."""
    theirs = teacher_logprobs(teacher, transitions, temperature=1.0)
    assert [len(lp) for lp in theirs] == [len(t.response_ids) for t in transitions]
    width = max(len(t.response_ids) for t in transitions)

    def padded(rows, dtype=torch.float32):
        return torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], dtype=dtype)

    thought = padded([t.thought_mask for t in transitions], torch.bool)
    return thought_kl(padded([t.old_logprobs for t in transitions]), padded(theirs), thought).tolist()


def test_kl_is_zero_when_the_teacher_is_the_student(tmp_path):
    adapter = _adapter(7)
    batch = _rollout(adapter)
    teacher = _teacher(tmp_path, "teacher.density=1.0")
    teacher.add_checkpoint(adapter, 1)  # one checkpoint, nothing trimmed: the teacher is the student
    penalties = _kl(teacher, batch.transitions)
    assert len(penalties) == batch.env_steps and max(penalties) < 1e-5
    fresh = _teacher(tmp_path, folder="other")  # the base model: a different policy
    assert max(_kl(fresh, batch.transitions)) > 1e-3


def test_sft_labels_keep_teacher_thoughts_and_the_students_action(tmp_path):
    spec = spec_for("gym_cards/NumberLine-v0")
    batch = _rollout(_adapter(3), k=2, rounds=1)

    class ScriptedTeacher:  # a teacher that answers in the right shape, on the real tokenizer
        engine = HFEngine("embedded:xs", LORA)

        def generate(self, prompts, sampling, spec):
            from tests.actors.scripted import ScriptedEngine

            text = json.dumps({"current number": 1, "target number": 3, "thoughts": "go right", "action": "+"})
            return ScriptedEngine(lambda p: text).generate(prompts, sampling, spec)

    labels = sft_labels(ScriptedTeacher(), batch.transitions, spec, SamplingParams())
    assert len(labels) == 2
    tok = ScriptedTeacher.engine.processor.tokenizer
    for label, t in zip(labels, batch.transitions, strict=True):
        text = tok.decode(label.token_ids, skip_special_tokens=True)
        parsed = parse_response(text, spec)
        assert parsed.thoughts == "go right" and parsed.action == t.action  # the student's action
        masked = tok.decode([i for i, m in zip(label.token_ids, label.loss_mask, strict=True) if m])
        assert "go right" in masked and '"action"' not in masked


@pytest.mark.gpu
def test_a_teacher_on_cuda_merges_there_to_the_cpu_teachers_weights(tmp_path):
    cfg = load_config(None, ["teacher.density=0.5"]).teacher
    on_cpu = Teacher(cfg, "embedded:xs", LORA, tmp_path / "cpu")
    on_gpu = Teacher(cfg, "embedded:xs", LORA, tmp_path / "gpu", device="cuda")
    for version in (1, 2, 3):
        adapter = _adapter(version)
        on_cpu.add_checkpoint(adapter, version)
        on_gpu.add_checkpoint(adapter, version)
    for name, weight in on_cpu.engine.model.named_parameters():
        other = on_gpu.engine.model.get_parameter(name)
        assert other.device.type == "cuda"
        # Entries within round-off of a trim threshold may be kept on one device only.
        assert torch.isclose(other.cpu(), weight, atol=1e-4).float().mean() > 0.999, name


def test_a_damaged_buffer_file_is_an_error_naming_it_and_copies_are_independent(tmp_path):
    from teacher.buffer import CheckpointBuffer

    buffer = CheckpointBuffer(tmp_path / "buffer")
    buffer.add(1, _adapter(0))
    buffer.copy_into(tmp_path / "snapshot")
    damaged = tmp_path / "buffer" / "adapter-00000001.safetensors"
    damaged.write_bytes(b"\0" * 4)
    with pytest.raises(OSError, match=f"cannot read teacher checkpoint {damaged}: "):
        buffer.load(1)
    assert set(CheckpointBuffer(tmp_path / "snapshot").load(1)) == set(_adapter(0))  # the copy is whole


@pytest.mark.parametrize("merge", ["ties", "linear"])
def test_copies_of_one_checkpoint_merge_to_that_checkpoint(tmp_path, merge):
    """A merge is a policy: k identical checkpoints, untrimmed, are served as exactly that checkpoint
    (issue 18's check of a teacher that played far worse than what it merged)."""
    adapter = _adapter(3)
    student = HFEngine("embedded:xs", LORA, seed=0)
    student.load_adapter(adapter, 1)
    teacher = _teacher(tmp_path, f"teacher.merge={merge}", "teacher.density=1.0")
    for version in (1, 2, 3):
        teacher.add_checkpoint(adapter, version)
    for name in teacher.engine.merged.base:
        assert torch.allclose(
            teacher.engine.model.get_submodule(name).weight, student.model.get_submodule(name).weight, atol=1e-6
        ), name
