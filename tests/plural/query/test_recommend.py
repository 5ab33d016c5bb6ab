import dataclasses

import numpy as np
import pytest
import torch

from plural.core.model import NotFittedError, UserState, make_model
from plural.query.recommend import ItemIndex, retrieval_form
from plural.query.scoring import score_items

OPTIONS = dict(hidden_dim=16, n_components=3, item_dim=8)


def _built(name, data, **options):
    """A model with random weights (retrieval must be exact for any weights), item identities included."""
    torch.manual_seed(0)
    model = make_model(name, **options).build(data.feature_dim, data.user_ids, data.item_ids)
    items = getattr(model, "items", None)
    if items is not None and items.use_identity:
        with torch.no_grad():
            items.item_embedding.weight[:-1].normal_(0, 0.5)
            items.item_bias.weight[:-1].normal_(0, 0.5)
            model.user_embedding.weight[:-1].normal_(0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def models(planted):
    data, _ = planted
    return {"low_rank": _built("low_rank", data, **OPTIONS),
            "ideal_point": _built("ideal_point", data, **OPTIONS),
            "bradley_terry": _built("bradley_terry", data, hidden_dim=16)}


def _states(model, data):
    dim = model.population_state().vector.numel()
    gen = torch.Generator().manual_seed(1)
    states = [None, data.user_ids[3], UserState(vector=torch.randn(dim, generator=gen) * 2)]
    return states


def _brute_force(model, data, state, n, exclude=()):
    scores = score_items(model, data, state)
    ids = np.asarray(data.item_ids)
    keep = ~np.isin(ids, list(exclude))
    order = np.argsort(-scores[keep], kind="stable")[:n]
    return list(ids[keep][order]), scores[keep][order]


@pytest.mark.parametrize("name", ["low_rank", "ideal_point", "bradley_terry"])
def test_top_n_equals_brute_force(planted, models, name):
    data, _ = planted
    model = models[name]
    index = ItemIndex(model, data)
    assert index.form == {"low_rank": "linear", "ideal_point": "ideal_point", "bradley_terry": None}[name]
    assert index.index_kind == ("exact" if name == "bradley_terry" else "flat")
    for state in _states(model, data):
        got = index.top_n(state, n=10)
        want_ids, want_scores = _brute_force(model, data, state, 10)
        assert [i for i, _ in got] == want_ids
        np.testing.assert_allclose([s for _, s in got], want_scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(index.score(state), score_items(model, data, state), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["low_rank", "ideal_point", "bradley_terry"])
def test_exclusion_is_exact(planted, models, name):
    data, _ = planted
    model = models[name]
    index = ItemIndex(model, data, margin=0)  # no slack: the retry path must still find n items
    state = _states(model, data)[2]
    best, _ = _brute_force(model, data, state, 40)
    exclude = best[:30] + list(data.item_ids[::7])
    got = [i for i, _ in index.top_n(state, n=10, exclude=exclude)]
    assert got == _brute_force(model, data, state, 10, exclude)[0]
    assert not set(got) & set(exclude)
    keep = list(data.item_ids[:4])
    assert {i for i, _ in index.top_n(state, n=10, exclude=set(data.item_ids) - set(keep))} == set(keep)
    assert index.top_n(state, n=3, exclude=data.item_ids) == []


def test_rank_and_candidates_are_exact(planted, models):
    data, _ = planted
    model = models["ideal_point"]
    index = ItemIndex(model, data)
    state = _states(model, data)[2]
    candidates = list(data.item_ids[5:60])
    ranked = index.rank(state, candidates)
    scores = dict(zip(data.item_ids, score_items(model, data, state)))
    assert [i for i, _ in ranked] == sorted(candidates, key=lambda i: -scores[i])
    assert len(index.rank(state, candidates + candidates[:3])) == len(candidates)
    top = index.top_n(state, n=5, candidates=candidates, exclude=[ranked[0][0]])
    assert [i for i, _ in top] == [i for i, _ in ranked[1:6]]


def test_feature_matrix_without_ids_treats_items_as_new(planted, models):
    data, _ = planted
    model = models["low_rank"]
    index = ItemIndex(model, data.item_features[:50])
    assert index.item_ids == list(range(50))
    want = score_items(model, data.item_features[:50])
    assert [i for i, _ in index.top_n(None, n=5)] == list(np.argsort(-want)[:5])
    named = ItemIndex(model, data.item_features[:50], item_ids=data.item_ids[:50])
    np.testing.assert_allclose(named.score(None), score_items(model, data)[:50], rtol=1e-5, atol=1e-5)


def test_hnsw_agrees_with_flat(planted):
    data, _ = planted
    model = _built("low_rank", data, **OPTIONS)
    features = np.random.default_rng(0).standard_normal((4000, data.feature_dim)).astype(np.float32)
    flat = ItemIndex(model, features, index="flat")
    hnsw = ItemIndex(model, features, index="hnsw", hnsw_m=16)
    assert hnsw.index_kind == "hnsw"
    gen = torch.Generator().manual_seed(2)
    overlap = []
    for _ in range(10):
        state = UserState(vector=torch.randn(3, generator=gen))
        a, b = flat.top_n(state, n=10), hnsw.top_n(state, n=10, exclude=[a_ for a_, _ in flat.top_n(state, 3)])
        exact = hnsw.score(state)
        np.testing.assert_allclose([s for _, s in b], exact[[i for i, _ in b]], rtol=1e-5, atol=1e-5)
        overlap.append(len({i for i, _ in a[3:]} & {i for i, _ in b}) / 7)
    assert np.mean(overlap) >= 0.95


def test_cosine_ideal_points_are_scored_exactly(planted):
    data, _ = planted
    model = _built("ideal_point", data, distance="cosine", **OPTIONS)
    assert retrieval_form(model) is None
    index = ItemIndex(model, data)
    assert index.index_kind == "exact"
    assert [i for i, _ in index.top_n(None, n=5)] == _brute_force(model, data, None, 5)[0]


def test_bad_input_raises(planted, models):
    data, _ = planted
    index = ItemIndex(models["low_rank"], data)
    with pytest.raises(ValueError, match="unknown item ids in exclude: 'nope'"):
        index.top_n(None, exclude=["i1", "nope"])
    with pytest.raises(ValueError, match="unknown item ids in exclude"):
        index.top_n(None, exclude=[["i1"]])
    with pytest.raises(ValueError, match="unknown item ids in candidates"):
        index.top_n(None, candidates=["zzz"])
    with pytest.raises(ValueError, match="unknown item ids in candidate_ids"):
        index.rank(None, ["zzz"])
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            index.top_n(None, n=n)
    with pytest.raises(ValueError, match=r"\(3,\) vectors"):
        index.top_n(UserState(vector=torch.zeros(4)))
    with pytest.raises(ValueError, match="NaN"):
        index.top_n(UserState(vector=torch.tensor([0.0, float("nan"), 0.0])))
    with pytest.raises(ValueError, match="unknown user id"):
        index.top_n("nobody")
    with pytest.raises(NotFittedError):
        ItemIndex(make_model("low_rank"), data)
    with pytest.raises(ValueError, match="no features"):
        ItemIndex(models["low_rank"], dataclasses.replace(data, item_features=None))
    with pytest.raises(ValueError, match="shape"):
        ItemIndex(models["low_rank"], data.item_features[:, :3])
    with pytest.raises(ValueError, match="twice"):
        ItemIndex(models["low_rank"], data.item_features[:3], item_ids=["a", "b", "a"])
    with pytest.raises(ValueError, match="index must be"):
        ItemIndex(models["low_rank"], data, index="ivf")


def test_a_fitted_model_recommends_what_it_scores_highest(planted, fast_fit):
    data, _ = planted
    model = make_model("low_rank", **OPTIONS).fit(data, **dict(fast_fit, max_epochs=2), random_state=0)
    index = ItemIndex(model, data)
    state = data.user_ids[0]
    assert [i for i, _ in index.top_n(state, n=10)] == _brute_force(model, data, state, 10)[0]


@pytest.mark.parametrize("name, index", [("low_rank", "flat"), ("low_rank", "hnsw"), ("ideal_point", "flat"),
                                         ("bradley_terry", "auto")])
def test_an_item_index_saves_and_loads(planted, models, tmp_path, name, index):
    from plural.training.saved_dir import record_checksums

    data, _ = planted
    model = models[name]
    built = ItemIndex(model, data, index=index)
    path = built.save(tmp_path / "items")
    loaded = ItemIndex.load(path, model)
    assert (loaded.index_kind, loaded.form, loaded.item_ids) == (built.index_kind, built.form, built.item_ids)
    for state in _states(model, data):
        assert loaded.top_n(state, n=7, exclude=data.item_ids[:3]) == built.top_n(state, n=7, exclude=data.item_ids[:3])
    other = _built(name, data, **(OPTIONS if name != "bradley_terry" else dict(hidden_dim=16)))
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    with pytest.raises(ValueError, match="saved for another model"):
        ItemIndex.load(path, other)
    (path / "features.npy").write_bytes(b"\x93NUMPY broken")
    with pytest.raises(ValueError, match="features.npy is corrupt"):
        ItemIndex.load(path, model)
    if built.index_kind != "exact":  # an index that does not hold these items is refused
        np.save(path / "features.npy", np.asarray(data.item_features[::-1]), allow_pickle=False)
        record_checksums(path)
        with pytest.raises(ValueError, match="not this model's"):
            ItemIndex.load(path, model)


def test_a_stored_user_who_was_not_in_training_is_served(planted, models):
    from plural.query.store import UserStore

    data, _ = planted
    model = models["low_rank"]
    store = UserStore(model.user_dim)
    vector = np.full(model.user_dim, 0.7, dtype=np.float32)
    store.add(["newcomer"], vector[None], covariances=np.eye(model.user_dim)[None] * 0.1)
    index = ItemIndex(model, data, store=store)
    assert index.top_n("newcomer", n=5) == index.top_n(UserState(vector=torch.from_numpy(vector)), n=5)
    assert index.top_n(data.user_ids[3], n=5) == ItemIndex(model, data).top_n(data.user_ids[3], n=5)
    with pytest.raises(ValueError, match="not in the store or seen in training"):
        index.top_n("stranger")
    with pytest.raises(ValueError, match="store holds 2-d vectors"):
        ItemIndex(model, data, store=UserStore(2))
