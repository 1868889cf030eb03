"""CheXpert (Stanford): ``train.csv`` / ``valid.csv`` with ``Path`` like
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``, sex, age, view and the
14 observations as 1 / 0 / -1 (uncertain) / blank."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ...config import ConfigError
from .common import (
    BASE_COLUMNS,
    ImportResult,
    ManifestWriter,
    image_reference,
    label_column,
    label_value,
    read_csv_rows,
)

__all__ = ["CHEXPERT_LABELS", "import_chexpert"]

CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
REQUIRED = ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
_FILES = (("train.csv", "train"), ("valid.csv", "val"), ("test.csv", "test"))


def _resolve(src: Path, relative: str) -> Path | None:
    """The file a ``Path`` cell names: relative to ``src``, to its parent (``src`` is the
    ``CheXpert-v1.0-small`` folder itself) or without its first folder."""
    parts = PurePosixPath(relative.strip().replace("\\", "/")).parts
    for candidate in (
        src.joinpath(*parts),
        src.parent.joinpath(*parts),
        src.joinpath(*parts[1:]) if len(parts) > 1 else None,
    ):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def import_chexpert(src: Path, out: Path, *, uncertain: str = "blank", absolute_paths: bool = False) -> ImportResult:
    """Import CheXpert's ``train.csv`` and ``valid.csv`` (and ``test.csv`` when present).

    Parameters
    ----------
    src
        The ``CheXpert-v1.0(-small)`` folder holding the CSVs, or its parent.
    out
        The manifest to write.
    uncertain
        What ``-1`` becomes: ``blank`` (unknown, default), ``zero`` (U-Zeros) or ``one`` (U-Ones).
    absolute_paths
        Write absolute image paths instead of paths relative to the manifest's folder.

    Returns
    -------
    ImportResult
        ``id`` is ``patient00001_study1_view1_frontal``, ``study_id`` ``patient00001_study1``,
        ``patient_id`` ``patient00001``; ``view`` is ``AP``/``PA`` for frontal images and
        ``LATERAL`` for lateral ones; ``split`` is ``train`` / ``val`` (valid.csv) / ``test``.
        Skipped and counted: ``missing_image``, ``bad_label``, ``bad_path``.
    """
    src, out = Path(src), Path(out)
    folder = (
        src
        if any((src / name).is_file() for name, _ in _FILES)
        else next(
            (
                child
                for child in sorted(src.glob("CheXpert-v1.0*"))
                if (child / "train.csv").is_file() or (child / "valid.csv").is_file()
            ),
            src,
        )
    )
    files = [(folder / name, split) for name, split in _FILES if (folder / name).is_file()]
    if not files:
        raise ConfigError(
            str(src), "(file)", "CheXpert's train.csv and/or valid.csv (in the CheXpert-v1.0-small folder)"
        )
    result = ImportResult("chexpert", out, has_reports=False)
    columns = (
        *BASE_COLUMNS[:2],
        "study_id",
        "view",
        "patient_id",
        "split",
        "sex",
        "age",
        *(label_column(n) for n in CHEXPERT_LABELS),
    )
    with ManifestWriter(out, columns, result) as writer:
        for csv_path, split in files:
            with read_csv_rows(csv_path, REQUIRED) as (_, rows):
                for line, row in rows:
                    where = f"{csv_path}:{line}"
                    parts = PurePosixPath(row["Path"].strip().replace("\\", "/")).parts
                    patient = next((p for p in parts if p.startswith("patient")), "")
                    if not patient or len(parts) < 3:
                        result.skip("bad_path", f"{where}: {row['Path']!r} is not .../patientNNNNN/studyN/viewN_*.jpg")
                        continue
                    image = _resolve(folder, row["Path"])
                    if image is None:
                        result.skip("missing_image", f"{where}: {row['Path']}")
                        continue
                    try:
                        labels = {label_column(n): label_value(row[n], uncertain) for n in CHEXPERT_LABELS}
                    except ValueError as err:
                        result.skip("bad_label", f"{where}: {err}")
                        continue
                    study, view_file = parts[-2], PurePosixPath(parts[-1]).stem
                    frontal = row["Frontal/Lateral"].strip().lower() == "frontal"
                    writer.write(
                        {
                            "id": f"{patient}_{study}_{view_file}",
                            "image": image_reference(image, out.parent, absolute_paths),
                            "study_id": f"{patient}_{study}",
                            "view": row["AP/PA"].strip() if frontal else "LATERAL",
                            "patient_id": patient,
                            "split": split,
                            "sex": (row.get("Sex") or "").strip(),
                            "age": (row.get("Age") or "").strip(),
                            **labels,
                        }
                    )
    return result
