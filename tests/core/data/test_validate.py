"""validate-site reads every row and opens every image, counting each problem with its row,
with the same checks and reason codes as training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedvlp.core.config import RunConfig, load_site, project_root
from fedvlp.core.data.validate import format_report, skipped_in_history, validate_site
from fedvlp.core.models import build_model
from fedvlp.core.train import LocalTrainer, load_site_datasets
from tests.conftest import CXR_DATA, needs_cxr
from tests.core.data.test_images import colour_png, grey_as_rgb_jpeg, png16, png_header_only, truncated_png


def _site(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 40), 128, dtype=np.uint8)).save(images / f"{name}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(50)))
    (tmp_path / "m.csv").write_text(
        "id,image,report,label_x\n"
        "1,images/a.png,Heart is enlarged.,1\n"
        "2,images/b.png,,0\n"
        "3,images/broken.png,No effusion.,0\n"
        "4,images/missing.png,Normal.,\n"
        "1,images/b.png,Duplicate.,1\n"
    )
    site = tmp_path / "site.yaml"
    site.write_text("name: t\nsources:\n  - manifest: m.csv\n    kind: pairs\n    label_columns: [label_x]\n")
    return site


def test_every_problem_is_counted_with_its_row(tmp_path: Path) -> None:
    (report,) = validate_site(load_site(_site(tmp_path)))
    assert report.rows == 5 and report.usable == 1
    assert report.skipped == {"empty_report": 1, "duplicate_id": 1, "image_corrupt": 1, "image_missing": 1}
    assert any("m.csv:3: empty_report" in p for p in report.problems)
    assert any("m.csv:4: image_corrupt (id '3': " in p and "broken.png" in p for p in report.problems)
    assert any("m.csv:5: image_missing (id '4': " in p and "missing.png" in p for p in report.problems)
    assert report.labels["label_x"] == {"1": 2, "0": 2, "(blank)": 1}


def test_report_text_names_the_site_and_the_counts(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path))
    text = format_report(site, validate_site(site))
    assert "5 rows, 1 usable (image+text pairs)" in text and "skipped image_corrupt: 1" in text


def _every_problem_site(tmp_path: Path) -> Path:
    """One row per check: 4 good rows and 10 bad ones, each bad in exactly one way."""
    images = tmp_path / "images"
    images.mkdir()
    for k in range(4):
        Image.fromarray(np.full((40, 40), 40 * (k + 1), dtype=np.uint8)).save(images / f"ok{k}.png")
    grey_as_rgb_jpeg(images / "grey_rgb.jpg")
    truncated_png(images / "cut.png")
    png16(images / "deep.png")
    colour_png(images / "colour.png")
    png_header_only(images / "huge.png", 9000, 9000)
    (images / "junk.png").write_bytes(b"junk")
    lines = [
        b"id,image,report,y",
        b"g1,images/ok0.png,Clear.,1",
        b"g2,images/ok1.png,Clear.,0",
        b"g3,images/ok2.png,Clear.,",
        b"g4,images/grey_rgb.jpg,Clear.,0",
        b"b1,images/cut.png,Clear.,0",
        b"b2,images/deep.png,Clear.,0",
        b"b3,images/colour.png,Clear.,0",
        b"b4,images/huge.png,Clear.,0",
        b"b5,images/junk.png,Clear.,0",
        b"b6,images/gone.png,Clear.,0",
        b"b7,images/ok3.png,,0",
        b"b8,images/ok3.png,Clear \xff\xfe.,0",
        b"b9,images/ok3.png,Clear.,2",
        b"g1,images/ok3.png,Clear.,1",
    ]
    (tmp_path / "m.csv").write_bytes(b"\n".join(lines) + b"\n")
    site = tmp_path / "site.yaml"
    site.write_text("name: every\nsources:\n  - manifest: m.csv\n    kind: pairs\n    label_columns: [y]\n")
    return site


EVERY_PROBLEM = {
    "image_truncated": 1,
    "image_16bit": 1,
    "image_rgb": 1,
    "image_huge": 1,
    "image_corrupt": 1,
    "image_missing": 1,
    "empty_report": 1,
    "non_utf8": 1,
    "bad_label": 1,
    "duplicate_id": 1,
}


def test_each_check_counts_exactly_its_row(tmp_path: Path) -> None:
    (report,) = validate_site(load_site(_every_problem_site(tmp_path)))
    assert report.rows == 14 and report.usable == 4 and report.skipped == EVERY_PROBLEM
    rows = {p.split(": ")[1].split(" ")[0]: int(p.split(": ")[0].rsplit(":", 1)[1]) for p in report.problems}
    assert rows == {
        "image_truncated": 6,
        "image_16bit": 7,
        "image_rgb": 8,
        "image_huge": 9,
        "image_corrupt": 10,
        "image_missing": 11,
        "empty_report": 12,
        "non_utf8": 13,
        "bad_label": 14,
        "duplicate_id": 15,
    }


def test_worker_processes_give_the_same_report(tmp_path: Path) -> None:
    site = load_site(_every_problem_site(tmp_path))
    (serial,) = validate_site(site)
    (parallel,) = validate_site(site, workers=2)
    assert (parallel.usable, parallel.skipped, sorted(parallel.problems)) == (
        serial.usable,
        serial.skipped,
        sorted(serial.problems),
    )


def test_training_skips_and_counts_the_same_rows(tmp_path: Path, tiny_run: RunConfig) -> None:
    site = load_site(_every_problem_site(tmp_path))
    run = tiny_run.replace(batch_size=32)
    model = build_model(run)
    trainer = LocalTrainer(model, load_site_datasets(site, run, model.max_text_len), run, torch.device("cpu"))
    result = trainer.train(steps=1)  # one batch holds every usable manifest row
    assert result.skipped == EVERY_PROBLEM
    assert {k: v for k, v in result.metrics.items() if k.startswith("skipped/")} == {
        f"skipped/{k}": float(v) for k, v in EVERY_PROBLEM.items()
    }
    (report,) = validate_site(site)
    assert sorted(trainer.problems) == sorted(report.problems)


def test_the_counts_reach_the_clients_round_metrics(tmp_path: Path, tiny_run: RunConfig) -> None:
    from fedvlp.client.app import train_round
    from fedvlp.core.params import METRICS_KEY

    site = load_site(_every_problem_site(tmp_path))
    run = tiny_run.replace(batch_size=32, local_steps=1)
    reply = train_round(site, run, build_model(run).state_dict(), server_round=1)
    metrics = dict(reply.metric_records[METRICS_KEY])
    assert {k: v for k, v in metrics.items() if k.startswith("skipped/")} == {
        f"skipped/{k}": float(v) for k, v in EVERY_PROBLEM.items()
    }


def test_run_summary_sums_the_last_counts_of_every_site() -> None:
    history = [
        {
            "sites": [
                {"node_id": 1, "metrics": {"skipped/image_rgb": 2.0, "loss/total": 1.0}},
                {"node_id": 2, "metrics": {}},
            ]
        },
        {
            "sites": [
                {"node_id": 1, "metrics": {"skipped/image_rgb": 3.0}},
                {"node_id": 2, "metrics": {"skipped/non_utf8": 1.0, "skipped/image_rgb": 1.0}},
            ]
        },
    ]
    assert skipped_in_history(history) == {"image_rgb": 4, "non_utf8": 1}


@needs_cxr()
@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "rows", "usable"), [("paired", 585, 585), ("nih_images", 1000, 1000), ("reports_only", 3955, 3425)]
)
def test_the_real_cxr_sites_validate(name: str, rows: int, usable: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVLP_CXR_DATA", str(CXR_DATA))
    (report,) = validate_site(load_site(project_root() / "sites" / "cxr" / f"{name}.yaml"))
    assert (report.rows, report.usable) == (rows, usable)
    assert not {"image_16bit", "image_rgb", "image_huge"} & set(report.skipped)  # real data passes the default policy
