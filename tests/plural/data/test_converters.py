"""Tests for plural.data.converters: every converter on tiny in-memory data, and every bad input."""

import numpy as np
import pandas as pd
import pytest

from plural.data.converters import (from_file, from_hf_dataset, from_pandas, from_rankings,
                                    from_ratings, from_trl, from_votes, read_table)


NO_REPEATS = {"duplicate_comparisons": 0, "contradictory_comparisons": 0}  # _build counts them


def _winners(data):
    """Set of (user, winner, loser) string triples, orientation removed."""
    out = set()
    for u, a, b, y in zip(data.user, data.item_a, data.item_b, data.label):
        win, lose = (a, b) if y == 1 else (b, a)
        out.add((data.user_ids[u], data.item_ids[win], data.item_ids[lose]))
    return out


@pytest.fixture
def pairs():
    return pd.DataFrame({"user_id": ["ann", "ann", "bob"], "item_a": ["x", "y", "x"],
                         "item_b": ["y", "z", "z"], "label": [1.0, 0.0, 0.5]})


@pytest.fixture
def items():
    return pd.DataFrame({"item_id": ["x", "y", "z", "w"], "text": ["ex", "why", "zed", None]})


@pytest.fixture
def trl_rows():
    return [{"user_id": "ann", "prompt": "p1", "chosen": "good", "rejected": "bad", "m": 2.0},
            {"user_id": "bob", "prompt": "p1", "chosen": "bad", "rejected": "worse", "m": 0.0},
            {"user_id": "bob", "prompt": "p2", "chosen": "good", "rejected": "worse", "m": 1.0}]


@pytest.fixture
def ratings():
    return pd.DataFrame({"user_id": ["ann"] * 4 + ["bob"] * 2 + ["cat"] * 2,
                         "item_id": ["a", "b", "c", "d", "a", "b", "a", "b"],
                         "rating": [5, 4, 2, 4.5, 3, 3, 1, 5]})


# ---------------------------------------------------------------------------- from_pandas
def test_from_pandas_basic(pairs):
    data = from_pandas(pairs)
    assert (data.n_comparisons, data.n_users, data.n_items) == (3, 2, 3)
    assert data.label.tolist() == [1.0, 0.0, 0.5]
    assert data.item_text is None and data.name == "pandas" and data.meta == {**NO_REPEATS, "split_mode": "comparisons"}  # few pairs per user


def test_from_pandas_item_table_weight_context(pairs, items):
    pairs["w"], pairs["ctx"] = [1.0, 2.0, 0.5], ["q1", None, "q2"]
    data = from_pandas(pairs, weight="w", context="ctx", item_table=items)
    assert data.n_items == 4 and data.item_text.tolist() == ["ex", "why", "zed", None]
    assert data.weight.tolist() == [1.0, 2.0, 0.5]
    assert data.context.tolist() == [0, -1, 1] and data.context_ids.tolist() == ["q1", "q2"]


def test_from_pandas_custom_columns(pairs):
    df = pairs.rename(columns={"user_id": "who", "label": "y"})
    assert from_pandas(df, user="who", label="y").n_users == 2


def test_from_pandas_missing_column(pairs):
    with pytest.raises(ValueError, match=r"column 'score' not found.*available columns.*user_id"):
        from_pandas(pairs, label="score")


def test_from_pandas_unknown_item_vs_item_table(pairs, items):
    with pytest.raises(ValueError, match=r"item 'z' is compared but not in item_table"):
        from_pandas(pairs, item_table=items[items.item_id != "z"])
    with pytest.raises(ValueError, match=r"column 'id' not found in item_table"):
        from_pandas(pairs, item_table=items, item_id="id")


def test_from_pandas_bad_labels(pairs):
    pairs.loc[1, "label"] = 2.0
    with pytest.raises(ValueError, match=r"row 1: label .*2\.0.* is not one of 0, 0\.5, 1"):
        from_pandas(pairs)
    pairs.loc[2, "label"] = np.nan
    with pytest.raises(ValueError, match=r"row 2: label nan is missing"):
        from_pandas(pairs)
    pairs["label"] = ["1", "1", "b"]
    with pytest.raises(ValueError, match=r"row 2: label 'b' is missing or not a finite number"):
        from_pandas(pairs)


