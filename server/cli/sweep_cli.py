"""The evaluation commands behind ``fedvlp sweep``, ``fedvlp pretrain`` and ``fedvlp split``.

``server/cli/main.py`` holds the parsers and thin ``cmd_*`` wrappers; the work is here, on top of
``fedvlp.core.evaluation`` and ``fedvlp.core.central``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from .progress import round_bar
from .run_config_args import run_overrides

if TYPE_CHECKING:
    from fedvlp.core.checkpoint import RoundCheckpoint
    from fedvlp.core.evaluation.data import LabeledSet

__all__ = [
    "InitSpec",
    "parse_init",
    "resolve_inits",
    "run_sweep_command",
    "run_pretrain_command",
    "run_split_command",
    "GENERAL_PRETRAINED",
    "sweep_and_report",
    "output_names",
]

log = logging.getLogger("fedvlp.sweep")


def _clear_errors(function: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (a missing file, a wrong column or value) ends the command with its message, not a traceback."""
    import functools
    import sys

    @functools.wraps(function)
    def wrapper(args: argparse.Namespace) -> int:
        from fedvlp.core.config import ConfigError

        try:
            return function(args)
        except ConfigError:
            raise  # main() prints it as a configuration error
        except (ValueError, FileNotFoundError) as err:
            print(f"fedvlp {args.command}: error: {err}", file=sys.stderr)
            return 2

    return wrapper


GENERAL_PRETRAINED = "general-pretrained"
# ImageNet's resolution: the general-pretrained encoder is evaluated at the size it was trained at
# (``general-pretrained@SIZE`` evaluates it at another one).
GENERAL_PRETRAINED_SIZE = 224


def general_pretrained_size(spec: str) -> int | None:
    """The image size of a ``general-pretrained[@SIZE]`` spec, ``None`` for any other spec.

    Raises
    ------
    ValueError
        When ``@SIZE`` is not a positive multiple of 32.
    """
    name, sep, size = spec.partition("@")
    if name != GENERAL_PRETRAINED:
        return None
    if not sep:
        return GENERAL_PRETRAINED_SIZE
    if not size.isdigit() or int(size) <= 0 or int(size) % 32:
        raise ValueError(f"--init {spec!r}: expected {GENERAL_PRETRAINED}@SIZE with SIZE a positive multiple of 32")
    return int(size)


@dataclass
class InitSpec:
    """One ``--init NAME=SPEC``: ``random``, ``general-pretrained`` or a checkpoint path."""

    name: str
    spec: str


def parse_init(text: str) -> InitSpec:
    """``NAME=SPEC`` or a bare ``SPEC`` (named after itself: ``random``, or the checkpoint folder's name)."""
    name, sep, spec = text.partition("=")
    if not sep:
        spec = name
        name = spec if spec == "random" or general_pretrained_size(spec) else Path(spec).resolve().name
        if name == "checkpoints":
            name = Path(spec).resolve().parent.name
    if not name.strip() or not spec.strip():
        raise ValueError(
            f"--init {text!r}: expected NAME=SPEC with SPEC random, {GENERAL_PRETRAINED} or a checkpoint path"
        )
    return InitSpec(name.strip(), spec.strip())


def _checkpoint(spec: str) -> tuple[RoundCheckpoint, Path]:
    """The checkpoint a path names: a round's file, a checkpoints folder, or a run folder holding one."""
    from fedvlp.core.checkpoint import load_latest, load_round
    from fedvlp.core.config import ConfigError, resolve_path

    path = resolve_path(spec)
    if path.is_file() and path.name.startswith("round_"):
        return load_round(path.parent, int(path.name.split(".")[0].split("_")[1])), path
    for folder in (path, path / "checkpoints"):
        if (folder / "latest.json").is_file():
            checkpoint = load_latest(folder)
            assert checkpoint is not None
            return checkpoint, folder
    raise ConfigError(
        "--init",
        spec,
        "random, general-pretrained, or a checkpoint (a folder with latest.json, "
        "its run folder, or a round_NNNN.safetensors file)",
    )


