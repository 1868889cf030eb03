"""The label-efficiency sweep: inits x protocols x label fractions x seeds, resumable.

Every (init, protocol, label fraction, seed) cell is one run. Each finished cell is written
to ``cells/<cell>.csv`` in the output folder at once (atomically) and ``results.csv`` is
rewritten from them; cells already there (or in ``results.csv``) are not run again, so an
interrupted sweep continues where it stopped and a sweep can be extended with more seeds,
fractions, protocols or inits. ``jobs > 1`` runs cells in that many worker processes; every
cell derives all randomness from its own seed and runs on ``num_threads`` threads, so the
results do not depend on ``jobs`` or on the order cells finish in. ``sweep_meta.json``
records what the results depend on (training knobs, encoder architecture, data, init weights) and a mismatch is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import re
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union, cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_bytes
from ..models.stages import StagedEncoder, UpperStages, lock_stages, num_stages
from .data import LabeledSet, sample_fraction
from .encoders import EncoderSource, Init, build_encoder, describe_encoder, state_hash
from .finetune import PRECISIONS, FinetuneConfig, FinetuneResult, finetune
from .probe import DEFAULT_WEIGHT_DECAYS, ProbeResult, extract_features, fit_probe, linear_probe
from .report import write_outputs
from .tasks import task_metrics

__all__ = [
    "HEAD_INITS",
    "PROTOCOLS",
    "RESULT_COLUMNS",
    "RESULTS_FILE",
    "SweepConfig",
    "run_sweep",
    "load_results",
    "cell_file",
    "write_results",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("linear", "finetune")
HEAD_INITS = ("random", "probe")  # how a fine-tuning run's head starts (ft_head_init)
RESULT_COLUMNS = ["init", "protocol", "label_fraction", "seed", "metric", "class", "value"]
CELL_COLUMNS = ["init", "protocol", "label_fraction", "seed"]
RESULTS_FILE = "results.csv"
META_FILE = "sweep_meta.json"
CELLS_DIR = "cells"
# Fine-tuning before head warm-up and LR halving existed: results made then ran without them.
_LEGACY: dict[str, Any] = {"ft_warmup_fraction": 0.0, "ft_plateau_patience": None}
# Fields that define the grid or the machine, not the meaning of a result: free to change on resume.
_GRID_FIELDS = {"fractions", "seeds", "protocols", "device", "num_threads", "title"}


@dataclass(frozen=True)
class SweepConfig:
    """What to run and how to train.

    ``ft_*`` fields are the fine-tuning knobs (see :class:`~.finetune.FinetuneConfig`),
    ``probe_*`` the linear-probe ones (see :func:`~.probe.linear_probe`).
    """

    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    protocols: tuple[str, ...] = ("linear", "finetune")
    batch_size: int = 64
    device: str = "cpu"
    num_threads: int | None = None  # torch CPU threads during the sweep; None: all available cores
    eval_batch_size: int = 256
    probe_weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    probe_max_iter: int = 200
    ft_lr_head: float = 1e-3
    ft_lr_encoder: float = 3e-4
    ft_weight_decay: float = 1e-6
    ft_dropout: float = 0.2
    ft_min_steps: int = 100
    ft_epochs: int = 10
    ft_max_steps: int = 1000
    ft_eval_every: int | None = None
    ft_patience: int = 4
    ft_warmup_fraction: float = 0.1
    ft_plateau_patience: int | None = 1  # None: never halve the learning rates
    ft_shift: float = 0.0625
    ft_flip: bool = False
    ft_precision: str = "fp32"
    ft_channels_last: bool = True
    ft_trainable_stages: int = 0  # 0: fine-tune the whole encoder; N: only its top N stages, on cached lower features
    # "random": a new head; "probe": the cell's linear probe (same features, weight decay and
    # standardisation as the linear protocol's cell), then fine-tuning (LP-FT)
    ft_head_init: str = "random"
    title: str = "Label-efficiency sweep"

    def validate(self) -> None:
        """Raise ``ValueError`` on an empty grid or out-of-range value."""
        if not self.fractions or not all(0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be a non-empty tuple of values in (0, 1], got {self.fractions}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if not self.protocols or set(self.protocols) - set(PROTOCOLS):
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {self.protocols}")
        if self.batch_size < 2 or self.eval_batch_size < 1:
            raise ValueError("batch_size must be >= 2 and eval_batch_size >= 1")
        if self.ft_precision not in PRECISIONS:
            raise ValueError(f"ft_precision must be one of {PRECISIONS}, got {self.ft_precision!r}")
        if self.ft_head_init not in HEAD_INITS:
            raise ValueError(f"ft_head_init must be one of {HEAD_INITS}, got {self.ft_head_init!r}")
        if self.ft_trainable_stages < 0:
            raise ValueError(f"ft_trainable_stages must be >= 0 (0: the whole encoder), got {self.ft_trainable_stages}")

    def finetune_config(self) -> FinetuneConfig:
        """The :class:`FinetuneConfig` of these settings."""
        return FinetuneConfig(
            batch_size=self.batch_size,
            lr_head=self.ft_lr_head,
            lr_encoder=self.ft_lr_encoder,
            weight_decay=self.ft_weight_decay,
            dropout=self.ft_dropout,
            min_steps=self.ft_min_steps,
            epochs=self.ft_epochs,
            max_steps=self.ft_max_steps,
            eval_every=self.ft_eval_every,
            patience=self.ft_patience,
            warmup_fraction=self.ft_warmup_fraction,
            plateau_patience=self.ft_plateau_patience,
            shift=self.ft_shift,
            flip=self.ft_flip,
            eval_batch_size=self.eval_batch_size,
            device=self.device,
            precision=self.ft_precision,
            channels_last=self.ft_channels_last,
            trainable_stages=self.ft_trainable_stages,
        )

    def settings(self) -> dict[str, Any]:
        """The fields that change what a cell's result means (everything but the grid and machine)."""
        return {k: v for k, v in _jsonable(dataclasses.asdict(self)).items() if k not in _GRID_FIELDS}


