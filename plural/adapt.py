"""Query-time personalization with the user store: a few comparisons -> a retrieval query -> the
stored users who best explain them -> a prior -> the model's own ``adapt``.

For a latent-user model, the support's margins are ``m(u)`` with Jacobian ``J(u)`` at ``u = 0``; the
gradient of the support log-likelihood there, ``J^T (y - sigmoid(m(0)))``, is the direction in user
space the new user's comparisons point to (for a linear model it is the signed sum of their feature
differences mapped into user space). The store is searched by inner product with it; each retrieved
neighbour is weighted by how well its vector explains the support (a softmax of its log-likelihood),
and their weighted mean and spread, shrunk towards the population prior, become the prior that
``model.adapt`` finishes from. With many comparisons the likelihood dominates and the result
approaches plain ``adapt``; with few, the neighbours fill in what a handful of labels cannot say.
"""

from __future__ import annotations

import logging

import torch

from plural.latent import LatentUserModel, inference
from plural.model import PreferenceModel, UserState
from plural.store import UserStore, model_fingerprint

logger = logging.getLogger(__name__)


def supports_retrieval(model: PreferenceModel) -> bool:
    """Whether :func:`personalize` can use a store for ``model``: latent-user models adapted by the
    shared Gauss-Newton MAP (low-rank, ideal point). Others adapt as they always do."""
    return isinstance(model, LatentUserModel) and type(model).adapt is LatentUserModel.adapt


def build_user_store(model: PreferenceModel, index: str = "auto") -> UserStore:
    """A :class:`UserStore` of the model's training users (``model.user_states()``), inner product
    metric, stamped with the model's fingerprint."""
    model.check_is_fitted()
    states = model.user_states().detach().float().cpu().numpy()
    if states.shape[1] == 0:
        raise ValueError(f"{model.name} has no user vectors to store")
    store = UserStore(states.shape[1], metric="ip", index=index, expected_size=len(states),
                      model_fingerprint=model_fingerprint(model))
    store.add(list(model.user_ids_), states)
    return store


def personalize(model: PreferenceModel, store: UserStore, support: dict | None, n_neighbors: int = 32,
                shrinkage: float = 0.5, return_neighbors: bool = False):
    """A :class:`UserState` for a new user from ``support`` with a retrieval-augmented prior.

    Args:
        model: a fitted latent-user model (others fall back to ``model.adapt``).
        store: the model's user store (:func:`build_user_store`).
        support: the new user's comparisons as a batch (``plural.batch.comparison_batch``).
        n_neighbors: stored users retrieved.
        shrinkage: weight of the population prior in the retrieved prior, in [0, 1].
        return_neighbors: also return ``[(user_id, weight), ...]`` of the retrieved users.

    Returns:
        The state (and the neighbours when asked).
    """
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors!r}")
    n = 0 if support is None else int(len(support["label"]))
    if n == 0 or not supports_retrieval(model):
        state = model.adapt(support)
        return (state, []) if return_neighbors else state
    if store.dim != model.user_dim:
        raise ValueError(f"store holds {store.dim}-d vectors but {model.name} has {model.user_dim}-d users")
    model.check_features(support["features_a"])
    batch = {k: v.to(model.device) for k, v in support.items()}
    label = batch["label"].double()
    weight = batch["weight"].double()
    with inference(model):
        fn = model._support_margins(batch)
        zero = torch.zeros(model.user_dim, dtype=torch.float64, device=model.device)
        m0, jac = fn(zero)
        query = (jac.T @ (weight * (label - torch.sigmoid(m0)))).float().cpu().numpy()[None]
        ids, _ = store.search(query, n_neighbors)
        if not ids[0]:
            state = model.adapt(support)
            return (state, []) if return_neighbors else state
        vectors = torch.from_numpy(store.get(ids[0])).double().to(model.device)
        loglik = _neighbour_log_likelihood(model, batch, vectors, label, weight)
        w = torch.softmax(loglik, dim=0)
        mean = w @ vectors
        centred = vectors - mean
        spread = (centred * w[:, None]).T @ centred
        pop_mean, pop_cov = model.prior()
        prior_mean = (1 - shrinkage) * mean + shrinkage * pop_mean.to(mean)
        prior_cov = (1 - shrinkage) * spread + shrinkage * pop_cov.to(mean)
        prior_cov = prior_cov + model.config.prior_floor * torch.eye(model.user_dim, dtype=torch.float64,
                                                                     device=mean.device)
    prior = UserState(vector=prior_mean.float().cpu(), covariance=prior_cov.float().cpu())
    state = model.adapt(support, prior=prior)
    if return_neighbors:
        return state, list(zip(ids[0], w.cpu().tolist()))
    return state


def _neighbour_log_likelihood(model: LatentUserModel, batch: dict, vectors: torch.Tensor, label: torch.Tensor,
                              weight: torch.Tensor) -> torch.Tensor:
    """``(N,)`` support log-likelihood under each of ``vectors (N, K)``, in one broadcast pass."""
    phi_a, bias_a = model.items(batch["features_a"], batch["item_a"])
    phi_b, bias_b = model.items(batch["features_b"], batch["item_b"])
    ctx = batch.get("context")
    u = vectors.to(phi_a.dtype).unsqueeze(1)  # (N, 1, K) against (1, k, h)
    m = (model.score(phi_a.unsqueeze(0), bias_a.unsqueeze(0), u, ctx)
         - model.score(phi_b.unsqueeze(0), bias_b.unsqueeze(0), u, ctx)).double()
    logp, logq = torch.nn.functional.logsigmoid(m), torch.nn.functional.logsigmoid(-m)
    return (weight * (label * logp + (1 - label) * logq)).sum(dim=1)


def personalize_fn(store: UserStore, **options):
    """``(model, support) -> UserState`` for :func:`plural.fewshot.few_shot_curve`'s ``adapt_fn``."""

    def fn(model: PreferenceModel, support: dict) -> UserState:
        return personalize(model, store, support, **options)

    return fn


def neighbours_table(model: PreferenceModel, store: UserStore, support: dict, n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` stored users whose vectors best explain ``support``, with their weights."""
    _, neighbours = personalize(model, store, support, return_neighbors=True)
    return sorted(neighbours, key=lambda t: -t[1])[:n]


__all__ = ["build_user_store", "neighbours_table", "personalize", "personalize_fn", "supports_retrieval"]

