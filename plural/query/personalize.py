"""Query-time personalization with the user store: a few comparisons -> the stored users who best
explain them -> a posterior -> a :class:`UserState` with its uncertainty.

The stored users' vectors are an empirical sample of the population, so they make a better prior
for a new user than one Gaussian: a kernel density over them (plus the population prior, for users
unlike any stored one). For a model whose margins are linear in the user vector (``low_rank``) the
posterior under that prior is a mixture of Laplace posteriors, one per stored user, weighted by
their evidence; it is computed in one batched NumPy pass over the retrieved users. Large stores are
searched first: the gradient of the support log-likelihood at the population, ``J^T (y - sigmoid(m(0)))``,
is the direction in user space the comparisons point to (for a linear model, the signed sum of
their feature differences mapped into user space), and the stored users with the largest inner
product with it are retrieved. Where comparisons have contexts (Polis conversations), a new user's
prior is built from the stored users of their own context only, recentred on the population mean.
Before the store's answer is given it is checked on the user's own comparisons: fitted on half of
the support's items under the store's prior and under the population's, which predicts the other
half better? Unless the store does by more than its standard error, the answer is plain ``adapt``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from plural.core.laplace import MAX_HALVINGS, stable_sigmoid, warn_step_limit
from plural.core.likelihood import label_log_likelihood, score_and_information
from plural.core.latent import inference, support_weight
from plural.core.model import PreferenceModel, UserState
from plural.core.support import item_disjoint_halves
from plural.query.store import UserStore, model_fingerprint
from plural.query.store_files import StoreError

logger = logging.getLogger(__name__)

MIN_CONTEXT_USERS = 10
"""Fewest stored users of a context for :func:`personalize` to build the prior from them alone."""


class StoreMismatchError(StoreError):
    """A user store given to :func:`personalize` was built for another model (a ``ValueError``)."""


def check_store_fingerprint(model: PreferenceModel, store: UserStore) -> None:
    """Raise :class:`StoreMismatchError` when ``store`` records the fingerprint of a model other than
    ``model`` (:func:`plural.query.store.model_fingerprint`); a store that records none (built by hand) passes."""
    recorded = getattr(store, "model_fingerprint", None)
    if recorded is None:
        logger.debug("the store records no model fingerprint: not checking it belongs to this %s", model.name)
        return
    actual = model_fingerprint(model)
    if recorded != actual:
        raise StoreMismatchError(f"store was built for model fingerprint {recorded[:12]}…, this model is "
                                 f"{actual[:12]}…; rebuild it with build_user_store(model) or pass "
                                 "check_fingerprint=False")


def supports_retrieval(model: PreferenceModel) -> bool:
    """Whether :func:`personalize` can use a store for ``model``: models whose ``adapt`` is the shared
    Gauss-Newton MAP under a Gaussian prior (``model.adapts_by_map``: low-rank, ideal point), so the
    store's mixture can replace that prior. Others adapt as they always do."""
    return bool(model.adapts_by_map)


def build_user_store(model: PreferenceModel, index: str = "auto") -> UserStore:
    """A :class:`UserStore` of the model's training users (``model.user_states()``), inner product
    metric, stamped with the model's fingerprint. Where the model knows them, each user's metadata
    holds their number of training comparisons (``n_comparisons``) and the ids of those comparisons'
    contexts (``contexts``), which :func:`personalize` uses to keep a new user among their own
    context's users."""
    model.check_is_fitted()
    states = model.user_states().detach().float().cpu().numpy()
    if states.shape[1] == 0:
        raise ValueError(f"{model.name} has no user vectors to store")
    store = UserStore(states.shape[1], metric="ip", index=index, expected_size=len(states),
                      model_fingerprint=model_fingerprint(model))
    facts = {"n_comparisons": model.user_counts_, "contexts": model.user_contexts_}
    facts = {key: values for key, values in facts.items() if values is not None}
    metadata = [dict(zip(facts, row)) for row in zip(*facts.values())] if facts else None
    store.add(list(model.user_ids_), states, metadata)
    return store


