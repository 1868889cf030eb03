"""ConVIRT's bidirectional InfoNCE between image and report embeddings."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGE, PAIR, TEXT, BatchView, Objective
from .pooling import masked_max

__all__ = ["info_nce", "ContrastiveObjective"]


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    """Bidirectional InfoNCE with cosine similarity (Zhang et al., ConVIRT).

    ``lam * l(image->text) + (1 - lam) * l(text->image)``, each the mean over the batch of
    ``-log softmax(cos(v_i, u_k) / tau)`` at the true pair.
    """
    v = F.normalize(image_emb, dim=-1)
    u = F.normalize(text_emb, dim=-1)
    logits = v @ u.t() / tau
    targets = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.t(), targets)
    return lam * image_to_text + (1.0 - lam) * text_to_image


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))


class ContrastiveObjective(Objective):
    """Two 2-layer projections to a shared space; text max-pooled over tokens as in ConVIRT."""

    name: ClassVar[str] = "contrastive"
    modalities: ClassVar[frozenset[str]] = frozenset({IMAGE, TEXT, PAIR})
    encoder_groups: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, tau: float = 0.1, lam: float = 0.75) -> None:
        super().__init__()
        self.image_proj = _projection(image_dim, embed_dim)
        self.text_proj = _projection(text_dim, embed_dim)
        self.tau, self.lam = tau, lam

    def embed(self, view: BatchView) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text embeddings in the shared space (used by retrieval too)."""
        image = self.image_proj(view.image_vector())
        text = self.text_proj(masked_max(view.text_states, view.batch["attention_mask"]))
        return image, text

    def embed_image_map(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` image feature maps to the shared space: average pool, projection (retrieval)."""
        result: torch.Tensor = self.image_proj(features.mean(dim=(2, 3)))
        return result

    def embed_text_states(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` token states to the shared space: max pool over real tokens, projection (retrieval)."""
        result: torch.Tensor = self.text_proj(masked_max(states, mask))
        return result

    def loss(self, view: BatchView) -> torch.Tensor:
        image, text = self.embed(view)
        return info_nce(image, text, self.tau, self.lam)
