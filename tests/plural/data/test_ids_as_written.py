"""Ids are kept exactly as the user wrote them, and nothing is silently wrong: files are read without
pandas' type guessing, a malformed JSONL line is named, ids that would merge (``1`` and ``"1"``) or
are missing raise, and repeated comparisons are counted in ``meta``."""

import json
import logging
import time

import numpy as np
import pandas as pd
import pytest

from plural.data.container import PreferenceData
from plural.data.converters import (from_file, from_pandas, from_rankings, from_ratings,
                                    read_table)

# ids pandas' guessing merges ("007" and "7"), converts ("1e3", "True") or drops ("NA", "null")
TRICKY = ["007", "7", "1e3", "True", "NA", "null"]


def _pair_rows():
    """Six comparisons, user and both items drawn from ``TRICKY``."""
    return [{"user_id": TRICKY[k], "item_a": TRICKY[k], "item_b": TRICKY[(k + 1) % 6],
             "label": "1" if k % 2 else "0.5"} for k in range(6)]


def _write_delimited(path, rows, sep):
    lines = [sep.join(rows[0])] + [sep.join(r.values()) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _check_tricky(data):
    assert sorted(data.user_ids.tolist()) == sorted(TRICKY)
    assert sorted(data.item_ids.tolist()) == sorted(TRICKY)
    assert [data.user_ids[u] for u in data.user] == TRICKY
    assert [data.item_ids[i] for i in data.item_a] == TRICKY
    assert data.label.tolist() == [0.5, 1, 0.5, 1, 0.5, 1]


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_delimited_ids_as_written(tmp_path, suffix, sep):
    path = tmp_path / f"pairs{suffix}"
    _write_delimited(path, _pair_rows(), sep)
    _check_tricky(from_file(path))
    table = read_table(path)
    assert table["user_id"].tolist() == TRICKY and table["label"].tolist()[:2] == ["0.5", "1"]


def test_csv_only_an_empty_cell_is_missing(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("user_id,item_a,item_b,label\nNA,x,y,1\n,x,y,0\n")
    assert read_table(path)["user_id"].isna().tolist() == [False, True]
    with pytest.raises(ValueError, match=r"row 1: 'user_id' is missing"):
        from_file(path)


def test_csv_still_takes_pandas_options(tmp_path):
    path = tmp_path / "p.csv"
    _write_delimited(path, _pair_rows(), ",")
    table = read_table(path, usecols=["user_id", "label"])
    assert table.columns.tolist() == ["user_id", "label"] and table["user_id"][0] == "007"
    assert read_table(path, dtype={"label": float})["label"].tolist()[:2] == [0.5, 1.0]


def _jsonl_lines():
    """The tricky ids quoted, and unquoted literals (numbers, true) where JSON allows them."""
    return ['{"user_id": "007", "item_a": "007", "item_b": "7", "label": 0.5}',
            '{"user_id": "7", "item_a": 7, "item_b": 1e3, "label": 1}',
            '{"user_id": "1e3", "item_a": "1e3", "item_b": true, "label": 0.5}',
            '{"user_id": "True", "item_a": "True", "item_b": "NA", "label": 1}',
            '{"user_id": "NA", "item_a": "NA", "item_b": "null", "label": 0.5}',
            '{"user_id": "null", "item_a": "null", "item_b": 1.50, "label": 1.0}']


def test_jsonl_ids_as_written(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(_jsonl_lines()) + "\n")
    data = from_file(path)
    assert sorted(data.user_ids.tolist()) == sorted(TRICKY)
    assert set(data.item_ids.tolist()) == {"007", "7", "1e3", "true", "True", "NA", "null", "1.50"}
    assert [data.item_ids[i] for i in data.item_b] == ["7", "1e3", "true", "NA", "null", "1.50"]
    assert [data.item_ids[i] for i in data.item_a][:2] == ["007", "7"]
    assert data.label.tolist() == [0.5, 1, 0.5, 1, 0.5, 1]


def test_jsonl_null_is_missing_and_a_quoted_null_is_an_id(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"user_id": "null", "item_a": "x", "item_b": "y", "label": 1}\n'
                    '{"user_id": null, "item_a": "x", "item_b": "y", "label": 1}\n')
    assert read_table(path)["user_id"].isna().tolist() == [False, True]
    with pytest.raises(ValueError, match=r"row 1: 'user_id' is missing"):
        from_file(path)


def test_json_records_and_columns_ids_as_written(tmp_path):
    (tmp_path / "records.json").write_text("[\n" + ",\n".join(_jsonl_lines()) + "\n]\n")
    columns = pd.DataFrame(_pair_rows())
    columns.to_json(tmp_path / "columns.json")  # pandas' default orient: {column: {index: value}}
    data = from_file(tmp_path / "records.json")
    assert sorted(data.user_ids.tolist()) == sorted(TRICKY)
    assert "1e3" in data.item_ids and "1000.0" not in data.item_ids
    _check_tricky(from_file(tmp_path / "columns.json"))
    (tmp_path / "lists.json").write_text(json.dumps({c: columns[c].tolist() for c in columns}))
    _check_tricky(from_file(tmp_path / "lists.json"))


def test_parquet_keeps_its_types(tmp_path):
    df = pd.DataFrame({"user_id": ["007", "7"], "item_a": [7, 8], "item_b": [9, 7], "label": [1, 0]})
    df.to_parquet(tmp_path / "p.parquet")
    data = from_file(tmp_path / "p.parquet")
    assert sorted(data.user_ids.tolist()) == ["007", "7"]
    assert sorted(data.item_ids.tolist()) == ["7", "8", "9"]


def test_item_table_file_keeps_ids_and_texts_as_written(tmp_path):
    pd.DataFrame(_pair_rows()).to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "items.csv").write_text(
        "item_id,text\n" + "".join(f"{i},text {i}\n" for i in TRICKY) + "0007,NA\n")
    data = from_file(tmp_path / "p.csv", item_table=tmp_path / "items.csv")
    assert data.item_ids.tolist() == TRICKY + ["0007"]
    assert data.item_text.tolist() == [f"text {i}" for i in TRICKY] + ["NA"]


