"""What every importer shares: the manifest columns, a streaming writer, counts of skipped
rows, label values, CSV headers checked against what a layout needs, and the site file."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from ...config import ConfigError
from ..reports import SECTIONS, join_sections, normalize_report, split_sections

__all__ = [
    "BASE_COLUMNS",
    "SPLITS",
    "UNCERTAIN_POLICIES",
    "ImportResult",
    "ManifestWriter",
    "find_one",
    "image_reference",
    "label_column",
    "label_value",
    "normalize_split",
    "open_text",
    "read_csv_rows",
    "report_fields",
    "site_yaml",
]

# The column conventions of the site files (core/config.py SourceConfig, sites/*/*.yaml):
# ``id``, ``image`` (relative to the manifest's folder), ``report`` (the whole text) and its
# sections, then what multi-image studies and patient-level splits need.
BASE_COLUMNS = ("id", "image", "report", *SECTIONS, "study_id", "view", "patient_id", "split")
SPLITS = ("train", "val", "test")
UNCERTAIN_POLICIES = ("blank", "zero", "one")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "train_val": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_MAX_PROBLEMS = 200


@dataclass
class ImportResult:
    """What an import wrote and what it skipped.

    ``skipped`` counts dropped rows per reason, ``notes`` counts rows written with something
    missing (for example no patient id), ``problems`` names the first rows of each kind.
    """

    layout: str
    manifest: Path
    columns: tuple[str, ...] = ()
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    has_images: bool = True
    has_reports: bool = True

    @property
    def label_columns(self) -> list[str]:
        """The ``label_*`` columns of the manifest."""
        return [c for c in self.columns if c.startswith("label_")]

    @property
    def kind(self) -> str:
        """``pairs``, ``images`` or ``reports``: the site-file kind of the manifest."""
        if self.has_images and self.has_reports:
            return "pairs"
        return "images" if self.has_images else "reports"

    def skip(self, reason: str, where: str) -> None:
        """Count a dropped row and remember where it was."""
        self.skipped[reason] += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(f"{where}: {reason}")

    def note(self, reason: str) -> None:
        """Count a written row that lacks something optional."""
        self.notes[reason] += 1

    def summary(self) -> str:
        """Readable counts: rows written, skipped per reason, notes per reason."""
        lines = [f"wrote {self.manifest}: {self.rows} rows ({self.kind}, layout {self.layout})"]
        lines += [f"  skipped {reason}: {count}" for reason, count in sorted(self.skipped.items())]
        lines += [f"  note {reason}: {count}" for reason, count in sorted(self.notes.items())]
        if self.label_columns:
            lines.append(f"  labels: {', '.join(self.label_columns)}")
        return "\n".join(lines)


class ManifestWriter:
    """Write manifest rows one at a time to ``path``, atomically.

    Rows go to a temporary file next to ``path`` that replaces it only when the import
    finishes, so a failed import never leaves a half-written manifest behind.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], result: ImportResult):
        self.path = Path(path)
        self.columns = columns
        self.result = result
        result.columns = columns
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._file: IO[str] | None = None
        self._writer: Any = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(
            self._file, fieldnames=list(self.columns), extrasaction="raise", lineterminator="\n"
        )
        self._writer.writeheader()
        return self

    def write(self, row: dict[str, str]) -> None:
        """Write one row (missing columns are blank)."""
        self._writer.writerow({c: row.get(c, "") for c in self.columns})
        self.result.rows += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._file is not None
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def label_column(name: str) -> str:
    """``label_<name>`` with every run of non-alphanumerics as one ``_`` (``No Finding`` ->
    ``label_No_Finding``), the spelling of the shared site manifests; a name that already
    starts with ``label_`` is kept."""
    name = re.sub(r"[^0-9A-Za-z]+", "_", name.strip()).strip("_")
    return name if name.startswith("label_") else f"label_{name}"  # a CSV's own label_* column keeps its name


def label_value(raw: str, uncertain: str = "blank") -> str:
    """A label cell as ``"1"``, ``"0"`` or ``""`` (unknown).

    Accepts ``1``/``0``/``-1`` with or without ``.0`` and blank. ``-1`` (CheXpert's uncertain)
    follows ``uncertain``: ``blank`` (unknown), ``zero`` or ``one``.

    Raises
    ------
    ValueError
        For any other value.
    """
    value = raw.strip()
    if value in ("", "nan", "NaN"):
        return ""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"label value {raw!r}: expected 1, 0, -1 or blank") from None
    if number == 1:
        return "1"
    if number == 0:
        return "0"
    if number == -1:
        return {"blank": "", "zero": "0", "one": "1"}[uncertain]
    raise ValueError(f"label value {raw!r}: expected 1, 0, -1 or blank")


def normalize_split(raw: str) -> str:
    """``train``, ``val`` or ``test`` (MIMIC's ``validate`` and CheXpert's ``valid`` are ``val``);
    an unknown name is kept lower-cased."""
    value = raw.strip().lower()
    return _SPLIT_ALIASES.get(value, value)


