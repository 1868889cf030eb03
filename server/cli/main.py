"""The ``fedvlp`` command: demo, simulation, benchmark and operator helpers.

It lives with the server because it is the operator's tool; site-side subcommands call
``fedvlp.core`` only, and simulations load the ClientApp by reference (see simulation.py).

Importing this module, parsing the arguments and checking them (:func:`check_args`) import
neither torch nor Flower, Ray or transformers: an argument mistake is answered in a fraction
of a second, before anything is written. The command functions import what they need.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "check_args", "parse_run_config", "UsageError"]

DESCRIPTION = (
    "fedvlp: federated vision-language pretraining for chest X-rays (demo, simulation, sweeps, operator tools)"
)


class UsageError(ValueError):
    """An argument that cannot work (a missing input, an output that is a file, a bad number)."""


def _demo_run_config(args: argparse.Namespace, out: Path) -> Any:
    from fedvlp.core.config import RunConfig, project_root

    base = RunConfig(out_dir=str(out / "federated"), sites=str(project_root() / "sites" / "demo"))
    if args.quick:
        base = base.replace(model_size="tiny", rounds=2, local_steps=5, batch_size=16, image_size=32)
    changes = {
        k: v
        for k, v in {"rounds": args.rounds, "local_steps": args.local_steps, "recipe": args.recipe}.items()
        if v is not None
    }
    return base.replace(**changes) if changes else base


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate (or reuse) the demo world, pretrain federated in simulation, then sweep."""
    import torch

    from fedvlp.core.checkpoint import load_latest
    from fedvlp.core.data.synthetic import FINDINGS, WorldSpec, generate_world
    from fedvlp.core.data.validate import skipped_in_history
    from fedvlp.core.evaluation import SweepConfig, format_table, load_labeled, run_sweep
    from fedvlp.core.models import BackboneFactory, backbone_state, build_model
    from fedvlp.core.runtime import offline_env, state_dir
    from fedvlp.server.app import round_summary

    from .progress import round_bar
    from .simulation import simulate

    if args.sites:  # checked by _check_demo
        from .pipeline import run_study

        run_study(
            args.sites,
            args.out,
            baselines=False if args.baselines is None else (args.baselines or True),
            quick=args.quick,
            jobs=args.jobs,
            seeds=args.seeds,
            fractions=tuple(args.fractions) if args.fractions else None,
            protocols=tuple(args.protocols) if args.protocols else None,
            gpus_per_client=args.gpus_per_client,
            early_sweep=args.early_sweep,
        )
        return 0
    started = time.perf_counter()
    offline_env(threads_per_client=1)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = WorldSpec.quick() if args.quick else WorldSpec()
    world = Path(args.data).resolve() if args.data else state_dir() / ("demo-quick" if args.quick else "demo")
    print(f"[1/3] demo world: {world}")
    manifests = generate_world(world, spec, progress=True)
    os.environ["FEDVLP_DEMO_DATA"] = str(world)

    run = _demo_run_config(args, out)
    if args.dicom:  # hospital_b trains from a DICOM export of its images, imported as a site would
        from fedvlp.core.config import load_site
        from fedvlp.core.data.dicom_demo import dicom_demo_sites
        from fedvlp.core.data.validate import format_report, validate_site

        site_dir, imported = dicom_demo_sites(world, Path(run.sites), out / "dicom")
        print(f"      DICOM: {imported.summary()}")
        site = load_site(site_dir / "hospital_b.yaml")
        print(format_report(site, validate_site(site, workers=1)))
        run = run.replace(sites=str(site_dir))
    print(
        f"[2/3] federated pretraining: recipe={run.recipe} model={run.model_size} rounds={run.rounds} "
        f"local-steps={run.local_steps} (3 simulated hospitals)"
    )
    print(f"      model parameters: {sum(p.numel() for p in build_model(run).parameters()):,}")
    rounds: list[dict[str, Any]] = []
    pretrain_started = time.perf_counter()
    # where each site trains and the round lines print above the bar
    with round_bar(run.rounds, Path(run.out_dir) / "checkpoints") as advance:

        def on_round(record: dict[str, Any]) -> None:
            rounds.append(record)
            advance(record)

        simulate(run, on_round=on_round, gpus_per_client=args.gpus_per_client)
    pretrain_seconds = time.perf_counter() - pretrain_started
    final = load_latest(Path(run.out_dir) / "checkpoints")
    assert final is not None

    print("[3/3] label-efficiency sweep (linear probe and fine-tune, random vs federated)")
    labels = [f"label_{f}" for f in FINDINGS]
    labeled = load_labeled(manifests["labeled"], labels, run.image_size)
    inits = {"random": None, "federated": backbone_state(run, final.weights)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fractions = tuple(args.fractions) if args.fractions else ((0.1, 1.0) if args.quick else (0.01, 0.1, 1.0))
    title = f"fedvlp demo ({run.recipe}): random vs federated pretraining (synthetic world)"
    sweep = SweepConfig(
        seeds=tuple(range(3 if args.seeds is None else args.seeds)),
        fractions=fractions,
        protocols=tuple(args.protocols or ("linear", "finetune")),
        device=device,
        title=title,
    )
    results = run_sweep(inits, BackboneFactory(run), labeled, out, sweep, progress=True)

    history = final.state.get("history", [])
    summary = round_summary(history)
    summary.update(
        {
            "wall-seconds": time.perf_counter() - started,
            "pretrain-seconds": pretrain_seconds,
            "final-round": final.round,
        }
    )
    summary["skipped"] = skipped_in_history(history)  # rows the sites skipped, by reason
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(format_table(results))
    print()
    for key, value in summary.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"outputs: {out}/results.csv, report.md, auc_vs_labels.png, checkpoints in {run.out_dir}/checkpoints")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write the synthetic demo world."""
    from fedvlp.core.data.synthetic import WorldSpec, generate_world

    spec = WorldSpec.quick(seed=args.seed) if args.quick else WorldSpec(seed=args.seed)
    for name, path in generate_world(Path(args.out), spec, progress=True).items():
        print(f"{name}: {path}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Federated pretraining only, in the simulation engine, with run-config overrides."""
    from fedvlp.core.runtime import offline_env

    from .progress import round_bar
    from .simulation import simulate

    run = args.run if "run" in vars(args) else _check_simulate(args)
    offline_env(threads_per_client=max(1, int(args.cpus_per_client)))
    # The bar only: the server logs every round ("Round i/N: ...") at INFO already.
    with round_bar(run.rounds, Path(run.out_dir) / "checkpoints") as on_round:
        simulate(
            run,
            cpus_per_client=args.cpus_per_client,
            gpus_per_client=args.gpus_per_client,
            on_round=on_round,
            ray_address=args.ray_address,
        )
    return 0


