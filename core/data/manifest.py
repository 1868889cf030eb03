"""Reading site manifests (CSV or Parquet) and checking their rows without decoding images."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import ConfigError, SourceConfig

__all__ = ["ManifestRows", "read_manifest", "load_source_rows"]


@dataclass
class ManifestRows:
    """The usable rows of one source, and what was skipped and why.

    ``images`` holds absolute paths (or ``None`` for a text-only source), ``reports`` the
    report text (or ``None`` for an image-only source).
    """

    source: SourceConfig
    ids: list[str]
    images: list[Path] | None
    reports: list[str] | None
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def read_manifest(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read ``columns`` of a CSV or Parquet manifest as strings.

    Raises
    ------
    ConfigError
        When the file is missing, unreadable, or lacks one of ``columns``.
    """
    if not path.is_file():
        raise ConfigError(str(path), "(manifest)", "an existing CSV or Parquet file")
    try:
        if path.suffix.lower() == ".csv":
            header = pd.read_csv(path, nrows=0).columns
            missing = [c for c in columns if c not in header]
            if missing:
                raise ConfigError(str(path), missing[0], f"a column of the manifest (has {list(header)})")
            frame = pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, encoding="utf-8")
        else:
            frame = pd.read_parquet(path)
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise ConfigError(str(path), missing[0], f"a column of the manifest (has {list(frame.columns)})")
            frame = frame[columns].astype("string").fillna("")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), "(encoding)", f"UTF-8 text ({err})") from err
    except (pd.errors.ParserError, ValueError, OSError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(path), "(file)", f"a readable manifest ({err})") from err
    return frame


def load_source_rows(source: SourceConfig) -> ManifestRows:
    """Read a source's manifest and keep the rows that can train.

    Rows with an empty id, a duplicate id, an empty image path or an empty report are skipped
    and counted. Image files are only opened later, when a batch is built, and a file
    that then fails to decode is skipped and counted there.
    """
    columns = [source.id_column] + [c for c in (source.image_column, source.report_column) if c]
    frame = read_manifest(source.manifest, list(dict.fromkeys(columns)))
    base = source.manifest.parent
    rows = ManifestRows(source, [], [] if source.image_column else None, [] if source.report_column else None)
    seen: set[str] = set()
    for line, record in enumerate(frame.itertuples(index=False), start=2):
        values = dict(zip(frame.columns, record))
        row_id = str(values[source.id_column]).strip()
        reason = None
        if not row_id:
            reason = "empty_id"
        elif row_id in seen:
            reason = "duplicate_id"
        elif source.image_column and not str(values[source.image_column]).strip():
            reason = "empty_image_path"
        elif source.report_column and not str(values[source.report_column]).strip():
            reason = "empty_report"
        if reason:
            rows.skipped[reason] += 1
            rows.problems.append(f"{source.manifest}:{line}: {reason}")
            continue
        seen.add(row_id)
        rows.ids.append(row_id)
        if rows.images is not None:
            rows.images.append(base / str(values[source.image_column]).strip())
        if rows.reports is not None:
            rows.reports.append(str(values[source.report_column]).strip())
    return rows
