"""Per-class ROC AUC for multi-label scores."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

__all__ = ["auc_per_class", "mean_auc"]


def _as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def auc_per_class(y_true: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor,
                  names: Sequence[str]) -> dict[str, float]:
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
    y, s = _as_numpy(y_true), _as_numpy(scores)
    names = list(names)
    if y.shape != s.shape or y.shape[1] != len(names):
        raise ValueError(f"y_true {y.shape}, scores {s.shape} and {len(names)} names do not match")
    if "mean" in names:
        raise ValueError("'mean' is reserved and cannot be a class name")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values (did training diverge?)")
    out: dict[str, float] = {}
    for c, name in enumerate(names):
        column = y[:, c]
        out[name] = float(roc_auc_score(column, s[:, c])) if len(np.unique(column)) == 2 else math.nan
    out["mean"] = mean_auc(out)
    return out


def mean_auc(per_class: dict[str, float]) -> float:
    """The mean of the finite class AUCs in ``per_class`` (ignoring a ``"mean"`` key); NaN if none."""
    values = [v for k, v in per_class.items() if k != "mean" and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan
