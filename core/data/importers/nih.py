"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``) with
``Image Index``, ``Finding Labels`` (``|``-separated, ``No Finding``), ``Follow-up #``,
``Patient ID``, ``Patient Age``, ``Patient Gender``, ``View Position``; PNGs in
``images_001/images/`` ... ``images_012/images/`` or one folder; optional official
``train_val_list.txt`` / ``test_list.txt``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...config import ConfigError
from .common import (
    BASE_COLUMNS,
    ImportResult,
    ManifestWriter,
    find_one,
    image_reference,
    label_column,
    read_csv_rows,
)

__all__ = ["NIH_LABELS", "import_nih"]

NIH_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
    "No Finding",
)
REQUIRED = ("Image Index", "Finding Labels", "Patient ID")


def _index_images(src: Path, images: Path | None) -> dict[str, Path]:
    """File name -> path of every image under the image folders (names only: nothing is opened)."""
    roots = [Path(images)] if images is not None else sorted(p for p in src.glob("images*") if p.is_dir()) or [src]
    found: dict[str, Path] = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                if name.lower().endswith((".png", ".jpg", ".jpeg")):
                    found.setdefault(name, Path(folder) / name)
    return found


def _split_lists(src: Path) -> dict[str, str]:
    splits: dict[str, str] = {}
    for name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        path = src / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    splits[line.strip()] = split
    return splits


def import_nih(src: Path, out: Path, *, images: Path | None = None, absolute_paths: bool = False) -> ImportResult:
    """Import NIH ChestX-ray14 into one manifest row per image.

    Parameters
    ----------
    src
        The folder holding ``Data_Entry_2017*.csv`` and the image folders.
    out
        The manifest to write.
    images
        The image folder, when not ``src/images*``.
    absolute_paths
        Write absolute image paths instead of paths relative to the manifest's folder.

    Returns
    -------
    ImportResult
        One ``label_*`` column per finding plus ``label_No_Finding`` (0/1, never blank: the
        labels are mined for every image). ``study_id`` is the image's stem (patient + follow-up),
        ``split`` comes from the official lists (``train_val_list.txt`` -> ``train``).
        Skipped and counted: ``missing_image``, ``unknown_label``.
    """
    src, out = Path(src), Path(out)
    entries = find_one(
        src,
        ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017*.csv"),
        "the NIH ChestX-ray14 label file",
    )
    if images is not None and not Path(images).is_dir():
        raise ConfigError("command line", "--images", "an existing folder of NIH ChestX-ray14 images", str(images))
    index = _index_images(src, images)
    splits = _split_lists(src)
    known = {name.replace("_", " ").lower(): name for name in NIH_LABELS}
    result = ImportResult("nih", out, has_reports=False)
    columns = (
        *BASE_COLUMNS[:2],
        "study_id",
        "view",
        "patient_id",
        "split",
        "sex",
        "age",
        "followup",
        *(label_column(n) for n in NIH_LABELS),
    )
    with ManifestWriter(out, columns, result) as writer, read_csv_rows(entries, REQUIRED) as (_, rows):
        for line, row in rows:
            where = f"{entries}:{line}"
            name = row["Image Index"].strip()
            image = index.get(name)
            if image is None:
                result.skip("missing_image", f"{where}: {name}")
                continue
            findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
            unknown = [f for f in findings if f.replace("_", " ").lower() not in known]
            if unknown or not findings:
                result.skip(
                    "unknown_label",
                    f"{where}: {row['Finding Labels']!r}, expected '|'-separated names from {list(NIH_LABELS)}",
                )
                continue
            present = {known[f.replace("_", " ").lower()] for f in findings}
            age = re.sub(r"^0*(\d+)[YMD]?$", r"\1", (row.get("Patient Age") or "").strip())
            split = splits.get(name, "")
            if splits and not split:
                result.note("not_in_split_lists")
            writer.write(
                {
                    "id": Path(name).stem,
                    "image": image_reference(image, out.parent, absolute_paths),
                    "study_id": Path(name).stem,
                    "view": (row.get("View Position") or "").strip(),
                    "patient_id": row["Patient ID"].strip().lstrip("0") or "0",
                    "split": split,
                    "sex": (row.get("Patient Gender") or row.get("Patient Sex") or "").strip(),
                    "age": age,
                    "followup": (row.get("Follow-up #") or "").strip(),
                    **{label_column(n): str(int(n in present)) for n in NIH_LABELS},
                }
            )
    return result
