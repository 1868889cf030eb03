"""Which of the keep-the-pretrained-start settings matter? A federated ablation on sites/cxr.

Every variant is a real simulated federation of the image sites of the ``sites/cxr`` study
(NIH images and the Kermany hospital's unlabelled training images; the paired and report sites
are left out to afford ten runs on 2 cores) from the packaged ImageNet EfficientNet-Lite0, at
128 px, with the study's settings except the one named. Variants with ``_mode = "local"`` are the
Kermany hospital's local-only pretraining instead (``fedvlp pretrain --local``: its images alone,
the steps it takes in the federation); ``_sites = "small"`` gives that hospital the images of a
sixth of its patients, and ``_sites = "peers"`` federates that small hospital with three pediatric
peers holding the other patients' images (``"peers-only"``: without NIH). Each variant's image encoder is then
scored by linear probes (or, with ``--protocol finetune``, fine-tuning) on *validation* data
only: the Kermany training split, split again by patient into probe-train and probe-validation
(weight-decay choice, early stopping), scored on the Kermany validation split. The Kermany test
split is never read. Prints one markdown table row per variant (mean AUC +- std over seeds at
1%, 10% and 100% of the probe-train labels). ``--set`` changes sweep knobs (as ``fedvlp sweep
--set``), e.g. ``ft_trainable_stages=3 ft_head_init=probe`` for the study's fine-tuning with
LP-FT heads; every setting scores into its own folders.

Usage (after ``fedvlp demo --sites sites/cxr --out runs/cxr-study`` made ``runs/cxr-study/split``)::

    python studies/ablate_cxr.py --split runs/cxr-study/split --out runs/ablation [--rounds 3] [--seeds 5] \
        [--only NAME ...] [--baseline-sizes 128 224] [--probe-runs NAME=DIR ...] \
        [--protocol finetune] [--set ft_trainable_stages=3 ...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

# The reference: the study's first settings (sites/cxr/federation.toml [general-pretrained]) with the
# image sites only. The study now is "all stages, speed, 50 local steps" with --rounds 3.
STUDY = {
    "image-init": "efficientnet-lite0",
    "image-size": 128,
    "local-steps": 25,
    "lr": 0.001,
    "image-lr-scale": 0.1,
    "warmup-steps": 5,
    "image-bn": "frozen",
    "freeze-image-stages": 5,
    "weight-distill": 1.0,
    "weight-mim": 0.0,
}
# The speed options (NHWC convolutions, bf16 autocast where the CPU computes it natively),
# alone and with every stage training
_FAST: dict[str, Any] = {"channels-last": True, "cpu-autocast": "auto"}
_ALL_FAST: dict[str, Any] = {**_FAST, "freeze-image-stages": 0}
VARIANTS: dict[str, dict[str, Any]] = {
    "first study settings (5 stages locked, fp32)": {},
    "BatchNorm statistics re-estimated (image-bn=train)": {"image-bn": "train"},
    "all stages train (freeze-image-stages=0)": {"freeze-image-stages": 0},
    "encoder at the heads' rate (image-lr-scale=1)": {"image-lr-scale": 1.0},
    "persistent optimizer": {"persistent-optimizer": True},
    "masked regeneration instead of distillation": {"weight-distill": 0.0, "weight-mim": 1.0},
    "FedProx mu=0.01": {"prox-mu": 0.01},
    "representation anchor weight 1": {"weight-anchor": 1.0},
    "without the Kermany hospital's images": {"_sites": "nih"},
    # What the hospital gets without the federation (``_mode``: local-only pretraining of its
    # images, the compute it spends in the federation), with all its images or a sixth of its patients'.
    "local-only Kermany hospital (all its images; all stages, speed, 75 local steps)": {
        **_ALL_FAST,
        "local-steps": 75,
        "_mode": "local",
    },
    "federated small hospital (a sixth of its patients; all stages, speed, 75 local steps)": {
        **_ALL_FAST,
        "local-steps": 75,
        "_sites": "small",
    },
    "local-only small hospital (a sixth of its patients; all stages, speed, 75 local steps)": {
        **_ALL_FAST,
        "local-steps": 75,
        "_sites": "small",
        "_mode": "local",
    },
    # The same small hospital federated with pediatric peers: the rest of its population's
    # patients, split by patient into PEER_SITES hospitals (with or without the NIH site).
    "small hospital + 3 pediatric peers + NIH, federated (all stages, speed, 75 local steps)": {
        **_ALL_FAST,
        "local-steps": 75,
        "_sites": "peers",
    },
    # NIH holds 1,530 of the 2,726 images: no site more than a fifth of a key's mean (equal shares)
    "max-site-weight 0.2: small hospital + 3 pediatric peers + NIH (all stages, speed, 75 local steps)": {
        **_ALL_FAST,
        "local-steps": 75,
        "max-site-weight": 0.2,
        "_sites": "peers",
    },
    "small hospital + 3 pediatric peers, federated (all stages, speed, 75 local steps)": {
        **_ALL_FAST,
        "local-steps": 75,
        "_sites": "peers-only",
    },
    "int8 uploads + delta-int8 downloads": {"upload-compression": "int8", "download-compression": "delta-int8"},
    "all stages train, channels-last + bf16 autocast": _ALL_FAST,
    "5 stages locked, channels-last + bf16 autocast": _FAST,
    "192 px, channels-last + bf16 autocast": {**_FAST, "image-size": 192},
    "all stages, speed, layer-wise decay 0.7": {**_ALL_FAST, "layer-decay": 0.7},
    "all stages, speed, teacher momentum 0.99": {**_ALL_FAST, "distill-ema": 0.99},
    "all stages, speed, 50 local steps": {**_ALL_FAST, "local-steps": 50},
    # with --rounds 2 and --rounds 1: the same 150 steps in fewer, longer rounds
    "all stages, speed, 75 local steps": {**_ALL_FAST, "local-steps": 75},
    "all stages, speed, 150 local steps": {**_ALL_FAST, "local-steps": 150},
    # with --rounds 2: the views the image-only sites distil between (image-only-augment)
    "all stages, speed, 75 local steps, strong views": {**_ALL_FAST, "local-steps": 75, "image-only-augment": "strong"},
    "all stages, speed, 75 local steps, MoCo-CXR views": {
        **_ALL_FAST,
        "local-steps": 75,
        "image-only-augment": "moco-cxr",
    },
}


def _slug(name: str, limit: int | None = 40) -> str:
    """A folder name for a variant or run: its name in lower case, other characters as dashes, cut at ``limit``."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:limit]


