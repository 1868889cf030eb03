"""Any CSV export plus a column mapping (``--map id=col image=col report=col ...`` or a small
YAML file with the same keys)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...config import ConfigError
from ..reports import SECTIONS
from .common import (
    ImportResult,
    ManifestWriter,
    image_reference,
    label_column,
    label_value,
    normalize_split,
    read_csv_rows,
    report_fields,
)

__all__ = ["MAPPING_KEYS", "import_generic", "parse_mapping"]

MAPPING_KEYS = ("id", "image", "report", *SECTIONS, "study_id", "view", "patient_id", "split")


def parse_mapping(pairs: Sequence[str] | None = None, path: Path | None = None) -> dict[str, Any]:
    """A column mapping from ``key=column`` pairs and/or a YAML file (pairs win).

    Keys are :data:`MAPPING_KEYS` plus labels: ``labels=colA,colB`` (label named after its
    column) or ``label.NAME=column``; in YAML ``labels`` is a list of columns or a mapping
    ``NAME: column``.

    Raises
    ------
    ConfigError
        Naming the pair or file key that is not understood.
    """
    mapping: dict[str, Any] = {"labels": {}}
    if path is not None:
        origin = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(origin, "(file)", f"a readable YAML column mapping ({err})") from err
        if not isinstance(raw, dict):
            raise ConfigError(origin, "(top level)", "a mapping of manifest keys to CSV columns", raw)
        for key, value in raw.items():
            if key == "labels":
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    mapping["labels"].update({v: v for v in value})
                elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
                    mapping["labels"].update({str(k): v for k, v in value.items()})
                else:
                    raise ConfigError(origin, "labels", "a list of label columns or a mapping NAME: column", value)
            elif key in MAPPING_KEYS and isinstance(value, str) and value:
                mapping[key] = value
            else:
                raise ConfigError(origin, str(key), f"one of {list(MAPPING_KEYS) + ['labels']} with a column name")
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ConfigError("command line", "--map", "KEY=COLUMN pairs", pair)
        if key == "labels":
            mapping["labels"].update({c.strip(): c.strip() for c in value.split(",") if c.strip()})
        elif key.startswith("label."):
            mapping["labels"][key[len("label.") :]] = value
        elif key in MAPPING_KEYS:
            mapping[key] = value
        else:
            raise ConfigError("command line", "--map", f"a key among {list(MAPPING_KEYS)}, labels or label.NAME", key)
    return mapping


def import_generic(
    src: Path,
    out: Path,
    *,
    mapping: Mapping[str, Any],
    uncertain: str = "blank",
    images: Path | None = None,
    absolute_paths: bool = False,
) -> ImportResult:
    """Import a CSV (or ``.csv.gz``) through a column mapping.

    Parameters
    ----------
    src
        The CSV file.
    out
        The manifest to write.
    mapping
        From :func:`parse_mapping`: ``id`` is required, plus ``image`` and/or ``report`` or
        report sections; ``labels`` maps label names to columns (values 1/0/-1/blank).
    uncertain
        What ``-1`` becomes: ``blank``, ``zero`` or ``one``.
    images
        The folder image paths are relative to (default: the CSV's folder).
    absolute_paths
        Write absolute image paths instead of paths relative to the manifest's folder.

    Returns
    -------
    ImportResult
        A whole ``report`` is split into sections (mapped section columns take precedence); mapped
        sections alone are joined into ``report``. Skipped and counted: ``empty_id``,
        ``duplicate_id``, ``missing_image``, ``empty_report``, ``bad_label``.
    """
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise ConfigError(str(src), "(file)", "an existing CSV file")
    if "id" not in mapping:
        raise ConfigError("command line", "--map", "id=COLUMN (the row id column)")
    text_keys = [k for k in ("report", *SECTIONS) if k in mapping]
    if "image" not in mapping and not text_keys:
        raise ConfigError("command line", "--map", "image=COLUMN and/or report=COLUMN (or a section column)")
    labels: dict[str, str] = dict(mapping.get("labels") or {})
    required = [mapping[k] for k in MAPPING_KEYS if k in mapping] + list(labels.values())
    image_root = Path(images) if images is not None else src.parent
    result = ImportResult("generic", out, has_images="image" in mapping, has_reports=bool(text_keys))
    text_columns = ("report", *SECTIONS) if text_keys else ()
    columns = (
        "id",
        *(("image",) if "image" in mapping else ()),
        *text_columns,
        "study_id",
        "view",
        "patient_id",
        "split",
        *(label_column(name) for name in labels),
    )
    if len(set(columns)) != len(columns):
        raise ConfigError("command line", "--map", "label names whose label columns differ", list(labels))
    seen: set[str] = set()
    with ManifestWriter(out, columns, result) as writer, read_csv_rows(src, list(dict.fromkeys(required))) as (_, rows):
        for line, row in rows:
            where = f"{src}:{line}"
            row_id = row[mapping["id"]].strip()
            if not row_id:
                result.skip("empty_id", where)
                continue
            if row_id in seen:
                result.skip("duplicate_id", f"{where}: {row_id}")
                continue
            record: dict[str, str] = {"id": row_id}
            if "image" in mapping:
                cell = row[mapping["image"]].strip()
                image = Path(cell) if Path(cell).is_absolute() else image_root / cell
                if not cell or not image.is_file():
                    result.skip("missing_image", f"{where}: {image}")
                    continue
                record["image"] = image_reference(image, out.parent, absolute_paths)
            if text_keys:
                mapped = {k: row[mapping[k]] for k in SECTIONS if k in mapping}
                if "report" in mapping:
                    fields = report_fields(row[mapping["report"]])
                    if mapped:
                        fields.update({k: v for k, v in report_fields(sections=mapped).items() if k in mapped})
                else:
                    fields = report_fields(sections=mapped)
                if not fields["report"]:
                    result.skip("empty_report", f"{where}: {row_id}")
                    continue
                record.update(fields)
            try:
                record.update(
                    {label_column(name): label_value(row[column], uncertain) for name, column in labels.items()}
                )
            except ValueError as err:
                result.skip("bad_label", f"{where}: {err}")
                continue
            for key in ("study_id", "view", "patient_id"):
                if key in mapping:
                    record[key] = row[mapping[key]].strip()
            if "split" in mapping:
                record["split"] = normalize_split(row[mapping["split"]])
            seen.add(row_id)
            writer.write(record)
    return result
