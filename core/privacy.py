"""Differential privacy for one site: which kind, DP-SGD with opacus, update clipping + noise,
and the privacy ledger (opacus' RDP accountant). See docs/privacy.md.

Two levels, decided per site from the objectives its data trains (:func:`plan_privacy`):

* ``sample``: DP-SGD (opacus per-sample gradients, clip to ``dp-max-grad-norm``, Gaussian noise
  ``dp-noise-multiplier`` x clip, Poisson sampling at rate batch/rows). Only for objectives
  whose loss is a mean of per-sample terms (MLM, masked patch regeneration) on the ResNet + BERT
  family.
* ``client``: the whole local update (local - global) is clipped to L2 norm ``dp-client-clip``
  and Gaussian noise of std ``dp-client-noise-multiplier`` x clip is added before it is sent
  (the math of Flower's ``LocalDpMod``: ``compute_clip_model_update`` then
  ``add_gaussian_noise_inplace``; with the std set from a noise multiplier and accounted with
  RDP instead of the mod's per-round (epsilon, delta) calibration). For objectives that couple
  the samples of a batch (InfoNCE, in-batch matching negatives), where per-sample DP does not hold.

This module never imports Flower.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn

from .checkpoint import atomic_write_bytes
from .config import ConfigError, RunConfig, SiteConfig
from .data.datasets import collate_samples
from .models.protocol import VLPModel
from .models.registry import family_of
from .objectives import BatchView
from .objectives.masked import MLMObjective
from .params import group_of
from .train import LocalResult, LocalTrainer, tally_losses

__all__ = [
    "PER_SAMPLE_OBJECTIVES",
    "DPPlan",
    "DPSGDTrainer",
    "Mechanism",
    "PrivacyLedger",
    "clip_and_noise",
    "clip_update",
    "dp_modules",
    "epsilon_spent",
    "gaussian_noise",
    "ledger_path",
    "run_key",
    "source_key",
    "plan_privacy",
    "round_mechanisms",
    "secret_generator",
    "source_epsilon",
]

# Objectives whose loss is the batch mean of per-sample terms: per-sample clipping bounds
# each sample's influence. InfoNCE (softmax over the batch), in-batch matching negatives,
# study contrastive and the uwox/unit CoMat pairs all couple samples.
PER_SAMPLE_OBJECTIVES = frozenset({"mlm", "mim"})

Mechanism = tuple[float, float, int]  # (noise multiplier, sample rate, steps), opacus' history entry


@dataclass(frozen=True)
class DPPlan:
    """A site's DP level and why."""

    level: str  # "sample" or "client"
    reason: str
    objectives: tuple[str, ...]  # the active objectives of the site
    sources: tuple[int, ...]  # indices of the sources that train something


def _active(trainer: LocalTrainer) -> tuple[list[int], list[str]]:
    sources: list[int] = []
    names: list[str] = []
    for index, dataset in enumerate(trainer.datasets):
        objectives = trainer.objectives_for(dataset.modalities)
        if objectives:
            sources.append(index)
            names.extend(o.name for o in objectives if o.name not in names)
    return sources, names


def plan_privacy(trainer: LocalTrainer, run: RunConfig) -> DPPlan:
    """Sample-level DP-SGD when every active objective is a sum of per-sample terms on the
    ResNet + BERT family, client-level DP otherwise.

    Raises
    ------
    ConfigError
        When sample-level DP would train a BatchNorm image encoder (run-config ``norm``).
    """
    sources, names = _active(trainer)
    coupled = [n for n in names if n not in PER_SAMPLE_OBJECTIVES]
    if not family_of(run).per_sample_dp:
        level, reason = (
            "client",
            f"recipe '{run.recipe}' ({run.spec.family} family) is not validated for opacus per-sample gradients",
        )
    elif coupled:
        level, reason = (
            "client",
            f"objective(s) {', '.join(coupled)} couple the samples of a batch, so per-sample DP does not hold",
        )
    elif run.weight_anchor > 0 or run.prox_mu > 0:
        level, reason = (
            "client",
            "weight-anchor / prox-mu pull towards the global model outside opacus' per-sample gradients",
        )
    elif run.mlm_decoder == "tied" and "mlm" in names:
        level, reason = (
            "client",
            "mlm-decoder 'tied' shares the word embeddings between two layers, which opacus cannot split per sample",
        )
    else:
        level, reason = "sample", f"objective(s) {', '.join(names)} are means of per-sample terms"
        trains_image = any(
            "image" in o.groups for i in sources for o in trainer.objectives_for(trainer.datasets[i].modalities)
        )
        if trains_image and run.norm != "group":
            raise ConfigError(
                "run_config",
                "norm",
                "'group' for sample-level DP on images (BatchNorm mixes samples; set it for the whole federation)",
                run.norm,
            )
    return DPPlan(level, reason, tuple(names), tuple(sources))


