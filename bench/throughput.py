"""Env steps per second of the whole system: 1, 2 and 4 Ray rollout actors against local mode, and the
synchronous loop against the asynchronous one (``train.max_staleness``), one run.

    .venv/bin/python -m bench.throughput [--model embedded:xs] [--env gym_cards/Points24-v0] [--envs 8]
                                         [--rounds 4] [--actors 1 2 4] [--iterations 2] [--guidance kl]
                                         [--staleness 0 1] [--epochs 1] [--timeline docs/timeline.png]

Every setting trains with the same config (K envs per rollout actor, GTR-Turbo-KL, one PPO epoch per
update so that learning does not drown the rollout side) through the real driver loop: local mode runs
every role in this process; Ray mode starts the actors on one local cluster. After one warm-up
iteration, ``--iterations`` iterations are timed. "sample" is env steps per second of the sample phase
(every actor stepping its K envs with one batched generate per step); "system" is env steps per second
of whole iterations (sample, teacher score, learn, publish, merge). Total envs grow with the actors.

Every Ray setting runs at each ``--staleness``: 0 is the synchronous loop (the rollout actors wait while
the learner learns), 1 lets them sample the next batch meanwhile. In the asynchronous loop "sample" is
only the wait for a batch, so its rate is not shown; "vs sync" compares "system" with the same actors at
staleness 0. ``--timeline`` draws which role is busy when (from ``ray.timeline()``) over the timed
iterations of the most actors, one panel per staleness.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cluster import remote
from cluster.driver import Trainer, default_buffer_dir
from cluster.system import LocalSpawner, System
from configs import load_config


def config(args, mode: str, actors: int, run_dir: Path, staleness: int = 0):
    return load_config(
        None,
        [
            f"policy.path={args.model}",
            f"env.id={args.env}",
            "policy.lora_rank=8",
            "policy.lora_alpha=16",
            "policy.max_new_tokens=40",
            "policy.temperature=1.0",
            f"rollout.num_envs={args.envs}",
            f"train.rounds={args.rounds}",
            f"train.num_workers={actors}",
            "train.iterations=1000",  # never the last: no evaluation or checkpoint in the timed ones
            "train.eval_every=0",
            "train.checkpoint_every=0",
            f"learner.epochs={args.epochs}",
            f"learner.minibatch_size={args.envs * args.rounds * actors}",
            "learner.micro_batch_size=16",
            f"teacher.guidance={args.guidance}",
            f"train.max_staleness={staleness}",
            f"cluster.mode={mode}",
            "cluster.dashboard=false",
            "cluster.rollout.num_cpus=1",
            "cluster.learner.num_cpus=1",
            "cluster.teacher.num_cpus=1",
            f"run_dir={run_dir}",
        ],
    )


def measure(cfg, spawner, run_dir: Path, iterations: int, timeline: bool = False) -> dict:
    """Rates over the timed iterations; with ``timeline``, also the roles' calls in them (``spans``)."""
    system = System(cfg, spawner, default_buffer_dir(run_dir))
    spans = {}
    try:
        system.wait_ready()
        trainer = Trainer(cfg, run_dir, system, log=lambda *_: None)
        trainer.iteration(1)  # warm-up: first merge, caches, lazy envs, and the pipeline filled
        began = time.time()
        records = [r for i in range(2, iterations + 2) for r in trainer.iteration(i)]
        ended = time.time()
        if timeline:
            time.sleep(3.0)  # actors report their task events about once a second; read them while alive
            spans = role_spans(began, ended)
    finally:
        system.shutdown()
    steps = records[0]["rollout/env_steps"]
    return {
        "env steps": steps,
        "sample": statistics.median(steps / r["time/sample"] for r in records),
        "system": statistics.median(steps / r["time/iteration"] for r in records),
        "spans": spans,
    }


def role_spans(began: float, ended: float) -> dict[str, list[tuple[str, float, float]]]:
    """actor name -> [(method, start, end)] of the calls that ran between ``began`` and ``ended`` (seconds
    since ``began``), from Ray's task timeline; an actor's name is in its ``__init__`` event."""
    events = [e for e in remote.ray.timeline() if e.get("ph") == "X" and e.get("cat", "").startswith("task::")]
    names = {e["tid"]: e["cat"][6:].split(":")[0] for e in events if e["cat"].endswith(".__init__")}
    spans: dict[str, list[tuple[str, float, float]]] = {}
    for e in events:
        start, end = e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6
        if e["tid"] in names and not e["cat"].endswith(".__init__") and end > began and start < ended:
            call = (e["name"], max(start, began) - began, min(end, ended) - began)
            spans.setdefault(names[e["tid"]], []).append(call)
    return spans


