"""Generic CSV import through a column mapping (--map pairs or a YAML file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError
from fedvlp.core.data.importers import import_layout, parse_mapping
from fedvlp.core.data.reports import DEID_TOKEN
from fedvlp.server.cli.main import main
from tests.core.data.test_importers_common import (
    read_manifest,
    round_trip,
    write_csv,
    write_image,
)

HEADER = ["accession", "file", "text", "pid", "Pneumonia", "Effusion", "part"]
MAP = ["id=accession", "image=file", "report=text", "patient_id=pid", "split=part", "labels=Pneumonia,Effusion"]


def make_export(root: Path, header: list[str] = HEADER) -> Path:
    rows = [
        [
            "A1",
            "imgs/a1.png",
            "INDICATION: Cough. FINDINGS: Right lower lobe opacity. IMPRESSION: Pneumonia, called to [** Name **].",
            "P1",
            "1",
            "0",
            "training",
        ],
        ["A2", "imgs/a2.png", "Lungs are clear.", "P2", "0", "-1", "test"],
        ["A3", "imgs/missing.png", "FINDINGS: Clear.", "P3", "0", "0", "train"],
        ["A1", "imgs/a1.png", "FINDINGS: Duplicate.", "P1", "1", "0", "train"],
        ["A4", "imgs/a4.png", "   ", "P4", "0", "0", "train"],
        ["A5", "imgs/a5.png", "FINDINGS: Effusion.", "P5", "yes", "1", "train"],
    ]
    keep = [HEADER.index(c) for c in header]
    write_csv(root / "export.csv", header, [[r[i] for i in keep] for r in rows])
    for name in ("a1", "a2", "a4", "a5"):
        write_image(root / "imgs" / f"{name}.png")
    return root / "export.csv"


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    return make_export(tmp_path / "hospital")


def test_cli_map_writes_mapped_columns_sections_and_labels(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "manifest.csv"
    assert main(["import", "generic", str(export), "--out", str(out), "--map", *MAP]) == 0
    rows = read_manifest(out)
    assert [(r["id"], r["patient_id"], r["split"], r["label_Pneumonia"], r["label_Effusion"]) for r in rows] == [
        ("A1", "P1", "train", "1", "0"),
        ("A2", "P2", "test", "0", ""),
    ]
    assert rows[0]["image"] == "../hospital/imgs/a1.png"
    assert (rows[0]["indication"], rows[0]["findings"]) == ("Cough.", "Right lower lobe opacity.")
    assert rows[0]["impression"] == f"Pneumonia, called to {DEID_TOKEN}."
    assert (rows[1]["findings"], rows[1]["impression"]) == ("Lungs are clear.", "")


def test_every_skip_reason_is_counted(export: Path, tmp_path: Path) -> None:
    result = import_layout("generic", export, tmp_path / "m.csv", mapping=parse_mapping(MAP))
    assert result.rows == 2
    assert dict(result.skipped) == {"missing_image": 1, "duplicate_id": 1, "empty_report": 1, "bad_label": 1}


def test_yaml_mapping_file_with_named_labels(export: Path, tmp_path: Path) -> None:
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text("id: accession\nimage: file\nlabels: {pneumonia: Pneumonia}\n", encoding="utf-8")
    out = tmp_path / "m.csv"
    assert main(["import", "generic", str(export), "--out", str(out), "--map-file", str(mapping_file)]) == 0
    rows = read_manifest(out)
    assert list(rows[0]) == ["id", "image", "study_id", "view", "patient_id", "split", "label_pneumonia"]
    assert [r["id"] for r in rows] == ["A1", "A2", "A4"]  # image-only: empty reports do not matter


def test_uncertain_policy_applies(export: Path, tmp_path: Path) -> None:
    rows = read_manifest(
        import_layout("generic", export, tmp_path / "m.csv", mapping=parse_mapping(MAP), uncertain="zero").manifest
    )
    assert rows[1]["label_Effusion"] == "0"


def test_reports_only_mapping(export: Path, tmp_path: Path) -> None:
    result = import_layout(
        "generic", export, tmp_path / "m.csv", mapping=parse_mapping(["id=accession", "findings=text"])
    )
    assert result.kind == "reports" and result.rows == 4  # A1, A2, A3, A5: no image is checked
    assert read_manifest(result.manifest)[1]["report"] == "FINDINGS: Lungs are clear."


def test_round_trip_into_a_pairs_site(export: Path, tmp_path: Path) -> None:
    rows = round_trip(
        import_layout("generic", export, tmp_path / "data" / "manifest.csv", mapping=parse_mapping(MAP)), tmp_path
    )
    assert list(rows.ids) == ["A1", "A2"] and rows.source.label_columns == ("label_Pneumonia", "label_Effusion")
    assert rows.images is not None and all(p.is_file() for p in rows.images)


def test_a_mapped_column_missing_from_the_csv_names_the_file_and_column(tmp_path: Path) -> None:
    export = make_export(tmp_path / "hospital", [c for c in HEADER if c != "pid"])
    with pytest.raises(ConfigError, match=r"export\.csv: key 'pid'"):
        import_layout("generic", export, tmp_path / "m.csv", mapping=parse_mapping(MAP))


def test_a_mapping_without_id_is_an_error(export: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="id=COLUMN"):
        import_layout("generic", export, tmp_path / "m.csv", mapping=parse_mapping(["image=file"]))


def test_an_unknown_mapping_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'--map'.*'reprot'"):
        parse_mapping(["reprot=text"])
