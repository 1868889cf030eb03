"""Round-by-round pretraining metrics: averaging over sites, the markdown table and the plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fedvlp.core.evaluation.pretraining import plot_pretraining, pretraining_markdown, round_metrics


def _history() -> list[dict[str, Any]]:
    """Two rounds of two sites; the paired site holds out 8 pairs. Given out of order."""

    def record(round_: int, i2t: float) -> dict[str, Any]:
        return {
            "round": round_,
            "sites": [
                {"metrics": {"loss/mlm": 2.0, "loss/total": 9}},
                {"metrics": {"loss/mlm": 4.0, "align/i2t-top1": i2t, "align/chance-top1": 0.125, "align/pairs": 8.0}},
            ],
        }

    return [record(2, 0.5), record(1, 0.25)]


def test_round_metrics_average_losses_over_sites() -> None:
    rows = round_metrics(_history())
    # (2.0 + 4.0) / 2
    assert rows[0]["loss/mlm"] == 3.0


def test_round_metrics_leave_out_the_total_loss() -> None:
    assert all("loss/total" not in row for row in round_metrics(_history()))


def test_round_metrics_average_alignment_over_the_sites_that_report_it() -> None:
    first = round_metrics(_history())[0]
    # only the paired site reports alignment: 0.25, not (0.25 + 0) / 2
    assert first["align/i2t-top1"] == 0.25
    assert first["align/chance-top1"] == 0.125
    assert first["align/pairs"] == 8.0


def test_round_metrics_sort_rows_by_round() -> None:
    rows = round_metrics(_history())
    assert [row["round"] for row in rows] == [1.0, 2.0]
    assert [row["align/i2t-top1"] for row in rows] == [0.25, 0.5]


def test_round_metrics_read_a_local_or_central_runs_records_as_one_site() -> None:
    # core/central.py's record: the trainer's metrics at the top, no "sites"
    history = [{"round": 1, "steps": 75, "metrics": {"loss/distill": 0.6, "loss/total": 0.6, "steps": 75.0}}]
    assert round_metrics(history) == [{"round": 1.0, "loss/distill": 0.6}]


def test_round_metrics_ignore_non_finite_values() -> None:
    history = [
        {
            "round": 1,
            "sites": [{"metrics": {"loss/mlm": math.nan}}, {"metrics": {"loss/mlm": 4.0, "loss/mim": math.inf}}],
        }
    ]
    # NaN of the first site is skipped: mean over [4.0]; loss/mim has no finite value at all
    assert round_metrics(history) == [{"round": 1.0, "loss/mlm": 4.0}]


def test_round_metrics_ignore_other_metrics() -> None:
    history = [{"round": 3, "sites": [{"metrics": {"loss/mlm": 1.0, "examples": 64, "steps": 5}}]}]
    assert round_metrics(history) == [{"round": 3.0, "loss/mlm": 1.0}]


def test_pretraining_markdown_puts_alignment_columns_first() -> None:
    text = pretraining_markdown("mixed", _history())
    # pairs and chance are in the sentence, not columns
    assert "| round | align/i2t-top1 | loss/mlm |" in text.splitlines()


def test_pretraining_markdown_has_one_line_per_round() -> None:
    lines = pretraining_markdown("mixed", _history()).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| round")]
    assert rows == ["| 1 | 0.250 | 3.000 |", "| 2 | 0.500 | 3.000 |"]


def test_pretraining_markdown_names_the_held_out_pairs_and_chance() -> None:
    text = pretraining_markdown("mixed", _history())
    assert text.startswith("### Pretraining of `mixed`\n")
    assert "Alignment on 8 held-out pairs" in text
    assert "top-1 retrieval chance is 0.125" in text


def test_pretraining_markdown_of_an_empty_history_says_so() -> None:
    assert pretraining_markdown("mixed", []) == "### Pretraining of `mixed`\n\nNo rounds recorded.\n"


def test_pretraining_markdown_leaves_missing_values_blank() -> None:
    history = [
        {"round": 1, "sites": [{"metrics": {"loss/mlm": 2.0}}]},
        {"round": 2, "sites": [{"metrics": {"loss/mlm": 1.0, "loss/mim": 0.5}}]},
    ]
    lines = pretraining_markdown("r", history).splitlines()
    assert "| 1 |  | 2.000 |" in lines  # no loss/mim in round 1
    assert "| 2 | 0.500 | 1.000 |" in lines
    assert not any(line.startswith("Alignment on") for line in lines)


def test_plot_pretraining_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "pretraining.png"
    assert plot_pretraining({"mixed": _history()}, path) == path
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("runs", [{}, {"mixed": []}])
def test_plot_pretraining_of_empty_histories_returns_none(
    tmp_path: Path, runs: dict[str, list[dict[str, Any]]]
) -> None:
    path = tmp_path / "pretraining.png"
    assert plot_pretraining(runs, path) is None
    assert not path.exists()
