"""MIMIC-CXR-JPG (PhysioNet): metadata, CheXpert (or NegBio) labels, the official split, JPGs
under ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg`` and, from MIMIC-CXR, the report of each study
as ``files/pXX/pSUBJECT/sSTUDY.txt``."""

from __future__ import annotations

from pathlib import Path

from ...config import ConfigError
from .common import (
    BASE_COLUMNS,
    ImportResult,
    ManifestWriter,
    find_one,
    image_reference,
    label_column,
    label_value,
    normalize_split,
    read_csv_rows,
    report_fields,
)

__all__ = ["MIMIC_LABELS", "import_mimic_cxr_jpg"]

# The 14 label columns of mimic-cxr-2.0.0-chexpert.csv and -negbio.csv, after subject_id, study_id.
MIMIC_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "split")


def _files(src: Path, stem: str, what: str) -> Path:
    return find_one(src, (f"{stem}.csv.gz", f"{stem}.csv"), what)


def import_mimic_cxr_jpg(
    src: Path,
    out: Path,
    *,
    uncertain: str = "blank",
    reports: Path | None = None,
    no_reports: bool = False,
    labeler: str = "chexpert",
    absolute_paths: bool = False,
) -> ImportResult:
    """Import a MIMIC-CXR-JPG folder into one manifest row per JPG.

    Parameters
    ----------
    src
        The MIMIC-CXR-JPG folder (``mimic-cxr-2.0.0-metadata.csv(.gz)``, ``-chexpert.csv(.gz)``,
        ``-split.csv(.gz)``, ``files/``).
    out
        The manifest to write.
    uncertain
        What CheXpert's ``-1`` becomes: ``blank`` (unknown), ``zero`` or ``one``.
    reports
        The folder holding MIMIC-CXR's ``files/pXX/pSUBJECT/sSTUDY.txt`` (default: ``src``, where
        ``mimic-cxr-reports.zip`` unpacks next to the JPGs).
    no_reports
        Import images and labels only (an image-only site).
    labeler
        ``chexpert`` or ``negbio``: which label file to read.
    absolute_paths
        Write absolute image paths instead of paths relative to the manifest's folder.

    Returns
    -------
    ImportResult
        Rows are skipped (and counted) when the JPG is missing (``missing_image``), the study's
        report file is missing (``missing_report``) or empty (``empty_report``), or a label
        value is not 1/0/-1/blank (``bad_label``).
    """
    if labeler not in ("chexpert", "negbio"):
        raise ConfigError("command line", "--labeler", "'chexpert' or 'negbio'", labeler)
    src, out = Path(src), Path(out)
    metadata = _files(src, "mimic-cxr-2.0.0-metadata", "the MIMIC-CXR-JPG metadata file")
    labels_file = _files(src, f"mimic-cxr-2.0.0-{labeler}", f"the MIMIC-CXR-JPG {labeler} label file")
    split_file = _files(src, "mimic-cxr-2.0.0-split", "the MIMIC-CXR-JPG split file")
    report_root = Path(reports) if reports is not None else src
    result = ImportResult("mimic-cxr-jpg", out, has_reports=not no_reports)

    # Study-level labels and image-level splits are small next to the images: keep them as
    # tuples of strings keyed by id, then stream the metadata file row by row.
    study_labels: dict[str, tuple[str, ...] | None] = {}
    with read_csv_rows(labels_file, ("subject_id", "study_id", *MIMIC_LABELS)) as (_, rows):
        for line, row in rows:
            try:
                study_labels[row["study_id"].strip()] = tuple(
                    label_value(row[name], uncertain) for name in MIMIC_LABELS
                )
            except ValueError as err:
                study_labels[row["study_id"].strip()] = None
                result.problems.append(f"{labels_file}:{line}: {err}")
    splits: dict[str, str] = {}
    with read_csv_rows(split_file, SPLIT_COLUMNS) as (_, rows):
        for _, row in rows:
            splits[row["dicom_id"].strip()] = normalize_split(row["split"])

    columns = (*BASE_COLUMNS, *(label_column(name) for name in MIMIC_LABELS))
    cached: tuple[str, dict[str, str] | None] = ("", None)
    with ManifestWriter(out, columns, result) as writer, read_csv_rows(metadata, METADATA_COLUMNS) as (_, rows):
        for line, row in rows:
            where = f"{metadata}:{line}"
            dicom, subject, study = row["dicom_id"].strip(), row["subject_id"].strip(), row["study_id"].strip()
            folder = Path("files") / f"p{subject[:2]}" / f"p{subject}"
            image = src / folder / f"s{study}" / f"{dicom}.jpg"
            if not image.is_file():
                result.skip("missing_image", f"{where}: {image}")
                continue
            labels = study_labels.get(study, ())
            if labels is None:
                result.skip("bad_label", f"{where}: study {study}")
                continue
            fields: dict[str, str] = {}
            if not no_reports:
                if cached[0] != study:  # views of a study are consecutive rows: read its report once
                    path = report_root / folder / f"s{study}.txt"
                    cached = (
                        study,
                        report_fields(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else None,
                    )
                if cached[1] is None:
                    result.skip("missing_report", f"{where}: {report_root / folder / f's{study}.txt'}")
                    continue
                if not cached[1]["report"]:
                    result.skip("empty_report", f"{where}: study {study}")
                    continue
                fields = cached[1]
            split = splits.get(dicom, "")
            if not split:
                result.note("no_split")
            if not labels:
                result.note("no_labels")
            view = row["ViewPosition"].strip()
            if not view:
                result.note("no_view")
            writer.write(
                {
                    "id": dicom,
                    "image": image_reference(image, out.parent, absolute_paths),
                    **fields,
                    "study_id": study,
                    "view": view,
                    "patient_id": subject,
                    "split": split,
                    **{label_column(name): value for name, value in zip(MIMIC_LABELS, labels)},
                }
            )
    return result
