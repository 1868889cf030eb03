"""What pretraining did, round by round: losses and alignment on held-out pairs.

A run's round history (the checkpoint state's ``history``, one record per round with every
site's reply metrics) becomes a markdown table and a plot, so that a study report shows
whether the alignment objectives left chance, next to the label-efficiency sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..alignment import ALIGNMENT_PREFIX

__all__ = ["round_metrics", "pretraining_markdown", "plot_pretraining"]

LOSS_PREFIX = "loss/"


def round_metrics(history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """One row per round: every loss averaged over the sites that report it, and the alignment
    metrics averaged over the sites that hold out pairs.

    Parameters
    ----------
    history
        Round records as the ServerApp writes them (``round`` and ``sites``, each site with its
        ``metrics``), or as centralised / local-only pretraining writes them (``round`` and
        ``metrics``: one trainer, taken as one site).

    Returns
    -------
    list of dict
        ``round`` plus ``loss/<objective>`` and ``align/<metric>`` keys, sorted by round.
    """
    rows = []
    for record in sorted(history, key=lambda r: int(r["round"])):
        values: dict[str, list[float]] = {}
        for site in record.get("sites", [record] if "metrics" in record else []):
            for key, value in site.get("metrics", {}).items():
                if (key.startswith(LOSS_PREFIX) and key != "loss/total") or key.startswith(ALIGNMENT_PREFIX):
                    if isinstance(value, (int, float)) and np.isfinite(value):
                        values.setdefault(key, []).append(float(value))
        rows.append({"round": float(record["round"]), **{k: float(np.mean(v)) for k, v in sorted(values.items())}})
    return rows


def pretraining_markdown(name: str, history: Sequence[Mapping[str, Any]]) -> str:
    """A markdown section for run ``name``: its losses and alignment metrics by round.

    Alignment columns come first, with the chance level of top-1 retrieval among the held-out
    pairs (``1/n``) and of the matching head (0.5) in the header.
    """
    rows = round_metrics(history)
    if not rows:
        return f"### Pretraining of `{name}`\n\nNo rounds recorded.\n"
    keys = sorted(
        {k for row in rows for k in row if k != "round"}, key=lambda k: (not k.startswith(ALIGNMENT_PREFIX), k)
    )
    keys = [k for k in keys if k not in (f"{ALIGNMENT_PREFIX}pairs", f"{ALIGNMENT_PREFIX}chance-top1")]
    chance = rows[-1].get(f"{ALIGNMENT_PREFIX}chance-top1")
    pairs = rows[-1].get(f"{ALIGNMENT_PREFIX}pairs")
    lines = [f"### Pretraining of `{name}`", ""]
    if chance is not None:
        lines += [
            f"Alignment on {int(pairs or 0)} held-out pairs of the paired site, after each round's local training: "
            f"top-1 retrieval chance is {chance:.3f}, the matching head's chance 0.5.",
            "",
        ]
    lines.append("| round | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for row in rows:
        lines.append(f"| {int(row['round'])} | " + " | ".join(f"{row[k]:.3f}" if k in row else "" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot_pretraining(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path | None:
    """Plot alignment metrics (left) and losses (right) by round for each run; ``None`` when no
    run has a recorded round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {name: round_metrics(history) for name, history in runs.items()}
    if not any(tables.values()):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in tables.items():
        rounds = [row["round"] for row in rows]
        keys = sorted({k for row in rows for k in row if k != "round"})
        for key in keys:
            values = [row.get(key, np.nan) for row in rows]
            if key.startswith(ALIGNMENT_PREFIX) and key not in (f"{ALIGNMENT_PREFIX}pairs",):
                left.plot(rounds, values, marker="o", label=f"{name}: {key.removeprefix(ALIGNMENT_PREFIX)}")
            elif key.startswith(LOSS_PREFIX):
                right.plot(rounds, values, marker="o", label=f"{name}: {key.removeprefix(LOSS_PREFIX)}")
    left.set(title="alignment on held-out pairs", xlabel="round", ylim=(0, 1))
    right.set(title="training losses (mean over sites)", xlabel="round", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        # rounds are whole numbers: no 1.2, 1.4 ... ticks on a two-round run
        axis.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
