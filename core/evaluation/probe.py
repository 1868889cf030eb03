"""Linear probe: frozen encoder features, standardised, and a multi-label logistic regression."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .tasks import Task, binary_tasks, output_dim, task_loss, validation_score

__all__ = [
    "DEFAULT_WEIGHT_DECAYS",
    "FittedProbe",
    "ProbeResult",
    "extract_features",
    "fit_logistic",
    "fit_probe",
    "linear_probe",
]

# Strongest first, so that ties on validation AUC pick the stronger regularisation.
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Pooled encoder features of all ``images``, in eval mode, without gradients.

    Parameters
    ----------
    encoder
        Maps ``(B, 1, S, S)`` to ``(B, D)``. Its train/eval mode is restored afterwards.
    images
        ``(N, 1, S, S)``, on any device.
    batch_size
        Images per forward pass.
    device
        Where the encoder runs.

    Returns
    -------
    torch.Tensor
        ``(N, D)`` float32 on the CPU.
    """
    was_training = encoder.training
    encoder.eval().to(device)
    try:
        chunks = [
            encoder(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)
        ]
    finally:
        encoder.train(was_training)
    return torch.cat(chunks)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, weight_decay: float, max_iter: int = 200, tasks: Sequence[Task] | None = None
) -> nn.Linear:
    """Logistic regression per task (sigmoid for binary, softmax for categorical) by full-batch L-BFGS.

    Minimises ``task loss + weight_decay * ||W||^2`` (the bias is not penalised; the task loss
    is the mean over tasks of BCE-with-logits or cross-entropy over the known rows, see
    :func:`~.tasks.task_loss`), starting from zero weights, so the result is deterministic.

    Parameters
    ----------
    x
        ``(n, D)`` standardised features.
    y
        ``(n, C)`` 0/1 targets.
    weight_decay
        L2 strength on the weights.
    max_iter
        L-BFGS iterations.
    tasks
        Label tasks (default: every column of ``y`` binary).
    """
    x, y = x.double(), y.double()
    tasks = tuple(tasks) if tasks else binary_tasks(range(y.shape[1]))
    layer = nn.Linear(x.shape[1], output_dim(tasks)).double()
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(
        layer.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = task_loss(layer(x), y, tasks) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return layer


@dataclass(frozen=True)
class FittedProbe:
    """A logistic regression on standardised features, chosen by validation AUC.

    ``layer`` maps standardised features ``(x - mean) / std`` to logits; :meth:`raw_head` is
    the same map on the raw features, the head a fine-tuning run can start from (LP-FT).
    """

    layer: nn.Linear  # float64, on standardised features
    mean: torch.Tensor  # (D,) float64
    std: torch.Tensor  # (D,) float64
    val_auc: float  # mean validation AUC of the chosen weight decay (NaN when undefined)
    weight_decay: float

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """``(features - mean) / std`` in float64."""
        return (features.double() - self.mean) / self.std

    @torch.no_grad()
    def raw_head(self) -> nn.Linear:
        """A float32 ``nn.Linear`` on raw features with the same logits as ``layer`` on standardised ones.

        ``W z + b`` with ``z = (x - mean) / std`` is ``(W / std) x + (b - (W / std) mean)``.
        """
        weight = self.layer.weight / self.std
        head = nn.Linear(weight.shape[1], weight.shape[0])
        head.weight.copy_(weight.float())
        head.bias.copy_((self.layer.bias - weight @ self.mean).float())
        return head


@torch.no_grad()
def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 200,
    standardise_idx: np.ndarray | None = None,
    tasks: Sequence[Task] | None = None,
) -> FittedProbe:
    """Fit a logistic regression per weight decay on standardised features; keep the best on validation.

    Features are standardised (zero mean, unit variance per feature) with statistics of the
    rows ``standardise_idx`` (default: ``train_idx``). One weight decay, shared by all
    classes, is picked from ``weight_decays`` by mean validation AUC (first one wins ties;
    when validation AUC is undefined the middle value of the grid is used).

    Parameters
    ----------
    features
        ``(N, D)`` features of the whole labelled set.
    labels
        ``(N, C)`` 0/1 targets.
    train_idx, val_idx
        Row indices of the labelled subset and of the validation rows.
    weight_decays
        The grid of L2 strengths.
    max_iter
        L-BFGS iterations per fit.
    standardise_idx
        Rows whose features define the standardisation.
    tasks
        Label tasks (default: every label column binary).

    Returns
    -------
    FittedProbe
    """
    if not len(weight_decays):
        raise ValueError("weight_decays must not be empty")
    features = features.double()
    reference = features[torch.as_tensor(standardise_idx if standardise_idx is not None else train_idx)]
    mean, std = reference.mean(0), reference.std(0, unbiased=False).clamp_min(1e-6)
    z = (features - mean) / std
    tasks = tuple(tasks) if tasks else binary_tasks(range(labels.shape[1]))
    train_x, train_y = z[torch.as_tensor(train_idx)], labels[torch.as_tensor(train_idx)]
    val_x, val_y = z[torch.as_tensor(val_idx)], labels[torch.as_tensor(val_idx)]
    best: tuple[float, float, nn.Linear] | None = None
    fits = []
    for wd in weight_decays:
        layer = fit_logistic(train_x, train_y, wd, max_iter, tasks)
        val_auc = validation_score(val_y, layer(val_x), tasks)
        fits.append((wd, layer))
        if math.isfinite(val_auc) and (best is None or val_auc > best[0]):
            best = (val_auc, wd, layer)
    if best is None:
        wd, layer = fits[len(fits) // 2]
        best = (math.nan, wd, layer)
    val_auc, wd, layer = best
    return FittedProbe(layer=layer, mean=mean, std=std, val_auc=float(val_auc), weight_decay=float(wd))


@dataclass(frozen=True)
class ProbeResult:
    """Test-set scores of a linear probe and how its regularisation was chosen."""

    test_scores: np.ndarray  # (n_test, C) logits
    val_auc: float  # mean validation AUC of the chosen weight decay
    weight_decay: float


@torch.no_grad()
def linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 200,
    standardise_idx: np.ndarray | None = None,
    tasks: Sequence[Task] | None = None,
) -> ProbeResult:
    """Train a linear classifier on frozen features and score the test rows.

    The classifier is :func:`fit_probe`'s (standardised features, weight decay chosen on
    validation). Passing all rows of the train split as ``standardise_idx`` uses their
    *images* but never their labels, which keeps the statistics stable when only a handful
    of rows are labelled.

    Parameters
    ----------
    features, labels, train_idx, val_idx, weight_decays, max_iter, standardise_idx, tasks
        As in :func:`fit_probe`.
    test_idx
        Row indices of the rows to score.

    Returns
    -------
    ProbeResult
    """
    fitted = fit_probe(features, labels, train_idx, val_idx, weight_decays, max_iter, standardise_idx, tasks)
    scores = fitted.layer(fitted.standardise(features[torch.as_tensor(test_idx)])).float().numpy()
    return ProbeResult(test_scores=scores, val_auc=fitted.val_auc, weight_decay=fitted.weight_decay)
