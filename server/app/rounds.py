"""The Flower ServerApp: global model, modality-aware aggregation, checkpoints and resume.

Each round: parse and validate every reply (``server/app/replies.py``: record layout, types, counts,
metrics; keys, shapes, dtypes, finite values, integer buffers, the site's declared size, update
norm against the round's median and against earlier rounds); a bad reply is rejected, logged
with its node id and reason, and the round goes on with the others. Then aggregate per key
(FedAvg, median or trimmed mean), apply the server optimizer (FedAvg, FedAdam, FedYogi) and
checkpoint weights plus optimizer state. With ``secure-aggregation = "secagg+"`` the round runs
Flower's SecAgg+ workflow instead and the server sees only the sum of the replies (``server/app/secagg.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from fedvlp.core.checkpoint import load_latest, save_round
from fedvlp.core.compression import BASE_ROUND_KEY, ENCODING_KEY, apply_download, encode_download, pack_record
from fedvlp.core.config import ConfigError, RunConfig, resolve_path
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, CONFIG_KEY, ERROR_NO_BASE, SITE_NAME_KEY

from .aggregation import (
    NormHistory,
    ReplyRejected,
    SiteUpdate,
    aggregate_with,
    reject_norm_outliers,
    update_norms,
    validate_update,
)
from .exchange import PromptGrid
from .optimizers import ServerOptimizer
from .replies import SiteSizes, clean_metrics, error_summary, parse_reply
from .run_log import log_round
from .sampling import sample_nodes, sample_size

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

    def mean(key: str) -> float:
        return float(sum(r[key] for r in steady) / len(steady))

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


def _site_names(grid: Grid, nodes: list[int], known: dict[int, str], timeout: float) -> None:
    """Ask the nodes not in ``known`` for their site name (one small QUERY each, once per server
    process): node ids change when nodes re-register, site names do not. A node that does not
    answer is sampled by its id."""
    ask = [n for n in nodes if n not in known]
    if not ask:
        return
    content = RecordDict({CONFIG_KEY: ConfigRecord({"ask": SITE_NAME_KEY})})
    messages = [Message(content=content, dst_node_id=n, message_type=MessageType.QUERY) for n in ask]
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if not reply.has_error() and CONFIG_KEY in reply.content.config_records:
            name = reply.content.config_records[CONFIG_KEY].get(SITE_NAME_KEY)
            if isinstance(name, str) and name:
                known[reply.metadata.src_node_id] = name


def _sampled(grid: Grid, nodes: list[int], round_: int, run: RunConfig, known: dict[int, str]) -> list[int]:
    """The nodes that train this round (run-config ``fraction-train`` / ``min-train-nodes``)."""
    if sample_size(len(nodes), run.fraction_train, run.min_train_nodes) == len(nodes):
        return nodes  # everyone trains: no draw, no name query
    _site_names(grid, nodes, known, min(run.round_timeout, 120.0))
    return sample_nodes(nodes, round_, run.seed, run.fraction_train, run.min_train_nodes, known)


def _packed(arrays: Mapping[str, np.ndarray | torch.Tensor], deflate: bool = False) -> ArrayRecord:
    """One packed array for the whole message (``core/compression.py``): Flower moves every array
    of a message as its own request on each hop, so 131 tensors would cost 131 requests."""
    return ArrayRecord({k: Array(v) for k, v in pack_record(arrays, deflate).items()})


@dataclass
class Downloads:
    """Encodes each node's train message by run-config ``download-compression``.

    Delta modes keep, per node, the weights the node decoded from the last message it answered
    (its base, exactly as the node computes it with ``apply_download``): one fp32 copy of the
    model per node on the server, plus one per node in flight during a round. A node that
    answered with an error or not at all loses its base and gets the whole model (bf16) next
    round; so does every node after a server restart (bases are not checkpointed). A node that
    lost its base answers error 1005 and is resent the whole model within the round.
    """

    mode: str = "none"
    bases: dict[int, tuple[int, dict[str, torch.Tensor]]] = field(default_factory=dict)
    pending: dict[int, tuple[int, dict[str, torch.Tensor]]] = field(default_factory=dict)

    def contents(
        self, state: Mapping[str, torch.Tensor], nodes: list[int], round_: int
    ) -> tuple[dict[int, RecordDict], dict[int, int]]:
        """Each node's train message content and the bytes of weights it carries."""
        if self.mode == "none":
            content = RecordDict({ARRAYS_KEY: _packed(state), CONFIG_KEY: ConfigRecord({"server-round": round_})})
            size = int(content.array_records[ARRAYS_KEY].count_bytes())
            return {n: content for n in nodes}, {n: size for n in nodes}
        contents, sizes, shared = {}, {}, None
        for node in nodes:
            base_round, base = self.bases.get(node, (-1, None))
            if self.mode == "bf16" or base is None:
                if shared is None:  # the same bf16 model for every node without a base
                    encoding, arrays = encode_download("bf16", state, None)
                    shared = (encoding, arrays, _packed(arrays, deflate=True))
                encoding, arrays, record = shared
            else:
                encoding, arrays = encode_download(self.mode, state, base)
                record = _packed(arrays, deflate=True)
            if self.mode.startswith("delta"):
                self.pending[node] = (round_, apply_download(encoding, arrays, base, state))
            config = ConfigRecord({"server-round": round_, ENCODING_KEY: encoding, BASE_ROUND_KEY: base_round})
            contents[node] = RecordDict({ARRAYS_KEY: record, CONFIG_KEY: config})
            sizes[node] = int(record.count_bytes())
        return contents, sizes

    def settle(self, replies: list[Message]) -> None:
        """Bases move on for the nodes sent a delta-mode message that answered without an error;
        the others sent one lose theirs; nodes not sampled this round keep theirs."""
        answered = {r.metadata.src_node_id for r in replies if not r.has_error()}
        for node, sent in self.pending.items():
            if node in answered:
                self.bases[node] = sent
            else:
                self.bases.pop(node, None)
        self.pending.clear()


