"""The Flower ClientApp: one hospital's local training on its own data.

The site comes from node config: ``site-config`` (a site YAML, one per SuperNode) or, in
simulation, ``partition-id`` indexing the sorted site files of the run's ``sites`` folder.
Replies carry only the parameter groups the site's data trained, a sample count per group
and scalar metrics: never pixels, text or tokens.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedvlp.core.compression import (
    BASE_ROUND_KEY,
    ENCODING_KEY,
    MissingBase,
    WireState,
    apply_download,
    encode_upload,
    pack_record,
    unpack_record,
)
from fedvlp.core.config import (
    ConfigError,
    RunConfig,
    SiteConfig,
    check_run_files,
    list_site_files,
    load_site,
    resolve_path,
)
from fedvlp.core.distributed import train_site, with_worker_processes
from fedvlp.core.models import build_model
from fedvlp.core.params import (
    ARRAYS_KEY,
    CONFIG_KEY,
    COUNTS_KEY,
    ERROR_NO_BASE,
    ERROR_NO_DATA,
    ERROR_REASONS,
    ERROR_REPLY,
    ERROR_SITE_CONFIG,
    ERROR_TRAINING,
    METRICS_KEY,
    SITE_NAME_KEY,
    SIZE_KEY,
    filter_groups,
)
from fedvlp.core.train import LocalTrainer, load_site_data, resolve_device, tensor_bytes

from .secagg import is_secagg_train, secagg_mod, secagg_train

__all__ = ["app", "error_reason", "make_client_app", "received_state", "site_for", "train_round", "trained_state"]

log = logging.getLogger("fedvlp.client")
_T = TypeVar("_T")

# One trainer per (site file, configuration) and process: simulation actors and long-running
# ClientApp processes keep their datasets and loader workers between rounds. An actor that
# serves many sites keeps only the `trainer-cache-size` it used last (least recently used out),
# so its memory stays flat however many sites the simulation has.
_TRAINERS: OrderedDict[tuple[str, str], LocalTrainer] = OrderedDict()
# Per cached trainer: the site's int8 error feedback and the base of delta downloads (one more
# copy of the model). They live and die with the trainer's cache entry: an evicted site starts
# again without residual and without base (the server then sends it the whole model).
_WIRE: dict[tuple[str, str], WireState] = {}


def _wire_state(site: SiteConfig, run: RunConfig) -> WireState:
    """The compression state of ``site``'s cached trainer (call after :func:`_trainer`)."""
    for stale in [k for k in _WIRE if k not in _TRAINERS]:
        del _WIRE[stale]
    return _WIRE.setdefault((str(site.path), run.config_hash()), WireState())


def _held_bytes(key: tuple[str, str]) -> int:
    """What a cache entry keeps: its trainer's tensors and its wire state (residuals, base)."""
    wire = _WIRE.get(key)
    extra = list(wire.pending.values()) + list((wire.base or {}).values()) if wire is not None else []
    return int(_TRAINERS[key].held_bytes()) + tensor_bytes(extra)


def _cache_get(
    key: tuple[str, str], build: Callable[[], LocalTrainer], max_entries: int, max_mb: float = 0.0
) -> LocalTrainer:
    """The cached trainer of ``key`` (now the most recently used), or ``build()``'s.

    Least recently used entries go while there are more than ``max_entries`` or, with
    ``max_mb > 0``, while the tensors all entries hold exceed ``max_mb`` megabytes (measured when
    a site is added, after its previous round trained: optimizer state and gradients included);
    the entry just used always stays. A site's entries of other configurations go first: a
    long-running process (fedvlp.client.worker) serves run after run.
    """
    if key in _TRAINERS:
        _TRAINERS.move_to_end(key)
        return _TRAINERS[key]
    for stale in [k for k in _TRAINERS if k[0] == key[0]]:
        del _TRAINERS[stale]
    while len(_TRAINERS) >= max_entries:
        evicted, _ = _TRAINERS.popitem(last=False)
        log.info("Trainer cache: evicted %s (trainer-cache-size %d)", evicted[0], max_entries)
    _TRAINERS[key] = build()
    if max_mb > 0:
        held = {k: _held_bytes(k) for k in _TRAINERS}
        while len(_TRAINERS) > 1 and sum(held.values()) > max_mb * 1e6:
            evicted, _ = _TRAINERS.popitem(last=False)
            log.info(
                "Trainer cache: evicted %s (%.0f MB held > trainer-cache-mb %g)",
                evicted[0],
                sum(held.values()) / 1e6,
                max_mb,
            )
            held.pop(evicted)
    return _TRAINERS[key]


