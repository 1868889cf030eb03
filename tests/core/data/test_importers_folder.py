"""Folder-per-class import from a fixture tree in Kermany's layout.

chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError
from fedvlp.core.data.importers import import_layout
from fedvlp.server.cli.main import main
from tests.core.data.test_importers_common import read_manifest, round_trip, write_image


def make_kermany(root: Path) -> Path:
    for rel in (
        "train/NORMAL/IM-0115-0001.jpeg",
        "train/NORMAL/NORMAL2-IM-0927-0001.jpeg",
        "train/PNEUMONIA/person1_bacteria_1.jpeg",
        "train/PNEUMONIA/person1_virus_6.jpeg",
        "val/NORMAL/NORMAL2-IM-1427-0001.jpeg",
        "test/PNEUMONIA/person100_bacteria_475.jpeg",
        "test/PNEUMONIA/scan_7.jpeg",
    ):
        write_image(root / rel, "JPEG")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("not an image", encoding="utf-8")
    return root


@pytest.fixture()
def kermany(tmp_path: Path) -> Path:
    return make_kermany(tmp_path / "chest_xray")


def test_cli_writes_split_class_and_one_hot_labels(kermany: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "manifest.csv"
    assert main(["import", "folder", str(kermany), "--out", str(out)]) == 0
    rows = read_manifest(out)
    assert [(r["id"], r["split"], r["class"], r["label_NORMAL"], r["label_PNEUMONIA"]) for r in rows] == [
        ("test_PNEUMONIA_person100_bacteria_475", "test", "PNEUMONIA", "0", "1"),
        ("test_PNEUMONIA_scan_7", "test", "PNEUMONIA", "0", "1"),
        ("train_NORMAL_IM-0115-0001", "train", "NORMAL", "1", "0"),
        ("train_NORMAL_NORMAL2-IM-0927-0001", "train", "NORMAL", "1", "0"),
        ("train_PNEUMONIA_person1_bacteria_1", "train", "PNEUMONIA", "0", "1"),
        ("train_PNEUMONIA_person1_virus_6", "train", "PNEUMONIA", "0", "1"),
        ("val_NORMAL_NORMAL2-IM-1427-0001", "val", "NORMAL", "1", "0"),
    ]
    assert rows[2]["image"] == "../chest_xray/train/NORMAL/IM-0115-0001.jpeg"


def test_kermany_patterns_give_patient_ids_by_default(kermany: Path, tmp_path: Path) -> None:
    result = import_layout("folder", kermany, tmp_path / "m.csv")
    assert [r["patient_id"] for r in read_manifest(result.manifest)] == [
        "person100",
        "",
        "IM-0115",
        "NORMAL2-IM-0927",
        "person1",
        "person1",
        "NORMAL2-IM-1427",
    ]
    assert result.notes == {"no_patient_id": 1}


def test_a_custom_patient_pattern(kermany: Path, tmp_path: Path) -> None:
    result = import_layout("folder", kermany, tmp_path / "m.csv", patient_pattern=r"^(?P<patient>scan)_\d+$")
    assert [r["patient_id"] for r in read_manifest(result.manifest)] == ["", "scan", "", "", "", "", ""]


def test_a_pattern_without_a_group_is_an_error(kermany: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--patient-pattern"):
        import_layout("folder", kermany, tmp_path / "m.csv", patient_pattern=r"person\d+")


def test_non_images_are_skipped_and_counted(kermany: Path, tmp_path: Path) -> None:
    result = import_layout("folder", kermany, tmp_path / "m.csv")
    assert result.rows == 7 and dict(result.skipped) == {"not_an_image": 1}


def test_class_folders_without_split_folders(tmp_path: Path) -> None:
    src = tmp_path / "set"
    write_image(src / "covid" / "a.png")
    write_image(src / "normal" / "b.png")
    rows = read_manifest(import_layout("folder", src, tmp_path / "m.csv", patient_pattern="none").manifest)
    assert [(r["id"], r["split"], r["label_covid"], r["label_normal"]) for r in rows] == [
        ("covid_a", "", "1", "0"),
        ("normal_b", "", "0", "1"),
    ]


def test_round_trip_into_an_image_only_site(kermany: Path, tmp_path: Path) -> None:
    rows = round_trip(import_layout("folder", kermany, tmp_path / "data" / "manifest.csv"), tmp_path)
    assert len(rows) == 7 and rows.reports is None
    assert rows.images is not None and all(p.is_file() for p in rows.images)
    assert rows.source.label_columns == ("label_NORMAL", "label_PNEUMONIA")


def test_a_folder_without_class_folders_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    with pytest.raises(ConfigError, match="class folders"):
        import_layout("folder", tmp_path / "flat", tmp_path / "m.csv")
