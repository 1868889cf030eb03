import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torch.nn import functional as F

from fedvlp.core.evaluation.tasks import Task, encode_column, output_dim, task_loss, task_metrics

SUBTYPE = Task("subtype", "categorical", ("bacteria", "virus", "fungus"))


def test_categorical_column_is_encoded_by_sorted_value_and_blank_is_unknown():
    task, values, _ = encode_column("subtype", ["virus", "", None, "bacteria", "virus"])
    assert task == Task("subtype", "categorical", ("bacteria", "virus"))
    assert values[[0, 3, 4]].tolist() == [1.0, 0.0, 1.0] and np.isnan(values[[1, 2]]).all()


def test_loss_is_the_mean_of_bce_and_softmax_ce_over_known_rows_only():
    tasks = (Task("a"), SUBTYPE)
    logits = torch.tensor([[0.5, 1.0, 0.0, -1.0], [-2.0, 0.2, 0.3, 0.1], [1.5, 0.0, 2.0, 0.0]])
    y = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("nan")]])
    bce = F.binary_cross_entropy_with_logits(torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.0]))
    # hand-computed cross-entropy of rows 0 (class 2) and 1 (class 0)
    ce0 = -math.log(math.exp(-1.0) / (math.exp(1.0) + math.exp(0.0) + math.exp(-1.0)))
    ce1 = -math.log(math.exp(0.2) / (math.exp(0.2) + math.exp(0.3) + math.exp(0.1)))
    assert output_dim(tasks) == 4
    assert float(task_loss(logits, y, tasks)) == pytest.approx((float(bce) + (ce0 + ce1) / 2) / 2, rel=1e-6)


def test_macro_auc_and_accuracy_of_a_categorical_task_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200).astype(float)
    logits = rng.normal(size=(200, 3)) + np.eye(3)[y.astype(int)]
    y_blank = np.concatenate([y, [np.nan] * 5])
    logits_blank = np.concatenate([logits, rng.normal(size=(5, 3)) * 100])  # unknown rows must not count
    rows = {(m, c): v for m, c, v in task_metrics(y_blank[:, None], logits_blank, (SUBTYPE,))}
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert rows[("auc", "subtype")] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert rows[("auc", "mean")] == rows[("auc", "subtype")]
    assert rows[("auc", "subtype=virus")] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    assert rows[("accuracy", "subtype")] == pytest.approx(accuracy_score(y, logits.argmax(1)))


def test_binary_metrics_leave_unknown_rows_out():
    y = np.array([1, 0, 1, 0, np.nan])
    s = np.array([0.9, 0.1, 0.4, 0.6, 5.0])
    rows = {(m, c): v for m, c, v in task_metrics(y[:, None], s[:, None], (Task("a"),))}
    assert rows[("auc", "a")] == pytest.approx(roc_auc_score(y[:4], s[:4]))
    assert rows[("accuracy", "mean")] == pytest.approx(0.5)  # all four logits >= 0: predicted positive
