"""Summaries, tables and a plot of a label-efficiency sweep's long-format results."""

from __future__ import annotations

import math
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "summarise",
    "markdown_report",
    "format_table",
    "plot_auc_vs_labels",
    "write_outputs",
    "fraction_label",
    "t_tests",
    "label_efficiency",
    "plot_per_class",
    "plot_retrieval",
    "EXTRA_PROTOCOLS",
    "readable_label",
    "auc_vs_labels_figure",
    "per_class_figure",
]

# Protocols that are scored once per init, without labels (rows use label fraction 0, seed 0).
EXTRA_PROTOCOLS = ("retrieval", "regeneration")

_KEYS = ["init", "protocol", "label_fraction", "metric", "class"]


def _first_seen_rank(values: pd.Series) -> pd.Series:
    order = {v: i for i, v in enumerate(pd.unique(values))}
    return values.map(order)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every (init, protocol, fraction, metric, class).

    Parameters
    ----------
    df
        Long-format results (columns ``init, protocol, label_fraction, seed, metric, class, value``).

    Returns
    -------
    pd.DataFrame
        Columns ``init, protocol, label_fraction, metric, class, mean, std, n``: ``n`` counts
        the seeds with a finite value, ``std`` is the sample standard deviation (NaN for one
        seed). Inits, protocols and classes keep their order of first appearance; fractions
        are ascending.
    """
    if df.empty:
        return pd.DataFrame(columns=[*_KEYS, "mean", "std", "n"])
    grouped = df.groupby(_KEYS, sort=False, dropna=False)["value"]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    ranks = {c: _first_seen_rank(df[c]) for c in ("init", "protocol", "metric", "class")}
    sort_frame = pd.DataFrame(
        {
            "init": out["init"].map(dict(zip(df["init"], ranks["init"]))),
            "protocol": out["protocol"].map(dict(zip(df["protocol"], ranks["protocol"]))),
            "label_fraction": out["label_fraction"],
            "metric": out["metric"].map(dict(zip(df["metric"], ranks["metric"]))),
            "class": out["class"].map(dict(zip(df["class"], ranks["class"]))),
        }
    )
    order = sort_frame.sort_values(list(sort_frame.columns), kind="stable").index
    return out.loc[order].reset_index(drop=True)


def fraction_label(fraction: float) -> str:
    """``0.01 -> "1%"``, ``0.1 -> "10%"``, ``1.0 -> "100%"``, ``0.005 -> "0.5%"``."""
    return f"{fraction * 100:.4g}%"


def _pm(mean: float, std: float, n: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if n < 2 or not math.isfinite(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} +- {std:.3f}"


def _cell(summary: pd.DataFrame, **where: object) -> str:
    mask = np.ones(len(summary), dtype=bool)
    for key, value in where.items():
        column = summary[key]
        mask &= (
            np.isclose(column.astype(float), float(cast(float, value)))
            if key == "label_fraction"
            else (column == value).to_numpy()
        )
    rows = summary[mask]
    if rows.empty:
        return "-"
    row = rows.iloc[0]
    return _pm(float(row["mean"]), float(row["std"]), int(row["n"]))


def _runs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    auc = summary[summary["metric"] == "auc"]
    return list(dict.fromkeys(zip(auc["init"], auc["protocol"])))


def _fractions(summary: pd.DataFrame) -> list[float]:
    return sorted(summary.loc[summary["metric"] == "auc", "label_fraction"].astype(float).unique())


def _mean_auc_grid(summary: pd.DataFrame, metric: str = "auc") -> tuple[list[str], list[list[str]]]:
    fractions = _fractions(summary)
    headers = ["init", "protocol", *(fraction_label(f) for f in fractions)]
    rows = [
        [
            init,
            protocol,
            *(
                _cell(summary, init=init, protocol=protocol, label_fraction=f, metric=metric, **{"class": "mean"})
                for f in fractions
            ),
        ]
        for init, protocol in _runs(summary)
    ]
    return headers, rows


def _mean_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[(df["metric"] == metric) & (df["class"] == "mean")]


def t_tests(df: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Is the best init significantly better than each other init? One row per comparison.

    For every protocol and label fraction, the init with the highest mean (over seeds) of
    ``metric``'s ``"mean"`` class is compared with every other init by Welch's two-sample
    t-test over seeds (``scipy.stats.ttest_ind(best, other, equal_var=False)``, two-sided).

    Returns
    -------
    pd.DataFrame
        Columns ``protocol, label_fraction, best, other, best_mean, other_mean, n_best,
        n_other, t, p_value``. ``n_*`` count the seeds with a finite value; ``t`` and
        ``p_value`` are NaN when either side has fewer than 2 of them, when both sides are
        constant over seeds (no spread to test; e.g. a linear probe of a pretrained init on
        all labels is deterministic), and whenever scipy gives NaN. Protocols and inits keep their order of
        first appearance, fractions are ascending; no rows for a single init.
    """
    columns = [
        "protocol",
        "label_fraction",
        "best",
        "other",
        "best_mean",
        "other_mean",
        "n_best",
        "n_other",
        "t",
        "p_value",
    ]
    rows = _mean_rows(df, metric)
    rows = rows[np.isfinite(rows["value"].astype(float))]
    out: list[dict[str, Any]] = []
    inits = list(pd.unique(rows["init"]))
    for protocol in pd.unique(rows["protocol"]):
        of_protocol = rows[rows["protocol"] == protocol]
        for fraction in sorted(of_protocol["label_fraction"].astype(float).unique()):
            cell = of_protocol[np.isclose(of_protocol["label_fraction"].astype(float), fraction)]
            values = {
                i: cell.loc[cell["init"] == i, "value"].to_numpy(float) for i in inits if (cell["init"] == i).any()
            }
            if len(values) < 2:
                continue
            best = max(values, key=lambda i: float(np.mean(values[i])))  # first seen wins a tie
            for other, b in values.items():
                if other == best:
                    continue
                a = values[best]
                t, p = math.nan, math.nan
                # Both sides constant over seeds (e.g. a linear probe of fixed features on all
                # labels): there is no spread to test against, so no p-value.
                if len(a) >= 2 and len(b) >= 2 and (np.ptp(a) > 0 or np.ptp(b) > 0):
                    with warnings.catch_warnings():  # near-identical seeds: scipy warns, the p-value is still usable
                        warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
                        result = stats.ttest_ind(a, b, equal_var=False)
                    t, p = float(result.statistic), float(result.pvalue)
                out.append(
                    {
                        "protocol": protocol,
                        "label_fraction": float(fraction),
                        "best": best,
                        "other": other,
                        "best_mean": float(np.mean(a)),
                        "other_mean": float(np.mean(b)),
                        "n_best": len(a),
                        "n_other": len(b),
                        "t": t,
                        "p_value": p,
                    }
                )
    return pd.DataFrame(out, columns=columns)


