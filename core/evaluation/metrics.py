"""Per-class ROC AUC and average precision for multi-label scores; accuracy and F1 for binary tasks.

The scores the sweep passes in are the *logits* returned by :func:`~.probe.linear_probe` and
:func:`~.finetune.finetune` (``test_scores``). AUC and AP depend only on the ranking, so logits
and probabilities give the same values; :func:`accuracy` and :func:`f1` threshold the sigmoid
at 0.5 and therefore need to know which they got (``logits=True``, the default, applies the
sigmoid first; ``logits=False`` takes the scores as probabilities).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["auc_per_class", "average_precision_per_class", "mean_auc", "accuracy", "f1", "binary_predictions"]

THRESHOLD = 0.5


def _as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def _checked(
    y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y, s = _as_numpy(y_true), _as_numpy(scores)
    names = list(names)
    if y.shape != s.shape or y.shape[1] != len(names):
        raise ValueError(f"y_true {y.shape}, scores {s.shape} and {len(names)} names do not match")
    if "mean" in names:
        raise ValueError("'mean' is reserved and cannot be a class name")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values (did training diverge?)")
    return y, s, names


def _per_class(
    score: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    names: Sequence[str],
) -> dict[str, float]:
    """``score`` per class (NaN where the targets hold one value) and their ``"mean"``."""
    y, s, names = _checked(y_true, scores, names)
    out: dict[str, float] = {}
    for c, name in enumerate(names):
        column = y[:, c]
        out[name] = float(score(column, s[:, c])) if len(np.unique(column)) == 2 else math.nan
    out["mean"] = mean_auc(out)
    return out


def auc_per_class(
    y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, names: Sequence[str]
) -> dict[str, float]:
    """ROC AUC of every class, plus their mean under the key ``"mean"``.

    Parameters
    ----------
    y_true
        ``(N, C)`` 0/1 targets (``(N,)`` is read as one class).
    scores
        ``(N, C)`` scores, higher = more likely positive (logits or probabilities).
    names
        ``C`` class names, the keys of the result (``"mean"`` is reserved).

    Returns
    -------
    dict[str, float]
        ``{name: auc, ..., "mean": mean}``. Each AUC equals
        ``sklearn.metrics.roc_auc_score(y_true[:, c], scores[:, c])``. A class whose targets
        hold a single value has no AUC: it gets NaN and is left out of the mean (NaN when no
        class has an AUC).

    Raises
    ------
    ValueError
        On mismatched shapes, a name ``"mean"``, or non-finite scores.
    """
    return _per_class(roc_auc_score, y_true, scores, names)


def average_precision_per_class(
    y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, names: Sequence[str]
) -> dict[str, float]:
    """Average precision (area under the precision-recall curve) of every class, plus ``"mean"``.

    Same inputs, shape checks and NaN rule as :func:`auc_per_class`: each value equals
    ``sklearn.metrics.average_precision_score(y_true[:, c], scores[:, c])``; a class whose
    targets hold a single value gets NaN and is left out of the mean (NaN when none is left).
    Logits and probabilities give the same AP (it only depends on the ranking).
    """
    return _per_class(average_precision_score, y_true, scores, names)


def _binary(y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    y, s = _as_numpy(y_true), _as_numpy(scores)
    if y.shape != s.shape or y.shape[1] != 1:
        raise ValueError(f"accuracy/F1 need a binary task: one label column, got y_true {y.shape}, scores {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values (did training diverge?)")
    return y[:, 0], s[:, 0]


def binary_predictions(scores: np.ndarray | torch.Tensor, logits: bool = True) -> np.ndarray:
    """0/1 predictions ``sigmoid(score) >= 0.5`` (``score >= 0.5`` when ``logits=False``).

    For logits this is ``score >= 0``, computed without the sigmoid so that large logits do
    not round to exactly 0.5.
    """
    s = _as_numpy(scores)
    return (s >= 0.0 if logits else s >= THRESHOLD).astype(np.int64)


def accuracy(y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, logits: bool = True) -> float:
    """Accuracy of a binary task at threshold 0.5 on the sigmoid of ``scores``.

    Parameters
    ----------
    y_true
        ``(N,)`` or ``(N, 1)`` 0/1 targets.
    scores
        Same shape; logits (``logits=True``, what the probe and fine-tuning return) or
        probabilities (``logits=False``).
    """
    y, s = _binary(y_true, scores)
    return float(np.mean(binary_predictions(s, logits)[:, 0] == y.astype(np.int64)))


def f1(y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, logits: bool = True) -> float:
    """F1 of the positive class of a binary task at threshold 0.5 on the sigmoid of ``scores``.

    Inputs as for :func:`accuracy`. Equals ``sklearn.metrics.f1_score(y, pred, zero_division=0)``:
    0 when there are neither positive targets nor positive predictions.
    """
    y, s = _binary(y_true, scores)
    pred = binary_predictions(s, logits)[:, 0]
    target = y.astype(np.int64)
    tp = int(np.sum((pred == 1) & (target == 1)))
    denominator = int(np.sum(pred == 1) + np.sum(target == 1))
    return 2.0 * tp / denominator if denominator else 0.0


def mean_auc(per_class: dict[str, float]) -> float:
    """The mean of the finite class AUCs in ``per_class`` (ignoring a ``"mean"`` key); NaN if none."""
    values = [v for k, v in per_class.items() if k != "mean" and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan
