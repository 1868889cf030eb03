"""A labelled image set for central evaluation, preloaded into memory, with patient-level splits.

The sweep trains dozens of small models on the same few thousand images, so the images are
decoded once into a single ``(N, 1, S, S)`` tensor and every run indexes into it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.images import ImageDecodeError, load_image
from .tasks import Task, binary_tasks, coverage_matrix, encode_column

__all__ = [
    "SPLITS",
    "LabeledSet",
    "load_labeled",
    "patient_split",
    "sample_fraction",
    "derive_patient_id",
    "split_manifest",
    "PATIENT_PATTERN",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_HASH_SALT = "fedvlp-split"
_VAL_SALT = "fedvlp-split-val"  # train/val inside a labelled manifest that may itself come from a hash split

# Patient ids hidden in file names of the Kermany pediatric set (and similar layouts), used for
# rows whose patient column is blank: ``person1019_bacteria_2950`` -> ``person1019``,
# ``IM-0115-0001`` -> ``IM-0115``, ``NORMAL2-IM-1234-0001`` -> ``NORMAL2-IM-1234``. The NORMAL2
# series is numbered apart from the IM series, so its prefix is kept.
PATIENT_PATTERN = re.compile(r"(person\d+)_|((?:NORMAL\d+-)?IM-\d+)-\d+")


def derive_patient_id(name: str) -> str | None:
    """The patient id in an image file name (see :data:`PATIENT_PATTERN`), or ``None``.

    Only the file name (no folders, no extension) is searched, leftmost match first.
    """
    stem = Path(str(name)).stem
    match = PATIENT_PATTERN.search(stem)
    if match is None:
        return None
    return match.group(1) or match.group(2)


@dataclass
class LabeledSet:
    """Images, binary multi-label targets and a train/val/test assignment, all in memory.

    Attributes
    ----------
    images
        ``(N, 1, S, S)`` float32 in ``[0, 1]``.
    labels
        ``(N, C)`` float32 of 0/1.
    label_names
        The ``C`` label column names, in column order of ``labels``.
    ids, patient_ids, split
        ``(N,)`` string arrays; ``split`` holds ``"train"``, ``"val"`` or ``"test"``.
    skipped
        Rows of the manifest left out, by reason: ``"unreadable_image"`` and
        ``"invalid_label"`` (a label that is not 0 or 1, blanks included).
    manifest
        Where the rows came from (for messages and reports).
    split_source
        ``"column"`` (the manifest's split column), ``"hash"`` (patient-level hash split) or
        ``"column+hash"`` (missing val/test carved out of the column's train rows by hash).
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]
    ids: np.ndarray
    patient_ids: np.ndarray
    split: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    manifest: Path | None = None
    split_source: str = "column"
    tasks: tuple[Task, ...] = ()  # one per label column; empty: all binary

    def __post_init__(self) -> None:
        if not self.tasks:
            self.tasks = binary_tasks(self.label_names)
        if tuple(t.name for t in self.tasks) != tuple(self.label_names):
            raise ValueError(f"tasks {[t.name for t in self.tasks]} do not match label names {list(self.label_names)}")
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.labels.ndim != 2:
            raise ValueError(
                f"images must be (N, 1, S, S) and labels (N, C), got {tuple(self.images.shape)} and "
                f"{tuple(self.labels.shape)}"
            )
        if not (self.labels.shape[0] == len(self.ids) == len(self.patient_ids) == len(self.split) == n):
            raise ValueError("images, labels, ids, patient_ids and split must have the same length")
        if self.labels.shape[1] != len(self.label_names):
            raise ValueError(f"{self.labels.shape[1]} label columns but {len(self.label_names)} label names")
        unknown = set(np.unique(self.split)) - set(SPLITS)
        if unknown:
            raise ValueError(f"split values must be in {SPLITS}, got {sorted(unknown)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """The number of label columns ``C``."""
        return len(self.label_names)

    @property
    def image_size(self) -> int:
        """The side ``S`` of the square images."""
        return int(self.images.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split (``"train"``, ``"val"`` or ``"test"``), ascending."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.split == split)

    def fingerprint(self) -> str:
        """A short hash of the images, labels, ids and split (detects a changed data set)."""
        digest = hashlib.sha256()
        digest.update(repr((self.label_names, tuple(self.images.shape))).encode())
        if any(t.kind != "binary" for t in self.tasks):  # binary-only sets keep their old fingerprint
            digest.update(repr(self.tasks).encode())
        for array in (self.ids, self.split):
            digest.update("\x1f".join(map(str, array)).encode())
        digest.update(self.labels.detach().cpu().contiguous().numpy().tobytes())
        digest.update(self.images.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        """One line: rows per split, positives per class, skipped rows."""
        parts = [f"{s}={int((self.split == s).sum())}" for s in SPLITS]
        parts_pos = []
        for t, task in enumerate(self.tasks):
            column = self.labels[:, t]
            known = ~torch.isnan(column)
            if task.kind == "binary":
                parts_pos.append(f"{task.name}:{int(column[known].sum())}")
            else:
                counts = "/".join(f"{c}={int((column[known] == i).sum())}" for i, c in enumerate(task.classes))
                parts_pos.append(f"{task.name}:{counts}")
            if not bool(known.all()):
                parts_pos[-1] += f" ({int((~known).sum())} unknown)"
        pos = ", ".join(parts_pos)
        skipped = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v) or "none"
        return (
            f"{len(self)} images ({' '.join(parts)}, split from {self.split_source}); positives {pos}; skipped "
            f"{skipped}"
        )


def _unit_hash(key: str, salt: str = _HASH_SALT) -> float:
    """A deterministic (process- and platform-independent) number in ``[0, 1)`` for ``key``."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def patient_split(
    groups: Sequence[str] | np.ndarray,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    names: Sequence[str] = SPLITS,
    salt: str = _HASH_SALT,
) -> np.ndarray:
    """Assign every row to a split by a hash of its group (patient), so no patient spans two splits.

    Parameters
    ----------
    groups
        One patient id (or row id) per row.
    fractions
        Target share of *patients* per split; rows follow their patient.
    names
        Split names, one per fraction.
    salt
        Hash salt. A second split of rows that came out of a first one (e.g. val out of the
        train manifest written by :func:`split_manifest`) needs another salt: with the same
        one every patient would land in the same part again.

    Returns
    -------
    np.ndarray
        ``(N,)`` array of split names. The same group always lands in the same split.
    """
    edges = np.cumsum(np.asarray(fractions, dtype=float))
    edges = edges / edges[-1]
    cache: dict[str, str] = {}
    out = []
    for group in groups:
        key = str(group)
        if key not in cache:
            cache[key] = names[int(np.searchsorted(edges, _unit_hash(key, salt), side="right"))]
        out.append(cache[key])
    return np.asarray(out, dtype=object)


def _read_manifest(path: Path, text_columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labelled manifest not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        for column in text_columns:
            if column in frame.columns:
                frame[column] = frame[column].astype("string")
        return frame
    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: str for c in text_columns if c in header})


