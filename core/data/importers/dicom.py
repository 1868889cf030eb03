"""A folder of DICOM files (a PACS export): one row per image, grouped into studies by
``StudyInstanceUID``, with reports joined from a CSV by accession number or study UID.

Only the header elements in :data:`READ_TAGS` are parsed (``stop_before_pixels`` and pydicom's
``specific_tags``): the rest of a header, names and dates included, is never read. Identifiers
are written as keyed hashes (HMAC-SHA256 with a site-local secret salt, 16 hex digits), never
in clear: ``id`` from ``SOPInstanceUID``, ``study_id`` from ``StudyInstanceUID``, ``patient_id``
from ``PatientID``. The same salt gives the same pseudonyms on every import, so re-imports and
several exports of one site keep their patients apart for patient-level splits.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...config import ConfigError
from ..dicom import REFUSAL_TAGS, header_refusal, is_dicom, read_dicom
from ..images import ImageDecodeError
from ..reports import SECTIONS
from .common import BASE_COLUMNS, ImportResult, ManifestWriter, image_reference, read_csv_rows, report_fields

__all__ = [
    "DEFAULT_MODALITIES",
    "READ_TAGS",
    "REPORT_KEYS",
    "import_dicom",
    "load_salt",
    "parse_report_columns",
    "pseudonym",
]

log = logging.getLogger(__name__)

READ_TAGS = (
    *REFUSAL_TAGS,
    "SOPInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "ViewPosition",
    "AccessionNumber",
    "Modality",
)
# --report-key -> (the DICOM keyword joined on, the CSV column holding it by default)
REPORT_KEYS = {"accession": ("AccessionNumber", "AccessionNumber"), "study": ("StudyInstanceUID", "StudyInstanceUID")}
DEFAULT_MODALITIES = ("CR", "DX")
SALT_FILE = "dicom-salt"
_SALT_BYTES = 32
_MIN_SALT_CHARS = 16
_PSEUDONYM_HEX = 16


def load_salt(path: Path | None = None) -> tuple[bytes, Path, bool]:
    """``(salt, path, created)``: the site's secret salt, from ``path`` (default
    ``$FEDVLP_HOME/dicom-salt``), created with 32 random bytes (mode 0600) when absent.

    Raises
    ------
    ConfigError
        When the file holds fewer than 16 characters.
    """
    if path is None:
        from ...runtime import state_dir

        path = state_dir() / SALT_FILE
    path = Path(path)
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another import made it meanwhile: use theirs
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(_SALT_BYTES) + "\n")
            created = True
    try:
        salt = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), "(salt file)", f"a readable text file with a secret salt ({err})") from err
    if len(salt) < _MIN_SALT_CHARS:
        raise ConfigError(
            str(path),
            "(salt file)",
            f"a secret of at least {_MIN_SALT_CHARS} characters (delete the file to get a new random one)",
        )
    return salt.encode("utf-8"), path, created


def pseudonym(salt: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` under ``salt``, first 16 hex digits; ``""`` for a blank value.

    ``kind`` (``patient``, ``study``, ``image``) keeps equal values of different kinds apart.
    """
    value = value.strip()
    if not value:
        return ""
    return hmac.new(salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:_PSEUDONYM_HEX]


@dataclass
class _Image:
    path: Path
    sop: str
    study: str
    patient: str
    view: str
    key: str  # the report join key, in memory only


def parse_report_columns(columns: Sequence[str] | None) -> dict[str, str]:
    """``--report-column`` values as ``{field: CSV column}``: one bare ``COLUMN`` (the whole
    report, default ``report``) and/or ``SECTION=COLUMN`` pairs (``findings``, ``impression``,
    ``indication``, ``comparison``, or ``report``).

    Raises
    ------
    ConfigError
        For an unknown field or more than one bare column.
    """
    mapping: dict[str, str] = {}
    for item in columns or ["report"]:
        name, sep, column = item.partition("=")
        field, column = (name.strip(), column.strip()) if sep else ("report", name.strip())
        if field not in ("report", *SECTIONS) or not column or field in mapping:
            raise ConfigError(
                "command line",
                "--report-column",
                f"COLUMN and/or SECTION=COLUMN with SECTION one of {['report', *SECTIONS]}, each once",
                item,
            )
        mapping[field] = column
    return mapping


