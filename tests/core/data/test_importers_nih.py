"""NIH ChestX-ray14 import from a fixture tree in the released layout: Data_Entry_2017_v2020.csv
with the official header, images_001/images/*.png ..., train_val_list.txt / test_list.txt."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError
from fedvlp.core.data.importers import import_layout
from fedvlp.core.data.importers.nih import NIH_LABELS
from fedvlp.server.cli.main import main
from tests.core.data.test_importers_common import (
    read_manifest,
    round_trip,
    write_csv,
    write_image,
)

# The released header: the bracketed names hold commas, so they are 4 CSV columns.
HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]


def make_nih(root: Path, header: list[str] = HEADER, file_name: str = "Data_Entry_2017_v2020.csv") -> Path:
    rows = [
        ["00000001_000.png", "Cardiomegaly", "0", "1", "57", "M", "PA", "2682", "2749", "0.143", "0.143"],
        ["00000001_001.png", "Cardiomegaly|Emphysema", "1", "1", "58", "M", "PA", "2894", "2729", "0.143", "0.143"],
        [
            "00000003_000.png",
            "Hernia|Pleural_Thickening",
            "0",
            "3",
            "081Y",
            "F",
            "AP",
            "2500",
            "2048",
            "0.168",
            "0.168",
        ],
        ["00000004_000.png", "No Finding", "0", "4", "82", "M", "AP", "2500", "2048", "0.168", "0.168"],
        ["00000005_000.png", "No Finding", "0", "5", "69", "F", "PA", "2048", "2500", "0.168", "0.168"],
        ["00000006_000.png", "Covid", "0", "6", "40", "F", "PA", "2048", "2500", "0.168", "0.168"],
    ]
    keep = [HEADER.index(c) for c in header]
    write_csv(root / file_name, header, [[r[i] for i in keep] for r in rows])
    write_image(root / "images_001" / "images" / "00000001_000.png")
    write_image(root / "images_001" / "images" / "00000001_001.png")
    write_image(root / "images_002" / "images" / "00000003_000.png")
    write_image(root / "images_002" / "images" / "00000004_000.png")
    write_image(root / "images_002" / "images" / "00000006_000.png")  # 00000005_000.png is missing
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000003_000.png\n", encoding="utf-8")
    (root / "test_list.txt").write_text("00000004_000.png\n00000005_000.png\n", encoding="utf-8")
    return root


@pytest.fixture()
def nih(tmp_path: Path) -> Path:
    return make_nih(tmp_path / "ChestX-ray14")


def test_cli_writes_rows_with_patient_view_split_and_metadata(nih: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "manifest.csv"
    assert main(["import", "nih", str(nih), "--out", str(out)]) == 0
    rows = read_manifest(out)
    assert [
        (r["id"], r["study_id"], r["view"], r["patient_id"], r["split"], r["age"], r["sex"], r["followup"])
        for r in rows
    ] == [
        ("00000001_000", "00000001_000", "PA", "1", "train", "57", "M", "0"),
        ("00000001_001", "00000001_001", "PA", "1", "train", "58", "M", "1"),
        ("00000003_000", "00000003_000", "AP", "3", "train", "81", "F", "0"),
        ("00000004_000", "00000004_000", "AP", "4", "test", "82", "M", "0"),
    ]
    assert rows[2]["image"] == "../ChestX-ray14/images_002/images/00000003_000.png"


def test_finding_labels_become_fifteen_zero_one_columns(nih: Path, tmp_path: Path) -> None:
    result = import_layout("nih", nih, tmp_path / "m.csv")
    assert result.label_columns == [f"label_{n.replace(' ', '_')}" for n in NIH_LABELS]
    rows = read_manifest(result.manifest)
    positives = [sorted(c[len("label_") :] for c in result.label_columns if r[c] == "1") for r in rows]
    assert positives == [
        ["Cardiomegaly"],
        ["Cardiomegaly", "Emphysema"],
        ["Hernia", "Pleural_Thickening"],
        ["No_Finding"],
    ]
    assert all(r[c] in ("0", "1") for r in rows for c in result.label_columns)


def test_missing_image_and_unknown_label_are_skipped_and_counted(nih: Path, tmp_path: Path) -> None:
    result = import_layout("nih", nih, tmp_path / "m.csv")
    assert result.rows == 4
    assert dict(result.skipped) == {"missing_image": 1, "unknown_label": 1}
    assert result.notes["not_in_split_lists"] == 0


def test_one_image_folder_and_the_2017_file_name(tmp_path: Path) -> None:
    src = tmp_path / "nih"
    write_csv(src / "Data_Entry_2017.csv", HEADER[:7], [["00000009_000.png", "Mass|Nodule", "0", "9", "45", "F", "PA"]])
    write_image(src / "images" / "00000009_000.png")
    rows = read_manifest(import_layout("nih", src, tmp_path / "m.csv").manifest)
    assert [(r["id"], r["label_Mass"], r["label_Nodule"], r["split"]) for r in rows] == [("00000009_000", "1", "1", "")]


def test_round_trip_into_an_image_only_site(nih: Path, tmp_path: Path) -> None:
    rows = round_trip(import_layout("nih", nih, tmp_path / "data" / "manifest.csv"), tmp_path)
    assert list(rows.ids) == ["00000001_000", "00000001_001", "00000003_000", "00000004_000"]
    assert rows.images is not None and all(p.is_file() for p in rows.images) and rows.reports is None


def test_missing_required_column_names_the_file_and_column(tmp_path: Path) -> None:
    src = make_nih(tmp_path / "nih", [c for c in HEADER if c != "Finding Labels"])
    with pytest.raises(ConfigError, match=r"Data_Entry_2017_v2020\.csv: key 'Finding Labels'"):
        import_layout("nih", src, tmp_path / "m.csv")