def site_for(node_config: Mapping[str, Any], run: RunConfig) -> SiteConfig:
    """The site this node trains on, from ``site-config`` or ``partition-id``."""
    if "site-config" in node_config:
        return load_site(resolve_path(str(node_config["site-config"])))
    if "partition-id" in node_config:
        files = list_site_files(run.sites)
        pid = int(node_config["partition-id"])
        if pid >= len(files):
            raise ConfigError(
                "run_config", "sites", f"at least {pid + 1} site files for partition {pid} (found {len(files)})"
            )
        return load_site(files[pid])
    raise ConfigError(
        "node_config",
        "site-config",
        "the path of this hospital's site YAML (--node-config \"site-config='sites/x.yaml'\")",
    )


def _trainer(site: SiteConfig, run: RunConfig) -> LocalTrainer:
    def build() -> LocalTrainer:
        device = resolve_device(site.device, str(site.path)) if site.device != "auto" else resolve_device(run.device)
        model = build_model(run)
        data = load_site_data(site, run, model.max_text_len)
        # run-config loader-workers, else this SuperNode's $FEDVLP_LOADER_WORKERS (core.config.loader_workers)
        trainer = LocalTrainer(model, data, run, device, num_workers=None)
        log.info(
            "Site %s: %s",
            site.name,
            ", ".join(f"{d.rows.source.manifest.name}: {len(d)} rows {sorted(d.modalities)}" for d in data.datasets),
        )
        return trainer

    return _cache_get((str(site.path), run.config_hash()), build, run.trainer_cache_size, run.trainer_cache_mb)


def train_round(
    site: SiteConfig,
    run: RunConfig,
    global_state: Mapping[str, torch.Tensor],
    server_round: int,
    wire: WireState | None = None,
) -> RecordDict:
    """Load the global weights, train locally, and build the reply content.

    The arrays are encoded by run-config ``upload-compression`` (``core/compression.py``);
    ``wire`` holds the site's int8 error feedback (``None``: none kept).
    """
    trainer = _trainer(site, run)
    private = None
    if site.epsilon is not None:  # differential privacy (client/privacy.py; imports opacus only here)
        from .privacy import site_privacy

        private = site_privacy(site, run, trainer)
        if private is not None and private.exhausted():
            return private.exhausted_reply()
    trainer.model.load_state_dict(global_state)
    seed = run.seed * 100_003 + server_round
    site = with_worker_processes(site)  # the SuperNode worker's --devices / --nproc, if any
    if site.processes > 1:  # a big site: DDP over its devices (core/distributed.py)
        result = train_site(trainer, site, global_state, run.local_steps, seed)
    else:
        result = (private or trainer).train(run.local_steps, seed=seed)
    trained = trained_state(trainer.model, global_state, result.group_counts, result.touched)
    if private is not None:  # clipped + noised at client level; losses stay home
        trained, result.metrics = private.release(global_state, trained, result.metrics, server_round)
    if run.upload_compression == "none":
        wire_arrays: Mapping[str, np.ndarray | torch.Tensor] = {k: v.detach().cpu() for k, v in trained.items()}
    else:
        wire_arrays = encode_upload(run.upload_compression, trained, global_state, wire)
    # one packed array instead of one per tensor: Flower moves each array as its own request
    deflate = run.upload_compression != "none"  # the compressed modes also trade CPU for zlib's bytes
    arrays = ArrayRecord({k: Array(v) for k, v in pack_record(wire_arrays, deflate).items()})
    counts = MetricRecord({group: int(n) for group, n in result.group_counts.items()})
    metrics = MetricRecord({k: float(v) for k, v in result.metrics.items()})
    # the site's size per group, declared with every reply: the server holds later counts to it
    sizes = MetricRecord({group: int(n) for group, n in trainer.group_counts(every_source=True).items()})
    return RecordDict({ARRAYS_KEY: arrays, COUNTS_KEY: counts, METRICS_KEY: metrics, SIZE_KEY: sizes})


def trained_state(
    model: torch.nn.Module,
    global_state: Mapping[str, torch.Tensor],
    group_counts: Mapping[str, int],
    touched: frozenset[str],
) -> dict[str, torch.Tensor]:
    """What a site uploads: only what its data trained in the groups it reports.

    Parameters that got a gradient (a locked layer, or a fusion layer that only pairs reach,
    stays home) and buffers that changed (BatchNorm statistics of layers that trained in train
    mode; a locked stage or ``image-bn = "frozen"`` keeps them, so they stay home too).
    """
    parameters = dict(model.named_parameters())
    out = {}
    for key, value in filter_groups(model.state_dict(), group_counts).items():
        if key in parameters:
            if key in touched:
                out[key] = value
        elif key not in global_state or not torch.equal(value.detach().cpu(), global_state[key].cpu()):
            out[key] = value
    return out


