"""The SecAgg+ wire format with modality-aware weighting: what a site adds to the secure sum and
how the server reads the sum back (run-config ``secure-aggregation = "secagg+"``).

Flower's SecAgg+ sums equal-shape vectors of all participating clients; the server sees only the
sum. To keep per-key, count-weighted averaging, a site sends, for every key of the global model,
``w * (local - global)`` with ``w = count / secagg-max-weight`` (``count`` = the samples that
trained the key's group; zeros for keys it did not send in plain mode), and one extra vector
holding ``w`` per key (0 where it sent nothing). The server divides the two sums: the aggregate
of a key is ``global + sum(w * update) / sum(w)``, the same count-weighted mean over the sites
that sent the key as plain mode; a key with ``sum(w) = 0`` keeps its global value.

Updates rather than weights are sent because SecAgg+ quantises in a clipping range ``[-c, c]``:
updates are small, weights are not. Integer buffers (step counters) are divided by
:data:`INTEGER_SCALE` so that they fit the range too. Every array is sent flat: Flower 1.41's
unmasking leaves 0-d arrays un-normalised.

The global weights travel as a list of arrays in the order of the fit config's
:data:`KEYS_CONFIG` entry (:func:`encode_keys`); each reply names ``num_examples =``
:data:`FLOWER_NUM_EXAMPLES` and the server runs the workflow with ``max_weight =``
:data:`WORKFLOW_MAX_WEIGHT`, so Flower's own weighting is the identity. A site's declared sizes
travel in the clear as ``site-size/<group>`` metrics (:func:`size_metrics`,
:func:`declared_sizes`): the server holds the summed weights to them.

Both sides import this module (the client encodes, the server decodes); it imports neither Flower
nor the server or client packages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .params import group_of

__all__ = [
    "FLOWER_NUM_EXAMPLES",
    "INTEGER_SCALE",
    "KEYS_CONFIG",
    "ROUND_CONFIG",
    "SIZE_METRIC_PREFIX",
    "WORKFLOW_MAX_WEIGHT",
    "checked_counts",
    "declared_sizes",
    "decode_keys",
    "decode_sum",
    "encode_keys",
    "encode_update",
    "size_metrics",
]

log = logging.getLogger(__name__)

INTEGER_SCALE = 1024.0  # integer buffers move by whole local steps: scale them into the clipping range
SIZE_METRIC_PREFIX = "site-size/"  # a reply's clear metric of the samples a site holds for a group
FLOWER_NUM_EXAMPLES = 1  # every client's num_examples; with WORKFLOW_MAX_WEIGHT Flower's weight ratio is 1
WORKFLOW_MAX_WEIGHT = 1.0  # the server workflow's max_weight (Flower's, not secagg-max-weight)
KEYS_CONFIG = "keys"  # fit-config entry: the model's keys in the order of the arrays, one per line
ROUND_CONFIG = "server-round"  # fit-config entry: the round number


def encode_keys(keys: Sequence[str]) -> str:
    """The fit-config value naming the order of the global arrays (one key per line)."""
    return "\n".join(keys)


def decode_keys(value: Any) -> list[str]:
    """The keys of :func:`encode_keys`'s value, in order."""
    return str(value).split("\n")


def checked_counts(
    counts: Mapping[str, Any], groups: set[str], max_weight: float, clipping_range: float
) -> dict[str, int]:
    """The counts of the groups a site sends, refused unless each makes a valid weight.

    Under SecAgg+ nobody can check one site's weight after it is masked, so an honest site
    checks its own: every group it sends needs a count that is an ``int`` >= 1 whose weight
    ``count / secagg-max-weight`` fits the clipping range (a negative or oversized weight
    would scale the sum of updates without showing in it).

    Raises
    ------
    ValueError
        Naming the group and what was expected.
    """
    out: dict[str, int] = {}
    for group in sorted(groups):
        count = counts.get(group)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(
                f"group '{group}': count {count!r} is not an integer >= 1; SecAgg+ needs a positive weight per sent "
                "group"
            )
        weight = count / max_weight
        if weight > clipping_range:
            raise ValueError(
                f"group '{group}': weight count/secagg-max-weight = {weight:g} exceeds secagg-clipping-range "
                f"{clipping_range:g}; raise secagg-max-weight to at least {count / clipping_range:g}"
            )
        out[group] = count
    return out


