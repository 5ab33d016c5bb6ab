"""Active questioning: which comparison to ask a new user next.

A latent-user model holds a Gaussian posterior over the user's vector, ``u ~ N(mu, S)`` (the Laplace
state that ``adapt`` returns). A candidate comparison's margin, linearised around ``mu``, is
``m ~ N(m(mu), j^T S j)`` with ``j`` its Jacobian row, and its answer is ``y ~ Bernoulli(p(m))`` with
``p`` the Bradley-Terry probability (with the model's label-noise rate). The expected information
gain of asking it is the mutual information between the answer and the user vector,

    I(y; u) = H[E_m p(m)] - E_m[H[p(m)]],

computed with a fixed-size quadrature over ``m`` (deterministic, batched over candidates). It is
zero when the model is already sure of the answer (``|m|`` large) and when the answer carries no
information about the user (``j^T S j = 0``, e.g. two items with the same representation), and
shrinks as the same pair is answered again and again (the posterior narrows along ``j``).

Models with no Gaussian posterior or no Jacobian (``support_margins`` is None: ``bradley_terry``,
``em_mixture``, ``anchored_logistic``; a state without a covariance) fall back on **uncertainty
sampling**: the
entropy of the predicted answer, ``H[p(m(mu))]``. It is the limit of the information gain when every
candidate's margin is equally uncertain, and the natural criterion when the model keeps no
uncertainty about the user (for ``bradley_terry`` the true information gain is zero for every pair).

:func:`expected_target_variance_reduction` is a prediction-oriented variant: the drop in the posterior
variance of the margins of target comparisons (the pool itself by default) that an answer brings.

:class:`ActiveSession` is the ask / answer / state loop an app drives; :func:`simulate_session` runs
it on a user's recorded answers (an evaluation of the questioning strategy).

Example:
    >>> session = ActiveSession(model, comparison_batch(data, pool_rows, model))  # doctest: +SKIP
    >>> i = session.ask()                      # index into the candidate pool   # doctest: +SKIP
    >>> state = session.answer(1.0)            # a preferred; the state is refit  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch

from plural.core.latent import inference
from plural.core.likelihood import preference_probability, score_and_information
from plural.core.model import PreferenceModel, UserState

logger = logging.getLogger(__name__)

STRATEGIES = ("eig", "targeted", "entropy", "random")
N_NODES = 24
"""Gauss-Legendre nodes on each side of a zero margin in the expectation over the margin."""


# ---------------------------------------------------------------------------------- pure functions
def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of Bernoulli(``p``), elementwise; 0 at ``p`` in {0, 1}."""
    p = p.clamp(0.0, 1.0)
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


_TAIL = 8.0
"""The Gaussian's mass beyond ``_TAIL`` standard deviations (~1e-15) is treated as at the bound."""
_FLAT = 40.0
"""Beyond ``|m| > _FLAT`` the answer probability equals its limit to double precision."""


def _gaussian_expectations(mean: torch.Tensor, sd: torch.Tensor, fns, n_nodes: int) -> list[torch.Tensor]:
    """``E f(m)`` for ``m ~ N(mean, sd^2)``, ``(n,)`` each, for functions ``f`` that are constant beyond
    ``|m| > _FLAT`` (probabilities and entropies of the answer).

    A Gauss-Hermite rule in the standardized margin fails for wide margins (at ``sd = 5`` a 24-node
    rule is off by 4e-3 nats): the functions change over a unit of margin, the rule's nodes are
    ``sd`` apart. Instead the integral runs over the interval where both the density and ``f``
    vary, ``[mean - 8 sd, mean + 8 sd]`` clipped to ``[-_FLAT, _FLAT]``, split at 0, with an
    ``n_nodes`` Gauss-Legendre rule on each half; the mass outside takes ``f``'s limits. Error about
    1e-6 nats for 24 nodes (16: 4e-3), any mean, ``sd`` from 0 to 50.
    """
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    x = torch.as_tensor(x, dtype=mean.dtype, device=mean.device)
    w = torch.as_tensor(w, dtype=mean.dtype, device=mean.device)
    sd = sd.clamp_min(1e-9)
    lo = torch.clamp(mean - _TAIL * sd, min=-_FLAT)
    hi = torch.maximum(torch.clamp(mean + _TAIL * sd, max=_FLAT), lo)
    zero = torch.minimum(torch.maximum(torch.zeros_like(mean), lo), hi)
    below = torch.special.ndtr((lo - mean) / sd)
    above = torch.special.ndtr((mean - hi) / sd)
    nodes, node_weights = [], []
    for a, b in ((lo, zero), (zero, hi)):
        half = 0.5 * (b - a)
        m = (0.5 * (a + b)).unsqueeze(-1) + half.unsqueeze(-1) * x             # (n, Q)
        z = (m - mean.unsqueeze(-1)) / sd.unsqueeze(-1)
        density = torch.exp(-0.5 * z * z) / (sd.unsqueeze(-1) * math.sqrt(2 * math.pi))
        nodes.append(m)
        node_weights.append(density * w * half.unsqueeze(-1))
    m, weights = torch.cat(nodes, -1), torch.cat(node_weights, -1)
    far = torch.tensor([-2 * _FLAT, 2 * _FLAT], dtype=mean.dtype, device=mean.device)
    out = []
    for f in fns:
        low, high = f(far)
        out.append((f(m) * weights).sum(-1) + low * below + high * above)
    return out


