"""The label-efficiency sweep: inits x protocols x label fractions x seeds, resumable.

Every (init, protocol, label fraction, seed) cell is one run. ``results.csv`` in the output
folder is rewritten after every cell, and cells already in it are not run again, so an
interrupted sweep continues where it stopped and a sweep can be extended with more seeds,
fractions, protocols or inits. ``sweep_meta.json`` records what the results depend on
(training knobs, encoder architecture, data, init weights) and a mismatch is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import LabeledSet, sample_fraction
from .encoders import EncoderSource, build_encoder, describe_encoder, state_hash
from .finetune import PRECISIONS, FinetuneConfig, finetune
from .metrics import accuracy, auc_per_class, average_precision_per_class, f1
from .probe import DEFAULT_WEIGHT_DECAYS, extract_features, linear_probe
from .report import write_outputs

__all__ = ["PROTOCOLS", "RESULT_COLUMNS", "SweepConfig", "run_sweep", "load_results"]

log = logging.getLogger(__name__)

PROTOCOLS = ("linear", "finetune")
RESULT_COLUMNS = ["init", "protocol", "label_fraction", "seed", "metric", "class", "value"]
CELL_COLUMNS = ["init", "protocol", "label_fraction", "seed"]
RESULTS_FILE = "results.csv"
META_FILE = "sweep_meta.json"
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
    ft_shift: float = 0.0625
    ft_flip: bool = False
    ft_precision: str = "fp32"
    ft_channels_last: bool = True
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

    def finetune_config(self) -> FinetuneConfig:
        """The :class:`FinetuneConfig` of these settings."""
        return FinetuneConfig(
            batch_size=self.batch_size, lr_head=self.ft_lr_head, lr_encoder=self.ft_lr_encoder,
            weight_decay=self.ft_weight_decay, dropout=self.ft_dropout, min_steps=self.ft_min_steps,
            epochs=self.ft_epochs, max_steps=self.ft_max_steps, eval_every=self.ft_eval_every,
            patience=self.ft_patience, shift=self.ft_shift, flip=self.ft_flip,
            eval_batch_size=self.eval_batch_size, device=self.device, precision=self.ft_precision,
            channels_last=self.ft_channels_last,
        )

    def settings(self) -> dict[str, Any]:
        """The fields that change what a cell's result means (everything but the grid and machine)."""
        return {k: v for k, v in _jsonable(dataclasses.asdict(self)).items() if k not in _GRID_FIELDS}


def _available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and container CPU sets)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _cell_key(init: str, protocol: str, fraction: float, seed: int) -> tuple[str, str, float, int]:
    return (str(init), str(protocol), round(float(fraction), 10), int(seed))


def load_results(path: Path) -> pd.DataFrame:
    """Read a sweep's ``results.csv`` with the right column types (empty frame if absent)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(RESULT_COLUMNS, (str, str, float, int, str, str, float))})
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a sweep results file (missing columns {missing})")
    frame["label_fraction"] = frame["label_fraction"].astype(float)
    frame["seed"] = frame["seed"].astype(int)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame[RESULT_COLUMNS]


def _write_results(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False, na_rep="nan")
    os.replace(tmp, path)


def _check_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse to mix results of different settings/data/weights; then record the current ones."""
    path = out_dir / META_FILE
    if path.is_file() and (out_dir / RESULTS_FILE).is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        # Knobs added to SweepConfig after the old results were made count as their defaults.
        old["settings"] = {**SweepConfig().settings(), **old.get("settings", {})}
        for key in ("settings", "encoder", "data"):
            if old.get(key) != meta[key]:
                diff = meta[key]
                if isinstance(diff, dict) and isinstance(old.get(key), dict):
                    diff = {k: (old[key].get(k), v) for k, v in meta[key].items() if old[key].get(k) != v}
                raise ValueError(f"{out_dir}: existing results were made with different {key} ({diff}); "
                                 f"use a new output folder or delete {RESULTS_FILE} and {META_FILE}")
        for name, digest in meta["inits"].items():
            if old.get("inits", {}).get(name, digest) != digest:
                raise ValueError(f"{out_dir}: init '{name}' has different weights than in the existing results; "
                                 "give it a new name or use a new output folder")
        meta = {**meta, "inits": {**old.get("inits", {}), **meta["inits"]}}
    path.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


@dataclass
class _Context:
    """What every cell needs, plus the linear-probe feature cache."""

    labeled: LabeledSet
    encoder_config: EncoderSource
    config: SweepConfig
    features: dict[tuple[str, int | None], torch.Tensor] = dataclasses.field(default_factory=dict)

    def probe_features(self, init: str, state: Mapping[str, torch.Tensor] | None, seed: int) -> torch.Tensor:
        """Features of all images, once per pretrained init (once per seed for random inits)."""
        key = (init, seed if state is None else None)
        if key not in self.features:
            encoder = build_encoder(self.encoder_config, state, seed)
            self.features[key] = extract_features(encoder, self.labeled.images, self.config.eval_batch_size, self.config.device)
        return self.features[key]