def personalize(model: PreferenceModel, store: UserStore, support: dict | None, n_neighbors: int = 64,
                shrinkage: float = 0.2, bandwidth: float = 0.5, exhaustive_below: int = 4096,
                by_context: bool = True, return_neighbors: bool = False, check_fingerprint: bool = True,
                match_spread: bool = True, check_on_support: bool = True):
    """A :class:`UserState` for a new user from ``support`` under the stored users as a prior.

    The prior is a kernel density over stored user vectors: a Gaussian of covariance
    ``bandwidth**2 * C`` around each retrieved user (``C``: the model's population prior covariance),
    plus the population prior itself with mass ``shrinkage``. The posterior under such a mixture is a
    mixture: each component gets a Laplace posterior (Newton steps from its centre, batched over
    components) and a weight from its Laplace evidence, and the result is the mixture's mean and
    covariance. With few comparisons the evidence picks out the stored users that explain them (a
    typed population is identified like the Bayes classifier would); with many, every component's
    posterior moves to what the comparisons say and the result approaches plain ``adapt``.

    Args:
        model: a fitted latent-user model (others fall back to ``model.adapt``).
        store: the model's user store (:func:`build_user_store`).
        support: the new user's comparisons as a batch (``plural.core.batch.comparison_batch``).
        n_neighbors: stored users retrieved (by inner product with the support's log-likelihood
            gradient at the population) when the store holds more than ``exhaustive_below`` users;
            smaller stores are used whole.
        shrinkage: prior mass of the population component, in [0, 1].
        bandwidth: kernel width around each stored user, relative to the population prior's scale.
        exhaustive_below: stores up to this size are used whole instead of searched.
        by_context: when the support's comparisons have a context (most of them, if several) and
            the store records users' contexts (:func:`build_user_store`), the prior is made of the
            stored users with comparisons in that context (if there are ``MIN_CONTEXT_USERS`` to
            ``exhaustive_below`` of them), recentred on the population prior's mean: their spread,
            not their mean, which is fitted to the items they judged. On Polis (conversations as
            contexts; ``benchmarks/polis_store_prior.py``, 3 seeds) this beat plain ``adapt`` at every
            k, where the whole store tied it.
        return_neighbors: also return ``[(user_id, posterior weight), ...]`` of the stored users.
        check_fingerprint: raise :class:`StoreMismatchError` when the store records the fingerprint
            of another model (:func:`check_store_fingerprint`), whatever the model and the support;
            False skips the check (it hashes the model's weights).
        match_spread: keep the kernel prior no wider than the population prior: when the stored
            users (recentred, for a context's) spread more than it allows, they are pulled towards
            its mean until the centres' mean squared distance from it plus ``bandwidth**2`` times
            the trace of C is the trace of C. Stored vectors are point estimates fitted to each
            user's training comparisons, noise included, so they spread more than users do; a
            kernel density over them as they are is a wider prior than the one ``adapt`` uses, and
            it cost MovieLens 0.3 to 0.8 points against plain ``adapt`` at k = 1 to 50 (one seed;
            matched: +0.0 to +0.2). False: the stored vectors as they are.
        check_on_support: answer from the store only where it predicts this user's own comparisons
            better than the population prior does (:func:`store_beats_population`): the support is
            split into item-disjoint halves (twice, seeded), each half is fitted under both priors
            and scored on the other, and unless the store's fits win by more than one standard error
            the answer is plain ``adapt``. A support with fewer than ``CHECK_MIN_ROWS`` comparisons
            in a half is not checked. The store's prior is a guess about this user that their own
            comparisons can refute; on MovieLens with ``ideal_point`` it cost up to 0.4 points at
            k=10 and k=50 unchecked (``docs/results.md``). False: always the store's posterior.

    Returns:
        The state (and the neighbours when asked: none where the answer is plain ``adapt``).

    Raises:
        ValueError: a bad argument or support (:meth:`plural.core.model.PreferenceModel.check_support`,
            which also cuts a support to ``plural.core.support.MAX_SUPPORT`` comparisons), or a store of
            another model (:class:`StoreMismatchError`).
    """
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors!r}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth!r}")
    if check_fingerprint and store is not None:
        check_store_fingerprint(model, store)
    if not supports_retrieval(model):  # adapt checks the support itself: once per query
        state = model.adapt(support)
        return (state, []) if return_neighbors else state
    support = model.check_support(support)
    n = 0 if support is None else int(len(support["label"]))
    if n == 0:
        state = model.adapt(support)
        return (state, []) if return_neighbors else state
    if store.dim != model.user_dim:
        raise ValueError(f"store holds {store.dim}-d vectors but {model.name} has {model.user_dim}-d users")
    batch = {k: v.to(model.device) for k, v in support.items()}
    prior = _StorePrior(model, store, n_neighbors, shrinkage, bandwidth, exhaustive_below, by_context, match_spread)
    fitted = prior.posterior(batch)
    if fitted is None or (check_on_support and not store_beats_population(prior, batch)):
        state = model.adapt(support)
        return (state, []) if return_neighbors else state
    state, ids, post = fitted
    if return_neighbors:
        return state, list(zip(ids, post[1:].tolist()))
    return state


