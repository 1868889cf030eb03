"""The Flower ServerApp: global model, modality-aware aggregation, checkpoints and resume.

Each round: validate every reply (keys, shapes, dtypes, finite values, update norm against the
round's median), aggregate per key (FedAvg, median or trimmed mean), apply the server optimizer
(FedAvg, FedAdam, FedYogi) and checkpoint weights plus optimizer state. With
``secure-aggregation = "secagg+"`` the round runs Flower's SecAgg+ workflow instead and the
server sees only the sum of the replies (``server/secagg.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fedvlp.core.checkpoint import load_latest, save_round
from fedvlp.core.config import ConfigError, RunConfig, resolve_path
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, CONFIG_KEY, COUNTS_KEY, METRICS_KEY
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from .aggregation import (
    ReplyRejected,
    SiteUpdate,
    aggregate_with,
    reject_norm_outliers,
    validate_update,
)
from .optimizers import ServerOptimizer
from .run_log import log_round

__all__ = ["FederationResult", "app", "make_server_app", "round_summary", "run_federation"]

log = logging.getLogger("fedvlp.server")


@dataclass
class FederationResult:
    """What a finished (or resumed and finished) federation leaves behind."""

    checkpoint_dir: Path
    last_round: int
    history: list[dict[str, Any]] = field(default_factory=list)


def round_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean seconds per round of a run's history, split into the slowest client's compute and
    everything else; round 1 (process and actor start-up) is reported on its own."""
    if not history:
        return {}
    steady = history[1:] or history
    mean = lambda key: sum(r[key] for r in steady) / len(steady)
    return {
        "rounds": len(history),
        "round-seconds": mean("seconds"),
        "round-client-compute-seconds": mean("client-compute-seconds"),
        "round-other-seconds": mean("other-seconds"),
        "first-round-seconds": history[0]["seconds"],
    }


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum or time.monotonic() > deadline:
            return nodes
        time.sleep(0.5)


def _train_messages(state: Mapping[str, torch.Tensor], nodes: list[int], round_: int) -> list[Message]:
    content = RecordDict({ARRAYS_KEY: ArrayRecord(dict(state)), CONFIG_KEY: ConfigRecord({"server-round": round_})})
    return [Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]


def _parse_reply(reply: Message) -> SiteUpdate:
    content = reply.content
    node = reply.metadata.src_node_id
    for key in (ARRAYS_KEY, COUNTS_KEY):
        if key not in content:
            raise ReplyRejected(f"node {node}: reply lacks '{key}'")
    weights = content.array_records[ARRAYS_KEY].to_torch_state_dict()
    counts = {k: int(v) for k, v in content.metric_records[COUNTS_KEY].items()}  # type: ignore[arg-type]
    return SiteUpdate(node, weights, counts)


def _extra(optimizer: ServerOptimizer) -> dict[str, torch.Tensor] | None:
    """The optimizer's moments for the checkpoint (nothing for plain FedAvg)."""
    return optimizer.state_tensors() if optimizer.kind != "fedavg" else None


def _plain_round(
    grid: Grid, run: RunConfig, state: dict[str, torch.Tensor], nodes: list[int], round_: int, optimizer: ServerOptimizer
) -> tuple[dict[str, torch.Tensor], int, list[dict[str, Any]], list[str]]:
    """Send, validate, aggregate and step; returns (weights, accepted replies, sites, rejections)."""
    replies = list(grid.send_and_receive(_train_messages(state, nodes, round_), timeout=run.round_timeout))
    updates: list[SiteUpdate] = []
    sites: list[dict[str, Any]] = []
    rejected: list[str] = []
    for reply in replies:
        if reply.has_error():
            rejected.append(f"node {reply.metadata.src_node_id}: client error {reply.error.code}: {reply.error.reason}")
            continue
        try:
            update = _parse_reply(reply)
            validate_update(update, state)
        except ReplyRejected as err:
            rejected.append(str(err))
            continue
        updates.append(update)
        metrics = dict(reply.content.metric_records.get(METRICS_KEY, {}))
        sites.append({"node_id": update.node_id, "counts": update.counts, "metrics": metrics, "bytes": int(reply.content.array_records[ARRAYS_KEY].count_bytes())})
    updates, outliers = reject_norm_outliers(updates, state, run.update_norm_factor)
    if outliers:
        kept = {u.node_id for u in updates}
        sites = [s for s in sites if s["node_id"] in kept]
        rejected.extend(outliers)
    for reason in rejected:
        log.warning("Round %d: rejected %s", round_, reason)
    if len(updates) >= run.min_replies:
        aggregated = aggregate_with(run.aggregation, state, updates, run.trim_fraction)
        carried = {k for u in updates for k in u.weights}
        state = optimizer.step(state, aggregated, carried)
    else:
        log.warning("Round %d: %d valid replies < min-replies %d; global weights unchanged", round_, len(updates), run.min_replies)
    return state, len(updates), sites, rejected


