"""The sweep's figures: a long title stays on the canvas, every label fraction gets a panel."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedvlp.core.evaluation.report import auc_vs_labels_figure, per_class_figure, plot_per_class, readable_label

TITLE = "fedvlp demo (mixed): random vs federated pretraining (synthetic world), linear probe and fine-tune, 3 seeds"


def _results() -> pd.DataFrame:
    rows = []
    for init in ("random", "federated"):
        for fraction in (0.01, 0.1, 1.0):
            for seed in (0, 1):
                for cls, value in (("label_pleural_effusion", 0.6), ("label_cardiomegaly", 0.7), ("mean", 0.65)):
                    rows.append(
                        {
                            "init": init,
                            "protocol": "linear",
                            "label_fraction": fraction,
                            "seed": seed,
                            "metric": "auc",
                            "class": cls,
                            "value": value + 0.1 * fraction + 0.01 * seed,
                        }
                    )
    return pd.DataFrame(rows)


def _renderer(figure):
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def test_a_long_title_is_wrapped_inside_the_figure() -> None:
    figure = auc_vs_labels_figure(_results(), TITLE)
    renderer = _renderer(figure)
    title = figure.axes[0].title
    box = title.get_window_extent(renderer)
    width, height = figure.bbox.width, figure.bbox.height
    assert title.get_text().count("\n") == 1  # 101 characters on a 6-inch figure: two lines
    assert title.get_text().replace("\n", " ") == TITLE
    assert 0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height


def test_per_class_plot_has_one_panel_per_fraction_in_order() -> None:
    figure = per_class_figure(_results())
    assert [ax.get_title() for ax in figure.axes] == ["1% labels", "10% labels", "100% labels"]


def test_per_class_bars_are_the_means_of_that_fraction() -> None:
    figure = per_class_figure(_results())
    ten_percent = figure.axes[1]
    heights = [round(patch.get_height(), 6) for patch in ten_percent.patches]
    # 2 runs x 2 classes; mean over seeds 0 and 1: value + 0.01 + 0.005
    assert heights == [0.615, 0.715, 0.615, 0.715]


def test_per_class_ticks_are_readable_class_names() -> None:
    figure = per_class_figure(_results())
    _renderer(figure)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == [
        "pleural\neffusion",
        "cardiomegaly",
    ]  # wrapped at 14 characters


def test_one_requested_fraction_gives_one_panel(tmp_path: Path) -> None:
    path = plot_per_class(_results(), tmp_path / "auc_per_class.png", fraction=0.1)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [ax.get_title() for ax in per_class_figure(_results(), [0.1]).axes] == ["10% labels"]


@pytest.mark.parametrize(
    ("column", "label"),
    [
        ("label_pleural_effusion", "pleural effusion"),
        ("label.Cardiomegaly", "Cardiomegaly"),
        ("No_Finding", "No Finding"),
        ("target-edema", "edema"),
        ("label_", "label"),
    ],
)
def test_readable_label(column: str, label: str) -> None:
    assert readable_label(column) == label


def test_per_class_legend_sits_above_the_panels() -> None:
    figure = per_class_figure(_results())
    renderer = _renderer(figure)
    legend = figure.legends[0].get_window_extent(renderer)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["random / linear", "federated / linear"]
    assert all(legend.y0 >= ax.get_window_extent(renderer).y1 for ax in figure.axes)
    assert legend.y1 <= figure.bbox.height
