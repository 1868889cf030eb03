"""Full fine-tuning of the image encoder with a linear head, ConVIRT's recipe.

The head starts at random, or from a linear probe of the frozen encoder (LP-FT, Kumar et al.
2022, who find that a fitted head distorts the pretrained features less; on the sites/cxr
study it scores lower, docs/evaluation.md). Head warm-up with the encoder frozen (in eval
mode, so batch-norm statistics stay), then everything trains; Adam with weight decay 1e-6,
dropout 0.2 before the head, the learning rates halved when the validation AUC stops
improving, early stopping on validation AUC, and the weights of the best validation AUC are
the ones scored on the test set.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .tasks import Task, binary_tasks, has_auc, output_dim, task_loss, validation_score

__all__ = ["PRECISIONS", "FinetuneConfig", "FinetuneResult", "Classifier", "finetune", "predict", "step_budget"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Knobs of one fine-tuning run (defaults are tuned for the small encoder on CPU)."""

    batch_size: int = 64
    lr_head: float = 1e-3
    lr_encoder: float = 3e-4
    weight_decay: float = 1e-6
    dropout: float = 0.2
    min_steps: int = 100  # small subsets still get this many optimizer steps
    epochs: int = 10  # ... or this many passes over the subset, whichever is more
    max_steps: int = 1000  # hard cap on the budget
    eval_every: int | None = None  # steps between validations; None: budget // 10 (at least 5)
    patience: int = 4  # validations without improvement before stopping
    warmup_fraction: float = 0.1  # share of the step budget that trains the head only (encoder frozen)
    plateau_patience: int | None = (
        1  # validations without improvement before the learning rates are halved; None: never
    )
    shift: float = 0.0625  # random translation, as a fraction of the image side
    flip: bool = False  # random horizontal flips (off: chest X-rays are not left-right symmetric)
    eval_batch_size: int = 256
    device: str = "cpu"
    precision: str = "fp32"  # "bf16": autocast to bfloat16 (about 1.8x faster on CPUs with AMX, slower without)
    channels_last: bool = True  # NHWC memory format (faster oneDNN convolutions on CPU)
    # 0: the whole encoder trains. N > 0: only the top N stages of a staged encoder train; the
    # sweep computes the frozen lower stages' output once per image and trains on that cache
    # (no image augmentation then), which makes fine-tuning at clinical resolution affordable.
    trainable_stages: int = 0


@dataclass(frozen=True)
class FinetuneResult:
    """Test scores of the best-on-validation weights, and when they were reached."""

    test_scores: np.ndarray  # (n_test, C) logits
    val_auc: float  # mean validation AUC of the kept weights
    best_step: int  # optimizer step of the kept weights
    steps: int  # optimizer steps taken (<= budget, less on early stopping)


class Classifier(nn.Module):
    """Encoder, dropout and a linear head producing one logit per class."""

    def __init__(self, encoder: nn.Module, out_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(out_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(self.encoder(images)))
        return logits


def step_budget(n_train: int, config: FinetuneConfig) -> int:
    """Optimizer steps for a subset of ``n_train`` rows: ``max(min_steps, epochs * batches)``, capped."""
    batches = math.ceil(n_train / min(config.batch_size, n_train))
    return int(min(config.max_steps, max(config.min_steps, config.epochs * batches)))


PRECISIONS = ("fp32", "bf16")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device)
    # Only feature maps have a channels-last layout (token sequences of a ViT do not).
    return images.contiguous(memory_format=torch.channels_last) if channels_last and images.dim() == 4 else images


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device: str | torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
) -> np.ndarray:
    """Logits of ``model`` on ``images`` in eval mode, as a float64 ``(N, C)`` array."""
    device = torch.device(device)
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        with _autocast(device, precision):
            logits = model(_to_device(images[i : i + batch_size], device, channels_last))
        out.append(logits.double().cpu())
    return torch.cat(out).numpy()


