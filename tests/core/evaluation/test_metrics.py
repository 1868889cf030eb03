import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedvlp.core.evaluation import auc_per_class


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
