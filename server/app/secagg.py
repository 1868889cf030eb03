"""The server side of SecAgg+ with modality-aware weighting (run-config ``secure-aggregation``).

Flower 1.41 offers SecAgg+ only through the legacy workflow: ``SecAggPlusWorkflow`` drives
four stages (setup, share keys, collect masked vectors, unmask) over a ``LegacyContext``
whose strategy hands out fit instructions and receives the unmasked sum. Our round loop
runs one workflow call per round with a small strategy of ours: it sends the global weights
(and their key order) and catches the aggregate. The workflow runs with ``max_weight = 1``
and every client answers ``num_examples = 1``, so Flower's weighting is the identity and the
result is the mean of the clients' vectors; times the number of clients, it is their sum.

Each client's vectors are ``w * (local - global)`` per key plus the per-key weights ``w``
(the wire format of ``core/secagg_codec.py``, encoded by ``client/secagg.py``); the aggregate
of a key is ``global + sum(w * update) / sum(w)``, the same count-weighted mean over the sites
that sent the key as plain mode. A key with ``sum(w) = 0`` keeps its global value.

Precision: SecAgg+ rounds each value stochastically to a grid of step
``s = 2 * clipping_range / quantization_range`` (3.8e-6 with Flower's defaults 8 and 2**22),
so each sum is off by less than ``N * s`` for ``N`` clients and the aggregated update of a key
by less than ``N * s * (1 + |mean update|) / sum(w)`` (x ``INTEGER_SCALE`` of
``core/secagg_codec.py`` for integer buffers).
Clients send every array flat: Flower 1.41's unmasking leaves 0-d arrays un-normalised
(``dequantize`` returns a scalar for them, so the in-place offset and ``1/N`` fix-up miss it).
Individual replies are never seen, so per-reply validation (norms, NaN) and robust
aggregation are not available in this mode; the sum is checked instead
(:func:`check_summed_weights`): finite values, and per key a summed weight that is not negative,
is a whole number of samples (``count / max_weight`` summed) and does not exceed the sizes the
sites declared in the clear (``site-size/<group>`` metrics); the round's aggregated update norm
is held to the norms of earlier rounds by the caller. An honest client cannot send a negative or
oversized weight (``core/secagg_codec.py`` refuses to encode it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedvlp.core.config import RunConfig
from fedvlp.core.params import group_of
from fedvlp.core.secagg_codec import KEYS_CONFIG, ROUND_CONFIG, WORKFLOW_MAX_WEIGHT, decode_sum, encode_keys

__all__ = [
    "SecAggRound",
    "check_summed_weights",
    "error_bound",
    "flower_share_settings",
    "secagg_round",
]

log = logging.getLogger("fedvlp.server")


@dataclass
class SecAggRound:
    """What one SecAgg+ round leaves: the aggregate and what the server may know."""

    aggregated: dict[str, torch.Tensor]
    carried: set[str]
    replies: int
    group_weights: dict[str, float] = field(default_factory=dict)  # sum of w per group (max over its keys)
    key_weights: dict[str, float] = field(default_factory=dict)  # sum of w per key
    sites: list[dict[str, Any]] = field(default_factory=list)  # per-site scalar metrics only
    failures: list[str] = field(default_factory=list)


def check_summed_weights(
    keys: Sequence[str], weights: np.ndarray, declared_total: Mapping[str, int], max_weight: float, tolerance: float
) -> list[str]:
    """What is wrong with the summed per-key weights of a SecAgg+ round (empty: nothing).

    Honest sites add ``count / max_weight`` with an integer ``count >= 1`` for every key they
    send, 0 otherwise. So the sum of a key is not negative, is a whole number of samples when
    multiplied by ``max_weight`` (checked when the quantisation ``tolerance`` x ``max_weight``
    is below 1/4 of a sample), and is at most the declared sizes of the group summed over the
    round's sites. ``tolerance`` is the quantisation error of one sum (:func:`error_bound`'s
    ``N s``).
    """
    problems: list[str] = []
    whole = tolerance * max_weight < 0.25
    for key, total in zip(keys, np.asarray(weights, dtype=np.float64)):
        group = group_of(key)
        samples = total * max_weight
        if total < -tolerance:
            problems.append(f"'{key}': summed weight {total:.6g} is negative")
        elif whole and abs(samples - round(samples)) > tolerance * max_weight:
            problems.append(f"'{key}': summed weight {total:.6g} is not a whole number of samples ({samples:.4f})")
        elif total > declared_total.get(group, 0) / max_weight + tolerance:
            problems.append(
                f"'{key}': summed weight {total:.6g} = {samples:.1f} samples exceeds the "
                f"{declared_total.get(group, 0)} the sites declared for '{group}'"
            )
    return problems


def error_bound(
    clients: int, clipping_range: float, quantization_range: int, summed_weight: float, mean_update: float
) -> float:
    """Largest deviation of a SecAgg+ aggregated update from the exact one, per coordinate.

    Each of ``clients`` stochastic roundings is off by less than one step
    ``s = 2 c / Q``; both the weighted sum and the weight sum carry that error, hence
    ``N s (1 + |mean update|) / sum(w)``.
    """
    step = 2.0 * clipping_range / quantization_range
    return clients * step * (1.0 + abs(mean_update)) / summed_weight


def flower_share_settings(run: RunConfig) -> tuple[int | float, int | float]:
    """``num_shares`` and ``reconstruction_threshold`` as Flower reads them: an integer-valued
    setting above 1 is a count, anything else a fraction."""

    def convert(value: float) -> int | float:
        return int(value) if value.is_integer() and value > 1 else float(value)

    return convert(run.secagg_num_shares), convert(run.secagg_reconstruction_threshold)


def secagg_round(
    grid: Any, run: RunConfig, state: Mapping[str, torch.Tensor], nodes: list[int], round_: int
) -> SecAggRound:
    """Run one round of training over SecAgg+ on ``nodes`` and decode the aggregate.

    Raises
    ------
    RuntimeError
        When the protocol halts (fewer than 2 nodes, or too many dropped out to unmask);
        the caller keeps the global weights.
    """
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import (
        MAIN_CONFIGS_RECORD,
        MAIN_PARAMS_RECORD,
        Key,
    )

    keys = list(state)
    parameters = ndarrays_to_parameters([state[k].detach().cpu().numpy() for k in keys])
    instructions = FitIns(parameters, {ROUND_CONFIG: round_, KEYS_CONFIG: encode_keys(keys)})
    caught: dict[str, Any] = {}

    class _Instructions(Strategy):
        """Hands our fit instructions to the workflow and catches the unmasked aggregate."""

        def initialize_parameters(self, client_manager: Any) -> None:
            return None

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
            return [(GridClientProxy(node, grid, 0), instructions) for node in nodes]

        def aggregate_fit(
            self, server_round: int, results: list[Any], failures: list[Any]
        ) -> tuple[Any, dict[str, Any]]:
            caught["results"], caught["failures"] = results, failures
            return (results[0][1].parameters if results else None), {}

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
            return []

        def aggregate_evaluate(
            self, server_round: int, results: list[Any], failures: list[Any]
        ) -> tuple[None, dict[str, Any]]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Any) -> None:
            return None

    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=_Instructions()
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: round_})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, keep_input=True)
    num_shares, threshold = flower_share_settings(run)
    workflow = SecAggPlusWorkflow(
        num_shares,
        threshold,
        max_weight=WORKFLOW_MAX_WEIGHT,
        clipping_range=run.secagg_clipping_range,
        quantization_range=run.secagg_quantization_range,
        timeout=run.round_timeout,
    )
    workflow(grid, context)
    results = caught.get("results")
    if not results:
        raise RuntimeError(
            f"SecAgg+ halted in round {round_} ({len(nodes)} nodes; it needs at least 2 and enough shares to unmask)"
        )
    mean = parameters_to_ndarrays(results[0][1].parameters)
    clients = len(results)
    summed = [np.asarray(a, dtype=np.float64) * clients for a in mean]
    if not all(np.isfinite(a).all() for a in summed):
        raise RuntimeError(f"SecAgg+ round {round_}: the secure sum holds NaN or Inf")
    aggregated, carried = decode_sum(keys, state, summed, min_weight=0.5 / run.secagg_max_weight)
    weights = summed[len(keys)]
    group_weights: dict[str, float] = {}
    for index, key in enumerate(keys):
        group = group_of(key)
        group_weights[group] = max(group_weights.get(group, 0.0), float(weights[index]))
    sites = [{"node_id": proxy.node_id, "metrics": dict(fitres.metrics)} for proxy, fitres in results]
    failures = [f"{type(f).__name__}: {f}" for f in caught.get("failures", [])]
    key_weights = {key: float(weights[index]) for index, key in enumerate(keys)}
    return SecAggRound(aggregated, carried, clients, group_weights, key_weights, sites, failures)