def margin_information_gain(mean: torch.Tensor, variance: torch.Tensor, noise_rate: float = 0.0,
                            n_nodes: int = N_NODES) -> torch.Tensor:
    """Mutual information (nats) between a Bradley-Terry answer and its margin ``m ~ N(mean, variance)``.

    Args:
        mean: ``(n,)`` margin means.
        variance: ``(n,)`` margin variances (>= 0).
        noise_rate: label-flip probability of the likelihood.
        n_nodes: Gauss-Legendre nodes on each side of 0 (see ``_gaussian_expectations``).

    Returns:
        ``(n,)`` ``H[E p(m)] - E[H[p(m)]]``, clamped at 0.
    """
    mean = mean.double()
    sd = variance.double().clamp_min(0).sqrt()
    expected_p, expected_h = _gaussian_expectations(
        mean, sd, (lambda m: preference_probability(m, noise_rate),
                   lambda m: binary_entropy(preference_probability(m, noise_rate))), n_nodes)
    return (binary_entropy(expected_p.clamp(0, 1)) - expected_h).clamp_min(0.0)


# ---------------------------------------------------------------------------------- model level
def _has_gaussian_state(state: UserState) -> bool:
    return state.covariance is not None and state.vector.numel() > 0


def _check_candidates(candidates: dict) -> int:
    if not isinstance(candidates, dict) or "features_a" not in candidates or "features_b" not in candidates:
        raise ValueError("candidates must be a comparison batch (plural.core.batch.comparison_batch) with "
                         "features_a and features_b")
    n = len(candidates["features_a"])
    if n == 0:
        raise ValueError("the candidate pool is empty: there is no comparison to ask about")
    return n


def _candidate_batch(model: PreferenceModel, candidates: dict) -> dict:
    n = _check_candidates(candidates)
    model.check_is_fitted()
    model.check_features(candidates["features_a"])
    model.check_features(candidates["features_b"])
    batch = {k: v.to(model.device) for k, v in candidates.items()}
    for key in ("item_a", "item_b", "context"):  # optional in an app's candidate pool
        batch.setdefault(key, torch.full((n,), -1, dtype=torch.long, device=model.device))
    return batch


def linearised_margins(model: PreferenceModel, candidates: dict) -> Callable | None:
    """``u (K,) -> (margins (n,), jacobian (n, K))`` of the candidates, float64, computed once per pool
    (the item network runs here, not on every call): the model's ``support_margins``; None for
    models without them."""
    batch = _candidate_batch(model, candidates)
    with inference(model):
        return model.support_margins(batch)


def _gaussian_information_gain(model, state: UserState, margins_fn: Callable) -> torch.Tensor:
    u = state.vector.to(model.device, torch.float64)
    cov = state.covariance.to(model.device, torch.float64)
    with inference(model):
        mean, jac = margins_fn(u)
    variance = ((jac @ cov) * jac).sum(-1)
    return margin_information_gain(mean.double(), variance, model.likelihood_noise_rate).cpu()


