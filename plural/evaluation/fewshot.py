"""The unseen-user few-shot curve: adapt from k support comparisons, score the query.

For every episode (``plural.data.splits.make_episodes``) and every k, the model adapts a state from
the first k support comparisons and is scored on the episode's query. Accuracy is averaged over a
user's draws, then macro-averaged over users; the gain over k=0 is paired on the same episodes (a
user's draws whose support reaches k, against k=0 on those draws), averaged per user, with a 95%
interval over users. Adaptation latency is measured per call.

Where the data has observations (votes, ratings) and the model learns from them, a support of k
comparisons also carries the user's observations of the support's items (the same judgements, on
the support's half of the user's items), and the curve reports, beside pairwise accuracy on the
query's comparisons (the headline, comparable with data that has none), ``observation_accuracy``:
how often the user's observations of the query's items fall on the predicted side of each threshold
they are compared with (on a two-level scale, the accuracy of predicted votes).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from plural.core.batch import ComparisonDataset, batch_to
from plural.data.container import PreferenceData
from plural.data.splits import DEFAULT_SHOTS, Episode
from plural.evaluation.metrics import log_loss, pairwise_accuracy
from plural.core.model import PreferenceModel, UserState

AdaptFn = Callable[[PreferenceModel, dict], UserState]


def _default_adapt(model: PreferenceModel, support: dict) -> UserState:
    return model.adapt(support)


@torch.no_grad()
def few_shot_curve(model: PreferenceModel, data: PreferenceData, episodes: Sequence[Episode],
                   ks: Sequence[int] = DEFAULT_SHOTS, adapt_fn: AdaptFn | None = None) -> dict:
    """Accuracy of ``model`` on unseen users as a function of k.

    Args:
        model: a fitted model.
        data: the preferences the episodes index (with item features).
        episodes: few-shot episodes of users the model did not train on.
        ks: support sizes; an episode serves every k up to its support pool's size.
        adapt_fn: ``(model, support batch) -> UserState``; ``model.adapt`` by default (pass
            ``plural.query.personalize.personalize`` bound to a store to use retrieval).

    Returns:
        ``{"curve": [{"k", "accuracy", "log_loss", "n_users", "gain_vs_k0", "gain_ci95",
        "adapt_ms_median", "adapt_ms_p99"}, ...], "n_episodes"}``; rows gain ``observation_accuracy``
        (the mean over episodes) where the episodes' queries have observations the model scores.
    """
    model.check_is_fitted()
    adapt_fn = adapt_fn or _default_adapt
    dataset = ComparisonDataset(data, None, model, observations=True)
    was_training = model.training
    model.eval()
    # per k: (user, draw) -> accuracy on that episode's query
    acc: dict[int, dict[tuple[int, int], float]] = {k: {} for k in ks}
    probs: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    labels: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    latency: dict[int, list[float]] = {k: [] for k in ks}
    observed: dict[int, list[float]] = {k: [] for k in ks}  # threshold rows on the predicted side
    for ep in episodes:
        query = batch_to(dataset.__getitems__(ep.query), model.device)
        y = data.label[ep.query]
        query_obs = dataset.observations_of(ep.query)
        if len(query_obs):
            query_obs = batch_to(dataset.__getitems__(query_obs), model.device)
        for k in ks:
            if k > len(ep.support_pool):
                continue
            support = batch_to(dataset.__getitems__(dataset.with_observations(ep.support(k))), model.device)
            start = time.perf_counter()
            state = adapt_fn(model, support)
            latency[k].append(time.perf_counter() - start)
            p = torch.sigmoid(model.state_margin(query, state)).float().cpu().numpy()
            a = pairwise_accuracy(p, y)
            if not np.isnan(a):
                acc[k][(ep.user, ep.draw)] = a
                probs[k].append(p)
                labels[k].append(y)
            if len(query_obs):
                p_obs = torch.sigmoid(model.state_margin(query_obs, state)).float().cpu().numpy()
                observed[k].append(pairwise_accuracy(p_obs, query_obs["label"].cpu().numpy()))
    model.train(was_training)
    base = acc[ks[0]] if ks else {}
    curve = []
    for k in ks:
        per_user = _per_user_mean(acc[k])
        if not per_user:
            continue
        row = {"k": int(k), "accuracy": float(np.mean(list(per_user.values()))),
               "log_loss": log_loss(np.concatenate(probs[k]), np.concatenate(labels[k])),
               "n_users": len(per_user)}
        # paired on the same episodes: a user's draws that reach k, against k0 on those draws
        paired = _per_user_mean({key: a - base[key] for key, a in acc[k].items() if key in base})
        if paired:
            diff = np.asarray(list(paired.values()))
            half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            row["gain_vs_k0"] = float(diff.mean())
            row["gain_ci95"] = [float(diff.mean() - half), float(diff.mean() + half)]
        if observed[k]:
            row["observation_accuracy"] = float(np.nanmean(observed[k]))
        lat = np.asarray(latency[k]) * 1e3
        row["adapt_ms_median"] = float(np.median(lat))
        row["adapt_ms_p99"] = float(np.percentile(lat, 99))
        curve.append(row)
    return {"curve": curve, "n_episodes": len(episodes)}


def _per_user_mean(by_episode: dict[tuple[int, int], float]) -> dict[int, float]:
    """Average episode values over each user's draws."""
    sums: dict[int, list[float]] = {}
    for (user, _), value in by_episode.items():
        sums.setdefault(user, []).append(value)
    return {u: float(np.mean(v)) for u, v in sums.items()}


def curve_value(result: dict, k: int, field: str = "accuracy") -> float:
    """``field`` (default: the macro accuracy) at ``k`` of a :func:`few_shot_curve` result; NaN
    when absent, or null as strict JSON (``results.json``) writes a NaN."""
    for row in result["curve"]:
        if row["k"] == k:
            value = row.get(field)
            return float("nan") if value is None else value
    return float("nan")

