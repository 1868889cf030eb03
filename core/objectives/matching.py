"""TIMNet's image-text matching: a classifier on |v_txt - v_img| with random-report negatives."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGE, PAIR, TEXT, BatchView, Objective

__all__ = ["matching_loss", "shuffled_negatives", "MatchingObjective"]


def matching_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of match logits against 1 (true pair) / 0 (random report)."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def shuffled_negatives(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """For each image, the index of a report from a *different* row of the batch.

    A random non-zero cyclic shift never maps a row onto itself, unlike a plain permutation.
    """
    if batch_size < 2:
        raise ValueError("matching needs at least 2 pairs in a batch to draw a negative report")
    shift = int(torch.randint(1, batch_size, (1,)).item())
    return (torch.arange(batch_size, device=device) + shift) % batch_size


class MatchingObjective(Objective):
    """Image branch: 1x1 conv + BN + ReLU, GAP, FC; text branch: the same on token states.

    The classifier sees ``|v_txt - v_img|`` for every true pair and for every image with a
    report drawn from another row of the batch.
    """

    name: ClassVar[str] = "matching"
    modalities: ClassVar[frozenset[str]] = frozenset({IMAGE, TEXT, PAIR})
    encoder_groups: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.image_conv = nn.Sequential(nn.Conv2d(image_dim, embed_dim, 1), nn.BatchNorm2d(embed_dim), nn.ReLU())
        self.image_fc = nn.Linear(embed_dim, embed_dim)
        self.text_conv = nn.Sequential(nn.Conv1d(text_dim, embed_dim, 1), nn.BatchNorm1d(embed_dim), nn.ReLU())
        self.text_fc = nn.Linear(embed_dim, embed_dim)
        self.classifier = nn.Sequential(nn.Linear(embed_dim, embed_dim // 2), nn.ReLU(), nn.Linear(embed_dim // 2, 1))

    def embed(self, view: BatchView) -> tuple[torch.Tensor, torch.Tensor]:
        """``v_img`` and ``v_txt`` before the difference classifier."""
        image = self.image_fc(self.image_conv(view.image_map).mean(dim=(2, 3)))
        mask = view.batch["attention_mask"].unsqueeze(1).to(view.text_states.dtype)
        tokens = self.text_conv(view.text_states.transpose(1, 2))
        text = self.text_fc((tokens * mask).sum(-1) / mask.sum(-1).clamp_min(1.0))
        return image, text

    def embed_image_map(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` image feature maps to ``v_img``: 1x1 conv, average pool, FC (retrieval)."""
        result: torch.Tensor = self.image_fc(self.image_conv(features).mean(dim=(2, 3)))
        return result

    def embed_text_states(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` token states to ``v_txt``: 1x1 conv, masked average pool, FC (retrieval)."""
        m = mask.unsqueeze(1).to(states.dtype)
        tokens = self.text_conv(states.transpose(1, 2))
        result: torch.Tensor = self.text_fc((tokens * m).sum(-1) / m.sum(-1).clamp_min(1.0))
        return result

    def loss(self, view: BatchView) -> torch.Tensor:
        image, text = self.embed(view)
        negatives = shuffled_negatives(image.shape[0], image.device)
        diffs = torch.cat([(text - image).abs(), (text[negatives] - image).abs()])
        targets = torch.cat([torch.ones(image.shape[0]), torch.zeros(image.shape[0])]).to(image.device)
        return matching_loss(self.classifier(diffs).squeeze(-1), targets)