def test_rankings_keep_ids_as_written(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"user_id": "u", "ranking": ["007", 7, 1e3]}\n'
                    '{"user_id": "v", "ranking": ["NA", "null", true]}\n')
    data = from_file(path, kind="rankings")
    assert sorted(data.item_ids.tolist()) == sorted(["007", "7", "1e3", "NA", "null", "true"])
    csv = tmp_path / "r.csv"
    pd.DataFrame({"user_id": ["u"], "ranking": ['["007", 7, 1e3]']}).to_csv(csv, index=False)
    assert sorted(from_file(csv, kind="rankings").item_ids.tolist()) == ["007", "1e3", "7"]
    with pytest.raises(ValueError, match=r"row 1: column 'ranking' is missing \(None\)"):
        from_rankings(pd.DataFrame({"user_id": ["u", "v"], "ranking": [["a", "b"], ["a", None]]}))
    with pytest.raises(ValueError, match=r"1 and .*'1'.*both read as the id '1'"):
        from_rankings(pd.DataFrame({"user_id": ["u", "v"], "ranking": [["a", 1], ["a", "1"]]}))


def test_numeric_columns_from_text(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,rating\n007,1,5\n007,2,3.5\n7,1,1e0\n7,2,4\n")
    data = from_file(path, kind="ratings")
    assert data.user_ids.tolist() == ["007", "7"] and len(data) == 2
    path.write_text("user_id,item_id,rating\n007,1,5\n007,2,NA\n")
    with pytest.raises(ValueError, match=r"row 1: rating 'NA' is missing or not a finite number"):
        from_file(path, kind="ratings")


# ---------------------------------------------------------------------------- malformed JSONL
def test_jsonl_bad_line_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"user_id": "u", "item_a": "x", "item_b": "y", "label": 1}\n\n'
                    '{"user_id": "u", "item_a": "x",\n')
    with pytest.raises(ValueError, match=r"data\.jsonl line 3: not valid JSON: "):
        read_table(path)
    path.write_text('{"user_id": "u", "item_a": "x", "item_b": "y", "label": 1}\n["u", "x"]\n')
    with pytest.raises(ValueError, match=r"data\.jsonl line 2: expected a JSON object"):
        read_table(path)


