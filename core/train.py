"""Local training: every objective that fits a batch, one optimizer step per local step."""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .alignment import alignment_metrics
from .config import RunConfig, SiteConfig, loader_workers
from .data.datasets import SiteDataset, collate_samples
from .data.holdout import holdout_split
from .data.loader import site_rows
from .data.manifest import ManifestRows
from .data.studies import StudyDataset
from .data.tokenizer import load_run_tokenizer
from .models.family import STUDIES
from .models.protocol import VLPModel
from .models.registry import family_of
from .objectives import BatchView
from .objectives.pooling import masked_mean
from .objectives.teacher import GlobalTeacher, anchor_loss, proximal_term
from .optim import build_optimizer, warmup_factor
from .precision import cpu_autocast_enabled

__all__ = [
    "LocalResult",
    "LocalTrainer",
    "SiteData",
    "add_source",
    "load_site_datasets",
    "load_site_data",
    "resolve_device",
    "tally_losses",
    "tensor_bytes",
]


def resolve_device(name: str, origin: str = "run_config", key: str = "device") -> torch.device:
    """``auto`` means the first visible GPU when there is one, else the CPU.

    Raises
    ------
    ConfigError
        When ``name`` asks for a CUDA device this machine does not have (naming ``origin`` and
        ``key``), instead of CUDA's own error at the first tensor moved.
    """
    from .runtime import check_device

    return torch.device(check_device(name, torch.cuda.device_count() if torch.cuda.is_available() else 0, origin, key))


@dataclass
class LocalResult:
    """What one round of local training produced (weights stay in the model)."""

    group_counts: dict[str, int]
    metrics: dict[str, float]
    skipped: Counter[str] = field(default_factory=Counter)
    touched: frozenset[str] = frozenset()  # parameters that received a gradient this round


@dataclass
class SiteData:
    """A site's training datasets (one per source) and its held-out pairs (alignment metrics)."""

    datasets: list[SiteDataset | StudyDataset]
    holdout: list[SiteDataset] = field(default_factory=list)


def load_site_data(site: SiteConfig, run: RunConfig, max_len: int, augment: bool = True) -> SiteData:
    """One training dataset per source of a site, with manifest-level problems already skipped,
    and, for pair sources, the pairs held out for alignment metrics (run-config ``align-holdout``).

    Sources get a second augmented view of every image when self-distillation is on.

    Raises
    ------
    ConfigError
        When the site is left with no usable row at all.
    """
    tokenizer = load_run_tokenizer(run)  # MiniLM's vocabulary under text-init = "minilm"
    data = SiteData([])
    for rows in site_rows(site):  # raises ConfigError naming the site file when nothing is usable
        if len(rows):
            add_source(data, rows, run, tokenizer, max_len, augment)
    return data


def add_source(
    data: SiteData, rows: ManifestRows, run: RunConfig, tokenizer: Any, max_len: int, augment: bool = True
) -> None:
    """Append the training dataset of one source's ``rows`` to ``data`` (and its held-out pairs).

    Pair sources of a family that trains on studies (REFERS) become study datasets; other sources get a second
    augmented view of every image when self-distillation is on, and pair sources keep
    ``align-holdout`` of their pairs apart for the alignment metrics.
    """
    text_tokenizer = tokenizer if "text" in rows.source.modalities else None
    spec = run.spec
    # Views of an images-only source contradict no report, so they may take another profile.
    profile = (
        run.image_only_augment if run.image_only_augment and "text" not in rows.source.modalities else spec.augment
    )
    options: dict[str, Any] = {"profile": profile, "text_view": spec.text_view}
    if family_of(run).dataset == STUDIES and rows.images is not None and rows.reports is not None:
        # REFERS trains on studies: up to 3 views of one study with its report.
        data.datasets.append(StudyDataset(rows, run.image_size, tokenizer, max_len, augment, **options))
        return
    views = 2 if run.objective_weights().get("distill", 0.0) > 0 else 1
    train, held = holdout_split(rows, run.align_holdout) if "pair" in rows.source.modalities else (None, ())
    if len(held):
        data.holdout.append(SiteDataset(rows, run.image_size, text_tokenizer, max_len, False, indices=held, **options))
    data.datasets.append(
        SiteDataset(
            rows,
            run.image_size,
            text_tokenizer,
            max_len,
            augment,
            views=views,
            indices=train if len(held) else None,
            **options,
        )
    )


