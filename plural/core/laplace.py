"""MAP estimation of a small user vector under Bradley-Terry, with a Laplace covariance.

A user vector ``u`` (K entries) enters the margins of the user's comparisons through
``margin(u) -> (k,)`` with Jacobian ``J(u) -> (k, K)``. With a Gaussian prior ``N(mu, P^-1)``, the
posterior mode is found by Gauss-Newton steps (exact Newton when the margin is linear in ``u``),
and ``H^-1`` at the mode is the Laplace covariance.

:func:`newton_map` is the general Newton loop (batched over several problems);
:func:`gauss_newton_map` is its one-user form. :func:`plural.personalize`'s mixture prior runs a
specialised copy of the same steps whose problems share one Jacobian (tested equal to this one). The iteration runs in float64 NumPy: the matrices are tiny (K=8, k=10), so the cost is per-call
overhead, which NumPy keeps at about a microsecond per operation against ten for torch. Margins
linear in ``u`` (:class:`LinearMargins`) are evaluated inside the loop without calling back into
torch at all, which is what keeps a K=8 user with 10 comparisons well under a millisecond.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import numpy as np
import torch

from plural.core.likelihood import label_log_likelihood, score_and_information

logger = logging.getLogger(__name__)


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


class ConvergenceWarning(UserWarning):
    """A Newton loop stopped at its step limit before its steps became negligible."""


MAX_HALVINGS = 30
"""Step halvings a Newton step may take before a problem is left where it is."""


def warn_step_limit(moved: float, n_steps: int, tol: float, stacklevel: int = 4) -> None:
    """The warning of a Newton loop that stopped at its step limit (``stacklevel`` 4: the caller of
    the function that ran the loop). One text for every place, so the default filter shows it once
    rather than on every query."""
    warnings.warn("Newton's method stopped at its step limit before converging; raise the number of "
                  "steps (adapt_steps) for an exact mode", ConvergenceWarning, stacklevel=stacklevel)
    logger.debug("Newton's method: last step %.2g after %d steps (tolerance %g)", moved, n_steps, tol)


def newton_map(evaluate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], label: np.ndarray,
               weight: np.ndarray, prior_mean: np.ndarray, prior_precision: np.ndarray, init: np.ndarray,
               n_steps: int, noise_rate: float = 0.0, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Posterior modes of ``C`` user vectors under Bradley-Terry with Gaussian priors, by damped
    (Gauss-)Newton steps batched over the ``C`` problems.

    A full step is taken where it raises the log-posterior (always, near the mode); elsewhere it is
    halved until it does, so a start far from the mode cannot overshoot into saturated margins.

    Args:
        evaluate: ``u (C, K) -> (margins (C, k), jacobian (k, K) shared or (C, k, K))``.
        label, weight: ``(k,)`` labels in {0, 0.5, 1} and comparison weights.
        prior_mean: ``(C, K)`` prior means; prior_precision: ``(C, K, K)`` or ``(K, K)``.
        init: ``(C, K)`` starting points.
        n_steps: at most this many steps; a loop that reaches it with a step still above ``tol``
            warns with :class:`ConvergenceWarning`.
        noise_rate: label-flip probability of the likelihood.
        tol: a problem whose step moves its ``u`` less than this (max-norm) has converged and
            takes no more steps; the loop ends when all have.

    Returns:
        ``(modes (C, K), Hessians of the negative log-posterior at the modes (C, K, K))``; the
        Hessian's inverse is the Laplace covariance.
    """
    u = np.array(init, dtype=np.float64)
    mean = np.broadcast_to(prior_mean, u.shape)
    prec = prior_precision if prior_precision.ndim == 3 else prior_precision[None]  # (1 or C, K, K)


    def log_posterior(m: np.ndarray, v: np.ndarray, mu: np.ndarray, p: np.ndarray) -> np.ndarray:
        d = (v - mu)[..., None]
        return (weight * label_log_likelihood(m, label, noise_rate)).sum(-1) - 0.5 * (d * (p @ d)).sum((-2, -1))

    def transposed(jac: np.ndarray) -> np.ndarray:
        return jac.T[None] if jac.ndim == 2 else np.swapaxes(jac, -1, -2)  # (1 or C, K, k)

    def hessian(m: np.ndarray, jac_t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, info = score_and_information(stable_sigmoid(m), label, noise_rate)
        return weight * score, p + (jac_t * (weight * info)[:, None, :]) @ np.swapaxes(jac_t, -1, -2)

    m, jac = evaluate(u)
    jac = np.array(jac) if jac.ndim == 3 else jac  # written into per problem below
    f = log_posterior(m, u, mean, prec)
    active = np.arange(len(u))  # the problems still moving: converged ones are left where they are
    moved = None
    for _ in range(n_steps):
        if not len(active):
            break
        u_a, m_a, mu_a = u[active], m[active], mean[active]
        p_a = prec if len(prec) == 1 else prec[active]  # shared, or one per problem
        jac_a = jac if jac.ndim == 2 else jac[active]
        jac_t = transposed(jac_a)
        resid, hess = hessian(m_a, jac_t, p_a)
        grad = (jac_t @ resid[..., None] - p_a @ (u_a - mu_a)[..., None])[..., 0]
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        scale = np.ones(len(active))
        for _ in range(MAX_HALVINGS):
            candidate = u_a + scale[:, None] * step
            m_new, jac_new = evaluate(candidate)
            f_new = log_posterior(m_new, candidate, mu_a, p_a)
            worse = ~(f_new >= f[active] - 1e-12 * np.abs(f[active]))
            if not worse.any():
                break
            scale[worse] *= 0.5
        else:  # no halving helps: those problems stay where they are
            scale[worse] = 0.0
            candidate = u_a + scale[:, None] * step
            m_new, jac_new = evaluate(candidate)
            f_new = log_posterior(m_new, candidate, mu_a, p_a)
        u[active], m[active], f[active] = candidate, m_new, f_new
        if jac.ndim == 3:
            jac[active] = jac_new
        moves = np.abs(scale[:, None] * step).max(axis=1)
        moved = float(moves.max())
        active = active[moves >= tol]
    else:
        if len(active):
            warn_step_limit(moved, n_steps, tol)
    hess = prec if n_steps == 0 else hessian(m, transposed(jac), prec)[1]
    return u, np.broadcast_to(hess, u.shape[:1] + hess.shape[-2:]).copy()


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
    """Posterior mode and Laplace covariance of one user vector (:func:`newton_map` with ``C = 1``).

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
    y = _np64(label)
    w = np.ones_like(y) if weight is None else _np64(weight)
    start = mu if init is None else _np64(init)

    if isinstance(margin_and_jacobian, LinearMargins):
        offset, jac_const = margin_and_jacobian.numpy()

        def evaluate(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return offset + v @ jac_const.T, jac_const
    else:
        def evaluate(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m, jac = margin_and_jacobian(torch.from_numpy(v[0]).to(device))
            return _np64(m)[None], _np64(jac)

    u, hess = newton_map(evaluate, y, w, mu[None], _np64(prior_precision), start[None], n_steps,
                         noise_rate=noise_rate, tol=tol)
    cov = np.linalg.inv(hess[0])
    cov = 0.5 * (cov + cov.T)
    return torch.from_numpy(u[0]).to(device), torch.from_numpy(cov).to(device)


def linear_margins(features: torch.Tensor, offset: torch.Tensor) -> LinearMargins:
    """``margin_and_jacobian`` for margins linear in ``u``: ``offset + features @ u``."""
    return LinearMargins(features, offset)
