"""Masked modelling: masked language modelling and masked image patch regeneration (L1)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGE, TEXT, BatchView, Objective

__all__ = ["mask_tokens", "mlm_loss", "mlm_loss_per_sample", "MLMObjective", "patch_mask", "masked_l1", "MIMObjective"]

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    ratio: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``ratio`` of the real tokens; 80% -> [MASK], 10% random, 10% kept.

    Every sequence gets at least one prediction target so that short reports still train.

    Returns
    -------
    (masked_ids, labels)
        ``labels`` holds the original id at picked positions and -100 elsewhere.
    """
    candidates = (attention_mask == 1) & ~torch.isin(input_ids, special_ids)
    scores = torch.rand(input_ids.shape, device=input_ids.device).masked_fill(~candidates, 2.0)
    picked = (scores < ratio) & candidates
    # Force one target per sequence: the candidate with the lowest score.
    first = scores.argmin(dim=1, keepdim=True)
    has_candidate = candidates.any(dim=1, keepdim=True)
    picked |= torch.zeros_like(picked).scatter_(1, first, True) & has_candidate
    labels = input_ids.masked_fill(~picked, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, device=input_ids.device)
    masked = input_ids.clone()
    masked[picked & (action < 0.8)] = mask_id
    random_slots = picked & (action >= 0.8) & (action < 0.9)
    masked[random_slots] = torch.randint(
        len(special_ids), vocab_size, (int(random_slots.sum()),), device=input_ids.device
    )
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def mlm_loss_per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over samples of each sample's mean cross-entropy over its own targets.

    A sum of per-sample terms (divided by the batch size), as DP-SGD needs: the token-level
    mean of :func:`mlm_loss` divides by the batch's total target count, which couples samples.
    """
    per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    targets = (labels != IGNORE_INDEX).sum(dim=1).clamp_min(1)
    return (per_token.sum(dim=1) / targets).mean()


class MLMObjective(Objective):
    """Masked language modelling on reports with BERT's prediction head.

    ``tied=False`` (run-config ``mlm-decoder = "untied"``): the head has its own
    vocabulary-sized decoder matrix (opacus needs this under sample-level DP).
    ``tied=True`` (``"tied"``): the logits are the transformed states times the text encoder's
    word embeddings plus a bias, as in BERT. The head then has no vocabulary-sized matrix of its
    own: with MiniLM's 30,522 words that is 11.7 M parameters fewer to update, optimise and
    upload every step, and none at all to train when the embeddings are locked
    (``freeze-text-layers``).
    """

    name: ClassVar[str] = "mlm"
    special_ids: torch.Tensor  # a buffer
    modalities: ClassVar[frozenset[str]] = frozenset({TEXT})
    encoder_groups: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(
        self,
        hidden: int,
        vocab_size: int,
        special_ids: list[int],
        mask_id: int,
        ratio: float = 0.15,
        tied: bool = False,
    ) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.tied = tied
        if tied:
            self.bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.decoder = nn.Linear(hidden, vocab_size)
        self.register_buffer("special_ids", torch.tensor(sorted(special_ids)), persistent=False)
        self.mask_id, self.vocab_size, self.ratio = mask_id, vocab_size, ratio

        # True under sample-level DP (core/privacy.py): one mean per sample, then the batch mean.
        self.per_sample = False

    def logits(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of token states ``hidden`` (``model.text``'s embeddings when tied)."""
        states = self.transform(hidden)
        if self.tied:
            return F.linear(states, model.text.bert.embeddings.word_embeddings.weight, self.bias)
        result: torch.Tensor = self.decoder(states)
        return result

    def mask(self, view: BatchView) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked token ids and labels (-100 where nothing is predicted) for a batch."""
        ids, mask = view.batch["input_ids"], view.batch["attention_mask"]
        return mask_tokens(ids, mask, self.special_ids, self.mask_id, self.vocab_size, self.ratio)

    def masked_loss(
        self, model: Any, masked: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """The loss of already masked reports (``model.text`` encodes them)."""
        hidden = model.text(masked, attention_mask)
        if self.per_sample:
            # opacus needs the batch dimension first in every layer: decode all positions.
            return mlm_loss_per_sample(self.logits(model, hidden), labels)
        # Decode only the ~15% target positions: with a 30k vocabulary (MiniLM) the decoder
        # over every position costs more than the encoder. Same mean as mlm_loss over all.
        targets = labels != IGNORE_INDEX
        return F.cross_entropy(self.logits(model, hidden[targets]), labels[targets])

    def loss(self, view: BatchView) -> torch.Tensor:
        masked, labels = self.mask(view)
        return self.masked_loss(view.model, masked, view.batch["attention_mask"], labels)


def patch_mask(batch: int, size: int, patch: int, ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """A ``(B, 1, size, size)`` boolean mask with ``max(1, round(ratio * n))`` patches masked per image."""
    side = size // patch
    count = side * side
    n_masked = max(1, round(ratio * count))
    order = torch.rand(batch, count, device=device).argsort(dim=1)
    grid = torch.zeros(batch, count, dtype=torch.bool, device=device)
    grid.scatter_(1, order[:, :n_masked], True)
    grid = grid.view(batch, 1, side, side)
    return grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over masked pixels only."""
    weights = mask.to(prediction.dtype)
    return ((prediction - target).abs() * weights).sum() / weights.sum().clamp_min(1.0)


class MIMObjective(Objective):
    """Masked patch regeneration for CNN encoders (SimMIM-style).

    Masked patches are set to mid-grey, the encoder's feature map is decoded back to
    pixels by a 1x1 convolution and a pixel shuffle, and L1 is taken on masked pixels.
    """

    name: ClassVar[str] = "mim"
    modalities: ClassVar[frozenset[str]] = frozenset({IMAGE})
    encoder_groups: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, feature_dim: int, stride: int, in_chans: int = 1, patch: int = 8, ratio: float = 0.15) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Conv2d(feature_dim, stride * stride * in_chans, 1), nn.PixelShuffle(stride))
        self.patch, self.ratio = patch, ratio

    def mask(self, view: BatchView) -> torch.Tensor:
        """A ``(B, 1, S, S)`` patch mask for the batch's images."""
        images = view.batch[IMAGE]
        return patch_mask(images.shape[0], images.shape[-1], self.patch, self.ratio, images.device)

    def masked_loss(self, model: Any, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L1 on the masked pixels of ``images``. Every image has the same number of masked
        pixels, so this is the batch mean of per-image terms (what DP-SGD needs)."""
        corrupted = images.masked_fill(mask, 0.5)
        prediction = self.decoder(model.image.forward_features(corrupted))
        return masked_l1(prediction, images, mask.expand_as(images))

    def loss(self, view: BatchView) -> torch.Tensor:
        return self.masked_loss(view.model, view.batch[IMAGE], self.mask(view))
