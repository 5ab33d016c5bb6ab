import numpy as np
import pytest

from plural.data.splits import make_episodes, split_comparisons, split_users


def test_split_users_is_reproducible_and_disjoint(planted):
    data, _ = planted
    seen, unseen = split_users(data, 0.2, random_state=3)
    seen2, unseen2 = split_users(data, 0.2, random_state=3)
    assert np.array_equal(seen, seen2) and np.array_equal(unseen, unseen2)
    assert len(unseen) == 12 and not set(seen) & set(unseen)
    assert not np.array_equal(unseen, split_users(data, 0.2, random_state=4)[1])


def test_item_disjoint_split_keeps_test_items_out_of_training(planted):
    data, _ = planted
    sp = split_comparisons(data, mode="items", random_state=0)
    assert sp.n_dropped > 0
    assert len(sp.train) + len(sp.val) + len(sp.test) + sp.n_dropped == len(data)
    for u, rows in data.rows_by_user().items():
        train_items = set(data.items_of(np.intersect1d(rows, sp.train)).tolist())
        test_rows = np.intersect1d(rows, sp.test)
        if len(test_rows):
            assert not train_items & set(data.items_of(test_rows).tolist())
    again = split_comparisons(data, mode="items", random_state=0)
    assert np.array_equal(sp.test, again.test)


def test_item_split_validation_pairs_hold_an_unjudged_item_and_no_test_item(planted):
    """Validation is every pair with a validation item and no test item (also against a training
    item), so it is far larger than the pairs of two validation items alone; train and test are
    drawn as they always were."""
    data, _ = planted
    sp = split_comparisons(data, mode="items", random_state=0)
    n_cross = 0
    for u, rows in data.rows_by_user().items():
        train_items = set(data.items_of(np.intersect1d(rows, sp.train)).tolist())
        test_items = set(data.items_of(np.intersect1d(rows, sp.test)).tolist())
        for r in np.intersect1d(rows, sp.val).tolist():
            pair = {int(data.item_a[r]), int(data.item_b[r])}
            assert not pair & test_items and not pair <= train_items
            n_cross += bool(pair & train_items)
    assert n_cross > 0 and len(sp.val) > 0.2 * len(sp.train)  # two validation items alone: ~1/50 of train
    assert len(sp.train) + len(sp.val) + len(sp.test) + sp.n_dropped == len(data)


def test_comparison_split_uses_every_row(planted):
    data, _ = planted
    sp = split_comparisons(data, mode="comparisons", test_fraction=0.2, val_fraction=0.1)
    assert sp.n_dropped == 0
    assert len(np.unique(np.concatenate([sp.train, sp.val, sp.test]))) == len(data)
    assert len(sp.test) == pytest.approx(0.2 * len(data), abs=data.n_users)


def test_episodes_are_item_disjoint_nested_and_seeded(planted):
    data, _ = planted
    _, unseen = split_users(data)
    eps = make_episodes(data, unseen, n_draws=3, min_query=5, random_state=1)
    assert {e.draw for e in eps} == {0, 1, 2}
    for e in eps:
        support_items = set(data.items_of(e.support_pool).tolist())
        assert not support_items & set(data.items_of(e.query).tolist())
        assert len(e.query) >= 5
        assert np.array_equal(e.support(2), e.support(5)[:2])
        assert set(data.user[e.query]) == {e.user}
    again = make_episodes(data, unseen, n_draws=3, min_query=5, random_state=1)
    assert all(np.array_equal(a.query, b.query) for a, b in zip(eps, again))
    with pytest.raises(ValueError, match="support comparisons"):
        eps[0].support(len(eps[0].support_pool) + 1)


def test_random_episodes_and_bad_arguments(planted):
    data, _ = planted
    eps = make_episodes(data, [0, 1], mode="comparisons", n_draws=1, max_query=10)
    assert all(len(e.query) == 10 for e in eps)
    with pytest.raises(ValueError, match="mode"):
        split_comparisons(data, mode="random")
    with pytest.raises(ValueError, match="unseen_fraction"):
        split_users(data, 1.5)
