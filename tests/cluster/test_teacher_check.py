"""cluster.teacher_check: a run's merges played as policies beside the checkpoints they merge (issue 18)."""

from cluster import launch, teacher_check
from configs import load_config
from tests.cluster.tiny import TINY


def test_merges_of_one_checkpoint_play_as_it_and_the_table_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(None, [*TINY, "cluster.mode=local", "train.iterations=3", f"run_dir={run}"])
    launch.run(cfg, log=lambda *_: None)
    assert teacher_check.main([str(run), "--at", "3", "--episodes", "4", "--density", "0.5"]) == 0
    table = (run / "teacher_check.md").read_text()
    assert table.strip() in capsys.readouterr().out
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table.splitlines() if line.startswith("| ")
    }
    assert len(rows) == 12  # header, start, v1..v3, four one-checkpoint merges, three merges of v1..v3
    alone = rows["checkpoint v3 alone (the student at version 3)"]
    for merge in ("TIES of v3 alone, density 1", "linear of v3 alone"):
        assert rows[merge][:4] == alone[:4], merge  # success, return, length, format: the same episodes
        assert rows[merge][5].startswith("0.000"), merge  # |dW - checkpoint| / |checkpoint|
    trimmed = rows["TIES of v3 alone, density 0.5"]
    assert rows["TIES of v3 twice, density 0.5"] == trimmed  # identical checkpoints merge to one
    assert (
        float(trimmed[5].split()[0]) > 0.01
    )  # trimming half the entries moves the weights    assert rows["linear of v1..v3, sma"][5].startswith("0.000")
    assert not rows["TIES of v1..v3, density 1"][5].startswith("0.000")  # TIES is not the mean of three


def test_a_folder_that_is_not_a_run_is_refused_with_what_to_give(tmp_path, capsys):
    assert teacher_check.main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.yaml'} does not exist: give a run folder" in capsys.readouterr().err
