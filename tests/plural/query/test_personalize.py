import dataclasses

import numpy as np
import pytest
import torch

from plural.query import personalize as adapt
from plural.query.personalize import build_user_store, neighbours_table, personalize, personalize_fn
from plural.core.batch import comparison_batch
from plural.training.checkpoint import load_model, save_model
from plural.data.splits import split_comparisons, split_users
from plural.evaluation.fewshot import curve_value, few_shot_curve
from plural.core.model import make_model
from plural.query.store import UserStore


@pytest.fixture(scope="module")
def setup(two_types):
    return two_types


def test_store_holds_the_training_users(setup):
    _, data, model, _ = setup
    store = build_user_store(model)
    assert len(store) == len(model.user_ids_)
    np.testing.assert_allclose(store.get(model.user_ids_[:3]), model.user_states()[:3].numpy(), rtol=1e-6)
    # each stored user's metadata counts their training comparisons (the fixture's split, redone)
    seen, _ = split_users(data, 0.25, random_state=0)
    train = split_comparisons(data, seen, mode="comparisons", random_state=0).train
    counts = np.bincount(data.user[train], minlength=data.n_users)
    index = {u: i for i, u in enumerate(data.user_ids)}
    stored = [store.metadata(u)["n_comparisons"] for u in model.user_ids_]
    assert stored == [int(counts[index[u]]) for u in model.user_ids_] and min(stored) > 0


def test_retrieval_prior_helps_at_small_k_and_matches_at_large_k(setup):
    _, data, model, episodes = setup
    store = build_user_store(model)
    plain = few_shot_curve(model, data, episodes, ks=(0, 1, 2, 20))
    retrieved = few_shot_curve(model, data, episodes, ks=(0, 1, 2, 20), adapt_fn=personalize_fn(store))
    gain_small = np.mean([curve_value(retrieved, k) - curve_value(plain, k) for k in (1, 2)])
    assert gain_small > 0.0, (plain["curve"], retrieved["curve"])
    assert abs(curve_value(retrieved, 20) - curve_value(plain, 20)) < 0.03
    assert curve_value(retrieved, 0) == pytest.approx(curve_value(plain, 0))


def test_neighbours_share_the_new_users_type(setup):
    syn, data, model, episodes = setup
    store = build_user_store(model)
    type_of = {data.user_ids[u]: t for u, t in enumerate(syn.user_type)}
    agree = []
    for ep in episodes[:20]:
        support = comparison_batch(data, ep.support(10), model)
        top = neighbours_table(model, store, support, n=5)
        agree += [type_of[uid] == syn.user_type[ep.user] for uid, _ in top]
    assert np.mean(agree) > 0.7


def test_bad_arguments_and_fallbacks(setup):
    _, data, model, episodes = setup
    store = build_user_store(model)
    with pytest.raises(ValueError, match="shrinkage"):
        personalize(model, store, None, shrinkage=2)
    with pytest.raises(ValueError, match="bandwidth"):
        personalize(model, store, None, bandwidth=0)
    state = personalize(model, store, None)
    assert torch.allclose(state.vector, model.population_state().vector)
    bt = make_model("bradley_terry", hidden_dim=8).fit(data, max_epochs=1, show_progress=False)
    with pytest.raises(ValueError, match="no user vectors"):
        build_user_store(bt)
    # the store is the low-rank model's: checked against bt's fingerprint it is refused
    support = comparison_batch(data, episodes[0].support(3), bt)
    with pytest.raises(ValueError, match="store was built for model fingerprint"):
        personalize(bt, store, support)
    assert personalize(bt, store, support, check_fingerprint=False).vector.numel() == 0


def test_ideal_point_goes_through_the_store_too(setup):
    _, data, _, episodes = setup
    model = make_model("ideal_point", hidden_dim=16, n_components=2, item_dim=4).fit(
        data, max_epochs=3, show_progress=False)
    store = build_user_store(model)
    support = comparison_batch(data, episodes[0].support(5), model)
    state, neighbours = personalize(model, store, support, n_neighbors=8, exhaustive_below=0,
                                    return_neighbors=True)
    assert state.vector.shape == (2,) and state.covariance.shape == (2, 2)
    assert len(neighbours) == 8 and 0 < sum(w for _, w in neighbours) <= 1 + 1e-9
    assert torch.isfinite(state.vector).all() and torch.linalg.eigvalsh(state.covariance).min() > 0