def draw_timeline(panels: dict[str, dict[str, list[tuple[str, float, float]]]], path: Path) -> None:
    """One panel per setting: a row per role, a bar per call, coloured by method; each role's busy share is
    of its panel's timed iterations (the x axis is shared, so the shorter panel did the same work faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({m for spans in panels.values() for calls in spans.values() for m, _, _ in calls})
    colours = dict(zip(methods, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 1.2 + 0.55 * 5 * len(panels)), squeeze=False)
    width = max((e for spans in panels.values() for calls in spans.values() for _, _, e in calls), default=1.0)
    for ax, (title, spans) in zip(axes[:, 0], panels.items(), strict=True):
        roles = sorted(spans, key=lambda n: (not n.startswith("rollout"), n))
        for row, role in enumerate(roles):
            for method, start, end in spans[role]:
                ax.barh(row, end - start, left=start, color=colours[method], edgecolor="none", height=0.7)
        span = max((e for calls in spans.values() for _, _, e in calls), default=1.0)  # this panel's iterations
        busy = {r: sum(e - s for _, s, e in spans[r]) / span for r in roles}
        ax.set_yticks(range(len(roles)), [f"{r} ({busy[r]:.0%} busy)" for r in roles])
        ax.invert_yaxis()
        ax.set_xlim(0, width)
        ax.set_title(title, loc="left", fontsize=10)
    axes[-1, 0].set_xlabel("seconds")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in methods]
    fig.legend(handles, methods, loc="lower center", ncol=len(methods), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded:xs")
    parser.add_argument("--env", default="gym_cards/Points24-v0")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--guidance", default="kl")
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1], help="train.max_staleness values")
    parser.add_argument("--epochs", type=int, default=1, help="PPO epochs per update (more: a longer learn phase)")
    parser.add_argument("--timeline", type=Path, help="draw which role is busy when (PNG)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    rows = {}
    began = time.perf_counter()
    cfg = config(args, "local", 1, tmp / "local")
    rows["local, 1 worker"] = measure(cfg, LocalSpawner(), tmp / "local", args.iterations)
    panels = {}
    remote.ray.init(address="local", num_cpus=max(args.actors) + 2, include_dashboard=False)
    try:
        for n in args.actors:
            for staleness in args.staleness:
                folder = tmp / f"ray-{n}-{staleness}"
                cfg = config(args, "ray", n, folder, staleness)
                name = f"ray, {n} actor{'s' * (n > 1)}" + (f", stale {staleness}" if staleness else "")
                drawn = bool(args.timeline) and n == max(args.actors)
                spawner = remote.start(cfg, f"bench-{n}-{staleness}")
                rows[name] = measure(cfg, spawner, folder, args.iterations, drawn)
                rows[name] |= {"staleness": staleness, "actors": n}
                if drawn:
                    loop = f"max_staleness={staleness}" + (" (synchronous)" if not staleness else "")
                    panels[f"{n} rollout actors, {loop}"] = rows[name]["spans"]
    finally:
        remote.ray.shutdown()
    base = rows["local, 1 worker"]
    print(
        f"{args.env}, {args.model}, {args.envs} envs per actor x {args.rounds} rounds, guidance {args.guidance}, "
        f"{os.cpu_count()} CPUs, median of {args.iterations} iterations ({time.perf_counter() - began:.0f} s in all)"
    )
    print(
        f"{'setting':<26}{'env steps':>10}{'sample /s':>11}{'vs local':>9}{'system /s':>11}{'vs local':>9}"
        f"{'vs sync':>9}"
    )
    for name, r in rows.items():
        sync = next((q for q in rows.values() if q.get("actors") == r.get("actors") and not q.get("staleness")), r)
        sample = "-" if r.get("staleness") else f"{r['sample']:.1f}"
        versus = "-" if r.get("staleness") else f"{r['sample'] / base['sample']:.2f}x"
        print(
            f"{name:<26}{r['env steps']:>10.0f}{sample:>11}{versus:>9}"
            f"{r['system']:>11.1f}{r['system'] / base['system']:>8.2f}x{r['system'] / sync['system']:>8.2f}x"
        )
    if panels:
        draw_timeline(panels, args.timeline)
        print(f"timeline: {args.timeline}")


if __name__ == "__main__":
    main()
