"""The Bradley-Terry preference likelihood, written once for every model.

With reward margin ``m = r(a) - r(b)``, Bradley-Terry gives ``P(a preferred) = sigmoid(m)``. With a
label-noise rate ``eps`` (the chance that a label was flipped at random), the probability of the
observed label becomes ``eps + (1 - 2 eps) * sigmoid(m)``. Ties (label 0.5) are scored as a soft target.

Training works on torch tensors and query-time Newton steps on float64 NumPy arrays (tiny
matrices, where NumPy's per-call cost is lower); the functions here take either, so both paths use
the same likelihood: :func:`label_log_likelihood` (its value), :func:`score_and_information` (its
first derivative and Fisher information in the margin, for Newton and Laplace steps),
:func:`fold_label_noise` (the noise in log space, shared with mixtures of heads) and
:func:`prediction_agreement` (what accuracy counts).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _log_sigmoid(m):
    if isinstance(m, torch.Tensor):
        return F.logsigmoid(m)
    return -np.logaddexp(0.0, -m)


def fold_label_noise(log_p, log_q, noise_rate):
    """``(log P'(a), log P'(b))`` after labels flip with rate ``noise_rate``: ``P' = (1 - eps) P +
    eps Q`` and the reverse, in log space. ``log_p``, ``log_q``: log-probabilities of a and of b
    (tensors or arrays, any shape)."""
    if isinstance(log_p, torch.Tensor):
        eps = torch.as_tensor(noise_rate, dtype=log_p.dtype, device=log_p.device)
        log_keep, log_flip, logaddexp = torch.log1p(-eps), torch.log(eps), torch.logaddexp
    else:
        log_keep, log_flip, logaddexp = np.log1p(-noise_rate), np.log(noise_rate), np.logaddexp
    return logaddexp(log_keep + log_p, log_flip + log_q), logaddexp(log_keep + log_q, log_flip + log_p)


def label_log_likelihood(margin, label, noise_rate: float | torch.Tensor = 0.0):
    """``log P(label | margin)`` elementwise under Bradley-Terry with label noise (a tie's label 0.5
    is a soft target). Tensors in, tensor out; arrays in, array out.

    Args:
        margin: reward differences ``r(a) - r(b)``, any shape.
        label: targets in {0, 0.5, 1}, broadcastable to ``margin``.
        noise_rate: label-flip probability in [0, 0.5).
    """
    log_a, log_b = _log_sigmoid(margin), _log_sigmoid(-margin)
    noisy = isinstance(noise_rate, torch.Tensor) or noise_rate > 0
    if noisy:
        log_a, log_b = fold_label_noise(log_a, log_b, noise_rate)
    return label * log_a + (1 - label) * log_b


def score_and_information(sigmoid_margin, label, noise_rate: float = 0.0):
    """``(d log P(label) / d margin, Fisher information in the margin)`` elementwise, given
    ``sigmoid(margin)``, for Newton and Laplace steps (tensors or arrays).

    Without noise these are ``label - s`` and ``s (1 - s)``; with flip rate ``eps``, ``p = eps +
    (1 - 2 eps) s`` and ``dp = (1 - 2 eps) s (1 - s)`` give ``dp (y / p - (1 - y) / (1 - p))`` and
    ``dp**2 / (p (1 - p))``.
    """
    s, y = sigmoid_margin, label
    if noise_rate > 0:
        p = noise_rate + (1 - 2 * noise_rate) * s
        dp = (1 - 2 * noise_rate) * s * (1 - s)
        return dp * (y / p - (1 - y) / (1 - p)), dp ** 2 / (p * (1 - p))
    return y - s, s * (1 - s)


def prediction_agreement(prob, label):
    """1.0 where the predicted preference (``prob > 0.5``) agrees with the label, 0.0 where not,
    0.5 for an undecided prediction (``prob == 0.5``), elementwise over NumPy arrays; pass decisive
    labels (0 or 1) only."""
    prob, label = np.asarray(prob), np.asarray(label)
    return np.where(prob == 0.5, 0.5, ((prob > 0.5) == (label == 1)).astype(np.float64))


def preference_probability(margin: torch.Tensor, noise_rate: float | torch.Tensor = 0.0) -> torch.Tensor:
    """``P(a preferred over b)`` for reward margins ``(n,)`` under label noise ``noise_rate``."""
    p = torch.sigmoid(margin)
    if isinstance(noise_rate, torch.Tensor) or noise_rate > 0:
        p = noise_rate + (1 - 2 * noise_rate) * p
    return p


def bradley_terry_nll(
    margin: torch.Tensor,
    label: torch.Tensor,
    weight: torch.Tensor | None = None,
    noise_rate: float | torch.Tensor = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of labels under Bradley-Terry with optional label noise.

    Args:
        margin: ``(n,)`` reward differences ``r(a) - r(b)``.
        label: ``(n,)`` targets in {0, 0.5, 1}; 1 means a preferred.
        weight: ``(n,)`` non-negative comparison weights, or None for all ones.
        noise_rate: probability that a label is flipped, in [0, 0.5).
        reduction: ``"mean"`` (weighted mean), ``"sum"`` or ``"none"``.

    Returns:
        The loss, a scalar unless ``reduction="none"``.
    """
    label = label.to(margin.dtype)
    if isinstance(noise_rate, torch.Tensor) or noise_rate > 0:
        loss = -label_log_likelihood(margin, label, noise_rate)
    else:  # the same likelihood, through torch's fused kernel
        loss = F.binary_cross_entropy_with_logits(margin, label, reduction="none")
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        denom = weight.sum().clamp_min(1e-12) if weight is not None else loss.new_tensor(len(loss))
        return loss.sum() / denom
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def independent_share(item_a, item_b) -> float:
    """Share of a set of comparisons that carries independent evidence: ``min(1, r / n)`` for ``n``
    comparisons whose comparison graph (items as nodes, comparisons as edges) has rank ``r = m - c``
    (``m`` distinct items, ``c`` connected components), the number of independent score differences
    the comparisons can pin down.

    Pairs formed from one user's ratings or votes repeat the same judgements: 50 pairs among 15
    voted statements determine at most 14 differences, and a likelihood that counts them as 50
    independent comparisons makes the user's posterior overconfident (composite-likelihood
    tempering multiplies their weights by this share). A forest of comparisons (every natively
    pairwise support with no repeated items, such as most UKPConvArg1 workers') gets 1.

    Args:
        item_a, item_b: ``(n,)`` integer item indices (arrays or tensors); -1 marks an item with no
            index, counted as distinct from every other.

    Returns:
        A float in ``(0, 1]``; 1.0 for an empty set.

    Example:
        >>> independent_share([0, 0, 1], [1, 1, 2])   # 3 comparisons, 3 items, 1 component
        0.6666666666666666
    """
    a = item_a.tolist() if hasattr(item_a, "tolist") else list(item_a)
    b = item_b.tolist() if hasattr(item_b, "tolist") else list(item_b)
    n = len(a)
    if n != len(b):
        raise ValueError(f"item_a and item_b must have the same length, got {n} and {len(b)}")
    if n == 0:
        return 1.0
    parent: dict = {}

    def find(x):
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    rank = 0
    for i, (x, y) in enumerate(zip(a, b)):
        x = ("new", i, 0) if x < 0 else x
        y = ("new", i, 1) if y < 0 else y
        rx, ry = find(x), find(y)
        if rx != ry:  # the comparison joins two components: one more independent difference
            parent[rx] = ry
            rank += 1
    return min(1.0, max(rank, 1) / n)  # rank 0 only if every comparison is an item against itself


THRESHOLD_NODE = 1 << 40
"""Where thresholds start in the comparison graph of :func:`independent_share` (``graph_items``): an
observation's row compares its item with a threshold, one node per threshold."""


def graph_items(item_b, level):
    """``item_b`` with each threshold row (``level`` >= 0) naming its threshold's node (tensors)."""
    return torch.where(level >= 0, THRESHOLD_NODE + level, item_b)


def independent_share_by_user(user, item_a, item_b) -> np.ndarray:
    """``(n,)`` each row's user's :func:`independent_share` over all of that user's rows (NumPy arrays
    or tensors of equal length; the same conventions for -1)."""
    user, a, b = (np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in (user, item_a, item_b))
    share = np.ones(len(user))
    order = np.argsort(user, kind="stable")
    cuts = np.flatnonzero(np.diff(user[order])) + 1
    for rows in np.split(order, cuts):
        if len(rows):
            share[rows] = independent_share(a[rows], b[rows])
    return share
