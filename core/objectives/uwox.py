"""Objectives of the ``uwox`` and ``unit`` recipes (Wang et al., mixed-data VLP).

Three losses train one shared transformer (:mod:`fedvlp.core.models.uwox`):

``mlm`` (``head.mlm.``)
    BERT masking of 15% of the report tokens (:func:`~fedvlp.core.objectives.masked.mask_tokens`),
    cross-entropy through the text embedding and the shared encoder.
``mim`` (``head.mim.``)
    15% of the full-resolution patches are hidden (their pixels set to the mean grey *before*
    the pyramid is built, so the coarser levels never see them, and their full-resolution
    patch embedding replaced by the learned ``image.mask_token``). A multi-scale decoder

    ``D_up = SAM(F_up)``, ``D_mid = SAM(D_up, F_mid, F_mid)``, ``D_down = SAM(D_mid, F_down, F_down)``

    with ``up`` = full resolution, ``mid`` = 1/2 and ``down`` = 1/4 (the first argument of
    ``SAM`` is the query, so the chain has to start at the full-resolution tokens for its
    output to be one vector per full-resolution patch), then a 2-layer MLP regenerates each
    full-resolution patch; L1 over masked patches only, in ``[0, 1]`` pixel units.
``matching`` (``head.matching.``)
    ``CoMat = E_txt E_img^T / sqrt(D)`` per pair, mean-pooled along each axis, the two
    vectors concatenated (the text vector zero-padded to ``max_len``; the image vector has a
    fixed length for a fixed image size), a linear layer, sigmoid and BCE against
    paired (1) / unpaired (0).

:class:`SAM` and :func:`init_bert_style` are shared with the model and live in
:mod:`fedvlp.core.layers`; the model is described here by the :class:`SharedTransformer`
protocol, so objectives never import models.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SAM, init_bert_style
from .base import IMAGE, TEXT, BatchView, Objective
from .masked import MLMObjective, mask_tokens, masked_l1, mlm_loss
from .matching import matching_loss, shuffled_negatives

__all__ = [
    "SAM",
    "init_bert_style",
    "SharedTransformer",
    "random_patch_mask",
    "masked_patch_l1",
    "comat_features",
    "MultiScaleDecoder",
    "UWOXMLMObjective",
    "UWOXMIMObjective",
    "UWOXMatchingObjective",
    "TEXT_KEY",
    "IMAGE_KEY",
    "MASKED_TEXT_KEY",
    "MASKED_IMAGE_KEY",
]

# BatchView.cached names of the per-batch encoder outputs.
TEXT_KEY = "uwox.text"  # (B, L, D) clean report tokens
IMAGE_KEY = "uwox.image"  # encode_image(...) dict of the clean images
MASKED_TEXT_KEY = "uwox.text.masked"  # (labels, (B, L, D) states of the BERT-masked reports)
MASKED_IMAGE_KEY = "uwox.image.masked"  # (patch mask (B, N_full), encode_image(...) dict)


class SharedTransformer(Protocol):
    """What these objectives use of the ``uwox`` / ``unit`` model (:class:`fedvlp.core.models.uwox.UWOXModel`)."""

    config: Any  # ``full_tokens``: the number of full-resolution patches
    image: Any  # ``patchify(images)``: ``(B, N_full, patch**2)`` pixel targets

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def encode_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> dict[str, Any]: ...

    def pair_states(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


# --------------------------------------------------------------------------------- pure helpers
def random_patch_mask(batch: int, count: int, ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """A ``(B, count)`` boolean mask with ``max(1, round(ratio * count))`` patches set per row.

    The same count rule as :func:`~fedvlp.core.objectives.masked.patch_mask`, at patch level.
    """
    n_masked = max(1, round(ratio * count))
    order = torch.rand(batch, count, device=device).argsort(dim=1)
    mask = torch.zeros(batch, count, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :n_masked], True)


def masked_patch_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the pixels of masked patches only.

    Parameters
    ----------
    prediction, target
        ``(B, N, P)`` pixels of ``N`` patches of ``P`` pixels each.
    mask
        ``(B, N)`` boolean, True for the masked patches that count.
    """
    return masked_l1(prediction, target, mask.unsqueeze(-1).expand_as(prediction))