def test_from_pandas_item_compared_with_itself(pairs):
    pairs.loc[2, "item_b"] = "x"
    with pytest.raises(ValueError, match=r"row 2: item 'x' is compared with itself"):
        from_pandas(pairs)


def test_from_pandas_missing_user(pairs):
    pairs.loc[1, "user_id"] = None
    with pytest.raises(ValueError, match=r"row 1: 'user_id' is missing"):
        from_pandas(pairs)


@pytest.mark.parametrize("convert,columns", [
    (from_pandas, ["user_id", "item_a", "item_b", "label"]),
    (from_trl, ["prompt", "chosen", "rejected", "user_id"]),
    (from_ratings, ["user_id", "item_id", "rating"]),
    (from_rankings, ["user_id", "ranking"]),
    (from_votes, ["user_id", "item_id", "vote"]),
])
def test_empty_input(convert, columns):
    with pytest.raises(ValueError, match="empty dataset"):
        convert(pd.DataFrame({c: [] for c in columns}))


# ---------------------------------------------------------------------------- from_trl
def test_from_trl_hashes_texts_and_prompts(trl_rows):
    data = from_trl(trl_rows)
    assert data.n_comparisons == 3 and data.n_items == 3  # identical texts are one item
    assert (data.label == 1).all()
    text = dict(zip(data.item_ids, data.item_text))
    assert sorted(text.values()) == ["bad", "good", "worse"]
    assert all(len(i) == 16 for i in data.item_ids)
    assert [text[data.item_ids[i]] for i in data.item_a] == ["good", "bad", "good"]
    assert [text[data.item_ids[i]] for i in data.item_b] == ["bad", "worse", "worse"]
    assert sorted(data.context_text.tolist()) == ["p1", "p2"]
    assert data.context[0] == data.context[1] != data.context[2]
    assert from_trl(pd.DataFrame(trl_rows)).item_ids.tolist() == data.item_ids.tolist()


def test_from_trl_margin_no_prompt_anonymous(trl_rows):
    rows = [{k: v for k, v in r.items() if k not in ("prompt", "user_id")} for r in trl_rows]
    data = from_trl(rows, weight="m", user_id=None)
    assert data.weight.tolist() == [2.0, 0.0, 1.0]
    assert data.user_ids.tolist() == ["anonymous"] and (data.context == -1).all()


def test_from_trl_leaves_a_trl_margin_column_unused_and_says_so(trl_rows, caplog):
    rows = [{**r, "margin": 3.0} for r in trl_rows]
    with caplog.at_level("WARNING", logger="plural.data.converters"):
        data = from_trl(rows)
    assert (data.weight == 1).all()
    assert "'margin' column, which plural does not use" in caplog.text
    assert from_trl(rows, weight="margin").weight.tolist() == [3.0, 3.0, 3.0]