def label_efficiency(df: pd.DataFrame, baseline: str = "random", metric: str = "auc") -> pd.DataFrame:
    """How few labels each init needs to match the baseline trained on all labels (as TIMNet reports).

    For every init and protocol: ``target`` is the mean (over seeds) ``"mean"``-class
    ``metric`` of init ``baseline`` at label fraction 1.0 with the same protocol;
    ``fraction`` is the smallest label fraction at which the init's mean reaches it
    (``>= target``), and ``labels_saved = 1 - fraction``. ``fraction`` and ``labels_saved``
    are ``None`` when the target is never reached or the baseline has no (finite) 1.0 result
    for that protocol (``target`` is then NaN).

    Returns
    -------
    pd.DataFrame
        Columns ``init, protocol, target, fraction, labels_saved``, inits and protocols in
        order of first appearance.
    """
    columns = ["init", "protocol", "target", "fraction", "labels_saved"]
    summary = summarise(_mean_rows(df, metric))
    out: list[dict[str, Any]] = []
    for init, protocol in dict.fromkeys(zip(summary["init"], summary["protocol"])):
        ref = summary[
            (summary["init"] == baseline)
            & (summary["protocol"] == protocol)
            & np.isclose(summary["label_fraction"].astype(float), 1.0)
        ]
        target = float(ref["mean"].iloc[0]) if len(ref) else math.nan
        fraction = None
        if math.isfinite(target):
            runs = summary[(summary["init"] == init) & (summary["protocol"] == protocol)].sort_values("label_fraction")
            reached = runs[runs["mean"].astype(float) >= target]
            if len(reached):
                fraction = float(reached["label_fraction"].iloc[0])
        out.append(
            {
                "init": init,
                "protocol": protocol,
                "target": target,
                "fraction": fraction,
                "labels_saved": None if fraction is None else 1.0 - fraction,
            }
        )
    return pd.DataFrame(
        {
            c: pd.Series([row[c] for row in out], dtype=object if c in ("fraction", "labels_saved") else None)
            for c in columns
        }
    )