KERMANY_SITE = "kermany_train_images"  # the Kermany hospital's site in the ablation's federations
# The "small" hospital: patients whose split hash (core.evaluation.data.patient_split, the split's
# salt) is below 0.1. The study's train split holds the patients below 0.6, so this is a sixth of
# them: 167 of 990 patients, 205 of 1,196 images.
SMALL_FRACTION = 0.1
PEER_SITES = 3  # pediatric hospitals that share the other training-split patients ("peers")


def _sites(out: Path, split: Path, which: str) -> Path:
    """A folder with the NIH image site, plus the Kermany hospital's unlabelled images.

    ``which``: ``"all"`` (its whole training split), ``"small"`` (the images of a sixth of its
    training-split patients, a patient-level split of ``train.csv``) or ``"nih"`` (none).
    ``"peers"`` is ``"small"`` plus :data:`PEER_SITES` pediatric hospitals holding the other
    patients (split by patient), ``"peers-only"`` the same without the NIH site.
    """
    import pandas as pd
    import yaml

    from fedvlp.core.config import load_site, project_root
    from fedvlp.core.evaluation.data import patient_split, split_manifest

    folder = out / f"sites-{which}"
    folder.mkdir(parents=True, exist_ok=True)
    labeled = project_root().parent / "shared" / "data" / "cxr" / "kermany_labeled"  # where the split's images are

    def image_site(name: str, manifest: str, id_column: str, image_column: str, roots: list[str], file: str) -> None:
        """Write ``folder/<file>.yaml``: site ``name`` with one images source (``roots``: its image folders)."""
        source = {"manifest": manifest, "kind": "images", "id_column": id_column, "image_column": image_column}
        site: dict[str, Any] = {"name": name, "sources": [source], **({"image_roots": roots} if roots else {})}
        (folder / f"{file}.yaml").write_text(yaml.safe_dump(site))

    def kermany_site(name: str, manifest: Path) -> None:
        image_site(name, str(manifest.resolve()), "sample_id", "image", [str(labeled.resolve())], name)

    if which != "peers-only":
        nih = load_site(project_root() / "sites" / "cxr" / "nih_images.yaml")
        source = nih.sources[0]
        image_site(nih.name, str(source.manifest), source.id_column, source.image_column, [], "nih_images")
    manifest = split / "train.csv"
    if which in ("small", "peers", "peers-only"):
        subset = out / "kermany-small"
        if not (subset / "train.csv").is_file():
            split_manifest(
                manifest,
                subset,
                by="patient_id",
                fractions=(SMALL_FRACTION, 1 - SMALL_FRACTION, 0.0),
                image_column="image",
                id_column="sample_id",
            )
        manifest = subset / "train.csv"
    if which in ("peers", "peers-only"):
        # The small hospital's other patients, split by patient into the peers. Another salt than
        # the split's: the rows came out of a split by the same hash (core.evaluation.data.patient_split).
        others = pd.read_csv(subset / "val.csv", dtype=str)
        names = [f"peer{i + 1}" for i in range(PEER_SITES)]
        part = patient_split(others["patient_id"].to_numpy(), (1.0,) * PEER_SITES, names, salt="fedvlp-peers")
        for i, name in enumerate(names):
            peer = subset / f"{name}.csv"  # beside val.csv: its relative image paths stay right
            if not peer.is_file():
                others[part == name].to_csv(peer, index=False)
            kermany_site(f"pediatric_peer_{i + 1}", peer)
    if which != "nih":
        kermany_site(KERMANY_SITE, manifest)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=Path, required=True, help="the study's split folder (train.csv, val.csv)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="run only these variants (by name)")
    parser.add_argument(
        "--baseline-sizes",
        type=int,
        nargs="*",
        default=[128],
        help="image sizes at which to score ImageNet EfficientNet-Lite0 without federated training",
    )
    parser.add_argument(
        "--probe-runs",
        nargs="*",
        default=[],
        metavar="NAME=DIR",
        help="also score finished pretraining runs (a run folder or its checkpoints) with the same probes",
    )
    parser.add_argument("--protocol", choices=["linear", "finetune"], default="linear", help="how inits are scored")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="sweep knobs, as fedvlp sweep --set")
    args = parser.parse_args()

    from fedvlp.core.central import pretrain_local
    from fedvlp.core.config import RunConfig
    from fedvlp.core.evaluation import SweepConfig
    from fedvlp.core.evaluation.data import split_manifest
    from fedvlp.core.runtime import offline_env
    from fedvlp.server.cli.simulation import simulate
    from fedvlp.server.cli.sweep_cli import InitSpec, parse_init, sweep_and_report, sweep_settings

    offline_env(threads_per_client=1)
    out = args.out.resolve()
    probe_split = out / "probe-split"
    # The probes' labelled rows: the study's train split only. With the split's own salt every row
    # lands in train.csv here, so the sweep splits them into probe-train and probe-validation by its
    # own patient hash ("hash+test manifest" in its log); kept as is so earlier probe folders stay valid.
    if not (probe_split / "train.csv").is_file():
        split_manifest(
            args.split / "train.csv",
            probe_split,
            by="patient_id",
            fractions=(0.75, 0.25, 0.0),
            image_column="image",
            id_column="sample_id",
        )
    try:
        knobs = sweep_settings(args.set)
    except ValueError as err:
        parser.error(str(err))
    config = SweepConfig(
        fractions=(0.01, 0.1, 1.0),
        seeds=tuple(range(args.seeds)),
        protocols=(args.protocol,),
        num_threads=2,
        **knobs,
    )
    # Scores of other protocols or knobs go to folders of their own (a sweep folder refuses other settings).
    scoring = "" if args.protocol == "linear" and not knobs else "-" + _slug(" ".join([args.protocol, *args.set]), None)

    def probe(spec: InitSpec, folder: Path, overrides: dict[str, Any]) -> str:
        """Scores of one init on the validation split: ``mean +- std`` cells at 1%, 10%, 100%."""
        results = sweep_and_report(
            [spec],
            folder.with_name(folder.name + scoring),
            probe_split / "trainval.csv",
            ["label_pneumonia_vs_normal"],
            config,
            test_path=args.split / "val.csv",
            id_column="sample_id",
            overrides=overrides,
            extras=(),
        )
        auc = results[(results.metric == "auc") & (results["class"] == "mean")]
        cells = auc.groupby("label_fraction")["value"].agg(["mean", "std"])
        return " | ".join(f"{cells.loc[f, 'mean']:.3f} +- {cells.loc[f, 'std']:.3f}" for f in (0.01, 0.1, 1.0))

    rows = []
    for name, overrides in VARIANTS.items():
        # every variant unless --only names some, or --probe-runs alone asks for finished runs
        if (name not in args.only) if args.only is not None else bool(args.probe_runs):
            continue
        slug = _slug(name)
        sites = _sites(out, args.split, overrides.get("_sites", "all"))
        flat = {
            **STUDY,
            **{k: v for k, v in overrides.items() if not k.startswith("_")},
            "rounds": args.rounds,
            "sites": str(sites),
            "out-dir": str(out / slug),
        }
        started = time.perf_counter()
        if overrides.get("_mode") == "local":
            pretrain_local(RunConfig.from_flat(flat), KERMANY_SITE, flat["out-dir"])
        else:
            simulate(RunConfig.from_flat(flat))
        seconds = time.perf_counter() - started
        cells = probe(InitSpec(slug, str(out / slug)), out / f"probe-{slug}", {})
        rows.append(f"| {name} | {cells} | {seconds / 60:.1f} |")
        print(rows[-1], flush=True)
    for item in args.probe_runs:
        try:
            run = parse_init(item)  # NAME=DIR, as fedvlp sweep's --init
        except ValueError as err:
            parser.error(f"--probe-runs: {err}")
        slug = _slug(run.name)
        cells = probe(InitSpec(slug, str(Path(run.spec).resolve())), out / f"probe-run-{slug}", {})
        rows.append(f"| {run.name} | {cells} | (not run here) |")
        print(rows[-1], flush=True)
    baselines = [
        f"| ImageNet EfficientNet-Lite0 at {size} px, no federated training | "
        + probe(
            InitSpec(f"general-pretrained@{size}", f"general-pretrained@{size}"),
            out / f"probe-imagenet-{size}",
            {"image-size": size},
        )
        + " | 0 |"
        for size in args.baseline_sizes
    ]
    print()
    print(
        f"Validation AUC ({args.protocol} {' '.join(args.set)}, {args.seeds} seeds, mean +- std), {args.rounds} rounds "
        "x 25 local steps unless the variant names another count:"
    )
    print("| variant | 1% | 10% | 100% | pretraining minutes |")
    print("|---|---|---|---|---|")
    print("\n".join(baselines))
    print("\n".join(rows))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
