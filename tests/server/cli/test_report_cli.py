"""`fedvlp report RUN` and the global --quiet / --log-level options, on a hand-written site log."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedvlp.server.app.run_log import SITE_LOG
from fedvlp.server.cli.main import main
from fedvlp.server.cli.run_report import plot_run

ROWS = [
    {
        "round": 1,
        "site": "hospital_a",
        "node_id": 11,
        "metrics": {"loss/total": 9.5, "loss/mlm": 5.8, "align/top1": 0.25},
        "counts": {"text": 64},
    },
    {
        "round": 1,
        "site": "hospital_c",
        "node_id": 33,
        "metrics": {"loss/total": 5.7, "loss/mlm": 5.7},
        "counts": {"text": 64},
    },
    {
        "round": 2,
        "site": "hospital_a",
        "node_id": 11,
        "metrics": {"loss/total": 9.25, "loss/mlm": 5.5, "align/top1": 0.5},
        "counts": {"text": 64},
    },
    {
        "round": 2,
        "site": "hospital_c",
        "node_id": 33,
        "metrics": {"loss/total": 5.0, "loss/mlm": 5.0},
        "counts": {"text": 64},
    },
]


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / SITE_LOG).write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return tmp_path


@pytest.fixture()
def fedvlp_logger() -> Iterator[logging.Logger]:
    """The fedvlp logger and FEDVLP_QUIET, restored after the test."""
    logger = logging.getLogger("fedvlp")
    level, quiet = logger.level, os.environ.pop("FEDVLP_QUIET", None)
    yield logger
    logger.setLevel(level)
    os.environ.pop("FEDVLP_QUIET", None)
    if quiet is not None:
        os.environ["FEDVLP_QUIET"] = quiet


def test_report_writes_one_png_per_family_and_prints_where(
    run_dir: Path, capsys: pytest.CaptureFixture[str], fedvlp_logger: logging.Logger
) -> None:
    assert main(["report", str(run_dir)]) == 0
    plots = run_dir / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["align.png", "loss.png", "samples.png"]
    assert all(p.stat().st_size > 0 for p in plots.iterdir())
    out = capsys.readouterr().out
    assert "2 sites (hospital_a, hospital_c)" in out and f"loss: {plots / 'loss.png'}" in out


def test_report_returns_the_series_it_plotted(run_dir: Path, tmp_path: Path) -> None:
    report = plot_run(run_dir, tmp_path / "png")
    assert report.series["loss"] == {
        "loss/mlm": {"hospital_a": [(1, 5.8), (2, 5.5)], "hospital_c": [(1, 5.7), (2, 5.0)]},
        "loss/total": {"hospital_a": [(1, 9.5), (2, 9.25)], "hospital_c": [(1, 5.7), (2, 5.0)]},
    }
    assert report.series["align"] == {"align/top1": {"hospital_a": [(1, 0.25), (2, 0.5)]}}
    assert report.files == {f: tmp_path / "png" / f"{f}.png" for f in ("align", "loss", "samples")}


def test_report_of_a_folder_without_site_log_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fedvlp_logger: logging.Logger
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"fedvlp report: {tmp_path}: no {SITE_LOG} (expected in the run folder, the out-dir of `fedvlp simulate` "
        "or `flwr run`)\n"
    )


def test_log_level_sets_the_fedvlp_logger(run_dir: Path, fedvlp_logger: logging.Logger) -> None:
    assert main(["--log-level", "debug", "report", str(run_dir)]) == 0
    assert fedvlp_logger.level == logging.DEBUG


def test_quiet_keeps_warnings_and_turns_progress_bars_off(run_dir: Path, fedvlp_logger: logging.Logger) -> None:
    assert main(["--quiet", "report", str(run_dir)]) == 0
    assert fedvlp_logger.level == logging.WARNING and os.environ["FEDVLP_QUIET"] == "1"
