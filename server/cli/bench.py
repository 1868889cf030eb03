"""``fedvlp bench``: speed, upload size and memory figures, one ``name: value`` per line.

Figures, not pass/fail thresholds: the trainer's overhead against a bare PyTorch loop, the
bytes each demo site uploads per round (by group) against the full fp32 model, the bytes per
round per site both ways for each compression mode (:func:`compression_bytes`), the split
of a round into client compute and everything else, and the peak memory of the simulation.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from fedvlp.core.config import RunConfig, list_site_files, load_site, project_root
from fedvlp.core.models import build_model
from fedvlp.core.objectives import BatchView
from fedvlp.core.params import group_of
from fedvlp.core.runtime import offline_env, state_dir
from fedvlp.core.train import LocalTrainer, load_site_datasets

__all__ = [
    "compression_bytes",
    "run_bench",
    "simulation_figures",
    "site_step_seconds",
    "step_figures",
    "tree_rss_bytes",
    "SPEED_OPTIONS",
]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1]) * 1024
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total


# Run-config speed options of local training (core/train.py) that the bench times, alone and combined
SPEED_OPTIONS: dict[str, dict[str, Any]] = {
    "channels-last": {"channels_last": True},
    "cpu-autocast-bf16": {"cpu_autocast": "bf16"},
    "foreach-adamw": {"fused_optimizer": "foreach"},
    "fused-adamw": {"fused_optimizer": "fused"},
    "compile": {"compile": True},
    "channels-last+fused-adamw": {"channels_last": True, "fused_optimizer": "fused"},
    "channels-last+bf16": {"channels_last": True, "cpu_autocast": "bf16"},
    "channels-last+fused-adamw+bf16": {"channels_last": True, "fused_optimizer": "fused", "cpu_autocast": "bf16"},
}


def _bare_loop(run: RunConfig, trainer: LocalTrainer) -> Any:
    """``steps(count)``: a bare PyTorch loop (fresh model, same loader, loss and AdamW) running ``count`` steps."""
    bare = build_model(run)
    loader = trainer._loaders[0]
    optimizer = torch.optim.AdamW(bare.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    weights = run.objective_weights()
    bare.train()
    iterator = [iter(loader)]

    def steps(count: int) -> None:
        for _ in range(count):
            try:
                batch = next(iterator[0])
            except StopIteration:
                iterator[0] = iter(loader)
                batch = next(iterator[0])
            view = BatchView(bare, {k: batch[k] for k in ("image", "input_ids", "attention_mask")})
            loss = sum(weights[o.name] * o.loss(view) for o in bare.objectives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            torch.nn.utils.clip_grad_norm_(bare.parameters(), run.grad_clip)
            optimizer.step()

    return steps


def step_figures(
    run: RunConfig, steps: int, repeats: int = 3, options: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Seconds per local step of the pair site: a bare loop, fedvlp's trainer, and the trainer
    under each speed option (:data:`SPEED_OPTIONS`), interleaved in this one process.

    Every variant first trains ``check_steps`` = 5 steps from the same weights and seed (its
    warm-up, compilation included): ``loss-delta/<option>`` is its mean total loss minus the
    default's, ``weight-delta/<option>`` the largest absolute weight difference after them.
    Then ``repeats`` rounds run ``steps`` steps of every variant in turn (bare, default,
    option, ...), so that load from other processes hits all of them alike; a variant's
    figure is its fastest round.

    Returns
    -------
    dict
        ``step-seconds/fedvlp``, ``step-seconds/bare-pytorch``, ``step-ratio`` (fedvlp / bare),
        and per option ``step-seconds/<option>``, ``step-ratio/<option>`` (option / bare),
        ``loss-delta/<option>``, ``weight-delta/<option>``; ``error/<option>`` when an option
        could not train on this machine.
    """
    site = load_site(list_site_files(run.sites)[0])
    variants = {
        "fedvlp": run,
        **{n: run.replace(**o) for n, o in (SPEED_OPTIONS if options is None else options).items()},
    }
    trainers: dict[str, LocalTrainer] = {}
    figures: dict[str, Any] = {}
    reference: dict[str, torch.Tensor] = {}
    reference_loss = 0.0
    for name, variant in variants.items():
        model = build_model(variant)
        trainer = LocalTrainer(
            model, load_site_datasets(site, variant, model.max_text_len), variant, torch.device("cpu")
        )
        try:
            loss = trainer.train(5).metrics["loss/total"]
        except Exception as error:  # a figure, not a crash: e.g. no C compiler for torch.compile
            figures[f"error/{name}"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            continue
        state = {k: v.detach().float() for k, v in model.state_dict().items() if v.is_floating_point()}
        if name == "fedvlp":
            reference, reference_loss = state, loss
        else:
            figures[f"loss-delta/{name}"] = float(f"{loss - reference_loss:.3g}")
            delta = max((state[k] - reference[k]).abs().max().item() for k in state)
            figures[f"weight-delta/{name}"] = float(f"{delta:.3g}")
        trainers[name] = trainer
    bare = _bare_loop(run, trainers["fedvlp"])
    bare(2)  # warm-up
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, call in [("bare-pytorch", bare), *((n, t.train) for n, t in trainers.items())]:
            started = time.perf_counter()
            call(steps)
            seconds = (time.perf_counter() - started) / steps
            best[name] = min(best.get(name, seconds), seconds)
    figures["step-seconds/fedvlp"] = round(best["fedvlp"], 4)
    figures["step-seconds/bare-pytorch"] = round(best["bare-pytorch"], 4)
    figures["step-ratio"] = round(best["fedvlp"] / best["bare-pytorch"], 3)
    for name in trainers:
        if name != "fedvlp":
            figures[f"step-seconds/{name}"] = round(best[name], 4)
            figures[f"step-ratio/{name}"] = round(best[name] / best["bare-pytorch"], 3)
    return dict(sorted(figures.items(), key=lambda item: not item[0].startswith("step")))


def _upload_bytes(run: RunConfig) -> dict[str, Any]:
    model = build_model(run)
    state = model.state_dict()
    full = sum(v.numel() * 4 for v in state.values())
    out: dict[str, Any] = {"model-fp32-bytes": full}
    for path in list_site_files(run.sites):
        site = load_site(path)
        trainer = LocalTrainer(model, load_site_datasets(site, run, model.max_text_len), run, torch.device("cpu"))
        groups = trainer.group_counts()
        by_group: Counter[str] = Counter()
        for key, value in state.items():
            if group_of(key) in groups:
                by_group[group_of(key)] += value.numel() * value.element_size()
        total = sum(by_group.values())
        out[f"upload-bytes/{site.name}"] = total
        out[f"upload-share/{site.name}"] = round(total / full, 3)
        for group, size in sorted(by_group.items()):
            out[f"upload-bytes/{site.name}/{group}"] = size
    return out


def _record_bytes(arrays: dict[str, Any], deflate: bool) -> int:
    """Bytes of the arrays as a train message or reply carries them: packed into one array
    (``core/compression.py``; zlib-compressed under a compressed mode), headers included."""
    from flwr.app import Array, ArrayRecord

    from fedvlp.core.compression import pack_record

    return int(ArrayRecord({k: Array(v) for k, v in pack_record(arrays, deflate).items()}).count_bytes())


# (upload, download) pairs whose round totals the bench prints
_ROUND_MODES = (("none", "none"), ("bf16", "bf16"), ("int8", "delta-bf16"), ("int8", "delta-int8"))


def compression_bytes(run: RunConfig) -> dict[str, Any]:
    """Bytes per round of every demo site for each upload / download compression mode.

    Uploads carry every key of the groups the site trains (``core/compression.py`` encodes
    them as in a real reply); delta downloads are counted with every floating key changed (the
    steady state of a federation where every group trains; the first round of a node, sent
    whole in bf16, costs ``download-bytes/bf16``). ``round-share/<upload>+<download>/<site>``:
    upload + download against fp32 both ways.
    """
    from fedvlp.core.compression import DOWNLOAD_MODES, UPLOAD_MODES, encode_download, encode_upload

    model = build_model(run)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    # a round later: every floating value moved (the codec's sizes do not depend on the values)
    moved = {
        k: v + 1e-3 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in state.items()
    }
    out: dict[str, Any] = {}
    download = {}
    for mode in DOWNLOAD_MODES:
        encoded = encode_download(mode, moved, state if mode.startswith("delta") else None)[1]
        download[mode] = _record_bytes(encoded, deflate=mode != "none")
        out[f"download-bytes/{mode}"] = download[mode]
        out[f"download-share/{mode}"] = round(download[mode] / download["none"], 3)
    for path in list_site_files(run.sites):
        site = load_site(path)
        trainer = LocalTrainer(model, load_site_datasets(site, run, model.max_text_len), run, torch.device("cpu"))
        groups = set(trainer.group_counts())
        trained = {k: v for k, v in moved.items() if group_of(k) in groups}
        upload = {mode: _record_bytes(encode_upload(mode, trained, state), mode != "none") for mode in UPLOAD_MODES}
        for mode in UPLOAD_MODES:
            out[f"upload-bytes/{mode}/{site.name}"] = upload[mode]
            out[f"upload-share/{mode}/{site.name}"] = round(upload[mode] / upload["none"], 3)
        fp32 = upload["none"] + download["none"]
        for up, down in _ROUND_MODES:
            total = upload[up] + download[down]
            out[f"round-bytes/{up}+{down}/{site.name}"] = total
            out[f"round-share/{up}+{down}/{site.name}"] = round(total / fp32, 3)
    return out


def simulation_figures(run: RunConfig) -> dict[str, Any]:
    """Simulate ``run`` and time it: the round split of :func:`~fedvlp.server.app.round_summary`
    and the peak memory of the process tree (sampled while it runs)."""
    from fedvlp.server.app import round_summary

    from .simulation import simulate

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_bytes(os.getpid()))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        simulate(run, on_round=records.append)
    finally:
        done.set()
        sampler.join()
    summary = round_summary(records)
    return {
        "simulation-seconds": round(time.perf_counter() - started, 2),
        "first-round-seconds": round(summary["first-round-seconds"], 2),
        **{
            key: round(summary[key], 3)
            for key in ("round-seconds", "round-client-compute-seconds", "round-other-seconds")
        },
        "simulation-peak-rss-mb": round(peak[0] / 2**20, 1),
    }


