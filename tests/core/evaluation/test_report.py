import math

import pandas as pd
import pytest

from fedvlp.core.evaluation import format_table, markdown_report, plot_auc_vs_labels, summarise, write_outputs


def _results() -> pd.DataFrame:
    rows = []
    values = {("random", 0.01): [0.60, 0.62], ("random", 1.0): [0.80, 0.84], ("fed", 0.01): [0.70, 0.74], ("fed", 1.0): [0.90, 0.90]}
    for (init, fraction), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            base = {"init": init, "protocol": "linear", "label_fraction": fraction, "seed": seed}
            rows += [{**base, "metric": "auc", "class": "a", "value": value - 0.05},
                     {**base, "metric": "auc", "class": "b", "value": value + 0.05},
                     {**base, "metric": "auc", "class": "mean", "value": value},
                     {**base, "metric": "n_train", "class": "all", "value": 7.0 if fraction < 1 else 700.0}]
    return pd.DataFrame(rows)


def test_summarise_gives_mean_and_std_over_seeds():
    summary = summarise(_results())
    row = summary[(summary.init == "random") & (summary.label_fraction == 1.0) & (summary["class"] == "mean")].iloc[0]
    assert row["mean"] == pytest.approx(0.82) and row["std"] == pytest.approx(0.0282843, abs=1e-6) and row["n"] == 2
    assert list(summary.init.unique()) == ["random", "fed"]


def test_markdown_report_has_mean_pm_std_table_and_per_class_table_at_smallest_fraction():
    text = markdown_report(_results(), "Demo")
    assert text.startswith("# Demo")
    assert "| init | protocol | 1% | 100% |" in text
    assert "| random | linear | 0.610 +- 0.014 | 0.820 +- 0.028 |" in text
    assert "Per-class AUC at 1% labels" in text and "| init | protocol | a | b | mean |" in text
    assert "| fed | linear | 0.670 +- 0.028 | 0.770 +- 0.028 | 0.720 +- 0.028 |" in text


def test_format_table_shows_the_same_numbers_as_plain_text():
    text = format_table(_results())
    assert "|" not in text
    assert "0.610 +- 0.014" in text and "0.900 +- 0.000" in text


def test_plot_and_write_outputs_create_files(tmp_path):
    path = plot_auc_vs_labels(_results(), tmp_path / "plot.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    paths = write_outputs(_results(), tmp_path / "out", "Demo")
    assert paths["report"].name == "report.md" and paths["plot"].name == "auc_vs_labels.png"
    assert all(p.is_file() for p in paths.values())


def test_single_seed_and_missing_auc_are_shown_without_a_std():
    df = _results()
    df = df[df.seed == 0].copy()
    df.loc[(df.init == "fed") & (df.label_fraction == 1.0) & (df["class"] == "mean"), "value"] = math.nan
    text = format_table(df)
    assert "0.600 " in text + " " and "+-" not in text and "n/a" in text
