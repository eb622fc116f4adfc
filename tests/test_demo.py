"""The README's first command (the env demo) on the embedded default."""

from pathlib import Path

import pytest

from cluster.demo import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "points24.yaml")


def test_demo_writes_frames_and_transcripts(tmp_path, capsys):
    assert main(["--config", CONFIG, "--episodes", "2", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "gym_cards_Points24-v0"
    frames = sorted(folder.glob("episode00/step*.png"))
    assert len(frames) >= 2 and (folder / "episode00" / "transcript.txt").read_text().startswith("Cards:")
    out = capsys.readouterr().out
    assert "gym_cards/Points24-v0: 2 expert episodes" in out and "solved" in out


def test_demo_rejects_a_bad_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", CONFIG, "--out", str(tmp_path), "env.idd=x"])
    assert exit_info.value.code == 2
    assert "did you mean 'env.id'" in capsys.readouterr().err
    assert not any(Path(tmp_path).iterdir())
