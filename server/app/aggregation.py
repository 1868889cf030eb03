"""Modality-aware aggregation and reply validation.

Flower's stock strategies refuse replies whose keys differ; here each key is averaged over
the sites that sent it, weighted by the sample count each site reported for the key's group.
A key that nobody sent keeps its current value. Besides the weighted mean (FedAvg), a key can
be aggregated robustly: coordinate-wise median or trimmed mean over the sites that sent it.
Replies whose update norm is far outside the round's distribution, or far above the norms
accepted in earlier rounds (:class:`NormHistory`, which works with one or two senders), are
rejected before that. ``max-site-weight`` caps the share one site can take of a key's mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedvlp.core.config import AGGREGATIONS
from fedvlp.core.params import group_of

__all__ = [
    "AGGREGATIONS",
    "BN_FORWARDS_PER_STEP",
    "MIN_REPLIES_FOR_NORM_CHECK",
    "NORM_HISTORY_WARMUP",
    "NORM_HISTORY_WINDOW",
    "NormHistory",
    "ReplyRejected",
    "SiteUpdate",
    "aggregate",
    "aggregate_robust",
    "aggregate_with",
    "capped_shares",
    "reject_norm_outliers",
    "update_norms",
    "validate_update",
]

MIN_REPLIES_FOR_NORM_CHECK = 3  # a median of fewer norms says nothing about outliers
NORM_HISTORY_WARMUP = 3  # accepted norms of a group (earlier rounds) before the history bound applies
NORM_HISTORY_WINDOW = 64  # the most recent accepted norms per group that the history keeps
# BatchNorm's num_batches_tracked grows by one per forward pass in train mode; a local step runs
# one forward per data source and objective view. 64 per step is far above any site's real count
# and still bounds the counter (2**62 or a negative value never passes).
BN_FORWARDS_PER_STEP = 64


@dataclass
class SiteUpdate:
    """One site's reply: the tensors of the groups it trained and a count per group."""

    node_id: int
    weights: dict[str, torch.Tensor]
    counts: dict[str, int]


class ReplyRejected(ValueError):
    """A reply that must not enter the aggregate; the message says why."""


