"""``fedvlp bench --sites N``: peak memory and seconds per round of an N-site simulation.

The sites come from ``fedvlp partition`` of a generated world's image + report pairs (a label
derived from the report text, Dirichlet alpha 1, half pairs / 30% images-only / 20%
reports-only sites), at test size: ``tiny`` models, 32 px, 2 local steps, client sampling
with ``fraction-train``. Peak memory is the resident set of this process and every process
it started (Ray's daemons and actors), sampled every 0.25 s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["sites_bench", "ABNORMAL_WORDS"]

# A report that names one of these is "abnormal": the column the partition skews.
ABNORMAL_WORDS = (
    "nodule",
    "effusion",
    "cardiomegaly",
    "enlarged",
    "pneumothorax",
    "consolidation",
    "device",
    "tube",
    "line",
)


def _labelled_pairs(world: Path, out: Path) -> Path:
    frame = pd.read_csv(world / "hospital_a" / "manifest.csv", dtype=str, keep_default_na=False)
    impression = frame["report"].str.lower().str.split("impression:").str[-1]
    frame["finding"] = [
        "abnormal" if any(w in text and f"no {w}" not in text for w in ABNORMAL_WORDS) else "normal"
        for text in impression
    ]
    frame["image"] = [str((world / "hospital_a" / p).resolve()) for p in frame["image"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return out


def sites_bench(
    sites: int,
    fraction_train: float = 0.1,
    rounds: int = 3,
    rows_per_site: int = 16,
    seed: int = 0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Partition a generated world into ``sites`` sites and simulate ``rounds`` rounds.

    Everything is written under ``workdir`` (default: a temporary folder, removed afterwards).

    Returns
    -------
    dict
        ``name -> value`` figures: sites by kind, nodes trained per round, seconds per round
        (first round apart) and the simulation's peak resident memory.
    """
    from fedvlp.core.config import RunConfig
    from fedvlp.core.data.partition import PartitionSpec, partition_manifest
    from fedvlp.core.data.synthetic import WorldSpec, generate_world
    from fedvlp.core.runtime import offline_env

    from .bench import simulation_figures

    offline_env(threads_per_client=1)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fedvlp-bench-sites-") as tmp:
            return sites_bench(sites, fraction_train, rounds, rows_per_site, seed, Path(tmp))
    root = Path(workdir)
    world = root / "world"
    generate_world(
        world, WorldSpec(n_pairs=rows_per_site * sites, n_images=8, n_reports=8, n_labeled=40, seed=seed, size_a=64)
    )
    manifest = _labelled_pairs(world, root / "pairs" / "manifest.csv")
    spec = PartitionSpec(
        sites=sites, by="finding", alpha=1.0, pairs_share=0.5, images_only_share=0.3, reports_only_share=0.2, seed=seed
    )
    partition = partition_manifest(manifest, root / "sites", spec)
    run = RunConfig(
        model_size="tiny",
        image_size=32,
        rounds=rounds,
        local_steps=2,
        batch_size=8,
        fraction_train=fraction_train,
        min_train_nodes=1,
        sites=str(partition.folder),
        out_dir=str(root / "run"),
        seed=seed,
    )
    figures: dict[str, Any] = {
        "sites": sites,
        **{f"sites-{k}": partition.kinds.count(k) for k in ("pairs", "images", "reports")},
        "fraction-train": fraction_train,
        "rounds": rounds,
    }
    figures.update(simulation_figures(run))
    from fedvlp.core.checkpoint import load_latest

    latest = load_latest(Path(run.out_dir) / "checkpoints")
    history = latest.state.get("history", []) if latest else []
    figures["trained-per-round"] = [r["replies"] for r in history]
    return figures
