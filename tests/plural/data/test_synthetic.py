"""Tests for plural.data.synthetic: generators whose true user rewards are known."""

import numpy as np
import pytest

from plural.data.container import PreferenceData
from plural.data.synthetic import (SyntheticData, make_length_preference, make_low_rank,
                                   make_mixture, make_noisy, make_population)

SMALL = dict(n_users=60, n_items=200, dim=16, comparisons_per_user=40)


def _mixture(**kwargs):
    return make_mixture(**{**SMALL, **kwargs})


def test_mixture_shapes_dtypes_and_meta():
    syn = _mixture(n_types=4, flip_rate=0.1)
    data, n = syn.data, 60 * 40
    assert isinstance(syn, SyntheticData)
    assert (data.n_users, data.n_items, data.n_comparisons, data.feature_dim) == (60, 200, n, 16)
    assert data.item_features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(data.item_features, axis=1), 1.0, atol=1e-5)
    assert syn.true_user_weights.shape == (60, 16)
    assert syn.user_type.shape == (60,) and syn.user_type.dtype == np.int64
    assert syn.flipped.shape == (n,) and syn.flipped.dtype == bool
    assert syn.clean_label.shape == (n,) and syn.clean_label.dtype == np.float32
    assert syn.oracle_margin().shape == (n,) and syn.oracle_margin(np.arange(5)).shape == (5,)
    assert (data.item_a != data.item_b).all()
    assert set(np.unique(data.label).tolist()) <= {0.0, 1.0}
    # default type shares 4:3:2:1, allotted exactly
    assert np.bincount(syn.user_type).tolist() == [24, 18, 12, 6]
    assert data.meta == {"n_types": 4, "majority_type_share": 0.4, "flip_rate": 0.1}


def test_mixture_weights_are_scaled_unit_type_directions():
    syn = _mixture(n_types=3, scale=5.0, type_weights=[1, 1, 1])
    w = syn.true_user_weights
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 5.0)
    for k in range(3):
        rows = w[syn.user_type == k]
        np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape))
    data = syn.data
    by_hand = np.einsum("nd,nd->n", w[data.user],
                        data.item_features[data.item_a].astype(np.float64)
                        - data.item_features[data.item_b])
    np.testing.assert_allclose(syn.oracle_margin(), by_hand, rtol=1e-6, atol=1e-9)


def test_shared_weight_one_gives_every_type_the_same_reward():
    syn = _mixture(shared_weight=1.0)
    np.testing.assert_allclose(syn.true_user_weights, syn.true_user_weights[0:1].repeat(60, 0))
    assert syn.oracle_accuracy() == syn.majority_type_accuracy()


@pytest.mark.parametrize("make", [_mixture, lambda **kw: make_low_rank(**{**SMALL, **kw})])
def test_generators_are_deterministic_per_seed(make):
    one, two, other = make(random_state=3), make(random_state=3), make(random_state=4)
    np.testing.assert_array_equal(one.data.label, two.data.label)
    np.testing.assert_array_equal(one.data.item_a, two.data.item_a)
    np.testing.assert_array_equal(one.data.item_features, two.data.item_features)
    np.testing.assert_array_equal(one.true_user_weights, two.true_user_weights)
    assert not np.array_equal(one.data.item_a, other.data.item_a)
    assert not np.allclose(one.true_user_weights, other.true_user_weights)


def test_oracle_beats_majority_type_when_types_differ():
    syn = make_mixture(n_types=3, n_users=150, n_items=200, dim=16, comparisons_per_user=40,
                       type_weights=[0.5, 0.3, 0.2], shared_weight=0.0, scale=8.0)
    oracle, majority = syn.oracle_accuracy(), syn.majority_type_accuracy()
    assert oracle > 0.8
    assert oracle - majority > 0.1
    # the majority type's own users are predicted equally well by both
    rows = np.flatnonzero(syn.user_type[syn.data.user] == 0)
    assert syn.majority_type_accuracy(rows) == syn.oracle_accuracy(rows)
    mask = np.zeros(len(syn.data), bool)
    mask[rows] = True
    assert syn.oracle_accuracy(mask) == syn.oracle_accuracy(rows)


def test_flips_lower_oracle_accuracy_as_expected_and_keep_clean_labels():
    clean = _mixture(n_users=200, scale=8.0)
    acc0 = clean.oracle_accuracy()
    previous, previous_flips = acc0, np.zeros(len(clean.data), bool)
    for rate in (0.1, 0.2, 0.4):
        syn = _mixture(n_users=200, scale=8.0, flip_rate=rate)
        np.testing.assert_array_equal(syn.clean_label, clean.data.label)
        np.testing.assert_array_equal(syn.data.label != syn.clean_label, syn.flipped)
        assert (syn.flipped >= previous_flips).all()  # one seed: flips are nested across rates
        acc = syn.oracle_accuracy()
        true_rate = syn.flipped.mean()
        assert acc < previous
        assert acc == pytest.approx(acc0 - true_rate * (2 * acc0 - 1), abs=0.02)
        previous, previous_flips = acc, syn.flipped


@pytest.mark.parametrize("rate", [0.05, 0.25])
def test_realised_flip_rate_is_close_to_the_asked_one(rate):
    syn = make_mixture(n_users=200, n_items=100, dim=8, comparisons_per_user=100, flip_rate=rate)
    assert abs(syn.flipped.mean() - rate) < 0.02
    noisy = make_noisy(make_low_rank(n_users=200, n_items=100, dim=8, comparisons_per_user=100),
                       rate, random_state=1)
    assert abs(noisy.flipped.mean() - rate) < 0.02
    assert noisy.data.meta["flip_rate"] == rate


