"""The client side of SecAgg+ with modality-aware weighting (run-config ``secure-aggregation``).

Flower's SecAgg+ (``secaggplus_mod``) sums equal-shape vectors of all participating clients;
the server sees only the sum. To keep per-key, count-weighted averaging, a site sends, for
every key of the global model, ``w * (local - global)`` with ``w = count / secagg-max-weight``
(``count`` = the samples that trained the key's group; zeros for keys it did not send in plain
mode), and one extra vector holding ``w`` per key (0 where it sent nothing). The server divides
the two sums. Updates rather than weights are sent because SecAgg+ quantises in a clipping
range ``[-c, c]``: updates are small, weights are not. Integer buffers (step counters) are
divided by :data:`INTEGER_SCALE` so that they fit the range too.

The legacy SecAgg+ workflow speaks FitIns/FitRes: the global weights arrive as a list of
arrays in the order of the ``keys`` entry of the fit config, and the reply is a FitRes with
``num_examples = 1`` (the server runs the workflow with ``max_weight = 1``, so Flower's own
weighting is the identity and the sum divided by the number of clients comes back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY, group_of
from flwr.app import Context, Message, MessageType, RecordDict

__all__ = [
    "FLOWER_NUM_EXAMPLES",
    "INTEGER_SCALE",
    "SIZE_METRIC_PREFIX",
    "checked_counts",
    "SECAGG_CONFIGS_KEY",
    "encode_update",
    "is_secagg_train",
    "secagg_mod",
    "secagg_train",
]

log = logging.getLogger("fedvlp.client")

INTEGER_SCALE = 1024.0  # integer buffers move by whole local steps: scale them into the clipping range
SECAGG_CONFIGS_KEY = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS
FLOWER_NUM_EXAMPLES = 1  # with the server's max_weight = 1.0, Flower's weight ratio is exactly 1
SIZE_METRIC_PREFIX = "site-size/"  # must equal fedvlp.server.secagg.SIZE_METRIC_PREFIX (a test checks)


def checked_counts(counts: Mapping[str, Any], groups: set[str], max_weight: float, clipping_range: float) -> dict[str, int]:
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
            raise ValueError(f"group '{group}': count {count!r} is not an integer >= 1; SecAgg+ needs a positive weight per sent group")
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
    counts: Mapping[str, int],
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
        Samples per group (as in plain mode).
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
        log.warning("SecAgg+: %d update values exceed secagg-clipping-range %g and are clipped", clipped, clipping_range)
    vectors.append(weights)
    return vectors


def is_secagg_train(msg: Message) -> bool:
    """A train message of the legacy SecAgg+ workflow (FitIns layout) rather than ours."""
    return "fitins.parameters" in msg.content.array_records


def secagg_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ messages; plain messages pass straight through.

    One ClientApp thus serves both modes; the server's ``secure-aggregation`` decides.
    """
    if msg.metadata.message_type == MessageType.TRAIN and SECAGG_CONFIGS_KEY in msg.content.config_records:
        from flwr.client.mod import (
            secaggplus_mod,  # imported on first use: pulls in cryptography
        )

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def secagg_train(
    msg: Message,
    train: Callable[[Mapping[str, torch.Tensor], int], RecordDict],
    max_weight: float,
    clipping_range: float,
) -> Message:
    """Answer a SecAgg+ fit message: train like in plain mode, reply with the encoded vectors.

    Parameters
    ----------
    msg
        The FitIns message forwarded by ``secaggplus_mod``.
    train
        ``(global_state, server_round) -> RecordDict`` of plain mode (arrays, counts, metrics).
    max_weight, clipping_range
        The run's ``secagg-max-weight`` and ``secagg-clipping-range``.
    """
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import (
        Code,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    keys = str(fitins.config["keys"]).split("\n")
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(arrays) != len(keys):
        raise ValueError(f"SecAgg+ fit instructions carry {len(arrays)} arrays for {len(keys)} keys")
    global_state = {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays)}
    content = train(global_state, int(fitins.config["server-round"]))
    # a site that sends nothing (e.g. its privacy budget is spent) adds zeros to the sum
    sent = content.array_records[ARRAYS_KEY].to_torch_state_dict() if ARRAYS_KEY in content.array_records else {}
    counts = dict(content.metric_records.get(COUNTS_KEY, {}))  # checked in encode_update, never cast
    metrics: dict[str, Any] = {k: float(v) for k, v in content.metric_records.get(METRICS_KEY, {}).items()}  # type: ignore[arg-type]
    # The site's declared size travels in the clear: the server holds the summed weights to it.
    metrics.update({f"{SIZE_METRIC_PREFIX}{g}": int(n) for g, n in content.metric_records.get(SIZE_KEY, {}).items()})  # type: ignore[call-overload]
    vectors = encode_update(keys, global_state, sent, counts, max_weight, clipping_range)
    fitres = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(vectors), FLOWER_NUM_EXAMPLES, metrics)
    return Message(content=compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
