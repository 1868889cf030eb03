"""MIMIC-CXR-JPG import from a fixture tree in the PhysioNet layout: gzipped metadata / chexpert /
split CSVs with the official headers, files/pXX/pSUBJECT/sSTUDY/DICOM.jpg and MIMIC-CXR's
files/pXX/pSUBJECT/sSTUDY.txt reports."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from fedvlp.core.config import ConfigError
from fedvlp.core.data.importers import import_layout
from fedvlp.core.data.importers.mimic import MIMIC_LABELS
from fedvlp.core.data.reports import DEID_TOKEN
from fedvlp.server.cli.main import main
from tests.core.data.test_importers_common import read_manifest, round_trip, write_image

METADATA = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
CHEXPERT = ["subject_id", "study_id", *MIMIC_LABELS]
SPLIT = ["dicom_id", "study_id", "subject_id", "split"]

D_PA = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
D_LAT = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"
D_AP = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"
D_NOJPG = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"
D_NOREPORT = "fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818"

REPORT_1 = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 No focal consolidation, pleural effusion or pneumothorax.  The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
REPORT_2 = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  History: ___M with fever

 FINDINGS:

 Mild pulmonary edema.  Possible left lower lobe pneumonia.

 IMPRESSION:

 Edema.  Findings discussed with Dr. ___ at ___.
"""


def _gz_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _labels(**values: str) -> list[str]:
    return [values.get(name.replace(" ", "_"), "") for name in MIMIC_LABELS]


