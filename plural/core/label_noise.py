"""Label noise and mixtures of Bradley-Terry heads, as pure functions.

Labels flip at random with rate ``eps``: ``P(y = a | margin m) = (1 - eps) sigmoid(m) + eps sigmoid(-m)``
(``plural.core.likelihood`` holds that likelihood). These functions give it per head, the mixture prediction over K heads, one EM round of user
responsibilities / mixture weights / flip rate, and a margin-temperature fit; ``user_models.em_mixture``
is built on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from plural.core.likelihood import fold_label_noise, label_log_likelihood


def noisy_label_log_likelihood(margin: torch.Tensor, label: torch.Tensor,
                               noise_rate: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of labels under each head with label flips, and the posterior that each label
    is correct.

    Args:
        margin: ``(B, K)`` margins ``r_k(a) - r_k(b)`` of each comparison under each head.
        label: ``(B,)`` labels in {0, 0.5, 1}; ties are never flipped.
        noise_rate: ``eps``, the probability that a decisive label was flipped.

    Returns:
        ``log P(y | head k)`` ``(B, K)`` and ``P(label correct | y, head k)`` ``(B, K)`` (1 for ties).
    """
    eps = torch.as_tensor(noise_rate, dtype=margin.dtype, device=margin.device)
    y = label.to(margin.dtype).unsqueeze(-1)
    log_lik = label_log_likelihood(margin, y, eps)
    clean = label_log_likelihood(margin, y)
    correct = torch.exp(torch.log1p(-eps) + clean - log_lik).clamp(0, 1)
    correct = torch.where(y == 0.5, torch.ones_like(correct), correct)
    return log_lik, correct


def mixture_logit(margin: torch.Tensor, weights: torch.Tensor,
                  noise_rate: float | torch.Tensor = 0.0) -> torch.Tensor:
    """``(B,)`` logit of ``P = eps + (1 - 2 eps) sum_k w_k sigmoid(m_k)``, computed in log space.

    Args:
        margin: ``(B, K)`` per-head margins.
        weights: ``(B, K)`` or ``(K,)`` mixture weights (rows sum to one).
        noise_rate: label-flip rate folded into the probability (0: the clean preference).
    """
    log_w = torch.log(weights.to(margin.dtype))
    log_p = torch.logsumexp(log_w + F.logsigmoid(margin), dim=-1)
    log_q = torch.logsumexp(log_w + F.logsigmoid(-margin), dim=-1)
    eps = torch.as_tensor(noise_rate, dtype=margin.dtype, device=margin.device)
    if eps > 0:
        log_p, log_q = fold_label_noise(log_p, log_q, eps)
    return log_p - log_q


def em_round(margin: torch.Tensor, label: torch.Tensor, user: torch.Tensor, weight: torch.Tensor,
             mixture_weights: torch.Tensor, noise_rate: float | torch.Tensor, n_users: int,
             pseudocount: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EM round for the closed-form parts, the heads fixed: the E-step over users (vectorised
    with ``index_add_``), then the maximising mixture weights and flip rate.

    Args:
        margin: ``(N, K)`` per-head margins of every training comparison.
        label, weight: ``(N,)`` labels in {0, 0.5, 1} and comparison weights.
        user: ``(N,)`` model user index of each comparison (-1: not a training user; prior ``pi``).
        mixture_weights: ``(K,)`` current prior ``pi``.
        noise_rate: current flip rate ``eps``.
        n_users: number of training users.
        pseudocount: Dirichlet pseudo-count per head added in the update of ``pi``.

    Returns:
        Responsibilities ``(n_users, K)`` (``pi`` for users without comparisons), the updated ``pi``
        ``(K,)`` and the updated ``eps`` ``()`` (unclamped: the weighted share of decisive labels
        flipped in expectation).
    """
    k = margin.shape[-1]
    log_lik, correct = noisy_label_log_likelihood(margin, label, noise_rate)
    known = user >= 0
    log_lik_sum = torch.zeros(n_users, k, dtype=torch.float64, device=margin.device)
    log_lik_sum.index_add_(0, user[known], (log_lik * weight.unsqueeze(-1))[known].double())
    log_prior = torch.log(mixture_weights.to(margin.device)).double()
    gamma = torch.softmax(log_prior + log_lik_sum, dim=-1).to(margin.dtype)
    seen = torch.zeros(n_users, dtype=torch.bool, device=margin.device)
    seen[user[known]] = True
    pi = (gamma[seen].sum(0) + pseudocount) / (int(seen.sum()) + k * pseudocount)
    decisive = weight * (label != 0.5)  # ties are never flipped
    flipped = (rows_of(gamma, user, mixture_weights) * (1 - correct)).sum(-1)
    eps = (decisive * flipped).sum() / decisive.sum() if decisive.sum() > 0 else \
        torch.as_tensor(noise_rate, dtype=margin.dtype, device=margin.device)
    return gamma, eps, pi / pi.sum()


def rows_of(gamma: torch.Tensor, user: torch.Tensor, mixture_weights: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` responsibilities of each comparison's user; ``pi`` for user -1 (or no users)."""
    pi = mixture_weights.to(gamma.dtype).expand(len(user), -1)
    if len(gamma) == 0:
        return pi
    return torch.where((user >= 0).unsqueeze(-1), gamma[user.clamp_min(0)], pi)


def fit_margin_scale(margin: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                     scale: float, n_steps: int = 5, bounds: tuple[float, float] = (1e-2, 1e3)) -> float:
    """Maximise ``sum w [t log sigmoid(s m) + (1 - t) log sigmoid(-s m)]`` over the scale ``s`` by
    damped Newton steps on ``log s`` (the expected complete-data log-likelihood of a temperature).

    Args:
        margin: ``(N, K)`` unscaled margins; target: ``(N, K)`` soft targets; weight: ``(N, K)``.
        scale: the starting scale.
    """
    m, t, w = margin.double(), target.double(), weight.double()
    log_s = math.log(scale)
    for _ in range(n_steps):
        s = math.exp(log_s)
        p = torch.sigmoid(s * m)
        grad = float((w * m * (t - p)).sum()) * s  # d/dlog s
        hess = -float((w * m.square() * p * (1 - p)).sum()) * s * s + grad
        if grad == 0:
            break
        step = -grad / hess if hess < 0 else math.copysign(1.0, grad)
        log_s = min(max(log_s + max(-1.0, min(1.0, step)), math.log(bounds[0])), math.log(bounds[1]))
    return math.exp(log_s)


def categorical_covariance(p: torch.Tensor) -> torch.Tensor:
    """``(K, K)`` covariance ``diag(p) - p p^T`` of the one-hot head indicator under posterior ``p``."""
    return torch.diag(p) - torch.outer(p, p)


# ---------------------------------------------------------------------- config
