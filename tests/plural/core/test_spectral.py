"""The spectral start (plural.core.spectral) and low_rank trained from it."""

import numpy as np
import pandas as pd
import pytest
import torch

from plural.core import spectral
from plural.core.model import make_model
from plural.data.converters import from_ratings, from_votes

SMALL = dict(hidden_dim=16, item_dim=8, n_components=2)


def camps(n_users=60, n_items=30, seed=0, conversations=("c0",)):
    """Voters in two camps that vote oppositely on the divisive statements and alike on the rest;
    statements carry random features (nothing of the camps)."""
    rng = np.random.default_rng(seed)
    rows = []
    for conv in conversations:
        popular = rng.normal(size=n_items)
        divisive = np.where(np.arange(n_items) % 2 == 0, 2.5, 0.0)
        for u in range(n_users):
            side = 1 if u % 2 else -1
            for i in rng.choice(n_items, 20, replace=False):
                p = 1 / (1 + np.exp(-(popular[i] + side * divisive[i])))
                rows.append((conv, f"{conv}-v{u}", f"{conv}-s{i}", 1 if rng.random() < p else -1))
    votes = pd.DataFrame(rows, columns=["conversation", "user_id", "item_id", "vote"])
    data = from_votes(votes, group="conversation", max_pairs_per_user=80, random_state=seed)
    return data.with_features(rng.normal(size=(len(data.item_ids), 5)).astype(np.float32))


def start_of(data, rank=2, **kwargs):
    rows = np.arange(len(data))
    return spectral.spectral_start(data, rows, np.arange(len(data.user_ids)), np.arange(len(data.item_ids)),
                                   len(data.user_ids), len(data.item_ids), rank, **kwargs)


def test_the_first_factor_splits_the_camps_and_users_have_unit_second_moment():
    data = camps()
    start = start_of(data)
    side = np.array([int(u.split("v")[1]) % 2 for u in data.user_ids])
    first = start.users[:, 0] > 0
    assert max(np.mean(first == side), np.mean(first != side)) > 0.95
    np.testing.assert_allclose((start.users ** 2).mean(0), 1.0, atol=1e-6)
    assert start.observed_users.all() and start.observed_items.all()
    assert start.n_observations == len(data.observations.user)
    # the predicted value of a vote is on its side of the middle for most training votes
    obs = data.observations
    predicted = start.mean[obs.item] + (start.users[obs.user] * start.factors[obs.item]).sum(1)
    assert np.mean(np.sign(predicted) == 2 * obs.level - 1) > 0.8
    assert start.logit_scale > spectral.LOGIT_SCALES[0] and len(start.cut_points) == 1


def test_each_conversation_is_its_own_matrix():
    data = camps(conversations=("c0", "c1"))
    start = start_of(data)
    items_c1 = np.array([i.startswith("c1") for i in data.item_ids])
    users_c1 = np.array([u.startswith("c1") for u in data.user_ids])
    alone = start_of(data.subset(np.flatnonzero(data.context == list(data.context_ids).index("c1"))))
    # the users and statements of c1 factorize as they do without c0 (up to each component's sign)
    both = start.users[users_c1] @ start.factors[items_c1].T
    np.testing.assert_allclose(both, alone.users[users_c1] @ alone.factors[items_c1].T, atol=1e-8)
    assert not alone.observed_users[~users_c1].any() and not alone.factors[~items_c1].any()


def test_sparse_and_dense_factorizations_agree(monkeypatch):
    data = camps(n_users=40, n_items=30)
    dense = start_of(data, rank=3)
    monkeypatch.setattr(spectral, "DENSE_LIMIT", 0)
    sparse = start_of(data, rank=3)
    np.testing.assert_allclose(sparse.users @ sparse.factors.T, dense.users @ dense.factors.T, atol=1e-8)


def test_ratings_get_cut_points_between_their_levels():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"m{i}", float(rng.integers(1, 6))) for u in range(30) for i in rng.choice(20, 12, replace=False)]
    data = from_ratings(pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]), random_state=0)
    data = data.with_features(rng.normal(size=(len(data.item_ids), 4)).astype(np.float32))
    start = start_of(data)
    assert data.observations.n_levels == 5
    np.testing.assert_allclose(start.cut_points, start.logit_scale * np.array([-0.75, -0.25, 0.25, 0.75]))


def test_no_observations_no_start():
    data = camps()
    data.observations = None
    assert start_of(data) is None


def test_low_rank_starts_as_the_factorization_says():
    data = camps(conversations=("c0", "c1"))
    rows = np.arange(len(data))
    model = make_model("low_rank", **SMALL).build_for(data, rows)
    model.initialize_from(data, rows, random_state=0)
    assert model.start_["kind"] == "spectral"
    user_index = np.array([model.user_ids_.index(u) for u in data.user_ids])
    item_index = model.item_index(list(data.item_ids)).numpy()
    start = spectral.spectral_start(data, rows, user_index, item_index, len(model.user_ids_),
                                    len(model.item_ids_), 2)
    scale = model.start_["logit_scale"]
    assert scale == start.logit_scale
    with torch.no_grad():
        phi, bias = model.items(torch.from_numpy(data.item_features), torch.from_numpy(item_index))
        population = (phi @ model.population_weight + bias).numpy()
        personal = (phi @ model.basis).numpy()
        cut = model.items.threshold_biases().numpy()
    np.testing.assert_allclose(personal, scale * start.factors[item_index], atol=1e-4)
    np.testing.assert_allclose(population, scale * start.mean[item_index], atol=1e-4)
    np.testing.assert_allclose(model.user_states().numpy(), start.users, atol=1e-5)
    np.testing.assert_allclose(cut, start.cut_points, atol=1e-5)
    # so a training user's reward is the factorization's prediction, as a logit
    r = model.reward(torch.from_numpy(data.item_features), model.user_states()[:1], torch.from_numpy(item_index))
    expected = scale * (start.mean[item_index] + start.factors[item_index] @ start.users[0])
    np.testing.assert_allclose(r[0].detach().numpy(), expected, atol=1e-4)


def test_fit_reports_its_start_and_fine_tunes_at_the_smaller_rate():
    data = camps()
    model = make_model("low_rank", **SMALL).fit(data, max_epochs=2, show_progress=False)
    assert model.fit_report_["start"]["kind"] == "spectral"
    base = make_model("low_rank", **SMALL, spectral_start=False).fit(data, max_epochs=2, show_progress=False)
    assert base.fit_report_["start"] == {"kind": "random"}
    rates = [g["lr"] for g in model.configure_optimizers().param_groups]
    base_rates = [g["lr"] for g in base.configure_optimizers().param_groups]
    np.testing.assert_allclose(rates, [model.config.spectral_lr_multiplier * r for r in base_rates])
    no_votes = camps()
    no_votes.observations = None
    assert make_model("low_rank", **SMALL).fit(no_votes, max_epochs=1, show_progress=False) \
        .fit_report_["start"] == {"kind": "random"}


def test_the_rate_multiplier_is_checked():
    with pytest.raises(ValueError, match="spectral_lr_multiplier"):
        make_model("low_rank", spectral_lr_multiplier=0.0)
