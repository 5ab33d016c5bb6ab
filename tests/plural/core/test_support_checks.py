"""Query-time input is checked like training input: a bad support raises a ValueError naming the
problem (never a NaN user vector or a raw IndexError), a huge one is cut to MAX_SUPPORT, and
personalize refuses a store built for another model."""

import logging

import numpy as np
import pytest
import torch

from plural.core import support as model_module  # where the support checks and their cap live
from plural.query.active import ActiveSession
from plural.query.personalize import StoreMismatchError, build_user_store, personalize
from plural.core.batch import comparison_batch
from plural.core.model import MAX_SUPPORT, make_model
from plural.query.store import UserStore


@pytest.fixture(scope="module")
def setup(two_types):
    return two_types


def _support(setup, k=4):
    _, data, model, episodes = setup
    return comparison_batch(data, episodes[0].support(k), model)


def _set(key, row, value):
    def corrupt(batch, model):
        batch[key] = batch[key].clone()
        batch[key][row] = value(model) if callable(value) else value
        return batch
    return corrupt


def _replace(key, fn):
    def corrupt(batch, model):
        batch[key] = fn(batch[key], model)
        return batch
    return corrupt


def _drop(key):
    def corrupt(batch, model):
        del batch[key]
        return batch
    return corrupt


BAD = {
    "nan feature": (_set("features_a", 1, float("nan")), r"support features_a at row 1 holds NaN or infinite"),
    "inf feature": (_set("features_b", 2, float("inf")), r"support features_b at row 2 holds NaN or infinite"),
    "nan label": (_set("label", 0, float("nan")), r"support label nan at row 0 is not one of 0, 0.5, 1"),
    "label 0.7": (_set("label", 2, 0.7), r"support label 0.7 at row 2 is not one of 0, 0.5, 1"),
    "label 2": (_set("label", 3, 2.0), r"support label 2 at row 3 is not one of"),
    "negative weight": (_set("weight", 1, -1.0), r"support weight -1 at row 1 must be finite and >= 0"),
    "nan weight": (_set("weight", 0, float("nan")), r"support weight nan at row 0 must be finite"),
    "inf weight": (_set("weight", 3, float("inf")), r"support weight inf at row 3 must be finite"),
    "item past the vocabulary": (_set("item_a", 0, lambda m: len(m.item_ids_)),
                                 r"support item_a 150 at row 0 is past the model's item vocabulary "
                                 r"\(valid: -1 \.\. 149\)"),
    "item below -1": (_set("item_b", 2, -2), r"support item_b -2 at row 2 is past the model's item vocabulary"),
    "context past the vocabulary": (_replace("context", lambda t, m: torch.zeros_like(t)),
                                    r"support context 0 at row 0 is past the model's context vocabulary "
                                    r"\(valid: only -1: it has none\)"),
    "wrong feature dimension": (_replace("features_b", lambda t, m: t[:, :5]),
                                r"expects item features of shape \(n, 16\), got \(4, 5\) .*features_b"),
    "missing label": (_drop("label"), r"support is missing label"),
    "missing features": (_drop("features_b"), r"support is missing features_b"),
    "short item column": (_replace("item_a", lambda t, m: t[:2]), r"support item_a has 2 rows but label has 4"),
    "short feature rows": (_replace("features_a", lambda t, m: t[:3]), r"support features_a has 3 rows but label has 4"),
    "short weight": (_replace("weight", lambda t, m: t[:1]), r"support weight has 1 rows but label has 4"),
    "integer labels": (_replace("label", lambda t, m: t.long()), r"support label must be a 1-d float tensor"),
    "float item indices": (_replace("item_a", lambda t, m: t.float()), r"support item_a must be a 1-d integer"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_support_raises_a_value_error_naming_the_problem(setup, case):
    _, _, model, _ = setup
    corrupt, message = BAD[case]
    store = build_user_store(model)
    for call in (model.check_support, model.adapt, lambda s: personalize(model, store, s)):
        support = corrupt(_support(setup), model)
        with pytest.raises(ValueError, match=message):
            call(support)


def test_a_good_support_passes_unchanged_and_is_not_modified(setup):
    _, _, model, _ = setup
    support = _support(setup)
    copy = {k: v.clone() for k, v in support.items()}
    checked = model.check_support(support)
    assert checked is not support and set(checked) == set(support)
    for key, value in support.items():
        assert torch.equal(checked[key], copy[key]) and torch.equal(value, copy[key])
    assert model.check_support(None) is None
    empty = {k: v[:0] for k, v in support.items()}
    assert len(model.check_support(empty)["label"]) == 0
    assert model.adapt(empty).n_comparisons == 0


def test_absent_weights_count_one_each_and_absent_items_are_new(setup):
    _, _, model, _ = setup
    support = _support(setup)
    support["weight"] = torch.ones_like(support["weight"])
    unweighted = {k: v for k, v in support.items() if k != "weight"}
    torch.testing.assert_close(model.adapt(unweighted).vector, model.adapt(support).vector)
    store = build_user_store(model)
    torch.testing.assert_close(personalize(model, store, unweighted).vector, personalize(model, store, support).vector)
    # no item ids: the items are known by their features only (index -1)
    anonymous = {k: v for k, v in support.items() if k not in ("item_a", "item_b")}
    support["item_a"] = torch.full_like(support["item_a"], -1)
    support["item_b"] = torch.full_like(support["item_b"], -1)
    torch.testing.assert_close(model.adapt(anonymous).vector, model.adapt(support).vector)


def test_an_active_session_over_a_pool_without_item_ids_adapts(setup):
    _, data, model, episodes = setup
    pool = comparison_batch(data, episodes[0].support_pool[:6], model)
    pool = {k: pool[k] for k in ("features_a", "features_b")}
    session = ActiveSession(model, pool)
    state = session.answer(1.0, session.ask())
    assert state.n_comparisons == 1 and torch.isfinite(state.vector).all()


def test_a_huge_support_is_cut_to_max_support_with_a_warning(setup, caplog):
    _, data, model, _ = setup
    rows = np.arange(6000)
    assert len(data) >= len(rows) > MAX_SUPPORT
    big = comparison_batch(data, rows, model)
    big["row"] = torch.arange(len(rows))  # an extra per-comparison tensor is sampled with the rest
    with caplog.at_level(logging.WARNING, logger=model_module.__name__):
        checked = model.check_support(big)
    assert "MAX_SUPPORT" in caplog.text and "6000" in caplog.text
    kept = checked["row"]
    assert len(kept) == MAX_SUPPORT and len(big["row"]) == 6000
    assert torch.equal(kept, torch.unique(kept))  # distinct rows, in their original order
    for key in ("label", "features_a", "item_b", "weight"):
        assert torch.equal(checked[key], big[key][kept])
    assert torch.equal(model.check_support(big)["row"], kept)  # seeded: the same sample every time
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=model_module.__name__):
        state = model.adapt(big)
    assert state.n_comparisons == MAX_SUPPORT and "MAX_SUPPORT" in caplog.text
    assert torch.isfinite(state.vector).all()
    assert torch.equal(model.adapt(big).vector, state.vector)
    store = build_user_store(model)
    assert personalize(model, store, big).n_comparisons == MAX_SUPPORT


def test_the_cap_is_read_at_call_time(setup, monkeypatch):
    _, _, model, _ = setup
    monkeypatch.setattr(model_module, "MAX_SUPPORT", 3)
    assert model.adapt(_support(setup, 5)).n_comparisons == 3


@pytest.fixture(scope="module")
def other_model(setup):
    """A low-rank model like the fixture's, trained differently."""
    _, data, model, _ = setup
    return make_model("low_rank", hidden_dim=32, n_components=2, item_dim=8).fit(
        data, max_epochs=1, batch_size=128, show_progress=False, random_state=1)


def test_personalize_refuses_a_store_built_for_another_model(setup, other_model):
    _, data, model, episodes = setup
    store = build_user_store(model)
    support = comparison_batch(data, episodes[0].support(4), other_model)
    for s in (support, None):  # whenever a store is passed, support or not
        with pytest.raises(StoreMismatchError, match=r"store was built for model fingerprint [0-9a-f]{12}…, "
                           r"this model is [0-9a-f]{12}…; rebuild it with build_user_store\(model\) or pass "
                           r"check_fingerprint=False"):
            personalize(other_model, store, s)
    assert issubclass(StoreMismatchError, ValueError)
    state = personalize(other_model, store, support, check_fingerprint=False)
    assert state.n_comparisons == 4 and torch.isfinite(state.vector).all()
    # its own store passes
    assert personalize(other_model, build_user_store(other_model), support).n_comparisons == 4


def test_personalize_refuses_another_models_store_for_models_without_retrieval(setup):
    _, data, model, episodes = setup
    bt = make_model("bradley_terry", hidden_dim=8).fit(data, max_epochs=1, show_progress=False)
    store = build_user_store(model)
    support = comparison_batch(data, episodes[0].support(3), bt)
    with pytest.raises(StoreMismatchError):
        personalize(bt, store, support)
    assert personalize(bt, store, support, check_fingerprint=False).n_comparisons == 3


def test_a_store_built_by_hand_records_no_fingerprint_and_is_accepted(setup, other_model, caplog):
    _, data, model, episodes = setup
    store = build_user_store(model)
    bare = UserStore(store.dim, metric="ip")
    bare.add(store.user_ids, store.get(store.user_ids))
    assert bare.model_fingerprint is None
    support = comparison_batch(data, episodes[0].support(4), other_model)
    with caplog.at_level(logging.DEBUG, logger="plural.query.personalize"):
        state = personalize(other_model, bare, support)
    assert state.n_comparisons == 4 and "no model fingerprint" in caplog.text