def round_mechanisms(plan: DPPlan, trainer: LocalTrainer, run: RunConfig) -> list[Mechanism]:
    """What one round releases, as opacus accountant history entries.

    Sample level: per source, ``local-steps`` subsampled Gaussian steps at rate
    ``min(1, batch / rows)``; the sources are composed (a patient in two sources is counted
    twice). Client level: one Gaussian release of the clipped update (rate 1).
    """
    if plan.level == "client":
        return [(run.dp_client_noise_multiplier, 1.0, 1)]
    return [
        (run.dp_noise_multiplier, sample_rate(len(trainer.datasets[i]), run.batch_size), run.local_steps)
        for i in plan.sources
    ]


def sample_rate(rows: int, batch_size: int) -> float:
    """Poisson sampling rate whose expected batch is ``batch_size`` (at most 1)."""
    return min(1.0, batch_size / rows)


def epsilon_spent(history: Iterable[Sequence[float]], delta: float) -> float:
    """Epsilon of the composed mechanisms by opacus' RDP accountant (0 for none)."""
    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(accountant.get_epsilon(delta)) if accountant.history else 0.0


def ledger_path(site: SiteConfig) -> Path:
    """The site's lifetime ledger: ``<state_dir>/<site name>.json``.

    ``state_dir`` is the site file's ``privacy.state_dir``, else ``$FEDVLP_DP_LEDGER``, else a
    ``.dp-ledger`` folder next to the site file. Nothing the server sends (out-dir, seed,
    configuration) enters the path, so no run can start the site on a fresh ledger.
    """
    folder = site.state_dir or Path(os.environ.get("FEDVLP_DP_LEDGER") or site.path.parent / ".dp-ledger")
    return folder / f"{site.name}.json"


def run_key(run: RunConfig) -> str:
    """A run's key in the ledger (configuration hash + out-dir): for its per-run budget only."""
    return hashlib.sha256(f"{run.config_hash()}|{run.out_dir}".encode()).hexdigest()[:16]


def source_key(site: SiteConfig, index: int) -> str:
    """The ledger's name of a site's data source: its manifest's resolved path."""
    return str(Path(site.sources[index].manifest).resolve())


_LEGACY_LEDGER = re.compile(r"^(?P<site>.+)-(?P<run>[0-9a-f]{16})\.json$")