def _augment(images: torch.Tensor, shift: float, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random integer translation (edge-replicated) and optional horizontal flip, per image."""
    size = images.shape[-1]
    pad = int(round(shift * size))
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (len(images), 2), generator=generator).tolist()
        images = torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])
    if flip:
        mask = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return images


def _batches(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches of exactly ``batch`` rows, reshuffled every epoch."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:batch]
        buffer = buffer[batch:]


def finetune(
    encoder: nn.Module,
    out_dim: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int,
    config: FinetuneConfig = FinetuneConfig(),
    tasks: tuple[Task, ...] | None = None,
    cached: bool = False,
    head: nn.Linear | None = None,
) -> FinetuneResult:
    """Fine-tune ``encoder`` (modified in place) plus a new head, and score the test rows.

    BCE-with-logits (binary tasks) and cross-entropy (categorical tasks) on the labelled rows
    ``train_idx``, unknown labels left out; Adam with separate learning rates for head and
    encoder, light augmentation, ``step_budget`` steps at most. The first
    ``warmup_fraction`` of the budget trains the head only (encoder frozen, in eval mode).
    Every ``eval_every`` steps the mean validation AUC is measured (validation loss when AUC
    is undefined); the best weights are kept, the learning rates are halved after
    ``plateau_patience`` validations without improvement, and training stops after
    ``patience`` of them. The same ``seed`` (and thread count and hardware) gives the same result; the
    caller's global RNG state is left untouched.

    Parameters
    ----------
    encoder
        Maps ``(B, 1, S, S)`` to ``(B, out_dim)``.
    out_dim
        Feature size of the encoder.
    images, labels
        The whole labelled set, ``(N, 1, S, S)`` and ``(N, C)``, on the CPU.
    train_idx, val_idx, test_idx
        Row indices of the labelled subset, validation and test rows.
    seed
        Seeds the head initialisation, batch order, augmentation and dropout.
    config
        Training knobs.
    tasks
        Label tasks (default: every column binary).
    cached
        ``images`` are already the output of frozen lower stages (see
        :class:`~fedvlp.core.models.stages.UpperStages`): no image augmentation is applied.
    head
        The head to start from, ``(out_dim) -> output_dim(tasks)`` on the encoder's features
        (e.g. :meth:`~.probe.FittedProbe.raw_head`; copied, not modified). Its starting point
        is validated before the first step and kept when no later step beats it on
        validation. None: a random head (seeded by ``seed``).

    Returns
    -------
    FinetuneResult
    """
    device = torch.device(config.device)
    train_rows = torch.as_tensor(np.asarray(train_idx), dtype=torch.long)
    n_train = len(train_rows)
    if n_train < 2:
        raise ValueError(f"fine-tuning needs at least 2 labelled rows, got {n_train}")
    budget = step_budget(n_train, config)
    eval_every = config.eval_every or max(5, budget // 10)
    batch = min(config.batch_size, n_train)
    tasks = tuple(tasks) if tasks else binary_tasks(range(labels.shape[1]))
    val_images, val_y = images[torch.as_tensor(val_idx)], labels[torch.as_tensor(val_idx)]
    val_has_auc = has_auc(val_y, tasks)
    warmup = int(round(config.warmup_fraction * budget))

    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = Classifier(encoder, out_dim, output_dim(tasks), config.dropout)
        if head is not None:
            if (head.in_features, head.out_features) != (out_dim, output_dim(tasks)):
                raise ValueError(
                    f"head maps {head.in_features} -> {head.out_features} features; "
                    f"expected {out_dim} -> {output_dim(tasks)}"
                )
            model.head.load_state_dict({k: v.float() for k, v in head.state_dict().items()})
        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(
            [
                {"params": model.encoder.parameters(), "lr": config.lr_encoder},
                {"params": model.head.parameters(), "lr": config.lr_head},
            ],
            weight_decay=config.weight_decay,
        )
        plateau = (
            None
            if config.plateau_patience is None
            else torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.5, patience=config.plateau_patience
            )
        )

        def validate() -> float:
            logits = predict(model, val_images, config.eval_batch_size, device, config.precision, config.channels_last)
            if val_has_auc:
                return validation_score(val_y, logits, tasks)
            return -float(task_loss(torch.from_numpy(logits), val_y.double(), tasks))

        def set_frozen(frozen: bool) -> None:
            for parameter in model.encoder.parameters():
                parameter.requires_grad_(not frozen)

        best_score, best_step, best_state, stale, step = -math.inf, 0, None, 0, 0
        if head is not None:  # the fitted head is a candidate: fine-tuning must beat it on validation
            best_score, best_state = validate(), copy.deepcopy(model.state_dict())
        stream = _batches(n_train, batch, generator)
        set_frozen(warmup > 0)
        while step < budget:
            if step == warmup and warmup > 0:
                set_frozen(False)
            model.train()
            if step < warmup:
                model.encoder.eval()  # frozen: batch-norm statistics stay those of the init
            rows = train_rows[next(stream)]
            x = images[rows] if cached else _augment(images[rows], config.shift, config.flip, generator)
            x = _to_device(x, device, config.channels_last)
            with _autocast(device, config.precision):
                logits = model(x)
            loss = task_loss(logits.float(), labels[rows].to(device), tasks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % eval_every == 0 or step == budget:
                score = validate()
                if plateau is not None:
                    plateau.step(score)
                if score > best_score:
                    best_score, best_step, stale = score, step, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                    if stale >= config.patience:
                        break
        set_frozen(False)
        if best_state is not None:
            model.load_state_dict(best_state)
        test_scores = predict(
            model,
            images[torch.as_tensor(test_idx)],
            config.eval_batch_size,
            device,
            config.precision,
            config.channels_last,
        )
    val_auc = best_score if val_has_auc else math.nan
    return FinetuneResult(test_scores=test_scores, val_auc=float(val_auc), best_step=best_step, steps=step)