def test_from_trl_conversational():
    rows = [{"user_id": "u", "chosen": [{"role": "assistant", "content": "hi"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}]
    assert from_trl(rows).item_text.tolist() == ["assistant: hi", "assistant: go away"]


def test_from_trl_bad_inputs(trl_rows):
    with pytest.raises(ValueError, match=r"column 'user_id' not found"):
        from_trl([{"chosen": "a", "rejected": "b"}])
    trl_rows[1]["rejected"] = "bad"
    with pytest.raises(ValueError, match=r"row 1: chosen and rejected are the same text"):
        from_trl(trl_rows)
    trl_rows[1]["rejected"], trl_rows[2]["m"] = "worse", -1.0
    with pytest.raises(ValueError, match=r"row 2: weight -1\.0 must be >= 0"):
        from_trl(trl_rows, weight="m")
    with pytest.raises(TypeError, match="no margin option: TRL's margin sits inside its reward loss"):
        from_trl(trl_rows, margin="m")
    trl_rows[0]["chosen"] = None
    with pytest.raises(ValueError, match=r"row 0: chosen must be text"):
        from_trl(trl_rows)
    with pytest.raises(ValueError, match="empty dataset"):
        from_trl([])
    with pytest.raises(TypeError, match="expected a DataFrame"):
        from_trl("not rows")


# ---------------------------------------------------------------------------- from_ratings
def test_from_ratings_pairs_and_meta(ratings):
    data = from_ratings(ratings, min_gap=1.0)
    # ann: a5 b4 c2 d4.5 -> a>b, a>c, b>c, d>c (a-d and b-d and ... gaps < 1); bob ties; cat b>a
    assert _winners(data) == {("ann", "a", "b"), ("ann", "a", "c"), ("ann", "b", "c"),
                              ("ann", "d", "c"), ("cat", "b", "a")}
    assert data.meta == {"dropped_duplicate_ratings": 0, "pairs_capped": 0,
                         "users_without_pairs": 1, "observations_without_comparisons": 2, **NO_REPEATS}


def test_from_ratings_min_gap(ratings):
    assert _winners(from_ratings(ratings, min_gap=2.5)) == {("ann", "a", "c"), ("ann", "d", "c"),
                                                            ("cat", "b", "a")}
    assert len(from_ratings(ratings, min_gap=0.5)) == 7  # adds a>d and d>b
    with pytest.raises(ValueError, match=r"min_gap must be > 0, got 0"):
        from_ratings(ratings, min_gap=0)


def test_from_ratings_duplicates_keep_last(ratings):
    extra = pd.DataFrame({"user_id": ["bob"], "item_id": ["a"], "rating": [5]})
    data = from_ratings(pd.concat([ratings, extra]))
    assert ("bob", "a", "b") in _winners(data)
    assert data.meta["dropped_duplicate_ratings"] == 1 and data.meta["users_without_pairs"] == 0


def _many_ratings(n_users=3, n_items=40, seed=1):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": np.repeat([f"u{i}" for i in range(n_users)], n_items),
                         "item_id": np.tile([f"i{j}" for j in range(n_items)], n_users),
                         "rating": rng.integers(1, 6, n_users * n_items)})


def test_from_ratings_orientation_gives_both_labels():
    data = from_ratings(_many_ratings())
    assert 0.3 < data.label.mean() < 0.7 and set(data.label.tolist()) == {0.0, 1.0}


def test_from_ratings_cap_is_honoured_and_reproducible():
    df = _many_ratings()
    full = from_ratings(df, max_pairs_per_user=None)
    capped = from_ratings(df, max_pairs_per_user=25, random_state=7)
    assert np.bincount(capped.user).tolist() == [25, 25, 25]
    assert capped.meta["pairs_capped"] == len(full) - 75
    assert _winners(capped) <= _winners(full)
    again = from_ratings(df, max_pairs_per_user=25, random_state=7)
    for col in ("user", "item_a", "item_b", "label"):
        assert np.array_equal(getattr(capped, col), getattr(again, col))
    other = from_ratings(df, max_pairs_per_user=25, random_state=8)
    assert _winners(other) != _winners(capped)
    with pytest.raises(ValueError, match=r"max_pairs_per_user must be None or an integer >= 1"):
        from_ratings(df, max_pairs_per_user=0)


def test_from_ratings_winner_is_higher_rated_at_scale():
    df = _many_ratings(n_users=2, n_items=3000, seed=3)
    data = from_ratings(df, max_pairs_per_user=1000, min_gap=2)
    rating = {(u, i): r for u, i, r in df.itertuples(index=False)}
    gaps = [rating[(u, w)] - rating[(u, l)] for u, w, l in _winners(data)]
    assert len(data) == 2000 and min(gaps) >= 2


def test_from_ratings_bad_inputs(ratings, items):
    with pytest.raises(ValueError, match=r"column 'stars' not found.*available columns"):
        from_ratings(ratings, rating="stars")
    ratings.loc[3, "rating"] = np.nan
    with pytest.raises(ValueError, match=r"row 3: rating nan is missing"):
        from_ratings(ratings)
    with pytest.raises(ValueError, match="empty dataset: 'ratings' yields no comparisons"):
        from_ratings(pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "rating": [1, 1]}))
    ratings.loc[3, "rating"] = 1
    with pytest.raises(ValueError, match=r"item 'c' is compared but not in item_table"):
        from_ratings(ratings, item_table=items[items.item_id != "c"].replace({"x": "a"}))


def test_from_ratings_item_table(ratings):
    table = pd.DataFrame({"item_id": list("abcde"), "text": list("ABCDE")})
    data = from_ratings(ratings, item_table=table)
    assert data.item_ids.tolist() == list("abcde") and data.item_text.tolist() == list("ABCDE")


