"""A big site on several devices: one round of local training with DistributedDataParallel.

A site whose file sets ``devices: [cuda:0, cuda:1]`` or ``nproc: 2`` still is one Flower
client: its ClientApp calls :func:`train_site`, which spawns one process per device (NCCL on
GPUs, gloo on CPU processes, rendezvous on 127.0.0.1 and a free port). Every process builds the
model from the same global weights, wraps it in DDP and runs the site's local steps:

* **Batches.** Every process draws the same global batch of ``batch-size`` samples (same loader
  seeds as :class:`~fedvlp.core.train.LocalTrainer`, same augmentations) and keeps its contiguous
  shard of the collated rows (``batch-size / processes`` each), so N processes x per-process
  batch = the single-process batch. The price: each process decodes the whole batch
  (``loader-workers`` make that parallel); the forward and backward passes, where a big model
  spends its time, are split.
* **Randomness.** A draw inside a loss whose first dimension is the shard (a MIM patch mask) is
  drawn for the whole batch and sliced (:class:`_GlobalDraws`): each sample gets the numbers one
  process would give it, whatever the rank, and the generator advances as in one process. Other
  draws (MLM's replacement tokens, a matching shift, dropout) are the process's own; after every
  step all processes continue from rank 0's generator, so their batches never drift apart.
  With per-sample objectives whose draws are row-wise (MIM) the weights equal one process's to
  float tolerance (tests/core/test_distributed.py); in-batch negatives (contrastive, matching)
  see the process's shard, as in plain DDP, so those objectives equal it in distribution only.
* **BatchNorm.** On GPUs, BatchNorm layers that train (``image-bn = "train"``) become
  ``SyncBatchNorm``, so statistics span the global batch. gloo has no SyncBatchNorm: on CPU
  processes use ``norm = "group"`` or ``image-bn = "frozen"`` (then nothing differs), otherwise
  each process normalises its shard and rank 0's running statistics are kept.

Rank 0 returns the trained weights, counts and metrics (losses averaged over the processes), and
:func:`train_site` puts them in the site's trainer, as if :meth:`LocalTrainer.train` had run.
Under this module the optimizer is fresh every round (``persistent-optimizer`` is refused), ``prox-mu``
is refused, and DP-SGD sites train in one process (core/config.py refuses ``nproc`` with a privacy budget).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.overrides import TorchFunctionMode

from .config import ConfigError, RunConfig, SiteConfig, load_processes
from .train import LocalResult, LocalTrainer, load_site_data, resolve_device

__all__ = [
    "DEVICES_ENV",
    "NPROC_ENV",
    "DistributedOutcome",
    "free_port",
    "shard_bounds",
    "site_devices",
    "train_distributed",
    "train_site",
    "with_worker_processes",
    "worker_processes",
]

# How the SuperNode worker's --devices / --nproc (client/worker.py) reach the ClientApp it runs.
DEVICES_ENV = "FEDVLP_DEVICES"
NPROC_ENV = "FEDVLP_NPROC"
WORKER_ORIGIN = "fedvlp.client.worker --devices/--nproc"


def worker_processes(devices: str | None, nproc: str | int | None) -> tuple[tuple[str, ...], int] | None:
    """The worker flags ``--devices cuda:0,cuda:1`` / ``--nproc 2`` validated as a site file's keys
    (errors name the flags), or ``None`` when neither is given."""
    raw: dict[str, Any] = {}
    if devices:
        raw["devices"] = [d.strip() for d in str(devices).split(",")]
    if nproc not in (None, ""):
        raw["nproc"] = int(nproc) if str(nproc).strip().isdigit() else nproc
    return load_processes(WORKER_ORIGIN, raw) if raw else None


def with_worker_processes(site: SiteConfig, environ: Mapping[str, str] = os.environ) -> SiteConfig:
    """``site`` with the processes its SuperNode's worker was started with (``--devices`` /
    ``--nproc``, passed on as $FEDVLP_DEVICES / $FEDVLP_NPROC): they override the site file's.

    Raises
    ------
    ConfigError
        When they are malformed, or ask a site with a privacy budget for several processes.
    """
    chosen = worker_processes(environ.get(DEVICES_ENV), environ.get(NPROC_ENV))
    if chosen is None:
        return site
    devices, nproc = chosen
    if nproc > 1 and site.epsilon is not None:
        raise ConfigError(
            WORKER_ORIGIN,
            "nproc",
            f"1 for site {site.name}, which has a privacy budget (DP-SGD trains in one process)",
            nproc,
        )
    return dataclasses.replace(site, devices=devices, nproc=nproc)


def site_devices(site: SiteConfig, run: RunConfig) -> list[torch.device]:
    """The device of every training process of ``site``: its ``devices``, else ``nproc`` times
    its device (``cuda`` becomes ``cuda:0``, ``cuda:1``...).

    Raises
    ------
    ConfigError
        Naming the site file and key when it asks for more GPUs than this machine has.
    """
    if site.devices:
        devices = [torch.device(d) for d in site.devices]
    else:
        base = resolve_device(site.device if site.device != "auto" else run.device)
        if base.type == "cuda" and site.nproc > 1:
            start = base.index or 0
            devices = [torch.device("cuda", start + rank) for rank in range(site.nproc)]
        else:
            devices = [base] * site.nproc
    key = "devices" if site.devices else "nproc"
    cuda = [d for d in devices if d.type == "cuda"]
    if cuda and max(d.index or 0 for d in cuda) >= torch.cuda.device_count():
        raise ConfigError(
            str(site.path),
            key,
            f"GPUs this machine has ({torch.cuda.device_count()} visible)",
            [str(d) for d in devices],
        )
    return devices


def shard_bounds(rows: int, processes: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of a batch of ``rows`` that process ``rank`` trains on: contiguous
    and as even as possible (``torch.tensor_split``'s split: the first ``rows % processes`` get one more)."""
    size, extra = divmod(rows, processes)
    start = rank * size + min(rank, extra)
    return start, start + size + (1 if rank < extra else 0)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous of one round)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Step(nn.Module):
    """One local step's losses as a module, so that DDP's forward runs them (DDP prepares its
    gradient reduction in forward and finds the parameters a step left unused there)."""

    def __init__(self, trainer: _RankTrainer) -> None:
        super().__init__()
        self.model = trainer.model
        self._trainer = [trainer]  # a list: not registered as a submodule
        self.terms: list[tuple[str, float]] = []
        self.sources: set[int] = set()
        self.had_loss = False

    def forward(self, batches: Sequence[tuple[int, dict[str, torch.Tensor]]], teacher: Any) -> torch.Tensor:
        total, self.terms, self.sources = self._trainer[0].step_losses(self.model, batches, teacher)
        self.had_loss = total is not None
        if total is None:
            # Every process must take part in every gradient reduction: one whose shard
            # trained nothing this step contributes zeros.
            total = sum((p.sum() for p in self.model.parameters() if p.requires_grad), torch.zeros(())) * 0.0
        return total