def _extra(optimizer: ServerOptimizer) -> dict[str, torch.Tensor] | None:
    """The optimizer's moments for the checkpoint (nothing for plain FedAvg)."""
    return optimizer.state_tensors() if optimizer.kind != "fedavg" else None


@dataclass
class Guards:
    """What the server remembers about replies across rounds (saved in the checkpoint state)."""

    sizes: SiteSizes = field(default_factory=SiteSizes)
    norms: NormHistory = field(default_factory=NormHistory)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Guards":
        return cls(
            SiteSizes({int(n): g for n, g in state.get("site_sizes", {}).items()}),
            NormHistory(state.get("norm_history", {})),
        )

    def to_state(self) -> dict[str, Any]:
        return {"site_sizes": self.sizes.to_json(), "norm_history": self.norms.to_json()}


def check_replies(
    replies: list[Message], run: RunConfig, state: Mapping[str, torch.Tensor], guards: Guards
) -> tuple[list[SiteUpdate], list[dict[str, Any]], list[str]]:
    """Every check a reply must pass before aggregation, in order; nothing here raises.

    Returns the accepted updates, their round-log entries and one reason per rejected reply
    (node id first). Accepted replies update ``guards`` (declared sizes, norm history).
    """
    parsed = []
    rejected: list[str] = []
    seen: set[int] = set()
    for reply in replies:
        if reply.has_error():
            rejected.append(error_summary(reply))
            continue
        node = reply.metadata.src_node_id
        if node in seen:  # one message per node and round: a second reply would count twice
            rejected.append(f"node {node}: a second reply in the same round")
            continue
        seen.add(node)
        try:
            one = parse_reply(reply, run.upload_compression, state)
            validate_update(one.update, state, run.local_steps)
            guards.sizes.check(one)
        except ReplyRejected as err:
            rejected.append(str(err))
            continue
        except Exception as err:  # noqa: BLE001 - a check that fails on odd input rejects, never ends the run
            rejected.append(f"node {reply.metadata.src_node_id}: malformed reply ({type(err).__name__})")
            continue
        parsed.append(one)
    updates = [p.update for p in parsed]
    updates, outliers = reject_norm_outliers(updates, state, run.update_norm_factor)
    rejected.extend(outliers)
    updates, outliers = guards.norms.reject(updates, state, run.update_norm_factor)
    rejected.extend(outliers)
    kept = {u.node_id for u in updates}
    sites = []
    guards.norms.record([update_norms(u, state) for u in updates])
    for one in parsed:
        if one.update.node_id not in kept:
            continue
        guards.sizes.remember(one)
        sites.append(
            {"node_id": one.update.node_id, "counts": one.update.counts, "metrics": one.metrics, "bytes": one.bytes}
        )
    return updates, sites, rejected