def comat_features(text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, max_len: int) -> torch.Tensor:
    """Pooled token-level correlation matrix of each pair, as a fixed-length vector.

    ``CoMat = text @ image^T / sqrt(D)`` is ``(B, L, N)``. Its mean over the image axis gives
    one value per text token (padding tokens set to 0), zero-padded from ``L`` to ``max_len``
    so that text position ``i`` is always feature ``i``; its mean over the real text tokens
    gives one value per image token (``N`` is fixed by the image size). The result is
    ``(B, max_len + N)``: ``[text-axis pooled (max_len), image-axis pooled (N)]``.

    The ``1/sqrt(D)`` scale (as in scaled dot-product attention) keeps the features O(1) at
    every model width; the classifier's weights could absorb it, but Adam's step would not.
    """
    batch, length, dim = text.shape
    if length > max_len:
        raise ValueError(f"reports of {length} tokens are longer than the matching head's max_len {max_len}")
    weights = text_mask.to(text.dtype)
    comat = torch.einsum("bld,bnd->bln", text, image) / math.sqrt(dim)
    text_pooled = comat.mean(dim=2) * weights  # (B, L)
    image_pooled = (comat * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp_min(
        1.0
    )  # (B, N)
    return torch.cat([F.pad(text_pooled, (0, max_len - length)), image_pooled], dim=1)


# ------------------------------------------------------------------------------------ objectives
class UWOXMLMObjective(MLMObjective):
    """Masked language modelling through the text embedding and the shared encoder.

    The head (``transform`` + untied ``decoder``) is :class:`MLMObjective`'s.
    """

    name: ClassVar[str] = "mlm"
    modalities: ClassVar[frozenset[str]] = frozenset({TEXT})
    encoder_groups: ClassVar[tuple[str, ...]] = ("text", "joint")

    def __init__(self, hidden: int, vocab_size: int, special_ids: list[int], mask_id: int, ratio: float = 0.15) -> None:
        super().__init__(hidden, vocab_size, special_ids, mask_id, ratio)
        init_bert_style(self)

    def loss(self, view: BatchView) -> torch.Tensor:
        model: SharedTransformer = view.model
        ids, mask = view.batch["input_ids"], view.batch["attention_mask"]

        def encode() -> tuple[torch.Tensor, torch.Tensor]:
            masked, labels = mask_tokens(ids, mask, self.special_ids, self.mask_id, self.vocab_size, self.ratio)
            return labels, model.encode_text(masked, mask)

        labels, states = view.cached(MASKED_TEXT_KEY, encode)
        return mlm_loss(self.decoder(self.transform(states)), labels)


class MultiScaleDecoder(nn.Module):
    """``D_up = SAM(F_up)``, ``D_mid = SAM(D_up, F_mid, F_mid)``, ``D_down = SAM(D_mid, F_down, F_down)``, MLP.

    ``up`` is the full-resolution level, ``mid`` 1/2 and ``down`` 1/4. Returns ``(B, N_full, patch**2)``.
    """

    def __init__(self, hidden: int, heads: int, intermediate: int, patch: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.up = SAM(hidden, heads, intermediate, dropout)
        self.mid = SAM(hidden, heads, intermediate, dropout)
        self.down = SAM(hidden, heads, intermediate, dropout)
        self.pixels = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, patch * patch))

    def forward(self, f_up: torch.Tensor, f_mid: torch.Tensor, f_down: torch.Tensor) -> torch.Tensor:
        d_up = self.up(f_up)
        d_mid = self.mid(d_up, f_mid, f_mid)
        d_down = self.down(d_mid, f_down, f_down)
        result: torch.Tensor = self.pixels(d_down)
        return result


class UWOXMIMObjective(Objective):
    """Masked patch regeneration from the three encoded levels (see the module docstring)."""

    name: ClassVar[str] = "mim"
    modalities: ClassVar[frozenset[str]] = frozenset({IMAGE})
    encoder_groups: ClassVar[tuple[str, ...]] = ("image", "joint")

    def __init__(
        self, hidden: int, heads: int, intermediate: int, patch: int, ratio: float = 0.15, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.decoder = MultiScaleDecoder(hidden, heads, intermediate, patch, dropout)
        self.patch, self.ratio = patch, ratio
        init_bert_style(self)

    def loss(self, view: BatchView) -> torch.Tensor:
        model: SharedTransformer = view.model
        images = view.batch[IMAGE]

        def encode() -> tuple[torch.Tensor, dict[str, Any]]:
            mask = random_patch_mask(images.shape[0], model.config.full_tokens, self.ratio, images.device)
            return mask, model.encode_image(images, mask)

        mask, encoded = view.cached(MASKED_IMAGE_KEY, encode)
        prediction = self.decoder(*encoded["levels"])
        return masked_patch_l1(prediction, model.image.patchify(images), mask)


class UWOXMatchingObjective(Objective):
    """Pair matching on the pooled correlation matrix (see :func:`comat_features`).

    True pairs are positives; each image with the report of another row (a non-zero cyclic
    shift, :func:`shuffled_negatives`) is a negative. When the batch carries a float
    ``paired`` ``(B,)`` (images coupled with reports from a public pool), those are the
    targets and no negatives are drawn. With ``unit``'s fusion layer the states are fused
    per (image, report) tuple first (``pair_states`` of the model).
    """

    name: ClassVar[str] = "matching"
    modalities: ClassVar[frozenset[str]] = frozenset({IMAGE, TEXT})
    encoder_groups: ClassVar[tuple[str, ...]] = ("image", "text", "joint")

    def __init__(self, max_len: int, image_tokens: int) -> None:
        super().__init__()
        self.max_len, self.image_tokens = max_len, image_tokens
        self.classifier = nn.Linear(max_len + image_tokens, 1)
        init_bert_style(self)

    def logits(
        self, model: SharedTransformer, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)`` match logits of encoded (report, image) tuples (fused first for ``unit``)."""
        if image.shape[1] != self.image_tokens:
            raise ValueError(
                f"the matching head expects {self.image_tokens} image tokens, got {image.shape[1]} (another image "
                "size?)"
            )
        text, image = model.pair_states(text, text_mask, image)
        result: torch.Tensor = self.classifier(comat_features(text, text_mask, image, self.max_len)).squeeze(-1)
        return result

    def loss(self, view: BatchView) -> torch.Tensor:
        model: SharedTransformer = view.model
        batch = view.batch
        ids, mask = batch["input_ids"], batch["attention_mask"]
        text = view.cached(TEXT_KEY, lambda: model.encode_text(ids, mask))
        image = view.cached(IMAGE_KEY, lambda: model.encode_image(batch[IMAGE]))["tokens"]
        if "paired" in batch:
            return matching_loss(self.logits(model, text, mask, image), batch["paired"].float())
        negatives = shuffled_negatives(image.shape[0], image.device)
        text_mask = torch.cat([mask, mask[negatives]])
        logits = self.logits(model, torch.cat([text, text[negatives]]), text_mask, torch.cat([image, image]))
        targets = torch.cat([torch.ones(image.shape[0]), torch.zeros(image.shape[0])]).to(logits.device)
        return matching_loss(logits, targets)