@pytest.mark.parametrize("noise_rate", [0.0, 0.25])
def test_all_prior_mass_on_the_population_is_plain_adapt(setup, noise_rate):
    # one mixture component, the population prior: the batched mixture posterior must then be the
    # Newton/Laplace posterior of model.adapt (same mode, same covariance); with a label-noise rate
    # too, so personalize and adapt share the same noisy Bradley-Terry likelihood
    import copy

    _, data, fitted, episodes = setup
    model = copy.deepcopy(fitted)
    model.config = dataclasses.replace(model.config, noise_rate=noise_rate)
    store = build_user_store(model)
    for ep in episodes[:5]:
        support = comparison_batch(data, ep.support(8), model)
        mixed = personalize(model, store, support, shrinkage=1.0)
        plain = model.adapt(support)
        torch.testing.assert_close(mixed.vector, plain.vector, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mixed.covariance, plain.covariance, atol=1e-4, rtol=1e-4)
    if noise_rate:  # and the noise rate matters
        clean = fitted.adapt(comparison_batch(data, episodes[0].support(8), fitted))
        noisy = model.adapt(comparison_batch(data, episodes[0].support(8), model))
        assert not torch.allclose(noisy.vector, clean.vector, atol=1e-3)


def test_the_kernel_prior_is_never_wider_than_the_population_prior(setup):
    """match_spread: stored users spread wider than the population prior are pulled towards its
    mean until the kernel mixture's second moment (the centres' plus bandwidth**2 C) is C's, so the
    state does not depend on how far out they lie; a store within that spread is used as it is."""
    _, data, model, episodes = setup
    ids = list(model.user_ids_)
    vectors = model.user_states().numpy().astype(np.float64)
    assert np.allclose(model.adaptation_prior()[0].numpy(), 0)  # low_rank: scaling is about the prior mean

    def store_of(scale: float) -> UserStore:
        store = UserStore(vectors.shape[1], metric="ip", index="flat")
        store.add(ids, (vectors * scale).astype(np.float32))
        return store

    support = comparison_batch(data, episodes[0].support(5), model)
    far, farther = (personalize(model, store_of(c), support) for c in (10.0, 20.0))
    torch.testing.assert_close(far.vector, farther.vector, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(far.covariance, farther.covariance, atol=1e-5, rtol=1e-4)
    wide = [personalize(model, store_of(c), support, match_spread=False).vector for c in (10.0, 20.0)]
    assert not torch.allclose(wide[0], wide[1], atol=1e-3)
    near = store_of(0.01)
    torch.testing.assert_close(personalize(model, near, support).vector,
                               personalize(model, near, support, match_spread=False).vector)


def test_searched_and_exhaustive_stores_agree_when_the_search_returns_everyone(setup):
    _, data, model, episodes = setup
    store = build_user_store(model)
    support = comparison_batch(data, episodes[0].support(5), model)
    whole = personalize(model, store, support)
    searched = personalize(model, store, support, exhaustive_below=0, n_neighbors=len(store))
    torch.testing.assert_close(whole.vector, searched.vector, atol=1e-5, rtol=1e-5)


def test_a_repeated_comparison_counts_once_when_tempered(setup):
    _, data, model, episodes = setup
    one = comparison_batch(data, episodes[0].support(1), model)
    repeated = {key: value.repeat(5) if value.ndim == 1 else value.repeat(5, 1) for key, value in one.items()}
    single = model.adapt(one)
    tempered = model.adapt(repeated)
    torch.testing.assert_close(tempered.vector, single.vector, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tempered.covariance, single.covariance, rtol=1e-4, atol=1e-5)
    # through the store too: the same five copies give the single comparison's posterior
    store = build_user_store(model)
    torch.testing.assert_close(personalize(model, store, repeated).vector, personalize(model, store, one).vector,
                               rtol=1e-4, atol=1e-5)
    model.config.temper_support = False
    try:
        untempered = model.adapt(repeated)
    finally:
        model.config.temper_support = True
    # counted five times, the same evidence claims a tighter posterior
    assert torch.trace(untempered.covariance) < torch.trace(single.covariance) - 1e-4


@pytest.fixture(scope="module")
def in_two_contexts(setup):
    """The two types' data with each user's comparisons in context "even" or "odd" (by user
    index), and a low-rank model trained on it."""
    _, data, _, episodes = setup
    data = dataclasses.replace(data, context=(data.user % 2).astype(np.int64), context_ids=np.array(["even", "odd"]))
    model = make_model("low_rank", hidden_dim=32, n_components=2, item_dim=8).fit(
        data, train_rows=np.flatnonzero(~np.isin(data.user, [ep.user for ep in episodes])), max_epochs=5,
        batch_size=128, show_progress=False)
    return data, model, episodes


def test_the_store_records_each_users_contexts(in_two_contexts):
    data, model, _ = in_two_contexts
    store = build_user_store(model)
    index = {u: i for i, u in enumerate(data.user_ids)}
    for u in model.user_ids_:
        assert store.metadata(u)["contexts"] == [["even", "odd"][index[u] % 2]]
    even = store.users_where("contexts", "even")
    assert 0 < len(even) < len(store) and all(index[u] % 2 == 0 for u in even)


def test_personalize_keeps_a_new_user_among_their_contexts_users(in_two_contexts):
    data, model, episodes = in_two_contexts
    store = build_user_store(model)
    index = {u: i for i, u in enumerate(data.user_ids)}
    for ep in episodes[:4]:
        support = comparison_batch(data, ep.support(5), model)
        own, neighbours = personalize(model, store, support, return_neighbors=True)
        assert len(neighbours) == len(store.users_where("contexts", ["even", "odd"][ep.user % 2]))
        assert {index[u] % 2 for u, _ in neighbours} == {ep.user % 2}
        whole, everyone = personalize(model, store, support, by_context=False, return_neighbors=True)
        assert len(everyone) == len(store) and not torch.allclose(own.vector, whole.vector)



def test_without_enough_users_of_the_context_the_store_is_used_whole(in_two_contexts, monkeypatch):
    data, model, episodes = in_two_contexts
    store = build_user_store(model)
    support = comparison_batch(data, episodes[0].support(5), model)
    whole = personalize(model, store, support, by_context=False).vector
    monkeypatch.setattr(adapt, "MIN_CONTEXT_USERS", len(store))  # more than either context has
    torch.testing.assert_close(personalize(model, store, support).vector, whole)
    monkeypatch.undo()
    bare = UserStore(store.dim, metric="ip")  # the same users, with no contexts recorded
    bare.add(store.user_ids, store.get(store.user_ids))
    torch.testing.assert_close(personalize(model, bare, support).vector, whole)


def test_user_contexts_survive_a_checkpoint_and_are_checked(in_two_contexts, tmp_path):
    _, model, _ = in_two_contexts
    save_model(model, tmp_path / "m")
    assert load_model(tmp_path / "m").user_contexts_ == model.user_contexts_
    with pytest.raises(ValueError, match="unknown"):
        make_model("low_rank").build(4, ["a"], ["i"], ["even"], [3], [["odd"]])


def test_mixture_newton_equals_newton_map():
    """personalize's Newton loop for a shared Jacobian takes newton_map's steps: the same modes,
    Hessians and log-likelihoods up to floating-point rounding, label noise and ties included."""
    import warnings

    from plural.core.laplace import ConvergenceWarning, newton_map
    from plural.core.likelihood import label_log_likelihood
    from plural.query.personalize import _mixture_newton

    rng = np.random.default_rng(0)
    for trial in range(60):
        dim, k, n_comp = int(rng.choice([1, 2, 4, 8])), int(rng.integers(1, 30)), int(rng.choice([1, 3, 50]))
        scale = float(rng.choice([0.3, 1.0, 5.0]))
        m0, jac = rng.normal(size=k) * 0.1 * scale, rng.normal(size=(k, dim)) * scale
        y, w = rng.choice([0.0, 0.5, 1.0], size=k), rng.random(k) + 0.2
        a = rng.normal(size=(dim, dim))
        prior = a @ a.T + np.eye(dim)
        prec = np.concatenate([prior[None], np.broadcast_to(prior * 4, (n_comp - 1, dim, dim))])
        centres = rng.normal(size=(n_comp, dim)) * scale
        steps, noise = int(rng.choice([1, 4, 30])), float(rng.choice([0.0, 0.1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            u_ref, h_ref = newton_map(lambda v: (m0 + v @ jac.T, jac), y, w, centres, prec, centres, steps,
                                      noise_rate=noise)
            u, h, loglik, quad = _mixture_newton(m0, jac, y, w, centres, prec, steps, noise_rate=noise)
        np.testing.assert_allclose(u, u_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(h, h_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(loglik, (w * label_log_likelihood(m0 + u_ref @ jac.T, y, noise)).sum(1),
                                   rtol=1e-9, atol=1e-9)
        d = u_ref - centres
        np.testing.assert_allclose(quad, np.einsum("ca,cab,cb->c", d, prec, d), rtol=1e-9, atol=1e-9)


def test_item_disjoint_halves_share_no_item():
    from plural.core.support import item_disjoint_halves

    rng = np.random.default_rng(0)
    n = 200
    features = rng.normal(size=(30, 3)).astype(np.float32)
    a, b = rng.integers(0, 30, n), rng.integers(0, 30, n)
    index = np.where(np.arange(30) < 20, np.arange(30), -1)  # items 20..29: no model index, told by features
    level = np.where(rng.random(n) < 0.3, 0, -1)  # a third of the rows stand for votes on item a
    batch = {"label": torch.ones(n), "features_a": torch.from_numpy(features[a]),
             "features_b": torch.from_numpy(np.where(level[:, None] >= 0, 0, features[b])),
             "item_a": torch.from_numpy(index[a]), "item_b": torch.from_numpy(np.where(level >= 0, -1, index[b])),
             "level": torch.from_numpy(level)}
    first, second = item_disjoint_halves(batch, seed=3)
    items = []
    for rows in (first.numpy(), second.numpy()):
        on_b = rows[level[rows] < 0]
        items.append(set(a[rows]) | set(b[on_b]))
    assert items[0] and items[1] and not items[0] & items[1]
    assert set(first.tolist()).isdisjoint(second.tolist())
    # every vote row is in its item's half; a comparison is dropped only when its items are split
    side = {i: h for h, got in enumerate(items) for i in got}
    kept = set(first.tolist()) | set(second.tolist())
    for row in range(n):
        both = [a[row]] if level[row] >= 0 else [a[row], b[row]]
        in_one = len({side.get(i, -1) for i in both}) == 1 and side.get(a[row], -1) >= 0
        assert (row in kept) == in_one
    again = item_disjoint_halves(batch, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(again, (first, second)))
    assert not torch.equal(item_disjoint_halves(batch, seed=4)[0], first)


def _refuting_store(model, support):
    """A store all of whose users sit opposite what ``support`` says of its user."""
    direction = model.adapt(support).vector.numpy().astype(np.float64)
    store = UserStore(model.user_dim, metric="ip", index="flat")
    jitter = np.random.default_rng(0).normal(size=(40, model.user_dim)) * 0.05
    store.add([f"u{i}" for i in range(40)], (-3 * direction + jitter).astype(np.float32))
    return store


def test_a_store_the_users_own_comparisons_refute_is_not_used(setup):
    _, data, model, episodes = setup
    ep = max(episodes, key=lambda e: len(e.support_pool))
    support = comparison_batch(data, ep.support(len(ep.support_pool)), model)
    store = _refuting_store(model, support)
    unchecked = personalize(model, store, support, check_on_support=False)
    checked, neighbours = personalize(model, store, support, return_neighbors=True)
    plain = model.adapt(support)
    assert not torch.allclose(unchecked.vector, plain.vector, atol=1e-2)
    torch.testing.assert_close(checked.vector, plain.vector)
    torch.testing.assert_close(checked.covariance, plain.covariance)
    assert neighbours == []


def test_a_store_that_explains_the_users_comparisons_is_kept(setup):
    # stored users where the user's own comparisons put them: each half's fit under the store
    # predicts the other half better than under the population prior, and the store answers
    from plural.query.personalize import _StorePrior, store_beats_population

    _, data, model, episodes = setup
    ep = max(episodes, key=lambda e: len(e.support_pool))
    support = model.check_support(comparison_batch(data, ep.support(len(ep.support_pool)), model))
    opposite = _refuting_store(model, support)
    agreeing = UserStore(model.user_dim, metric="ip", index="flat")
    agreeing.add(opposite.user_ids, -opposite.get(opposite.user_ids) / 3)
    verdicts = [store_beats_population(_StorePrior(model, s, 64, 0.2, 0.5, 4096, True, True), support)
                for s in (agreeing, opposite)]
    assert verdicts == [True, False]
    torch.testing.assert_close(personalize(model, agreeing, support).vector,
                               personalize(model, agreeing, support, check_on_support=False).vector)


def test_a_support_too_small_to_split_is_answered_from_the_store(setup):
    _, data, model, episodes = setup
    support = comparison_batch(data, episodes[0].support(3), model)
    store = _refuting_store(model, comparison_batch(data, episodes[0].support(12), model))
    torch.testing.assert_close(personalize(model, store, support).vector,
                               personalize(model, store, support, check_on_support=False).vector)