# What the study's keep-the-pretrained-start settings replace: every knob at its default
# (the whole network trains, BatchNorm re-estimates, a dense MLM decoder, masked regeneration,
# fp32 in PyTorch's default memory format).
_BEFORE = {
    "freeze-image-stages": 0,
    "freeze-text-layers": 0,
    "image-bn": "train",
    "mlm-decoder": "untied",
    "weight-distill": 0.0,
    "weight-mim": 1.0,
    "image-lr-scale": 1.0,
    "text-lr-scale": 1.0,
    "warmup-steps": 0,
    "channels-last": False,
    "cpu-autocast": "off",
}


def site_step_seconds(folder: str | Path, steps: int = 3) -> dict[str, Any]:
    """Seconds per local step of every site kind of a study, before and after its settings.

    ``folder`` holds site files and a ``federation.toml`` (:mod:`~fedvlp.server.cli.pipeline`);
    "after" is its general-pretrained run configuration (``[run]`` + ``[general-pretrained]``,
    at the study's image size), "before" the same starting weights with :data:`_BEFORE`. One
    thread, one warm-up step, then ``steps`` timed steps per site and setting.

    Returns
    -------
    dict
        ``site-step-seconds/<site>/before`` and ``.../after`` and their ratio per site.
    """
    from .pipeline import load_federation, pretrained_installed

    offline_env(threads_per_client=1)
    torch.set_num_threads(1)
    federation = load_federation(folder)
    after = RunConfig.from_flat(
        {**federation.run, **(federation.general if pretrained_installed() else {}), "sites": str(federation.folder)}
    )
    if after.text_init == "minilm":
        after = after.replace(tokenizer="minilm")
    before = RunConfig.from_flat({**after.to_flat(), **_BEFORE})
    figures: dict[str, Any] = {
        "image-size": after.image_size,
        "batch-size": after.batch_size,
        "torch-threads": 1,
        "text-init": after.text_init or "random",
        "image-init": after.image_init or "random",
    }
    for site_file in list_site_files(federation.folder):
        site = load_site(site_file)
        seconds = {}
        for name, run in (("before", before), ("after", after)):
            model = build_model(run)
            trainer = LocalTrainer(model, load_site_datasets(site, run, model.max_text_len), run, torch.device("cpu"))
            trainer.train(1)  # warm-up: first decode, allocator
            started = time.perf_counter()
            trainer.train(steps)
            seconds[name] = (time.perf_counter() - started) / steps
            figures[f"site-step-seconds/{site_file.stem}/{name}"] = round(seconds[name], 3)
        figures[f"site-step-ratio/{site_file.stem}"] = round(seconds["after"] / seconds["before"], 3)
    return figures


def run_bench(quick: bool = False) -> dict[str, Any]:
    """Measure the demo-size model (or the tiny one with ``quick``) on the demo world."""
    from fedvlp.core.data.synthetic import WorldSpec, generate_world

    offline_env(threads_per_client=1)
    world = state_dir() / ("demo-quick" if quick else "demo")
    generate_world(world, WorldSpec.quick() if quick else WorldSpec())
    os.environ["FEDVLP_DEMO_DATA"] = str(world)
    run = RunConfig(sites=str(project_root() / "sites" / "demo"))
    if quick:
        run = run.replace(model_size="tiny", image_size=32, batch_size=16)
    torch.set_num_threads(1)  # what one simulated client gets on this machine
    figures: dict[str, Any] = {
        "model-size": run.model_size,
        "image-size": run.image_size,
        "batch-size": run.batch_size,
        "torch-threads": 1,
    }
    figures.update(step_figures(run, steps=3 if quick else 10, repeats=2 if quick else 3))
    figures.update(_upload_bytes(run))
    figures.update(compression_bytes(run))
    with tempfile.TemporaryDirectory() as tmp:
        figures.update(simulation_figures(run.replace(rounds=3, out_dir=tmp)))
    return figures