def _available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and container CPU sets)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    if affinity is not None:
        return max(1, len(affinity(0)))
    return max(1, os.cpu_count() or 1)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _cell_key(init: str, protocol: str, fraction: float, seed: int) -> tuple[str, str, float, int]:
    return (str(init), str(protocol), round(float(fraction), 10), int(seed))


def load_results(path: Path) -> pd.DataFrame:
    """Read a sweep's ``results.csv`` with the right column types (empty frame if absent)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(
            {c: pd.Series(dtype=t) for c, t in zip(RESULT_COLUMNS, (str, str, float, int, str, str, float))}
        )
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a sweep results file (missing columns {missing})")
    frame["label_fraction"] = frame["label_fraction"].astype(float)
    frame["seed"] = frame["seed"].astype(int)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame[RESULT_COLUMNS]


def cell_file(out_dir: Path, init: str, protocol: str, fraction: float, seed: int) -> Path:
    """Where one finished cell's rows are kept: ``out_dir/cells/<init>__<protocol>__<fraction>__<seed>.csv``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(init))
    return Path(out_dir) / CELLS_DIR / f"{safe}__{protocol}__{float(fraction):g}__{int(seed)}.csv"


def write_results(frame: pd.DataFrame, path: Path) -> None:
    """Write a results table as CSV in one step (a reader never sees half a file).

    Parameters
    ----------
    frame
        Rows of :data:`RESULT_COLUMNS` (NaN written as ``nan``).
    path
        The CSV file; a ``.tmp`` sibling is written first and renamed over it.
    """
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False, na_rep="nan")
    os.replace(tmp, path)


