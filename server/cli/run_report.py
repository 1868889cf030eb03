"""``fedvlp report``: a run's per-site metrics log read back and drawn, one PNG per metric family.

The ServerApp writes ``<out-dir>/site_metrics.jsonl`` (:mod:`fedvlp.server.app.run_log`);
:func:`load_site_log` and :func:`plot_run` read it back and draw one PNG per metric family
(``loss``, ``align``, ``skipped``, ``samples``, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvlp.server.app.run_log import SITE_LOG, row_scalars

__all__ = ["RunReport", "Series", "find_site_log", "load_site_log", "plot_run", "site_series"]

Series = dict[str, dict[str, list[tuple[int, float]]]]  # metric -> site -> [(round, value)]


def find_site_log(run: str | Path) -> Path:
    """The ``site_metrics.jsonl`` of a run folder (also accepts the file itself, a demo output
    folder holding ``federated/``, or the run's ``checkpoints`` folder).

    Raises
    ------
    FileNotFoundError
        Naming the folder and the file that was expected in it.
    """
    path = Path(run)
    candidates = [path] if path.is_file() else [path / SITE_LOG, path / "federated" / SITE_LOG, path.parent / SITE_LOG]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no {SITE_LOG} (expected in the run folder, the out-dir of `fedvlp simulate` or `flwr run`)"
    )


def load_site_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a site log; a (round, site) logged twice keeps its last row.

    Raises
    ------
    ValueError
        Naming the file and line of a row that is not JSON or lacks ``round``/``site``.
    """
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (int(row["round"]), str(row["site"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: line {number}: expected a JSON object with 'round' and 'site' ({err})") from err
        rows[key] = row
    return [rows[k] for k in sorted(rows)]


def site_series(rows: Iterable[Mapping[str, Any]]) -> dict[str, Series]:
    """Group rows into ``family -> metric -> site -> [(round, value)]``, rounds ascending.

    A metric's family is the part of its name before ``/`` (``loss/mlm`` -> ``loss``); a name
    without ``/`` is its own family. Non-finite values are left out of the curves.
    """
    out: dict[str, Series] = {}
    for row in rows:
        for metric, value in row_scalars(row).items():
            if not math.isfinite(value):
                continue
            family = metric.split("/", 1)[0]
            out.setdefault(family, {}).setdefault(metric, {}).setdefault(row["site"], []).append(
                (int(row["round"]), float(value))
            )
    for series in out.values():
        for by_site in series.values():
            for points in by_site.values():
                points.sort()
    return out


@dataclass
class RunReport:
    """What :func:`plot_run` drew: the PNG of each family and the exact series in it."""

    files: dict[str, Path]
    series: dict[str, Series]


def plot_run(run: str | Path, out_dir: str | Path | None = None) -> RunReport:
    """Draw the curves of a run's site log by round and site, one PNG per metric family.

    Parameters
    ----------
    run
        The run folder (see :func:`find_site_log`).
    out_dir
        Where the PNGs go (default: ``plots/`` next to the site log), as ``<family>.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_path = find_site_log(run)
    series = site_series(load_site_log(log_path))
    target = Path(out_dir) if out_dir is not None else log_path.parent / "plots"
    target.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for family, metrics in sorted(series.items()):
        names = sorted(metrics)
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.6), squeeze=False)
        # one colour per site across the figure's panels
        colours = {site: f"C{i % 10}" for i, site in enumerate(sorted({s for m in metrics.values() for s in m}))}
        for ax, metric in zip(axes.flat, names):
            for site, points in sorted(metrics[metric].items()):
                ax.plot([r for r, _ in points], [v for _, v in points], marker="o", label=site, color=colours[site])
            ax.set_title(metric)
            ax.set_xlabel("round")
            ax.legend(fontsize="small")
            ax.xaxis.get_major_locator().set_params(integer=True)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.suptitle(f"{family} by round and site ({log_path.parent.name})")
        fig.tight_layout()
        files[family] = target / f"{family}.png"
        fig.savefig(files[family], dpi=100)
        plt.close(fig)
    return RunReport(files, series)
