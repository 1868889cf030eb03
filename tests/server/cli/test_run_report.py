"""Reading a run's site log back and grouping it for the plots (server/cli/run_report.py).

The plots of a real simulated run: tests/server/app/test_run_log.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.server.app.run_log import SITE_LOG
from fedvlp.server.cli.run_report import load_site_log, site_series


def test_site_series_groups_by_family_metric_and_site() -> None:
    rows = [
        {"round": 2, "site": "a", "metrics": {"loss/mlm": 1.5, "steps": 3.0}},
        {"round": 1, "site": "a", "metrics": {"loss/mlm": 2.5, "steps": 3.0}},
        {"round": 1, "site": "b", "metrics": {"loss/mlm": 4.0}, "counts": {"text": 8}},
    ]
    assert site_series(rows) == {
        "loss": {"loss/mlm": {"a": [(1, 2.5), (2, 1.5)], "b": [(1, 4.0)]}},
        "steps": {"steps": {"a": [(1, 3.0), (2, 3.0)]}},
        "samples": {"samples/text": {"b": [(1, 8.0)]}},
    }


def test_a_round_logged_twice_keeps_its_last_row(tmp_path: Path) -> None:
    path = tmp_path / SITE_LOG
    path.write_text(
        '{"round": 1, "site": "a", "metrics": {"loss/mlm": 3.0}}\n{"round": 1, "site": "a", "metrics": {"loss/mlm": '
        "2.0}}\n"
    )
    assert load_site_log(path) == [{"round": 1, "site": "a", "metrics": {"loss/mlm": 2.0}}]


def test_a_row_without_site_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / SITE_LOG
    path.write_text('{"round": 1, "site": "a", "metrics": {}}\n{"round": 2}\n')
    with pytest.raises(ValueError, match=rf"{SITE_LOG}: line 2: expected a JSON object with 'round' and 'site'"):
        load_site_log(path)