def test_jsonl_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('\n{"user_id": "u", "item_a": "x", "item_b": "y", "label": 1}\n   \n'
                    '{"user_id": "v", "item_a": "x", "item_b": "y", "label": 0}\n\n')
    assert read_table(path)["user_id"].tolist() == ["u", "v"]
    with pytest.raises(TypeError, match=r"dtype"):
        read_table(path, dtype=str)


# ---------------------------------------------------------------------------- from_records
def _records(**over):
    kw = dict(users=["ann", "bob"], items_a=["x", "y"], items_b=["y", "z"], labels=[1, 0])
    kw.update(over)
    return PreferenceData.from_records(**kw)


@pytest.mark.parametrize("over, message", [
    (dict(users=[1, "1"]), r"users row 0 holds 1 and users row 1 holds '1'.*both read as the id "
                           r"'1'; pass ids as strings"),
    (dict(users=[1, 1.0]), r"users row 0 holds 1 and users row 1 holds 1\.0.*equal numbers.*"
                           r"'1' and '1\.0'; pass ids as strings"),
    (dict(items_a=[1, "y"], items_b=["y", "1"]), r"items_a row 0 holds 1 and items_b row 1 holds "
                                                 r"'1'"),
    (dict(item_ids=["x", "y", "z"], items_a=["x", np.str_("y")], items_b=[np.int64(7), "z"]),
     r"unknown item id '7'"),
    (dict(users=["ann", None]), r"row 1: users is missing \(None\)"),
    (dict(items_b=["y", float("nan")]), r"row 1: items_b is missing \(nan\)"),
    (dict(items_a=[pd.NA, "y"]), r"row 0: items_a is missing \(<NA>\)"),
    (dict(user_ids=["ann", "bob", None]), r"row 2: user_ids is missing"),
    (dict(contexts=["c", float("nan")]), r"row 1: contexts is missing \(nan\); use None for no "
                                         r"context"),
    (dict(contexts=[1, "1"]), r"contexts row 0 holds 1 and contexts row 1 holds '1'"),
])
def test_from_records_ids_never_merge_or_go_missing(over, message):
    with pytest.raises(ValueError, match=message):
        _records(**over)


def test_from_records_plain_ids_still_work():
    data = _records(users=np.array([1, 22]), items_a=[np.str_("x"), "y"], items_b=[np.int64(3), 3],
                    contexts=["c", None])
    assert data.user_ids.tolist() == ["1", "22"] and data.item_ids.tolist() == ["3", "x", "y"]
    assert all(type(i) is str for i in data.item_ids) and data.context.tolist() == [0, -1]
    ints = _records(users=[5, 5], items_a=np.array([1, 2]), items_b=np.array([2, 3]),
                    item_ids=np.arange(1, 4))
    assert ints.item_ids.tolist() == ["1", "2", "3"] and ints.user_ids.tolist() == ["5"]


def test_from_records_stays_fast():
    n = 100_000
    rng = np.random.default_rng(0)
    users = np.array([f"u{k}" for k in rng.integers(0, 5000, n)], dtype=object)
    items = np.array([f"i{k}" for k in range(2000)], dtype=object)
    a = rng.integers(0, 2000, n)
    b = (a + rng.integers(1, 2000, n)) % 2000
    start = time.perf_counter()
    data = PreferenceData.from_records(users, items[a], items[b], rng.integers(0, 2, n),
                                       item_ids=items, contexts=[None] * n)
    assert len(data) == n and time.perf_counter() - start < 5