def encode_update(
    keys: Sequence[str],
    global_state: Mapping[str, torch.Tensor],
    sent: Mapping[str, torch.Tensor],
    counts: Mapping[str, Any],
    max_weight: float,
    clipping_range: float,
) -> list[np.ndarray]:
    """The vectors one site adds to the secure sum.

    Parameters
    ----------
    keys
        Every key of the global model, in the order both sides agreed on.
    global_state
        The round's global weights.
    sent
        What the site would send in plain mode: the keys it trained, with their local values.
    counts
        Samples per group (as in plain mode), as received: :func:`checked_counts` refuses bad ones.
    max_weight
        Count scale: the weight of a key is ``count(group) / max_weight``.
    clipping_range
        SecAgg+ clips every value to ``[-clipping_range, clipping_range]``.

    Returns
    -------
    list of numpy.ndarray
        One flat float64 array per key (``w * update``, zeros for keys not sent), then one
        vector of the per-key weights ``w``.

    Raises
    ------
    ValueError
        When a count is not an integer >= 1 or a weight exceeds the clipping range (the sum of
        weights would be wrong): see :func:`checked_counts`.
    """
    vectors: list[np.ndarray] = []
    weights = np.zeros(len(keys), dtype=np.float64)
    clipped = 0
    valid = checked_counts(counts, {group_of(k) for k in sent}, max_weight, clipping_range)
    for index, key in enumerate(keys):
        reference = global_state[key]
        if key not in sent:
            vectors.append(np.zeros(reference.numel(), dtype=np.float64))
            continue
        weight = valid[group_of(key)] / max_weight
        weights[index] = weight
        update = sent[key].to(torch.float64) - reference.to(torch.float64)
        if not reference.is_floating_point():
            update = update / INTEGER_SCALE
        # flat: Flower 1.41's SecAgg+ unmasking skips its offset and 1/N scaling on 0-d arrays
        # (dequantize returns a scalar there and the in-place fix-up misses it)
        encoded = (weight * update).numpy().reshape(-1)
        clipped += int((np.abs(encoded) > clipping_range).sum())
        vectors.append(encoded)
    if clipped:
        log.warning(
            "SecAgg+: %d update values exceed secagg-clipping-range %g and are clipped", clipped, clipping_range
        )
    vectors.append(weights)
    return vectors


def decode_sum(
    keys: Sequence[str], global_state: Mapping[str, torch.Tensor], summed: Sequence[np.ndarray], min_weight: float
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The modality-aware aggregate from the summed encoded vectors.

    Parameters
    ----------
    keys
        Every key of the global model in the agreed order.
    global_state
        The round's global weights.
    summed
        The sum over clients of their encoded vectors: one array per key, then the weights.
    min_weight
        A key whose summed weight is below this kept its value (nobody sent it); half of the
        smallest possible weight ``1 / max_weight`` is safe against quantisation error.

    Returns
    -------
    tuple
        The new weights and the set of keys someone sent.
    """
    weights = np.asarray(summed[len(keys)], dtype=np.float64)
    out: dict[str, torch.Tensor] = {}
    carried: set[str] = set()
    for index, key in enumerate(keys):
        value = global_state[key]
        total = float(weights[index])
        if total < min_weight:
            out[key] = value.clone()
            continue
        carried.add(key)
        update = torch.from_numpy(np.asarray(summed[index], dtype=np.float64).reshape(tuple(value.shape))) / total
        if value.is_floating_point():
            out[key] = (value.to(torch.float64) + update).to(value.dtype)
        else:
            out[key] = (value.to(torch.float64) + update * INTEGER_SCALE).round().to(value.dtype)
    return out, carried


def size_metrics(sizes: Mapping[str, Any]) -> dict[str, int]:
    """A site's declared sizes (group -> samples) as the clear ``site-size/<group>`` reply metrics."""
    return {f"{SIZE_METRIC_PREFIX}{group}": int(n) for group, n in sizes.items()}


def declared_sizes(metrics: Mapping[str, Any]) -> dict[str, int]:
    """The ``site-size/<group>`` metrics of one SecAgg+ reply: the site's declared sizes."""
    out: dict[str, int] = {}
    for name, value in metrics.items():
        if (
            name.startswith(SIZE_METRIC_PREFIX)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value >= 0
        ):
            out[name[len(SIZE_METRIC_PREFIX) :]] = int(value)
    return out