def make_mimic(root: Path, metadata_header: list[str] = METADATA) -> Path:
    """Subject 10000032: study 50414267 (PA + lateral) and 53189527 (AP); subject 10000764: a
    metadata row whose JPG is missing; subject 10000898: a JPG whose report is missing."""
    rows = [
        (D_PA, "10000032", "50414267", "PA"),
        (D_LAT, "10000032", "50414267", "LATERAL"),
        (D_AP, "10000032", "53189527", "AP"),
        (D_NOJPG, "10000764", "57375967", "AP"),
        (D_NOREPORT, "10000898", "50771383", "PA"),
    ]
    meta = [
        [
            d,
            sub,
            st,
            "CHEST (PA AND LAT)",
            view,
            "3056",
            "2544",
            "21800506",
            "213014.531",
            "CHEST (PA AND LAT)",
            "postero-anterior",
            "Erect",
        ]
        for d, sub, st, view in rows
    ]
    keep = [METADATA.index(c) for c in metadata_header]
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", metadata_header, [[r[i] for i in keep] for r in meta])
    _gz_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        CHEXPERT,
        [
            ["10000032", "50414267", *_labels(No_Finding="1.0")],
            ["10000032", "53189527", *_labels(Edema="1.0", Pneumonia="-1.0", Cardiomegaly="0.0")],
            ["10000764", "57375967", *_labels(No_Finding="1.0")],
            ["10000898", "50771383", *_labels(Atelectasis="1.0")],
        ],
    )
    _gz_csv(
        root / "mimic-cxr-2.0.0-split.csv.gz",
        SPLIT,
        [
            [D_PA, "50414267", "10000032", "train"],
            [D_LAT, "50414267", "10000032", "train"],
            [D_AP, "53189527", "10000032", "train"],
            [D_NOJPG, "57375967", "10000764", "test"],
            [D_NOREPORT, "50771383", "10000898", "validate"],
        ],
    )
    for dicom, subject, study, _ in rows:
        if dicom != D_NOJPG:
            write_image(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    (root / "files" / "p10" / "p10000032" / "s50414267.txt").write_text(REPORT_1, encoding="utf-8")
    (root / "files" / "p10" / "p10000032" / "s53189527.txt").write_text(REPORT_2, encoding="utf-8")
    return root


@pytest.fixture()
def mimic(tmp_path: Path) -> Path:
    return make_mimic(tmp_path / "mimic-cxr-jpg" / "2.0.0")


def test_cli_writes_one_row_per_jpg_with_study_view_patient_split(
    mimic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site" / "manifest.csv"
    assert main(["import", "mimic-cxr-jpg", str(mimic), "--out", str(out)]) == 0
    rows = read_manifest(out)
    assert [(r["id"], r["study_id"], r["view"], r["patient_id"], r["split"]) for r in rows] == [
        (D_PA, "50414267", "PA", "10000032", "train"),
        (D_LAT, "50414267", "LATERAL", "10000032", "train"),
        (D_AP, "53189527", "AP", "10000032", "train"),
    ]
    assert rows[0]["image"] == f"../mimic-cxr-jpg/2.0.0/files/p10/p10000032/s50414267/{D_PA}.jpg"
    assert (out.parent / rows[0]["image"]).is_file()
    assert "wrote " in capsys.readouterr().out


def test_labels_are_per_study_and_uncertain_is_blank_by_default(mimic: Path, tmp_path: Path) -> None:
    rows = read_manifest(import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv").manifest)
    assert rows[0]["label_No_Finding"] == rows[1]["label_No_Finding"] == "1"
    assert rows[0]["label_Edema"] == ""
    ap = rows[2]
    assert (ap["label_Edema"], ap["label_Pneumonia"], ap["label_Cardiomegaly"], ap["label_Atelectasis"]) == (
        "1",
        "",
        "0",
        "",
    )


def test_uncertain_one_policy_makes_minus_one_positive(mimic: Path, tmp_path: Path) -> None:
    rows = read_manifest(import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv", uncertain="one").manifest)
    assert rows[2]["label_Pneumonia"] == "1"
    rows = read_manifest(import_layout("mimic-cxr-jpg", mimic, tmp_path / "z.csv", uncertain="zero").manifest)
    assert rows[2]["label_Pneumonia"] == "0"


def test_report_is_split_into_sections_and_examination_technique_are_dropped(mimic: Path, tmp_path: Path) -> None:
    row = read_manifest(import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv").manifest)[0]
    assert row["indication"] == f"{DEID_TOKEN}F with new onset cough // eval for pneumonia"
    assert row["comparison"] == "None."
    assert (
        row["findings"]
        == "No focal consolidation, pleural effusion or pneumothorax. The cardiomediastinal silhouette is normal."
    )
    assert row["impression"] == "No acute cardiopulmonary process."
    assert row["report"].startswith(f"FINAL REPORT EXAMINATION: CHEST (PA AND LAT) INDICATION: {DEID_TOKEN}F")
    assert "\n" not in row["report"]


def test_deid_placeholders_become_the_deid_token(mimic: Path, tmp_path: Path) -> None:
    row = read_manifest(import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv").manifest)[2]
    assert row["indication"] == f"{DEID_TOKEN}M with fever"  # "INDICATION: History:" are both indication headers
    assert row["impression"] == f"Edema. Findings discussed with Dr. {DEID_TOKEN} at {DEID_TOKEN}."
    assert "___" not in row["report"]


def test_views_of_a_study_share_the_report(mimic: Path, tmp_path: Path) -> None:
    rows = read_manifest(import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv").manifest)
    assert rows[0]["report"] == rows[1]["report"] != rows[2]["report"]


def test_missing_jpg_and_missing_report_are_skipped_and_counted(mimic: Path, tmp_path: Path) -> None:
    result = import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv")
    assert result.rows == 3
    assert dict(result.skipped) == {"missing_image": 1, "missing_report": 1}
    assert any(D_NOJPG in p for p in result.problems) and any("s50771383.txt" in p for p in result.problems)


def test_cli_prints_the_skip_counts(mimic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["import", "mimic-cxr-jpg", str(mimic), "--out", str(tmp_path / "m.csv")])
    out = capsys.readouterr().out
    assert "3 rows (pairs, layout mimic-cxr-jpg)" in out
    assert "  skipped missing_image: 1\n" in out and "  skipped missing_report: 1\n" in out


def test_no_reports_imports_an_image_only_manifest(mimic: Path, tmp_path: Path) -> None:
    result = import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv", no_reports=True)
    assert result.rows == 4 and result.kind == "images"
    assert dict(result.skipped) == {"missing_image": 1}
    assert read_manifest(result.manifest)[3]["split"] == "val"  # MIMIC's "validate"


def test_reports_from_another_folder(mimic: Path, tmp_path: Path) -> None:
    reports = tmp_path / "mimic-cxr-reports"
    target = reports / "files" / "p10" / "p10000898"
    target.mkdir(parents=True)
    (target / "s50771383.txt").write_text("FINDINGS: Left basal atelectasis.", encoding="utf-8")
    result = import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv", reports=reports)
    assert [r["findings"] for r in read_manifest(result.manifest)] == ["Left basal atelectasis."]


def test_round_trip_into_a_site(mimic: Path, tmp_path: Path) -> None:
    result = import_layout("mimic-cxr-jpg", mimic, tmp_path / "data" / "manifest.csv")
    rows = round_trip(result, tmp_path)
    assert list(rows.ids) == [D_PA, D_LAT, D_AP]
    assert rows.images is not None and all(p.is_file() for p in rows.images)
    assert rows.reports is not None and list(rows.reports)[2].endswith(f"Dr. {DEID_TOKEN} at {DEID_TOKEN}.")
    assert rows.source.label_columns == tuple(f"label_{n.replace(' ', '_')}" for n in MIMIC_LABELS)
    assert not rows.skipped


def test_cli_site_out_writes_a_loadable_site_file(mimic: Path, tmp_path: Path) -> None:
    site = tmp_path / "sites" / "mimic.yaml"
    assert (
        main(
            [
                "import",
                "mimic-cxr-jpg",
                str(mimic),
                "--out",
                str(tmp_path / "data" / "m.csv"),
                "--site-out",
                str(site),
                "--site-name",
                "bidmc",
            ]
        )
        == 0
    )
    from fedvlp.core.config import load_site

    loaded = load_site(site)
    assert loaded.name == "bidmc" and loaded.sources[0].manifest == (tmp_path / "data" / "m.csv").resolve()
    assert loaded.modalities == {"image", "text", "pair"}


def test_missing_required_column_names_the_file_and_column(tmp_path: Path) -> None:
    src = make_mimic(tmp_path / "mimic", [c for c in METADATA if c != "ViewPosition"])
    with pytest.raises(ConfigError, match=r"mimic-cxr-2\.0\.0-metadata\.csv\.gz: key 'ViewPosition'"):
        import_layout("mimic-cxr-jpg", src, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_cli_reports_a_missing_column_as_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_mimic(tmp_path / "mimic", [c for c in METADATA if c != "ViewPosition"])
    assert main(["import", "mimic-cxr-jpg", str(src), "--out", str(tmp_path / "m.csv")]) == 2
    assert "key 'ViewPosition'" in capsys.readouterr().err


def test_missing_label_file_names_the_expected_files(mimic: Path, tmp_path: Path) -> None:
    (mimic / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(ConfigError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv\.gz"):
        import_layout("mimic-cxr-jpg", mimic, tmp_path / "m.csv")