def parse_run_config(items: list[str] | None, origin: str = "--run-config") -> Any:
    """``key=value`` items -> a checked :class:`~fedvlp.core.config.RunConfig` (no heavy import).

    Raises
    ------
    ConfigError
        Naming the key and what was expected.
    """
    from fedvlp.core.config import RunConfig

    from .run_config_args import run_overrides

    return RunConfig.from_flat(run_overrides(items, origin), origin=origin)


def cmd_bench(args: argparse.Namespace) -> int:
    """Print speed, size and memory figures, one ``name: value`` per line."""
    from .bench import run_bench, site_step_seconds

    if args.deployment:
        from .bench_deployment import deployment_figures

        figures = deployment_figures(args.rounds, args.modes)
    elif args.sites:
        from .bench_sites import sites_bench

        figures = sites_bench(args.sites, fraction_train=args.fraction_train, rounds=args.rounds)
    else:
        figures = site_step_seconds(args.site_steps, args.steps) if args.site_steps else run_bench(quick=args.quick)
    for name, value in figures.items():
        print(f"{name}: {value}")
    return 0


def cmd_bench_loader(args: argparse.Namespace) -> int:
    """Print images/s of fedvlp's loading path against plain PIL decode + resize."""
    from .bench_loader import print_figures

    return print_figures(args)


def cmd_flwr_config(args: argparse.Namespace) -> int:
    """Write Flower's connection file ($FLWR_HOME/config.toml) for this project, or stop its local SuperLink."""
    from fedvlp.core.runtime import offline_env

    from .flwr_config import federation_config_path, write_flwr_config

    offline_env()
    if args.stop:
        from .flwr_config import stop_local_superlink

        stopped = stop_local_superlink(Path(os.environ["FLWR_HOME"]))
        print(
            f"stopped the local SuperLink (pid {', '.join(map(str, stopped))}) and its SuperExec"
            if stopped
            else f"no local SuperLink of {os.environ['FLWR_HOME']} is running"
        )
        return 0
    root = Path(args.root_certificates).resolve() if args.root_certificates else None
    share = args.gpus_per_client
    if share is None:  # only now pay for importing torch: it counts the GPUs
        import torch

        from fedvlp.core.runtime import default_gpu_share

        gpus = torch.cuda.device_count()
        share = default_gpu_share(gpus, args.num_supernodes)
        print(
            f"{gpus} GPU visible: each of {args.num_supernodes} virtual SuperNodes gets {share:g} GPU"
            if gpus
            else "no GPU visible: virtual SuperNodes train on CPU"
        )
    home = Path(os.environ["FLWR_HOME"])
    path = write_flwr_config(
        home,
        num_supernodes=args.num_supernodes,
        superlink=args.superlink,
        root_certificates=root,
        gpus_per_client=share,
    )
    print(f"wrote {path} and {federation_config_path(home)}")
    print(f"export FLWR_HOME={home}")
    print(f"flwr run . local-sim --federation-config {federation_config_path(home)} --stream")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    """Create the federation's CA and the SuperLink's TLS certificate."""
    from .operator import make_certificates

    try:
        files = make_certificates(
            Path(args.out),
            args.server_address or [],
            days=args.days,
            overwrite=args.force,
            ca_key_dir=Path(args.ca_key_out) if args.ca_key_out else None,
        )
    except (ValueError, OSError) as err:  # an existing file, a symlink, a bad address: one line, no traceback
        print(f"fedvlp certs: {err}", file=sys.stderr)
        return 2
    print(f"CA certificate (SuperNodes, flwr): {files.ca_cert}")
    print(f"CA key (keep offline):             {files.ca_key}")
    print(f"SuperLink certificate and key:     {files.server_cert} {files.server_key}")
    return 0