def _blank(values: pd.Series) -> np.ndarray:
    return np.asarray((values.isna() | (values.astype("string").str.strip() == "")).to_numpy(dtype=bool))


def _assign_splits(frame: pd.DataFrame, groups: np.ndarray, split_column: str, origin: Path) -> tuple[np.ndarray, str]:
    """Use the split column when it is informative, otherwise (or for missing val/test) hash by patient."""
    if split_column not in frame.columns or _blank(frame[split_column]).all():
        return patient_split(groups), "hash"
    raw = frame[split_column]
    blank = _blank(raw)
    if blank.any():
        raise ValueError(
            f"{origin}: column '{split_column}' is blank in {int(blank.sum())} row(s); "
            "fill it for every row or leave it empty everywhere (then a patient-level split is made)"
        )
    normalised = raw.astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
    if normalised.isna().any():
        bad = sorted(set(raw[normalised.isna()].astype(str)))[:5]
        raise ValueError(f"{origin}: column '{split_column}': expected train/val/test, got {bad}")
    split = normalised.to_numpy(dtype=object)
    present = set(split)
    if "train" not in present:
        raise ValueError(f"{origin}: column '{split_column}' has no 'train' rows")
    missing = [s for s in ("val", "test") if s not in present]
    if not missing:
        return split, "column"
    # Carve the missing split(s) out of the train rows, by patient, in the 60/20/20 proportions.
    train = split == "train"
    shares = {"train": 0.6, "val": 0.2, "test": 0.2}
    names = ["train", *missing]
    split[train] = patient_split(groups[train], [shares[n] for n in names], names)
    return split, ("hash" if len(missing) == 2 else "column+hash")