class _GlobalDraws(TorchFunctionMode):
    """Inside a process's losses: a ``torch.rand`` / ``torch.randn`` whose first dimension is the
    process's shard of the batch is drawn for the whole batch and sliced to the shard's rows.

    So every sample gets the random numbers one process would give it (a MIM patch mask does not
    depend on the rank) and the generator advances as in one process. Draws of other shapes
    (MLM's replacement tokens, a matching shift, dropout) stay the process's own.
    """

    def __init__(self, rows: Mapping[int, tuple[int, int, int] | None]) -> None:
        super().__init__()
        self.rows = rows

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in (torch.rand, torch.randn) and args and "out" not in kwargs:
            size = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            known = self.rows.get(size[0]) if size and all(isinstance(n, int) for n in size) else None
            if known is not None:
                rows, start, end = known
                return func((rows, *size[1:]), **kwargs)[start:end]
        return func(*args, **kwargs)


class _RankTrainer(LocalTrainer):
    """A :class:`LocalTrainer` in one of the DDP processes: it trains on its shard of every
    batch, draws loss-side randomness from its own generator and averages with the others."""

    def __init__(self, *args: Any, rank: int, world: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.world = rank, world
        cuda = self.device.type == "cuda"
        if cuda and self.run.image_bn == "train":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self._rows: dict[int, tuple[int, int, int] | None] = {}  # this step's shard size -> (batch rows, start, end)
        # channels-last / compile before DDP registers the parameters' storage for its gradient buckets
        self._apply_speed_options()
        self.ddp = DistributedDataParallel(
            _Step(self), device_ids=[self.device] if cuda else None, find_unused_parameters=True
        )

    def _shard(self, raw: dict[str, Any]) -> dict[str, Any]:
        rows = len(raw["ids"])
        start, end = shard_bounds(rows, self.world, self.rank)
        if end > start:  # for _GlobalDraws: a shard of end - start rows is rows [start, end) of `rows`
            known = self._rows.setdefault(end - start, (rows, start, end))
            if known != (rows, start, end):
                self._rows[end - start] = None  # two sources' shards of one size: draws stay the process's own
        if start == end:
            return {"ids": [], "skipped": raw["skipped"]}  # nothing to train here this step
        # skips were recorded from the whole batch (every process sees them all); tensors and ids split
        return {
            k: (v[start:end] if k == "ids" or (isinstance(v, torch.Tensor) and v.dim() and len(v) == rows) else v)
            for k, v in raw.items()
        }

    def _forward(
        self, batches: Sequence[tuple[int, dict[str, torch.Tensor]]], teacher: Any, step: int
    ) -> tuple[torch.Tensor | None, list[tuple[str, float]], set[int]]:
        with _GlobalDraws(self._rows):
            total = self.ddp(batches, teacher)
        self._rows = {}
        self._sync_rng()
        step_module: _Step = self.ddp.module
        return total, step_module.terms, step_module.sources

    def _sync_rng(self) -> None:
        """Every process continues from rank 0's generator state, so the next batches (shuffles,
        augmentations) stay the same everywhere even after a draw that differed (a dropout mask,
        a count-sized draw); when every draw was row-wise, that is one process's state too."""
        cuda = self.device.type == "cuda"
        state = torch.get_rng_state()
        shared = state.to(self.device) if cuda else state
        dist.broadcast(shared, src=0)
        torch.set_rng_state(shared.cpu())
        if cuda:
            gpu = torch.cuda.get_rng_state(self.device).to(self.device)
            dist.broadcast(gpu, src=0)
            torch.cuda.set_rng_state(gpu.cpu(), self.device)

    def _backward(self, total: torch.Tensor | None) -> bool:
        # The step is applied when any process had a loss (as one process would with the whole batch).
        assert total is not None  # _Step.forward never returns None
        total.backward()
        had = torch.tensor([1.0 if self.ddp.module.had_loss else 0.0], device=self.device)
        dist.all_reduce(had)
        return bool(had.item() > 0)

    def alignment(self) -> dict[str, float]:
        return super().alignment() if self.rank == 0 else {}

    def result(
        self, totals: dict[str, float], seen: dict[str, int], started: float, steps: int, touched: set[str]
    ) -> LocalResult:
        # Mean losses over every process's shards; a source trained if it did in any process.
        names = sorted(set(totals) | set(seen))
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(
            gathered,
            ({n: totals.get(n, 0.0) for n in names}, {n: seen.get(n, 0) for n in names}, self._trained_sources),
        )
        summed: Counter[str] = Counter()
        count: Counter[str] = Counter()
        sources: set[int] = set()
        for part_totals, part_seen, part_sources in gathered:
            summed.update(part_totals)
            count.update(part_seen)
            sources |= part_sources or set()
        self._trained_sources = sources
        result = super().result(dict(summed), dict(count), started, steps, touched)
        result.metrics["processes"] = float(self.world)  # the round's log shows which sites trained with DDP
        return result


@dataclass
class DistributedOutcome:
    """What rank 0 hands back: the trained weights and the round's :class:`LocalResult`, plus the
    samples found unusable and the skip records (the site's trainer keeps them across rounds)."""

    state: dict[str, torch.Tensor]
    result: LocalResult
    trained_sources: set[int]
    unusable: list[set[str]]
    skipped_ids: set[str]
    problems: list[str]


def _worker(
    rank: int, devices: list[str], port: int, site: SiteConfig, run: RunConfig, folder: str, steps: int, seed: int
) -> None:
    """One DDP process (``torch.multiprocessing.spawn`` calls it with its rank)."""
    world = len(devices)
    device = torch.device(devices[rank])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # CPU processes share the cores
        threads = os.environ.get("FEDVLP_TORCH_THREADS")
        torch.set_num_threads(max(1, int(threads) if threads else (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        _train_rank(rank, world, device, site, run, Path(folder), steps, seed)
        # The DDP wrapper and its step module refer to each other: collect them now, so the
        # process group they hold is freed here and not at interpreter exit, where gloo's threads
        # can be destroyed unjoined and abort the process ("terminate called without an active
        # exception": about 1 round in 20 on 2 CPU processes before this).
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _train_rank(
    rank: int,
    world: int,
    device: torch.device,
    site: SiteConfig,
    run: RunConfig,
    folder: Path,
    steps: int,
    seed: int,
) -> None:
    """Train this process's shard; rank 0 writes the weights and records to ``folder/output.pt``."""
    from .models import build_model

    carried = torch.load(folder / "input.pt", weights_only=False)
    model = build_model(run)
    model.load_state_dict(carried["global"])
    data = load_site_data(site, run, model.max_text_len)
    # num_workers=None: run-config loader-workers, else $FEDVLP_LOADER_WORKERS (core.config.loader_workers)
    trainer = _RankTrainer(model, data, run, device, num_workers=None, rank=rank, world=world)
    if carried["unusable"] is not None:  # what earlier rounds found, as the site's trainer knows it
        trainer._unusable = [set(s) for s in carried["unusable"]]
        trainer._skipped_ids = set(carried["skipped_ids"])
        trainer.skipped = Counter(carried["skipped"])
        trainer.problems = list(carried["problems"])
    result = trainer.train(steps, seed)
    if rank == 0:
        # SyncBatchNorm has BatchNorm's keys: the state loads into the site's one-process model
        state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        torch.save(
            {
                "state": state,
                "result": result,
                "trained_sources": trainer._trained_sources,
                "unusable": trainer._unusable,
                "skipped_ids": trainer._skipped_ids,
                "problems": trainer.problems,
            },
            folder / "output.pt",
        )


def train_distributed(
    site: SiteConfig,
    run: RunConfig,
    global_state: Mapping[str, torch.Tensor],
    steps: int,
    seed: int,
    devices: Sequence[torch.device | str],
    *,
    carry: LocalTrainer | None = None,
) -> DistributedOutcome:
    """Train ``site`` for ``steps`` local steps from ``global_state`` with DDP over ``devices``.

    Parameters
    ----------
    site, run
        The site and run configuration (each process loads the site's data itself).
    global_state
        The round's global weights; every process starts from them.
    steps, seed
        As :meth:`LocalTrainer.train`: the same seed gives the same data stream.
    devices
        One process per entry (``cpu`` repeated for CPU processes).
    carry
        The site's single-process trainer, whose record of unusable samples and skips the
        processes start from (so counts stay what one process would report).

    Returns
    -------
    DistributedOutcome
        Rank 0's weights (on the CPU) and result.

    Raises
    ------
    ConfigError
        When ``batch-size`` is not a multiple of the number of processes, or the run keeps its
        optimizer across rounds.
    """
    world = len(devices)
    key = "devices" if site.devices else "nproc"
    if world < 1:
        raise ConfigError(str(site.path), key, "at least one training process")
    if run.batch_size % world:
        raise ConfigError(
            str(site.path),
            key,
            f"a number of processes that divides batch-size {run.batch_size} (each process trains batch-size / "
            "processes)",
            world,
        )
    if run.persistent_optimizer:
        raise ConfigError(
            "run_config",
            "persistent-optimizer",
            f"false for site {site.name}, which trains in {world} processes (its optimizer is fresh every round)",
        )
    if run.prox_mu > 0:
        raise ConfigError(
            "run_config",
            "prox-mu",
            f"0 for site {site.name}, which trains in {world} processes (the proximal term is not in DDP's forward)",
        )
    from torch.multiprocessing.spawn import spawn

    with tempfile.TemporaryDirectory(prefix="fedvlp-ddp-") as folder:
        torch.save(
            {
                "global": {k: v.detach().cpu() for k, v in global_state.items()},
                "unusable": carry._unusable if carry is not None else None,
                "skipped_ids": carry._skipped_ids if carry is not None else set(),
                "skipped": dict(carry.skipped) if carry is not None else {},
                "problems": list(carry.problems) if carry is not None else [],
            },
            Path(folder) / "input.pt",
        )
        names = [str(d) for d in devices]
        spawn(_worker, args=(names, free_port(), site, run, folder, steps, seed), nprocs=world, join=True)
        out = torch.load(Path(folder) / "output.pt", weights_only=False)
    return DistributedOutcome(
        out["state"], out["result"], out["trained_sources"], out["unusable"], out["skipped_ids"], out["problems"]
    )


def train_site(
    trainer: LocalTrainer, site: SiteConfig, global_state: Mapping[str, torch.Tensor], steps: int, seed: int
) -> LocalResult:
    """One round of a big site: :func:`train_distributed` over :func:`site_devices`, with the
    weights and skip records put back into ``trainer`` (the site's one-process trainer, which
    the ClientApp keeps across rounds and reads counts and weights from)."""
    devices = site_devices(site, trainer.run)
    if trainer.device.type != "cpu":  # the processes own the GPUs: the site's copy waits on the CPU
        trainer.device = torch.device("cpu")
        trainer.model.to(trainer.device)
        torch.cuda.empty_cache()
    outcome = train_distributed(site, trainer.run, global_state, steps, seed, devices, carry=trainer)
    trainer.model.load_state_dict(outcome.state)
    trainer._unusable = outcome.unusable
    trainer._skipped_ids = outcome.skipped_ids
    trainer.skipped = Counter(outcome.result.skipped)
    trainer.problems = outcome.problems
    trainer._trained_sources = outcome.trained_sources
    return outcome.result
