"""Baselines of federated pretraining: centralised (pooled data) and local-only (one site).

Both use the federation's own :class:`~fedvlp.core.train.LocalTrainer` without Flower, run
in ``rounds`` chunks with the same per-round seeding as a federated client, and write
checkpoints in the federated server's format (:func:`~fedvlp.core.checkpoint.save_round`:
``round_NNNN.safetensors`` + JSON state with ``run_config`` and ``config_hash``), so the
sweep loads them like a federated checkpoint, and a stopped run resumes bit for bit.

Compute budget (same as the federated run of the same run config)
-----------------------------------------------------------------
In a federated round every site takes ``local-steps`` optimizer steps and every step draws
one batch from each of the site's sources, so a round processes
``B = local-steps x (number of sources over all sites)`` batches.

- ``central``: all sites' sources of the same kind (same modalities and unpaired text pool)
  are pooled into one dataset, so a hospital's pairs and another's share batches (in-batch
  contrastive negatives included). One step draws one batch from each of the ``G`` pooled
  datasets, and a round takes ``ceil(B / G)`` steps: the same number of batches (forward
  and backward passes) as the federation. With one source per site and one site per kind
  (the demo) that is ``local-steps`` steps per round; with ``S`` sites of the same kind it
  is ``S x local-steps``.
- ``local``: one site alone takes ``local-steps`` steps per round, exactly what it spends in
  the federation.

The optimizer (AdamW) is fresh every round, as at a federated client. REFERS studies
(``vit`` family) are not pooled across sites (their study ids are per manifest): every
source stays its own dataset and ``G`` counts them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import load_latest, save_round
from .config import ConfigError, RunConfig, SiteConfig, list_site_files, load_site, resolve_path
from .data.datasets import SiteDataset
from .data.manifest import ManifestRows, load_source_rows
from .data.studies import StudyDataset
from .data.tokenizer import load_run_tokenizer
from .models import VLPModel, build_model, family_of
from .train import LocalTrainer, SiteData, add_source, load_site_data, resolve_device

__all__ = [
    "PretrainResult",
    "pool_rows",
    "pooled_datasets",
    "pooled_data",
    "steps_per_round",
    "pretrain_central",
    "pretrain_local",
    "MODES",
]

log = logging.getLogger("fedvlp.central")

MODES = ("central", "local")


@dataclass
class PretrainResult:
    """Where a centralised or local-only pretraining left its checkpoints."""

    checkpoint_dir: Path
    last_round: int
    steps_per_round: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _pool_key(rows: ManifestRows) -> tuple[Any, ...]:
    source = rows.source
    return (tuple(sorted(source.modalities)), str(source.unpaired_text_pool or ""), source.pool_report_column)


def pool_rows(parts: Sequence[tuple[str, ManifestRows]]) -> ManifestRows:
    """One :class:`ManifestRows` of several sources of the same kind, in the given order.

    Row ids become ``<site>/<id>`` (ids are only unique within a source); the first source's
    settings (modalities, unpaired text pool) stand for all.
    """
    if not parts:
        raise ValueError("nothing to pool")
    keys = {_pool_key(rows) for _, rows in parts}
    if len(keys) != 1:
        raise ValueError(f"sources of different kinds cannot be pooled: {sorted(keys)}")
    first = parts[0][1]
    ids: list[str] = []
    images: list[Path] | None = [] if first.images is not None else None
    reports: list[str] | None = [] if first.reports is not None else None
    pooled = ManifestRows(first.source, ids, images, reports)
    for site, rows in parts:
        ids.extend(f"{site}/{i}" for i in rows.ids)
        if images is not None:
            images.extend(rows.images or [])
        if reports is not None:
            reports.extend(rows.reports or [])
        pooled.skipped.update(rows.skipped)
        pooled.problems.extend(rows.problems)
    return pooled


def pooled_datasets(
    sites: Sequence[SiteConfig], run: RunConfig, max_len: int, augment: bool = True
) -> list[SiteDataset | StudyDataset]:
    """The training datasets of :func:`pooled_data`."""
    return pooled_data(sites, run, max_len, augment).datasets


def pooled_data(sites: Sequence[SiteConfig], run: RunConfig, max_len: int, augment: bool = True) -> SiteData:
    """The datasets of the centralised baseline: every site's sources, pooled by kind.

    Groups keep the order in which their kind first appears (site files in partition order,
    sources in file order); inside a group rows follow site order.

    Raises
    ------
    ConfigError
        When no source has a usable row.
    """
    tokenizer = load_run_tokenizer(run)
    pools = family_of(run).pools_sources
    groups: dict[tuple[Any, ...], list[tuple[str, ManifestRows]]] = {}
    for site in sites:
        for index, source in enumerate(site.sources):
            rows = load_source_rows(source)
            if not len(rows):
                continue
            key = _pool_key(rows)
            if not pools:
                key = (*key, site.name, index)  # e.g. studies are per manifest: no pooling
            groups.setdefault(key, []).append((site.name, rows))
    data = SiteData([])
    for parts in groups.values():
        add_source(data, pool_rows(parts) if len(parts) > 1 else parts[0][1], run, tokenizer, max_len, augment)
    if not data.datasets:
        raise ConfigError(str(run.sites), "sites", "at least one manifest row that can train (all rows were skipped)")
    return data


def steps_per_round(run: RunConfig, sites: Sequence[SiteConfig], pooled_groups: int) -> int:
    """Central steps per round: ``ceil(local-steps x sources over all sites / pooled groups)``."""
    sources = sum(len(site.sources) for site in sites)
    return int(math.ceil(run.local_steps * sources / max(1, pooled_groups)))


def _run_rounds(
    model: VLPModel,
    trainer: LocalTrainer,
    run: RunConfig,
    out_dir: Path,
    mode: str,
    sites: list[str],
    steps: int,
    on_round: Callable[[dict[str, Any]], None] | None,
) -> PretrainResult:
    checkpoint_dir = out_dir / "checkpoints"
    identity = {"mode": mode, "sites": sites, "steps_per_round": steps}
    start, history = 1, []
    latest = load_latest(checkpoint_dir)
    if latest is not None:
        old = {k: latest.state.get(k) for k in identity}
        if latest.state.get("config_hash") != run.config_hash() or old != identity:
            raise ConfigError(
                str(checkpoint_dir),
                "config_hash",
                f"the same configuration and {mode} pretraining as the checkpoints there "
                f"(hash {latest.state.get('config_hash')}, {old}); use another --out",
                run.config_hash(),
            )
        model.load_state_dict(latest.weights)
        history = list(latest.state.get("history", []))
        start = latest.round + 1
        log.info("Resuming %s pretraining from round %d in %s", mode, latest.round, checkpoint_dir)
    else:
        save_round(
            checkpoint_dir,
            0,
            model.state_dict(),
            {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": [], **identity},
        )
    for round_ in range(start, run.rounds + 1):
        started = time.perf_counter()
        # The client's seeding: a restarted run repeats a round bit for bit.
        result = trainer.train(steps, seed=run.seed * 100_003 + round_)
        record = {
            "round": round_,
            "seconds": time.perf_counter() - started,
            "steps": steps,
            "metrics": {k: float(v) for k, v in result.metrics.items()},
            "counts": result.group_counts,
        }
        history.append(record)
        save_round(
            checkpoint_dir,
            round_,
            model.state_dict(),
            {"config_hash": run.config_hash(), "run_config": run.to_flat(), "history": history, **identity},
        )
        if on_round is not None:
            on_round(record)
    return PretrainResult(checkpoint_dir, max(run.rounds, start - 1), steps, history)


def pretrain_central(
    run: RunConfig,
    out_dir: str | Path,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    steps: int | None = None,
) -> PretrainResult:
    """Centralised pretraining on the pooled data of all site files of ``run.sites``.

    Parameters
    ----------
    run
        The federated run's configuration (recipe, sizes, rounds, local steps, seed, sites).
    out_dir
        Checkpoints go to ``out_dir/checkpoints`` (resumed when they are of this run).
    on_round
        Called with each round's record.
    steps
        Steps per round instead of the matched budget (see the module docstring).

    Returns
    -------
    PretrainResult
    """
    files = list_site_files(run.sites)
    sites = [load_site(f) for f in files]
    model = build_model(run)
    data = pooled_data(sites, run, model.max_text_len)
    datasets = data.datasets
    per_round = steps or steps_per_round(run, sites, len(datasets))
    device = resolve_device(run.device)
    trainer = LocalTrainer(model, data, run, device)
    log.info(
        "central: %d sites pooled into %d datasets (%s), %d steps per round",
        len(sites),
        len(datasets),
        ", ".join(f"{len(d)} rows {sorted(d.modalities)}" for d in datasets),
        per_round,
    )
    return _run_rounds(model, trainer, run, Path(out_dir), "central", [s.name for s in sites], per_round, on_round)


def pretrain_local(
    run: RunConfig,
    site: str | Path,
    out_dir: str | Path,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    steps: int | None = None,
) -> PretrainResult:
    """Local-only pretraining: one site alone, ``local-steps`` steps per round.

    ``site`` is a site file, or the name (``name:`` or file stem) of a site of ``run.sites``.
    The checkpoint's run config names that one site file as ``sites``.
    """
    site_path = _find_site(run, site)
    config = load_site(site_path)
    run = replace(run, sites=str(site_path))
    model = build_model(run)
    data = load_site_data(config, run, model.max_text_len)
    device = resolve_device(config.device if config.device != "auto" else run.device)
    trainer = LocalTrainer(model, data, run, device)
    per_round = steps or run.local_steps
    return _run_rounds(model, trainer, run, Path(out_dir), "local", [config.name], per_round, on_round)


def _find_site(run: RunConfig, site: str | Path) -> Path:
    candidate = resolve_path(str(site))
    if candidate.is_file():
        return candidate
    files = list_site_files(run.sites)
    for path in files:
        if path.stem == str(site) or load_site(path).name == str(site):
            return path
    names = [p.stem for p in files]
    raise ConfigError("--local", "site", f"a site file or one of the sites of {run.sites} ({names})", str(site))