# ---------------------------------------------------------------------------- from_rankings
def test_from_rankings_pairs_and_context():
    df = pd.DataFrame({"user_id": ["ann", "bob", "cat"], "ranking": [["a", "b", "c"], "c,a", ["a"]],
                       "topic": ["t1", "t2", "t3"]})
    data = from_rankings(df, context="topic")
    assert _winners(data) == {("ann", "a", "b"), ("ann", "a", "c"), ("ann", "b", "c"),
                              ("bob", "c", "a")}
    assert data.meta == {"short_rankings": 1, **NO_REPEATS}
    assert data.context_ids[data.context].tolist() == ["t1", "t1", "t1", "t2"]


def test_from_rankings_orientation_and_seed():
    df = pd.DataFrame({"user_id": ["u"], "ranking": [[f"i{k}" for k in range(20)]]})
    data = from_rankings(df, random_state=3)
    assert len(data) == 190 and set(data.label.tolist()) == {0.0, 1.0}
    assert np.array_equal(data.label, from_rankings(df, random_state=3).label)


def test_from_rankings_bad_inputs(items):
    with pytest.raises(ValueError, match=r"row 1: item 'b' appears more than once"):
        from_rankings(pd.DataFrame({"user_id": ["u", "v"],
                                    "ranking": [["a", "b"], ["b", "c", "b"]]}))
    with pytest.raises(ValueError, match=r"row 0: ranking must be a list"):
        from_rankings(pd.DataFrame({"user_id": ["u"], "ranking": [3]}))
    with pytest.raises(ValueError, match=r"row 0: ranking '\[a' is not a JSON array"):
        from_rankings(pd.DataFrame({"user_id": ["u"], "ranking": ["[a"]}))
    with pytest.raises(ValueError, match=r"column 'order' not found"):
        from_rankings(pd.DataFrame({"user_id": ["u"], "ranking": [["a", "b"]]}), ranking="order")
    with pytest.raises(ValueError, match=r"empty dataset.*short_rankings"):
        from_rankings(pd.DataFrame({"user_id": ["u"], "ranking": [["a"]]}))
    with pytest.raises(ValueError, match=r"item 'q' is compared but not in item_table"):
        from_rankings(pd.DataFrame({"user_id": ["u"], "ranking": [["x", "q"]]}), item_table=items)


# ---------------------------------------------------------------------------- from_votes
@pytest.fixture
def votes():
    return pd.DataFrame({
        "conv": ["c1"] * 6 + ["c2"] * 3,
        "user_id": ["ann", "ann", "ann", "ann", "bob", "bob", "ann", "ann", "ann"],
        "item_id": ["x", "y", "z", "w", "x", "y", "p", "q", "r"],
        "vote": [1, -1, -1, 0, 1, 0, 1, 0, -1]})


def test_from_votes_pairs_pass_drop_and_namespacing(votes):
    data = from_votes(votes, group="conv")
    assert _winners(data) == {("c1/ann", "x", "y"), ("c1/ann", "x", "z"), ("c2/ann", "p", "r")}
    assert data.meta == {"dropped_duplicate_votes": 0, "dropped_pass_votes": 3, "pairs_capped": 0,
                         "users_without_pairs": 1, "observations_without_comparisons": 1, **NO_REPEATS}
    flat = from_votes(votes)  # without the group column, ann is one voter across conversations
    assert flat.user_ids.tolist() == ["ann"] and len(flat) == 6


def test_from_votes_group_is_each_comparisons_context(votes):
    data = from_votes(votes, group="conv")
    assert data.context_ids.tolist() == ["c1", "c2"]
    pairs = {(data.user_ids[u], data.context_ids[c]) for u, c in zip(data.user, data.context)}
    assert pairs == {("c1/ann", "c1"), ("c2/ann", "c2")}
    # a duplicate vote dropped before pairing must not shift the groups of the votes after it
    mixed = pd.DataFrame({"conv": ["c1", "c2", "c1", "c1", "c2"],
                          "user_id": ["ann", "bob", "ann", "ann", "bob"],
                          "item_id": ["x", "p", "x", "y", "q"], "vote": [1, 1, 1, -1, -1]})
    shifted = from_votes(mixed, group="conv")
    assert shifted.meta["dropped_duplicate_votes"] == 1
    assert {(shifted.user_ids[u], shifted.context_ids[c]) for u, c in zip(shifted.user, shifted.context)} == \
        {("c1/ann", "c1"), ("c2/bob", "c2")}
    assert (from_votes(votes).context == -1).all()