def _p_value(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _t_test_table(tests: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["protocol", "labels", "best", "vs", "best AUC", "other AUC", "p (Welch)"]
    rows = [
        [
            r.protocol,
            fraction_label(r.label_fraction),
            r.best,
            r.other,
            f"{r.best_mean:.3f}",
            f"{r.other_mean:.3f}",
            _p_value(r.p_value),
        ]
        for r in tests.itertuples(index=False)
    ]
    return headers, rows


def _efficiency_table(efficiency: pd.DataFrame, baseline: str) -> tuple[list[str], list[list[str]]]:
    headers = ["init", "protocol", f"{baseline} AUC at 100%", "labels needed", "labels saved"]
    rows = [
        [
            r.init,
            r.protocol,
            f"{r.target:.3f}" if math.isfinite(r.target) else "n/a",
            "n/a" if r.fraction is None else fraction_label(r.fraction),
            "n/a" if r.labels_saved is None else fraction_label(r.labels_saved),
        ]
        for r in efficiency.itertuples(index=False)
    ]
    return headers, rows


def _class_grid(summary: pd.DataFrame, fraction: float) -> tuple[list[str], list[list[str]]]:
    auc = summary[summary["metric"] == "auc"]
    classes = [c for c in pd.unique(auc["class"]) if c != "mean"] + ["mean"]
    headers = ["init", "protocol", *classes]
    rows = [
        [
            init,
            protocol,
            *(
                _cell(summary, init=init, protocol=protocol, label_fraction=fraction, metric="auc", **{"class": c})
                for c in classes
            ),
        ]
        for init, protocol in _runs(summary)
    ]
    return headers, rows


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _describe(df: pd.DataFrame, summary: pd.DataFrame) -> str:
    seeds = sorted(df.loc[df["metric"] == "auc", "seed"].unique().tolist())
    n_train = summary[summary["metric"] == "n_train"]
    sizes = []
    for fraction in _fractions(summary):
        means = n_train.loc[np.isclose(n_train["label_fraction"].astype(float), fraction), "mean"]
        if len(means):
            low, high = int(round(means.min())), int(round(means.max()))
            sizes.append(f"{fraction_label(fraction)}: {low}" + (f"-{high}" if high != low else ""))
    text = f"Test AUC, mean +- std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))})."
    if sizes:
        text += " Labelled training images per fraction: " + ", ".join(sizes) + "."
    return text


def markdown_report(df: pd.DataFrame, title: str) -> str:
    """A Markdown report: mean AUC (init x protocol by label fraction) and per-class AUC at the smallest fraction.

    When the data allow it, also: mean average precision (metric ``"ap"``), Welch t-tests of
    the best init against the others (:func:`t_tests`; shown when some p-value is defined,
    i.e. two inits with >= 2 seeds) and label efficiency against init ``"random"``
    (:func:`label_efficiency`; shown when ``random`` has a 100% result). Cells read
    ``mean +- std`` over seeds with three decimals (``0.812 +- 0.013``); a single seed shows
    the mean only, a missing AUC ``n/a``.
    """
    summary = summarise(df)
    lines = [f"# {title}", ""]
    if summary.empty or not (summary["metric"] == "auc").any():
        return "\n".join(lines + ["No results yet.", ""])
    lines += [_describe(df, summary), "", "## Mean AUC over classes", "", _markdown_table(*_mean_auc_grid(summary)), ""]
    smallest = _fractions(summary)[0]
    lines += [
        f"## Per-class AUC at {fraction_label(smallest)} labels",
        "",
        _markdown_table(*_class_grid(summary, smallest)),
        "",
    ]
    if (summary["metric"] == "ap").any():
        lines += ["## Mean average precision over classes", "", _markdown_table(*_mean_auc_grid(summary, "ap")), ""]
    tests = t_tests(df)
    if np.isfinite(tests["p_value"].to_numpy(float)).any():
        lines += [
            "## Best init vs the others (Welch t-test over seeds, mean AUC)",
            "",
            _markdown_table(*_t_test_table(tests)),
            "",
        ]
    efficiency = label_efficiency(df)
    if np.isfinite(efficiency["target"].to_numpy(float)).any():
        lines += [
            "## Label efficiency",
            "",
            (
                "Smallest label fraction at which the mean AUC reaches that of `random` with 100% labels "
                "(same protocol); labels saved = 1 - that fraction."
            ),
            "",
            _markdown_table(*_efficiency_table(efficiency, "random")),
            "",
        ]
    lines += _extras_sections(df)
    return "\n".join(lines)


def _extra_table(df: pd.DataFrame, protocol: str, metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    rows_of = df[(df["protocol"] == protocol) & (df["class"] == "mean")]
    present = [m for m in metrics if (rows_of["metric"] == m).any()]
    rows = []
    for init in pd.unique(rows_of["init"]):
        values = rows_of[rows_of["init"] == init].set_index("metric")["value"]
        rows.append([init, protocol, *(f"{float(values[m]):.3f}" if m in values.index else "-" for m in present)])
    return ["init", "protocol", *present], rows


def _extras_sections(df: pd.DataFrame) -> list[str]:
    lines: list[str] = []
    retrieval = df[df["protocol"] == "retrieval"]
    if len(retrieval):
        ks = sorted({int(m.split("@")[1]) for m in retrieval["metric"]})
        metrics = [f"i2i_p@{k}" for k in ks] + [f"t2i_p@{k}" for k in ks]
        lines += [
            "## Zero-shot retrieval (test set, precision@k, relevance = identical label set)",
            "",
            "`i2i`: every test image queries the others; `t2i`: one text query per class (mean over classes).",
            "",
            _markdown_table(*_extra_table(df, "retrieval", metrics)),
            "",
        ]
        per_class = retrieval[(retrieval["class"] != "mean") & retrieval["metric"].str.startswith("t2i")]
        if len(per_class):
            k = ks[min(1, len(ks) - 1)]
            classes = list(pd.unique(per_class["class"]))
            rows = []
            for init in pd.unique(per_class["init"]):
                sel = per_class[(per_class["init"] == init) & (per_class["metric"] == f"t2i_p@{k}")].set_index("class")[
                    "value"
                ]
                rows.append([init, "retrieval", *(f"{float(sel[c]):.3f}" if c in sel.index else "-" for c in classes)])
            lines += [
                f"Text-to-image precision@{k} per class:",
                "",
                _markdown_table(["init", "protocol", *classes], rows),
                "",
            ]
    if (df["protocol"] == "regeneration").any():
        lines += [
            "## Masked image regeneration (test set)",
            "",
            "MSE and PSNR (dB) of the regenerated image against the original, SSIM (Gaussian window, sigma 1.5), "
            "MSE over the masked pixels only; grids in `regeneration_<init>.png`.",
            "",
            _markdown_table(*_extra_table(df, "regeneration", ["mse", "mse_masked", "psnr", "ssim"])),
            "",
        ]
    return lines


def format_table(df: pd.DataFrame) -> str:
    """The mean-AUC table of :func:`markdown_report` as aligned plain text for a terminal."""
    summary = summarise(df)
    if summary.empty or not (summary["metric"] == "auc").any():
        return "(no results)"
    headers, rows = _mean_auc_grid(summary)
    table = [headers, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


# Title font size and the width of one character in inches at that size (DejaVu Sans averages
# ~0.55 em), so that a title is wrapped to the figure's width instead of being cut off.
_TITLE_SIZE = 11
_CHAR_INCHES = 0.55 * _TITLE_SIZE / 72


def _wrap(text: str, width_inches: float, char_inches: float = _CHAR_INCHES) -> str:
    return textwrap.fill(text, width=max(20, int(width_inches * 0.95 / char_inches)))


def auc_vs_labels_figure(df: pd.DataFrame, title: str | None = None) -> Any:
    """The figure of :func:`plot_auc_vs_labels` (a matplotlib ``Figure`` on an Agg canvas).

    The title is wrapped to the figure's width and the layout is constrained, so a long
    title grows the top margin instead of running off the canvas.
    """
    summary = summarise(df)
    mean_auc = summary[(summary["metric"] == "auc") & (summary["class"] == "mean")]
    figure = _figure(6.0, 4.0)
    ax = figure.add_subplot(1, 1, 1)
    inits = list(pd.unique(mean_auc["init"]))
    styles = {"linear": "--", "finetune": "-"}
    colors = {init: f"C{i % 10}" for i, init in enumerate(inits)}
    for init, protocol in _runs(summary):
        rows = mean_auc[(mean_auc["init"] == init) & (mean_auc["protocol"] == protocol)].sort_values("label_fraction")
        x = rows["label_fraction"].to_numpy(float)
        y = rows["mean"].to_numpy(float)
        s = np.nan_to_num(rows["std"].to_numpy(float))
        ax.plot(x, y, styles.get(protocol, ":"), marker="o", color=colors[init], label=f"{init} / {protocol}")
        ax.fill_between(x, y - s, y + s, color=colors[init], alpha=0.15, linewidth=0)
    fractions = _fractions(summary)
    ax.set_xscale("log")
    if fractions:
        ax.set_xticks(fractions)
        ax.set_xticklabels([fraction_label(f) for f in fractions])
        ax.minorticks_off()
    ax.set_xlabel("labelled fraction of the training split")
    ax.set_ylabel("mean test AUC")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(_wrap(title, figure.get_figwidth()), fontsize=_TITLE_SIZE)
    if _runs(summary):
        ax.legend(fontsize=8)
    return figure


def plot_auc_vs_labels(df: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    """Mean test AUC against label fraction (log x axis), one line per init x protocol, +-std bands.

    Uses matplotlib's Agg canvas directly, so it works headless and does not touch pyplot's
    global backend.
    """
    figure = auc_vs_labels_figure(df, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout makes room for wrapped titles and rotated tick labels (tight_layout
    # only shrinks the axes, and cut the title of auc_vs_labels.png off).
    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _bars(ax: Any, groups: list[str], series: dict[str, tuple[list[float], list[float]]]) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, (means, stds)) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            means,
            width,
            yerr=np.nan_to_num(stds),
            label=label,
            color=f"C{i % 10}",
            capsize=2,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


_LABEL_PREFIX = re.compile(r"^(?:label|labels|y|target)[_.:-]", re.IGNORECASE)


def readable_label(column: str) -> str:
    """A label column's name as a reader expects it: ``label_pleural_effusion`` -> ``pleural effusion``.

    Drops a ``label_`` / ``label.`` / ``y_`` / ``target_`` prefix and turns ``_`` into spaces;
    case is kept (``No_Finding`` -> ``No Finding``).
    """
    text = _LABEL_PREFIX.sub("", str(column)) or str(column)
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip()


def per_class_figure(df: pd.DataFrame, fractions: list[float] | None = None) -> Any:
    """The figure of :func:`plot_per_class`, or ``None`` without per-class AUC rows.

    One panel per label fraction (left to right, ascending), sharing the AUC axis; in each,
    grouped bars per class, one bar per init x protocol, with readable class names
    (:func:`readable_label`).
    """
    summary = summarise(df[~df["protocol"].isin(EXTRA_PROTOCOLS)])
    auc = summary[(summary["metric"] == "auc") & (summary["class"] != "mean")]
    if auc.empty:
        return None
    fractions = _fractions(auc) if fractions is None else list(fractions)
    classes = list(pd.unique(auc["class"]))
    labels = [textwrap.fill(readable_label(c), 14) for c in classes]
    runs = _runs(summary)
    panel_width = max(3.0, 0.25 * len(classes) * max(1, len(runs)) + 1.0)
    figure = _figure(max(6.0, panel_width * len(fractions)), 4.2)
    axes = figure.subplots(1, len(fractions), sharey=True, squeeze=False)[0]
    for ax, fraction in zip(axes, fractions):
        at = auc[np.isclose(auc["label_fraction"].astype(float), fraction)]
        series = {}
        for init, protocol in runs:
            sel = at[(at["init"] == init) & (at["protocol"] == protocol)].set_index("class")
            series[f"{init} / {protocol}"] = (
                [float(sel["mean"].get(c, np.nan)) for c in classes],
                [float(sel["std"].get(c, np.nan)) for c in classes],
            )
        _bars(ax, labels, series)
        ax.set_title(f"{fraction_label(fraction)} labels", fontsize=10)
        ax.set_ylim(0.0, 1.0)
    axes[0].set_ylabel("test AUC (mean +- std over seeds)")
    # Above the panels, not inside one: bars reach up to AUC 1 and a legend there hides them.
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside upper center", ncols=max(1, len(names)), fontsize=8)
    return figure


def plot_per_class(df: pd.DataFrame, path: Path, fraction: float | None = None) -> Path | None:
    """Per-class test AUC (mean +- std over seeds) as grouped bars, one bar per init x protocol,
    one panel per label fraction (only ``fraction`` when given). ``None`` when there is nothing to plot."""
    figure = per_class_figure(df, None if fraction is None else [fraction])
    if figure is None:
        return None
    figure.savefig(path)
    return Path(path)


def plot_retrieval(df: pd.DataFrame, path: Path) -> Path | None:
    """Retrieval precision@k bars (i2i and t2i mean), one bar per init; ``None`` without retrieval rows."""
    rows = df[(df["protocol"] == "retrieval") & (df["class"] == "mean")]
    if rows.empty:
        return None
    metrics = sorted(pd.unique(rows["metric"]), key=lambda m: (m.split("_")[0], int(m.split("@")[1])))
    series = {}
    for init in pd.unique(rows["init"]):
        values = rows[rows["init"] == init].set_index("metric")["value"]
        series[str(init)] = ([float(values.get(m, np.nan)) for m in metrics], [0.0] * len(metrics))
    figure = _figure(max(6.0, 0.8 * len(metrics) + 2), 4.0)
    ax = figure.add_subplot(1, 1, 1)
    _bars(ax, metrics, series)
    ax.set_ylabel("precision@k (test set)")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=7)
    figure.savefig(path)
    return Path(path)


def write_outputs(df: pd.DataFrame, out_dir: Path, title: str) -> dict[str, Path]:
    """Write ``report.md``, ``summary.csv``, ``auc_vs_labels.png`` and ``auc_per_class.png`` (and
    ``retrieval.png`` when there are retrieval rows) into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / "report.md", "summary": out_dir / "summary.csv", "plot": out_dir / "auc_vs_labels.png"}
    paths["report"].write_text(markdown_report(df, title), encoding="utf-8")
    summarise(df).to_csv(paths["summary"], index=False, na_rep="nan")
    plot_auc_vs_labels(df, paths["plot"], title)
    for key, plot, name in (
        ("per_class", plot_per_class, "auc_per_class.png"),
        ("retrieval", plot_retrieval, "retrieval.png"),
    ):
        written = plot(df, out_dir / name)
        if written is not None:
            paths[key] = written
    return paths