def _plain_round(
    grid: Grid,
    run: RunConfig,
    state: dict[str, torch.Tensor],
    nodes: list[int],
    round_: int,
    optimizer: ServerOptimizer,
    guards: Guards,
    downloads: Downloads | None = None,
) -> tuple[dict[str, torch.Tensor], int, list[dict[str, Any]], list[str]]:
    """Send, validate, aggregate and step; returns (weights, accepted replies, sites, rejections)."""
    downloads = downloads or Downloads(run.download_compression)
    contents, sent = downloads.contents(state, nodes, round_)
    messages = [Message(content=contents[n], dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=run.round_timeout))
    lost = [r.metadata.src_node_id for r in replies if r.has_error() and r.error.code == ERROR_NO_BASE]
    if lost:  # nodes that no longer hold their delta base: the whole model, once, in this round
        log.info("Round %d: %d node(s) without their delta base; resending the whole model", round_, len(lost))
        for node in lost:
            downloads.bases.pop(node, None)
        again, resent = downloads.contents(state, lost, round_)
        replies = [r for r in replies if r.metadata.src_node_id not in resent]
        replies += grid.send_and_receive(
            [Message(content=again[n], dst_node_id=n, message_type=MessageType.TRAIN) for n in lost],
            timeout=run.round_timeout,
        )
        sent = {n: sent[n] + resent.get(n, 0) for n in sent}
    downloads.settle(replies)
    updates, sites, rejected = check_replies(replies, run, state, guards)
    for site in sites:  # "bytes": the reply's arrays; "download-bytes": the weights it was sent
        site["download-bytes"] = sent.get(site["node_id"], 0)
    for reason in rejected:
        log.warning("Round %d: rejected %s", round_, reason)
    if len(updates) >= run.min_replies:
        aggregated = aggregate_with(run.aggregation, state, updates, run.trim_fraction, run.max_site_weight)
        carried = {k for u in updates for k in u.weights}
        state = optimizer.step(state, aggregated, carried)
    else:
        log.warning(
            "Round %d: %d valid replies < min-replies %d; global weights unchanged",
            round_,
            len(updates),
            run.min_replies,
        )
    return state, len(updates), sites, rejected


def _secure_round(
    grid: Grid,
    run: RunConfig,
    state: dict[str, torch.Tensor],
    nodes: list[int],
    round_: int,
    optimizer: ServerOptimizer,
    guards: Guards,
) -> tuple[dict[str, torch.Tensor], int, list[dict[str, Any]], list[str]]:
    """One SecAgg+ round; the global weights stay when the protocol halts or the sum fails its checks."""
    from .secagg import secagg_round

    try:
        result = secagg_round(grid, run, state, nodes, round_)
    except RuntimeError as err:
        log.warning("Round %d: %s; global weights unchanged", round_, err)
        return state, 0, [], [str(err)]
    for site in result.sites:  # the clear metrics of each site: finite numbers only reach the log
        site["metrics"], dropped = clean_metrics(site["metrics"])
        result.failures.extend(f"node {site['node_id']}: {reason} (dropped)" for reason in dropped)
    for reason in result.failures:
        log.warning("Round %d: SecAgg+ failure %s", round_, reason)
    if result.replies < run.min_replies:
        log.warning(
            "Round %d: %d replies < min-replies %d; global weights unchanged", round_, result.replies, run.min_replies
        )
        return state, result.replies, result.sites, result.failures
    problems, declared = check_secure_sum(run, state, result, guards)
    if problems:
        reasons = [f"SecAgg+ sum rejected: {p}" for p in problems]
        for reason in reasons:
            log.warning("Round %d: %s; global weights unchanged", round_, reason)
        return state, 0, result.sites, result.failures + reasons
    for node, sizes in declared.items():
        known = guards.sizes.declared.setdefault(node, {})
        for group, size in sizes.items():
            known.setdefault(group, size)
    guards.norms.record([update_norms(SiteUpdate(0, {k: result.aggregated[k] for k in result.carried}, {}), state)])
    return optimizer.step(state, result.aggregated, result.carried), result.replies, result.sites, result.failures