def test_make_noisy_composes_with_existing_flips():
    base = _mixture(flip_rate=0.2)
    noisy = make_noisy(base, 0.3, random_state=5)
    changed = noisy.data.label != base.data.label
    np.testing.assert_array_equal(noisy.flipped, base.flipped ^ changed)
    np.testing.assert_array_equal(noisy.data.label != noisy.clean_label, noisy.flipped)
    assert noisy.data.meta["flip_rate"] == pytest.approx(0.2 + 0.3 - 2 * 0.2 * 0.3)
    assert base.data.meta["flip_rate"] == 0.2  # base untouched
    unchanged = make_noisy(base, 0.0)
    np.testing.assert_array_equal(unchanged.data.label, base.data.label)


def test_low_rank_users_differ_within_a_rank_r_subspace():
    syn = make_low_rank(n_users=80, n_items=200, dim=16, rank=3, comparisons_per_user=40)
    w = syn.true_user_weights
    assert w.shape == (80, 16) and syn.user_type is None
    assert np.linalg.matrix_rank(w - w.mean(axis=0), tol=1e-8) == 3
    assert syn.data.meta == {"rank": 3, "flip_rate": 0.0}
    assert syn.oracle_accuracy() > 0.6
    with pytest.raises(ValueError, match="needs user types"):
        syn.majority_type_accuracy()


@pytest.fixture(scope="module")
def lengths_syn():
    return make_length_preference(minority_share=0.3, n_users=80, comparisons_per_user=30,
                                  random_state=0)


def test_length_preference_minority_prefers_shorter(lengths_syn):
    syn, data = lengths_syn, lengths_syn.data
    assert data.meta["source"] == "ukpconvarg1" and data.meta["minority_share"] == 0.3
    assert np.bincount(syn.user_type).tolist() == [56, 24]
    assert syn.true_user_weights.shape == (80, 1) and syn.reward_features.shape == (data.n_items, 1)
    assert data.item_features is None and data.item_text is not None
    n_chars = np.array([len(t) for t in data.item_text])
    chosen = np.where(data.label == 1, data.item_a, data.item_b)
    other = np.where(data.label == 1, data.item_b, data.item_a)
    minority = syn.user_type[data.user] == 1
    differ = n_chars[chosen] != n_chars[other]
    shorter_won = n_chars[chosen] < n_chars[other]
    assert shorter_won[minority & differ].mean() > 0.75
    assert shorter_won[~minority & differ].mean() < 0.25
    assert syn.oracle_accuracy() > 0.75
    assert syn.oracle_accuracy() > syn.majority_type_accuracy() + 0.1


def test_length_preference_pairs_stay_within_a_debate(lengths_syn):
    from plural.data.bundled import load

    source, data = load("ukpconvarg1"), lengths_syn.data
    item_topic = np.full(source.n_items, -1)
    item_topic[source.item_a] = source.context
    item_topic[source.item_b] = source.context
    np.testing.assert_array_equal(item_topic[data.item_a], data.context)
    np.testing.assert_array_equal(item_topic[data.item_b], data.context)
    np.testing.assert_array_equal(data.item_ids, source.item_ids)
    assert len(np.unique(data.context)) > 20


def test_length_preference_without_contexts_pairs_any_items():
    texts = ["a", "bb bb", "ccc ccc ccc", "dddd " * 8, "e" * 60]
    source = PreferenceData.from_records(["x"], ["0"], ["1"], [1], item_ids=list("01234"),
                                         item_text=texts)
    syn = make_length_preference(source, minority_share=1.0, n_users=10, comparisons_per_user=50,
                                 scale=20.0)
    assert (syn.data.context == -1).all() and (syn.user_type == 1).all()
    assert len(syn.data.items_of()) == 5
    assert syn.majority_type_accuracy() == syn.oracle_accuracy() > 0.95


@pytest.mark.parametrize("call, message", [
    (lambda: make_mixture(n_types=0), "n_types must be >= 1, got 0"),
    (lambda: make_mixture(n_users=0), "n_users must be >= 1, got 0"),
    (lambda: make_mixture(n_items=1), "n_items must be >= 2, got 1"),
    (lambda: make_mixture(comparisons_per_user=0), "comparisons_per_user must be >= 1"),
    (lambda: make_mixture(type_weights=[1, 2]), "type_weights must have 4 entries"),
    (lambda: make_mixture(type_weights=[1, -1, 0, 0]), "non-negative"),
    (lambda: make_mixture(scale=0.0), "scale must be > 0"),
    (lambda: make_mixture(shared_weight=1.5), r"shared_weight must be in \[0, 1.0\]"),
    (lambda: make_mixture(flip_rate=0.6), r"flip_rate must be in \[0, 0.5\]"),
    (lambda: make_low_rank(dim=4, rank=4), r"rank must be < dim \(4\), got 4"),
    (lambda: make_low_rank(rank=0), "rank must be >= 1, got 0"),
    (lambda: make_noisy(make_mixture(**SMALL), -0.1), "flip_rate must be in"),
    (lambda: make_length_preference(minority_share=1.2), "minority_share must be in"),
    (lambda: make_length_preference(PreferenceData.from_records(["u"], ["a"], ["b"], [1])),
     "has no item_text"),
])
def test_arguments_are_validated(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_oracle_accuracy_needs_decisive_rows():
    syn = make_mixture(**SMALL)
    syn.data.label[:3] = 0.5
    with pytest.raises(ValueError, match="no decisive comparisons"):
        syn.oracle_accuracy(np.arange(3))


def test_make_population_is_unchanged():
    data, w = make_population(random_state=0)
    assert data.n_comparisons == 50 * 40 and w.shape == (16,)
    assert np.linalg.norm(w) == pytest.approx(3.0)