def resolve_inits(specs: list[InitSpec], overrides: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Build the sweep's :class:`~fedvlp.core.evaluation.Init` objects.

    The architecture of ``random`` (and the image size of the labelled set) comes from the
    first checkpoint init's run config, else from the defaults; ``overrides``
    (``--run-config``) apply on top. Checkpoint inits keep their own architecture and are
    evaluated at their own image size; ``general-pretrained`` is evaluated at ImageNet's
    224 px (``general-pretrained@SIZE``: at SIZE).

    Returns
    -------
    (inits, base_run, models)
        ``models`` maps checkpoint init names to the whole pretrained model (for retrieval
        and regeneration).
    """
    from fedvlp.core.config import ConfigError, RunConfig
    from fedvlp.core.evaluation import Init
    from fedvlp.core.models import BackboneFactory, build_model

    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--init names must be unique, got {duplicates} more than once")
    loaded = {}
    for spec in specs:
        if spec.spec != "random" and general_pretrained_size(spec.spec) is None:
            checkpoint, folder = _checkpoint(spec.spec)
            if "run_config" not in checkpoint.state:
                raise ConfigError(str(folder), "run_config", "a checkpoint state JSON with the run's configuration")
            loaded[spec.name] = (
                RunConfig.from_flat(checkpoint.state["run_config"], origin=str(folder)),
                checkpoint,
                folder,
            )
    base = next(iter(loaded.values()))[0] if loaded else RunConfig()
    if overrides:
        base = RunConfig.from_flat({**base.to_flat(), **overrides}, origin="--run-config")
    inits: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for spec in specs:
        size = general_pretrained_size(spec.spec)
        if spec.spec == "random":
            inits[spec.name] = Init(
                BackboneFactory(base.replace(image_init="", freeze_image_stages=0, image_bn="train")), None, "random"
            )
        elif size is not None:
            # ImageNet EfficientNet-Lite0 (fedvlp[pretrained]) at its own resolution.
            run = base.replace(
                image_init="efficientnet-lite0", image_size=size, freeze_image_stages=0, image_bn="train"
            )
            factory = BackboneFactory(run)
            inits[spec.name] = Init(
                factory, factory().state_dict(), spec.spec, image_size=size if size != base.image_size else None
            )
        else:
            run, checkpoint, folder = loaded[spec.name]
            model = build_model(run)
            model.load_state_dict(checkpoint.weights)
            state = {k: v.detach().clone() for k, v in model.image_backbone().state_dict().items()}
            own = run.image_size if run.image_size != base.image_size else None
            inits[spec.name] = Init(BackboneFactory(run), state, f"{folder} round {checkpoint.round}", image_size=own)
            models[spec.name] = (run, model)
    return inits, base, models


def _extras(
    models: dict[str, Any], labeled: LabeledSet, out: Path, queries_path: str | None, wanted: set[str]
) -> pd.DataFrame:
    """Retrieval and regeneration rows of the checkpoint inits that support them (resumable per init)."""
    from fedvlp.core.data.tokenizer import load_run_tokenizer
    from fedvlp.core.evaluation import RESULT_COLUMNS, cell_file, load_results
    from fedvlp.core.evaluation.regeneration import regeneration_metrics, save_grid, supports_regeneration
    from fedvlp.core.evaluation.retrieval import load_queries, retrieval_metrics, supports_retrieval
    from fedvlp.core.evaluation.sweep import write_results

    queries = load_queries(queries_path)
    test = torch.as_tensor(labeled.indices("test"))
    frames = []
    for name, (run, model) in models.items():
        for protocol, supported in (
            ("retrieval", supports_retrieval(model)),
            ("regeneration", supports_regeneration(model)),
        ):
            if protocol not in wanted:
                continue
            if not supported:
                log.info(
                    "init %s (recipe %s): no %s; %s skipped",
                    name,
                    run.recipe,
                    "shared image-text space" if protocol == "retrieval" else "CNN masked-patch head",
                    protocol,
                )
                continue
            path = cell_file(out, name, protocol, 0.0, 0)
            if not path.is_file():
                if protocol == "retrieval":
                    rows = retrieval_metrics(
                        model,
                        load_run_tokenizer(run),
                        labeled.images[test],
                        labeled.labels[test],
                        labeled.tasks,
                        queries,
                    )
                else:
                    rows, (masked, regenerated) = regeneration_metrics(model, labeled.images[test], seed=run.seed)
                    save_grid(out / f"regeneration_{name}.png", labeled.images[test], masked, regenerated)
                frame = pd.DataFrame(
                    [
                        {
                            "init": name,
                            "protocol": protocol,
                            "label_fraction": 0.0,
                            "seed": 0,
                            "metric": m,
                            "class": c,
                            "value": v,
                        }
                        for m, c, v in rows
                    ],
                    columns=RESULT_COLUMNS,
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                write_results(frame, path)
            frames.append(load_results(path))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)


def sweep_settings(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` training knobs of :class:`~fedvlp.core.evaluation.SweepConfig`.

    E.g. ``ft_max_steps=200``.
    """
    import dataclasses

    from fedvlp.core.evaluation import SweepConfig

    fields = {f.name for f in dataclasses.fields(SweepConfig)} - {
        "fractions",
        "seeds",
        "protocols",
        "device",
        "num_threads",
        "title",
    }
    values = run_overrides(items, "--set")
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"--set: unknown sweep setting(s) {unknown}; known: {sorted(fields)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def sweep_and_report(
    specs: list[InitSpec],
    out: Path,
    labeled_path: Path,
    label_columns: list[str],
    config: Any,
    *,
    overrides: dict[str, Any] | None = None,
    test_path: Path | None = None,
    id_column: str = "id",
    image_column: str = "image",
    patient_column: str = "patient_id",
    split_column: str = "split",
    jobs: int = 1,
    queries: str | None = None,
    extras: tuple[str, ...] = ("retrieval", "regeneration"),
) -> pd.DataFrame:
    """Resolve the inits, load the labelled and test sets, run (or resume) the grid and write every output.

    Returns
    -------
    pandas.DataFrame
        All result rows (long format), those of finished cells read back from ``out``.
    """
    from fedvlp.core.evaluation import load_labeled, load_results, run_sweep
    from fedvlp.core.evaluation.report import write_outputs
    from fedvlp.core.evaluation.sweep import RESULTS_FILE, write_results

    inits, base, models = resolve_inits(specs, overrides or {})
    sizes = [base.image_size] + sorted(
        {i.image_size for i in inits.values() if i.image_size is not None} - {base.image_size}
    )
    sets = {
        size: load_labeled(
            Path(labeled_path),
            label_columns,
            size,
            id_column=id_column,
            image_column=image_column,
            patient_column=patient_column,
            split_column=split_column,
            test_manifest=Path(test_path) if test_path else None,
        )
        for size in sizes
    }
    labeled = sets[base.image_size]
    print(
        f"labelled set: {labeled.summary()}"
        + (f" (decoded at {', '.join(f'{s} px' for s in sizes)})" if len(sizes) > 1 else "")
    )
    print(
        f"sweep: {len(inits)} init(s) x {len(config.protocols)} protocol(s) x {len(config.fractions)} fraction(s) x "
        f"{len(config.seeds)} seed(s), {jobs} job(s) -> {out}"
    )
    results = run_sweep(inits, None, sets, out, config, progress=True, jobs=jobs)
    extra_rows = _extras(models, labeled, out, queries, set(extras))
    if not extra_rows.empty:
        everything = load_results(out / RESULTS_FILE)
        keys = ["init", "protocol", "label_fraction", "seed", "metric", "class"]
        merged = pd.concat([everything, extra_rows], ignore_index=True).drop_duplicates(subset=keys, keep="last")
        write_results(merged, out / RESULTS_FILE)
        results = pd.concat([results, extra_rows], ignore_index=True)
        write_outputs(results, out, config.title)
    return results


