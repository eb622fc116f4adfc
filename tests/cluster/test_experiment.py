"""The experiment runner: one warm start, a grid of runs x seeds through the launcher, a results table."""

import json
import shutil

import pytest

from cluster import experiment
from configs import ConfigError
from tests.cluster.tiny import TINY


def _spec(tmp_path, **changes):
    body = {
        "name": "tiny",
        "overrides": [*TINY, "cluster.mode=local", "train.iterations=1", "sft.steps=2", "sft.batch_size=2"],
        "seeds": [0],
        "runs": {"ppo": ["teacher.guidance=none"], "kl": ["teacher.guidance=kl"]},
        "parallel": 2,
        "output": str(tmp_path / "out"),
    } | changes
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def test_grid_runs_from_one_warm_start_and_tabulates(tmp_path, capsys):
    path = _spec(tmp_path)
    assert experiment.main([str(path)]) == 0
    out = tmp_path / "out"
    assert (out / "warm_start" / "checkpoint" / "config.json").is_file()
    for run in ("ppo", "kl"):
        records = [json.loads(x) for x in (out / run / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records] == [1]  # no evaluation before: the warm start's is shared
        config = (out / run / "seed0" / "config.yaml").read_text()
        assert str(out / "warm_start" / "checkpoint") in config and "seed: 0" in config
        assert "required: true" in config  # a grid's runs stop rather than train without guidance
    table = (out / "tiny.md").read_text()
    assert "| SFT start |" in table and "| ppo | 1 |" in table and "| kl | 1 |" in table
    assert "## Every seed" in table and "| ppo | 0 | " in table
    assert "## The merged teacher as a policy" in table and "| kl | 12 |" in table  # 1 update of 3 rounds x 4 envs
    assert (out / "tiny.png").stat().st_size > 5_000
    capsys.readouterr()
    assert experiment.main([str(path)]) == 0  # finished runs are not run again
    assert "0 runs to go (2 in the grid)" in capsys.readouterr().out


def test_bad_experiments_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'teacher.guidence'"):
        experiment.plan(experiment.load_spec(_spec(tmp_path, runs={"x": ["teacher.guidence=kl"]})), tmp_path)
    with pytest.raises(ConfigError, match="keep one budget"):
        experiment.plan(experiment.load_spec(_spec(tmp_path, runs={"x": ["train.rounds=7"]})), tmp_path)
    with pytest.raises(ConfigError, match="Key 'seed' not in 'ExperimentSpec'|seed"):
        experiment.load_spec(_spec(tmp_path, seed=3))
    assert not (tmp_path / "out").exists()


def test_grid_runs_require_the_teacher_unless_the_config_or_an_override_says_otherwise(tmp_path):
    def required(**changes) -> list[bool]:
        _, jobs = experiment.plan(experiment.load_spec(_spec(tmp_path, **changes)), tmp_path / "out")
        return [experiment._load(job.argv).teacher.required for job in jobs]

    assert required() == [True, True]
    assert required(runs={"ppo": ["teacher.guidance=none"], "kl": ["teacher.required=false"]}) == [True, False]
    base = tmp_path / "base.yaml"
    base.write_text("teacher:\n  required: false\n")
    assert required(base=str(base)) == [False, False]


def test_a_run_cut_off_resumes_from_its_newest_checkpoint(tmp_path, capsys):
    overrides = [*TINY, "cluster.mode=local", "train.iterations=2", "train.checkpoint_every=1", "sft.steps=2"]
    path = _spec(tmp_path, overrides=[*overrides, "sft.batch_size=2"], runs={"ppo": ["teacher.guidance=none"]})
    assert experiment.main([str(path)]) == 0
    run = tmp_path / "out" / "ppo" / "seed0"
    whole = (run / "metrics.jsonl").read_text().splitlines()
    # Stopped during iteration 2 (SIGTERM, say): its record and checkpoint never happened, but a stopped run
    # writes its summary.md too, so that is not what tells a finished run.
    (run / "metrics.jsonl").write_text(whole[0] + "\n")
    shutil.rmtree(run / "checkpoints" / "iter-00000002")
    assert (run / "summary.md").is_file() and not experiment.finished(run)
    capsys.readouterr()
    assert experiment.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 runs to go" in out and "resuming ppo seed 0 from iter-00000001" in out
    resumed = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in resumed] == [1, 2]
    for key in ("losses/policy", "rollout/return"):  # iteration 2 again, from iteration 1's state: the same
        assert json.loads(resumed[1])[key] == json.loads(whole[1])[key]
    assert experiment.finished(run)
    starts = [json.loads(x) for x in (run / "provenance.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[0]["commit"] == experiment.project_commit() != ""
    assert "cores" in starts[0]["cpu"]
    assert f"by commit: {starts[0]['commit']} (3)" in (tmp_path / "out" / "tiny.md").read_text()  # + the warm start


def test_the_interval_and_the_collapse_rate_worked_by_hand():
    low, high = experiment.interval95([0.4, 0.5, 0.6])  # sd 0.1, t(2) = 4.303: 0.5 -+ 4.303 * 0.1 / sqrt(3)
    assert low == pytest.approx(0.25157, abs=1e-5) and high == pytest.approx(0.74843, abs=1e-5)
    assert experiment.interval95([0.5]) != experiment.interval95([0.5])  # nan: one seed has no interval

    def run(*successes):
        return [(0, {"eval/success": 0.5})] + [(i, {"eval/success": s}) for i, s in enumerate(successes, 1)]

    assert experiment.collapsed(run(0.55, 0.40, 0.60), start=0.5)  # 10 points below at one evaluation
    assert not experiment.collapsed(run(0.41, 0.45), start=0.5)
    assert not experiment.collapsed([(0, {"eval/success": 0.0})], start=0.5)  # the start itself is not counted
    assert not experiment.ended_down(run(0.55, 0.40, 0.60), start=0.5)  # a dip that recovered
    assert experiment.ended_down(run(0.55, 0.60, 0.40), start=0.5)
    assert not experiment.ended_down([(0, {"eval/success": 0.0})], start=0.5)
    # Clopper-Pearson: 0 of 5 -> (0, 1 - 0.025 ** (1/5)); 1 of 2 -> (1 - sqrt(0.975), sqrt(0.975))
    assert experiment.rate_interval95(0, 5) == pytest.approx((0.0, 0.52182), abs=1e-5)
    assert experiment.rate_interval95(5, 5) == pytest.approx((0.47818, 1.0), abs=1e-5)
    assert experiment.rate_interval95(1, 2) == pytest.approx((0.01258, 0.98742), abs=1e-5)
    assert experiment.rate_interval95(2, 5) == pytest.approx((0.05274, 0.85337), abs=1e-5)  # R's binom.test


def test_the_tests_against_the_baseline_worked_by_hand():
    # R: fisher.test(matrix(c(3, 2, 0, 5), 2), alternative = "greater")$p.value == 10 / 120
    assert experiment.fisher_greater(3, 5, 0, 5) == pytest.approx(0.083333, abs=1e-6)
    assert experiment.fisher_greater(5, 5, 0, 5) == pytest.approx(1 / 252)
    assert experiment.fisher_greater(1, 5, 0, 5) == pytest.approx(0.5)  # one collapse in ten seeds: a coin
    assert experiment.fisher_greater(0, 5, 2, 5) == 1.0
    # 20 splits of six values into three; only {1, 2, 3} and {4, 5, 6} are as far apart as the ones seen
    assert experiment.permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert experiment.permutation_p([1, 2, 3], [1, 2, 3]) == 1.0
    sampled = experiment.permutation_p(list(range(12)), list(range(100, 112)))  # C(24, 12) > 2e5 splits
    assert sampled == experiment.permutation_p(list(range(12)), list(range(100, 112))) and sampled < 1e-4

    def seed(*successes):
        return [(0, {"eval/success": 0.5})] + [(i, {"eval/success": s}) for i, s in enumerate(successes, 1)]

    data = {
        "ppo": {0: seed(0.1, 0.1), 1: seed(0.3, 0.5), 2: seed(0.5, 0.5)},
        "kl": {0: seed(0.5, 0.6), 1: seed(0.5, 0.5), 2: seed(0.5, 0.5)},
    }
    start = {"success": 0.5, "return": 0.0}
    table = experiment.versus_table(data, start)
    # ppo: 2 of 3 collapsed, 1 of 3 still down; kl: none. Finals 0.1 0.5 0.5 against 0.6 0.5 0.5
    assert "| kl | 0 of 3 / 2 of 3 | 0.20 | 0 of 3 / 1 of 3 | 0.50 | +16.7 points |" in table
    assert experiment.versus_table({"ppo": data["ppo"]}, start) == ""
    assert experiment.versus_table(data, {}) == ""  # no warm start evaluated
