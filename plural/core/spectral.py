"""A closed-form start for latent-user models: the truncated SVD of the training users' centred
observation matrix (votes, ratings), the classical collaborative-filtering factorization.

The observations of the training comparisons' users (``plural.data.observations.following``) are put
on a -1 .. 1 scale (lowest level -1, highest +1). Per context (a Polis conversation: its users and
statements form their own matrix; the whole data when comparisons have no contexts), each item's
mean is shrunk towards 0 (``sum / (count + 2)``), the observed entries are centred on it (missing
ones are 0), and the rank-K SVD ``U S V^T`` of that matrix gives users ``U sqrt(n)`` (unit second
moment, the scale of a standard normal prior) and item factors ``V S / sqrt(n)``, so that a user's
predicted value of an item is ``mean + users @ factors``. One logit scale maps that value to the
logistic likelihood of the observations; the cut points between levels sit half-way between the
levels' values on the same scale. A user in several contexts takes their vectors from the one where
they have most observations.

Trained from random weights, ``low_rank``'s item factors were worse than these on Polis: a ridge fit
of new users' votes on the SVD's factors gained about 3 points at k=10 where the same fit on the
trained model's factors gained at most about 1 (``benchmarks/polis_factors.py``, one seed).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import svds

from plural.data.observations import following

DENSE_LIMIT = 4_000_000
"""Matrices with at most this many cells are factorized densely; larger ones by ``scipy``'s sparse ``svds``."""
LOGIT_SCALES = np.geomspace(0.5, 8.0, 25)
"""Candidate logit scales; the one of highest training log-likelihood is taken."""


@dataclasses.dataclass
class SpectralStart:
    """The factorization, in a model's user and item indices.

    Attributes:
        users: ``(n_users, K)``; zero rows for users with no observations.
        factors: ``(n_items, K)`` item factors on the -1 .. 1 scale; zero rows for unobserved items.
        mean: ``(n_items,)`` shrunk item means on that scale.
        observed_users, observed_items: boolean masks of the rows the factorization set.
        logit_scale: multiplies ``mean + users @ factors`` into a logit.
        cut_points: ``(n_levels - 1,)`` increasing logits between consecutive levels.
        n_observations: training observations used.
    """

    users: np.ndarray
    factors: np.ndarray
    mean: np.ndarray
    observed_users: np.ndarray
    observed_items: np.ndarray
    logit_scale: float
    cut_points: np.ndarray
    n_observations: int


def spectral_start(data, train_rows: np.ndarray, user_index: np.ndarray, item_index: np.ndarray,
                   n_users: int, n_items: int, rank: int, random_state: int = 0) -> SpectralStart | None:
    """:class:`SpectralStart` of ``data``'s observations following ``train_rows``, or None where there are
    none (or none of known users and items).

    Args:
        data: a ``PreferenceData``.
        train_rows: the training comparison rows.
        user_index, item_index: the model's index of each of ``data``'s users and items (-1: unknown).
        n_users, n_items: the model's numbers of users and items.
        rank: K.
        random_state: seeds the sparse solver's start.
    """
    obs = data.observations
    at = following(data, train_rows)
    if obs is None or not len(at):
        return None
    user = np.asarray(user_index)[obs.user[at]]
    item = np.asarray(item_index)[obs.item[at]]
    values = 2.0 * np.arange(obs.n_levels) / (obs.n_levels - 1) - 1.0  # each level on the -1 .. 1 scale
    value = values[obs.level[at]]
    context = obs.context[at]
    keep = (user >= 0) & (item >= 0)
    if not keep.any():
        return None
    user, item, value, context = user[keep], item[keep], value[keep], context[keep]
    users, factors, mean = np.zeros((n_users, rank)), np.zeros((n_items, rank)), np.zeros(n_items)
    best_count = np.zeros(n_users)  # a user's vectors come from their largest context
    for c in np.unique(context):
        sel = context == c
        rows, i = np.unique(user[sel], return_inverse=True)
        cols, j = np.unique(item[sel], return_inverse=True)
        count = np.bincount(j, minlength=len(cols)).astype(np.float64)
        mean_c = np.bincount(j, weights=value[sel], minlength=len(cols)) / (count + 2.0)
        left, sv, right = _truncated_svd(i, j, value[sel] - mean_c[j], (len(rows), len(cols)), rank, random_state)
        r = len(sv)
        factors[cols, :r] = right[:, :r] * sv[:r] / np.sqrt(len(rows))
        mean[cols] = mean_c
        per_user = np.bincount(i, minlength=len(rows)).astype(np.float64)
        better = per_user > best_count[rows]
        users[rows[better], :] = 0.0
        users[rows[better], :r] = left[better, :r] * np.sqrt(len(rows))
        best_count[rows[better]] = per_user[better]
    predicted = mean[item] + (users[user] * factors[item]).sum(1)
    decided = value != 0  # above or below the scale's middle
    sign = np.sign(value[decided])

    def loglik(scale: float) -> float:
        return float(-np.logaddexp(0.0, -scale * sign * predicted[decided]).sum())

    logit_scale = float(max(LOGIT_SCALES, key=loglik)) if decided.any() else 1.0
    cut_points = logit_scale * (values[:-1] + values[1:]) / 2
    return SpectralStart(users, factors, mean, best_count > 0, np.bincount(item, minlength=n_items) > 0,
                         logit_scale, cut_points, int(len(user)))


def _truncated_svd(i: np.ndarray, j: np.ndarray, v: np.ndarray, shape: tuple[int, int], rank: int,
                   random_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(left (m, r), singular values (r,), right (n, r))`` of the rank ``r = min(rank, m, n)``
    truncation of the sparse matrix with entries ``v`` at ``(i, j)``, largest singular value first."""
    m, n = shape
    if m * n <= DENSE_LIMIT or min(m, n) <= rank + 1:
        dense = np.zeros(shape)
        dense[i, j] = v
        left, sv, right_t = np.linalg.svd(dense, full_matrices=False)
        r = min(rank, len(sv))
        return left[:, :r], sv[:r], right_t[:r].T
    matrix = csr_matrix((v, (i, j)), shape=shape)
    left, sv, right_t = svds(matrix, k=rank, random_state=random_state)
    order = np.argsort(-sv)
    return left[:, order], sv[order], right_t[order].T