def cmd_node_keys(args: argparse.Namespace) -> int:
    """Create one ECDSA key pair per hospital for SuperNode authentication."""
    from .operator import make_node_keys

    try:
        made = make_node_keys(Path(args.out), args.names, overwrite=args.force)
    except (ValueError, OSError) as err:  # an existing file, a symlink, a bad name: one line, no traceback
        print(f"fedvlp node-keys: {err}", file=sys.stderr)
        return 2
    for files in made:
        print(f"{files.name}: register {files.public_key}; SuperNode --auth-supernode-private-key {files.private_key}")
    return 0


def cmd_validate_site(args: argparse.Namespace) -> int:
    """Read every row and open every image of a site; print counts and problems."""
    from fedvlp.core.config import load_site
    from fedvlp.core.data.validate import format_report, validate_site

    site = load_site(args.site)
    reports = validate_site(site, workers=args.workers)
    print(format_report(site, reports, max_problems=args.max_problems))
    return 0 if any(r.usable for r in reports) else 1


def cmd_build_vocab(args: argparse.Namespace) -> int:
    """Train a WordPiece vocabulary on the reports of site files."""
    from fedvlp.core.config import load_site
    from fedvlp.core.data.manifest import load_source_rows
    from fedvlp.core.data.tokenizer import build_vocab

    texts: list[str] = []
    for path in args.sites:
        for source in load_site(path).sources:
            rows = load_source_rows(source)
            texts.extend(rows.reports or [])
    if not texts:
        print("fedvlp: no report text in these site files", file=sys.stderr)
        return 2
    vocab = build_vocab(texts, args.out, vocab_size=args.vocab_size)
    print(
        f"wrote {vocab} ({len(vocab.read_text().splitlines())} tokens from {len(texts)} reports); use --run-config "
        f"tokenizer='\"{args.out}\"'"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Turn a public dataset layout (or any CSV + column mapping) into a site manifest."""
    from fedvlp.core.data.importers import import_layout, parse_mapping, site_yaml

    options: dict[str, Any] = {}
    for name in (
        "uncertain",
        "reports",
        "images",
        "labeler",
        "patient_pattern",
        "min_label_count",
        "report_key",
        "report_key_column",
        "report_column",
        "salt_file",
        "modalities",
    ):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    for name in ("no_reports", "absolute_paths"):
        if getattr(args, name):
            options[name] = True
    if args.map or args.map_file:
        options["mapping"] = parse_mapping(args.map, Path(args.map_file) if args.map_file else None)
    result = import_layout(args.layout, args.src, args.out, **options)
    print(result.summary())
    for problem in result.problems[: args.max_problems]:
        print(f"  problem: {problem}")
    name = args.site_name or Path(args.out).resolve().parent.name or "imported"
    if args.site_out:
        site = Path(args.site_out)
        site.parent.mkdir(parents=True, exist_ok=True)
        site.write_text(site_yaml(result, name, site), encoding="utf-8")
        print(f"wrote site file {site} (check it with: fedvlp validate-site {site})")
    else:
        print("site file (save it, or pass --site-out):")
        print(site_yaml(result, name))
    return 0 if result.rows else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """Label-efficiency sweep over inits x protocols x label fractions x seeds (docs/evaluation.md)."""
    from .sweep_cli import run_sweep_command

    return run_sweep_command(args)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Centralised (pooled) or local-only pretraining: the federated run's baselines."""
    from .sweep_cli import run_pretrain_command

    return run_pretrain_command(args)


def cmd_split(args: argparse.Namespace) -> int:
    """Patient-level train/val/test manifests of a labelled manifest."""
    from .sweep_cli import run_split_command

    return run_split_command(args)


def cmd_export(args: argparse.Namespace) -> int:
    """A checkpoint's encoders in torchvision / timm / Hugging Face formats with a model card."""
    from fedvlp.core.export import export_checkpoint
    from fedvlp.core.runtime import offline_env

    offline_env()
    result = export_checkpoint(args.checkpoint, args.out, force=args.force)
    print(
        f"exported round {result.meta['source']['round']} of {result.meta['source']['checkpoint']} to {result.out}: "
        f"{', '.join(result.files)}"
    )
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    """One labelled manifest -> N site files with a Dirichlet label skew and a modality mix."""
    from fedvlp.core.data.partition import PartitionSpec, partition_manifest

    spec = PartitionSpec(
        sites=args.sites,
        by=args.by,
        alpha=args.dirichlet,
        pairs_share=args.pairs_share,
        images_only_share=args.images_only_share,
        reports_only_share=args.reports_only_share,
        seed=args.seed,
        min_rows=args.min_rows,
        id_column=args.id_column,
        image_column=args.image_column,
        report_column=args.report_column,
        patient_column=args.patient_column,
    )
    result = partition_manifest(args.manifest, args.out, spec)
    print(result.summary())
    print(f"simulate them: fedvlp simulate --run-config sites='\"{result.folder}\"' fraction-train=0.1")
    return 0


# ------------------------------------------------------------------ argument checks
# They run in main() after parsing and before the command imports torch or Flower, so that a
# mistake costs a fraction of a second and leaves nothing behind (no --out folder, no world).


def _input(value: str | None, flag: str, kind: str = "any") -> None:
    """``value`` must exist (``kind``: any, file or dir) when given."""
    if value is None:
        return
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"{flag} {value}: no such file or folder")
    if kind == "file" and not path.is_file():
        raise UsageError(f"{flag} {value}: expected a file, got a folder")
    if kind == "dir" and not path.is_dir():
        raise UsageError(f"{flag} {value}: expected a folder, got a file")


