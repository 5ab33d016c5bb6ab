import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from plural.core.laplace import gauss_newton_map, linear_margins


def test_linear_map_matches_sklearn_logistic_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 5))
    y = (rng.random(60) < 1 / (1 + np.exp(-x @ np.array([1.0, -2, 0.5, 0, 1])))).astype(float)
    lam = 2.0
    mean, cov = gauss_newton_map(linear_margins(torch.from_numpy(x), torch.zeros(60)), torch.from_numpy(y),
                                 torch.zeros(5), torch.eye(5) * lam, n_steps=25)
    ref = LogisticRegression(C=1 / lam, fit_intercept=False, tol=1e-10, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(mean.numpy(), ref.coef_[0], atol=1e-5)
    # Laplace covariance: inverse Hessian of the negative log-posterior at the mode
    p = 1 / (1 + np.exp(-x @ mean.numpy()))
    hess = x.T @ (x * (p * (1 - p))[:, None]) + lam * np.eye(5)
    np.testing.assert_allclose(cov.numpy(), np.linalg.inv(hess), atol=1e-8)


def test_prior_mean_and_no_data_direction():
    x = torch.tensor([[1.0, 0.0]] * 4)
    y = torch.tensor([1.0, 1.0, 1.0, 0.0])
    mean, cov = gauss_newton_map(linear_margins(x, torch.zeros(4)), y, torch.tensor([0.0, 3.0]),
                                 torch.eye(2), n_steps=20)
    assert mean[1].item() == pytest.approx(3.0)  # no comparison informs the second coordinate
    assert cov[1, 1].item() == pytest.approx(1.0) and cov[0, 0].item() < 1.0
    assert mean[0].item() > 0


def test_noise_rate_tempers_the_update():
    x = torch.ones(6, 1)
    y = torch.ones(6)
    clean, _ = gauss_newton_map(linear_margins(x, torch.zeros(6)), y, torch.zeros(1), torch.eye(1), n_steps=30)
    noisy, _ = gauss_newton_map(linear_margins(x, torch.zeros(6)), y, torch.zeros(1), torch.eye(1), n_steps=30,
                                noise_rate=0.3)
    assert 0 < noisy.item() < clean.item()


def test_noisy_laplace_covariance_uses_the_noisy_curvature():
    # the Laplace covariance is the inverse of prior precision plus the noisy likelihood's Fisher
    # information at the mode (it used the clean curvature at the final point)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 3))
    y = (rng.random(30) < 0.6).astype(float)
    eps = 0.2
    mean, cov = gauss_newton_map(linear_margins(torch.from_numpy(x), torch.zeros(30)), torch.from_numpy(y),
                                 torch.zeros(3), torch.eye(3), n_steps=60, noise_rate=eps)
    s = 1 / (1 + np.exp(-x @ mean.numpy()))
    p = eps + (1 - 2 * eps) * s
    info = ((1 - 2 * eps) * s * (1 - s)) ** 2 / (p * (1 - p))
    np.testing.assert_allclose(cov.numpy(), np.linalg.inv(np.eye(3) + x.T @ (x * info[:, None])), atol=1e-8)


def test_a_newton_loop_that_runs_out_of_steps_warns_and_one_that_converges_does_not():
    import warnings

    from plural.core.laplace import ConvergenceWarning

    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((40, 4)))
    y = torch.from_numpy((rng.random(40) < 0.5).astype(float))
    with pytest.warns(ConvergenceWarning, match="stopped at its step limit"):
        gauss_newton_map(linear_margins(x, torch.zeros(40)), y, torch.zeros(4), torch.eye(4) * 0.01, n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        gauss_newton_map(linear_margins(x, torch.zeros(40)), y, torch.zeros(4), torch.eye(4), n_steps=30)


def test_a_start_far_from_the_mode_still_reaches_it():
    # saturated margins at the start make a full Newton step overshoot; damped steps still arrive
    from plural.core.laplace import newton_map

    rng = np.random.default_rng(3)
    x = rng.standard_normal((25, 2))
    y = (x @ np.array([1.0, -1.0]) > 0).astype(float)
    prec = np.eye(2) * 0.5
    evaluate = lambda v: (v @ x.T, x)  # noqa: E731
    good, _ = newton_map(evaluate, y, np.ones(25), np.zeros((1, 2)), prec, np.zeros((1, 2)), 50)
    far, _ = newton_map(evaluate, y, np.ones(25), np.zeros((1, 2)), prec, np.array([[40.0, 40.0]]), 50)
    np.testing.assert_allclose(far, good, atol=1e-6)