def _check_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse to mix results of different settings/data/weights; then record the current ones."""
    path = out_dir / META_FILE
    if path.is_file() and (out_dir / RESULTS_FILE).is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        # Knobs added to SweepConfig after the old results were made count as the value that
        # reproduces the old behaviour (_LEGACY), else as their defaults.
        old["settings"] = {**SweepConfig().settings(), **_LEGACY, **old.get("settings", {})}
        for key in ("settings", "encoder", "data"):
            if old.get(key) != meta[key]:
                diff = meta[key]
                if isinstance(diff, dict) and isinstance(old.get(key), dict):
                    diff = {k: (old[key].get(k), v) for k, v in meta[key].items() if old[key].get(k) != v}
                raise ValueError(
                    f"{out_dir}: existing results were made with different {key} ({diff}); "
                    f"use a new output folder or delete {RESULTS_FILE} and {META_FILE}"
                )
        for name, digest in meta["inits"].items():
            if old.get("inits", {}).get(name, digest) != digest:
                raise ValueError(
                    f"{out_dir}: init '{name}' has different weights than in the existing results; "
                    "give it a new name or use a new output folder"
                )
        meta = {**meta, "inits": {**old.get("inits", {}), **meta["inits"]}}
    # Atomic: a sweep stopped mid-write (fedvlp demo --sites stops its background cells) leaves the old file.
    atomic_write_bytes(path, json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"))


InitValue = Union[Mapping[str, torch.Tensor], Init, None]


Labeled = Union[LabeledSet, Mapping[int, LabeledSet]]


@dataclass
class _Context:
    """What every cell needs, plus the linear-probe and lower-stage feature caches."""

    labeled: dict[int, LabeledSet]  # by image size; every set has the same rows and splits
    inits: dict[str, Init]
    config: SweepConfig
    default_size: int
    features: dict[tuple[str, int | None], torch.Tensor] = dataclasses.field(default_factory=dict)
    lower: dict[tuple[str, int | None], tuple[torch.Tensor, int]] = dataclasses.field(default_factory=dict)

    def labeled_for(self, init: str) -> LabeledSet:
        """The labelled set at the image size ``init`` is evaluated at."""
        return self.labeled[self.inits[init].image_size or self.default_size]

    def probe_features(self, init: str, seed: int) -> torch.Tensor:
        """Features of all images, once per pretrained init (once per seed for random inits)."""
        spec = self.inits[init]
        key = (init, seed if spec.state is None else None)
        if key not in self.features:
            encoder = build_encoder(spec.source, spec.state, seed)
            self.features[key] = extract_features(
                encoder, self.labeled_for(init).images, self.config.eval_batch_size, self.config.device
            )
        return self.features[key]

    def finetune_inputs(self, init: str, seed: int) -> tuple[nn.Module, torch.Tensor, bool]:
        """The module to fine-tune and its inputs: the whole encoder on images, or (with
        ``ft_trainable_stages``) its top stages on the cached output of the frozen lower ones."""
        spec = self.inits[init]
        encoder = build_encoder(spec.source, spec.state, seed)
        images = self.labeled_for(init).images
        trainable = self.config.ft_trainable_stages
        if not trainable:
            return encoder, images, False
        if not isinstance(encoder, StagedEncoder):
            log.warning("init %s: %s has no stages; fine-tuning the whole encoder", init, type(encoder).__name__)
            return encoder, images, False
        start = max(0, num_stages(encoder) - trainable)
        lock_stages(encoder, start)
        upper = UpperStages(encoder, start)
        key = (init, seed if spec.state is None else None)
        if key not in self.lower:
            encoder.eval()
            with torch.no_grad():
                chunks = [
                    upper.lower(images[i : i + self.config.eval_batch_size].to(self.config.device)).cpu()
                    for i in range(0, len(images), self.config.eval_batch_size)
                ]
            self.lower[key] = (torch.cat(chunks), start)
        return upper, self.lower[key][0], True


def _run_cell(ctx: _Context, init: str, protocol: str, fraction: float, seed: int) -> list[dict[str, Any]]:
    """One run: sample the labelled subset, train with ``protocol``, score the test split."""
    labeled, config = ctx.labeled_for(init), ctx.config
    train_split, val_idx, test_idx = (labeled.indices(s) for s in ("train", "val", "test"))
    train_idx = sample_fraction(train_split, labeled.labels, fraction, seed, labeled.tasks)
    result: ProbeResult | FinetuneResult
    if protocol == "linear":
        features = ctx.probe_features(init, seed)
        result = linear_probe(
            features,
            labeled.labels,
            train_idx,
            val_idx,
            test_idx,
            config.probe_weight_decays,
            config.probe_max_iter,
            standardise_idx=train_split,
            tasks=labeled.tasks,
        )
    elif protocol == "finetune":
        head = None
        if config.ft_head_init == "probe":
            head = fit_probe(
                ctx.probe_features(init, seed),
                labeled.labels,
                train_idx,
                val_idx,
                config.probe_weight_decays,
                config.probe_max_iter,
                standardise_idx=train_split,
                tasks=labeled.tasks,
            ).raw_head()
        module, inputs, cached = ctx.finetune_inputs(init, seed)
        result = finetune(
            module,
            cast(int, module.out_dim),  # every image encoder and UpperStages has an int out_dim
            inputs,
            labeled.labels,
            train_idx,
            val_idx,
            test_idx,
            seed,
            config.finetune_config(),
            tasks=labeled.tasks,
            cached=cached,
            head=head,
        )
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    test_y = labeled.labels[torch.as_tensor(test_idx)]
    base = {"init": init, "protocol": protocol, "label_fraction": float(fraction), "seed": int(seed)}
    rows = [
        {**base, "metric": m, "class": c, "value": v}
        for m, c, v in task_metrics(test_y, result.test_scores, labeled.tasks)
    ]
    rows.append({**base, "metric": "val_auc", "class": "mean", "value": result.val_auc})
    rows.append({**base, "metric": "n_train", "class": "all", "value": float(len(train_idx))})
    return rows


_WORKER: dict[str, Any] = {}


def _worker_init(ctx: _Context, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["ctx"] = ctx


def _worker_cell(cell: tuple[str, str, float, int]) -> list[dict[str, Any]]:
    return _run_cell(_WORKER["ctx"], *cell)


def _as_init(name: str, value: InitValue, encoder_config: EncoderSource | None) -> Init:
    if isinstance(value, Init):
        return value
    if encoder_config is None:
        raise ValueError(f"init '{name}' is a state dict (or None) but no encoder_config was given")
    return Init(encoder_config, value)


def _labeled_sets(labeled: Labeled, specs: Mapping[str, Init]) -> tuple[dict[int, LabeledSet], int]:
    """The labelled sets by image size and the size of inits without their own; every size an
    init asks for must be there, with the same rows and splits."""
    sets = {labeled.image_size: labeled} if isinstance(labeled, LabeledSet) else {int(k): v for k, v in labeled.items()}
    if not sets:
        raise ValueError("no labelled set given")
    default = next(iter(sets))
    first = sets[default]
    for size, other in sets.items():
        if other.image_size != size:
            raise ValueError(f"the labelled set given for image size {size} has {other.image_size} px images")
        if list(other.ids) != list(first.ids) or list(other.split) != list(first.split):
            raise ValueError(f"the labelled sets at {default} and {size} px differ in rows or splits")
    for name, spec in specs.items():
        if spec.image_size is not None and spec.image_size not in sets:
            raise ValueError(
                f"init '{name}' is evaluated at {spec.image_size} px but no labelled set of that size was given"
            )
    return sets, default


def run_sweep(
    inits: Mapping[str, InitValue],
    encoder_config: EncoderSource | None,
    labeled: Labeled,
    out_dir: Path,
    config: SweepConfig = SweepConfig(),
    progress: bool = True,
    jobs: int = 1,
) -> pd.DataFrame:
    """Run every (init, protocol, label fraction, seed) cell not yet done in ``out_dir``.

    Parameters
    ----------
    inits
        Name to either an :class:`~.encoders.Init` (its own architecture and weights), or a
        state dict of ``encoder_config``'s encoder (keys without prefix; see
        :func:`~.encoders.encoder_state`), or ``None`` for a random ``encoder_config`` encoder
        seeded by the run seed.
    encoder_config
        Architecture of the inits given as state dicts or ``None`` (may be ``None`` when every
        init is an :class:`Init`).
    labeled
        The labelled set with its train/val/test split, or one such set per image size (the
        same rows decoded at each size; an init with an ``image_size`` uses that one, the
        others the first). The label fraction applies to the train split; validation (model
        selection) and test always use the full splits.
    out_dir
        Gets ``cells/*.csv`` (one per finished cell), ``results.csv`` (after every cell),
        ``sweep_meta.json``, and at the end ``report.md``, ``summary.csv`` and the plots.
    config
        Grid and training knobs.
    progress
        Show a tqdm bar over the cells.
    jobs
        Worker processes (each runs cells on ``config.num_threads or 1`` threads); 1 runs in
        this process. The results are the same for any ``jobs`` at the same thread count.

    Returns
    -------
    pd.DataFrame
        Long format, columns ``init, protocol, label_fraction, seed, metric, class, value``,
        for the requested cells only, in grid order (``results.csv`` keeps any others).
        Metrics: ``auc`` and ``ap`` (test, per task and ``"mean"``; see
        :func:`~.tasks.task_metrics` for categorical tasks, which add per-category AUCs and an
        ``accuracy``), ``val_auc`` (class ``"mean"``, the model-selection score), ``n_train``
        (class ``"all"``, the labelled subset size) and, only for a single binary task,
        ``accuracy`` and ``f1`` (class ``"mean"``, threshold 0.5 on the sigmoid).

    Raises
    ------
    ValueError
        On an invalid config, a state dict that does not fit the encoder, an empty split, or
        existing results made with other settings, data or weights.
    """
    config.validate()
    if not inits:
        raise ValueError("inits must name at least one initialisation")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    specs = {name: _as_init(name, value, encoder_config) for name, value in inits.items()}
    sets, default_size = _labeled_sets(labeled, specs)
    first = sets[default_size]
    for split in ("train", "val", "test"):
        if len(first.indices(split)) == 0:
            raise ValueError(f"the labelled set has no '{split}' rows")
    for name, spec in specs.items():  # fail fast, before hours of runs
        if spec.state is not None:
            try:
                build_encoder(spec.source, spec.state, 0)
            except ValueError as err:
                raise ValueError(f"init '{name}': {err}") from err

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Plain state-dict inits keep their historical digest (existing sweep folders stay valid).
    digests = {
        name: (spec.digest() if isinstance(inits[name], Init) else state_hash(spec.state))
        for name, spec in specs.items()
    }
    _check_meta(
        out_dir,
        {
            "settings": config.settings(),
            "encoder": _jsonable(describe_encoder(encoder_config)) if encoder_config is not None else None,
            # One labelled set keeps its historical fingerprint; several sizes list theirs.
            "data": first.fingerprint()
            if len(sets) == 1
            else {str(k): v.fingerprint() for k, v in sorted(sets.items())},
            "inits": digests,
        },
    )
    results_path = out_dir / RESULTS_FILE
    results = load_results(results_path)
    for path in sorted((out_dir / CELLS_DIR).glob("*.csv")):  # finished cells not yet in results.csv
        cell = load_results(path)
        if cell.empty:
            continue
        key = _cell_key(*next(cell[CELL_COLUMNS].itertuples(index=False)))
        present = {_cell_key(*row) for row in results[CELL_COLUMNS].drop_duplicates().itertuples(index=False)}
        if key not in present:
            results = cell if results.empty else pd.concat([results, cell], ignore_index=True)
    done = {_cell_key(*row) for row in results[CELL_COLUMNS].drop_duplicates().itertuples(index=False)}

    cells = [(i, p, f, s) for i in specs for p in config.protocols for f in config.fractions for s in config.seeds]
    wanted = {_cell_key(*cell) for cell in cells}
    todo = [cell for cell in cells if _cell_key(*cell) not in done]
    if len(todo) < len(cells):
        log.info("%s: %d of %d cells already done, running %d", out_dir, len(cells) - len(todo), len(cells), len(todo))

    ctx = _Context(sets, specs, config, default_size)
    threads = config.num_threads or (_available_cores() if jobs == 1 else 1)

    def finish(cell: tuple[str, str, float, int], rows: list[dict[str, Any]]) -> None:
        nonlocal results
        frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        path = cell_file(out_dir, *cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_results(frame, path)
        results = frame if results.empty else pd.concat([results, frame], ignore_index=True)
        write_results(results, results_path)

    with tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        desc="label-efficiency sweep",
        unit="run",
        disable=not progress,
    ) as bar:
        if jobs == 1 or len(todo) <= 1:
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for cell in todo:
                    bar.set_postfix_str(f"{cell[0]}/{cell[1]}/{cell[2]:g}/seed {cell[3]}")
                    finish(cell, _run_cell(ctx, *cell))
                    bar.update(1)
            finally:
                torch.set_num_threads(previous_threads)
        else:
            # spawn: a clean interpreter per worker (fork after OpenMP/torch threads can hang).
            with ProcessPoolExecutor(
                max_workers=min(jobs, len(todo)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(ctx, threads),
            ) as pool:
                pending: dict[Future[list[dict[str, Any]]], tuple[str, str, float, int]] = {
                    pool.submit(_worker_cell, cell): cell for cell in todo
                }
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        cell = pending.pop(future)
                        finish(cell, future.result())
                        bar.set_postfix_str(f"{cell[0]}/{cell[1]}/{cell[2]:g}/seed {cell[3]}")
                        bar.update(1)

    # Grid order, whatever order the cells finished in.
    order = {key: i for i, key in enumerate(_cell_key(*cell) for cell in cells)}
    keys = [_cell_key(*row) for row in results[CELL_COLUMNS].itertuples(index=False)]
    selected = results[np.array([k in wanted for k in keys], dtype=bool)].copy()
    selected["__order"] = [order[k] for k, w in zip(keys, [k in wanted for k in keys]) if w]
    frame = selected.sort_values("__order", kind="stable").drop(columns="__order").reset_index(drop=True)
    write_outputs(frame, out_dir, config.title)
    return frame
