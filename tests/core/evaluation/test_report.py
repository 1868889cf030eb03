import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fedvlp.core.evaluation import (
    format_table,
    label_efficiency,
    markdown_report,
    plot_auc_vs_labels,
    summarise,
    t_tests,
    write_outputs,
)


def _results() -> pd.DataFrame:
    rows = []
    values = {
        ("random", 0.01): [0.60, 0.62],
        ("random", 1.0): [0.80, 0.84],
        ("fed", 0.01): [0.70, 0.74],
        ("fed", 1.0): [0.90, 0.90],
    }
    for (init, fraction), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            base = {"init": init, "protocol": "linear", "label_fraction": fraction, "seed": seed}
            rows += [
                {**base, "metric": "auc", "class": "a", "value": value - 0.05},
                {**base, "metric": "auc", "class": "b", "value": value + 0.05},
                {**base, "metric": "auc", "class": "mean", "value": value},
                {**base, "metric": "n_train", "class": "all", "value": 7.0 if fraction < 1 else 700.0},
            ]
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


# --- t-tests, label efficiency, AP table -------------------------------------------------------


def _mean_auc_rows(values: dict, protocol: str = "linear", metric: str = "auc") -> pd.DataFrame:
    """``values``: ``{(init, fraction): [per-seed mean AUC]}`` -> long-format rows of class "mean"."""
    return pd.DataFrame(
        [
            {
                "init": init,
                "protocol": protocol,
                "label_fraction": fraction,
                "seed": seed,
                "metric": metric,
                "class": "mean",
                "value": value,
            }
            for (init, fraction), per_seed in values.items()
            for seed, value in enumerate(per_seed)
        ]
    )


def test_t_tests_compare_the_best_init_with_each_other_by_welch_over_seeds():
    values = {
        ("random", 0.1): [0.60, 0.65, 0.62],
        ("fed", 0.1): [0.80, 0.78, 0.83],
        ("central", 0.1): [0.70, 0.71, 0.69],
    }
    tests = t_tests(_mean_auc_rows(values))
    assert list(tests["best"]) == ["fed", "fed"] and list(tests["other"]) == ["random", "central"]
    for other, row in zip(["random", "central"], tests.itertuples()):
        expected = stats.ttest_ind(values[("fed", 0.1)], values[(other, 0.1)], equal_var=False)
        assert row.p_value == pytest.approx(expected.pvalue, rel=1e-12) and row.t == pytest.approx(expected.statistic)
        assert row.best_mean == pytest.approx(np.mean(values[("fed", 0.1)])) and row.n_best == 3


def test_t_tests_are_per_protocol_and_fraction():
    df = pd.concat(
        [
            _mean_auc_rows(
                {
                    ("random", 0.1): [0.9, 0.8],
                    ("fed", 0.1): [0.5, 0.6],
                    ("fed", 1.0): [0.9, 0.91],
                    ("random", 1.0): [0.7, 0.75],
                }
            ),
            _mean_auc_rows({("random", 0.1): [0.5, 0.6], ("fed", 0.1): [0.7, 0.8]}, protocol="finetune"),
        ]
    )
    tests = t_tests(df)
    got = list(zip(tests["protocol"], tests["label_fraction"], tests["best"], tests["other"]))
    assert got == [
        ("linear", 0.1, "random", "fed"),
        ("linear", 1.0, "fed", "random"),
        ("finetune", 0.1, "fed", "random"),
    ]


def test_t_tests_give_nan_with_fewer_than_two_seeds():
    tests = t_tests(_mean_auc_rows({("random", 0.1): [0.6], ("fed", 0.1): [0.8, 0.82]}))
    assert len(tests) == 1 and math.isnan(tests["p_value"].iloc[0]) and tests["best"].iloc[0] == "fed"


def test_label_efficiency_finds_the_smallest_fraction_reaching_random_at_full_labels():
    values = {
        ("random", 0.01): [0.60, 0.62],
        ("random", 0.1): [0.70, 0.72],
        ("random", 1.0): [0.80, 0.82],
        ("fed", 0.01): [0.75, 0.77],
        ("fed", 0.1): [0.81, 0.81],
        ("fed", 1.0): [0.90, 0.90],
    }
    out = label_efficiency(_mean_auc_rows(values)).set_index("init")
    assert out.loc["fed", "target"] == pytest.approx(0.81)
    assert out.loc["fed", "fraction"] == pytest.approx(0.1) and out.loc["fed", "labels_saved"] == pytest.approx(0.9)
    assert out.loc["random", "fraction"] == pytest.approx(1.0) and out.loc["random", "labels_saved"] == pytest.approx(
        0.0
    )


def test_label_efficiency_is_none_when_never_reached():
    values = {("random", 1.0): [0.80, 0.82], ("weak", 0.1): [0.60, 0.61], ("weak", 1.0): [0.79, 0.80]}
    out = label_efficiency(_mean_auc_rows(values)).set_index("init")
    assert out.loc["weak", "fraction"] is None and out.loc["weak", "labels_saved"] is None


def test_label_efficiency_is_none_without_a_random_full_label_result():
    out = label_efficiency(_mean_auc_rows({("random", 0.1): [0.7], ("fed", 0.1): [0.9]}))
    assert out["fraction"].isna().all() and out["labels_saved"].isna().all() and out["target"].isna().all()


def test_markdown_report_adds_t_test_and_label_efficiency_tables():
    text = markdown_report(_results(), "Demo")
    p = stats.ttest_ind([0.70, 0.74], [0.60, 0.62], equal_var=False).pvalue
    assert "Welch t-test" in text and f"| linear | 1% | fed | random | 0.720 | 0.610 | {p:.3f} |" in text
    assert "## Label efficiency" in text and "| fed | linear | 0.820 | 100% | 0% |" in text


def test_markdown_report_leaves_out_tables_that_cannot_be_computed():
    df = _results()
    df = df[(df.seed == 0) & (df.init == "fed")]
    text = markdown_report(df, "Demo")
    assert "Welch" not in text and "Label efficiency" not in text and "average precision" not in text


def test_markdown_report_adds_an_ap_table():
    df = _results()
    ap = df[df.metric == "auc"].assign(metric="ap")
    ap["value"] = ap["value"] - 0.1
    text = markdown_report(pd.concat([df, ap], ignore_index=True), "Demo")
    section = text.split("## Mean average precision over classes")[1]
    assert "| random | linear | 0.510 +- 0.014 | 0.720 +- 0.028 |" in section


def test_no_p_value_when_both_inits_are_constant_over_seeds():
    import math

    import pandas as pd

    from fedvlp.core.evaluation import t_tests

    rows = [
        {
            "init": i,
            "protocol": "linear",
            "label_fraction": 1.0,
            "seed": s,
            "metric": "auc",
            "class": "mean",
            "value": v,
        }
        for i, v in (("a", 0.9), ("b", 0.8))
        for s in (0, 1, 2)
    ]
    tests = t_tests(pd.DataFrame(rows))
    assert len(tests) == 1 and tests["best"][0] == "a" and math.isnan(tests["p_value"][0])