def _patients(frame: pd.DataFrame, ids: np.ndarray, patient_column: str, image_column: str) -> np.ndarray:
    """Patient id per row: the column, else one derived from the image file name, else the row id."""
    blank = _blank(frame[patient_column]) if patient_column in frame.columns else np.ones(len(frame), dtype=bool)
    out = (
        frame[patient_column].astype("string").str.strip().fillna("").to_numpy(dtype=object)
        if patient_column in frame.columns
        else ids.copy()
    )
    out = np.asarray(out, dtype=object)
    for row in np.flatnonzero(blank):
        derived = derive_patient_id(str(frame[image_column].iloc[row]))
        if derived is None:
            derived = derive_patient_id(str(ids[row]))
        out[row] = derived if derived is not None else ids[row]
    return out


def _read_images(
    frame: pd.DataFrame,
    folders: Sequence[Path],
    image_column: str,
    id_column: str,
    image_size: int,
    skipped: dict[str, int],
) -> tuple[list[torch.Tensor], list[int]]:
    images, keep = [], []
    for row in range(len(frame)):
        relative = frame[image_column].iloc[row]
        if pd.isna(relative) or not str(relative).strip():
            skipped["unreadable_image"] += 1
            continue
        try:
            images.append(load_image(folders[row] / str(relative).strip(), image_size))
        except ImageDecodeError as err:
            log.warning("skipping row %s: %s", frame[id_column].iloc[row], err)
            skipped["unreadable_image"] += 1
            continue
        keep.append(row)
    return images, keep


def _encode_labels(
    frame: pd.DataFrame, label_columns: Sequence[str], origin: Path
) -> tuple[tuple[Task, ...], np.ndarray, np.ndarray]:
    """Tasks, ``(N, T)`` targets (NaN = unknown) and a per-row "invalid value" flag."""
    tasks, columns, invalid = [], [], np.zeros(len(frame), dtype=bool)
    for name in label_columns:
        raw = frame[name]
        numeric = pd.to_numeric(raw, errors="coerce")
        blank = _blank(raw)
        if (numeric.notna() | blank).all():  # numbers only: a binary task, other numbers are invalid
            values = numeric.to_numpy(dtype=float)
            bad = ~blank & ~np.isin(values, (0.0, 1.0))
            invalid |= bad
            values = np.where(bad | blank, np.nan, values)
            tasks.append(Task(name))
            columns.append(values)
            continue
        task, values, _ = encode_column(name, raw.tolist())
        if len(task.classes) < 2:
            raise ValueError(
                f"{origin}: label column '{name}' has a single value {list(task.classes)}; "
                "expected 0/1 (binary) or at least two categories (softmax head)"
            )
        tasks.append(task)
        columns.append(values)
    return tuple(tasks), np.stack(columns, axis=1), invalid


