"""A run's image backbone, as the fine-tuning sweep builds and loads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from .registry import build_model

__all__ = ["BackboneFactory", "backbone_state"]


@dataclass(frozen=True)
class BackboneFactory:
    """Builds a run's image backbone (what the fine-tuning sweep trains), picklable.

    The random initialisation follows the torch seed set by the caller, so sweep seeds give
    different random inits.
    """

    run: RunConfig

    @property
    def description(self) -> dict[str, Any]:
        """Recorded in a sweep's metadata."""
        described = {
            "recipe": self.run.recipe,
            "model-size": self.run.model_size,
            "image-size": self.run.image_size,
            "tokenizer": self.run.tokenizer,
        }
        if self.run.image_init:  # recorded only when set, so existing sweeps keep their description
            described["image-init"] = self.run.image_init
        return described

    def __call__(self) -> nn.Module:
        backbone = build_model(self.run, seed=torch.initial_seed()).image_backbone()
        # Locks are a pretraining setting (freeze-image-stages): the sweep decides what trains.
        for parameter in backbone.parameters():
            parameter.requires_grad_(True)
        return backbone


def backbone_state(run: RunConfig, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image-backbone state dict inside a checkpoint of ``run``'s whole model."""
    model = build_model(run)
    model.load_state_dict(dict(weights))
    return {k: v.detach().clone() for k, v in model.image_backbone().state_dict().items()}
