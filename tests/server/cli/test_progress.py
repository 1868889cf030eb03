"""The round bar of demo / simulate / pretrain (server/cli/progress.py)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

from fedvlp.core.checkpoint import save_round
from fedvlp.server.cli.progress import round_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, done: int, new: int) -> str:
    folder = tmp_path / "checkpoints"
    for r in range(done + 1):  # rounds 0..done of an earlier, interrupted run
        save_round(folder, r, {"w": torch.zeros(1)}, {"config_hash": "h", "history": []})
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with round_bar(5, folder, line=lambda record: f"round {record['round']} done") as on_round:
        for r in range(done + 1, done + 1 + new):
            on_round({"round": r, "seconds": 1.0})
    return terminal.getvalue()


def test_a_resumed_run_starts_the_bar_at_its_completed_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FEDVLP_QUIET", raising=False)
    shown = _run(tmp_path, monkeypatch, done=2, new=3)
    assert "rounds:  40%" in shown and "2/5" in shown and "5/5" in shown  # the bar, on the terminal
    assert capsys.readouterr().out.splitlines() == ["round 3 done", "round 4 done", "round 5 done"]  # lines above it


def test_quiet_shows_the_lines_but_no_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDVLP_QUIET", "1")
    shown = _run(tmp_path, monkeypatch, done=0, new=1)
    assert "rounds" not in shown and capsys.readouterr().out.splitlines() == ["round 1 done"]
