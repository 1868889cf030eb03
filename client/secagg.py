"""The client side of SecAgg+ with modality-aware weighting (run-config ``secure-aggregation``).

Flower's SecAgg+ (``secaggplus_mod``) sums equal-shape vectors of all participating clients;
the server sees only the sum. What a site adds to it (per key ``w * (local - global)``, then the
weights ``w``) is the wire format of :mod:`fedvlp.core.secagg_codec`, shared with the server.

The legacy SecAgg+ workflow speaks FitIns/FitRes: the global weights arrive as a list of
arrays in the order of the ``keys`` entry of the fit config, and the reply is a FitRes with
``num_examples = 1`` (the server runs the workflow with ``max_weight = 1``, so Flower's own
weighting is the identity and the sum divided by the number of clients comes back).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MessageType, RecordDict

from fedvlp.core.compression import unpack_record
from fedvlp.core.params import ARRAYS_KEY, COUNTS_KEY, METRICS_KEY, SIZE_KEY
from fedvlp.core.secagg_codec import (
    FLOWER_NUM_EXAMPLES,
    KEYS_CONFIG,
    ROUND_CONFIG,
    decode_keys,
    encode_update,
    size_metrics,
)

__all__ = [
    "SECAGG_CONFIGS_KEY",
    "is_secagg_train",
    "secagg_mod",
    "secagg_train",
]

SECAGG_CONFIGS_KEY = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS


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
    keys = decode_keys(fitins.config[KEYS_CONFIG])
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(arrays) != len(keys):
        raise ValueError(f"SecAgg+ fit instructions carry {len(arrays)} arrays for {len(keys)} keys")
    global_state = {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays)}
    content = train(global_state, int(fitins.config[ROUND_CONFIG]))
    # a site that sends nothing (e.g. its privacy budget is spent) adds zeros to the sum
    record = content.array_records[ARRAYS_KEY] if ARRAYS_KEY in content.array_records else {}
    sent = {
        k: torch.from_numpy(np.array(v)) for k, v in unpack_record({k: a.numpy() for k, a in record.items()}).items()
    }
    counts = dict(content.metric_records.get(COUNTS_KEY, {}))  # checked in encode_update, never cast
    metrics: dict[str, Any] = {k: float(v) for k, v in content.metric_records.get(METRICS_KEY, {}).items()}  # type: ignore[arg-type]
    # The site's declared size travels in the clear: the server holds the summed weights to it.
    metrics.update(size_metrics(content.metric_records.get(SIZE_KEY, {})))
    vectors = encode_update(keys, global_state, sent, counts, max_weight, clipping_range)
    fitres = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(vectors), FLOWER_NUM_EXAMPLES, metrics)
    return Message(content=compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
