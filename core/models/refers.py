"""The ``refers`` recipe's model (Zhou et al., REFERS, Nat. Mach. Intell. 2022).

A ViT encodes every view of a study (``image.``), BERT encodes the report (``text.``), and
two heads train them: study-report InfoNCE over attention-fused views
(``head.contrastive.``) and report generation by a transformer decoder
(``head.generation.``). The fine-tuning sweep takes the ViT alone (:meth:`image_backbone`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig, TextEncoderConfig
from ..objectives import GenerationObjective, Objective, StudyContrastiveObjective
from .text import TextEncoder, build_text_encoder
from .vit import ViTConfig, ViTEncoder, build_vit

__all__ = ["DecoderConfig", "REFERSConfig", "REFERSModel", "build_refers_model", "REFERS_OBJECTIVES"]

REFERS_OBJECTIVES = ("contrastive", "generation")


@dataclass(frozen=True)
class DecoderConfig:
    """The report decoder (REFERS: 1 post-norm layer, width 1024, 16 heads, FFN 4096)."""

    hidden: int = 128
    layers: int = 1
    heads: int = 4
    feedforward: int = 512
    dropout: float = 0.1


@dataclass(frozen=True)
class REFERSConfig:
    """Everything :func:`build_refers_model` needs apart from token ids and loss settings."""

    vit: ViTConfig
    text: TextEncoderConfig
    decoder: DecoderConfig
    vocab_size: int
    embed_dim: int

    @staticmethod
    def preset(size: str, image_size: int, vocab_size: int) -> "REFERSConfig":
        """``tiny`` / ``small`` / ``base``; BERT and the shared space as in :meth:`ModelConfig.preset`."""
        vit = ViTConfig.preset(size, image_size)
        shared = ModelConfig.preset(size, image_size, vocab_size)
        decoder = {
            "tiny": DecoderConfig(hidden=32, layers=1, heads=2, feedforward=64),
            "small": DecoderConfig(hidden=128, layers=1, heads=4, feedforward=512),
            "base": DecoderConfig(hidden=1024, layers=1, heads=16, feedforward=4096),
        }[size]
        return REFERSConfig(vit, shared.text, decoder, vocab_size, shared.embed_dim)


class REFERSModel(nn.Module):
    """``image`` (ViT), ``text`` (BERT) and ``head[<objective>]``; attribute names are the groups."""

    def __init__(
        self, config: REFERSConfig, objectives: Mapping[str, Objective], image: ViTEncoder, text: TextEncoder
    ) -> None:
        super().__init__()
        self.config = config
        self.image = image
        self.text = text
        self.head = nn.ModuleDict(dict(objectives))
        self.max_text_len = config.text.max_len

    def image_backbone(self) -> nn.Module:
        """The ViT: ``(B, 1, S, S)`` images in ``[0, 1]`` to ``(B, dim)`` class-token features."""
        return self.image

    @property
    def objectives(self) -> list[Objective]:
        """The active objectives, in a fixed order."""
        return [self.head[name] for name in self.head]  # type: ignore[misc]

    def supports_retrieval(self) -> bool:
        """Whether the study contrastive head is active (its projections embed single images and reports)."""
        return "contrastive" in self.head

    def _contrastive(self) -> StudyContrastiveObjective:
        if "contrastive" not in self.head:
            raise ValueError("this refers model has no contrastive head to embed images and texts with")
        return self.head["contrastive"]  # type: ignore[return-value]

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's patch-token map, average pool, the contrastive head's image projection."""
        return self._contrastive().embed_image_map(self.image.forward_features(images))

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BERT states max-pooled over real tokens, the contrastive head's text projection."""
        return self._contrastive().embed_text_states(self.text(input_ids, attention_mask), attention_mask)

    def supports_regeneration(self) -> bool:
        """No: REFERS has no masked-image head."""
        return False

    def regenerate_masked(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Not supported (:meth:`supports_regeneration`)."""
        raise ValueError("the refers model has no masked-image (mim) head")


def build_refers_model(
    size: str,
    image_size: int,
    vocab_size: int,
    special_ids: Sequence[int],
    pad_id: int,
    bos_id: int,
    eos_id: int,
    tau: float,
    lam: float,
    weights: Mapping[str, float],
    seed: int | None = None,
) -> REFERSModel:
    """Build the REFERS model with random weights; only objectives with weight > 0 get a head.

    Parameters
    ----------
    weights
        Loss weights by objective name. ``contrastive`` and ``generation`` are used; other
        names (the other recipes' objectives) must have weight 0.
    seed
        Seeds the global RNG first when given (``build_model`` seeds before calling).

    Raises
    ------
    ValueError
        When an objective that REFERS does not have has a positive weight.
    """
    unknown = sorted(name for name, weight in weights.items() if weight > 0 and name not in REFERS_OBJECTIVES)
    if unknown:
        raise ValueError(f"the refers model has no objective {unknown}; it trains {REFERS_OBJECTIVES}")
    if seed is not None:
        torch.manual_seed(seed)
    config = REFERSConfig.preset(size, image_size, vocab_size)
    image = build_vit(config.vit)
    text = build_text_encoder(config.text, vocab_size)
    objectives: dict[str, Objective] = {}
    if weights.get("contrastive", 0.0) > 0:
        objectives["contrastive"] = StudyContrastiveObjective(image.out_dim, text.out_dim, config.embed_dim, tau, lam)
    if weights.get("generation", 0.0) > 0:
        dec = config.decoder
        objectives["generation"] = GenerationObjective(
            image.out_dim,
            vocab_size,
            dec.hidden,
            dec.layers,
            dec.heads,
            dec.feedforward,
            config.text.max_len,
            pad_id,
            bos_id,
            eos_id,
            special_ids,
            dec.dropout,
        )
    return REFERSModel(config, objectives, image, text)