CHECK_MIN_ROWS = 4
"""Fewest comparisons in each item-disjoint half of a support for :func:`personalize` to check the
store on it (``check_on_support``); a smaller support is answered from the store unchecked."""

CHECK_SPLITS = 2
"""Item-disjoint splits of a support the check of :func:`store_beats_population` averages over."""


class _StorePrior:
    """The store's mixture prior for one query, fitted to any support: :meth:`posterior` is
    :func:`personalize`'s answer from the store, and the held-out check refits it on parts of the
    support."""

    def __init__(self, model: PreferenceModel, store: UserStore, n_neighbors: int, shrinkage: float,
                 bandwidth: float, exhaustive_below: int, by_context: bool, match_spread: bool):
        self.model, self.store, self.n_neighbors = model, store, n_neighbors
        self.shrinkage, self.bandwidth, self.exhaustive_below = shrinkage, bandwidth, exhaustive_below
        self.by_context, self.match_spread = by_context, match_spread
        self.pop_mean, self.pop_cov, self.pop_precision = (t.double().cpu().numpy()
                                                           for t in model.adaptation_prior())

    def linearized(self, batch: dict):
        """``(label, weight, m0, jac)`` of ``batch`` as float64 arrays, margins linearized at the
        population (exact for a model linear in u)."""
        model = self.model
        label = batch["label"].double().cpu().numpy()
        weight = support_weight(batch, model.config.temper_support).double().cpu().numpy()
        with inference(model):
            fn = model.support_margins(batch)
            zero = torch.zeros(model.user_dim, dtype=torch.float64, device=model.device)
            m0, jac = (t.double().cpu().numpy() for t in fn(zero))
        return label, weight, m0, jac

    def retrieve(self, batch: dict, label, weight, m0, jac) -> tuple[list[str], bool]:
        """The stored users of the prior for ``batch`` and whether they are a context's."""
        model, store = self.model, self.store
        group = _context_group(model, store, batch, self.exhaustive_below) if self.by_context else None
        if group is not None:
            return group, True
        if len(store) <= self.exhaustive_below:
            return store.user_ids, False
        score = score_and_information(stable_sigmoid(m0), label, model.likelihood_noise_rate)[0]
        query = (jac.T @ (weight * score))[None].astype(np.float32)
        return store.search(query, self.n_neighbors)[0][0], False

    def posterior(self, batch: dict, population_only: bool = False, linear=None):
        """``(state, stored user ids, component weights)`` under the store's prior (under the
        population prior alone, the same linearized Newton, with ``population_only``); None where
        the store offers no users. ``linear``: ``(label, m0, jac)`` of ``batch`` already computed
        (rows of a larger support's: the linearization at the population is row by row)."""
        model = self.model
        if linear is None:
            label, weight, m0, jac = self.linearized(batch)
        else:
            label, m0, jac = linear
            weight = support_weight(batch, model.config.temper_support).double().cpu().numpy()
        if population_only:
            ids, in_context = [], False
        else:
            ids, in_context = self.retrieve(batch, label, weight, m0, jac)
            if not ids:
                return None
        pop_mean, pop_cov, pop_precision = self.pop_mean, self.pop_cov, self.pop_precision
        bandwidth, k = self.bandwidth, model.user_dim
        stored = self.store.get(ids).astype(np.float64) if ids else np.zeros((0, k))
        if in_context:
            stored += pop_mean - stored.mean(0)
        if self.match_spread and len(stored):  # the mixture's second moment: the centres' plus bandwidth**2 tr(C)
            target = (1 - bandwidth ** 2) * np.trace(pop_cov)
            second = float(((stored - pop_mean) ** 2).sum(1).mean())
            if second > target > 0:  # only ever pulled in
                stored = pop_mean + np.sqrt(target / second) * (stored - pop_mean)
        centres = np.concatenate([pop_mean[None], stored])
        mass = 1.0 if population_only else self.shrinkage
        log_mass = np.concatenate([[np.log(max(mass, 1e-12))],
                                   np.full(len(ids), np.log(max(1 - mass, 1e-12) / max(len(ids), 1)))])
        # component 0 is the population prior, the others share its precision over bandwidth**2
        precisions = np.concatenate([pop_precision[None],
                                     np.broadcast_to(pop_precision / bandwidth ** 2, (len(ids), k, k))])
        log_det_cov = -np.linalg.slogdet(pop_precision)[1] + np.concatenate(
            [[0.0], np.full(len(ids), 2 * k * np.log(bandwidth))])
        # margins are linear in u for low_rank; otherwise this linearises them at the population
        mean, cov, post = _mixture_posterior(m0, jac, label, weight, centres, precisions, log_det_cov, log_mass,
                                             model.config.adapt_steps, noise_rate=model.likelihood_noise_rate)
        state = UserState(vector=torch.from_numpy(mean).float(), covariance=torch.from_numpy(cov).float(),
                          n_comparisons=len(label))
        return state, ids, post

    def heldout_difference(self, batch: dict, state: UserState, other: UserState) -> np.ndarray:
        """Per-comparison log-likelihood of ``batch`` under ``state`` minus under ``other`` (the
        model's exact margins), weighed as a support is (tempered where the model tempers)."""
        model = self.model
        with inference(model):
            margins = [model.state_margin(batch, s).double().cpu().numpy() for s in (state, other)]
        label = batch["label"].double().cpu().numpy()
        weight = support_weight(batch, model.config.temper_support).double().cpu().numpy()
        noise = model.likelihood_noise_rate
        return weight * (label_log_likelihood(margins[0], label, noise) - label_log_likelihood(margins[1], label, noise))


