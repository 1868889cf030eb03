import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from fedvlp.core.evaluation import accuracy, auc_per_class, average_precision_per_class, f1


def test_equals_sklearn_per_class_and_mean_on_random_data():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < [0.2, 0.5, 0.8]).astype(float)
    scores = rng.normal(size=(200, 3)) + y
    out = auc_per_class(y, scores, ["a", "b", "c"])
    expected = [roc_auc_score(y[:, c], scores[:, c]) for c in range(3)]
    assert [out[k] for k in "abc"] == pytest.approx(expected, abs=1e-12)
    assert out["mean"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_single_valued_class_is_nan_and_left_out_of_the_mean():
    rng = np.random.default_rng(1)
    y = np.stack([rng.integers(0, 2, 50), np.zeros(50)], axis=1)
    scores = rng.normal(size=(50, 2))
    out = auc_per_class(y, scores, ["ok", "constant"])
    assert math.isnan(out["constant"])
    assert out["mean"] == pytest.approx(out["ok"])


def test_mean_is_nan_when_no_class_has_an_auc():
    out = auc_per_class(np.ones((5, 2)), np.zeros((5, 2)), ["a", "b"])
    assert math.isnan(out["a"]) and math.isnan(out["mean"])


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        auc_per_class(np.array([[0.0], [1.0]]), np.array([[np.nan], [1.0]]), ["a"])


# --- average precision, accuracy and F1 -------------------------------------------------------


def test_average_precision_equals_sklearn_per_class_and_mean():
    rng = np.random.default_rng(2)
    y = (rng.random((150, 3)) < [0.1, 0.5, 0.7]).astype(float)
    scores = rng.normal(size=(150, 3)) + y
    out = average_precision_per_class(y, scores, ["a", "b", "c"])
    expected = [average_precision_score(y[:, c], scores[:, c]) for c in range(3)]
    assert [out[k] for k in "abc"] == pytest.approx(expected, abs=1e-12)
    assert out["mean"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_average_precision_of_a_single_valued_class_is_nan_and_left_out_of_the_mean():
    rng = np.random.default_rng(3)
    y = np.stack([rng.integers(0, 2, 40), np.ones(40)], axis=1)
    out = average_precision_per_class(y, rng.normal(size=(40, 2)), ["ok", "constant"])
    assert math.isnan(out["constant"]) and out["mean"] == pytest.approx(out["ok"])


def test_average_precision_hand_computed():
    # ranking: 0.9 (pos), 0.8 (neg), 0.7 (pos) -> precision at the positives 1 and 2/3 -> AP = (1 + 2/3) / 2
    out = average_precision_per_class(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]), ["x"])
    assert out["x"] == pytest.approx(5 / 6)


def test_accuracy_thresholds_the_sigmoid_of_logits_at_one_half():
    y = np.array([1, 0, 1, 0, 1])
    logits = np.array([2.0, -1.0, -0.5, 0.3, 0.0])  # predictions 1, 0, 0, 1, 1 (sigmoid(0) = 0.5 counts as positive)
    assert accuracy(y, logits) == pytest.approx(3 / 5)
    assert accuracy(y, logits) == pytest.approx(accuracy_score(y, (1 / (1 + np.exp(-logits)) >= 0.5).astype(int)))


def test_accuracy_and_f1_on_probabilities_match_the_same_logits():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (60, 1)).astype(float)
    logits = rng.normal(size=(60, 1)) + y
    probs = 1 / (1 + np.exp(-logits))
    assert accuracy(y, probs, logits=False) == accuracy(y, logits)
    assert f1(y, probs, logits=False) == f1(y, logits)


def test_f1_equals_sklearn_on_random_data():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    logits = rng.normal(size=80) + y
    assert f1(y, logits) == pytest.approx(f1_score(y, (logits >= 0).astype(int)), abs=1e-12)


def test_f1_is_zero_without_positive_targets_or_predictions():
    assert f1(np.zeros(4), -np.ones(4)) == 0.0


def test_accuracy_and_f1_refuse_more_than_one_label_column():
    with pytest.raises(ValueError, match="binary"):
        accuracy(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="binary"):
        f1(np.zeros((4, 2)), np.zeros((4, 2)))
