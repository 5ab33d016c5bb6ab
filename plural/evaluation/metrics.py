"""Evaluation: pure metric functions on probabilities, and :func:`evaluate` for a model on data.

Metrics are computed on decisive comparisons (label 0 or 1); ties are counted, not scored.
"""

from __future__ import annotations

import numpy as np
import torch

from plural.core.batch import ComparisonDataset, batch_to
from plural.core.likelihood import prediction_agreement
from plural.data.container import PreferenceData
from plural.core.model import PreferenceModel

_EPS = 1e-7


def _decisive(prob: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob, label = np.asarray(prob, dtype=np.float64), np.asarray(label, dtype=np.float64)
    if prob.shape != label.shape:
        raise ValueError(f"prob and label shapes differ: {prob.shape} vs {label.shape}")
    keep = label != 0.5
    return prob[keep], label[keep]


def pairwise_accuracy(prob: np.ndarray, label: np.ndarray) -> float:
    """Share of decisive comparisons where ``prob > 0.5`` agrees with the label (a prob of exactly
    0.5 counts as half right). NaN when there are none."""
    p, y = _decisive(prob, label)
    if len(p) == 0:
        return float("nan")
    return float(prediction_agreement(p, y).mean())


def log_loss(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean negative log-likelihood of decisive labels (natural log)."""
    p, y = _decisive(prob, label)
    if len(p) == 0:
        return float("nan")
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width bins of the predicted probability of item a: the
    count-weighted mean of ``|mean predicted - observed frequency|``."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
    p, y = _decisive(prob, label)
    if len(p) == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        m = bins == b
        total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(p))


def per_user_accuracy(prob: np.ndarray, label: np.ndarray, user: np.ndarray,
                      min_comparisons: int = 1) -> dict[int, float]:
    """``{user: accuracy}`` over each user's decisive comparisons, for users with at least
    ``min_comparisons`` of them."""
    prob, label, user = np.asarray(prob), np.asarray(label), np.asarray(user)
    keep = label != 0.5
    prob, label, user = prob[keep], label[keep], user[keep]
    order = np.argsort(user, kind="stable")
    users, starts, counts = np.unique(user[order], return_index=True, return_counts=True)
    correct = prediction_agreement(prob, label)[order]
    sums = np.add.reduceat(correct, starts) if len(starts) else np.zeros(0)
    return {int(u): float(s / c) for u, s, c in zip(users, sums, counts) if c >= min_comparisons}


def worst_decile_accuracy(user_accuracy: dict[int, float] | np.ndarray) -> float:
    """Mean accuracy of the worst 10% of users (at least one user)."""
    values = np.sort(np.fromiter(user_accuracy.values(), float) if isinstance(user_accuracy, dict)
                     else np.asarray(user_accuracy, dtype=float))
    if len(values) == 0:
        return float("nan")
    n = max(1, int(np.ceil(0.1 * len(values))))
    return float(values[:n].mean())


def summarize(prob: np.ndarray, label: np.ndarray, user: np.ndarray | None = None,
              min_user_comparisons: int = 5) -> dict[str, float]:
    """Every metric for one set of predictions; per-user figures cover users with at least
    ``min_user_comparisons`` decisive comparisons (a user's accuracy on one or two is noise)."""
    out = {
        "accuracy": pairwise_accuracy(prob, label),
        "log_loss": log_loss(prob, label),
        "ece": expected_calibration_error(prob, label),
        "n": int((np.asarray(label) != 0.5).sum()),
        "n_ties": int((np.asarray(label) == 0.5).sum()),
    }
    if user is not None:
        per_user = per_user_accuracy(prob, label, user, min_user_comparisons)
        out["n_users"] = len(per_user)
        out["worst_decile_user_accuracy"] = worst_decile_accuracy(per_user)
        out["mean_user_accuracy"] = float(np.mean(list(per_user.values()))) if per_user else float("nan")
    return out


@torch.no_grad()
def predict_proba(model: PreferenceModel, data: PreferenceData, rows: np.ndarray | None = None,
                  batch_size: int = 8192) -> np.ndarray:
    """``(n,)`` probability that item a is preferred, for each comparison's own user (users the model
    did not see in training get the population reward)."""
    model.check_is_fitted()
    was_training = model.training
    model.eval()
    dataset = ComparisonDataset(data, rows, model)
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = batch_to(dataset.__getitems__(range(start, min(start + batch_size, len(dataset)))), model.device)
        out.append(model.predict_proba(batch).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def evaluate(model: PreferenceModel, data: PreferenceData, rows: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, log-loss, calibration error and worst-decile user accuracy of ``model`` on the
    comparisons of ``data`` at ``rows`` (all by default)."""
    rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    prob = predict_proba(model, data, rows)
    return summarize(prob, data.label[rows], data.user[rows])