def store_beats_population(prior: _StorePrior, batch: dict, splits: int | None = None,
                           min_rows: int | None = None) -> bool:
    """Whether the store's prior predicts a support's held-out comparisons better than the
    population prior: for each of ``splits`` seeded item-disjoint splits of the support
    (:func:`plural.core.support.item_disjoint_halves`), each half is fitted under both priors (the
    same linearized Newton, retrieval redone on the half) and scores the other half; the store wins
    when the mean per-comparison difference in log-likelihood exceeds its standard error (the
    rows taken as independent), so a tie or noise keeps the simpler, population prior. True where
    no split has ``min_rows`` comparisons in both halves: too few to check. ``splits`` and
    ``min_rows`` default to :data:`CHECK_SPLITS` and :data:`CHECK_MIN_ROWS`, read at call time."""
    splits = CHECK_SPLITS if splits is None else splits
    min_rows = CHECK_MIN_ROWS if min_rows is None else min_rows
    differences = []
    label, _, m0, jac = prior.linearized(batch)  # once: each half's rows are sliced from it
    for seed in range(splits):
        halves = item_disjoint_halves(batch, seed=seed)
        if min(len(h) for h in halves) < min_rows:
            continue
        for fit, test in (halves, halves[::-1]):
            part, held = ({k: v[rows] for k, v in batch.items()} for rows in (fit, test))
            rows = fit.cpu().numpy()
            linear = (label[rows], m0[rows], jac[rows])
            from_store = prior.posterior(part, linear=linear)
            if from_store is None:
                return False  # the store has no users for part of this support
            population = prior.posterior(part, population_only=True, linear=linear)[0]
            differences.append(prior.heldout_difference(held, from_store[0], population))
    if not differences:
        return True
    d = np.concatenate(differences)
    if len(d) < 2:
        return bool(d.sum() > 0)
    return bool(d.mean() > d.std(ddof=1) / np.sqrt(len(d)))


