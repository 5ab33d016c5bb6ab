import numpy as np
import pytest

from plural.data.container import PreferenceData


def tiny(**over):
    kw = dict(users=["ann", "bob", "ann"], items_a=["x", "y", "z"], items_b=["y", "z", "x"],
              labels=[1, 0, 0.5], item_ids=["x", "y", "z"])
    kw.update(over)
    return PreferenceData.from_records(**kw)


def test_from_records_builds_vocabularies():
    d = tiny(item_text=["tx", "ty", "tz"])
    assert (d.n_comparisons, d.n_users, d.n_items) == (3, 2, 3)
    assert list(d.user_ids[d.user]) == ["ann", "bob", "ann"]
    assert d.item_text[d.item_a[1]] == "ty"
    assert d.weight.tolist() == [1, 1, 1] and d.context.tolist() == [-1, -1, -1]
    assert "ties=1" in repr(d)


def test_contexts_and_pandas_round_trip():
    d = tiny(contexts=["p1", None, "p2"], context_text=["prompt one", "prompt two"])
    df = d.to_pandas()
    assert df["context"].isna().tolist() == [False, True, False]
    assert df["context"][0] == "p1" and df["context"][2] == "p2"
    assert df["item_b"].tolist() == ["y", "z", "x"]


@pytest.mark.parametrize("over, message", [
    (dict(items_a=["x", "q", "z"]), "row 1: unknown item id 'q'"),
    (dict(labels=[1, 2, 0]), "row 1: label 2.0 is not one of"),
    (dict(labels=[1, float("nan"), 0]), "row 1: label nan"),
    (dict(items_b=["y", "y", "x"]), "row 1: item 'y' is compared with itself"),
    (dict(users=[], items_a=[], items_b=[], labels=[]), "empty dataset"),
    (dict(item_features=np.array([[0.0], [np.nan], [1.0]])), "item row 1: features contain NaN"),
    (dict(item_features=np.array([[0.0], [np.inf], [1.0]])), "item row 1"),
    (dict(item_features=np.zeros((2, 4))), "item features have 2 rows but there are 3 items"),
    (dict(weights=[1, -1, 1]), "row 1: weight"),
    (dict(user_ids=["ann"]), "row 1: unknown user id 'bob'"),
    (dict(contexts=["p1", "p9", None], context_ids=["p1"]), "row 1: unknown context id 'p9'"),
    (dict(item_ids=["x", "y", "x"]), "item ids must be unique"),
    (dict(labels=[1, 0]), "labels has 2 rows"),
])
def test_bad_input_names_the_row(over, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        tiny(**over)


def test_feature_dimension_mismatch_on_with_features():
    d = tiny(item_features=np.zeros((3, 4)))
    from plural.data.container import check_features

    with pytest.raises(ValueError, match="dimension 4, expected 8"):
        check_features(d.item_features, 3, dim=8)
    with pytest.raises(ValueError, match="2-d"):
        d.with_features(np.zeros(3))


def test_subset_keeps_vocabulary_and_drop_ties_counts():
    d = tiny()
    s = d.subset(np.array([False, True, True]))
    assert s.n_users == d.n_users and len(s) == 2
    kept, n = d.drop_ties()
    assert n == 1 and len(kept) == 2 and kept.meta["dropped_ties"] == 1
    assert d.drop_ties()[0].drop_ties()[1] == 0
    with pytest.raises(ValueError, match="empty"):
        d.subset(np.zeros(3, bool))


def test_rows_by_user():
    d = tiny()
    by = d.rows_by_user()
    ann = int(np.flatnonzero(d.user_ids == "ann")[0])
    assert by[ann].tolist() == [0, 2]