def output_names(results: pd.DataFrame) -> str:
    """The files a sweep wrote, for the closing line of a command."""
    protocols = set(results["protocol"])
    return (
        "results.csv, report.md, auc_vs_labels.png, auc_per_class.png"
        + (", retrieval.png" if "retrieval" in protocols else "")
        + (", regeneration_<init>.png" if "regeneration" in protocols else "")
    )


@_clear_errors
def run_sweep_command(args: argparse.Namespace) -> int:
    """``fedvlp sweep``: resolve inits, load the labelled and test sets, run the grid, write the outputs."""
    from fedvlp.core.evaluation import SweepConfig, format_table
    from fedvlp.core.runtime import offline_env

    offline_env()
    out = Path(args.out).resolve()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    config = SweepConfig(
        fractions=tuple(args.fractions),
        seeds=tuple(range(args.seeds)),
        protocols=tuple(args.protocols),
        device=device,
        num_threads=args.threads,
        title=args.title,
        **sweep_settings(args.set),
    )
    results = sweep_and_report(
        [parse_init(text) for text in args.init],
        out,
        Path(args.labeled),
        args.label_columns,
        config,
        overrides=run_overrides(args.run_config),
        test_path=Path(args.test) if args.test else None,
        id_column=args.id_column,
        image_column=args.image_column,
        patient_column=args.patient_column,
        split_column=args.split_column,
        jobs=args.jobs,
        queries=args.queries,
        extras=tuple(args.extras),
    )
    print()
    print(format_table(results))
    print(f"\noutputs: {out}/{output_names(results)}")
    return 0