def check_secure_sum(
    run: RunConfig, state: Mapping[str, torch.Tensor], result: Any, guards: Guards
) -> tuple[list[str], dict[int, dict[str, int]]]:
    """What the server can check of a SecAgg+ round: declared sizes, summed weights, update norm.

    Returns the problems (empty: the aggregate may be applied) and each site's declared sizes.
    A site's declared size may not grow over the size it declared first (as in plain mode).
    """
    import numpy as np

    from fedvlp.core.secagg_codec import declared_sizes

    from .secagg import check_summed_weights

    problems: list[str] = []
    declared: dict[int, dict[str, int]] = {}
    total: dict[str, int] = {}
    for site in result.sites:
        node, sizes = int(site["node_id"]), declared_sizes(site["metrics"])
        known = guards.sizes.declared.get(node, {})
        for group, size in sorted(sizes.items()):
            if group in known and size > known[group]:
                problems.append(f"node {node}: group '{group}' declared size grew from {known[group]} to {size}")
            total[group] = total.get(group, 0) + min(size, known.get(group, size))
        declared[node] = sizes
    keys = list(state)
    tolerance = result.replies * 2.0 * run.secagg_clipping_range / run.secagg_quantization_range
    weights = np.asarray([result.key_weights.get(k, 0.0) for k in keys])
    problems += check_summed_weights(keys, weights, total, run.secagg_max_weight, tolerance)[:5]
    norms = update_norms(SiteUpdate(0, {k: result.aggregated[k] for k in result.carried}, {}), state)
    for group, norm in sorted(norms.items()):
        limit = guards.norms.bound(group, run.update_norm_factor)
        if limit is not None and norm > limit:
            problems.append(
                f"group '{group}' aggregated update norm {norm:.4g} > {run.update_norm_factor:g} x median "
                f"{limit / run.update_norm_factor:.4g} of earlier rounds"
            )
    return problems, declared


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
    grid = PromptGrid(grid)  # replies are pulled every 0.1 s, not Flower's 3 s (exchange.py)
    out_dir = resolve_path(run.out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    model = build_model(run)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = ServerOptimizer(
        run.server_optimizer,
        frozenset(n for n, _ in model.named_parameters()),
        run.server_lr,
        run.server_beta1,
        run.server_beta2,
        run.server_tau,
    )
    history: list[dict[str, Any]] = []
    guards = Guards()
    start = 1
    latest = load_latest(checkpoint_dir)
    if latest is not None:
        if latest.state.get("config_hash") != run.config_hash():
            raise ConfigError(
                str(checkpoint_dir),
                "config_hash",
                f"the same configuration as the checkpoints there (hash {latest.state.get('config_hash')}); "
                "use another out-dir",
                run.config_hash(),
            )
        state = latest.weights
        optimizer.load_state_tensors(latest.extra)
        history = list(latest.state.get("history", []))
        guards = Guards.from_state(latest.state)
        start = latest.round + 1
        log.info("Resuming from round %d in %s", latest.round, checkpoint_dir)
    else:
        save_round(
            checkpoint_dir,
            0,
            state,
            {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": []},
            _extra(optimizer),
        )
    if run.secure_aggregation != "off" and run.update_norm_factor:
        log.info("secure-aggregation: replies are only seen summed; update-norm-factor does not apply")

    site_names: dict[int, str] = {}  # node id -> site name, for the draw of client sampling
    downloads = Downloads(run.download_compression)
    for round_ in range(start, run.rounds + 1):
        started = time.perf_counter()
        connected = _wait_for_nodes(grid, max(run.min_nodes, run.min_train_nodes), run.round_timeout)
        nodes = _sampled(grid, connected, round_, run, site_names)
        if run.secure_aggregation != "off":
            state, n_replies, sites, rejected = _secure_round(grid, run, state, nodes, round_, optimizer, guards)
        else:
            state, n_replies, sites, rejected = _plain_round(
                grid, run, state, nodes, round_, optimizer, guards, downloads
            )
        wall = time.perf_counter() - started
        compute = max((s["metrics"].get("train-seconds", 0.0) for s in sites), default=0.0)
        record = {
            "round": round_,
            "nodes": len(nodes),
            "connected": len(connected),
            "sampled-sites": sorted(site_names.get(n, str(n)) for n in nodes),
            "replies": n_replies,
            "rejected": rejected,
            "seconds": wall,
            "client-compute-seconds": compute,
            "other-seconds": wall - compute,
            "sites": sites,
        }
        log_round(grid, run, record)  # site_metrics.jsonl + TensorBoard, by site name (run_log.py)
        history.append(record)
        save_round(
            checkpoint_dir,
            round_,
            state,
            {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": history, **guards.to_state()},
            _extra(optimizer),
        )
        if on_round is not None:
            on_round(record)
        losses = {
            k: round(v, 4)
            for s in sites
            for k, v in s["metrics"].items()
            if k.startswith("loss/") and k != "loss/total"
        }
        log.info(
            "Round %d/%d: %d replies, %.1fs (client compute %.1fs) %s",
            round_,
            run.rounds,
            n_replies,
            wall,
            compute,
            losses,
        )
    return FederationResult(checkpoint_dir, max(run.rounds, start - 1), history)


def _ensure_log_handler() -> None:
    """Round lines must reach ``flwr run --stream``: the ServerApp process has no handler."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def make_server_app(
    overrides: Mapping[str, Any] | None = None, on_round: Callable[[dict[str, Any]], None] | None = None
) -> ServerApp:
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