def _run_cell(ctx: _Context, init: str, state: Mapping[str, torch.Tensor] | None, protocol: str,
              fraction: float, seed: int) -> list[dict[str, Any]]:
    """One run: sample the labelled subset, train with ``protocol``, score the test split."""
    labeled, config = ctx.labeled, ctx.config
    train_split, val_idx, test_idx = (labeled.indices(s) for s in ("train", "val", "test"))
    train_idx = sample_fraction(train_split, labeled.labels, fraction, seed)
    if protocol == "linear":
        features = ctx.probe_features(init, state, seed)
        result = linear_probe(features, labeled.labels, train_idx, val_idx, test_idx,
                              config.probe_weight_decays, config.probe_max_iter, standardise_idx=train_split)
    elif protocol == "finetune":
        encoder = build_encoder(ctx.encoder_config, state, seed)
        result = finetune(encoder, encoder.out_dim, labeled.images, labeled.labels, train_idx, val_idx, test_idx,
                          seed, config.finetune_config())
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    test_y = labeled.labels[torch.as_tensor(test_idx)]
    aucs = auc_per_class(test_y, result.test_scores, labeled.label_names)
    aps = average_precision_per_class(test_y, result.test_scores, labeled.label_names)
    base = {"init": init, "protocol": protocol, "label_fraction": float(fraction), "seed": int(seed)}
    rows = [{**base, "metric": "auc", "class": name, "value": value} for name, value in aucs.items()]
    rows += [{**base, "metric": "ap", "class": name, "value": value} for name, value in aps.items()]
    if len(labeled.label_names) == 1:  # binary task: threshold sigmoid(logit) at 0.5
        rows.append({**base, "metric": "accuracy", "class": "mean", "value": accuracy(test_y, result.test_scores)})
        rows.append({**base, "metric": "f1", "class": "mean", "value": f1(test_y, result.test_scores)})
    rows.append({**base, "metric": "val_auc", "class": "mean", "value": result.val_auc})
    rows.append({**base, "metric": "n_train", "class": "all", "value": float(len(train_idx))})
    return rows


def run_sweep(
    inits: Mapping[str, Mapping[str, torch.Tensor] | None],
    encoder_config: EncoderSource,
    labeled: LabeledSet,
    out_dir: Path,
    config: SweepConfig = SweepConfig(),
    progress: bool = True,
) -> pd.DataFrame:
    """Run every (init, protocol, label fraction, seed) cell not yet in ``out_dir/results.csv``.

    Parameters
    ----------
    inits
        Name to ``ResNetEncoder(encoder_config)`` state dict (keys without prefix; see
        :func:`~.encoders.encoder_state`), or ``None`` for a random init seeded by the run seed.
    encoder_config
        Architecture of the image encoder.
    labeled
        The labelled set with its train/val/test split. The label fraction applies to the
        train split; validation (model selection) and test always use the full splits.
    out_dir
        Gets ``results.csv`` (after every cell), ``sweep_meta.json``, and at the end
        ``report.md`` and ``auc_vs_labels.png``.
    config
        Grid and training knobs.
    progress
        Show a tqdm bar over the cells.

    Returns
    -------
    pd.DataFrame
        Long format, columns ``init, protocol, label_fraction, seed, metric, class, value``,
        for the requested cells only (``results.csv`` keeps any others). Metrics: ``auc``
        (test AUC per class and ``"mean"``), ``ap`` (test average precision per class and
        ``"mean"``), ``val_auc`` (class ``"mean"``, the model-selection score), ``n_train``
        (class ``"all"``, the labelled subset size) and, only for a binary task (exactly one
        label column), ``accuracy`` and ``f1`` (class ``"mean"``, threshold 0.5 on the sigmoid
        of the test logits).

    Raises
    ------
    ValueError
        On an invalid config, a state dict that does not fit the encoder, an empty split, or
        existing results made with other settings, data or weights.
    """
    config.validate()
    if not inits:
        raise ValueError("inits must name at least one initialisation")
    for split in ("train", "val", "test"):
        if len(labeled.indices(split)) == 0:
            raise ValueError(f"the labelled set has no '{split}' rows")
    for name, state in inits.items():  # fail fast, before hours of runs
        if state is not None:
            try:
                build_encoder(encoder_config, state, 0)
            except ValueError as err:
                raise ValueError(f"init '{name}': {err}") from err

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_meta(out_dir, {
        "settings": config.settings(),
        "encoder": _jsonable(describe_encoder(encoder_config)),
        "data": labeled.fingerprint(),
        "inits": {name: state_hash(state) for name, state in inits.items()},
    })
    results_path = out_dir / RESULTS_FILE
    results = load_results(results_path)
    done = {_cell_key(*row) for row in results[CELL_COLUMNS].drop_duplicates().itertuples(index=False)}

    cells = [(i, p, f, s) for i in inits for p in config.protocols for f in config.fractions for s in config.seeds]
    wanted = {_cell_key(*cell) for cell in cells}
    todo = [cell for cell in cells if _cell_key(*cell) not in done]
    if len(todo) < len(cells):
        log.info("%s: %d of %d cells already done, running %d", results_path, len(cells) - len(todo), len(cells), len(todo))

    ctx = _Context(labeled, encoder_config, config)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads or _available_cores())
    try:
        with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="label-efficiency sweep",
                  unit="run", disable=not progress) as bar:
            for init, protocol, fraction, seed in todo:
                bar.set_postfix_str(f"{init}/{protocol}/{fraction:g}/seed {seed}")
                rows = pd.DataFrame(_run_cell(ctx, init, inits[init], protocol, fraction, seed), columns=RESULT_COLUMNS)
                results = rows if results.empty else pd.concat([results, rows], ignore_index=True)
                _write_results(results, results_path)
                bar.update(1)
    finally:
        torch.set_num_threads(previous_threads)

    keys = [_cell_key(*row) for row in results[CELL_COLUMNS].itertuples(index=False)]
    frame = results[np.array([k in wanted for k in keys], dtype=bool)].reset_index(drop=True)
    write_outputs(frame, out_dir, config.title)
    return frame
