"""Modality-aware FedAvg and reply validation.

Flower's stock strategies refuse replies whose keys differ; here each key is averaged over
the sites that sent it, weighted by the sample count each site reported for the key's group.
A key that nobody sent keeps its current value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedvlp.core.params import group_of

__all__ = ["SiteUpdate", "ReplyRejected", "validate_update", "aggregate"]


@dataclass
class SiteUpdate:
    """One site's reply: the tensors of the groups it trained and a count per group."""

    node_id: int
    weights: dict[str, torch.Tensor]
    counts: dict[str, int]


class ReplyRejected(ValueError):
    """A reply that must not enter the aggregate; the message says why."""


def validate_update(update: SiteUpdate, reference: Mapping[str, torch.Tensor]) -> None:
    """Check a reply against the global model before it is averaged.

    Raises
    ------
    ReplyRejected
        For an unknown key, a wrong shape or dtype, a non-finite value, or a group that was
        sent without a positive sample count.
    """
    for key, tensor in update.weights.items():
        if key not in reference:
            raise ReplyRejected(f"node {update.node_id}: unknown parameter '{key}'")
        expected = reference[key]
        if tensor.shape != expected.shape:
            raise ReplyRejected(f"node {update.node_id}: '{key}' has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}")
        if tensor.dtype != expected.dtype:
            raise ReplyRejected(f"node {update.node_id}: '{key}' has dtype {tensor.dtype}, expected {expected.dtype}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ReplyRejected(f"node {update.node_id}: '{key}' contains NaN or Inf")
        count = update.counts.get(group_of(key), 0)
        if not count > 0:
            raise ReplyRejected(f"node {update.node_id}: group '{group_of(key)}' sent without a positive sample count")


def _canonical_key(update: SiteUpdate) -> tuple[object, ...]:
    checksum = sum(float(t.double().sum()) for t in update.weights.values() if t.is_floating_point())
    return (sorted(update.counts.items()), len(update.weights), checksum)


def aggregate(current: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate]) -> dict[str, torch.Tensor]:
    """Weighted mean per key over the updates that carry it; other keys unchanged.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are averaged and rounded.
    """
    # Replies arrive in any order and node ids are random: sum in a canonical order so that
    # a resumed run reproduces an uninterrupted one bit for bit.
    updates = sorted(updates, key=_canonical_key)
    out: dict[str, torch.Tensor] = {}
    for key, value in current.items():
        group = group_of(key)
        contributors = [(u.weights[key], float(u.counts[group])) for u in updates if key in u.weights]
        if not contributors:
            out[key] = value.clone()
            continue
        total = sum(weight for _, weight in contributors)
        mean = sum(t.to(torch.float64) * (w / total) for t, w in contributors)
        assert isinstance(mean, torch.Tensor)
        out[key] = (mean.round() if not value.is_floating_point() else mean).to(value.dtype)
    return out
