import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score
from sklearn.metrics import log_loss as sk_log_loss

from plural.evaluation.metrics import (expected_calibration_error, log_loss, pairwise_accuracy, per_user_accuracy,
                               summarize, worst_decile_accuracy)


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 500)
    y = (rng.random(500) < p).astype(float)
    return p, y


def test_accuracy_and_log_loss_match_sklearn(preds):
    p, y = preds
    assert pairwise_accuracy(p, y) == pytest.approx(accuracy_score(y, p > 0.5))
    assert log_loss(p, y) == pytest.approx(sk_log_loss(y, p))


def test_ties_are_not_scored(preds):
    p, y = preds
    y2 = np.append(y, 0.5)
    p2 = np.append(p, 0.99)
    assert pairwise_accuracy(p2, y2) == pytest.approx(pairwise_accuracy(p, y))
    assert summarize(p2, y2)["n_ties"] == 1


def test_ece_against_binned_reference(preds):
    p, y = preds
    # uniform bins of width 0.1 as in sklearn's calibration_curve, weighted by bin counts
    frac, mean_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    reference = float(np.sum(counts * np.abs(frac - mean_pred)) / counts.sum())
    assert expected_calibration_error(p, y) == pytest.approx(reference, abs=1e-9)
    perfect = expected_calibration_error(np.full(1000, 0.7), (np.arange(1000) < 700).astype(float))
    assert perfect == pytest.approx(0.0, abs=1e-12)


def test_per_user_and_worst_decile():
    p = np.array([0.9, 0.9, 0.1, 0.1, 0.9, 0.9])
    y = np.array([1, 1, 1, 1, 0, 1.0])
    u = np.array([0, 0, 1, 1, 2, 2])
    acc = per_user_accuracy(p, y, u)
    assert acc == {0: 1.0, 1: 0.0, 2: 0.5}
    assert worst_decile_accuracy(acc) == 0.0
    assert worst_decile_accuracy(np.arange(20) / 20) == pytest.approx(0.025)
    assert per_user_accuracy(p, y, u, min_comparisons=3) == {}
    ties = np.array([0.5, 1, 1, 1, 0, 1.0])
    assert per_user_accuracy(p, ties, u) == {0: 1.0, 1: 0.0, 2: 0.5}
    assert summarize(p, y, u, min_user_comparisons=2)["n_users"] == 3


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        pairwise_accuracy(np.zeros(3), np.zeros(4))