def test_from_votes_duplicates_keep_last(votes):
    change = pd.DataFrame({"conv": ["c1"], "user_id": ["ann"], "item_id": ["y"], "vote": [0]})
    data = from_votes(pd.concat([votes, change]), group="conv")
    assert _winners(data) == {("c1/ann", "x", "z"), ("c2/ann", "p", "r")}
    assert data.meta["dropped_duplicate_votes"] == 1 and data.meta["dropped_pass_votes"] == 4


def test_from_votes_cap_and_orientation():
    df = pd.DataFrame({"user_id": ["u"] * 60, "item_id": [f"i{k}" for k in range(60)],
                       "vote": [1] * 30 + [-1] * 30})
    data = from_votes(df, max_pairs_per_user=100, random_state=5)
    assert len(data) == 100 and data.meta["pairs_capped"] == 800
    assert set(data.label.tolist()) == {0.0, 1.0}
    assert all(int(w[1:]) < 30 <= int(l[1:]) for _, w, l in _winners(data))
    again = from_votes(df, max_pairs_per_user=100, random_state=5)
    assert np.array_equal(data.item_a, again.item_a) and np.array_equal(data.label, again.label)


def test_from_votes_bad_inputs(votes):
    votes.loc[4, "vote"] = 2
    with pytest.raises(ValueError, match=r"row 4: vote 2 is not one of -1 \(disagree\), 0"):
        from_votes(votes)
    with pytest.raises(ValueError, match=r"column 'topic' not found"):
        from_votes(votes, group="topic")
    with pytest.raises(ValueError, match="empty dataset: 'votes' yields no comparisons"):
        from_votes(pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "vote": [1, 0]}))


# ---------------------------------------------------------------------------- files and hubs
def test_from_file_csv_jsonl_parquet(tmp_path, pairs, items, trl_rows, votes):
    pairs.to_csv(tmp_path / "p.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    data = from_file(tmp_path / "p.csv", item_table=tmp_path / "items.csv")
    assert data.name == "p" and len(data) == 3 and data.n_items == 4
    pd.DataFrame(trl_rows).to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    assert len(from_file(tmp_path / "t.jsonl", kind="trl", weight="m")) == 3
    votes.to_parquet(tmp_path / "v.parquet")
    assert len(from_file(tmp_path / "v.parquet", kind="votes", group="conv", name="polis")) == 3
    rankings = pd.DataFrame({"user_id": ["u"], "ranking": [["a", "b", "c"]]})
    rankings.to_parquet(tmp_path / "r.parquet")
    assert len(from_file(tmp_path / "r.parquet", kind="rankings")) == 3
    rankings.to_json(tmp_path / "r.json", orient="records")
    assert len(from_file(tmp_path / "r.json", kind="rankings")) == 3
    pairs.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    assert read_table(tmp_path / "p.tsv").shape == (3, 4)


def test_file_errors(tmp_path, pairs):
    with pytest.raises(ValueError, match=r"suffix '\.xlsx' is not one of.*\.csv.*\.parquet"):
        read_table(tmp_path / "p.xlsx")
    pairs.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(ValueError, match=r"kind must be one of.*got 'edges'"):
        from_file(tmp_path / "p.csv", kind="edges")


def test_from_hf_dataset(trl_rows):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({k: [r[k] for r in trl_rows] for k in trl_rows[0]})
    data = from_hf_dataset(ds, weight="m")
    assert len(data) == 3 and data.weight.tolist() == [2.0, 0.0, 1.0]
    assert np.array_equal(data.item_ids, from_trl(trl_rows).item_ids)
    ratings = datasets.Dataset.from_dict({"user_id": ["u", "u"], "item_id": ["a", "b"],
                                          "rating": [1, 3]})
    assert len(from_hf_dataset(ratings, kind="ratings")) == 1
    with pytest.raises(TypeError, match=r"pick a split"):
        from_hf_dataset(datasets.DatasetDict({"train": ds}))
