"""VPL's amortised posterior: the set encoder that reads a user's comparisons and returns a Gaussian
over their latent z, the sampling of each user's context set, and the pure functions on those
Gaussians (``user_models.vpl`` builds the model on them)."""

from __future__ import annotations


import torch
from torch import nn

from plural.core.layers import mlp
from plural.core.model import UserState

LOG_STD_RANGE = (-7.0, 2.0)
"""Bounds of the encoder's log standard deviation."""
MAX_SAMPLING_KEYS = 1 << 24
"""Above this many (users x longest history) random keys per step, contexts are drawn with replacement."""


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean, std^2) || N(0, 1))``, same shape as ``mean``."""
    return 0.5 * (mean.pow(2) + std.pow(2) - 1) - torch.log(std)


def swap_prior(mean: torch.Tensor, var: torch.Tensor, prior: UserState) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a Gaussian posterior ``N(mean, diag(var))`` found under the N(0, I) prior to ``prior``:
    ``q'(z) ∝ q(z) prior(z) / N(z; 0, I)``. Where that precision is not positive definite (a prior
    broader than N(0, I)), its eigenvalues are floored at the prior's smallest precision.

    Returns ``(mean (K,), covariance (K, K))`` in float64.
    """
    k = len(mean)
    eye = torch.eye(k, dtype=torch.float64)
    prior_mean = prior.vector.double().cpu()
    prior_cov = eye if prior.covariance is None else prior.covariance.double().cpu()
    prior_precision = torch.linalg.inv(prior_cov)
    precision = torch.diag(1 / var) + prior_precision - eye
    evals, evecs = torch.linalg.eigh((precision + precision.T) / 2)
    evals = evals.clamp_min(float(torch.linalg.eigvalsh(prior_precision).min()))
    cov = evecs @ torch.diag(1 / evals) @ evecs.T
    return cov @ (mean / var + prior_precision @ prior_mean), cov