def load_site_datasets(
    site: SiteConfig, run: RunConfig, max_len: int, augment: bool = True
) -> list[SiteDataset | StudyDataset]:
    """The training datasets of :func:`load_site_data` (without the held-out pairs)."""
    return load_site_data(site, run, max_len, augment).datasets


def tally_losses(totals: dict[str, float], seen: Counter[str], terms: Sequence[tuple[str, float]]) -> None:
    """Add a step's ``(name, loss value)`` terms to the running sums and counts of a round's mean losses."""
    for name, value in terms:
        totals[name] += value
        seen[name] += 1


class _TagSource:
    """A dataset's collate function that also marks the batch with the dataset's position in the
    trainer (``batch["source"]``), so skipped samples are charged to the source they belong to.

    A top-level class, so DataLoader workers can unpickle it.
    """

    def __init__(self, collate: Any, index: int):
        self.collate: Callable[[list[dict[str, Any]]], dict[str, Any]] = (
            collate.collate if isinstance(collate, _TagSource) else collate
        )
        self.index = index

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(samples)
        batch["source"] = self.index
        return batch


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the storages behind ``tensors``, each storage counted once (views share one)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


class LocalTrainer:
    """Trains a model of any family (:class:`~fedvlp.core.models.VLPModel`) on one site's datasets.

    Parameters
    ----------
    model
        The model; its weights are updated in place.
    datasets
        One dataset per source; each local step draws one batch from every source.
    run
        Batch size, learning rate, clipping and objective weights.
    device
        Where to train.
    num_workers
        The node's default of DataLoader worker processes that decode images, used when the run
        config leaves ``loader-workers`` at 0 (:func:`~fedvlp.core.config.loader_workers`);
        ``None``: ``$FEDVLP_LOADER_WORKERS``.
    """

    def __init__(
        self,
        model: VLPModel,
        datasets: Sequence[SiteDataset | StudyDataset] | SiteData,
        run: RunConfig,
        device: torch.device,
        num_workers: int | None = 0,
    ):
        self.model = model.to(device)
        data = datasets if isinstance(datasets, SiteData) else SiteData(list(datasets))
        self.datasets = list(data.datasets)
        self.holdout = list(data.holdout)
        self.run = run
        self.device = device
        self.weights = run.objective_weights()
        self.num_workers = loader_workers(run, num_workers)  # run-config loader-workers, else the node's default
        self._optimizer: torch.optim.Optimizer | None = None  # kept across rounds with persistent-optimizer
        self._optimizer_steps = 0
        self._teacher: GlobalTeacher | None = None
        self._iterators: list[Iterator[dict[str, Any]] | None] = [None] * len(self.datasets)
        for index, dataset in enumerate(self.datasets):
            # an instance attribute the data loader reads (SiteDataset has none of its own)
            setattr(dataset, "collate_fn", _TagSource(getattr(dataset, "collate_fn", collate_samples), index))
        # Samples of each source found unusable (image rejected in a worker): they never train,
        # so they leave the counts sent to the server.
        self._unusable: list[set[str]] = [set() for _ in self.datasets]
        # Sources whose batches entered a loss in the last round of train() (None: not tracked)
        self._trained_sources: set[int] | None = None
        self._loaders = [self._loader(d, i) for i, d in enumerate(self.datasets)]
        # Speed options (run-config channels-last, compile) apply at the first train(): the
        # DP-SGD trainer (core/privacy.py) runs its own loop over this trainer and never gets them.
        self.channels_last = False
        self._speed_applied = False
        self.skipped: Counter[str] = Counter()
        self._skipped_ids: set[str] = set()
        self.problems: list[str] = []
        for dataset in self.datasets:  # rows already dropped while reading the manifests
            self.skipped.update(dataset.rows.skipped)
            self.problems.extend(dataset.rows.problems)

    def _loader(self, dataset: SiteDataset | StudyDataset, index: int) -> DataLoader[dict[str, Any]]:
        generator = torch.Generator().manual_seed(self.run.seed * 1000 + index)
        return DataLoader(
            dataset,
            batch_size=min(self.run.batch_size, len(dataset)),
            shuffle=True,
            drop_last=len(dataset) >= self.run.batch_size,
            collate_fn=getattr(dataset, "collate_fn", collate_samples),
            num_workers=self.num_workers,  # decode + resize in worker processes
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def objectives_for(self, modalities: frozenset[str]) -> list[Any]:
        """Active objectives (weight > 0) that a batch with ``modalities`` can train."""
        return [o for o in self.model.objectives if self.weights[o.name] > 0 and o.applies_to(modalities)]

    def usable_samples(self, index: int) -> int:
        """Samples of source ``index`` that can train: its size less the samples found unusable.

        Rows skipped while reading the manifest are not in the dataset at all; images are
        decoded lazily, so an unreadable image leaves the count from the round in which a
        batch first draws it (after one pass over the source, the count is exact).
        """
        return len(self.datasets[index]) - len(self._unusable[index])

    def group_counts(self, every_source: bool = False) -> dict[str, int]:
        """For each group this site trains, the number of its samples that train it.

        A source counts with its usable samples (:meth:`usable_samples`), and only when its
        batches entered a loss in the last :meth:`train` (a source whose batches were all
        unusable trained nothing) unless ``every_source``: then it is the site's size, what it
        declares to the server (which only ever shrinks as unusable samples are found).
        """
        counts: Counter[str] = Counter()
        for index, dataset in enumerate(self.datasets):
            if not every_source and self._trained_sources is not None and index not in self._trained_sources:
                continue
            groups = {g for o in self.objectives_for(dataset.modalities) for g in o.groups}
            usable = self.usable_samples(index)
            for group in groups:
                if usable > 0:
                    counts[group] += usable
        return dict(counts)

    def _next_batch(self, index: int) -> dict[str, Any]:
        for _ in range(2):
            if self._iterators[index] is None:
                self._iterators[index] = iter(self._loaders[index])
            try:
                return next(self._iterators[index])  # type: ignore[arg-type]
            except StopIteration:
                self._iterators[index] = None
        raise RuntimeError(f"{self.datasets[index].rows.source.manifest}: the data loader yields no batch")

    def record_skips(self, batch: dict[str, Any]) -> None:
        """Note the samples a drawn batch had to skip: unusable for its source, counted once per sample."""
        source = batch.get("source")
        studies = source is not None and isinstance(self.datasets[source], StudyDataset)
        for sample_id, reason, detail in batch["skipped"]:
            if source is not None and (not studies or sample_id.startswith("study:")):
                # a study that lost one view still trains; only a whole lost sample is unusable
                self._unusable[source].add(sample_id)
            if sample_id not in self._skipped_ids:
                self._skipped_ids.add(sample_id)
                self.skipped[reason] += 1
                self.problems.append(detail or f"{sample_id}: {reason}")

    def to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The tensors of a drawn batch that the objectives read, on the trainer's device."""
        keys = ("image", "image2", "views", "view_mask", "input_ids", "attention_mask", "paired")
        out = {k: batch[k].to(self.device, non_blocking=True) for k in keys if k in batch}
        if self.channels_last:
            for key in ("image", "image2"):
                if key in out and out[key].dim() == 4:
                    out[key] = out[key].contiguous(memory_format=torch.channels_last)
        return out

    def _apply_speed_options(self) -> None:
        """Run-config ``channels-last`` and ``compile``, once, before the first local step.

        ``channels-last`` stores the 4-d weights (convolutions) and the image batches as NHWC,
        which oneDNN / cuDNN convolutions run faster; ``compile`` wraps the forward of each
        encoder in ``torch.compile`` in place (``nn.Module.compile``: parameter names and
        the state dict stay as they are).
        """
        if self._speed_applied:
            return
        self._speed_applied = True
        if self.run.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.channels_last = True
        if self.run.compile:
            for name in ("image", "text", "joint"):
                module = getattr(self.model, name, None)
                if isinstance(module, torch.nn.Module):
                    module.compile(dynamic=False)

    def _needs_teacher(self) -> bool:
        return self.weights.get("distill", 0.0) > 0 or self.run.weight_anchor > 0

    def _round_teacher(self) -> GlobalTeacher | None:
        """The round's global model (the weights the model holds now) as a frozen teacher."""
        if not self._needs_teacher():
            return None
        if self._teacher is None:
            self._teacher = GlobalTeacher(self.model, text=self.run.weight_anchor > 0).to(self.device)
        else:
            self._teacher.refresh(self.model)
        return self._teacher

    def held_bytes(self) -> int:
        """Bytes of the tensors this trainer keeps between rounds: the model's weights and
        buffers, their gradients, the optimizer's state and the distillation teacher (each storage
        counted once). What a ClientApp's trainer cache bounds with ``trainer-cache-mb``.
        """
        tensors: list[torch.Tensor] = list(self.model.state_dict().values())
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        if self._optimizer is not None:
            tensors += [v for state in self._optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        if self._teacher is not None:
            tensors += self._teacher.tensors()
        return tensor_bytes(tensors)

    def _round_optimizer(self) -> torch.optim.Optimizer | None:
        """A fresh AdamW, or the site's previous one under ``persistent-optimizer``."""
        if self.run.persistent_optimizer and self._optimizer is not None:
            return self._optimizer
        self._optimizer = build_optimizer(self.model, self.run)
        self._optimizer_steps = 0
        if self._optimizer is not None:
            for group in self._optimizer.param_groups:
                group["base_lr"] = group["lr"]
        return self._optimizer

    def _anchor(self, view: BatchView) -> torch.Tensor | None:
        """``1 - cos`` between the local and the global model's features of this batch (image and text)."""
        teacher = view.teacher
        assert teacher is not None
        terms = []
        if "image" in view.batch:
            terms.append(anchor_loss(view.image_vector(), view.teacher_image_vector()))
        if teacher.text is not None and "input_ids" in view.batch:
            mask = view.batch["attention_mask"]
            with torch.no_grad():
                target = masked_mean(teacher.text(view.batch["input_ids"], mask), mask)
            terms.append(anchor_loss(masked_mean(view.text_states, mask), target))
        return torch.stack(terms).mean() if terms else None

    def step_losses(
        self,
        model: torch.nn.Module,
        batches: Sequence[tuple[int, dict[str, torch.Tensor]]],
        teacher: GlobalTeacher | None,
        amp: bool | None = None,
    ) -> tuple[torch.Tensor | None, list[tuple[str, float]], set[int]]:
        """The losses of one local step: every objective that fits each source's batch.

        The one loss loop of local training: :meth:`train` calls it for all sources of a step,
        :class:`~fedvlp.core.privacy.DPSGDTrainer` for one source's Poisson batch at a time.

        Parameters
        ----------
        model
            The model to run (``self.model``; core/distributed.py calls this inside DDP's forward).
        batches
            ``(source index, batch on the device)`` for every source that drew a non-empty batch.
        teacher
            The round's global model, when self-distillation or the anchor is on.
        amp
            bfloat16 autocast; ``None``: on CUDA devices, and on the CPU under run-config
            ``cpu-autocast = "bf16"`` (or ``"auto"`` where the CPU has native bfloat16).

        Returns
        -------
        tuple
            The weighted total (``None`` when no objective applied), ``(name, loss value)`` of
            every term, and the sources whose batches entered a loss.
        """
        total = None
        terms: list[tuple[str, float]] = []
        sources: set[int] = set()
        if amp is None:
            on_cpu = self.device.type == "cpu"
            amp = self.device.type == "cuda" or (on_cpu and cpu_autocast_enabled(self.run.cpu_autocast))
        use_amp = amp
        for index, batch in batches:
            view = BatchView(model, batch, teacher)
            losses: list[tuple[str, float, torch.Tensor]] = []
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                for objective in self.objectives_for(view.modalities):
                    if objective.modalities == {"image", "text"} and view.size < 2:
                        continue  # in-batch negatives need two pairs
                    losses.append((objective.name, self.weights[objective.name], objective.loss(view)))
                if self.run.weight_anchor > 0 and losses:
                    anchor = self._anchor(view)
                    if anchor is not None:
                        losses.append(("anchor", self.run.weight_anchor, anchor))
            if losses:
                sources.add(index)
            for name, weight, loss in losses:
                weighted = weight * loss.float()
                total = weighted if total is None else total + weighted
                terms.append((name, float(loss.detach())))
        return total, terms, sources

    # Hooks that core/distributed.py overrides: one process trains on the whole batch.
    def _shard(self, raw: dict[str, Any]) -> dict[str, Any]:
        """This process's part of a drawn batch (all of it)."""
        return raw

    def _forward(
        self, batches: Sequence[tuple[int, dict[str, torch.Tensor]]], teacher: GlobalTeacher | None, step: int
    ) -> tuple[torch.Tensor | None, list[tuple[str, float]], set[int]]:
        """:meth:`step_losses` of ``self.model``."""
        return self.step_losses(self.model, batches, teacher)

    def _backward(self, total: torch.Tensor | None) -> bool:
        """Backpropagate ``total``; whether the step has gradients to apply."""
        if total is None:
            return False
        total.backward()
        return True

    def train(self, steps: int, seed: int = 0) -> LocalResult:
        """Run ``steps`` optimizer steps from the weights the model holds (the round's global model).

        AdamW with the learning rates of :func:`~fedvlp.core.optim.param_groups` and a linear
        warmup, fresh every call unless ``persistent-optimizer`` (optimizer state is never
        federated). Self-distillation and the anchor use the weights at the start of the call
        as teacher; ``prox-mu`` pulls towards them in parameter space.

        Returns
        -------
        LocalResult
            Per-group counts of the samples that trained (:meth:`group_counts`) and mean losses
            (``loss/<objective>``, ``loss/total``, and ``loss/anchor`` / ``loss/prox`` when on),
            alignment on held-out pairs (``align/...``).
        """
        # Everything random in a round derives from ``seed``, so a restarted process repeats
        # a round bit for bit: the global RNG (masks, dropout, augmentation) and the shuffles.
        torch.manual_seed(seed)
        self._apply_speed_options()
        for index, loader in enumerate(self._loaders):
            assert loader.generator is not None
            loader.generator.manual_seed(seed * 1000 + index)
            self._iterators[index] = None
        self.model.train()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        touched: set[str] = set()
        optimizer = self._round_optimizer()
        teacher = self._round_teacher()
        reference = {n: p.detach().clone() for n, p in named} if self.run.prox_mu > 0 else {}
        totals: defaultdict[str, float] = defaultdict(float)
        seen: Counter[str] = Counter()
        trained_sources: set[int] = set()
        started = time.perf_counter()
        # A bar for a site daemon's terminal; off when stderr is no TTY (simulation actors) or quiet
        for step in tqdm(
            range(steps),
            desc="local steps",
            unit="step",
            leave=False,
            disable=True if os.environ.get("FEDVLP_QUIET") == "1" else None,
        ):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            batches = []
            for index in range(len(self.datasets)):
                raw = self._next_batch(index)
                self.record_skips(raw)
                batch = self.to_device(self._shard(raw))
                if batch:
                    batches.append((index, batch))
            total, terms, sources = self._forward(batches, teacher, step)
            trained_sources |= sources
            tally_losses(totals, seen, terms)
            if optimizer is None:
                continue
            if reference and total is not None:
                prox = proximal_term(named, reference)
                total = total + self.run.prox_mu * prox
                totals["prox"] += float(prox.detach())
                seen["prox"] += 1
            if not self._backward(total):
                continue
            touched.update(n for n, p in named if p.grad is not None and n not in touched)
            if self.run.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.run.grad_clip)
            factor = warmup_factor(self._optimizer_steps, self.run.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            optimizer.step()
            self._optimizer_steps += 1
            if teacher is not None:
                teacher.ema_update(self.model, self.run.distill_ema)
        self._trained_sources = trained_sources
        result = self.result(totals, seen, started, steps, touched)
        result.metrics.update(self.alignment())
        return result

    def alignment(self) -> dict[str, float]:
        """Alignment metrics (:func:`~fedvlp.core.alignment.alignment_metrics`) on the held-out pairs."""
        metrics: dict[str, float] = {}
        for dataset in self.holdout:
            samples = [dataset[i] for i in range(len(dataset))]
            batch = collate_samples(samples)
            if "input_ids" not in batch or len(batch["ids"]) < 2:
                continue
            rows = dataset.rows
            study = {
                rows.ids[i]: (rows.study_ids[i] if rows.study_ids is not None else "") or rows.ids[i]
                for i in dataset.indices
            }
            metrics.update(alignment_metrics(self.model, self.to_device(batch), [study[i] for i in batch["ids"]]))
        return metrics

    def result(
        self, totals: dict[str, float], seen: dict[str, int], started: float, steps: int, touched: set[str]
    ) -> LocalResult:
        """A round's :class:`LocalResult`: mean loss per objective, their weighted total, time, steps, skips."""
        metrics = {f"loss/{name}": totals[name] / seen[name] for name in totals}
        term_weights = {**self.weights, "anchor": self.run.weight_anchor, "prox": self.run.prox_mu}
        metrics["loss/total"] = sum(term_weights[n] * metrics[f"loss/{n}"] for n in totals)
        metrics["train-seconds"] = time.perf_counter() - started
        metrics["steps"] = float(steps)
        for reason, count in self.skipped.items():
            metrics[f"skipped/{reason}"] = float(count)
        return LocalResult(self.group_counts(), metrics, Counter(self.skipped), frozenset(touched))