@dataclass
class PrivacyLedger:
    """Every release of a site, over all runs, kept on the site's disk so neither a restarted
    ClientApp process (Flower starts one per message by default) nor a new run forgets it.

    ``history[i]`` is one mechanism; ``runs[i]`` the run it belonged to and ``sources[i]`` the
    data sources (manifest paths) it touched, so spends can be read per run, per source or
    in total. ``rounds`` lists the recorded server rounds.
    """

    path: Path
    history: list[Mechanism] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    sources: list[list[str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, adopt_legacy: str | None = None) -> PrivacyLedger:
        """The ledger at ``path`` (empty when the file does not exist).

        With ``adopt_legacy`` (a site name) and no file yet, the per-run ledgers of that site
        written by earlier versions (``<site>-<16 hex>.json`` in the same folder) are taken in,
        so their spend still counts.

        Raises
        ------
        ConfigError
            When the file is not a ledger (a damaged ledger must stop training, not reset it).
        """
        if not path.is_file():
            ledger = cls(path)
            if adopt_legacy is not None and path.parent.is_dir():
                for legacy in sorted(path.parent.glob(f"{adopt_legacy}-*.json")):
                    match = _LEGACY_LEDGER.match(legacy.name)
                    if match and match["site"] == adopt_legacy:
                        old = cls.load(legacy)
                        ledger.history += old.history
                        ledger.rounds += old.rounds
                        ledger.runs += [match["run"]] * len(old.history)
                        ledger.sources += [[] for _ in old.history]
            return ledger
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            history = [(float(s), float(q), int(n)) for s, q, n in raw["history"]]
            rounds = [int(r) for r in raw["rounds"]]
            runs = [str(r) for r in raw.get("runs", [""] * len(history))]
            sources = [[str(x) for x in s] for s in raw.get("sources", [[] for _ in history])]
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ConfigError(
                str(path),
                "(file)",
                f"a privacy ledger ({type(err).__name__}: {err}); restore it from a backup, never delete it",
            ) from err
        if not len(runs) == len(sources) == len(history):
            raise ConfigError(
                str(path), "history", f"as many 'runs' and 'sources' entries as mechanisms ({len(history)})"
            )
        return cls(path, history, rounds, runs, sources)

    def record(
        self,
        server_round: int,
        mechanisms: Sequence[Mechanism],
        run: str = "",
        sources: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """Append a round's releases (of ``run``, touching ``sources[i]`` for mechanism i) and
        write the file atomically (fsynced before the rename)."""
        self.history.extend(mechanisms)
        self.rounds.append(server_round)
        self.runs.extend([run] * len(mechanisms))
        self.sources.extend([list(s) for s in sources] if sources is not None else [[] for _ in mechanisms])
        payload = {"history": self.history, "rounds": self.rounds, "runs": self.runs, "sources": self.sources}
        atomic_write_bytes(self.path, json.dumps(payload).encode("utf-8"), mode=0o644)

    def epsilon(
        self, delta: float, extra: Sequence[Mechanism] = (), run: str | None = None, source: str | None = None
    ) -> float:
        """Epsilon spent so far, or after ``extra`` more releases; only the mechanisms of
        ``run`` and/or touching ``source`` when given (default: the lifetime total)."""
        kept = [
            m
            for m, r, s in zip(self.history, self.runs, self.sources)
            if (run is None or r == run) and (source is None or source in s)
        ]
        return epsilon_spent([*kept, *extra], delta)


def source_epsilon(folder: Path, source: str, delta: float, extra: Sequence[Mechanism] = ()) -> float:
    """Epsilon spent on one data source by every site ledger in ``folder`` (plus ``extra``).

    A manifest's budget follows the data, not the site file: a site file renamed, or a second
    file over the same manifest, keeps drawing on what the data already released.

    Raises
    ------
    ConfigError
        When a ledger in ``folder`` does not parse.
    """
    mechanisms: list[Mechanism] = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            if not _LEGACY_LEDGER.match(path.name):  # per-run files of earlier versions carry no sources
                ledger = PrivacyLedger.load(path)
                mechanisms += [m for m, s in zip(ledger.history, ledger.sources) if source in s]
    return epsilon_spent([*mechanisms, *extra], delta)


def secret_generator() -> torch.Generator:
    """A generator seeded from the OS. DP noise and Poisson sampling must not derive from the
    run seed, which the server knows: it could regenerate and subtract the noise."""
    return torch.Generator().manual_seed(secrets.randbits(63))


# --------------------------------------------------------------------------- client level
def clip_update(
    global_state: Mapping[str, torch.Tensor], local_state: Mapping[str, torch.Tensor], clip: float
) -> tuple[dict[str, torch.Tensor], float]:
    """The update ``local - global`` of the floating-point keys of ``local_state`` (float64),
    scaled as one vector to L2 norm at most ``clip`` (Flower's ``clip_inputs_inplace``).

    Returns
    -------
    (update, norm)
        The clipped update and its norm before clipping.
    """
    keys = [k for k, v in local_state.items() if v.is_floating_point()]
    update = {k: local_state[k].detach().double().cpu() - global_state[k].detach().double().cpu() for k in keys}
    # a tensor: update is not empty where the sum is taken (typeshed's sum admits its int start)
    norm = float(torch.sqrt(cast(torch.Tensor, sum((u * u).sum() for u in update.values())))) if update else 0.0
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: u * scale for k, u in update.items()}, norm


def gaussian_noise(
    update: Mapping[str, torch.Tensor], std: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """``N(0, std^2)`` noise shaped like each tensor of ``update``, drawn in key order."""
    return {k: torch.randn(u.shape, generator=generator, dtype=torch.float64) * std for k, u in update.items()}


def clip_and_noise(
    global_state: Mapping[str, torch.Tensor],
    local_state: Mapping[str, torch.Tensor],
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Clip the update ``local - global`` (all keys together) to L2 norm ``clip``, add
    ``N(0, (noise_multiplier * clip)^2)`` to every element, and return ``global + update``.

    The steps of Flower's ``LocalDpMod`` (``compute_clip_model_update``, then Gaussian noise
    on the parameters), on the floating-point tensors of ``local_state``; the noise std is
    ``noise_multiplier * clip`` and is accounted with RDP (:func:`round_mechanisms`).

    Returns
    -------
    (state, norm)
        The privatised tensors and the update norm before clipping (stays on the site).
    """
    update, norm = clip_update(global_state, local_state, clip)
    noise = gaussian_noise(update, noise_multiplier * clip, generator or secret_generator())
    out = {k: (global_state[k].detach().double().cpu() + update[k] + noise[k]).to(local_state[k].dtype) for k in update}
    return out, norm


# --------------------------------------------------------------------------- sample level
def dp_modules(model: VLPModel, objectives: Iterable[Any]) -> dict[str, nn.Module]:
    """The modules whose parameters the objectives train: encoders and heads, by group name."""
    out: dict[str, nn.Module] = {}
    for objective in objectives:
        for group in objective.groups:
            out[group] = model.head[objective.name] if group.startswith("head.") else getattr(model, group)
    return out


class DPSGDTrainer:
    """DP-SGD around a :class:`LocalTrainer` (same model, datasets and objectives).

    Per step and per source: a Poisson-sampled batch (rate batch/rows), per-sample gradients
    from opacus hooks on the modules the source trains, clipping to ``dp-max-grad-norm``,
    Gaussian noise and AdamW (opacus' ``DPOptimizer``). The DataLoader workers of the wrapped
    trainer are not used: rows are read in this process. Nor are its speed options
    (``channels-last``, ``cpu-autocast``, ``fused-optimizer``, ``compile``): opacus' per-sample
    gradients are validated in fp32 on eager, contiguous modules, with torch's default AdamW.

    Raises
    ------
    ConfigError
        When a module to train is not valid for opacus (``ModuleValidator``), e.g. BatchNorm.
    """

    def __init__(
        self, trainer: LocalTrainer, run: RunConfig, sources: Sequence[int], generator: torch.Generator | None = None
    ):
        self.trainer, self.run, self.sources = trainer, run, list(sources)
        self.generator = generator or secret_generator()
        model = trainer.model
        for objective in model.objectives:
            if isinstance(objective, MLMObjective):
                objective.per_sample = True  # a mean of per-sample means, not a token mean
        self._hooked: dict[str, GradSampleModule] = {}
        for index in self.sources:
            for group, module in dp_modules(model, trainer.objectives_for(trainer.datasets[index].modalities)).items():
                if group in self._hooked:
                    continue
                errors = ModuleValidator.validate(module, strict=False)
                if errors:
                    raise ConfigError(
                        "run_config",
                        "norm" if any("BatchNorm" in str(e) for e in errors) else "recipe",
                        f"modules opacus supports in group '{group}' ({errors[0]})",
                    )
                # Hooks go on the module in place; the model keeps its attribute and key names.
                self._hooked[group] = GradSampleModule(module, loss_reduction="mean")

    def _batches(self, index: int, steps: int) -> Iterator[dict[str, Any] | None]:
        dataset = self.trainer.datasets[index]
        sampler = UniformWithReplacementSampler(
            num_samples=len(dataset),
            sample_rate=sample_rate(len(dataset), self.run.batch_size),
            generator=self.generator,
            steps=steps,
        )
        collate = getattr(dataset, "collate_fn", collate_samples)
        for indices in sampler:
            yield collate([dataset[i] for i in indices]) if len(indices) else None

    def train(self, steps: int, seed: int = 0) -> LocalResult:
        """``steps`` DP-SGD steps on every training source; metrics as :meth:`LocalTrainer.train`."""
        trainer, run = self.trainer, self.run
        torch.manual_seed(seed)  # masks and dropout (not privacy-relevant)
        trainer.model.train()
        named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        optimizers, batches = {}, {}
        for index in self.sources:
            groups = {g for o in trainer.objectives_for(trainer.datasets[index].modalities) for g in o.groups}
            params = [p for n, p in named if group_of(n) in groups]
            rows = len(trainer.datasets[index])
            inner = torch.optim.AdamW(params, lr=run.lr, weight_decay=run.weight_decay)
            optimizers[index] = DPOptimizer(
                inner,
                noise_multiplier=run.dp_noise_multiplier,
                max_grad_norm=run.dp_max_grad_norm,
                expected_batch_size=sample_rate(rows, run.batch_size) * rows,
                generator=self.generator,
            )
            batches[index] = self._batches(index, steps)
        touched = {n for n, p in named if any(p is q for o in optimizers.values() for q in o.params)}
        totals: defaultdict[str, float] = defaultdict(float)
        seen: Counter[str] = Counter()
        started = time.perf_counter()
        for _ in range(steps):
            for index in self.sources:
                optimizer = optimizers[index]
                optimizer.zero_grad(set_to_none=True)
                raw = next(batches[index])
                batch = {}
                if raw is not None:
                    trainer.record_skips(raw)
                    batch = trainer.to_device(raw)
                size = 0
                if batch:
                    size = BatchView(trainer.model, batch).size
                    # The plain trainer's loss loop on this source's batch (full precision: opacus'
                    # per-sample gradients are not validated under autocast).
                    total, terms, _ = trainer.step_losses(trainer.model, [(index, batch)], None, amp=False)
                    tally_losses(totals, seen, terms)
                    if total is not None:
                        with warnings.catch_warnings():  # the stem's input (pixels) needs no gradient
                            warnings.filterwarnings("ignore", message="Full backward hook is firing")
                            total.backward()
                for p in optimizer.params:  # not reached by this batch: zero per-sample gradients
                    if getattr(p, "grad_sample", None) is None:
                        p.grad_sample = torch.zeros((size, *p.shape), device=p.device, dtype=p.dtype)
                optimizer.step()  # an empty Poisson batch still takes a noise-only step
        return trainer.result(totals, seen, started, steps, set(touched))
