"""Reading site manifests (CSV or Parquet) in chunks and checking their rows without opening images.

A manifest is read ``CHUNK_ROWS`` rows at a time; the rows that can train are kept as compact
columns (:class:`StringColumn`: one UTF-8 byte buffer and an offset array, no Python object
per row), so a 400k-row manifest costs tens of megabytes and forks cheaply into DataLoader
workers (Python lists of strings would be copied page by page as workers touch refcounts).

Row checks, each skipped and counted under its reason code (the first that applies):

============== =============================================================================
reason         when
============== =============================================================================
csv_fields     a CSV row has more or fewer fields than the header (an unquoted comma in a
               report, a cut row)
csv_quote      a CSV row's quoting is broken (an unterminated quote, text after a closing quote)
non_utf8       a used column of the row holds bytes that are not UTF-8 (other rows still load)
empty_id       the id is blank
empty_image_path the image column is blank
empty_report   the report column is blank
bad_label      a label column holds something other than 0, 1 or blank (-1 too when the source
               accepts ``uncertain_labels``); ``1.0``-style numbers count as 0/1
image_outside_roots the image path leaves the site's image roots (``../other_site/x.png``, an
               absolute path elsewhere): the manifest's folder plus the site file's ``image_roots``
duplicate_id   an earlier usable row has the same id (the first one wins)
============== =============================================================================

CSV manifests are read with the standard library's ``csv`` module in strict mode, record by
record, so a broken row never changes another row: a bad record that spans several lines (a
quote that opened in its first line and swallowed the next ones) costs only its first line;
the lines after it are read again as rows of their own. Blank lines are not rows.

Problems name the manifest and the row number as a spreadsheet shows it (the header is row 1).
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np
import pandas as pd

from ..config import ConfigError, SourceConfig
from .images import ImageDecodeError, ImagePolicy

__all__ = [
    "ManifestRows",
    "StringColumn",
    "PathColumn",
    "read_manifest",
    "iter_manifest_chunks",
    "load_source_rows",
    "image_policy",
    "ROW_REASONS",
    "CHUNK_ROWS",
]

CHUNK_ROWS = 50_000
MAX_STORED_PROBLEMS = 10_000  # per source; counts stay exact beyond it
ROW_REASONS = (
    "csv_fields",
    "csv_quote",
    "non_utf8",
    "empty_id",
    "empty_image_path",
    "empty_report",
    "bad_label",
    "image_outside_roots",
    "duplicate_id",
)
PROBLEM_COLUMN = "__csv_problem"  # with ``problems=True``: "" or "<reason> (<what is wrong>)" per row
OPTIONAL_COLUMNS = ("study_id", "view")  # read when present: studies (refers) and view counts
# Bytes that are not UTF-8 come through ``surrogateescape`` as lone surrogates U+DC80-U+DCFF.
_SURROGATES = "[\udc80-\udcff]"
_SURROGATE_RE = re.compile(_SURROGATES)


def _printable(text: str) -> str:
    return _SURROGATE_RE.sub("\ufffd", text)


class StringColumn(Sequence[str]):
    """An immutable column of strings: one UTF-8 ``uint8`` buffer plus ``int64`` offsets."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray):
        self.buffer, self.offsets = buffer, offsets

    @classmethod
    def from_strings(cls, values: Sequence[str] | Iterator[str]) -> "StringColumn":
        """Build a column from Python strings."""
        builder = _ColumnBuilder()
        builder.append(list(values))
        return builder.build()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.buffer[self.offsets[index] : self.offsets[index + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        data = self.buffer.tobytes()
        bounds = self.offsets.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            yield data[start:end].decode("utf-8")

    @property
    def nbytes(self) -> int:
        """Memory held by the column."""
        return int(self.buffer.nbytes + self.offsets.nbytes)


class PathColumn(Sequence[Path]):
    """Image paths: a :class:`StringColumn` of manifest-relative paths joined to ``base`` on access."""

    def __init__(self, base: Path, relative: StringColumn):
        self.base, self.relative = base, relative

    def __len__(self) -> int:
        return len(self.relative)

    @overload
    def __getitem__(self, index: int) -> Path: ...
    @overload
    def __getitem__(self, index: slice) -> list[Path]: ...
    def __getitem__(self, index: int | slice) -> Path | list[Path]:
        if isinstance(index, slice):
            return [self.base / p for p in self.relative[index]]
        return self.base / self.relative[index]

    def __iter__(self) -> Iterator[Path]:
        return (self.base / p for p in self.relative)

    @property
    def nbytes(self) -> int:
        """Memory held by the column."""
        return self.relative.nbytes


class _ColumnBuilder:
    """Appends chunks of strings; can look up rows of earlier chunks (duplicate checks)."""

    def __init__(self) -> None:
        self.buffers: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.starts: list[int] = [0]
        self._offsets: list[np.ndarray] = []

    def __len__(self) -> int:
        return self.starts[-1]

    def append(self, values: Sequence[str]) -> None:
        encoded = [v.encode("utf-8") for v in values]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self.buffers.append(np.frombuffer(b"".join(encoded), dtype=np.uint8))
        self.lengths.append(lengths)
        self._offsets.append(np.concatenate([[0], np.cumsum(lengths)]))
        self.starts.append(self.starts[-1] + len(encoded))

    def get(self, index: int) -> str:
        chunk = int(np.searchsorted(self.starts, index, side="right")) - 1
        offsets = self._offsets[chunk]
        local = index - self.starts[chunk]
        return self.buffers[chunk][offsets[local] : offsets[local + 1]].tobytes().decode("utf-8")

    def build(self) -> StringColumn:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Copy chunk by chunk, dropping each one as it lands: the peak is the column plus one
        # chunk, not twice the column (np.concatenate would hold every chunk until the end).
        buffer = np.empty(int(offsets[-1]), dtype=np.uint8)
        position = 0
        self.buffers.reverse()
        while self.buffers:
            part = self.buffers.pop()
            buffer[position : position + len(part)] = part
            position += len(part)
        self.lengths, self._offsets, self.starts = [], [], [0]
        return StringColumn(buffer, offsets)


@dataclass
class ManifestRows:
    """The usable rows of one source, what was skipped and why, and counts for validate-site.

    ``images`` holds paths (or ``None`` for a text-only source), ``reports`` the report text
    (or ``None`` for an image-only source), ``study_ids`` the ``study_id`` column when the
    manifest has one, ``row_numbers`` the manifest row of every usable row.
    """

    source: SourceConfig
    ids: Sequence[str]
    images: Sequence[Path] | None
    reports: Sequence[str] | None
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    study_ids: Sequence[str] | None = None
    row_numbers: np.ndarray | None = None
    rows_in_file: int = 0
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    views: Counter[str] = field(default_factory=Counter)
    problems_omitted: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def add_problem(self, text: str) -> None:
        """Keep ``text`` unless :data:`MAX_STORED_PROBLEMS` are already kept (then only count it)."""
        if len(self.problems) < MAX_STORED_PROBLEMS:
            self.problems.append(text)
        else:
            self.problems_omitted += 1

    def row_of(self, index: int) -> str:
        """``manifest:row`` of usable row ``index``, for problem messages."""
        row = int(self.row_numbers[index]) if self.row_numbers is not None else index + 2
        return f"{self.source.manifest}:{row}"

    def image_problem(self, index: int, err: ImageDecodeError) -> str:
        """The problem line of usable row ``index`` whose image was rejected."""
        return f"{self.row_of(index)}: {err.reason} (id {_printable(self.ids[index])!r}: {err.path}: {err.detail})"

    @property
    def policy(self) -> ImagePolicy:
        """How this source's images are checked (see :mod:`fedvlp.core.data.images`)."""
        return image_policy(self.source)

    @property
    def nbytes(self) -> int:
        """Memory held by the per-row columns."""
        columns = [self.ids, self.images, self.reports, self.study_ids]
        total = sum(int(getattr(c, "nbytes", 0)) for c in columns if c is not None)
        return total + (int(self.row_numbers.nbytes) if self.row_numbers is not None else 0)


def image_policy(source: SourceConfig) -> ImagePolicy:
    """The image policy a source's site-file settings (``accept``, ``max_image_pixels``) ask for."""
    return ImagePolicy(
        accept_16bit="16bit" in source.accept, accept_rgb="rgb" in source.accept, max_pixels=source.max_image_pixels
    )


class _Lines:
    """The physical lines of a text file, with the ones a record took and a way to put some back."""

    def __init__(self, handle: Iterator[str]):
        self.handle = handle
        self.pending: list[tuple[int, str]] = []  # (line number, text) put back, read first
        self.taken: list[tuple[int, str]] = []  # lines of the record being parsed
        self.line = 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.pending:
            number, text = self.pending.pop(0)
        else:
            text = next(self.handle)
            self.line += 1
            number = self.line
        self.taken.append((number, text))
        return text


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".gif", ".webp")


def _id_shape(value: str) -> str:
    """``p10_s5`` -> ``a0_a0``: ids of one manifest share a shape, prose rarely has it."""
    return re.sub(r"[0-9]+", "0", re.sub(r"[^\W\d_]+", "a", value.strip()))


def _swallowed_row(
    lines: list[tuple[int, str]], width: int, id_index: int | None, image_index: int | None, record_id: str = ""
) -> int | None:
    """The number of a line inside a multi-line record that reads as a row of its own, if any.

    A quote left open in one row and closed by a stray quote at the end of a later row (``5"``
    for inches) glues the rows in between into one report with the right number of fields,
    which no CSV parser can tell from a report with line breaks. Such a line reads alone as a
    full row whose id is one token (prose has spaces) and whose image cell names an image file;
    without an image column, whose id has the shape of the record's own id (``4711`` like
    ``4710``, where a report line such as ``Unchanged,stable`` does not).
    """
    if id_index is None:
        return None
    for number, text in lines[1:]:
        try:
            fields = next(csv.reader([text], strict=True), [])
        except csv.Error:
            continue
        if len(fields) != width:
            continue
        ident = fields[id_index].strip()
        if not ident or any(ch.isspace() for ch in ident):
            continue
        if image_index is not None and not fields[image_index].strip().lower().endswith(_IMAGE_SUFFIXES):
            continue
        if image_index is None and _id_shape(ident) != _id_shape(record_id):
            continue
        return number
    return None


def _csv_records(
    path: Path, id_column: str | None = None, image_column: str | None = None
) -> Iterator[tuple[list[str], str]]:
    """``(fields, problem)`` of every record of a CSV file, the header first.

    ``problem`` is ``""`` or ``"<reason> (<detail>)"`` with reason ``csv_fields`` or
    ``csv_quote`` (then ``fields`` is empty). The file is read as UTF-8 (a BOM is dropped);
    other bytes come through as lone surrogates (``surrogateescape``). With ``id_column``
    (and ``image_column``), a multi-line record one of whose lines reads as a row of its own
    is a ``csv_quote`` problem too (see :func:`_swallowed_row`).
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        lines = _Lines(handle)
        reader = csv.reader(lines, strict=True)
        width: int | None = None
        id_index = image_index = None
        while True:
            lines.taken = []
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                problem = f"csv_quote (line {lines.taken[0][0] if lines.taken else lines.line}: {err})"
                fields = []
            else:
                if not fields:
                    continue  # a blank line is not a row
                if width is None:
                    width = len(fields)
                    id_index = fields.index(id_column) if id_column in fields else None
                    image_index = fields.index(image_column) if image_column in fields else None
                    yield fields, ""
                    continue
                record_id = fields[id_index] if id_index is not None and id_index < len(fields) else ""
                swallowed = (
                    _swallowed_row(lines.taken, width, id_index, image_index, record_id)
                    if len(lines.taken) > 1
                    else None
                )
                if len(fields) == width and swallowed is None:
                    yield fields, ""
                    continue
                if swallowed is not None:
                    problem = (
                        f"csv_quote (line {lines.taken[0][0]}: a quote left open swallows line {swallowed}, which "
                        "reads as a row of its own)"
                    )
                else:
                    span = (
                        f"lines {lines.taken[0][0]}-{lines.taken[-1][0]}"
                        if len(lines.taken) > 1
                        else f"line {lines.taken[0][0]}"
                    )
                    problem = f"csv_fields ({span}: {len(fields)} fields, the header has {width})"
                fields = []
            if width is None:
                raise ConfigError(str(path), "(header)", f"a readable CSV header ({problem})")
            if len(lines.taken) > 1:
                # A quote opened in the first line may have swallowed the lines after it:
                # only that line is the bad row; the others are read again as rows of their own.
                first = lines.taken[0][0]
                problem = problem.replace(f"lines {first}-{lines.taken[-1][0]}", f"line {first}")
                lines.pending = lines.taken[1:] + lines.pending
            reader = csv.reader(lines, strict=True)  # a fresh parser state after an error
            yield fields, problem


def _csv_header(path: Path) -> list[str]:
    for fields, _ in _csv_records(path):
        return fields
    return []


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


def _csv_chunks(
    path: Path, header: list[str], wanted: list[str], chunk_rows: int, row_shape: tuple[str | None, str | None]
) -> Iterator[pd.DataFrame]:
    positions = [header.index(c) for c in wanted]
    blank = [""] * len(header)  # the cells of a row that could not be parsed
    records = _csv_records(path, *row_shape)
    next(records)  # the header
    rows: list[list[str]] = []
    problems: list[str] = []

    def frame() -> pd.DataFrame:
        columns = [[row[p] for row in rows] for p in positions]
        return pd.DataFrame(
            {c: pd.Series(v, dtype=object) for c, v in zip(wanted, columns)}
            | {PROBLEM_COLUMN: pd.Series(problems, dtype=object)}
        )

    for fields, problem in records:
        problems.append(problem)
        rows.append(fields or blank)
        if len(rows) == chunk_rows:
            yield frame()
            rows, problems = [], []
    if rows:
        yield frame()


def iter_manifest_chunks(
    path: Path,
    columns: list[str],
    optional: Sequence[str] = (),
    chunk_rows: int = CHUNK_ROWS,
    problems: bool = False,
    row_shape: tuple[str | None, str | None] = (None, None),
) -> Iterator[pd.DataFrame]:
    """Yield ``columns`` (plus those of ``optional`` the file has) as object-dtype strings, in chunks.

    Blank cells are ``""``. Bytes that are not UTF-8 reach the caller as lone surrogates
    (``surrogateescape``), so that one bad row does not fail the file.

    Parameters
    ----------
    problems
        Yield CSV rows that cannot be parsed (``csv_fields``, ``csv_quote``) as rows of blank
        cells with their reason in column :data:`PROBLEM_COLUMN` (``""`` for good rows), so the
        caller can skip and count them; without it the first such row raises.
    row_shape
        The id and image columns, which let a CSV row swallowed by a quote left open in an
        earlier row be told apart from a report with line breaks.

    Raises
    ------
    ConfigError
        When the file is missing, unreadable, lacks one of ``columns``, or (without
        ``problems``) has a row that cannot be parsed (naming the row).
    """
    if not path.is_file():
        raise ConfigError(str(path), "(manifest)", "an existing CSV or Parquet file")
    is_csv = path.suffix.lower() == ".csv"
    try:
        header = _csv_header(path) if is_csv else _parquet_columns(path)
        missing = [c for c in columns if c not in header]
        if missing:
            raise ConfigError(
                str(path), missing[0], f"a column of the manifest (has {[_printable(h) for h in header]})"
            )
        wanted = list(dict.fromkeys(list(columns) + [c for c in optional if c in header]))
        if is_csv:
            offset = 0
            for chunk in _csv_chunks(path, header, wanted, chunk_rows, row_shape):
                bad = np.flatnonzero(chunk[PROBLEM_COLUMN].to_numpy(object) != "")
                if len(bad) and not problems:
                    row = offset + int(bad[0]) + 2
                    raise ConfigError(
                        str(path), f"(row {row})", f"a well-formed CSV row: {chunk[PROBLEM_COLUMN].iloc[int(bad[0])]}"
                    )
                offset += len(chunk)
                yield chunk if problems else chunk[wanted]
        else:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=wanted):
                frame = batch.to_pandas()
                chunk = pd.DataFrame({c: frame[c].astype("string").fillna("").astype(object) for c in wanted})
                if problems:
                    chunk[PROBLEM_COLUMN] = ""
                yield chunk
    except ConfigError:
        raise
    except (pd.errors.ParserError, ValueError, OSError, csv.Error) as err:
        raise ConfigError(str(path), "(file)", f"a readable manifest ({err})") from err


def read_manifest(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read ``columns`` of a CSV or Parquet manifest as strings, whole (for small tables).

    Raises
    ------
    ConfigError
        When the file is missing, unreadable, lacks one of ``columns`` or is not UTF-8.
    """
    chunks = list(iter_manifest_chunks(path, columns))
    frame = (
        pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    )
    for column in columns:
        bad = frame[column].str.contains(_SURROGATES, regex=True)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise ConfigError(str(path), "(encoding)", f"UTF-8 text (row {row}, column '{column}' has other bytes)")
    return frame


def _image_roots(source: SourceConfig) -> list[str]:
    """The folders a source's images may live in: its manifest's folder and ``image_roots``.

    Each as written and with symbolic links resolved, so a root reached through a link
    matches either way.
    """
    roots: list[str] = []
    for root in (source.manifest.parent, *source.image_roots):
        for form in (os.path.abspath(root), os.path.realpath(root)):
            if form not in roots:
                roots.append(os.path.normpath(form))
    return roots


def _outside_roots(base: Path, images: np.ndarray, roots: list[str], check: np.ndarray) -> np.ndarray:
    """Which of ``images`` (relative to ``base`` or absolute) leave every root, lexically.

    Lexically (``..`` collapsed, links not followed): what the manifest says is what is
    confined; a link inside a root is the site's own choice.
    """
    folder = os.path.abspath(base)
    prefixes = tuple(r.rstrip(os.sep) + os.sep for r in roots)
    outside = np.zeros(len(images), dtype=bool)
    for k in np.flatnonzero(check):
        image = str(images[k])
        if ".." not in image and not os.path.isabs(image):
            continue  # stays under the manifest's folder, which is a root: no need to normalise
        target = os.path.normpath(os.path.join(folder, image))
        outside[k] = not (target + os.sep).startswith(prefixes)
    return outside


def load_source_rows(source: SourceConfig, chunk_rows: int = CHUNK_ROWS) -> ManifestRows:
    """Read a source's manifest in chunks and keep the rows that can train.

    Rows are checked without opening images (see the module docstring for the reasons).
    Image files are opened later, in DataLoader workers when a batch is built or by
    validate-site, and a file that fails there is skipped and counted there.
    Label and view values of every row are counted for validate-site.
    """
    text_columns = [c for c in (source.id_column, source.image_column, source.report_column) if c]
    columns = list(dict.fromkeys(text_columns + list(source.label_columns)))
    allowed_labels = [0.0, 1.0] + ([-1.0] if "uncertain_labels" in source.accept else [])
    label_text = (
        "0, 1, -1 or blank"
        if "uncertain_labels" in source.accept
        else "0, 1 or blank (add uncertain_labels to accept for -1)"
    )
    ids, images, reports, studies = _ColumnBuilder(), _ColumnBuilder(), _ColumnBuilder(), _ColumnBuilder()
    row_numbers: list[np.ndarray] = []
    rows = ManifestRows(source, [], None, None)
    rows.labels = {c: Counter() for c in source.label_columns}
    seen_hashes = np.zeros(0, dtype=np.uint64)  # sorted hashes of the ids kept so far
    seen_index = np.zeros(0, dtype=np.int64)  # their positions in ``ids``
    has_study = False
    offset = 0
    roots = _image_roots(source)
    shape = (source.id_column, source.image_column)
    for chunk in iter_manifest_chunks(
        source.manifest, columns, OPTIONAL_COLUMNS, chunk_rows, problems=True, row_shape=shape
    ):
        csv_problem = chunk.pop(PROBLEM_COLUMN).to_numpy(object)
        parsed = csv_problem == ""
        n = len(chunk)
        numbers = np.arange(offset + 2, offset + 2 + n, dtype=np.int64)
        offset += n
        reason = np.full(n, "", dtype=object)
        detail = np.full(n, "", dtype=object)

        def mark(mask: np.ndarray, code: str, why: np.ndarray | str = "") -> None:
            selected = mask & (reason == "")
            reason[selected] = code
            detail[selected] = why[selected] if isinstance(why, np.ndarray) else why

        if not parsed.all():
            codes = np.array([p.split(" ", 1)[0] for p in csv_problem], dtype=object)
            for code in ("csv_fields", "csv_quote"):
                mark(
                    codes == code,
                    code,
                    np.array([" " + p.split(" ", 1)[1] if " " in p else "" for p in csv_problem], dtype=object),
                )
        for column in chunk.columns:
            if column in columns or column == "study_id":
                mark(
                    chunk[column].str.contains(_SURROGATES, regex=True).to_numpy(bool),
                    "non_utf8",
                    f" (bytes that are not UTF-8 in column '{column}')",
                )
        stripped = {c: chunk[c].str.strip() for c in text_columns}
        mark((stripped[source.id_column] == "").to_numpy(bool), "empty_id")
        if source.image_column:
            mark((stripped[source.image_column] == "").to_numpy(bool), "empty_image_path")
        if source.report_column:
            mark((stripped[source.report_column] == "").to_numpy(bool), "empty_report")
        for column in source.label_columns:
            values = chunk[column].str.strip()[parsed]  # an unparsed row has no values to count
            numeric = pd.to_numeric(values, errors="coerce")
            bad = ~((values == "") | numeric.isin(allowed_labels)).to_numpy(bool)
            if bad.any():
                why = np.array(
                    [f" (column '{column}' = {_printable(v)!r}, expected {label_text})" for v in values], dtype=object
                )
                full_bad, full_why = np.zeros(n, dtype=bool), np.full(n, "", dtype=object)
                full_bad[parsed], full_why[parsed] = bad, why
                mark(full_bad, "bad_label", full_why)
            counts = values.where(values != "", "(blank)").value_counts()
            rows.labels[column].update({_printable(str(k)): int(v) for k, v in counts.items()})
        if source.image_column:
            outside = _outside_roots(
                source.manifest.parent, stripped[source.image_column].to_numpy(object), roots, reason == ""
            )
            if outside.any():
                mark(
                    outside,
                    "image_outside_roots",
                    np.array(
                        [
                            f" (image {_printable(str(v))!r} is outside {[str(r) for r in roots]}; list other "
                            "folders in the site file's image_roots)"
                            for v in stripped[source.image_column]
                        ],
                        dtype=object,
                    ),
                )
        if "view" in chunk.columns:
            views = chunk["view"].str.strip()[parsed]
            rows.views.update(
                {_printable(str(k)): int(v) for k, v in views.where(views != "", "(blank)").value_counts().items()}
            )
        has_study = "study_id" in chunk.columns

        # Duplicates: exact within the chunk, by 64-bit hash (confirmed by string) across chunks.
        candidates = np.flatnonzero(reason == "")
        id_values = stripped[source.id_column].to_numpy(object)
        cand_ids = id_values[candidates]
        first_in_chunk = ~pd.Series(cand_ids).duplicated().to_numpy(bool)
        hashes = pd.util.hash_array(cand_ids.astype(object)) if len(cand_ids) else np.zeros(0, dtype=np.uint64)
        duplicate = ~first_in_chunk
        if len(seen_hashes):
            pos = np.searchsorted(seen_hashes, hashes)
            hit = np.flatnonzero(
                (pos < len(seen_hashes)) & (seen_hashes[np.minimum(pos, len(seen_hashes) - 1)] == hashes)
            )
            for k in hit:
                if ids.get(int(seen_index[pos[k]])) == cand_ids[k]:
                    duplicate[k] = True
        dup_rows = np.zeros(n, dtype=bool)
        dup_rows[candidates[duplicate]] = True
        mark(
            dup_rows,
            "duplicate_id",
            np.array(
                [f" (id {_printable(str(v))!r} is already used by an earlier row)" for v in id_values], dtype=object
            )
            if dup_rows.any()
            else "",
        )

        keep = reason == ""
        kept_ids = list(id_values[keep])
        new_hashes = hashes[~duplicate]
        new_index = np.arange(len(ids), len(ids) + len(kept_ids), dtype=np.int64)
        ids.append(kept_ids)
        if source.image_column:
            images.append(list(stripped[source.image_column].to_numpy(object)[keep]))
        if source.report_column:
            reports.append(list(stripped[source.report_column].to_numpy(object)[keep]))
        if has_study:
            studies.append(list(chunk["study_id"].str.strip().to_numpy(object)[keep]))
        row_numbers.append(numbers[keep])
        merged = np.concatenate([seen_hashes, new_hashes])
        order = np.argsort(merged, kind="stable")
        seen_hashes, seen_index = merged[order], np.concatenate([seen_index, new_index])[order]

        for k in np.flatnonzero(~keep):
            rows.skipped[reason[k]] += 1
            rows.add_problem(f"{source.manifest}:{numbers[k]}: {reason[k]}{detail[k]}")
    rows.rows_in_file = offset
    rows.ids = ids.build()
    rows.images = PathColumn(source.manifest.parent, images.build()) if source.image_column else None
    rows.reports = reports.build() if source.report_column else None
    rows.study_ids = studies.build() if has_study else None
    rows.row_numbers = np.concatenate(row_numbers) if row_numbers else np.zeros(0, dtype=np.int64)
    return rows