def refine_posterior(z: torch.Tensor, jacobian: torch.Tensor, offset: torch.Tensor, label: torch.Tensor,
                     weight: torch.Tensor, segment: torch.Tensor, steps: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton steps on each set's log posterior under the N(0, I) prior, from the encoder's ``z``.

    Each comparison's margin is linear in its user's z: ``offset + jacobian . z`` (VPL's reward is
    bilinear), so the log posterior of a set is a logistic regression with a Gaussian prior: concave,
    and a few Newton steps from a good start reach its mode. Every step is differentiable, so the
    reward's weights learn from the refined z even while the encoder's output barely varies.

    Args:
        z: ``(S, K)`` starting points (the encoder's means).
        jacobian: ``(M, K)`` derivative of each comparison's margin with respect to its user's z.
        offset: ``(M,)`` each comparison's margin at z = 0 (the population's).
        label, weight: ``(M,)`` soft labels in [0, 1] and comparison weights.
        segment: ``(M,)`` which set each comparison belongs to.
        steps: Newton steps (>= 1).

    Returns:
        ``mean (S, K)`` after the steps and ``std (S, K)``: the square root of the diagonal of the
        Laplace covariance (the inverse Hessian of the negative log posterior) at that mean.
    """
    n, k = z.shape
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    y = label.to(z.dtype)
    w = weight.to(z.dtype)
    outer = jacobian.unsqueeze(-1) * jacobian.unsqueeze(-2)

    def hessian_at(p):
        curv = (w * p * (1 - p)).unsqueeze(-1).unsqueeze(-1) * outer
        return eye + z.new_zeros(n, k, k).index_add(0, segment, curv)

    def probability_at(point):
        return torch.sigmoid(offset + (jacobian * point[segment]).sum(-1))

    for _ in range(steps):
        p = probability_at(z)
        grad = z.new_zeros(n, k).index_add(0, segment, (w * (y - p)).unsqueeze(-1) * jacobian) - z
        z = z + torch.linalg.solve(hessian_at(p), grad.unsqueeze(-1)).squeeze(-1)
    hessian = hessian_at(probability_at(z))  # the Laplace spread at the refined mean
    variance = torch.diagonal(torch.linalg.inv(hessian), dim1=-2, dim2=-1)
    return z, variance.clamp_min(1e-12).sqrt()


def sample_context(indptr: torch.Tensor, users: torch.Tensor, size: int,
                   max_keys: int = MAX_SAMPLING_KEYS, vary_size: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random subset of at most ``size`` of each user's comparisons, without replacement.

    With ``vary_size`` each user keeps a uniformly drawn number of them, from 1 to all it could
    keep, so the encoder also learns what one or two comparisons say (as ``adapt`` at small k asks).

    Args:
        indptr: ``(n_users + 1,)`` CSR offsets of each user's comparisons.
        users: ``(U,)`` user indices.
        size: the most comparisons per user.
        max_keys: above ``U * longest history`` random keys, users with more than ``size``
            comparisons are sampled with replacement instead (bounded memory).

    Returns:
        ``positions (M,)`` into the CSR order and ``segment (M,)``: which of ``users`` each belongs to.
    """
    device = indptr.device
    start = indptr[users]
    count = indptr[users + 1] - start
    n = len(users)
    width = int(count.max()) if n else 0
    if width <= size:
        pos = torch.arange(width, device=device).expand(n, width)
    elif n * width <= max_keys:
        keys = torch.rand(n, width, device=device)
        keys = keys.masked_fill(torch.arange(width, device=device) >= count[:, None], -1.0)
        pos = keys.topk(size, dim=1).indices
    else:
        ar = torch.arange(size, device=device).expand(n, size)
        drawn = (torch.rand(n, size, device=device) * count[:, None]).long()
        pos = torch.where((count > size)[:, None], drawn, ar)
    keep = pos < count[:, None]
    if vary_size and n:
        available = keep.sum(1)
        limit = 1 + (torch.rand(n, device=device) * available).long()
        keys = torch.rand(pos.shape, device=device).masked_fill(~keep, 2.0)  # invalid positions rank last
        keep = keep & (keys.argsort(dim=1).argsort(dim=1) < limit[:, None])
    segment = torch.arange(n, device=device)[:, None].expand_as(pos)
    return (start[:, None] + pos)[keep], segment[keep]


class SetEncoder(nn.Module):
    """Permutation-invariant encoder of a user's comparisons into a Gaussian over ``z``.

    ``forward(phi_a (M, h), phi_b (M, h), label (M,), weight (M,), segment (M,), n_sets)`` returns
    ``mean (n_sets, K)`` and ``log_std (n_sets, K)``; ``segment`` says which set each comparison is in.
    """

    def __init__(self, item_dim: int, hidden: int, n_components: int, context_size: int,
                 dropout: float = 0.0, feature_dim: int | None = None) -> None:
        super().__init__()
        self.context_size = context_size
        # the raw features' signed difference, through a map of the encoder's own: phi is shaped by
        # the population reward and need not carry what tells users apart until z does
        self.feature_map = None if feature_dim is None else nn.Linear(feature_dim, item_dim, bias=False)
        n_in = 2 * item_dim + (0 if feature_dim is None else item_dim)
        self.comparison_net = mlp(n_in, hidden, hidden, dropout)
        self.posterior_head = mlp(hidden + 1, hidden, 2 * n_components, dropout)

    def forward(self, phi_a, phi_b, label, weight, segment, n_sets, x_a=None, x_b=None):
        sign = (2 * label.to(phi_a.dtype) - 1).unsqueeze(-1)
        parts = [sign * (phi_a - phi_b), phi_a + phi_b]
        if self.feature_map is not None:
            if x_a is None or x_b is None:
                raise ValueError("this encoder reads the items' features: pass x_a and x_b")
            parts.append(self.feature_map(sign * (x_a.to(phi_a.dtype) - x_b.to(phi_a.dtype))))
        h = self.comparison_net(torch.cat(parts, dim=-1))
        w = weight.to(h.dtype)
        total = h.new_zeros(n_sets, h.shape[-1]).index_add_(0, segment, h * w[:, None])
        mass = h.new_zeros(n_sets).index_add_(0, segment, w)
        count = h.new_zeros(n_sets).index_add_(0, segment, torch.ones_like(w))
        pooled = total / mass.clamp_min(1e-12)[:, None]
        size = torch.log1p(count.clamp_max(self.context_size))[:, None]
        mean, log_std = self.posterior_head(torch.cat([pooled, size], dim=-1)).chunk(2, dim=-1)
        return mean, log_std.clamp(*LOG_STD_RANGE)