def report_fields(text: str | None = None, sections: dict[str, str] | None = None) -> dict[str, str]:
    """``report`` and the four section columns, de-identification placeholders normalized.

    A whole ``text`` is split with :func:`~fedvlp.core.data.reports.split_sections`; given
    ``sections`` (as IU X-ray's XML has them), the whole report is joined from them.
    """
    if sections is not None:
        parts = {name: normalize_report(sections.get(name) or "") for name in SECTIONS}
        report = join_sections(parts)
    else:
        report = normalize_report(text or "")
        parts = {name: normalize_report(value) for name, value in split_sections(report).items()}
    return {"report": report, **{name: parts.get(name, "") for name in SECTIONS}}


def open_text(path: Path) -> IO[str]:
    """Open a UTF-8 text file, gunzipping ``*.gz``; a BOM is dropped."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


@contextmanager
def read_csv_rows(
    path: Path, required: tuple[str, ...] | list[str]
) -> Iterator[tuple[list[str], Iterator[tuple[int, dict[str, str]]]]]:
    """Stream a CSV (or ``.csv.gz``) as ``(line_number, row)`` after checking its header.

    Yields ``(header, rows)``.

    Raises
    ------
    ConfigError
        Naming the file and the first required column it lacks.
    """
    with open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ConfigError(str(path), "(header)", f"a CSV header with the columns {list(required)}") from None
        except (csv.Error, UnicodeDecodeError, OSError) as err:
            raise ConfigError(str(path), "(file)", f"a readable UTF-8 CSV file ({err})") from err
        missing = [c for c in required if c not in header]
        if missing:
            raise ConfigError(str(path), missing[0], f"a column of this CSV (has {header})")

        def rows() -> Iterator[tuple[int, dict[str, str]]]:
            try:
                for record in reader:
                    if not any(cell.strip() for cell in record):
                        continue
                    yield reader.line_num, dict(zip(header, record))
            except (csv.Error, UnicodeDecodeError) as err:
                raise ConfigError(str(path), f"line {reader.line_num}", f"readable UTF-8 CSV rows ({err})") from err

        yield header, rows()


def find_one(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` (file names or glob patterns) that exists in ``folder``.

    Raises
    ------
    ConfigError
        Naming the folder and the file names expected.
    """
    for name in names:
        matches = sorted(folder.glob(name)) if any(ch in name for ch in "*?[") else [folder / name]
        for path in matches:
            if path.is_file():
                return path
    raise ConfigError(str(folder), "(file)", f"{what}: one of {list(names)}")


def image_reference(path: Path, manifest_dir: Path, absolute: bool = False) -> str:
    """How the manifest names an image: relative to the manifest's folder (default, so the
    data folder and its manifest can move together) or absolute."""
    path = Path(os.path.abspath(path))
    if absolute:
        return str(path)
    try:
        return Path(os.path.relpath(path, os.path.abspath(manifest_dir))).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return str(path)


def image_roots_of(manifest: Path) -> list[Path]:
    """The folder the manifest's images live in when some leave the manifest's own folder
    (the common folder of those images), for the site file's ``image_roots``; else ``[]``."""
    from ..manifest import iter_manifest_chunks  # the manifest reader needs the image module

    if not manifest.is_file():
        return []
    folder = os.path.abspath(manifest.parent)
    outside: set[str] = set()
    for chunk in iter_manifest_chunks(manifest, ["image"]):
        for cell in chunk["image"]:
            if cell.strip():
                target = os.path.dirname(os.path.normpath(os.path.join(folder, cell.strip())))
                if not (target + os.sep).startswith(folder.rstrip(os.sep) + os.sep):
                    outside.add(target)
    return [Path(os.path.commonpath(sorted(outside)))] if outside else []


def site_yaml(result: ImportResult, name: str, site_path: Path | None = None) -> str:
    """A site file for the imported manifest.

    With ``site_path`` the manifest path is relative to the site file's folder (as
    ``load_site`` resolves it), otherwise absolute. When the images live outside the
    manifest's folder, their folder is listed (absolute) in ``image_roots``.
    """
    manifest = Path(os.path.abspath(result.manifest))
    if site_path is not None:
        try:
            manifest = Path(os.path.relpath(manifest, os.path.abspath(site_path.parent)))
        except ValueError:
            pass
    lines = [
        f"# Written by `fedvlp import {result.layout}`: {result.rows} rows.",
        f"name: {json.dumps(name)}",
    ]
    if result.has_images:
        roots = image_roots_of(Path(os.path.abspath(result.manifest)))
        if roots:
            lines.append(
                f"image_roots: [{', '.join(json.dumps(r.as_posix()) for r in roots)}]  # where the images live"
            )
    lines += [
        "sources:",
        f"  - manifest: {json.dumps(manifest.as_posix())}",
        f"    kind: {result.kind}",
        "    id_column: id",
    ]
    if result.has_images:
        lines.append("    image_column: image")
    if result.has_reports:
        lines.append("    report_column: report")
    if result.label_columns:
        lines.append(f"    label_columns: [{', '.join(result.label_columns)}]")
    lines += ["device: auto", "privacy: {epsilon: null, delta: 1.0e-5}", ""]
    return "\n".join(lines)
