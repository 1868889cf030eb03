"""Studies (up to 3 views + one report) from a pairs source, for the ``refers`` recipe.

Rows of a pairs manifest that share a ``study_id`` are the views of one study; a row without
a study id (or a manifest without the column) is a study of its own. The study's report is
that of its first row in manifest order.

Views that fail the image checks are dropped and reported as ``(row id, reason, detail)`` with
the reason of :mod:`fedvlp.core.data.images` (``image_corrupt``, ``image_rgb``, ...); a
study left without any view is dropped and reported as ``("study:<id>", "no_decodable_view",
detail)``, the same ``skipped`` convention as :func:`~fedvlp.core.data.datasets.collate_samples`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from ..config import ConfigError
from .datasets import pad_token_ids, train_transform
from .images import ImageDecodeError, load_image
from .manifest import ManifestRows, read_manifest
from .reports import text_view

__all__ = ["StudyDataset", "collate_studies", "STUDY_VIEWS", "study_ids_of"]

STUDY_VIEWS = 3


def study_ids_of(rows: ManifestRows, study_column: str | None) -> tuple[list[str | None], bool]:
    """The study id of every row (``None`` when empty), and whether the manifest has the column."""
    source = rows.source
    if study_column is None:
        return [None] * len(rows), False
    if study_column == "study_id" and rows.study_ids is not None:
        return [study or None for study in rows.study_ids], True
    try:
        frame = read_manifest(source.manifest, list(dict.fromkeys([source.id_column, study_column])))
    except ConfigError as err:
        if err.key == study_column:
            return [None] * len(rows), False
        raise
    mapping: dict[str, str] = {}
    for row_id, study in zip(frame[source.id_column], frame[study_column]):
        mapping.setdefault(
            str(row_id).strip(), str(study).strip()
        )  # the first row of an id wins, as in load_source_rows
    return [mapping.get(row_id) or None for row_id in rows.ids], True


def collate_studies(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack studies, repeating views to fill 3 slots, pad token ids, report what was dropped.

    Returns a dict with ``views`` ``(B, 3, 1, S, S)`` (slot ``j`` of a study with ``n`` views
    holds view ``j mod n``), ``view_mask`` ``(B, 3)`` (``True`` for real views), ``image``
    ``(B, 1, S, S)`` (the first view, so that code that only knows ``image`` still works),
    ``input_ids`` / ``attention_mask`` ``(B, L)``, ``ids`` (study ids) and ``skipped`` (a list
    of ``(id, reason, detail)``: corrupt views by row id, empty studies as ``study:<id>``).
    """
    good = [s for s in samples if "error" not in s]
    skipped = [entry for s in samples for entry in s.get("skipped_views", [])]
    skipped += [(f"study:{s['id']}", s["error"], s.get("detail", "")) for s in samples if "error" in s]
    batch: dict[str, Any] = {"ids": [s["id"] for s in good], "skipped": skipped}
    if not good:
        return batch
    views, masks = [], []
    for sample in good:
        count = sample["views"].shape[0]
        views.append(sample["views"][[j % count for j in range(STUDY_VIEWS)]])
        masks.append(torch.arange(STUDY_VIEWS) < count)
    batch["views"] = torch.stack(views)
    batch["view_mask"] = torch.stack(masks)
    batch["image"] = batch["views"][:, 0]
    batch["input_ids"], batch["attention_mask"] = pad_token_ids([s["input_ids"] for s in good])
    return batch


class StudyDataset(Dataset[dict[str, Any]]):
    """One sample per study: ``views`` ``(n, 1, S, S)`` with ``1 <= n <= 3`` and the report tokens.

    Parameters
    ----------
    rows
        A pairs source (images and reports) from :func:`~fedvlp.core.data.manifest.load_source_rows`.
    image_size, tokenizer, max_len, augment, profile, text_view
        As for :class:`~fedvlp.core.data.datasets.SiteDataset`; every view is augmented on its own.
    study_column
        Manifest column holding the study id (``None``: every row is its own study).
    max_views
        Views per study; a bigger study contributes a random subset each time (the first
        ones without augmentation), and a corrupt view is replaced by another one if it can.
    """

    # The collate function of these samples (a trainer can pick it per dataset).
    collate_fn = staticmethod(collate_studies)

    def __init__(
        self,
        rows: ManifestRows,
        image_size: int,
        tokenizer: Any,
        max_len: int = 64,
        augment: bool = True,
        *,
        study_column: str | None = "study_id",
        max_views: int = STUDY_VIEWS,
        profile: str = "light",
        text_view: str = "full",
    ) -> None:
        if rows.images is None or rows.reports is None:
            raise ValueError(f"{rows.source.manifest}: studies need a pairs source (images and reports)")
        if tokenizer is None:
            raise ValueError(f"{rows.source.manifest}: reports need a tokenizer")
        self.rows = rows
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.augment = augment
        self.max_views = max_views
        self.text_view = text_view
        self.transform = train_transform(image_size, profile) if augment else None
        study_of, self.grouped = study_ids_of(rows, study_column)
        groups: dict[tuple[bool, str], list[int]] = {}
        for index, (row_id, study) in enumerate(zip(rows.ids, study_of)):
            # rows without a study id are keyed apart, so that a row id never merges with a study id
            key = (True, study) if study is not None else (False, row_id)
            groups.setdefault(key, []).append(index)
        self.studies: list[tuple[str, list[int]]] = [(key[1], members) for key, members in groups.items()]

    def __len__(self) -> int:
        return len(self.studies)

    @property
    def modalities(self) -> frozenset[str]:
        """What every sample carries (``{"image", "text"}``)."""
        return self.rows.source.modalities

    def __getitem__(self, index: int) -> dict[str, Any]:
        study_id, members = self.studies[index]
        if self.augment and len(members) > self.max_views:
            order = [members[i] for i in torch.randperm(len(members)).tolist()]
        else:
            order = list(members)
        views: list[torch.Tensor] = []
        skipped: list[tuple[str, str, str]] = []
        for row in order:
            if len(views) == self.max_views:
                break
            assert self.rows.images is not None
            try:
                image = load_image(self.rows.images[row], self.image_size, self.rows.policy)
            except ImageDecodeError as err:
                skipped.append((self.rows.ids[row], err.reason, self.rows.image_problem(row, err)))
                continue
            views.append(self.transform(image) if self.transform is not None else image)
        if not views:
            detail = f"study {study_id}: none of its {len(members)} image(s) could be decoded"
            return {"id": study_id, "error": "no_decodable_view", "detail": detail, "skipped_views": skipped}
        assert self.rows.reports is not None
        report = self.rows.reports[members[0]]
        text = text_view(report, self.text_view)
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_len)
        return {
            "id": study_id,
            "views": torch.stack(views),
            "input_ids": torch.tensor(encoded["input_ids"], dtype=torch.long),
            "skipped_views": skipped,
        }