def received_state(
    msg: Message, run: RunConfig, model: torch.nn.Module, wire: WireState, server_round: int
) -> dict[str, torch.Tensor]:
    """The global weights of a train message, decoded by the encoding it declares.

    A delta applies to the base the site kept (``wire``); a site without the base the message
    names (evicted from the cache, restarted, or in simulation run by another actor process this
    round) answers with error 1005 and the server resends it the whole model in the same round.
    With a delta download mode the decoded weights become the site's new base.
    """
    config = msg.content.config_records[CONFIG_KEY]
    encoding = str(config.get(ENCODING_KEY, "none"))
    arrays = unpack_record({k: a.numpy() for k, a in msg.content.array_records[ARRAYS_KEY].items()})
    if encoding == "none":
        state = {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in arrays.items()}
    else:
        base_round = int(config.get(BASE_ROUND_KEY, -1))  # type: ignore[arg-type]
        base = wire.base if wire.base is not None and wire.base_round == base_round else None
        state = apply_download(encoding, arrays, base, model.state_dict())
    if run.download_compression.startswith("delta"):
        wire.base, wire.base_round = state, server_round
    return state


class _Failed(Exception):
    """A failure already classified by its error code (the cause is chained)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _classified(code: int, step: Callable[[], _T], only: type[Exception] = Exception) -> _T:
    """Run ``step``; a failure of type ``only`` becomes error ``code``, any other one 1003."""
    try:
        return step()
    except _Failed:
        raise
    except Exception as err:
        raise _Failed(code if isinstance(err, only) else ERROR_TRAINING) from err


_PATHLIKE = re.compile(r"\S*[/\\]\S*")


def error_reason(code: int, err: BaseException) -> str:
    """The one line a site's error reply carries: what failed, the exception type and, for a
    config error, the key and what was expected; file paths are cut out.

    The traceback, paths, pid and addresses stay in the site's own log.
    """
    reason = f"{ERROR_REASONS.get(code, 'failed')}: {type(err).__name__}"
    if isinstance(err, ConfigError):
        reason += f" (key '{err.key}': expected {err.expected})"
    return _PATHLIKE.sub("<path>", reason.splitlines()[0])[:200]


def _error_reply(msg: Message, code: int, err: BaseException) -> Message:
    log.error("Round failed at this site (error %d sent to the server): %s", code, err, exc_info=err)
    return Message(error=Error(code, error_reason(code, err)), reply_to=msg)


def make_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run config is ``context.run_config`` updated with ``overrides``."""
    client_app = ClientApp(mods=[secagg_mod])  # SecAgg+ protocol messages only (run-config secure-aggregation)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        # Any failure becomes an error reply with a code and one line (core/params.py); the
        # traceback goes to this site's log only, never to the server or its round JSON.
        try:
            return _train(msg, context)
        except _Failed as failed:
            assert failed.__cause__ is not None
            return _error_reply(msg, failed.code, failed.__cause__)
        except Exception as err:  # noqa: BLE001 - whatever it is, the server gets one line
            return _error_reply(msg, ERROR_TRAINING, err)

    def _train(msg: Message, context: Context) -> Message:
        if "FEDVLP_TORCH_THREADS" in os.environ:  # simulations pin one thread per virtual client
            torch.set_num_threads(max(1, int(os.environ["FEDVLP_TORCH_THREADS"])))
        run, site = _classified(ERROR_SITE_CONFIG, lambda: _site(context))
        _classified(ERROR_NO_DATA, lambda: _trainer(site, run), only=ConfigError)  # load_site_data: nothing usable
        if is_secagg_train(msg):  # SecAgg+: same training, reply encoded for the secure sum

            def train_fn(global_state: Mapping[str, torch.Tensor], server_round: int) -> RecordDict:
                return _classified(ERROR_TRAINING, lambda: train_round(site, run, global_state, server_round))

            return _classified(
                ERROR_REPLY, lambda: secagg_train(msg, train_fn, run.secagg_max_weight, run.secagg_clipping_range)
            )
        server_round = int(msg.content.config_records[CONFIG_KEY]["server-round"])  # type: ignore[arg-type]
        wire = _wire_state(site, run)
        state = _classified(
            ERROR_NO_BASE,
            lambda: received_state(msg, run, _trainer(site, run).model, wire, server_round),
            only=MissingBase,
        )
        return Message(
            content=_classified(ERROR_TRAINING, lambda: train_round(site, run, state, server_round, wire)), reply_to=msg
        )

    def _site(context: Context) -> tuple[RunConfig, SiteConfig]:
        run = RunConfig.from_flat({**dict(context.run_config), **dict(overrides or {})})
        site = site_for(context.node_config, run)
        check_run_files(run, site)  # the site's pin on which local files the server may make it read
        return run, site

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """The site's name, which the server's client sampling draws on (it outlives node ids)."""
        run = RunConfig.from_flat({**dict(context.run_config), **dict(overrides or {})})
        name = site_for(context.node_config, run).name
        return Message(content=RecordDict({CONFIG_KEY: ConfigRecord({SITE_NAME_KEY: name})}), reply_to=msg)

    return client_app


app = make_client_app()