def _walk(src: Path, result: ImportResult, modalities: frozenset[str] | None, key_keyword: str) -> list[_Image]:
    """Every usable image under ``src`` (sorted paths); the others are counted by reason.

    ``modalities`` None imports every modality; ``key_keyword`` is the report join key."""
    from tqdm import tqdm

    images: list[_Image] = []
    seen: set[str] = set()
    # files walked so far (the total is unknown until the walk ends); off when not a TTY or quiet
    with tqdm(
        desc="DICOM files", unit=" files", disable=True if os.environ.get("FEDVLP_QUIET") == "1" else None
    ) as bar:
        for folder, dirs, names in os.walk(src):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                bar.update(1)
                _look_at(Path(folder) / name, result, modalities, key_keyword, images, seen)
    return images


def _look_at(
    path: Path,
    result: ImportResult,
    modalities: frozenset[str] | None,
    key_keyword: str,
    images: list[_Image],
    seen: set[str],
) -> None:
    """Append ``path`` to ``images`` when it is a usable image, else count it by reason."""
    if path.name.startswith("."):
        return
    if not is_dicom(path):
        result.skip("not_dicom", str(path))
        return
    try:
        ds = read_dicom(path, stop_before_pixels=True, specific_tags=list(READ_TAGS))
    except ImageDecodeError as err:
        result.skip("dicom_unreadable", f"{path}: {err.detail}")
        return
    refusal = header_refusal(ds)
    if refusal is not None:
        reason = "dicom_unreadable" if refusal[0] == "image_corrupt" else refusal[0]
        result.skip(reason, f"{path}: {refusal[1]}")
        return
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modalities is not None and modality not in modalities:
        result.skip("dicom_modality", f"{path}: Modality {modality or '(none)'}, importing {sorted(modalities)}")
        return
    sop = str(ds.get("SOPInstanceUID", "") or "").strip()
    if not sop:
        result.skip("dicom_bad_header", f"{path}: no SOPInstanceUID")
        return
    if sop in seen:
        result.skip("duplicate_id", f"{path}: an image with this SOPInstanceUID was already imported")
        return
    seen.add(sop)
    text = {
        keyword: str(ds.get(keyword, "") or "").strip()
        for keyword in ("StudyInstanceUID", "PatientID", "ViewPosition", key_keyword)
    }
    images.append(
        _Image(path, sop, text["StudyInstanceUID"], text["PatientID"], text["ViewPosition"].upper(), text[key_keyword])
    )


def _reports(
    path: Path, key_column: str, columns: dict[str, str], wanted: set[str], result: ImportResult
) -> dict[str, dict[str, str]]:
    """The report fields of every key in ``wanted``, streamed from the CSV (the first row of a key wins)."""
    found: dict[str, dict[str, str]] = {}
    with read_csv_rows(path, list(dict.fromkeys([key_column, *columns.values()]))) as (_, rows):
        for _, row in rows:
            key = row[key_column].strip()
            if key not in wanted:
                continue
            if key in found:
                result.note("duplicate_report_key")
                continue
            if "report" in columns:
                fields = report_fields(row[columns["report"]])
                sections = {k: row[c] for k, c in columns.items() if k != "report"}
                if sections:
                    fields.update({k: v for k, v in report_fields(sections=sections).items() if k in sections})
            else:
                fields = report_fields(sections={k: row[c] for k, c in columns.items()})
            found[key] = fields
    return found


