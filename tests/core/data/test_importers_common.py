"""Shared by every importer: label values, split names, the manifest writer, image paths,
and the site file that round-trips into load_site + load_source_rows. Helpers used by the
per-layout test modules live here too."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from fedvlp.core.config import ConfigError, load_site
from fedvlp.core.data.importers import ImportResult, import_layout, site_yaml
from fedvlp.core.data.importers.common import (
    ManifestWriter,
    image_reference,
    label_column,
    label_value,
    normalize_split,
    report_fields,
)
from fedvlp.core.data.manifest import ManifestRows, load_source_rows
from fedvlp.core.data.reports import DEID_TOKEN


# ------------------------------------------------------------------ helpers for the layout tests
def write_image(path: Path, fmt: str | None = None) -> Path:
    """A tiny real grayscale image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=128).save(path, format=fmt)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def header_of(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def round_trip(result: ImportResult, tmp_path: Path) -> ManifestRows:
    """Write the site file for ``result`` and load its source the way training does."""
    site_file = tmp_path / "sites" / "imported.yaml"
    site_file.parent.mkdir(parents=True, exist_ok=True)
    site_file.write_text(site_yaml(result, "imported", site_file), encoding="utf-8")
    site = load_site(site_file)
    assert len(site.sources) == 1
    return load_source_rows(site.sources[0])


# ------------------------------------------------------------------ tests
def test_label_value_maps_chexpert_values_and_uncertain_policy() -> None:
    assert [label_value(v) for v in ("1.0", "0.0", "", "1", "0", "-1.0")] == ["1", "0", "", "1", "0", ""]
    assert label_value("-1.0", "zero") == "0"
    assert label_value("-1", "one") == "1"


def test_label_value_rejects_other_values() -> None:
    with pytest.raises(ValueError, match="'2'"):
        label_value("2")
    with pytest.raises(ValueError, match="'yes'"):
        label_value("yes")


def test_label_column_spells_like_the_site_manifests() -> None:
    assert label_column("No Finding") == "label_No_Finding"
    assert label_column("Pleural_Thickening") == "label_Pleural_Thickening"
    assert label_column("Pulmonary Atelectasis") == "label_Pulmonary_Atelectasis"
    assert label_column("label_Pneumonia") == "label_Pneumonia"


def test_normalize_split_names() -> None:
    assert [normalize_split(s) for s in ("train", "validate", "valid", "VAL", "test", "holdout")] == [
        "train",
        "val",
        "val",
        "val",
        "test",
        "holdout",
    ]


def test_report_fields_split_a_whole_report_and_normalize_deid() -> None:
    fields = report_fields("FINDINGS: Seen by Dr. ___.\n IMPRESSION:  Normal.")
    assert fields == {
        "report": f"FINDINGS: Seen by Dr. {DEID_TOKEN}. IMPRESSION: Normal.",
        "indication": "",
        "comparison": "",
        "findings": f"Seen by Dr. {DEID_TOKEN}.",
        "impression": "Normal.",
    }


def test_report_fields_join_given_sections() -> None:
    fields = report_fields(sections={"impression": "No XXXX.", "findings": "Clear."})
    assert fields["report"] == f"FINDINGS: Clear. IMPRESSION: No {DEID_TOKEN}."
    assert fields["impression"] == f"No {DEID_TOKEN}."


def test_image_reference_is_relative_to_the_manifest_folder(tmp_path: Path) -> None:
    image = tmp_path / "data" / "files" / "a.jpg"
    assert image_reference(image, tmp_path / "out") == "../data/files/a.jpg"
    assert image_reference(image, tmp_path / "out", absolute=True) == str(image)


def test_manifest_writer_leaves_nothing_when_the_import_fails(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    result = ImportResult("test", out)
    with pytest.raises(RuntimeError), ManifestWriter(out, ("id", "image"), result) as writer:
        writer.write({"id": "a", "image": "a.png"})
        raise RuntimeError("input broke")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_import_layout_rejects_an_option_the_layout_does_not_take(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--uncertain.*layout 'nih'"):
        import_layout("nih", tmp_path, tmp_path / "m.csv", uncertain="one")


def test_import_layout_rejects_an_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LAYOUT.*'padchest'"):
        import_layout("padchest", tmp_path, tmp_path / "m.csv")


def test_site_yaml_of_an_image_only_import(tmp_path: Path) -> None:
    result = ImportResult(
        "nih", tmp_path / "data" / "manifest.csv", columns=("id", "image", "label_Mass"), rows=3, has_reports=False
    )
    text = site_yaml(result, "nih_site", tmp_path / "sites" / "nih.yaml")
    assert '  - manifest: "../data/manifest.csv"' in text
    assert "    kind: images" in text
    assert "report_column" not in text
    assert "    label_columns: [label_Mass]" in text
