"""Datasets for pairs, images only and reports only, and a collate that drops bad samples."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..config import AUGMENT_PROFILES, ConfigError
from .images import ImageDecodeError, load_image
from .manifest import ManifestRows, StringColumn, read_manifest
from .reports import text_view

__all__ = ["SiteDataset", "collate_samples", "pad_token_ids", "train_transform"]


def _crop_flip_blur(
    size: int,
    crop_min: float,
    degrees: float,
    scale: tuple[float, float] | None,
    sigma_max_224: float,
    blur_p: float,
) -> v2.Compose:
    """Crop, flip, affine (translate 0.1), brightness and contrast 0.6-1.4, Gaussian blur.

    The blur's sigma range (0.1 to ``sigma_max_224`` px) is given for 224 px inputs and scaled to ``size``.
    """
    sigma_max = max(0.2, sigma_max_224 * size / 224)
    kernel = 2 * int(math.ceil(2 * sigma_max)) + 1
    blur = v2.GaussianBlur(kernel, sigma=(0.1 * size / 224, sigma_max))
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(crop_min, 1.0), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomAffine(degrees=degrees, translate=(0.1, 0.1), scale=scale),
            v2.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4)),
            blur if blur_p >= 1.0 else v2.RandomApply([blur], p=blur_p),
        ]
    )


def train_transform(size: int, profile: str = "light") -> v2.Transform:
    """Pretraining image augmentation.

    ``light`` (default recipes): no horizontal flip, because reports name sides ("left
    pleural effusion") and a flipped image would contradict its report.
    ``convirt``: ConVIRT's augmentations as published (crop 0.6-1, flip p=0.5, affine
    +-20 deg / translate 0.1 / scale 0.95-1.05, brightness and contrast 0.6-1.4, Gaussian
    blur); the blur sigma range 0.1-3.0 px is for 224 px inputs and is scaled to ``size``.
    ``moco-cxr``: MoCo-CXR's views for chest X-rays: rotation +-10 deg and a horizontal flip,
    no crop, blur or jitter (they can hide the few pixels that carry a finding).
    ``strong``: BYOL-style views for grayscale images: crop 0.4-1, flip p=0.5, affine +-10 deg /
    translate 0.1, brightness and contrast 0.6-1.4, Gaussian blur (0.1-2.0 px at 224 px) with p=0.5.
    The last two flip, so they suit images without reports (``image-only-augment``).
    """
    if profile == "light":
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
                v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05)),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ]
        )
    if profile == "convirt":
        return _crop_flip_blur(size, crop_min=0.6, degrees=20, scale=(0.95, 1.05), sigma_max_224=3.0, blur_p=1.0)
    if profile == "moco-cxr":
        return v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomRotation(10)])
    if profile == "strong":
        return _crop_flip_blur(size, crop_min=0.4, degrees=10, scale=None, sigma_max_224=2.0, blur_p=0.5)
    raise ValueError(f"unknown augmentation profile '{profile}' (expected one of {AUGMENT_PROFILES})")


class SiteDataset(Dataset[dict[str, Any]]):
    """Samples of one source: ``image`` (1, S, S) in [0, 1] and/or tokenised ``report``.

    A sample whose image is rejected comes back as ``{"id": ..., "error": reason, "detail": ...}``
    (``reason`` from :mod:`fedvlp.core.data.images`, e.g. ``image_corrupt`` or ``image_rgb``;
    ``detail`` names the manifest row and the file) so that :func:`collate_samples` can drop
    and count it, also inside DataLoader workers. Construction reads no image: images are
    decoded and resized in ``__getitem__``, i.e. in the DataLoader's worker processes.
    """

    def __init__(
        self,
        rows: ManifestRows,
        image_size: int,
        tokenizer: Any = None,
        max_len: int = 64,
        augment: bool = True,
        *,
        profile: str = "light",
        text_view: str = "full",
        views: int = 1,
        indices: Sequence[int] | np.ndarray | None = None,
    ):
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        self.rows = rows
        self.views = views if rows.images is not None and augment else 1
        # The rows this dataset serves (a hold-out split of a source keeps its rows apart).
        self.indices = np.arange(len(rows)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.text_view = text_view
        self.profile = profile
        self.transform = train_transform(image_size, profile) if augment and rows.images is not None else None
        self.policy = rows.policy
        self.pool: StringColumn | None = None
        source = rows.source
        if rows.reports is None and rows.images is not None and source.unpaired_text_pool is not None:
            frame = read_manifest(source.unpaired_text_pool, [source.pool_report_column])
            self.pool = StringColumn.from_strings(t.strip() for t in frame[source.pool_report_column] if str(t).strip())
            if not self.pool:
                raise ConfigError(
                    str(source.unpaired_text_pool),
                    source.pool_report_column,
                    "at least one non-empty report in the unpaired text pool",
                )
        if (rows.reports is not None or self.pool is not None) and tokenizer is None:
            raise ValueError(f"{rows.source.manifest}: reports need a tokenizer")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def modalities(self) -> frozenset[str]:
        """What every sample carries (``two-views`` when it holds a second augmented image)."""
        modalities = self.rows.source.modalities
        return modalities | {"two-views"} if self.views == 2 else modalities

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = int(self.indices[position])
        sample: dict[str, Any] = {"id": self.rows.ids[index]}
        if self.rows.images is not None:
            try:
                image = load_image(self.rows.images[index], self.image_size, self.policy)
            except ImageDecodeError as err:
                return {"id": sample["id"], "error": err.reason, "detail": self.rows.image_problem(index, err)}
            sample["image"] = self.transform(image) if self.transform is not None else image
            if self.views == 2:
                assert self.transform is not None
                sample["image2"] = self.transform(image)  # an independent second augmentation
        if self.pool is not None:
            # An unpaired tuple: this image with a random report of the public pool.
            report = self.pool[int(torch.randint(len(self.pool), (1,)).item())]
            encoded = self.tokenizer(text_view(report, self.text_view), truncation=True, max_length=self.max_len)
            sample["input_ids"] = torch.tensor(encoded["input_ids"], dtype=torch.long)
            sample["paired"] = 0.0
        if self.rows.reports is not None:
            text = text_view(self.rows.reports[index], self.text_view)
            encoded = self.tokenizer(text, truncation=True, max_length=self.max_len)
            sample["input_ids"] = torch.tensor(encoded["input_ids"], dtype=torch.long)
        return sample


def pad_token_ids(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences padded with 0 to the longest one: ``(input_ids, attention_mask)``, each ``(B, L)``.

    Padding to the batch's longest report, not the tokenizer's maximum, keeps text steps short.
    """
    length = max(len(ids) for ids in sequences)
    input_ids = torch.zeros(len(sequences), length, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack good samples, pad token ids, and report dropped ones as ``skipped``.

    Returns a dict with ``image`` (B, 1, S, S), ``input_ids`` / ``attention_mask`` (B, L),
    ``ids`` and ``skipped`` (a list of ``(id, reason, detail)``).
    """
    good = [s for s in samples if "error" not in s]
    batch: dict[str, Any] = {
        "ids": [s["id"] for s in good],
        "skipped": [(s["id"], s["error"], s.get("detail", "")) for s in samples if "error" in s],
    }
    if good and "image" in good[0]:
        batch["image"] = torch.stack([s["image"] for s in good])
    if good and "image2" in good[0]:
        batch["image2"] = torch.stack([s["image2"] for s in good])
    if good and "input_ids" in good[0]:
        batch["input_ids"], batch["attention_mask"] = pad_token_ids([s["input_ids"] for s in good])
    if good and "paired" in good[0]:
        batch["paired"] = torch.tensor([s["paired"] for s in good], dtype=torch.float32)
    return batch


def skipped_counter(batch: dict[str, Any]) -> Counter[str]:
    """Reasons of the samples a batch dropped."""
    return Counter(reason for _, reason, _ in batch["skipped"])
