"""Pooling over token states with padding masks."""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "masked_max"]


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, L, D)`` states over positions where ``mask`` is 1."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def masked_max(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of ``(B, L, D)`` states over positions where ``mask`` is 1 (ConVIRT's pooling)."""
    filled = states.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(states.dtype).min)
    return filled.max(dim=1).values
