"""The demo's DICOM export: the images-only demo site as DICOM files that import back to the
same rows and the same pixels, and a site folder in which that site trains from DICOM."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedvlp.core.config import load_site
from fedvlp.core.data.dicom import decode_dicom
from fedvlp.core.data.dicom_demo import dicom_demo_sites, write_dicom_copies
from fedvlp.core.data.validate import validate_site

SALT = "0123456789abcdef0123456789abcdef"


def _images_site(root: Path) -> Path:
    """Three 8-bit PNGs of two patients; one holds every grey level 0..255."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i, patient in enumerate(["p1", "p1", "p2"]):
        pixels = (
            np.arange(256, dtype=np.uint8).reshape(16, 16)
            if i == 0
            else np.random.default_rng(i).integers(0, 256, (16, 24), dtype=np.uint8)
        )
        Image.fromarray(pixels, mode="L").save(root / "images" / f"b{i}.png")
        rows.append({"id": f"b{i}", "image": f"images/b{i}.png", "patient_id": patient})
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "image", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def test_dicom_copies_hold_the_png_pixels(tmp_path: Path) -> None:
    manifest = _images_site(tmp_path / "world" / "hospital_b")
    files = write_dicom_copies(manifest, tmp_path / "export")
    assert [f.relative_to(tmp_path / "export").as_posix() for f in files] == ["p1/b0.dcm", "p1/b1.dcm", "p2/b2.dcm"]
    for i, path in enumerate(files):
        png = np.asarray(Image.open(manifest.parent / "images" / f"b{i}.png"))
        assert np.array_equal(np.asarray(decode_dicom(path)), png)


def test_a_png_that_is_not_grey_is_refused_by_name(tmp_path: Path) -> None:
    manifest = _images_site(tmp_path / "hospital_b")
    Image.new("RGB", (4, 4)).save(manifest.parent / "images" / "b1.png")
    with pytest.raises(ValueError, match=r"b1\.png: image mode RGB; expected 8-bit grey"):
        write_dicom_copies(manifest, tmp_path / "export")


def test_the_dicom_site_imports_every_image_and_validates(tmp_path: Path) -> None:
    _images_site(tmp_path / "world" / "hospital_b")
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "hospital_a.yaml").write_text("name: hospital_a\n", encoding="utf-8")
    (sites / "hospital_b.yaml").write_text("name: the png one\n", encoding="utf-8")
    salt = tmp_path / "salt"
    salt.write_text(SALT, encoding="utf-8")
    site_dir, result = dicom_demo_sites(tmp_path / "world", sites, tmp_path / "dicom", salt_file=salt)
    assert (result.rows, sum(result.skipped.values())) == (3, 0)
    assert sorted(p.name for p in site_dir.glob("*.yaml")) == ["hospital_a.yaml", "hospital_b.yaml"]
    assert (site_dir / "hospital_a.yaml").read_text(encoding="utf-8") == "name: hospital_a\n"
    with (tmp_path / "dicom" / "hospital_b" / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len({r["patient_id"] for r in rows}) == 2 and len({r["study_id"] for r in rows}) == 3
    site = load_site(site_dir / "hospital_b.yaml")
    assert site.name == "hospital_b"
    (report,) = validate_site(site, workers=1)
    assert report.usable == 3