@_clear_errors
def run_pretrain_command(args: argparse.Namespace) -> int:
    """``fedvlp pretrain --central`` / ``--local SITE``: the baselines of the federated run."""
    from fedvlp.core.central import pretrain_central, pretrain_local
    from fedvlp.core.config import RunConfig
    from fedvlp.core.runtime import offline_env

    offline_env()
    torch.set_num_threads(max(1, args.threads))
    run = RunConfig.from_flat(run_overrides(args.run_config), origin="--run-config")
    default = "runs/central" if args.central else f"runs/local-{Path(str(args.local)).stem}"
    out = Path(args.out or default)

    def line(record: dict[str, Any]) -> str:
        loss = record["metrics"].get("loss/total", float("nan"))
        return (
            f"round {record['round']}/{run.rounds}: {record['steps']} steps, loss {loss:.4f}, {record['seconds']:.1f}s"
        )

    with round_bar(run.rounds, out / "checkpoints", line) as on_round:
        if args.central:
            result = pretrain_central(run, out, on_round=on_round, steps=args.steps)
        else:
            result = pretrain_local(run, args.local, out, on_round=on_round, steps=args.steps)
    print(f"checkpoints: {result.checkpoint_dir} (round {result.last_round}, {result.steps_per_round} steps per round)")
    return 0


@_clear_errors
def run_split_command(args: argparse.Namespace) -> int:
    """``fedvlp split``: patient-level train/val/test manifests."""
    from fedvlp.core.evaluation.data import split_manifest

    written = split_manifest(
        Path(args.manifest),
        Path(args.out),
        by=args.by,
        fractions=tuple(args.fractions),
        names=tuple(args.names),
        image_column=args.image_column,
        id_column=args.id_column,
    )
    for name, path in written.items():
        frame = pd.read_csv(path)
        print(f"{name}: {path} ({len(frame)} rows, {frame[args.by].nunique()} patients)")
    return 0