# ---------------------------------------------------------------------------- converters' ids
def test_converters_refuse_ids_that_would_merge():
    df = pd.DataFrame({"user_id": pd.Series([1, "1"], dtype=object), "item_a": ["x", "x"],
                       "item_b": ["y", "y"], "label": [1, 0]})
    with pytest.raises(ValueError, match=r"'user_id' row 0 holds 1 and .*'user_id' row 1 holds "
                                         r"'1'.*pass ids as strings"):
        from_pandas(df)
    df["user_id"] = ["u", "v"]
    df["item_b"] = pd.Series([2, "2"], dtype=object)
    with pytest.raises(ValueError, match=r"both read as the id '2'"):
        from_pandas(df)
    df["item_b"] = pd.Series(["y", 1], dtype=object)
    df["item_a"] = pd.Series(["1", "x"], dtype=object)
    with pytest.raises(ValueError, match=r"'item_b' row 1 holds 1"):
        from_pandas(df)
    ratings = pd.DataFrame({"user_id": ["u", "u"], "item_id": pd.Series([3, "3"], dtype=object),
                            "rating": [1, 5]})
    with pytest.raises(ValueError, match=r"both read as the id '3'"):
        from_ratings(ratings)
    ctx = pd.DataFrame({"user_id": ["u", "v"], "item_a": ["x", "x"], "item_b": ["y", "y"],
                        "label": [1, 0], "c": pd.Series([4, "4"], dtype=object)})
    with pytest.raises(ValueError, match=r"both read as the id '4'"):
        from_pandas(ctx, context="c")
    ctx["c"] = pd.Series([4, None], dtype=object)
    assert from_pandas(ctx, context="c").context_ids.tolist() == ["4"]


# ---------------------------------------------------------------------------- repeated rows
def test_duplicate_and_contradictory_comparisons_are_counted(caplog):
    df = pd.DataFrame([
        ("ann", "x", "y", 1.0, None),
        ("ann", "y", "x", 0.0, None),  # the same judgement as row 0: a duplicate
        ("ann", "x", "y", 0.0, None),  # contradicts row 0
        ("ann", "x", "y", 1.0, None),  # a duplicate again
        ("bob", "x", "y", 1.0, None),  # another user
        ("ann", "x", "y", 1.0, "q"),   # another context
        ("ann", "x", "z", 0.5, None),
        ("ann", "z", "x", 0.5, None),  # a tie either way round: a duplicate
        ("ann", "z", "x", 1.0, "q"),
    ], columns=["user_id", "item_a", "item_b", "label", "ctx"])
    with caplog.at_level(logging.INFO, logger="plural.data.converters"):
        data = from_pandas(df, context="ctx")
    assert len(data) == 9  # counted, not dropped
    assert data.meta["duplicate_comparisons"] == 3
    assert data.meta["contradictory_comparisons"] == 1
    assert "3 duplicate comparisons" in caplog.text and "1 contradictory" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="plural.data.converters"):
        clean = from_pandas(df.iloc[[0, 4, 5, 6]], context="ctx")
    assert clean.meta == {"duplicate_comparisons": 0, "contradictory_comparisons": 0, "split_mode": "comparisons"}
    assert "duplicate comparisons" not in caplog.text


def test_repeated_rankings_count_as_duplicates():
    df = pd.DataFrame({"user_id": ["u", "u", "v"],
                       "ranking": [["a", "b", "c"], ["a", "b", "c"], ["a", "b"]]})
    data = from_rankings(df)
    assert len(data) == 7 and data.meta["duplicate_comparisons"] == 3
    assert data.meta["contradictory_comparisons"] == 0
    flipped = from_rankings(df.assign(ranking=[["a", "b", "c"], ["c", "b", "a"], ["a", "b"]]))
    assert flipped.meta["contradictory_comparisons"] == 3
