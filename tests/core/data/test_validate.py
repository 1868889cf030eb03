"""validate-site reads every row and opens every image, counting each problem with its row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedvlp.core.config import load_site, project_root
from fedvlp.core.data.validate import format_report, validate_site
from tests.conftest import CXR_DATA, needs_cxr


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
    assert report.skipped == {"empty_report": 1, "duplicate_id": 1, "bad_image": 2}
    assert any("m.csv:3: empty_report" in p for p in report.problems)
    assert any("broken.png" in p for p in report.problems) and any("missing.png" in p for p in report.problems)
    assert report.labels["label_x"] == {"1": 2, "0": 2, "(blank)": 1}


def test_report_text_names_the_site_and_the_counts(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path))
    text = format_report(site, validate_site(site))
    assert "5 rows, 1 usable (image+text pairs)" in text and "skipped bad_image: 2" in text


@needs_cxr()
@pytest.mark.data
@pytest.mark.parametrize(("name", "rows", "usable"), [("paired", 585, 585), ("nih_images", 1000, 1000), ("reports_only", 3955, 3425)])
def test_the_real_cxr_sites_validate(name: str, rows: int, usable: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVLP_CXR_DATA", str(CXR_DATA))
    (report,) = validate_site(load_site(project_root() / "sites" / "cxr" / f"{name}.yaml"))
    assert (report.rows, report.usable) == (rows, usable)
