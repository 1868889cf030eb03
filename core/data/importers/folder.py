"""Folder-per-class image sets, such as Kermany's pediatric pneumonia set
(``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``): the class is the folder name, the
split the folder above it when that is a split name."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...config import ConfigError
from .common import (
    ImportResult,
    ManifestWriter,
    image_reference,
    label_column,
    normalize_split,
)

__all__ = ["KERMANY_PATTERNS", "import_folder", "patient_matcher"]

# Kermany et al. 2018 file names: ``person1_bacteria_1.jpeg`` / ``person1_virus_6.jpeg``
# (pneumonia; patient ``person1``), ``IM-0115-0001.jpeg`` (normal; patient ``IM-0115``) and
# ``NORMAL2-IM-1427-0001.jpeg`` (a second normal series numbered on its own; ``NORMAL2-IM-1427``).
KERMANY_PATTERNS = (
    r"^(?P<patient>person\d+)_(?:bacteria|virus)_\d+$",
    r"^(?P<patient>NORMAL2-IM-\d+)-\d+$",
    r"^(?P<patient>IM-\d+)-\d+$",
)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")
_SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing", "dev"}


def patient_matcher(pattern: str | None) -> list[re.Pattern[str]]:
    """Compiled patient-id patterns: ``kermany`` (the default), ``none``, or a regular
    expression matched against the file stem whose group ``patient`` (or first group) is the id.

    Raises
    ------
    ConfigError
        When the expression does not compile or has no group.
    """
    if pattern is None or pattern == "kermany":
        return [re.compile(p) for p in KERMANY_PATTERNS]
    if pattern == "none":
        return []
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ConfigError("command line", "--patient-pattern", f"a regular expression ({err})", pattern) from err
    if compiled.groups == 0:
        raise ConfigError(
            "command line",
            "--patient-pattern",
            "a regular expression with a group (?P<patient>...) for the patient id",
            pattern,
        )
    return [compiled]


def _patient(stem: str, patterns: list[re.Pattern[str]]) -> str:
    for pattern in patterns:
        match = pattern.search(stem)
        if match:
            return match.group("patient") if "patient" in pattern.groupindex else match.group(1)
    return ""


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def import_folder(
    src: Path, out: Path, *, patient_pattern: str | None = None, absolute_paths: bool = False
) -> ImportResult:
    """Import ``src/SPLIT/CLASS/*`` (or ``src/CLASS/*``) into one manifest row per image.

    Parameters
    ----------
    src
        The top folder. When its subfolders are split names (``train``, ``val``/``valid``,
        ``test``) they give ``split``; otherwise they are the classes and ``split`` is blank.
    out
        The manifest to write.
    patient_pattern
        ``kermany`` (default: Kermany's three file-name patterns), ``none``, or a regular
        expression whose group ``patient`` takes the patient id from the file stem.
    absolute_paths
        Write absolute image paths instead of paths relative to the manifest's folder.

    Returns
    -------
    ImportResult
        ``id`` is ``split_class_stem``; ``class`` holds the folder name and ``label_<class>`` one
        0/1 column per class. Files that are not images are skipped and counted
        (``not_an_image``); a name that matches no patient pattern is written with a blank
        ``patient_id`` and counted as the note ``no_patient_id``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ConfigError(str(src), "(folder)", "a folder of SPLIT/CLASS/ or CLASS/ image folders")
    patterns = patient_matcher(patient_pattern)
    top = _subfolders(src)
    if top and all(p.name.lower() in _SPLIT_NAMES for p in top):
        groups = [(normalize_split(p.name), p) for p in top]
    else:
        groups = [("", src)]
    class_dirs = [(split, c) for split, folder in groups for c in _subfolders(folder)]
    classes = sorted({c.name for _, c in class_dirs})
    if not classes:
        raise ConfigError(str(src), "(folder)", "class folders (SPLIT/CLASS/*.jpeg or CLASS/*.jpeg)")
    result = ImportResult("folder", out, has_reports=False)
    columns = ("id", "image", "class", "study_id", "view", "patient_id", "split", *(label_column(c) for c in classes))
    if len(set(columns)) != len(columns):
        raise ConfigError(str(src), "(class folders)", "class names whose label columns differ", classes)
    with ManifestWriter(out, columns, result) as writer:
        for split, class_dir in class_dirs:
            for folder, dirs, names in os.walk(class_dir):
                dirs.sort()
                for name in sorted(names):
                    path = Path(folder) / name
                    if name.startswith("."):
                        continue
                    if path.suffix.lower() not in IMAGE_SUFFIXES:
                        result.skip("not_an_image", str(path))
                        continue
                    patient = _patient(path.stem, patterns)
                    if not patient:
                        result.note("no_patient_id")
                    stem = path.relative_to(class_dir).with_suffix("").as_posix().replace("/", "_")
                    writer.write(
                        {
                            "id": "_".join(x for x in (split, class_dir.name, stem) if x),
                            "image": image_reference(path, out.parent, absolute_paths),
                            "class": class_dir.name,
                            "patient_id": patient,
                            "split": split,
                            **{label_column(c): str(int(c == class_dir.name)) for c in classes},
                        }
                    )
    return result