def _context_group(model: PreferenceModel, store: UserStore, support: dict, largest: int) -> list[str] | None:
    """The stored users with comparisons in the support's context (the model's context of most of
    its comparisons), when there are ``MIN_CONTEXT_USERS`` to ``largest`` of them; else None."""
    if "context" not in support or not model.context_ids_:
        return None
    context = support["context"].cpu().numpy()
    context = context[context >= 0]
    if len(context) == 0:
        return None
    group = store.users_where("contexts", model.context_ids_[int(np.bincount(context).argmax())])
    return group if MIN_CONTEXT_USERS <= len(group) <= largest else None


def _loglik(m: np.ndarray, y: np.ndarray, w: np.ndarray, noise_rate: float) -> np.ndarray:
    """``(w * label_log_likelihood(m, y, noise_rate)).sum(-1)``; without label noise from one
    ``log sigmoid(m)`` (``log sigmoid(-m) = log sigmoid(m) - m``), equal to it up to rounding."""
    if noise_rate > 0:
        return (w * label_log_likelihood(m, y, noise_rate)).sum(-1)
    log_a = np.minimum(m, 0.0) - np.log1p(np.exp(-np.abs(m)))
    return (w * (log_a - (1 - y) * m)).sum(-1)


def _mixture_newton(m0: np.ndarray, jac: np.ndarray, y: np.ndarray, w: np.ndarray, centres: np.ndarray,
                    precisions: np.ndarray, n_steps: int, noise_rate: float = 0.0, tol: float = 1e-6):
    """:func:`plural.core.laplace.newton_map` for margins ``m0 + jac @ u`` with one Jacobian shared
    by the C problems (each starting at its prior mean): the same damped Newton steps, halvings,
    tolerance and convergence warning, with the shared Jacobian used as such (the Hessians are one
    matrix product, ``J^T diag(s) J = s @ vec(j_i j_i^T)``), a halving that re-evaluates only the
    problems it shortens, and the log-likelihood from one log-sigmoid. Its results equal
    ``newton_map``'s up to floating-point rounding (``tests/plural/query/test_personalize.py``).

    Returns ``(modes (C, K), Hessians (C, K, K), log-likelihoods (C,), prior quadratic forms (C,))``:
    the last two at the modes, with the quadratic form ``(u - mu)^T P (u - mu)``."""
    n_comp, dim = centres.shape
    outer = (jac[:, :, None] * jac[:, None, :]).reshape(len(jac), dim * dim)  # rows vec(j_i j_i^T)
    u = np.array(centres, dtype=np.float64)
    m = m0 + u @ jac.T
    loglik = _loglik(m, y, w, noise_rate)
    quad = np.zeros(n_comp)  # every problem starts at its prior mean
    f = loglik.copy()
    active = np.arange(n_comp)
    moved = None

    def hessian(m_a: np.ndarray, p_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, info = score_and_information(stable_sigmoid(m_a), y, noise_rate)
        return w * score, p_a + ((w * info) @ outer).reshape(len(m_a), dim, dim)

    def evaluate(v: np.ndarray, mu: np.ndarray, p: np.ndarray):
        m_new = m0 + v @ jac.T
        d = v - mu
        q = np.einsum("ai,aij,aj->a", d, p, d)
        ll = _loglik(m_new, y, w, noise_rate)
        return m_new, ll, q, ll - 0.5 * q

    for _ in range(n_steps):
        if not len(active):
            break
        u_a, mu_a, p_a = u[active], centres[active], precisions[active]
        resid, hess = hessian(m[active], p_a)
        grad = resid @ jac - np.einsum("aij,aj->ai", p_a, u_a - mu_a)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        scale = np.ones(len(active))
        f_a = f[active]
        candidate = u_a + step
        m_new, ll_new, q_new, f_new = evaluate(candidate, mu_a, p_a)
        worse = np.flatnonzero(~(f_new >= f_a - 1e-12 * np.abs(f_a)))
        evaluations = 1  # as newton_map: steps of 1, 1/2, ... 1/2**(MAX_HALVINGS - 1), then none
        while len(worse):
            last = evaluations == MAX_HALVINGS
            if last:  # no halving helps: those problems stay where they are
                scale[worse] = 0.0
            else:
                scale[worse] *= 0.5
            candidate[worse] = u_a[worse] + scale[worse, None] * step[worse]
            m_new[worse], ll_new[worse], q_new[worse], f_new[worse] = evaluate(candidate[worse], mu_a[worse],
                                                                               p_a[worse])
            if last:
                break
            evaluations += 1
            worse = worse[~(f_new[worse] >= f_a[worse] - 1e-12 * np.abs(f_a[worse]))]
        u[active], m[active], f[active] = candidate, m_new, f_new
        loglik[active], quad[active] = ll_new, q_new
        moves = np.abs(scale[:, None] * step).max(axis=1)
        moved = float(moves.max())
        active = active[moves >= tol]
    else:
        if len(active):
            warn_step_limit(moved, n_steps, tol)
    hess = precisions.copy() if n_steps == 0 else hessian(m, precisions)[1]
    return u, hess, loglik, quad


def _mixture_posterior(m0: np.ndarray, jac: np.ndarray, y: np.ndarray, w: np.ndarray, centres: np.ndarray,
                       precisions: np.ndarray, log_det_cov: np.ndarray, log_mass: np.ndarray, n_steps: int,
                       noise_rate: float = 0.0):
    """Laplace posterior of a Bradley-Terry user vector under a Gaussian-mixture prior, batched
    over the C components: margins ``m0 + jac @ u``; component c is ``N(centres[c], precisions[c]^-1)``
    (``(C, K, K)``; ``log_det_cov[c]`` the log-determinant of its covariance) with prior mass
    ``exp(log_mass[c])``; the likelihood is the model's, label noise included. Returns
    ``(mean (K,), covariance (K, K), weights (C,))``."""
    u, hess, loglik, quad = _mixture_newton(m0, jac, y, w, centres, precisions, max(n_steps, 1),
                                            noise_rate=noise_rate)
    try:  # positive definite: a prior precision plus J^T diag(information) J
        log_det_hess = 2 * np.log(np.diagonal(np.linalg.cholesky(hess), axis1=-2, axis2=-1)).sum(-1)
    except np.linalg.LinAlgError:
        log_det_hess = np.linalg.slogdet(hess)[1]
    log_evidence = log_mass + loglik - 0.5 * quad - 0.5 * log_det_cov - 0.5 * log_det_hess
    post = np.exp(log_evidence - log_evidence.max())
    post /= post.sum()
    mean = post @ u
    spread = u - mean
    # components of weight 0 (underflowed) add nothing: only the others' inverses are needed
    kept = np.flatnonzero(post > 0)
    eye = np.broadcast_to(np.eye(u.shape[1]), (len(kept),) + hess.shape[1:])
    cov = np.einsum("c,cab->ab", post[kept], np.linalg.solve(hess[kept], eye)) + (spread * post[:, None]).T @ spread
    return mean, 0.5 * (cov + cov.T), post


def personalize_fn(store: UserStore, **options):
    """``(model, support) -> UserState`` for :func:`plural.evaluation.fewshot.few_shot_curve`'s ``adapt_fn``."""

    def fn(model: PreferenceModel, support: dict) -> UserState:
        return personalize(model, store, support, **options)

    return fn


def neighbours_table(model: PreferenceModel, store: UserStore, support: dict, n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` stored users whose vectors best explain ``support``, with their weights."""
    _, neighbours = personalize(model, store, support, return_neighbors=True)
    return sorted(neighbours, key=lambda t: -t[1])[:n]


__all__ = ["CHECK_MIN_ROWS", "CHECK_SPLITS", "StoreMismatchError", "build_user_store", "check_store_fingerprint",
           "neighbours_table", "personalize", "personalize_fn", "store_beats_population", "supports_retrieval"]

