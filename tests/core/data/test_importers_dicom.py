"""``fedvlp import dicom``: a generated PACS-style export -> manifest with hashed ids, joined reports,
every skipped file counted; then validate-site and local training on the imported site."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.core.data.importers import import_layout
from fedvlp.core.data.importers.dicom import load_salt, pseudonym
from fedvlp.server.cli.main import main
from tests.core.data.test_dicom import write_dicom
from tests.core.data.test_importers_common import read_manifest, round_trip, write_csv

SALT = "0123456789abcdef0123456789abcdef"


def _hash(kind: str, value: str) -> str:
    """The pseudonym computed independently: HMAC-SHA256(salt, 'kind:value'), 16 hex digits."""
    return hmac.new(SALT.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]


def _image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 4096, (32, 32))).astype(np.uint16)


def make_export(root: Path) -> Path:
    """Two patients, three studies, and the files a PACS export also holds."""
    common = {"WindowCenter": 2048, "WindowWidth": 4096, "PatientName": "DOE^JOHN", "PatientBirthDate": "19500101"}
    write_dicom(
        root / "P1" / "ST1" / "IM1.dcm",
        _image(1),
        SOPInstanceUID="1.2.3.1",
        StudyInstanceUID="1.2.3.100",
        PatientID="MRN0001",
        AccessionNumber="ACC1",
        ViewPosition="PA",
        **common,
    )
    write_dicom(
        root / "P1" / "ST1" / "IM2",
        _image(2),
        SOPInstanceUID="1.2.3.2",
        StudyInstanceUID="1.2.3.100",
        PatientID="MRN0001",
        AccessionNumber="ACC1",
        ViewPosition="LL",
        **common,
    )
    write_dicom(
        root / "P2" / "ST2" / "IM3.dcm",
        _image(3),
        photometric="MONOCHROME1",
        SOPInstanceUID="1.2.3.3",
        StudyInstanceUID="1.2.3.200",
        PatientID="MRN0002",
        AccessionNumber="ACC2",
        ViewPosition="AP",
        **common,
    )
    write_dicom(
        root / "P2" / "ST3" / "IM4.dcm",
        _image(4),
        SOPInstanceUID="1.2.3.4",
        StudyInstanceUID="1.2.3.300",
        PatientID="MRN0002",
        AccessionNumber="ACC3",
        Modality="CT",
    )
    write_dicom(
        root / "P2" / "ST3" / "IM5.dcm",
        np.zeros((2, 8, 8), dtype=np.uint16),
        SOPInstanceUID="1.2.3.5",
        StudyInstanceUID="1.2.3.300",
        PatientID="MRN0002",
    )
    write_dicom(
        root / "P3" / "IM6.dcm",
        _image(6),
        SOPInstanceUID="1.2.3.6",
        StudyInstanceUID="1.2.3.400",
        BurnedInAnnotation="YES",
    )
    write_dicom(
        root / "P3" / "IM7.dcm", _image(7), SOPInstanceUID="1.2.3.1", StudyInstanceUID="1.2.3.100"
    )  # exported twice
    write_dicom(
        root / "P4" / "IM8.dcm",
        _image(8),
        SOPInstanceUID="1.2.3.8",
        StudyInstanceUID="1.2.3.500",
        AccessionNumber="ACC9",
    )
    shutil.copy(get_testdata_file("test-SR.dcm"), root / "P4" / "SR1.dcm")  # a structured report
    (root / "notes.txt").write_text("export log", encoding="utf-8")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    return make_export(tmp_path / "export")


@pytest.fixture()
def salt_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret" / "salt"
    path.parent.mkdir()
    path.write_text(SALT + "\n", encoding="utf-8")
    return path


def _reports_csv(path: Path) -> Path:
    return write_csv(
        path,
        ["AccessionNumber", "report", "StudyInstanceUID"],
        [
            ["ACC1", "FINDINGS: Clear lungs. IMPRESSION: Normal chest.", "1.2.3.100"],
            ["ACC2", "IMPRESSION: Small right effusion.", "1.2.3.200"],
            ["ACC2", "IMPRESSION: an addendum", "1.2.3.200"],
            ["ACC7", "IMPRESSION: another patient", "1.2.3.999"],
        ],
    )


def test_images_are_grouped_by_study_with_hashed_ids(export: Path, tmp_path: Path, salt_file: Path) -> None:
    result = import_layout("dicom", export, tmp_path / "site" / "manifest.csv", salt_file=salt_file)
    rows = read_manifest(result.manifest)
    assert result.columns == ("id", "image", "study_id", "view", "patient_id", "split") and result.kind == "images"
    assert [(r["id"], r["image"], r["study_id"], r["view"], r["patient_id"]) for r in rows] == [
        (
            _hash("image", "1.2.3.1"),
            "../export/P1/ST1/IM1.dcm",
            _hash("study", "1.2.3.100"),
            "PA",
            _hash("patient", "MRN0001"),
        ),
        (
            _hash("image", "1.2.3.2"),
            "../export/P1/ST1/IM2",
            _hash("study", "1.2.3.100"),
            "LL",
            _hash("patient", "MRN0001"),
        ),
        (
            _hash("image", "1.2.3.3"),
            "../export/P2/ST2/IM3.dcm",
            _hash("study", "1.2.3.200"),
            "AP",
            _hash("patient", "MRN0002"),
        ),
        (_hash("image", "1.2.3.8"), "../export/P4/IM8.dcm", _hash("study", "1.2.3.500"), "", ""),
    ]


def test_every_file_left_out_is_counted_by_reason(export: Path, tmp_path: Path, salt_file: Path) -> None:
    result = import_layout("dicom", export, tmp_path / "m.csv", salt_file=salt_file)
    assert result.skipped == {
        "dicom_modality": 1,
        "dicom_multiframe": 1,
        "dicom_burned_in": 1,
        "duplicate_id": 1,
        "dicom_not_image": 1,
        "not_dicom": 1,
    }
    assert result.notes == {"no_patient_id": 1, "no_view": 1}
    assert (
        f"{export / 'P2' / 'ST3' / 'IM4.dcm'}: Modality CT, importing ['CR', 'DX']: dicom_modality" in result.problems
    )


def test_no_identifier_or_other_header_field_is_written_in_clear(export: Path, tmp_path: Path, salt_file: Path) -> None:
    result = import_layout(
        "dicom", export, tmp_path / "m.csv", salt_file=salt_file, reports=_reports_csv(tmp_path / "r.csv")
    )
    text = result.manifest.read_text(encoding="utf-8")
    for clear in ("MRN0001", "MRN0002", "1.2.3.1", "1.2.3.100", "ACC1", "ACC2", "DOE", "19500101", SALT):
        assert clear not in text


def test_reports_join_by_accession_number(export: Path, tmp_path: Path, salt_file: Path) -> None:
    result = import_layout(
        "dicom", export, tmp_path / "m.csv", salt_file=salt_file, reports=_reports_csv(tmp_path / "r.csv")
    )
    rows = read_manifest(result.manifest)
    assert [(r["id"], r["findings"], r["impression"]) for r in rows] == [
        (_hash("image", "1.2.3.1"), "Clear lungs.", "Normal chest."),
        (_hash("image", "1.2.3.2"), "Clear lungs.", "Normal chest."),
        (_hash("image", "1.2.3.3"), "", "Small right effusion."),  # the first row of ACC2 wins
    ]
    assert result.kind == "pairs" and result.skipped["missing_report"] == 1  # IM8: ACC9 has no report
    assert result.notes["duplicate_report_key"] == 1


def test_reports_join_by_study_uid_with_section_columns(export: Path, tmp_path: Path, salt_file: Path) -> None:
    csv = write_csv(
        tmp_path / "r.csv", ["study", "Befund", "Beurteilung"], [["1.2.3.200", "Erguss rechts.", "Kleiner Erguss."]]
    )
    result = import_layout(
        "dicom",
        export,
        tmp_path / "m.csv",
        salt_file=salt_file,
        reports=csv,
        report_key="study",
        report_key_column="study",
        report_column=["findings=Befund", "impression=Beurteilung"],
    )
    rows = read_manifest(result.manifest)
    assert [(r["id"], r["findings"], r["impression"], r["report"]) for r in rows] == [
        (
            _hash("image", "1.2.3.3"),
            "Erguss rechts.",
            "Kleiner Erguss.",
            "FINDINGS: Erguss rechts. IMPRESSION: Kleiner Erguss.",
        ),
    ]
    assert result.skipped["missing_report"] == 3


def test_a_missing_report_column_names_the_csv(export: Path, tmp_path: Path, salt_file: Path) -> None:
    csv = write_csv(tmp_path / "r.csv", ["AccessionNumber", "text"], [["ACC1", "x"]])
    with pytest.raises(ConfigError, match=r"r\.csv: key 'report'"):
        import_layout("dicom", export, tmp_path / "m.csv", salt_file=salt_file, reports=csv)


def test_report_options_without_reports_are_an_error(export: Path, tmp_path: Path, salt_file: Path) -> None:
    with pytest.raises(ConfigError, match="--report-key': expected to come with --reports"):
        import_layout("dicom", export, tmp_path / "m.csv", salt_file=salt_file, report_key="study")


def test_modalities_any_imports_the_ct_image_too(export: Path, tmp_path: Path, salt_file: Path) -> None:
    result = import_layout("dicom", export, tmp_path / "m.csv", salt_file=salt_file, modalities=["any"])
    assert result.rows == 5 and "dicom_modality" not in result.skipped


def test_the_default_salt_is_created_secret_and_reused(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDVLP_HOME", str(tmp_path / "home"))
    first = read_manifest(import_layout("dicom", export, tmp_path / "a.csv").manifest)
    salt_path = tmp_path / "home" / "dicom-salt"
    assert stat.S_IMODE(os.stat(salt_path).st_mode) == 0o600 and len(salt_path.read_text().strip()) == 64
    again = read_manifest(import_layout("dicom", export, tmp_path / "b.csv").manifest)
    assert [r["patient_id"] for r in again] == [r["patient_id"] for r in first]
    assert (
        first[0]["patient_id"]
        == pseudonym(load_salt(salt_path)[0], "patient", "MRN0001")
        != _hash("patient", "MRN0001")
    )


def test_a_short_salt_is_refused(tmp_path: Path) -> None:
    (tmp_path / "salt").write_text("short", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_salt(tmp_path / "salt")


def test_cli_imports_and_rejects_a_bad_report_column(
    export: Path, tmp_path: Path, salt_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site" / "manifest.csv"
    assert (
        main(
            [
                "import",
                "dicom",
                str(export),
                "--out",
                str(out),
                "--salt-file",
                str(salt_file),
                "--reports",
                str(_reports_csv(tmp_path / "r.csv")),
                "--report-column",
                "report",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote" in printed and "3 rows (pairs, layout dicom)" in printed and "skipped missing_report: 1" in printed
    assert (
        main(
            [
                "import",
                "dicom",
                str(export),
                "--out",
                str(out),
                "--salt-file",
                str(salt_file),
                "--reports",
                str(tmp_path / "r.csv"),
                "--report-column",
                "summary=x",
            ]
        )
        == 2
    )
    assert "key '--report-column': expected COLUMN and/or SECTION=COLUMN" in capsys.readouterr().err


def test_the_imported_site_loads_like_any_other(export: Path, tmp_path: Path, salt_file: Path) -> None:
    result = import_layout(
        "dicom", export, tmp_path / "data" / "m.csv", salt_file=salt_file, reports=_reports_csv(tmp_path / "r.csv")
    )
    rows = round_trip(result, tmp_path)
    assert len(rows) == 3 and rows.skipped == {}


def _studies(root: Path, n: int) -> Path:
    """``n`` studies of 2 views (PA + LATERAL) for ``n // 2`` patients, and their reports."""
    reports = []
    y, x = np.mgrid[0:64, 0:64]
    for study in range(n):
        for view, seed in (("PA", 0), ("LL", 1)):
            lungs = 1500 + 800 * np.sin((x + 3 * study + seed) / 6.0) * np.cos(y / 9.0)
            write_dicom(
                root / f"S{study}" / f"{view}.dcm",
                lungs.astype(np.uint16),
                SOPInstanceUID=f"2.25.{study + 1}{seed + 1}",
                StudyInstanceUID=f"2.25.{study + 1}0",
                PatientID=f"MRN{study // 2}",
                AccessionNumber=f"A{study}",
                ViewPosition=view,
                photometric="MONOCHROME1" if study % 2 else "MONOCHROME2",
                **({"WindowCenter": 1500, "WindowWidth": 1600} if study % 3 else {}),
            )
        reports.append(
            [f"A{study}", f"FINDINGS: {'Clear lungs' if study % 2 else 'Right effusion'}. IMPRESSION: case {study}."]
        )
    write_csv(root.parent / "reports.csv", ["AccessionNumber", "report"], reports)
    return root


@pytest.mark.slow
def test_an_imported_dicom_site_validates_and_trains(
    tmp_path: Path, salt_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedvlp.core.central import pretrain_local
    from fedvlp.core.checkpoint import load_latest

    export = _studies(tmp_path / "pacs" / "export", 8)
    site = tmp_path / "sites" / "dicom_site.yaml"
    assert (
        main(
            [
                "import",
                "dicom",
                str(export),
                "--out",
                str(tmp_path / "pacs" / "manifest.csv"),
                "--salt-file",
                str(salt_file),
                "--reports",
                str(tmp_path / "pacs" / "reports.csv"),
                "--site-out",
                str(site),
                "--site-name",
                "pacs",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["validate-site", str(site)]) == 0
    report = capsys.readouterr().out
    assert "16 rows" in report and "16 usable" in report, report
    run = RunConfig(
        model_size="tiny",
        image_size=32,
        rounds=1,
        local_steps=2,
        batch_size=4,
        out_dir=str(tmp_path / "run"),
        sites=str(site.parent),
    )
    result = pretrain_local(run, site, tmp_path / "local")
    done = load_latest(result.checkpoint_dir)
    assert done is not None and done.round == 1 and done.state["sites"] == ["pacs"]