def load_labeled(
    manifest: Path,
    label_columns: Sequence[str],
    image_size: int,
    id_column: str = "id",
    image_column: str = "image",
    patient_column: str = "patient_id",
    split_column: str = "split",
    test_manifest: Path | None = None,
    val_fraction: float = 0.2,
) -> LabeledSet:
    """Read a labelled manifest (CSV or Parquet) and decode all its images into memory.

    Parameters
    ----------
    manifest
        The manifest file. Relative image paths are relative to its folder.
    label_columns
        Label columns. A column of 0/1 values is a binary task (sigmoid + BCE); a column
        with other, non-numeric values (e.g. ``bacteria``/``virus``) is a categorical task
        (softmax + CE over its distinct values). A blank cell is *unknown*: the row stays and
        is left out of that task's loss and metrics. Rows where every label is blank are
        skipped (``"no_label"``); a number other than 0/1 in a binary column skips the row
        (``"invalid_label"``).
    image_size
        Images are resized to ``image_size x image_size``.
    id_column, image_column
        Row id and image path columns (required).
    patient_column
        Patient id column, used to keep a patient's images in one split. Where it is absent
        or blank, the patient id is derived from the image file name by
        :func:`derive_patient_id` (Kermany's ``personNNN_...``, ``IM-NNNN-MMMM``,
        ``NORMAL2-IM-NNNN-MMMM``), and failing that the row id stands in for the patient.
    split_column
        ``train``/``val``/``test`` per row (``valid``/``validation``/``dev`` accepted for val).
        Without ``test_manifest``: when the column is absent, entirely blank, or only says
        ``train``, a patient-level 60/20/20 split is made by a deterministic hash of the
        patient id; when only val or only test is missing, it is carved out of the train rows
        the same way.
    test_manifest
        A separate test manifest (same columns). Then ``manifest`` provides train and val
        only (its ``test`` rows, if any, are dropped; val comes from its split column or a
        patient-level hash split of ``val_fraction``) and every row of ``test_manifest`` is a
        test row (only its ``test`` rows when its split column has some). A patient found on
        both sides is an error.
    val_fraction
        Share of patients put into val when ``test_manifest`` is given and val is not in the
        split column.

    Returns
    -------
    LabeledSet
        With ``skipped`` counting rows dropped for an unreadable image or an invalid label.

    Raises
    ------
    FileNotFoundError
        A manifest does not exist.
    ValueError
        A required column is missing, the split column is malformed, no row is usable, a
        split ends up empty, or a patient is in train/val and test; the message names the manifest.
    """
    manifest = Path(manifest)
    label_columns = tuple(label_columns)
    if not label_columns:
        raise ValueError(f"{manifest}: at least one label column is needed")
    text_columns = (id_column, image_column, patient_column, split_column)
    frames = []
    for origin, path in (("labeled", manifest), ("test", None if test_manifest is None else Path(test_manifest))):
        if path is None:
            continue
        frame = _read_manifest(path, text_columns)
        missing = [c for c in (id_column, image_column, *label_columns) if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; available: {list(frame.columns)}")
        if test_manifest is not None and split_column in frame.columns and not _blank(frame[split_column]).all():
            normalised = frame[split_column].astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
            if origin == "test" and (normalised == "test").any():
                frame = frame[(normalised == "test").to_numpy()]
            elif origin == "labeled" and (normalised == "test").any():
                log.info(
                    "%s: %d 'test' row(s) left out (the test set is %s)",
                    path,
                    int((normalised == "test").sum()),
                    test_manifest,
                )
                frame = frame[(normalised != "test").to_numpy()]
        frame = frame.reset_index(drop=True).copy()
        frame["__origin"] = origin
        frame["__folder"] = str(path.parent)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    tasks, labels, invalid = _encode_labels(frame, label_columns, manifest)
    no_label = np.isnan(labels).all(axis=1) & ~invalid
    skipped = {"unreadable_image": 0, "invalid_label": int(invalid.sum())}
    if no_label.any():
        skipped["no_label"] = int(no_label.sum())
    usable = np.flatnonzero(~invalid & ~no_label)
    candidates = frame.iloc[usable].reset_index(drop=True)
    images, keep_local = _read_images(
        candidates, [Path(f) for f in candidates["__folder"]], image_column, id_column, image_size, skipped
    )
    keep = usable[keep_local]
    if not len(keep):
        raise ValueError(f"{manifest}: no usable rows out of {len(frame)} (skipped: {skipped})")
    if any(skipped.values()):
        log.warning("%s: skipped %s", manifest, skipped)

    kept = frame.iloc[keep].reset_index(drop=True)
    ids = kept[id_column].astype(str).to_numpy(dtype=object)
    patients = _patients(kept, ids, patient_column, image_column)
    if test_manifest is None:
        split, split_source = _assign_splits(kept, patients, split_column, manifest)
    else:
        split, split_source = _assign_with_test(kept, patients, split_column, manifest, val_fraction)
        train_val = set(patients[split != "test"])
        shared = sorted(train_val & set(patients[split == "test"]))
        if shared:
            raise ValueError(
                f"{manifest} and {test_manifest}: {len(shared)} patient(s) are in both the labelled and the test "
                f"manifest (e.g. {shared[:5]}); split by patient first (fedvlp split)"
            )
    empty = [s for s in SPLITS if not (split == s).any()]
    if empty:
        raise ValueError(
            f"{manifest}: split(s) {empty} are empty ({len(kept)} usable rows, split from {split_source}); "
            "more rows or patients are needed"
        )
    return LabeledSet(
        images=torch.stack(images),
        labels=torch.from_numpy(labels[keep].astype(np.float32)),
        label_names=label_columns,
        ids=ids,
        patient_ids=patients,
        split=split,
        skipped=skipped,
        manifest=manifest,
        split_source=split_source,
        tasks=tasks,
    )


def _assign_with_test(
    frame: pd.DataFrame, groups: np.ndarray, split_column: str, origin: Path, val_fraction: float
) -> tuple[np.ndarray, str]:
    """Test rows from the test manifest; train/val from the split column or a patient hash."""
    split = np.where(frame["__origin"].to_numpy() == "test", "test", "train").astype(object)
    labeled = split == "train"
    column = frame[split_column] if split_column in frame.columns else None
    if column is not None:
        normalised = column.astype(str).str.strip().str.lower().map(_SPLIT_ALIASES).to_numpy(dtype=object)
        if labeled.any() and (normalised[labeled] == "val").any() and (normalised[labeled] == "train").any():
            split[labeled] = normalised[labeled]
            return split, "column+test manifest"
    split[labeled] = patient_split(
        groups[labeled], [1.0 - val_fraction, val_fraction], ["train", "val"], salt=_VAL_SALT
    )
    return split, "hash+test manifest"


def split_manifest(
    manifest: Path,
    out_dir: Path,
    by: str = "patient_id",
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    names: Sequence[str] = SPLITS,
    image_column: str = "image",
    id_column: str = "id",
) -> dict[str, Path]:
    """Write ``out_dir/<name>.csv`` (train/val/test) manifests, split by patient, deterministically.

    Every row goes with its group (column ``by``; blank or absent: derived from the image file
    name, see :func:`derive_patient_id`, else the row id), assigned by a salted hash of the
    group (:func:`patient_split`), so the result depends on neither row order nor machine. The
    group column is filled in (derived ids included), a ``split`` column is set, and image
    paths are rewritten relative to ``out_dir``.

    Returns
    -------
    dict[str, Path]
        Split name to written manifest, plus ``trainval`` (train and val rows together, the
        ``--labeled`` manifest of a sweep whose ``--test`` is ``test.csv``) when both exist.
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"need one non-negative fraction per split {list(names)}, got {list(fractions)}")
    frame = _read_manifest(manifest, (id_column, image_column, by, "split"))
    if image_column not in frame.columns:
        raise ValueError(f"{manifest}: missing image column '{image_column}'; available: {list(frame.columns)}")
    ids = (
        (frame[id_column] if id_column in frame.columns else pd.Series(np.arange(len(frame))))
        .astype(str)
        .to_numpy(dtype=object)
    )
    groups = _patients(frame, ids, by, image_column)
    frame[by] = groups
    frame["split"] = patient_split(groups, fractions, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = frame[image_column].astype("string")
    frame[image_column] = [
        p
        if pd.isna(p) or not str(p).strip() or os.path.isabs(str(p))
        else os.path.relpath(manifest.parent.resolve() / str(p).strip(), out_dir.resolve())
        for p in images
    ]
    written = {}
    for name in names:
        path = out_dir / f"{name}.csv"
        frame[frame["split"] == name].to_csv(path, index=False)
        written[name] = path
    if "train" in names and "val" in names:
        # The --labeled manifest of `fedvlp sweep --test test.csv`: its split column gives train and val.
        path = out_dir / "trainval.csv"
        frame[frame["split"].isin(["train", "val"])].to_csv(path, index=False)
        written["trainval"] = path
    return written


def sample_fraction(
    train_indices: np.ndarray,
    labels: np.ndarray | torch.Tensor,
    fraction: float,
    seed: int,
    tasks: Sequence[Task] | None = None,
) -> np.ndarray:
    """A seeded random subset of the training rows, of size ``max(2, round(fraction * n))``.

    Class coverage: before filling the subset at random, one positive and one negative row
    are drawn for every class, rarest (class, value) first, as long as the train rows have
    such a row and the size budget allows. The subset size is never exceeded, so at tiny
    fractions with many rare classes some classes may still lack a positive. Rows are
    otherwise drawn uniformly without replacement; ``fraction >= 1`` returns all rows.

    Parameters
    ----------
    train_indices
        Candidate row indices (into ``labels``).
    labels
        ``(N, T)`` targets of the whole set (0/1, class index, NaN = unknown).
    fraction
        Share of ``train_indices`` to keep, in ``(0, 1]``.
    seed
        The same seed and inputs always give the same subset.
    tasks
        The label tasks (default: all binary). A categorical task counts as one
        one-vs-rest class per category; unknown (blank) values cover nothing.

    Returns
    -------
    np.ndarray
        Sorted row indices, a subset of ``train_indices``.
    """
    train_indices = np.asarray(train_indices, dtype=np.int64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(train_indices)
    if n < 2:
        raise ValueError(f"at least 2 training rows are needed, got {n}")
    size = min(n, max(2, int(round(fraction * n))))
    if size == n:
        return np.sort(train_indices)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim == 1:
        y = y[:, None]
    pos, known = coverage_matrix(y[train_indices], tasks if tasks is not None else binary_tasks(range(y.shape[1])))
    y = pos
    order = np.random.default_rng(seed).permutation(n)  # positions into train_indices
    chosen: list[int] = []
    covered = np.zeros((y.shape[1], 2), dtype=bool)  # (class, value)
    counts = np.stack([(known & ~y).sum(0), (known & y).sum(0)], axis=1)
    # Rarest (class, value) first; ties broken by class order for determinism.
    for flat in np.lexsort((np.arange(counts.size), counts.ravel())):
        c, v = divmod(int(flat), 2)
        if len(chosen) >= size or counts[c, v] == 0 or covered[c, v]:
            continue
        pick = next(int(p) for p in order if known[p, c] and y[p, c] == bool(v) and p not in chosen)
        chosen.append(pick)
        covered[np.flatnonzero(known[pick]), y[pick][known[pick]].astype(int)] = True
    taken = set(chosen)
    rest = [int(p) for p in order if int(p) not in taken]
    chosen.extend(rest[: size - len(chosen)])
    return np.sort(train_indices[chosen])