def answer_entropy(model: PreferenceModel, state: UserState, candidates: dict) -> torch.Tensor:
    """Uncertainty sampling: ``(n,)`` entropy (nats) of the predicted answer to each candidate under
    ``state`` (through ``model.state_margin``); works for every model."""
    batch = _candidate_batch(model, candidates)
    with inference(model):
        margin = model.state_margin(batch, state).double()
    return binary_entropy(preference_probability(margin, model.likelihood_noise_rate)).cpu()


def expected_information_gain(model: PreferenceModel, state: UserState, candidates: dict) -> torch.Tensor:
    """Expected information gain (nats) about the user of asking each candidate comparison.

    For latent-user models with a Gaussian state (``state.covariance`` set) the margin is linearised
    around ``state.vector`` and the mutual information between answer and user vector is computed
    by a fixed quadrature (see the module docstring). Other models, or a state without a
    covariance, fall back on :func:`answer_entropy` (uncertainty sampling).

    Args:
        model: a fitted model.
        state: the user's current state (``model.adapt(...)`` or ``model.population_state()``).
        candidates: ``n`` comparisons as a batch (``plural.core.batch.comparison_batch``; labels unused).

    Returns:
        ``(n,)`` float64 scores, larger is more informative.
    """
    _check_candidates(candidates)
    margins_fn = linearised_margins(model, candidates) if _has_gaussian_state(state) else None
    if margins_fn is None:
        return answer_entropy(model, state, candidates)
    return _gaussian_information_gain(model, state, margins_fn)


def _fisher_weight(mean: torch.Tensor, variance: torch.Tensor, noise_rate: float) -> torch.Tensor:
    """``(n,)`` expected Fisher information of an answer about its margin, ``E[p'(m)^2 / (p (1 - p))]``
    under ``m ~ N(mean, variance)`` (``sigmoid' = s (1 - s)`` without label noise)."""
    def fisher(m):
        s = torch.sigmoid(m)
        return score_and_information(s, torch.zeros_like(s), noise_rate)[1]  # information needs no label
    return _gaussian_expectations(mean.double(), variance.double().clamp_min(0).sqrt(), (fisher,), N_NODES)[0]


def _gaussian_targeted_gain(model, state: UserState, margins_fn: Callable,
                            target_fn: Callable | None = None) -> torch.Tensor:
    u = state.vector.to(model.device, torch.float64)
    cov = state.covariance.to(model.device, torch.float64)
    noise = model.likelihood_noise_rate
    with inference(model):
        mean, jac = margins_fn(u)
        t_mean, t_jac = (mean, jac) if target_fn is None else target_fn(u)
    t_var = ((t_jac @ cov) * t_jac).sum(-1)
    t_weight = _fisher_weight(t_mean, t_var, noise)
    target = (t_jac * t_weight.unsqueeze(-1)).T @ t_jac / len(t_jac)       # (K, K)
    sj = jac @ cov                                                         # (n, K): S j
    variance = (sj * jac).sum(-1)
    fisher = _fisher_weight(mean, variance, noise)
    return (fisher * ((sj @ target) * sj).sum(-1) / (1 + fisher * variance)).clamp_min(0).cpu()


def expected_target_variance_reduction(model: PreferenceModel, state: UserState, candidates: dict,
                                       targets: dict | None = None) -> torch.Tensor:
    """Prediction-oriented criterion: how much asking each candidate shrinks the posterior variance of
    the margins of *target* comparisons, weighted by how uncertain their answers are.

    The information gain (:func:`expected_information_gain`) values any knowledge about the user
    vector, including directions that only unusual pairs depend on. Here, with the answer's
    expected Fisher information ``lam = E[p'(m)^2 / (p (1 - p))]`` and ``v = j^T S j``, a Gaussian
    update gives ``S' = S - lam S j j^T S / (1 + lam v)``, and the score is the drop of
    ``mean_t w_t j_t^T S j_t`` over the targets ``t``, ``w_t`` their own expected Fisher information
    (pairs whose answer is already certain do not count), i.e.
    ``lam j^T S A S j / (1 + lam v)`` with ``A = mean_t w_t j_t j_t^T``: a linear-Gaussian version
    of expected predictive information gain (Bickford Smith et al., 2023).

    Args:
        model: a fitted latent-user model.
        state: a state with a covariance.
        candidates: ``n`` comparisons that may be asked.
        targets: comparisons whose predictions matter, representative of what the model will be asked
            to predict for this user (default: the candidates themselves).

    Returns:
        ``(n,)`` float64 scores (margin variance units), larger is better. Models without a Gaussian
        state fall back on :func:`answer_entropy`.
    """
    _check_candidates(candidates)
    margins_fn = linearised_margins(model, candidates) if _has_gaussian_state(state) else None
    if margins_fn is None:
        return answer_entropy(model, state, candidates)
    target_fn = None if targets is None else linearised_margins(model, targets)
    return _gaussian_targeted_gain(model, state, margins_fn, target_fn)


