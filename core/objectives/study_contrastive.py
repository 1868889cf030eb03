"""REFERS' study-report contrastive loss: views fused by learned attention weights, then InfoNCE.

A *study* is up to :data:`STUDY_VIEWS` radiographs of one examination with one report.
Batches carry ``views`` ``(B, 3, 1, S, S)`` and ``view_mask`` ``(B, 3)`` (``True`` = a real
view). A slot whose mask is ``False`` is a placeholder: the model never looks at its pixels
and uses a copy of real view ``j mod n`` instead (``n`` real views), which is exactly what
"repeat the views to fill 3" means, but without encoding the copies. A plain ``image``
batch ``(B, 1, S, S)`` is a study of one view.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import IMAGE, BatchView
from .contrastive import ContrastiveObjective

__all__ = ["STUDY_VIEWS", "study_views", "encode_views", "StudyContrastiveObjective"]

STUDY_VIEWS = 3


def study_views(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(views, view_mask)`` of a batch: its ``views``, or its ``image`` as a 1-view study.

    Raises
    ------
    ValueError
        When a study has no real view, or the shapes do not fit.
    """
    if "views" in batch:
        views = batch["views"]
        mask = batch.get("view_mask")
        if mask is None:
            mask = torch.ones(views.shape[:2], dtype=torch.bool, device=views.device)
        mask = mask.bool()
    else:
        image = batch[IMAGE]
        views = image.unsqueeze(1).expand(-1, STUDY_VIEWS, -1, -1, -1)
        mask = torch.zeros(image.shape[0], STUDY_VIEWS, dtype=torch.bool, device=image.device)
        mask[:, 0] = True
    if views.dim() != 5 or views.shape[1] != STUDY_VIEWS or mask.shape != views.shape[:2]:
        raise ValueError(
            f"expected views (B, {STUDY_VIEWS}, C, S, S) and view_mask (B, {STUDY_VIEWS}), "
            f"got {tuple(views.shape)} and {tuple(mask.shape)}"
        )
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every study needs at least one real view (view_mask all False in some row)")
    return views, mask


def encode_views(view: BatchView) -> tuple[torch.Tensor, torch.Tensor]:
    """All tokens of every view slot, ``(B, 3, 1 + N, D)``, and the ``(B, 3)`` view mask.

    Only the real views go through the image encoder (once each); placeholder slot ``j`` of a
    study with ``n`` real views gets the tokens of its real view number ``j mod n``. Cached
    per batch, so the contrastive and generation objectives share one encoder pass.
    """

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        views, mask = study_views(view.batch)
        tokens = view.model.image.forward_tokens(views[mask])  # (R, 1 + N, D), row-major
        counts = mask.sum(dim=1)
        offsets = counts.cumsum(0) - counts
        slot = torch.arange(STUDY_VIEWS, device=mask.device).expand_as(mask)
        rank = mask.long().cumsum(dim=1) - 1  # index of a real slot among its study's views
        source = torch.where(mask, rank, slot % counts.unsqueeze(1))
        return tokens[offsets.unsqueeze(1) + source], mask

    result: tuple[torch.Tensor, torch.Tensor] = view.cached("study.view_tokens", compute)
    return result


class StudyContrastiveObjective(ContrastiveObjective):
    """Attention fusion of the views' class tokens, projections, bidirectional InfoNCE.

    ``w = softmax(MLP([v1; v2; v3]))`` and ``study = sum_i w_i v_i``; the report embedding is
    BERT's ``[CLS]`` state. The fusion MLP only exists for pretraining, so it lives in this
    head (``head.contrastive.fusion``), not in the exported image encoder.
    """

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, tau: float = 0.1, lam: float = 0.75) -> None:
        super().__init__(image_dim, text_dim, embed_dim, tau, lam)
        self.fusion = nn.Sequential(
            nn.Linear(STUDY_VIEWS * image_dim, image_dim), nn.ReLU(), nn.Linear(image_dim, STUDY_VIEWS)
        )

    def fuse(self, view_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, D)`` view features to the ``(B, D)`` study feature and ``(B, 3)`` weights."""
        weights = torch.softmax(self.fusion(view_features.flatten(1)), dim=-1)
        return (weights.unsqueeze(-1) * view_features).sum(dim=1), weights

    def embed(self, view: BatchView) -> tuple[torch.Tensor, torch.Tensor]:
        """Study and report embeddings in the shared space (retrieval uses them too)."""
        tokens, _ = encode_views(view)
        study, _ = self.fuse(tokens[:, :, 0])
        return self.image_proj(study), self.text_proj(view.text_states[:, 0])
