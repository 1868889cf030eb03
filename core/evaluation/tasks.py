"""Label tasks of a labelled set: binary (sigmoid + BCE) and categorical (softmax + CE) heads.

A labelled manifest names label columns. A column whose non-blank values are all 0/1 is a
*binary* task (one logit, sigmoid, BCE); any other column is *categorical* (one logit per
distinct value, softmax, cross-entropy), e.g. ``label_pneumonia_subtype`` with values
``bacteria``/``virus``. A blank cell means *unknown*: that row is left out of that task's
loss and metrics (and still used by the other tasks).

Targets are one float tensor ``(N, T)``, one column per task: 0/1 for a binary task, the
class index for a categorical one, NaN for unknown. The head emits ``sum(task.width)``
logits, task after task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .metrics import auc_per_class, average_precision_per_class

__all__ = [
    "Task",
    "binary_tasks",
    "output_dim",
    "task_loss",
    "task_metrics",
    "validation_score",
    "coverage_matrix",
    "encode_column",
    "has_auc",
]

BINARY, CATEGORICAL = "binary", "categorical"


@dataclass(frozen=True)
class Task:
    """One label column: ``kind`` is ``"binary"`` or ``"categorical"`` (with its ``classes``)."""

    name: str
    kind: str = BINARY
    classes: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        """Logits this task takes from the head."""
        return 1 if self.kind == BINARY else len(self.classes)


def binary_tasks(names: Sequence[object]) -> tuple[Task, ...]:
    """All-binary tasks (the multi-label case)."""
    return tuple(Task(str(n)) for n in names)


def output_dim(tasks: Sequence[Task]) -> int:
    """Total number of logits of a head for ``tasks``."""
    return int(sum(t.width for t in tasks))


def _blank(value: object) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or str(value).strip() == ""
        or str(value).strip().lower() == "nan"
    )


def encode_column(name: str, values: Sequence[object]) -> tuple[Task, np.ndarray, np.ndarray]:
    """Infer a column's task and encode it.

    Returns
    -------
    (Task, targets, invalid)
        ``targets`` float array (0/1, class index or NaN for blank); ``invalid`` is all False
        (every non-blank value is a valid class of a categorical task, and a column of only
        0/1 is binary). A column with one single non-blank non-0/1 value is categorical with
        one class, which has no AUC.
    """
    text = ["" if _blank(v) else str(v).strip() for v in values]
    known = sorted({t for t in text if t})
    numeric = set()
    for t in known:
        try:
            numeric.add(float(t))
        except ValueError:
            numeric = None  # type: ignore[assignment]
            break
    if numeric is not None and numeric <= {0.0, 1.0}:
        targets = np.array([float(t) if t else np.nan for t in text], dtype=np.float64)
        return Task(name), targets, np.zeros(len(text), dtype=bool)
    classes = tuple(known)
    index = {c: i for i, c in enumerate(classes)}
    targets = np.array([float(index[t]) if t else np.nan for t in text], dtype=np.float64)
    return Task(name, CATEGORICAL, classes), targets, np.zeros(len(text), dtype=bool)


def _slices(tasks: Sequence[Task]) -> list[slice]:
    out, start = [], 0
    for task in tasks:
        out.append(slice(start, start + task.width))
        start += task.width
    return out


def task_loss(logits: torch.Tensor, targets: torch.Tensor, tasks: Sequence[Task]) -> torch.Tensor:
    """Mean over tasks of each task's mean loss over its known rows (BCE or CE).

    Tasks without a known row in the batch contribute nothing; a batch with no known label
    at all gives a zero loss that still depends on ``logits`` (so ``backward`` works).
    """
    losses = []
    for t, (task, cols) in enumerate(zip(tasks, _slices(tasks))):
        y = targets[:, t]
        known = ~torch.isnan(y)
        if not bool(known.any()):
            continue
        if task.kind == BINARY:
            losses.append(F.binary_cross_entropy_with_logits(logits[known, cols.start], y[known].to(logits.dtype)))
        else:
            losses.append(F.cross_entropy(logits[known, cols], y[known].long()))
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


def _np(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def task_metrics(
    targets: np.ndarray | torch.Tensor, logits: np.ndarray | torch.Tensor, tasks: Sequence[Task]
) -> list[tuple[str, str, float]]:
    """``(metric, class, value)`` rows for the test set.

    - binary task ``c``: ``auc``/``ap`` of class ``c`` (known rows only);
    - categorical task ``c``: ``auc`` and ``ap`` of class ``c`` = macro one-vs-rest over its
      classes (softmax probabilities, classes present in the known rows with both values),
      per-class one-vs-rest ``auc`` as class ``c=value``, and ``accuracy`` (argmax) as class ``c``;
    - ``auc``/``ap`` class ``mean``: mean over tasks of the task values (NaN ones left out);
    - when the only task is binary: ``accuracy`` and ``f1`` (class ``mean``) at sigmoid 0.5.
    """
    from .metrics import accuracy, f1, mean_auc

    y, s = _np(targets), _np(logits)
    if y.ndim == 1:
        y = y[:, None]
    if s.shape[1] != output_dim(tasks) or y.shape[1] != len(tasks) or len(y) != len(s):
        raise ValueError(f"targets {y.shape} and logits {s.shape} do not fit tasks {[t.name for t in tasks]}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values (did training diverge?)")
    rows: list[tuple[str, str, float]] = []
    task_auc: dict[str, float] = {}
    task_ap: dict[str, float] = {}
    for t, (task, cols) in enumerate(zip(tasks, _slices(tasks))):
        known = ~np.isnan(y[:, t])
        yt = y[known, t]
        if task.kind == BINARY:
            auc = (
                auc_per_class(yt[:, None], s[known, cols.start][:, None], [task.name])[task.name]
                if known.any()
                else math.nan
            )
            ap = (
                average_precision_per_class(yt[:, None], s[known, cols.start][:, None], [task.name])[task.name]
                if known.any()
                else math.nan
            )
        else:
            names = [f"{task.name}={c}" for c in task.classes]
            if known.any():
                probs = _softmax(s[known, cols])
                onehot = (yt[:, None] == np.arange(task.width)[None, :]).astype(np.float64)
                per_auc = auc_per_class(onehot, probs, names)
                per_ap = average_precision_per_class(onehot, probs, names)
                acc = float(np.mean(probs.argmax(1) == yt))
            else:
                per_auc = {**{n: math.nan for n in names}, "mean": math.nan}
                per_ap, acc = dict(per_auc), math.nan
            auc, ap = per_auc["mean"], per_ap["mean"]
            rows += [("auc", n, per_auc[n]) for n in names]
            rows.append(("accuracy", task.name, acc))
        task_auc[task.name], task_ap[task.name] = auc, ap
    rows = [("auc", n, v) for n, v in task_auc.items()] + [("auc", "mean", mean_auc(task_auc))] + rows
    rows += [("ap", n, v) for n, v in task_ap.items()] + [("ap", "mean", mean_auc(task_ap))]
    if len(tasks) == 1 and tasks[0].kind == BINARY:
        known = ~np.isnan(y[:, 0])
        rows.append(("accuracy", "mean", accuracy(y[known, 0], s[known, 0])))
        rows.append(("f1", "mean", f1(y[known, 0], s[known, 0])))
    return rows


def validation_score(
    targets: np.ndarray | torch.Tensor, logits: np.ndarray | torch.Tensor, tasks: Sequence[Task]
) -> float:
    """Mean AUC over tasks (the model-selection score); NaN when no task has an AUC."""
    y, s = _np(targets), _np(logits)
    if not np.isfinite(s).all():
        return math.nan
    for metric, name, value in task_metrics(y, s, tasks):
        if metric == "auc" and name == "mean":
            return float(value)
    return math.nan


def has_auc(targets: np.ndarray | torch.Tensor, tasks: Sequence[Task]) -> bool:
    """Whether some task has an AUC on ``targets`` (a binary task with both values, or a
    categorical task with at least two classes present among its known rows)."""
    pos, known = coverage_matrix(targets, tasks)
    return bool(((known & pos).any(0) & (known & ~pos).any(0)).any())


def coverage_matrix(targets: np.ndarray | torch.Tensor, tasks: Sequence[Task]) -> tuple[np.ndarray, np.ndarray]:
    """Per (task or class) indicator columns for class coverage when sampling label fractions.

    Returns ``(positive, known)``, both ``(N, K)`` bool: a binary task gives one column (1 =
    positive), a categorical task one column per class (one-vs-rest); ``known`` is False
    where the task's value is blank.
    """
    y = _np(targets)
    if y.ndim == 1:
        y = y[:, None]
    pos, known = [], []
    for t, task in enumerate(tasks):
        k = ~np.isnan(y[:, t])
        if task.kind == BINARY:
            pos.append(np.nan_to_num(y[:, t]) > 0.5)
            known.append(k)
        else:
            for c in range(task.width):
                pos.append(k & (np.nan_to_num(y[:, t], nan=-1) == c))
                known.append(k)
    return np.stack(pos, axis=1), np.stack(known, axis=1)