def _out_folder(value: str | None, flag: str) -> None:
    """An output folder may exist (runs resume) but must not be a file, nor sit under one."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value}: exists and is not a folder (choose a new or existing folder)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {value}: {parent} is a file, not a folder")
            break


def _at_least(value: float | None, flag: str, low: float, *, above: bool = False) -> None:
    if value is not None and (value <= low if above else value < low):
        raise UsageError(f"{flag} {value}: expected a number {'>' if above else '>='} {low:g}")


def _gpu_share(value: float | None, flag: str = "--gpus-per-client") -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise UsageError(f"{flag} {value}: expected a share of one GPU between 0 and 1 (e.g. 0.5: two clients per GPU)")


def _fractions(values: list[float] | None, flag: str = "--fractions") -> None:
    for value in values or []:
        if not 0.0 < value <= 1.0:
            raise UsageError(f"{flag} {value}: expected label fractions in (0, 1], e.g. 0.01 0.1 1")


def _check_demo(args: argparse.Namespace) -> None:
    _out_folder(args.out, "--out")
    _out_folder(args.data, "--data")
    _input(args.sites, "--sites", "dir")
    if args.dicom and args.sites:
        raise UsageError(
            "--dicom: only for the synthetic world (without --sites); import DICOM sites with `fedvlp import dicom`"
        )
    if args.baselines is not None and not args.sites:
        raise UsageError("--baselines: only with --sites (the synthetic demo has no baseline runs)")
    for flag in ("rounds", "local_steps", "seeds", "jobs"):
        _at_least(getattr(args, flag), f"--{flag.replace('_', '-')}", 1)
    _fractions(args.fractions)
    _gpu_share(args.gpus_per_client)
    if not args.sites:  # the recipe and step counts as the run will see them
        from fedvlp.core.config import ConfigError

        try:
            _demo_run_config(args, Path(args.out))
        except ConfigError as err:  # name the flag the user typed, not RunConfig's key
            raise UsageError(
                f"--{err.key} {getattr(args, err.key.replace('-', '_'), '')}: expected {err.expected}"
            ) from err


def _check_simulate(args: argparse.Namespace) -> Any:
    from .simulation import validate_sites  # light: Flower is imported by simulate() only

    _at_least(args.cpus_per_client, "--cpus-per-client", 0, above=True)
    _gpu_share(args.gpus_per_client)
    run = parse_run_config(args.run_config)
    validate_sites(run)  # a bad site file: one line and exit 2, before anything is set up
    args.run = run
    return run


def _check_flwr_config(args: argparse.Namespace) -> None:
    _at_least(args.num_supernodes, "--num-supernodes", 1)
    _input(args.root_certificates, "--root-certificates", "file")
    _gpu_share(args.gpus_per_client)


# Inputs that must exist and output folders that must not be files, per command.
_INPUTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "validate-site": (("site", "SITE", "file"),),
    "import": (
        ("src", "SRC", "any"),
        ("reports", "--reports", "any"),
        ("map_file", "--map-file", "file"),
        ("images", "--images", "dir"),
    ),
    "export": (("checkpoint", "CHECKPOINT", "any"),),
    "partition": (("manifest", "MANIFEST", "file"),),
    "split": (("manifest", "MANIFEST", "file"),),
    "sweep": (("labeled", "--labeled", "file"), ("test", "--test", "file"), ("queries", "--queries", "file")),
    "bench": (("site_steps", "--site-steps", "dir"),),
}
_OUT_FOLDERS: dict[str, tuple[str, ...]] = {
    "generate-demo": ("out",),
    "build-vocab": ("out",),
    "certs": ("out", "ca_key_out"),
    "node-keys": ("out",),
    "sweep": ("out",),
    "pretrain": ("out",),
    "split": ("out",),
    "export": ("out",),
    "partition": ("out",),
}
_CHECKS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "demo": _check_demo,
    "simulate": _check_simulate,
    "flwr-config": _check_flwr_config,
}


def check_args(args: argparse.Namespace) -> None:
    """Check parsed arguments without importing torch, Flower, Ray or transformers.

    Raises
    ------
    UsageError
        A missing input, an output folder that is a file, a number out of range.
    ConfigError
        A ``--run-config`` key or value, or a site file, that the run would refuse.
    """
    for name, flag, kind in _INPUTS.get(args.command, ()):
        _input(getattr(args, name, None), flag, kind)
    if args.command == "build-vocab":
        for site in args.sites:
            _input(site, "SITES", "file")
    for name in _OUT_FOLDERS.get(args.command, ()):
        _out_folder(
            getattr(args, name, None),
            f"--{name.replace('_', '-')}" if name != "out" or args.command != "generate-demo" else "OUT",
        )
    if args.command in _CHECKS:
        _CHECKS[args.command](args)


_GPU_HELP = (
    "GPU share of each virtual client (0.5: two per GPU; 0: train on CPU). "
    "Default: GPUs / sites, at most 1, when GPUs are visible, else 0"
)


def cmd_report(args: argparse.Namespace) -> int:
    """Draw a run's per-site curves (site_metrics.jsonl) into one PNG per metric family."""
    from .run_report import plot_run

    try:
        report = plot_run(args.run, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"fedvlp report: {err}", file=sys.stderr)
        return 2
    sites = sorted({site for series in report.series.values() for by_site in series.values() for site in by_site})
    print(f"{len(sites)} sites ({', '.join(sites)}); wrote:")
    for family, path in report.files.items():
        print(f"  {family}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedvlp`` command."""
    parser = argparse.ArgumentParser(prog="fedvlp", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower's and Ray's logs")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars; fedvlp logs warnings and errors only"
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="level of fedvlp's own log (default INFO, WARNING with --quiet)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also FEDVLP_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synthetic world -> federated pretraining -> label-efficiency sweep")
    demo.add_argument("--out", default="runs/demo", help="output folder (re-running resumes it)")
    demo.add_argument("--quick", action="store_true", help="tiny models and world: the same path in ~2 minutes")
    demo.add_argument("--data", help="where the demo world lives (default: .fedvlp/demo)")
    demo.add_argument("--rounds", type=int)
    demo.add_argument("--local-steps", type=int)
    demo.add_argument("--recipe")
    demo.add_argument("--seeds", type=int, help="seeds of the sweep (default 3)")
    demo.add_argument("--fractions", type=float, nargs="+", help="label fractions of the sweep (default 0.01 0.1 1)")
    demo.add_argument("--protocols", nargs="+", choices=["linear", "finetune"], help="default: linear finetune")
    demo.add_argument(
        "--dicom",
        action="store_true",
        help="hospital_b trains from a DICOM export of its images "
        "(written into OUT/dicom and imported with the `fedvlp import dicom` code)",
    )
    demo.add_argument(
        "--sites",
        help="a real federation instead of the synthetic world: a folder of site files with a "
        "federation.toml (e.g. sites/cxr); runs its whole study, see server/cli/pipeline.py",
    )
    demo.add_argument(
        "--baselines",
        nargs="*",
        choices=("central", "local"),  # pipeline.BASELINE_KINDS (imported lazily: torch-free start)
        help="with --sites: also centralised and local-only pretraining from each federated run's start "
        "(no value: both kinds)",
    )
    demo.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="with --sites: sweep cells in this many processes (results do not depend on it)",
    )
    demo.add_argument(
        "--no-early-sweep",
        dest="early_sweep",
        action="store_false",
        help="with --sites: do not run the random/general-pretrained sweep cells at low priority during pretraining",
    )
    demo.add_argument("--gpus-per-client", type=float, default=None, help=_GPU_HELP)
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate-demo", help="write the synthetic demo world")
    gen.add_argument("out")
    gen.add_argument("--quick", action="store_true", help="tiny world (120/120/120/300 rows)")
    gen.add_argument("--seed", type=int, default=0, help="root seed of every case, image and report (default 0)")
    gen.set_defaults(func=cmd_generate)

    sim = sub.add_parser("simulate", help="federated pretraining in the simulation engine")
    sim.add_argument(
        "--run-config",
        nargs="*",
        help="key=value, as in flwr run --run-config: TOML values (3, 0.5, true, "
        '"text"); a bare word is a string (recipe=convirt)',
    )
    sim.add_argument("--cpus-per-client", type=float, default=1.0)
    sim.add_argument("--gpus-per-client", type=float, default=None, help=_GPU_HELP)
    sim.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the virtual clients on this running Ray cluster "
        "(`ray start --head` / `ray start --address`) instead of a Ray started on 127.0.0.1 for this run",
    )
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="print speed, upload size and memory figures")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument(
        "--site-steps",
        metavar="FOLDER",
        help="instead: seconds per local step of every site of a study "
        "folder (e.g. sites/cxr), before and after its federation.toml settings, at its image size",
    )
    bench.add_argument("--steps", type=int, default=3, help="timed steps per site and setting with --site-steps")
    bench.add_argument(
        "--sites",
        type=int,
        help="instead: peak memory and seconds per round of an N-site simulation (tiny, 32 px) "
        "partitioned from a generated world (server/cli/bench_sites.py)",
    )
    bench.add_argument(
        "--fraction-train", type=float, default=0.1, help="with --sites: share of the sites that train each round"
    )
    bench.add_argument("--rounds", type=int, default=3, help="with --sites / --deployment: rounds run")
    bench.add_argument(
        "--deployment",
        action="store_true",
        help="instead: round overhead of a real SuperLink + 2 SuperNodes on 127.0.0.1 "
        "(tiny model; server/cli/bench_deployment.py)",
    )
    bench.add_argument(
        "--modes",
        nargs="+",
        default=["worker"],
        choices=["subprocess", "worker-stock", "worker"],
        help="with --deployment: SuperNode setups to measure (default: worker, the recommended one)",
    )
    bench.set_defaults(func=cmd_bench)

    val = sub.add_parser("validate-site", help="check every row and image of a site file")
    val.add_argument("site")
    val.add_argument("--max-problems", type=int, default=20)
    val.add_argument("--workers", type=int, default=0, help="processes that decode images (0: this one)")
    val.set_defaults(func=cmd_validate_site)

    from .bench_loader import build_parser as bench_loader_parser

    bload = sub.add_parser("bench-loader", help="images/s of the fedvlp loading path against plain PIL decode + resize")
    bench_loader_parser(bload).set_defaults(func=cmd_bench_loader)

    voc = sub.add_parser("build-vocab", help="train a WordPiece vocabulary on the reports of site files")
    voc.add_argument("sites", nargs="+", help="site files whose reports may be shared (e.g. a public corpus)")
    voc.add_argument("--out", required=True, help="folder for vocab.txt (the run's tokenizer)")
    voc.add_argument("--vocab-size", type=int, default=8000)
    voc.set_defaults(func=cmd_build_vocab)

    imp = sub.add_parser("import", help="public dataset layout (or CSV + mapping) -> site manifest (docs/importing.md)")
    imp.add_argument("layout", choices=["mimic-cxr-jpg", "openi", "chexpert", "nih", "folder", "generic", "dicom"])
    imp.add_argument("src", help="the dataset folder (the CSV file for 'generic', a folder of DICOM files for 'dicom')")
    imp.add_argument("--out", required=True, help="manifest CSV to write; image paths in it are relative to its folder")
    imp.add_argument("--site-out", help="also write a site YAML for the manifest here (default: print it)")
    imp.add_argument("--site-name", help="name in the site YAML (default: the manifest's folder name)")
    imp.add_argument(
        "--uncertain",
        choices=["blank", "zero", "one"],
        help="CheXpert-style -1 labels become unknown (default), 0 or 1",
    )
    imp.add_argument(
        "--reports",
        help="mimic-cxr-jpg: folder with MIMIC-CXR's files/pXX/pSUBJECT/sSTUDY.txt (default: SRC); "
        "dicom: a CSV of reports to join",
    )
    imp.add_argument(
        "--report-key",
        choices=["accession", "study"],
        help="dicom: join --reports on AccessionNumber (default) or StudyInstanceUID",
    )
    imp.add_argument(
        "--report-key-column",
        help="dicom: the --reports column holding the key (default AccessionNumber / StudyInstanceUID)",
    )
    imp.add_argument(
        "--report-column",
        nargs="+",
        metavar="[SECTION=]COLUMN",
        help="dicom: the report text column (default report) and/or findings=COL impression=COL ...",
    )
    imp.add_argument(
        "--salt-file",
        help="dicom: the site's secret salt for hashed ids (default $FEDVLP_HOME/dicom-salt, created on first use)",
    )
    imp.add_argument("--modalities", nargs="+", help="dicom: Modality values to import (default CR DX; 'any' for all)")
    imp.add_argument("--no-reports", action="store_true", help="mimic-cxr-jpg: images and labels only")
    imp.add_argument("--labeler", choices=["chexpert", "negbio"], help="mimic-cxr-jpg: label file (default chexpert)")
    imp.add_argument("--images", help="openi, nih, generic: the image folder when not the default")
    imp.add_argument(
        "--patient-pattern", help="folder: 'kermany' (default), 'none' or a regex with (?P<patient>...) on file stems"
    )
    imp.add_argument(
        "--min-label-count", type=int, help="openi: MeSH terms given to fewer reports get no label column (default 1)"
    )
    imp.add_argument(
        "--map",
        nargs="+",
        metavar="KEY=COLUMN",
        help="generic: id=, image=, report=, findings=, ..., labels=a,b or label.NAME=col",
    )
    imp.add_argument("--map-file", help="generic: the same mapping as a YAML file")
    imp.add_argument("--absolute-paths", action="store_true", help="write absolute image paths")
    imp.add_argument("--max-problems", type=int, default=20, help="skipped rows to list")
    imp.set_defaults(func=cmd_import)

    cfg = sub.add_parser("flwr-config", help="write $FLWR_HOME/config.toml (local-sim, local-deployment)")
    cfg.add_argument("--num-supernodes", type=int, default=3)
    cfg.add_argument(
        "--superlink",
        default="127.0.0.1:9093",
        help="the SuperLink's address (flower-superlink --port serves every API in Flower 1.41)",
    )
    cfg.add_argument("--root-certificates", help="CA certificate for a TLS SuperLink")
    cfg.add_argument("--gpus-per-client", type=float, default=None, help=_GPU_HELP)
    cfg.add_argument(
        "--stop",
        action="store_true",
        help="instead: stop the local SuperLink (and its SuperExec) that "
        "`flwr run . local-sim` started and left running",
    )
    cfg.set_defaults(func=cmd_flwr_config)

    certs = sub.add_parser("certs", help="create a CA and the SuperLink's TLS certificate (docs/deployment.md)")
    certs.add_argument("--out", required=True, help="folder for ca.crt, server.pem, server.key (and ca-private/ca.key)")
    certs.add_argument("--ca-key-out", help="folder for ca.key (created 0700); default OUT/ca-private")
    certs.add_argument(
        "--server-address", nargs="*", help="names/IPs hospitals dial (127.0.0.1 and localhost are always in the SAN)"
    )
    certs.add_argument("--days", type=int, default=365)
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.set_defaults(func=cmd_certs)

    keys = sub.add_parser("node-keys", help="create one ECDSA key pair per hospital for SuperNode authentication")
    keys.add_argument("--out", required=True, help="folder for <name> (private) and <name>.pub")
    keys.add_argument("--names", nargs="+", required=True, help="hospital names, e.g. hospital_a hospital_b")
    keys.add_argument("--force", action="store_true", help="replace existing files")
    keys.set_defaults(func=cmd_node_keys)

    swp = sub.add_parser(
        "sweep", help="label-efficiency sweep: inits x protocols x label fractions x seeds (docs/evaluation.md)"
    )
    swp.add_argument("--labeled", required=True, help="labelled manifest (train/val rows)")
    swp.add_argument("--test", help="separate test manifest (without it, test rows come from --labeled's split)")
    swp.add_argument(
        "--label-columns",
        nargs="+",
        required=True,
        help="0/1 columns (sigmoid) or categorical columns (softmax); blank = unknown",
    )
    swp.add_argument(
        "--init",
        nargs="+",
        default=["random"],
        metavar="NAME=SPEC",
        help="SPEC: random, general-pretrained, or a checkpoint (folder with latest.json, its run folder, or "
        "round_NNNN.safetensors)",
    )
    swp.add_argument("--protocols", nargs="+", default=["linear", "finetune"], choices=["linear", "finetune"])
    swp.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    swp.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    swp.add_argument("--out", required=True, help="output folder (re-running resumes it)")
    swp.add_argument("--jobs", type=int, default=1, help="cells run in this many processes (same results as 1)")
    swp.add_argument(
        "--threads", type=int, default=1, help="torch threads per cell (results depend on it, not on --jobs)"
    )
    swp.add_argument(
        "--extras",
        nargs="*",
        default=["retrieval", "regeneration"],
        choices=["retrieval", "regeneration"],
        help="zero-shot evaluations of checkpoint inits that support them",
    )
    swp.add_argument("--queries", help="YAML: class -> text query (or list) for text-to-image retrieval")
    swp.add_argument(
        "--run-config", nargs="*", help="key=value overrides of the architecture of random/general-pretrained inits"
    )
    swp.add_argument("--set", nargs="*", help="sweep training knobs, e.g. ft_max_steps=200 probe_max_iter=100")
    swp.add_argument("--id-column", default="id")
    swp.add_argument("--image-column", default="image")
    swp.add_argument("--patient-column", default="patient_id")
    swp.add_argument("--split-column", default="split")
    swp.add_argument("--device", default="auto")
    swp.add_argument("--title", default="Label-efficiency sweep")
    swp.set_defaults(func=cmd_sweep)

    pre = sub.add_parser("pretrain", help="centralised (pooled) or local-only pretraining with the federated budget")
    mode = pre.add_mutually_exclusive_group(required=True)
    mode.add_argument("--central", action="store_true", help="pool the data of all site files of `sites`")
    mode.add_argument("--local", metavar="SITE", help="one site alone (site file, or name of a site of `sites`)")
    pre.add_argument("--run-config", nargs="*", help="key=value (TOML values): the federated run's settings")
    pre.add_argument(
        "--out", help="output folder (checkpoints/ inside; resumed); default runs/central or runs/local-SITE"
    )
    pre.add_argument("--steps", type=int, help="optimizer steps per round instead of the matched budget")
    pre.add_argument("--threads", type=int, default=2)
    pre.set_defaults(func=cmd_pretrain)

    spl = sub.add_parser("split", help="patient-level train/val/test manifests (deterministic)")
    spl.add_argument("manifest")
    spl.add_argument("--by", default="patient_id", help="group column; blank ids are derived from image file names")
    spl.add_argument("--fractions", type=float, nargs="+", default=[0.6, 0.2, 0.2])
    spl.add_argument("--names", nargs="+", default=["train", "val", "test"])
    spl.add_argument("--out", required=True)
    spl.add_argument("--image-column", default="image")
    spl.add_argument("--id-column", default="id")
    spl.set_defaults(func=cmd_split)

    exp = sub.add_parser(
        "export", help="a checkpoint's encoders for torchvision / timm / transformers, with a model card"
    )
    exp.add_argument("checkpoint", help="run folder, checkpoints folder, or round_NNNN.safetensors")
    exp.add_argument("--out", required=True, help="export folder (new or empty)")
    exp.add_argument("--force", action="store_true", help="replace the files of an earlier export in --out")
    exp.set_defaults(func=cmd_export)

    part = sub.add_parser(
        "partition", help="one labelled manifest -> N simulated sites (Dirichlet label skew, modality mix)"
    )
    part.add_argument("manifest", help="CSV or Parquet manifest with an id, image and/or report, and the --by column")
    part.add_argument("--sites", type=int, required=True)
    part.add_argument("--by", required=True, help="the column whose classes are skewed across sites (e.g. a label)")
    part.add_argument(
        "--dirichlet",
        type=float,
        required=True,
        metavar="ALPHA",
        help="concentration: 0.1 very skewed, 100 near uniform",
    )
    part.add_argument("--out", required=True, help="folder for site_NNN.yaml, site_NNN/manifest.csv and partition.json")
    part.add_argument(
        "--pairs-share", type=float, default=1.0, help="share of sites keeping image and report (default 1)"
    )
    part.add_argument("--images-only-share", type=float, default=0.0, help="share of sites whose report is dropped")
    part.add_argument("--reports-only-share", type=float, default=0.0, help="share of sites whose image is dropped")
    part.add_argument("--seed", type=int, default=0)
    part.add_argument(
        "--min-rows",
        type=int,
        default=2,
        help="redraw until every site has at least this many rows "
        "(default 2: BatchNorm cannot train on a single image)",
    )
    part.add_argument("--id-column", default="id")
    part.add_argument("--image-column", default="image")
    part.add_argument("--report-column", default="report")
    part.add_argument(
        "--patient-column", default="patient_id", help="rows of one patient stay in one site (when the column exists)"
    )
    part.set_defaults(func=cmd_partition)

    rep = sub.add_parser("report", help="per-site curves of a run (site_metrics.jsonl) -> one PNG per metric family")
    rep.add_argument("run", help="the run folder (out-dir; a demo's --out folder works too)")
    rep.add_argument("--out", help="folder for the PNGs (default: RUN/plots)")
    rep.set_defaults(func=cmd_report)
    return parser


def configure_output(quiet: bool = False, log_level: str | None = None, verbose: bool = False) -> None:
    """Set fedvlp's log level; keep Flower's and Ray's loggers to errors unless ``verbose``.

    ``quiet`` also turns the progress bars off through ``FEDVLP_QUIET=1``, which child
    processes (simulation actors, loader workers) inherit; bars are off anyway when stderr is
    not a terminal.
    """
    logging.getLogger("fedvlp").setLevel(log_level or ("WARNING" if quiet else "INFO"))
    if quiet:
        os.environ["FEDVLP_QUIET"] = "1"  # also reaches simulation actors and worker processes
    if not verbose:
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _names_a_path(message: str) -> bool:
    """Whether an error message names a file or folder (then it is the user's to fix)."""
    return any(os.sep in token and len(token) > 1 for token in re.split(r"[\s'\"(),:;=]+", message))


def _user_error(err: BaseException) -> str | None:
    """One line for an error the user can fix, or None for a bug (which keeps its traceback)."""
    from fedvlp.core.config import ConfigError

    if isinstance(err, ConfigError):
        return f"configuration error: {err}"
    if isinstance(err, UsageError):
        return str(err)
    if isinstance(err, OSError) and err.filename is not None and err.errno is not None:
        # FileExistsError, NotADirectoryError, PermissionError, ...: "<reason>: <path>"
        return f"{err.strerror}: {err.filename}"
    if isinstance(err, ValueError) and _names_a_path(str(err)):
        return str(err)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedvlp`` console script.

    Errors a user can fix (bad arguments, config keys, paths) are one line on stderr and exit
    code 2; ``--debug`` or ``FEDVLP_DEBUG=1`` shows their traceback instead. Other exceptions
    are bugs and keep their traceback.
    """
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("FEDVLP_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    configure_output(quiet=args.quiet, log_level=args.log_level, verbose=args.verbose)
    try:
        check_args(args)  # before any heavy import and before anything is written
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:
        line = None if debug else _user_error(err)
        if line is None:
            raise
        # Configuration errors keep the prefix they always had (scripts may match it).
        prefix = "fedvlp" if line.startswith("configuration error: ") else f"fedvlp {args.command}"
        print(f"{prefix}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