def rank_questions(model: PreferenceModel, state: UserState, candidates: dict, n: int | None = None,
                   criterion: str = "eig") -> np.ndarray:
    """Candidate indices, most useful first by ``criterion`` (``"eig"``:
    :func:`expected_information_gain`, ``"targeted"``: :func:`expected_target_variance_reduction`
    with the candidates as targets, ``"entropy"``: :func:`answer_entropy`); the first ``n`` only when
    given. Ties keep the candidates' order."""
    criteria = {"eig": expected_information_gain, "targeted": expected_target_variance_reduction,
                "entropy": answer_entropy}
    if criterion not in criteria:
        raise ValueError(f"criterion must be one of {tuple(criteria)}, got {criterion!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    scores = criteria[criterion](model, state, candidates).numpy()
    order = np.argsort(-scores, kind="stable")
    return order if n is None else order[:n]


# ---------------------------------------------------------------------------------- the session
class ActiveSession:
    """Ask a new user the most useful comparison from a pool, one at a time.

    Each :meth:`ask` returns the index (into ``candidates``) of the best comparison not yet answered;
    each :meth:`answer` records the user's label and refits the state with ``model.adapt`` on every
    answer so far (under ``prior``).

    Args:
        model: a fitted model.
        candidates: the pool, a comparison batch (``plural.core.batch.comparison_batch``); its labels, if
            any, are ignored.
        strategy: ``"eig"`` (expected information gain, see :func:`expected_information_gain`),
            ``"targeted"`` (:func:`expected_target_variance_reduction`, the whole pool as targets),
            ``"entropy"`` (uncertainty sampling) or ``"random"`` (a seeded uniform draw).
        prior: passed to ``model.adapt``; the population prior by default.
        random_state: seed of the ``"random"`` strategy.

    Attributes:
        state: the current :class:`UserState`.
        history: the state before any answer and after each answer (``len(asked) + 1`` states).
        asked: indices answered so far, in order; ``answers`` their labels.
    """

    def __init__(self, model: PreferenceModel, candidates: dict, strategy: str = "eig",
                 prior: UserState | None = None, random_state: int | None = 0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.n_candidates = _check_candidates(candidates)
        model.check_is_fitted()
        self.model = model
        self.strategy = strategy
        self.prior = prior
        self.candidates = {k: v for k, v in candidates.items() if k not in ("label", "weight")}
        self._weight = candidates.get("weight")
        self._rng = np.random.default_rng(random_state)
        self.state = model.adapt(None, prior=prior)
        self.history: list[UserState] = [self.state]
        self.asked: list[int] = []
        self.answers: list[float] = []
        self._answered = np.zeros(self.n_candidates, dtype=bool)
        self._pending: int | None = None
        self._margins_fn = None
        if strategy in ("eig", "targeted") and _has_gaussian_state(self.state):
            self._margins_fn = linearised_margins(model, self.candidates)  # None: no user vector

    @property
    def remaining(self) -> int:
        """How many candidates are still unanswered."""
        return int((~self._answered).sum())

    def scores(self) -> np.ndarray:
        """``(n_candidates,)`` the strategy's score of every candidate under the current state (NaN for
        the ``"random"`` strategy); answered candidates get ``-inf``."""
        if self.strategy == "random":
            out = np.full(self.n_candidates, np.nan)
        elif self._margins_fn is not None and self.state.covariance is not None:
            gain = _gaussian_information_gain if self.strategy == "eig" else _gaussian_targeted_gain
            out = gain(self.model, self.state, self._margins_fn).numpy()
        elif self.strategy in ("eig", "targeted"):
            out = expected_information_gain(self.model, self.state, self.candidates).numpy()
        else:
            out = answer_entropy(self.model, self.state, self.candidates).numpy()
        out = np.array(out, dtype=np.float64)
        out[self._answered] = -np.inf
        return out

    def ask(self) -> int:
        """Index of the next comparison to ask; the same one until it is answered."""
        if self._pending is not None:
            return self._pending
        if self.remaining == 0:
            raise RuntimeError(f"every one of the {self.n_candidates} candidates has been answered; "
                               "there is nothing left to ask")
        if self.strategy == "random":
            choice = int(self._rng.choice(np.flatnonzero(~self._answered)))
        else:
            choice = int(np.argmax(self.scores()))  # first of ties
        self._pending = choice
        return choice

    def answer(self, label: float, index: int | None = None) -> UserState:
        """Record the answer to candidate ``index`` (the pending question by default) and refit.

        Args:
            label: 1.0 if the user preferred item a, 0.0 if b, 0.5 for a tie.
            index: which candidate was answered (an app may let the user answer any of them).

        Returns:
            The new state (also ``self.state``).
        """
        if index is None:
            if self._pending is None:
                raise RuntimeError("no question is pending: call ask() first or pass the index answered")
            index = self._pending
        index = int(index)
        if not 0 <= index < self.n_candidates:
            raise IndexError(f"candidate index {index} out of range for a pool of {self.n_candidates}")
        if self._answered[index]:
            raise ValueError(f"candidate {index} has already been answered")
        label = float(label)
        if label not in (0.0, 0.5, 1.0):
            raise ValueError(f"label must be 0.0, 0.5 or 1.0, got {label!r}")
        self._answered[index] = True
        self.asked.append(index)
        self.answers.append(label)
        if self._pending == index:
            self._pending = None
        self.state = self.model.adapt(self.support(), prior=self.prior)
        self.history.append(self.state)
        return self.state

    def support(self) -> dict:
        """The answered comparisons as a batch (what ``model.adapt`` is given)."""
        idx = torch.as_tensor(self.asked, dtype=torch.long)
        batch = {k: v[idx] for k, v in self.candidates.items()}
        batch["label"] = torch.as_tensor(self.answers, dtype=torch.float32)
        batch["weight"] = self._weight[idx].float() if self._weight is not None else \
            torch.ones(len(idx), dtype=torch.float32)
        return batch


def simulate_session(model: PreferenceModel, data, pool_rows: np.ndarray, n_questions: int,
                     strategy: str = "eig", random_state: int | None = 0,
                     answer_fn: Callable[[int], float] | None = None,
                     prior: UserState | None = None) -> ActiveSession:
    """Run an :class:`ActiveSession` over a user's recorded comparisons.

    Args:
        model: a fitted model.
        data: the ``PreferenceData`` holding the rows (with item features).
        pool_rows: ``(n,)`` comparison rows the questions are drawn from (e.g. an episode's
            ``support_pool``).
        n_questions: questions to ask (at most ``len(pool_rows)``).
        strategy: one of ``STRATEGIES`` (see :class:`ActiveSession`).
        random_state: seed of the ``"random"`` strategy.
        answer_fn: ``pool index -> label``; by default the user's recorded label ``data.label[row]``.
        prior: passed to ``model.adapt``.

    Returns:
        The session; ``session.history[t]`` is the state after ``t`` answers, ``pool_rows[session.asked]``
        the rows asked.
    """
    from plural.core.batch import comparison_batch

    pool_rows = np.asarray(pool_rows, dtype=np.int64)
    if len(pool_rows) == 0:
        raise ValueError("the candidate pool is empty: there is no comparison to ask about")
    if not 0 <= n_questions <= len(pool_rows):
        raise ValueError(f"n_questions must be in [0, {len(pool_rows)}] for this pool, got {n_questions!r}")
    session = ActiveSession(model, comparison_batch(data, pool_rows, model), strategy=strategy,
                            prior=prior, random_state=random_state)
    labels = data.label[pool_rows]
    for _ in range(n_questions):
        i = session.ask()
        session.answer(labels[i] if answer_fn is None else answer_fn(i))
    return session