def _secure_round(
    grid: Grid, run: RunConfig, state: dict[str, torch.Tensor], nodes: list[int], round_: int, optimizer: ServerOptimizer
) -> tuple[dict[str, torch.Tensor], int, list[dict[str, Any]], list[str]]:
    """One SecAgg+ round; the global weights stay when the protocol halts."""
    from .secagg import secagg_round

    try:
        result = secagg_round(grid, run, state, nodes, round_)
    except RuntimeError as err:
        log.warning("Round %d: %s; global weights unchanged", round_, err)
        return state, 0, [], [str(err)]
    for reason in result.failures:
        log.warning("Round %d: SecAgg+ failure %s", round_, reason)
    if result.replies < run.min_replies:
        log.warning("Round %d: %d replies < min-replies %d; global weights unchanged", round_, result.replies, run.min_replies)
        return state, result.replies, result.sites, result.failures
    return optimizer.step(state, result.aggregated, result.carried), result.replies, result.sites, result.failures


def run_federation(
    grid: Grid,
    run: RunConfig,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> FederationResult:
    """Run (or resume) the federated pretraining of ``run`` over the nodes of ``grid``.

    After every round the global weights and a JSON state are saved atomically to
    ``<out-dir>/checkpoints``. A folder that already holds rounds of the same
    configuration is resumed from its last round.

    Raises
    ------
    ConfigError
        When ``out-dir`` holds a run of another configuration.
    """
    out_dir = resolve_path(run.out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    model = build_model(run)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = ServerOptimizer(
        run.server_optimizer, frozenset(n for n, _ in model.named_parameters()), run.server_lr, run.server_beta1, run.server_beta2, run.server_tau
    )
    history: list[dict[str, Any]] = []
    start = 1
    latest = load_latest(checkpoint_dir)
    if latest is not None:
        if latest.state.get("config_hash") != run.config_hash():
            raise ConfigError(str(checkpoint_dir), "config_hash", f"the same configuration as the checkpoints there (hash {latest.state.get('config_hash')}); use another out-dir", run.config_hash())
        state = latest.weights
        optimizer.load_state_tensors(latest.extra)
        history = list(latest.state.get("history", []))
        start = latest.round + 1
        log.info("Resuming from round %d in %s", latest.round, checkpoint_dir)
    else:
        save_round(checkpoint_dir, 0, state, {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": []}, _extra(optimizer))
    if run.secure_aggregation != "off" and run.update_norm_factor:
        log.info("secure-aggregation: replies are only seen summed; update-norm-factor does not apply")

    for round_ in range(start, run.rounds + 1):
        started = time.perf_counter()
        nodes = _wait_for_nodes(grid, run.min_nodes, run.round_timeout)
        if run.secure_aggregation != "off":
            state, n_replies, sites, rejected = _secure_round(grid, run, state, nodes, round_, optimizer)
        else:
            state, n_replies, sites, rejected = _plain_round(grid, run, state, nodes, round_, optimizer)
        wall = time.perf_counter() - started
        compute = max((s["metrics"].get("train-seconds", 0.0) for s in sites), default=0.0)
        record = {
            "round": round_,
            "nodes": len(nodes),
            "replies": n_replies,
            "rejected": rejected,
            "seconds": wall,
            "client-compute-seconds": compute,
            "other-seconds": wall - compute,
            "sites": sites,
        }
        log_round(grid, run, record)  # site_metrics.jsonl + TensorBoard, by site name (run_log.py)
        history.append(record)
        save_round(checkpoint_dir, round_, state, {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": history}, _extra(optimizer))
        if on_round is not None:
            on_round(record)
        losses = {k: round(v, 4) for s in sites for k, v in s["metrics"].items() if k.startswith("loss/") and k != "loss/total"}
        log.info("Round %d/%d: %d replies, %.1fs (client compute %.1fs) %s", round_, run.rounds, n_replies, wall, compute, losses)
    return FederationResult(checkpoint_dir, max(run.rounds, start - 1), history)


def _ensure_log_handler() -> None:
    """Round lines must reach ``flwr run --stream``: the ServerApp process has no handler."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def make_server_app(overrides: Mapping[str, Any] | None = None, on_round: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """A ServerApp whose run config is ``context.run_config`` updated with ``overrides``.

    ``overrides`` serves in-process simulations, whose contexts carry no run config.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        _ensure_log_handler()
        values = {**dict(context.run_config), **dict(overrides or {})}
        run_federation(grid, RunConfig.from_flat(values), on_round=on_round)

    return server_app


app = make_server_app()
