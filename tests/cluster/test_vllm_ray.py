"""The whole system on vLLM (markers ``ray`` and ``vllm``): Ray rollout actors serve the policy through vLLM
(its CPU build here), the learner publishes LoRA versions that vLLM hot-loads, the teacher runs on the
transformers engine, and a vLLM engine that dies mid-run is replaced like any failed role."""

from __future__ import annotations

import time

import psutil
import pytest

from cluster import launch
from configs import load_config
from models.engines.base import prompt_input
from tests.cluster.tiny import RAY, TINY

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]  # about 2 minutes here

VLLM = [
    "policy.engine=vllm",
    "policy.top_k=0",  # log-probs over the whole vocabulary, comparable with the transformers engine's
    "train.num_workers=2",
    "train.iterations=3",
    "teacher.guidance=kl",
    "eval.episodes=2",
    "eval.num_envs=2",
]


def _vllm_processes() -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        text = f"{proc.info['name']} {' '.join(proc.info['cmdline'] or [])}"
        if "VLLM" in text and proc.info["status"] != psutil.STATUS_ZOMBIE:
            alive.append(proc)
    return alive


def test_rollout_actors_sample_every_published_version_through_vllm_and_survive_its_death(cluster, tmp_path):
    from cluster.settings import lora_settings
    from models.engines.hf import HFEngine

    cfg = load_config(None, [*TINY, *RAY, *VLLM, f"run_dir={tmp_path}"])
    seen, killed = [], []

    def hook(phase, index, trainer):
        if phase == "sample" and index == 3:  # rollout-1's vLLM dies: its engine-core and worker processes
            pid = trainer.system.rollouts[1].call("ready").result()["pid"]
            children = psutil.Process(pid).children(recursive=True)
            assert children  # all vLLM's: the actor itself starts no process
            for child in children:
                child.kill()
            killed.extend(children)
        if phase == "score":  # the batches are in; the adapter they were sampled with is the published one
            published = trainer.published
            adapter = ray.get(published.adapter) if published is not None else None
            seen.append((index, published.version if published else 0, adapter, list(trainer.batches)))

    last = launch.run(cfg, log=lambda _: None, hook=hook)
    assert killed and last["rollout/restarts"] == 1  # the dead engine's actor was replaced, once
    assert [(index, version) for index, version, _, _ in seen] == [(1, 0), (2, 1), (3, 2)]
    assert last["rollout/policy_version"] == 3 and last["rollout/env_steps"] == 2 * 3 * 4  # nothing lost

    hf = HFEngine(cfg.policy.path, lora_settings(cfg), dtype="float32", device="cpu")
    for _, version, adapter, batches in seen:
        if adapter is not None:
            hf.load_adapter(adapter, version)
        transitions = [t for batch in batches for t in batch.transitions]
        assert len(batches) == 2 and len(transitions) == 3 * 4 * 2
        assert {t.policy_version for t in transitions} == {version}
        # The tokens vLLM sampled have, under that version's weights, the log-probs vLLM reported.
        scored = hf.score(
            [prompt_input(t.observation) for t in transitions], [t.response_ids for t in transitions], 1.0
        )
        gap = max(
            abs(a - b)
            for t, row in zip(transitions, scored, strict=True)
            for a, b in zip(t.old_logprobs, row, strict=True)
        )
        assert gap < 1e-4, f"version {version}: {gap}"

    deadline = time.monotonic() + 30
    while _vllm_processes() and time.monotonic() < deadline:  # every engine stops with its actor
        time.sleep(0.5)
    assert not _vllm_processes()
