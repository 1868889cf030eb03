"""CheXpert import from a fixture tree in the released layout: CheXpert-v1.0-small/{train,valid}.csv
with the official header and Path cells like CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError
from fedvlp.core.data.importers import import_layout
from fedvlp.core.data.importers.chexpert import CHEXPERT_LABELS
from fedvlp.server.cli.main import main
from tests.core.data.test_importers_common import (
    read_manifest,
    round_trip,
    write_csv,
    write_image,
)

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def _labels(**values: str) -> list[str]:
    return [values.get(name.replace(" ", "_"), "") for name in CHEXPERT_LABELS]


def make_chexpert(root: Path, header: list[str] = HEADER) -> Path:
    """train: patient00001/study1 frontal AP + lateral, patient00002/study2 frontal PA (uncertain
    edema), one row whose JPG is missing, one with label value 2; valid: patient64541/study1."""
    base = root / "CheXpert-v1.0-small"
    train = [
        [
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            "Female",
            "68",
            "Frontal",
            "AP",
            *_labels(No_Finding="1.0", Support_Devices="1.0"),
        ],
        [
            "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg",
            "Female",
            "68",
            "Lateral",
            "",
            *_labels(No_Finding="1.0", Support_Devices="1.0"),
        ],
        [
            "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg",
            "Female",
            "87",
            "Frontal",
            "PA",
            *_labels(Cardiomegaly="-1.0", Edema="-1.0", Fracture="1.0", Lung_Opacity="0.0"),
        ],
        [
            "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg",
            "Male",
            "41",
            "Frontal",
            "AP",
            *_labels(Edema="1.0"),
        ],
        [
            "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg",
            "Male",
            "20",
            "Frontal",
            "PA",
            *_labels(Edema="2.0"),
        ],
    ]
    valid = [
        [
            "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
            "Male",
            "73",
            "Frontal",
            "AP",
            *_labels(**{n.replace(" ", "_"): "0.0" for n in CHEXPERT_LABELS}),
        ]
    ]
    keep = [HEADER.index(c) for c in header]
    write_csv(base / "train.csv", header, [[r[i] for i in keep] for r in train])
    write_csv(base / "valid.csv", header, [[r[i] for i in keep] for r in valid])
    for row in train[:3] + [train[4]] + valid:
        write_image(root / row[0])
    return root


@pytest.fixture()
def chexpert(tmp_path: Path) -> Path:
    return make_chexpert(tmp_path / "chexpert")


def test_cli_writes_ids_studies_views_patients_and_splits(chexpert: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "manifest.csv"
    assert main(["import", "chexpert", str(chexpert), "--out", str(out)]) == 0
    rows = read_manifest(out)
    assert [(r["id"], r["study_id"], r["view"], r["patient_id"], r["split"], r["sex"], r["age"]) for r in rows] == [
        ("patient00001_study1_view1_frontal", "patient00001_study1", "AP", "patient00001", "train", "Female", "68"),
        (
            "patient00001_study1_view2_lateral",
            "patient00001_study1",
            "LATERAL",
            "patient00001",
            "train",
            "Female",
            "68",
        ),
        ("patient00002_study2_view1_frontal", "patient00002_study2", "PA", "patient00002", "train", "Female", "87"),
        ("patient64541_study1_view1_frontal", "patient64541_study1", "AP", "patient64541", "val", "Male", "73"),
    ]
    assert rows[0]["image"] == "../chexpert/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"


def test_uncertain_is_blank_by_default_and_blank_stays_unknown(chexpert: Path, tmp_path: Path) -> None:
    row = read_manifest(import_layout("chexpert", chexpert, tmp_path / "m.csv").manifest)[2]
    assert (
        row["label_Cardiomegaly"],
        row["label_Edema"],
        row["label_Fracture"],
        row["label_Lung_Opacity"],
        row["label_Pneumonia"],
    ) == ("", "", "1", "0", "")


def test_uncertain_zero_and_one_policies(chexpert: Path, tmp_path: Path) -> None:
    zero = read_manifest(import_layout("chexpert", chexpert, tmp_path / "z.csv", uncertain="zero").manifest)[2]
    one = read_manifest(import_layout("chexpert", chexpert, tmp_path / "o.csv", uncertain="one").manifest)[2]
    assert (zero["label_Edema"], one["label_Edema"]) == ("0", "1")
    assert (zero["label_Pneumonia"], one["label_Pneumonia"]) == ("", "")  # blank is never guessed


def test_cli_uncertain_flag(chexpert: Path, tmp_path: Path) -> None:
    assert main(["import", "chexpert", str(chexpert), "--out", str(tmp_path / "m.csv"), "--uncertain", "one"]) == 0
    assert read_manifest(tmp_path / "m.csv")[2]["label_Cardiomegaly"] == "1"


def test_missing_image_and_bad_label_are_skipped_and_counted(chexpert: Path, tmp_path: Path) -> None:
    result = import_layout("chexpert", chexpert, tmp_path / "m.csv")
    assert result.rows == 4
    assert dict(result.skipped) == {"missing_image": 1, "bad_label": 1}
    assert any("train.csv:5" in p and "patient00003" in p for p in result.problems)
    assert any("train.csv:6" in p and "'2.0'" in p for p in result.problems)


def test_src_may_be_the_chexpert_folder_itself(chexpert: Path, tmp_path: Path) -> None:
    result = import_layout("chexpert", chexpert / "CheXpert-v1.0-small", tmp_path / "m.csv")
    assert result.rows == 4


def test_round_trip_into_an_image_only_site(chexpert: Path, tmp_path: Path) -> None:
    result = import_layout("chexpert", chexpert, tmp_path / "data" / "manifest.csv")
    assert result.kind == "images"
    rows = round_trip(result, tmp_path)
    assert len(rows) == 4 and rows.reports is None
    assert rows.images is not None and all(p.is_file() for p in rows.images)
    assert rows.source.label_columns == tuple(f"label_{n.replace(' ', '_')}" for n in CHEXPERT_LABELS)


def test_missing_required_column_names_the_file_and_column(tmp_path: Path) -> None:
    src = make_chexpert(tmp_path / "chexpert", [c for c in HEADER if c != "Frontal/Lateral"])
    with pytest.raises(ConfigError, match=r"train\.csv: key 'Frontal/Lateral'"):
        import_layout("chexpert", src, tmp_path / "m.csv")
