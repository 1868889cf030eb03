"""A labelled image set for central evaluation, preloaded into memory, with patient-level splits.

The sweep trains dozens of small models on the same few thousand images, so the images are
decoded once into a single ``(N, 1, S, S)`` tensor and every run indexes into it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.images import ImageDecodeError, load_image

__all__ = ["SPLITS", "LabeledSet", "load_labeled", "patient_split", "sample_fraction"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
_HASH_SALT = "fedvlp-split"


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

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.labels.ndim != 2:
            raise ValueError(f"images must be (N, 1, S, S) and labels (N, C), got {tuple(self.images.shape)} and {tuple(self.labels.shape)}")
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
        for array in (self.ids, self.split):
            digest.update("\x1f".join(map(str, array)).encode())
        digest.update(self.labels.detach().cpu().contiguous().numpy().tobytes())
        digest.update(self.images.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        """One line: rows per split, positives per class, skipped rows."""
        parts = [f"{s}={int((self.split == s).sum())}" for s in SPLITS]
        positives = self.labels.sum(0).int().tolist()
        pos = ", ".join(f"{name}:{p}" for name, p in zip(self.label_names, positives))
        skipped = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v) or "none"
        return f"{len(self)} images ({' '.join(parts)}, split from {self.split_source}); positives {pos}; skipped {skipped}"


def _unit_hash(key: str) -> float:
    """A deterministic (process- and platform-independent) number in ``[0, 1)`` for ``key``."""
    digest = hashlib.sha256(f"{_HASH_SALT}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def patient_split(groups: Sequence[str], fractions: Sequence[float] = (0.6, 0.2, 0.2),
                  names: Sequence[str] = SPLITS) -> np.ndarray:
    """Assign every row to a split by a hash of its group (patient), so no patient spans two splits.

    Parameters
    ----------
    groups
        One patient id (or row id) per row.
    fractions
        Target share of *patients* per split; rows follow their patient.
    names
        Split names, one per fraction.

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
            cache[key] = names[int(np.searchsorted(edges, _unit_hash(key), side="right"))]
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
    return (values.isna() | (values.astype("string").str.strip() == "")).to_numpy(dtype=bool)


def _assign_splits(frame: pd.DataFrame, groups: np.ndarray, split_column: str, origin: Path) -> tuple[np.ndarray, str]:
    """Use the split column when it is informative, otherwise (or for missing val/test) hash by patient."""
    if split_column not in frame.columns or _blank(frame[split_column]).all():
        return patient_split(groups), "hash"
    raw = frame[split_column]
    blank = _blank(raw)
    if blank.any():
        raise ValueError(f"{origin}: column '{split_column}' is blank in {int(blank.sum())} row(s); "
                         "fill it for every row or leave it empty everywhere (then a patient-level split is made)")
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


def load_labeled(
    manifest: Path,
    label_columns: Sequence[str],
    image_size: int,
    id_column: str = "id",
    image_column: str = "image",
    patient_column: str = "patient_id",
    split_column: str = "split",
) -> LabeledSet:
    """Read a labelled manifest (CSV or Parquet) and decode all its images into memory.

    Parameters
    ----------
    manifest
        The manifest file. Relative image paths are relative to its folder.
    label_columns
        Binary label columns (0/1). A row with any other value in one of them (blank
        included) is skipped and counted as ``"invalid_label"``.
    image_size
        Images are resized to ``image_size x image_size``.
    id_column, image_column
        Row id and image path columns (required).
    patient_column
        Patient id column, used to keep a patient's images in one split. When the column
        is absent, or blank in a row, the row id stands in for the patient.
    split_column
        ``train``/``val``/``test`` per row (``valid``/``validation``/``dev`` accepted for val).
        When the column is absent, entirely blank, or only says ``train`` (e.g. a data set's
        official train split), a patient-level 60/20/20 split is made by a deterministic hash
        of the patient id. When only val or only test is missing, it is carved out of the
        train rows the same way.

    Returns
    -------
    LabeledSet
        With ``skipped`` counting rows dropped for an unreadable image or an invalid label.

    Raises
    ------
    FileNotFoundError
        The manifest does not exist.
    ValueError
        A required column is missing, the split column is malformed, no row is usable, or a
        split ends up empty; the message names the manifest.
    """
    manifest = Path(manifest)
    label_columns = tuple(label_columns)
    if not label_columns:
        raise ValueError(f"{manifest}: at least one label column is needed")
    frame = _read_manifest(manifest, (id_column, image_column, patient_column, split_column))
    missing = [c for c in (id_column, image_column, *label_columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"{manifest}: missing column(s) {missing}; available: {list(frame.columns)}")

    labels = np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float) for c in label_columns], axis=1)
    label_ok = np.isin(labels, (0.0, 1.0)).all(axis=1)
    skipped = {"unreadable_image": 0, "invalid_label": int((~label_ok).sum())}

    folder = manifest.parent
    images, keep = [], []
    for row in np.flatnonzero(label_ok):
        relative = frame[image_column].iloc[row]
        if pd.isna(relative) or not str(relative).strip():
            skipped["unreadable_image"] += 1
            continue
        try:
            images.append(load_image(folder / str(relative).strip(), image_size))
        except ImageDecodeError as err:
            log.warning("skipping row %s: %s", frame[id_column].iloc[row], err)
            skipped["unreadable_image"] += 1
            continue
        keep.append(row)
    if not keep:
        raise ValueError(f"{manifest}: no usable rows out of {len(frame)} (skipped: {skipped})")
    if any(skipped.values()):
        log.warning("%s: skipped %s", manifest, skipped)

    kept = frame.iloc[keep].reset_index(drop=True)
    ids = kept[id_column].astype(str).to_numpy(dtype=object)
    if patient_column in kept.columns:
        patients = kept[patient_column].astype("string").str.strip()
        patients = np.where(_blank(kept[patient_column]), ids, patients.fillna("").to_numpy(dtype=object))
    else:
        patients = ids.copy()
    patients = np.asarray(patients, dtype=object)
    split, split_source = _assign_splits(kept, patients, split_column, manifest)
    empty = [s for s in SPLITS if not (split == s).any()]
    if empty:
        raise ValueError(f"{manifest}: split(s) {empty} are empty ({len(kept)} usable rows, split from {split_source}); "
                         "more rows or patients are needed")
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
    )


def sample_fraction(train_indices: np.ndarray, labels: np.ndarray | torch.Tensor, fraction: float, seed: int) -> np.ndarray:
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
        ``(N, C)`` 0/1 labels of the whole set.
    fraction
        Share of ``train_indices`` to keep, in ``(0, 1]``.
    seed
        The same seed and inputs always give the same subset.

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
    y = y[train_indices] > 0.5
    order = np.random.default_rng(seed).permutation(n)  # positions into train_indices
    chosen: list[int] = []
    covered = np.zeros((y.shape[1], 2), dtype=bool)  # (class, value)
    counts = np.stack([(~y).sum(0), y.sum(0)], axis=1)
    # Rarest (class, value) first; ties broken by class order for determinism.
    for flat in np.lexsort((np.arange(counts.size), counts.ravel())):
        c, v = divmod(int(flat), 2)
        if len(chosen) >= size or counts[c, v] == 0 or covered[c, v]:
            continue
        pick = next(int(p) for p in order if y[p, c] == bool(v) and p not in chosen)
        chosen.append(pick)
        covered[np.arange(y.shape[1]), y[pick].astype(int)] = True
    taken = set(chosen)
    rest = [int(p) for p in order if int(p) not in taken]
    chosen.extend(rest[: size - len(chosen)])
    return np.sort(train_indices[chosen])