def import_dicom(
    src: Path,
    out: Path,
    *,
    reports: str | Path | None = None,
    report_key: str | None = None,
    report_key_column: str | None = None,
    report_column: Sequence[str] | None = None,
    salt_file: str | Path | None = None,
    modalities: Sequence[str] | None = None,
    absolute_paths: bool = False,
) -> ImportResult:
    """Import every DICOM file under ``src`` into one manifest row per image.

    Parameters
    ----------
    src
        The folder of DICOM files (any depth; ``.dcm`` or no suffix with the ``DICM`` marker).
    out
        The manifest to write.
    reports
        A CSV (or ``.csv.gz``) of reports to join; without it the manifest is images only.
    report_key
        ``accession`` (join the CSV on ``AccessionNumber``, the default) or ``study`` (on
        ``StudyInstanceUID``). This and the two options below need ``reports``.
    report_key_column
        The CSV column holding the key (default: ``AccessionNumber`` / ``StudyInstanceUID``).
    report_column
        ``COLUMN`` (the whole report; default ``report``) and/or ``SECTION=COLUMN`` pairs.
    salt_file
        The site's secret salt for the pseudonyms (default ``$FEDVLP_HOME/dicom-salt``, created
        on first use). Keep it secret and keep it: another salt gives other pseudonyms.
    modalities
        The ``Modality`` values imported (default ``CR DX``); ``any`` imports every modality.
    absolute_paths
        Write absolute image paths instead of paths relative to the manifest's folder.

    Returns
    -------
    ImportResult
        Columns ``id``, ``image``, (report and sections,) ``study_id``, ``view`` (``ViewPosition``),
        ``patient_id``, ``split`` (blank). Skipped and counted: ``not_dicom``,
        ``dicom_unreadable``, ``dicom_not_image``, ``dicom_modality``, ``dicom_multiframe``,
        ``dicom_color``, ``dicom_burned_in``, ``dicom_bad_header``, ``duplicate_id``, and with
        reports ``no_report_key``, ``missing_report``, ``empty_report``. Notes: ``no_patient_id``,
        ``no_study_id``, ``no_view``, ``duplicate_report_key``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ConfigError(str(src), "(folder)", "a folder of DICOM files")
    report_path = Path(reports) if reports is not None else None
    given = [
        flag
        for flag, value in (
            ("--report-key", report_key),
            ("--report-key-column", report_key_column),
            ("--report-column", report_column),
        )
        if value
    ]
    if report_path is None and given:
        raise ConfigError("command line", given[0], "to come with --reports CSV (it says how to join that CSV)")
    report_key = report_key or "accession"
    if report_key not in REPORT_KEYS:
        raise ConfigError("command line", "--report-key", f"one of {list(REPORT_KEYS)}", report_key)
    columns = parse_report_columns(report_column)
    if report_path is not None and not report_path.is_file():
        raise ConfigError(str(report_path), "(file)", "a CSV of reports (--reports)")
    if modalities is None:
        allowed: frozenset[str] | None = frozenset(DEFAULT_MODALITIES)
    elif [m.strip().lower() for m in modalities] == ["any"]:
        allowed = None
    else:
        allowed = frozenset(m.strip().upper() for m in modalities)
    salt, salt_path, created = load_salt(Path(salt_file) if salt_file else None)
    log.info(
        "pseudonyms keyed by the salt in %s%s",
        salt_path,
        " (created now: keep it secret, and keep it for later imports)" if created else "",
    )

    result = ImportResult("dicom", out, has_reports=report_path is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings on non-conforming values: see read_dicom
        images = _walk(src, result, allowed, REPORT_KEYS[report_key][0])
    found: dict[str, dict[str, str]] = {}
    if report_path is not None:
        key_column = report_key_column or REPORT_KEYS[report_key][1]
        found = _reports(report_path, key_column, columns, {i.key for i in images if i.key}, result)
    text_columns = ("report", *SECTIONS) if report_path is not None else ()
    header = (
        "id",
        "image",
        *text_columns,
        *(c for c in BASE_COLUMNS if c in ("study_id", "view", "patient_id", "split")),
    )
    with ManifestWriter(out, header, result) as writer:
        for image in images:
            record = {
                "id": pseudonym(salt, "image", image.sop),
                "image": image_reference(image.path, out.parent, absolute_paths),
            }
            if report_path is not None:
                if not image.key:
                    result.skip("no_report_key", f"{image.path}: no {REPORT_KEYS[report_key][0]}")
                    continue
                if image.key not in found:
                    result.skip("missing_report", f"{image.path}: no report row for its {REPORT_KEYS[report_key][0]}")
                    continue
                if not found[image.key]["report"]:
                    result.skip("empty_report", f"{image.path}: the report row is empty")
                    continue
                record.update(found[image.key])
            for note, value in (
                ("no_patient_id", image.patient),
                ("no_study_id", image.study),
                ("no_view", image.view),
            ):
                if not value:
                    result.note(note)
            record.update(
                study_id=pseudonym(salt, "study", image.study),
                view=image.view,
                patient_id=pseudonym(salt, "patient", image.patient),
            )
            writer.write(record)
    return result
