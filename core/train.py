"""Local training: every objective that fits a batch, one optimizer step per local step."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from .config import RunConfig, SiteConfig
from .data.datasets import SiteDataset, collate_samples
from .data.loader import site_rows
from .data.studies import StudyDataset
from .data.tokenizer import load_run_tokenizer
from .models.model import FedVLPModel
from .objectives import BatchView

__all__ = ["LocalResult", "LocalTrainer", "load_site_datasets", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` means the first visible GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class LocalResult:
    """What one round of local training produced (weights stay in the model)."""

    group_counts: dict[str, int]
    metrics: dict[str, float]
    skipped: Counter[str] = field(default_factory=Counter)
    touched: frozenset[str] = frozenset()  # parameters that received a gradient this round


def load_site_datasets(site: SiteConfig, run: RunConfig, max_len: int, augment: bool = True) -> list[SiteDataset]:
    """One dataset per source of a site, with manifest-level problems already skipped.

    Raises
    ------
    ConfigError
        When the site is left with no usable row at all.
    """
    tokenizer = load_run_tokenizer(run)  # MiniLM's vocabulary under text-init = "minilm"
    datasets = []
    for rows in site_rows(site):  # raises ConfigError naming the site file when nothing is usable
        if len(rows):
            text_tokenizer = tokenizer if "text" in rows.source.modalities else None
            spec = run.spec
            options = {"profile": spec.augment, "text_view": spec.text_view}
            if spec.family == "vit" and rows.images is not None and rows.reports is not None:
                # REFERS trains on studies: up to 3 views of one study with its report.
                datasets.append(StudyDataset(rows, run.image_size, tokenizer, max_len, augment, **options))
            else:
                datasets.append(SiteDataset(rows, run.image_size, text_tokenizer, max_len, augment, **options))
    return datasets


class LocalTrainer:
    """Trains a :class:`FedVLPModel` on one site's datasets.

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
        DataLoader worker processes that decode images.
    """

    def __init__(self, model: FedVLPModel, datasets: Sequence[SiteDataset], run: RunConfig, device: torch.device, num_workers: int = 0):
        self.model = model.to(device)
        self.datasets = list(datasets)
        self.run = run
        self.device = device
        self.weights = run.objective_weights()
        self.num_workers = num_workers
        self._iterators: list[Iterator[dict[str, Any]] | None] = [None] * len(self.datasets)
        self._loaders = [self._loader(d, i) for i, d in enumerate(self.datasets)]
        self.skipped: Counter[str] = Counter()
        self._skipped_ids: set[str] = set()
        self.problems: list[str] = []
        for dataset in self.datasets:  # rows already dropped while reading the manifests
            self.skipped.update(dataset.rows.skipped)
            self.problems.extend(dataset.rows.problems)

    def _loader(self, dataset: SiteDataset, index: int) -> DataLoader[dict[str, Any]]:
        generator = torch.Generator().manual_seed(self.run.seed * 1000 + index)
        return DataLoader(
            dataset,
            batch_size=min(self.run.batch_size, len(dataset)),
            shuffle=True,
            drop_last=len(dataset) >= self.run.batch_size,
            collate_fn=getattr(dataset, "collate_fn", collate_samples),
            # decode + resize in worker processes: FEDVLP_LOADER_WORKERS or run-config loader-workers
            num_workers=max(self.num_workers, self.run.loader_workers),
            persistent_workers=max(self.num_workers, self.run.loader_workers) > 0,
            generator=generator,
        )

    def objectives_for(self, modalities: frozenset[str]) -> list[Any]:
        """Active objectives (weight > 0) that a batch with ``modalities`` can train."""
        return [o for o in self.model.objectives if self.weights[o.name] > 0 and o.applies_to(modalities)]

    def group_counts(self) -> dict[str, int]:
        """For each group this site trains, the number of its samples that train it."""
        counts: Counter[str] = Counter()
        for dataset in self.datasets:
            groups = {g for o in self.objectives_for(dataset.modalities) for g in o.groups}
            for group in groups:
                counts[group] += len(dataset)
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

    def _record_skips(self, batch: dict[str, Any]) -> None:
        for sample_id, reason, detail in batch["skipped"]:
            if sample_id not in self._skipped_ids:
                self._skipped_ids.add(sample_id)
                self.skipped[reason] += 1
                self.problems.append(detail or f"{sample_id}: {reason}")

    def _to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        keys = ("image", "views", "view_mask", "input_ids", "attention_mask", "paired")
        return {k: batch[k].to(self.device, non_blocking=True) for k in keys if k in batch}

    def train(self, steps: int, seed: int = 0) -> LocalResult:
        """Run ``steps`` optimizer steps; a fresh AdamW each call (state is not federated).

        Returns
        -------
        LocalResult
            Per-group sample counts and mean losses (``loss/<objective>``, ``loss/total``).
        """
        # Everything random in a round derives from ``seed``, so a restarted process repeats
        # a round bit for bit: the global RNG (masks, dropout, augmentation) and the shuffles.
        torch.manual_seed(seed)
        for index, loader in enumerate(self._loaders):
            assert loader.generator is not None
            loader.generator.manual_seed(seed * 1000 + index)
            self._iterators[index] = None
        self.model.train()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        touched: set[str] = set()
        optimizer = torch.optim.AdamW(params, lr=self.run.lr, weight_decay=self.run.weight_decay)
        totals: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        use_amp = self.device.type == "cuda"
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            total = None
            for index, dataset in enumerate(self.datasets):
                raw = self._next_batch(index)
                self._record_skips(raw)
                batch = self._to_device(raw)
                if not batch:
                    continue
                view = BatchView(self.model, batch)
                for objective in self.objectives_for(view.modalities):
                    if objective.modalities == {"image", "text"} and view.size < 2:
                        continue  # in-batch negatives need two pairs
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss = objective.loss(view)
                    weighted = self.weights[objective.name] * loss.float()
                    total = weighted if total is None else total + weighted
                    totals[objective.name] += float(loss.detach())
                    seen[objective.name] += 1
            if total is None:
                continue
            total.backward()
            touched.update(n for n, p in named if p.grad is not None and n not in touched)
            if self.run.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.run.grad_clip)
            optimizer.step()
        return self.result(totals, seen, started, steps, touched)

    def result(self, totals: dict[str, float], seen: dict[str, int], started: float, steps: int, touched: set[str]) -> LocalResult:
        """A round's :class:`LocalResult`: mean loss per objective, their weighted total, time, steps, skips."""
        metrics = {f"loss/{name}": totals[name] / seen[name] for name in totals}
        metrics["loss/total"] = sum(self.weights[n] * metrics[f"loss/{n}"] for n in totals)
        metrics["train-seconds"] = time.perf_counter() - started
        metrics["steps"] = float(steps)
        for reason, count in self.skipped.items():
            metrics[f"skipped/{reason}"] = float(count)
        return LocalResult(self.group_counts(), metrics, Counter(self.skipped), frozenset(touched))