def validate_update(update: SiteUpdate, reference: Mapping[str, torch.Tensor], local_steps: int | None = None) -> None:
    """Check a reply against the global model before it is averaged.

    Parameters
    ----------
    update
        The parsed reply.
    reference
        The global weights the round started from.
    local_steps
        The run's ``local-steps``: bounds integer buffers. BatchNorm's ``num_batches_tracked``
        must lie in ``[0, global + BN_FORWARDS_PER_STEP x local_steps]``; any other integer
        buffer must equal its global value (no local step changes it). ``None``: not checked.

    Raises
    ------
    ReplyRejected
        For an unknown key, a wrong shape or dtype, a non-finite value, an integer buffer out of
        its bound, or a group that was sent without a positive sample count.
    """
    for key, tensor in update.weights.items():
        if key not in reference:
            raise ReplyRejected(f"node {update.node_id}: unknown parameter '{key}'")
        expected = reference[key]
        if tensor.shape != expected.shape:
            raise ReplyRejected(
                f"node {update.node_id}: '{key}' has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}"
            )
        if tensor.dtype != expected.dtype:
            raise ReplyRejected(f"node {update.node_id}: '{key}' has dtype {tensor.dtype}, expected {expected.dtype}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ReplyRejected(f"node {update.node_id}: '{key}' contains NaN or Inf")
        if not tensor.is_floating_point() and local_steps is not None:
            _check_integer_buffer(update.node_id, key, tensor, expected, local_steps)
        count = update.counts.get(group_of(key), 0)
        if not count > 0:
            raise ReplyRejected(f"node {update.node_id}: group '{group_of(key)}' sent without a positive sample count")


def _check_integer_buffer(node: int, key: str, tensor: torch.Tensor, expected: torch.Tensor, local_steps: int) -> None:
    if key.endswith("num_batches_tracked"):
        high = int(expected.max()) + BN_FORWARDS_PER_STEP * local_steps
        low_seen, high_seen = int(tensor.min()), int(tensor.max())
        if low_seen < 0 or high_seen > high:
            raise ReplyRejected(
                f"node {node}: '{key}' is {low_seen if low_seen < 0 else high_seen}, expected an integer in [0, {high}]"
            )
    elif not torch.equal(tensor, expected):
        raise ReplyRejected(f"node {node}: integer buffer '{key}' changed, expected its global value")


def capped_shares(weights: Sequence[float], cap: float) -> list[float]:
    """Normalised weights where no share exceeds ``cap`` (``max-site-weight``).

    Shares above the cap are set to it and the rest is split over the others in proportion to
    their weights, until no share exceeds it. A cap below ``1/n`` cannot hold for ``n``
    senders: then every sender gets ``1/n``. ``cap >= 1`` leaves the plain normalised weights.

    Examples
    --------
    >>> capped_shares([1e9, 10, 30], 0.5)
    [0.5, 0.125, 0.375]
    """
    total = float(sum(weights))
    shares = [w / total for w in weights]
    if cap >= 1.0 or not shares:
        return shares
    cap = max(cap, 1.0 / len(shares))
    fixed: set[int] = set()
    while True:
        over = [i for i, s in enumerate(shares) if i not in fixed and s > cap]
        if not over:
            return shares
        fixed.update(over)
        free = [i for i in range(len(shares)) if i not in fixed]
        free_total = sum(weights[i] for i in free)
        for i in fixed:
            shares[i] = cap
        for i in free:
            shares[i] = (1.0 - cap * len(fixed)) * weights[i] / free_total


def _canonical_key(update: SiteUpdate) -> tuple[object, ...]:
    checksum = sum(float(t.double().sum()) for t in update.weights.values() if t.is_floating_point())
    return (sorted(update.counts.items()), len(update.weights), checksum)


def aggregate(
    current: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate], max_site_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """Weighted mean per key over the updates that carry it; other keys unchanged.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are averaged and rounded. With
    ``max_site_weight < 1`` no sender's share of a key's mean exceeds it (:func:`capped_shares`).
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
        shares = capped_shares([w for _, w in contributors], max_site_weight)
        mean = sum(t.to(torch.float64) * share for (t, _), share in zip(contributors, shares))
        assert isinstance(mean, torch.Tensor)
        out[key] = (mean.round() if not value.is_floating_point() else mean).to(value.dtype)
    return out


def update_norms(update: SiteUpdate, reference: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """L2 norm of ``update - reference`` per parameter group, over the floating-point keys sent.

    Integer buffers (step counters) are left out: they move by the number of local steps.
    """
    squares: dict[str, float] = {}
    for key, tensor in update.weights.items():
        if not tensor.is_floating_point():
            continue
        diff = tensor.to(torch.float64) - reference[key].to(torch.float64)
        group = group_of(key)
        squares[group] = squares.get(group, 0.0) + float((diff * diff).sum())
    return {group: value**0.5 for group, value in squares.items()}


def reject_norm_outliers(
    updates: Sequence[SiteUpdate], reference: Mapping[str, torch.Tensor], factor: float
) -> tuple[list[SiteUpdate], list[str]]:
    """Drop replies whose update norm in some group exceeds ``factor`` x the round's median.

    For each group carried by at least :data:`MIN_REPLIES_FOR_NORM_CHECK` replies, the median
    of their update norms (``||w_site - w_global||_2`` over the group's keys) is the yardstick;
    a reply above ``factor`` x median in any group is rejected as a whole.

    Parameters
    ----------
    updates
        Replies that passed :func:`validate_update`.
    reference
        The global weights the round started from.
    factor
        Threshold multiple of the median; ``0`` turns the check off.

    Returns
    -------
    tuple
        The kept replies (in their order) and one reason per rejected reply, naming its node.
    """
    if factor <= 0:
        return list(updates), []
    norms = [update_norms(u, reference) for u in updates]
    by_group: dict[str, list[float]] = {}
    for site_norms in norms:
        for group, value in site_norms.items():
            by_group.setdefault(group, []).append(value)
    medians = {
        group: float(torch.tensor(values, dtype=torch.float64).median())  # lower middle: robust to one big value
        for group, values in by_group.items()
        if len(values) >= MIN_REPLIES_FOR_NORM_CHECK
    }
    kept: list[SiteUpdate] = []
    reasons: list[str] = []
    for update, site_norms in zip(updates, norms):
        outliers = [
            f"group '{g}' update norm {n:.4g} > {factor:g} x median {medians[g]:.4g}"
            for g, n in sorted(site_norms.items())
            if g in medians and n > factor * medians[g]
        ]
        if outliers:
            reasons.append(f"node {update.node_id}: " + "; ".join(outliers))
        else:
            kept.append(update)
    return kept, reasons


class NormHistory:
    """The update norms accepted in earlier rounds, per group: a yardstick that needs no peers.

    The round median of :func:`reject_norm_outliers` needs three senders of a group; with one
    or two it says nothing. This bound compares a reply with the norms of the replies accepted
    in earlier rounds instead: once a group has :data:`NORM_HISTORY_WARMUP` of them, a reply
    whose update norm in that group exceeds ``factor`` x their median is rejected. The history
    keeps the last :data:`NORM_HISTORY_WINDOW` accepted norms per group and is saved in the
    checkpoint state, so a resumed run checks exactly as an uninterrupted one.
    """

    def __init__(self, norms: Mapping[str, Sequence[float]] | None = None) -> None:
        self.norms: dict[str, list[float]] = {g: [float(v) for v in values] for g, values in (norms or {}).items()}

    def bound(self, group: str, factor: float) -> float | None:
        """``factor`` x median of the group's history, or None before the warm-up (or when off)."""
        values = self.norms.get(group, [])
        if factor <= 0 or len(values) < NORM_HISTORY_WARMUP:
            return None
        return factor * float(torch.tensor(values, dtype=torch.float64).median())

    def reject(
        self, updates: Sequence[SiteUpdate], reference: Mapping[str, torch.Tensor], factor: float
    ) -> tuple[list[SiteUpdate], list[str]]:
        """Split ``updates`` into kept ones and one reason per reply above the history bound."""
        kept: list[SiteUpdate] = []
        reasons: list[str] = []
        for update in updates:
            outliers = []
            for group, norm in sorted(update_norms(update, reference).items()):
                limit = self.bound(group, factor)
                if limit is not None and norm > limit:
                    outliers.append(
                        f"group '{group}' update norm {norm:.4g} > {factor:g} x median {limit / factor:.4g} of "
                        "earlier rounds"
                    )
            if outliers:
                reasons.append(f"node {update.node_id}: " + "; ".join(outliers))
            else:
                kept.append(update)
        return kept, reasons

    def record(self, round_norms: Sequence[Mapping[str, float]]) -> None:
        """Add the group norms of one round's accepted replies (under SecAgg+: of its aggregate).

        Within a round they are added in ascending order: replies arrive in any order, and the
        window must keep the same values in a resumed run as in an uninterrupted one.
        """
        by_group: dict[str, list[float]] = {}
        for norms in round_norms:
            for group, value in norms.items():
                by_group.setdefault(group, []).append(float(value))
        for group, new in sorted(by_group.items()):
            values = self.norms.setdefault(group, [])
            values.extend(sorted(new))
            del values[:-NORM_HISTORY_WINDOW]

    def to_json(self) -> dict[str, list[float]]:
        """For the checkpoint's JSON state."""
        return {g: list(v) for g, v in sorted(self.norms.items())}


def _median(stacked: torch.Tensor) -> torch.Tensor:
    """numpy's median along dim 0: the mean of the two middle values for an even count."""
    ordered = stacked.sort(dim=0).values
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def _trimmed_mean(stacked: torch.Tensor, fraction: float) -> torch.Tensor:
    """scipy.stats.trim_mean along dim 0: cut ``int(fraction * n)`` values at each end."""
    n = stacked.shape[0]
    cut = int(fraction * n)
    if 2 * cut >= n:
        raise ValueError(f"trim-fraction {fraction} leaves nothing of {n} values")
    ordered = stacked.sort(dim=0).values
    return ordered[cut : n - cut].mean(dim=0)


def aggregate_robust(
    current: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate], method: str, trim_fraction: float = 0.1
) -> dict[str, torch.Tensor]:
    """Coordinate-wise median or trimmed mean per key over the updates that carry it.

    Like :func:`aggregate`, modality-aware: a key is aggregated over the sites that sent it and
    keeps its value when nobody did. Unlike FedAvg the sample counts do not weight the result
    (as in Flower's FedMedian and FedTrimmedAvg): a robust statistic must not let one site
    claim a large count to dominate.

    Parameters
    ----------
    method
        ``"median"`` or ``"trimmed-mean"``.
    trim_fraction
        For ``"trimmed-mean"``: the fraction cut at each end (``int(fraction * n)`` values).
    """
    if method not in ("median", "trimmed-mean"):
        raise ValueError(f"unknown robust aggregation '{method}', expected 'median' or 'trimmed-mean'")
    out: dict[str, torch.Tensor] = {}
    for key, value in current.items():
        contributors = [u.weights[key] for u in updates if key in u.weights]
        if not contributors:
            out[key] = value.clone()
            continue
        stacked = torch.stack([t.to(torch.float64) for t in contributors])
        result = _median(stacked) if method == "median" else _trimmed_mean(stacked, trim_fraction)
        out[key] = (result.round() if not value.is_floating_point() else result).to(value.dtype)
    return out


def aggregate_with(
    method: str,
    current: Mapping[str, torch.Tensor],
    updates: Sequence[SiteUpdate],
    trim_fraction: float = 0.1,
    max_site_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Dispatch on the run-config ``aggregation``: ``fedavg``, ``median`` or ``trimmed-mean``.

    ``max_site_weight`` applies to ``fedavg`` (the robust statistics ignore counts anyway).
    """
    if method == "fedavg":
        return aggregate(current, updates, max_site_weight)
    return aggregate_robust(current, updates, method, trim_fraction)
