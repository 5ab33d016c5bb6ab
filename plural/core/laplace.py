"""MAP estimation of a small user vector under Bradley-Terry, with a Laplace covariance.

A user vector ``u`` (K entries) enters the margins of the user's comparisons through
``margin(u) -> (k,)`` with Jacobian ``J(u) -> (k, K)``. With a Gaussian prior ``N(mu, P^-1)``, the
posterior mode is found by Gauss-Newton steps (exact Newton when the margin is linear in ``u``),
and ``H^-1`` at the mode is the Laplace covariance.

The iteration runs in float64 NumPy: the matrices are tiny (K=8, k=10), so the cost is per-call
overhead, which NumPy keeps at about a microsecond per operation against ten for torch. Margins
linear in ``u`` (:class:`LinearMargins`) are evaluated inside the loop without calling back into
torch at all, which is what keeps a K=8 user with 10 comparisons well under a millisecond.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


class LinearMargins:
    """Margins linear in ``u``: ``offset + jacobian @ u``. Callable as ``u -> (margins, jacobian)``
    (torch float64), like any ``margin_and_jacobian``; :func:`gauss_newton_map` reads the arrays."""

    def __init__(self, jacobian: torch.Tensor, offset: torch.Tensor):
        self.jacobian = jacobian.detach().to(torch.float64)
        self.offset = offset.detach().to(torch.float64)
        if self.jacobian.ndim != 2 or self.offset.shape != self.jacobian.shape[:1]:
            raise ValueError(f"jacobian must be (k, K) and offset (k,), got {tuple(self.jacobian.shape)} "
                             f"and {tuple(self.offset.shape)}")

    def __call__(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = u.to(self.jacobian)
        return self.offset + self.jacobian @ u, self.jacobian

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offset (k,), jacobian (k, K))`` as float64 arrays."""
        return self.offset.cpu().numpy(), self.jacobian.cpu().numpy()


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def stable_sigmoid(m: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-m))`` without overflow for large ``|m|`` (float64 NumPy)."""
    return 0.5 * (1.0 + np.tanh(0.5 * m))  # stable for large |m|


def gauss_newton_map(
    margin_and_jacobian: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | LinearMargins,
    label: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_precision: torch.Tensor,
    weight: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    n_steps: int = 8,
    noise_rate: float = 0.0,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mode and Laplace covariance of a user vector.

    Args:
        margin_and_jacobian: ``u (K,) -> (margins (k,), jacobian (k, K))``, or a
            :class:`LinearMargins` (evaluated without leaving NumPy).
        label: ``(k,)`` labels in {0, 0.5, 1}.
        prior_mean: ``(K,)``.
        prior_precision: ``(K, K)`` precision of the Gaussian prior.
        weight: ``(k,)`` comparison weights.
        init: starting point (the prior mean by default).
        n_steps: at most this many Gauss-Newton steps.
        noise_rate: label-flip probability of the likelihood.
        tol: stop when a step moves ``u`` less than this (max-norm).

    Returns:
        ``(mean (K,), covariance (K, K))`` as float64 tensors on the prior mean's device.
    """
    device = prior_mean.device if isinstance(prior_mean, torch.Tensor) else torch.device("cpu")
    mu = _np64(prior_mean)
    prec = _np64(prior_precision)
    y = _np64(label)
    w = np.ones_like(y) if weight is None else _np64(weight)
    u = (mu if init is None else _np64(init)).copy()

    if isinstance(margin_and_jacobian, LinearMargins):
        offset, jac_const = margin_and_jacobian.numpy()

        def evaluate(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return offset + jac_const @ v, jac_const
    else:
        def evaluate(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m, jac = margin_and_jacobian(torch.from_numpy(v).to(device))
            return _np64(m), _np64(jac)

    for _ in range(n_steps):
        m, jac = evaluate(u)
        s = stable_sigmoid(m)
        if noise_rate > 0:
            p = noise_rate + (1 - 2 * noise_rate) * s
            dp = (1 - 2 * noise_rate) * s * (1 - s)
            resid = w * dp * (y / p - (1 - y) / (1 - p))          # d loglik / d margin
            curv = w * dp ** 2 / (p * (1 - p))                     # Fisher information
        else:
            resid = w * (y - s)
            curv = w * s * (1 - s)
        grad = jac.T @ resid - prec @ (u - mu)
        hessian = prec + (jac * curv[:, None]).T @ jac
        step = np.linalg.solve(hessian, grad)
        u = u + step
        if np.abs(step).max() < tol:
            break
    hessian = prec
    if n_steps > 0:  # curvature at the final point
        m, jac = evaluate(u)
        s = stable_sigmoid(m)
        hessian = prec + (jac * (w * s * (1 - s))[:, None]).T @ jac
    cov = np.linalg.inv(hessian)
    cov = 0.5 * (cov + cov.T)
    return torch.from_numpy(u).to(device), torch.from_numpy(cov).to(device)


def linear_margins(features: torch.Tensor, offset: torch.Tensor) -> LinearMargins:
    """``margin_and_jacobian`` for margins linear in ``u``: ``offset + features @ u``."""
    return LinearMargins(features, offset)
