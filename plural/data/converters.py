"""Converters from common preference formats to :class:`~plural.data.container.PreferenceData`.

One function per shape of raw data: :func:`from_pandas` (one comparison a row), :func:`from_trl`
(``prompt`` / ``chosen`` / ``rejected``), :func:`from_ratings`, :func:`from_rankings` and
:func:`from_votes` (agree / disagree / pass, as in Polis); :func:`from_file` and
:func:`from_hf_dataset` read a table and dispatch to one of them. Pairs derived from ratings,
rankings and votes are stored in a random, seeded orientation, so labels mix 1 and 0 and a model
cannot learn that "the first item wins". Every row dropped on purpose is counted in ``meta``, and
so are repeated comparisons, which are kept (``duplicate_comparisons``, ``contradictory_comparisons``).

Ids are kept exactly as written: files are read without type guessing (:func:`read_table`), so
``007`` and ``7`` are two ids and ``NA`` is an id, and two different values that would read as one
id (``1`` and ``"1"`` in an object column) raise, as does a missing one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from plural.data.container import PreferenceData
from plural.data.observations import levels_of
from plural.data.readers import loads_as_written, read_table
from plural.data.ids import read_ids, show_value

logger = logging.getLogger(__name__)

ANONYMOUS_USER = "anonymous"  # the user of every TRL row when user_id=None

FEW_COMPARISONS_PER_USER = 40
"""``from_pandas`` data whose median user has fewer comparisons than this is split by comparison
(``meta["split_mode"] = "comparisons"``). The reason is the few-shot query: an item-disjoint
episode keeps the comparisons inside one half of the user's items, about a quarter of them, so a
user needs about ``4 * min_query`` = 40 comparisons to be scored at all (``make_episodes``); split
by comparison, half of them are the query."""


# ---------------------------------------------------------------------------- shared helpers
def _frame(data: Any, name: str) -> pd.DataFrame:
    """``data`` (DataFrame, list of dicts, or anything with ``.to_pandas()``) as a non-empty frame
    indexed 0..n-1, so row numbers in error messages are positions."""
    df = data.to_pandas() if hasattr(data, "to_pandas") else data
    df = pd.DataFrame(list(df)) if isinstance(df, (list, tuple)) else df
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a DataFrame, a list of dicts or an object with .to_pandas(), "
                        f"got {type(data).__name__}")
    if len(df) == 0:
        raise ValueError(f"empty dataset: {name!r} has no rows")
    return df.reset_index(drop=True)


def _check_columns(df: pd.DataFrame, columns: list[str | None], what: str) -> None:
    """Raise naming the first of ``columns`` (``None`` entries skipped) missing from ``df``."""
    for col in columns:
        if col is not None and col not in df.columns:
            raise ValueError(f"column {col!r} not found in {what}; available columns: "
                             f"{[str(c) for c in df.columns]}")


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _id_columns(df: pd.DataFrame, cols: list[str]) -> list[np.ndarray]:
    """Columns ``cols`` of one vocabulary, each as an ``(n,)`` object array of ids as written
    (:func:`~plural.data.container.read_ids`): a missing value names its row, and two different
    values reading as one id (``1`` and ``"1"`` in an object column) raise naming both."""
    for col in cols:
        null = df[col].isna().to_numpy()
        if null.any():
            raise ValueError(f"row {int(np.flatnonzero(null)[0])}: {col!r} is missing")
    return read_ids([(f"column {col!r}", df[col]) for col in cols])


def _ids(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` as an ``(n,)`` object array of ids as written (see :func:`_id_columns`)."""
    return _id_columns(df, [col])[0]


def _numbers(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` as ``(n,)`` float64; a missing, non-numeric or infinite cell names its row."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"row {bad[0]}: {col} {show_value(df[col].iloc[bad[0]])} is missing or not "
                         "a finite number")
    return values


def _contexts(df: pd.DataFrame, col: str | None) -> np.ndarray | None:
    """Column ``col`` as ``(n,)`` context ids as written, None where missing (no context)."""
    if col is None:
        return None
    values = df[col].to_numpy(dtype=object, copy=True)
    values[pd.isna(values)] = None
    return read_ids([(f"column {col!r}", values)], none_ok=(f"column {col!r}",))[0]


def _keep_last(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``(n,)`` bool mask keeping each (user, item)'s last row; rows are in time order."""
    return ~pd.DataFrame({"u": users, "i": items}).duplicated(keep="last").to_numpy()


def _orient(winners: np.ndarray, losers: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs in random order: ``(items_a, items_b, labels)``, label 1 where ``item_a`` won."""
    flip = rng.random(len(winners)) < 0.5
    return np.where(flip, losers, winners), np.where(flip, winners, losers), np.where(flip, 0., 1.)


def _user_pairs(users: np.ndarray, items: np.ndarray, pair_space: Callable, *, cap: int | None,
                random_state: int | None, name: str, meta: dict, **item_options) -> PreferenceData:
    """Sample pairs within each user, orient them at random and build the data.

    Args:
        users, items: ``(n_rows,)`` user and item id of each row.
        pair_space: given one user's rows, returns ``(n_pairs, to_rows)``, where ``to_rows`` maps
            flat pair indices ``(k,)`` to ``(winner rows (k,), loser rows (k,))``. Only sampled
            pairs are materialised, so a user with thousands of items costs O(cap).
        cap: most pairs per user (uniform without replacement), or None for all.
        meta: provenance; ``pairs_capped`` and ``users_without_pairs`` are added.
    """
    if cap is not None and (int(cap) != cap or cap < 1):
        raise ValueError(f"max_pairs_per_user must be None or an integer >= 1, got {cap!r}")
    rng = np.random.default_rng(random_state)
    out_users, winners, losers = [np.empty(0, object)], [np.empty(0, int)], [np.empty(0, int)]
    meta.update(pairs_capped=0, users_without_pairs=0)
    codes, keys = pd.factorize(users, sort=True)
    order = np.argsort(codes, kind="stable")
    for key, rows in zip(keys, np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)):
        total, to_rows = pair_space(rows)
        if total == 0:
            meta["users_without_pairs"] += 1
            continue
        flat = np.arange(total)
        if cap is not None and total > cap:
            flat = np.sort(rng.choice(total, size=int(cap), replace=False))
            meta["pairs_capped"] += total - int(cap)
        w, l = to_rows(flat)
        out_users.append(np.full(len(w), key, dtype=object))
        winners.append(w)
        losers.append(l)
    a, b, labels = _orient(items[np.concatenate(winners)], items[np.concatenate(losers)], rng)
    return _build(np.concatenate(out_users), a, b, labels, name=name, meta=meta, **item_options)


def _item_table(item_table: pd.DataFrame | None, item_id: str, item_text: str,
                used: np.ndarray) -> tuple[np.ndarray | None, list | None]:
    """``(item ids, texts or None)`` from ``item_table``; every id in ``used`` must be in it."""
    if item_table is None:
        return None, None
    _check_columns(item_table, [item_id], "item_table")
    ids = _ids(item_table, item_id)
    missing = pd.unique(used[~pd.Index(used).isin(ids)])  # hash-based: np.isin on objects is quadratic
    if len(missing):
        raise ValueError(f"item {missing[0]!r} is compared but not in item_table "
                         f"({len(missing)} such items)")
    if item_text not in item_table.columns:
        return ids, None
    return ids, [None if _is_missing(t) else str(t) for t in item_table[item_text]]


def _count_repeats(data: PreferenceData) -> tuple[int, int]:
    """``(duplicates, contradictions)`` among the comparisons, in row order.

    A row is a duplicate if an earlier row has its user, unordered item pair, context and
    judgement (``(a, b, label 1)`` and ``(b, a, label 0)`` are one judgement), and contradictory if
    earlier rows have its user, pair and context but none of them its judgement.
    """
    lo, hi = np.minimum(data.item_a, data.item_b), np.maximum(data.item_a, data.item_b)
    prefers_lo = np.where(data.item_a == lo, data.label, 1 - data.label)  # 0.5 either way round
    columns = (data.user, lo, hi, data.context + 1, np.rint(2 * prefers_lo).astype(np.int64))
    n_contexts = 0 if data.context_ids is None else len(data.context_ids)
    dims = (data.n_users, data.n_items, data.n_items, n_contexts + 1, 3)
    if np.prod(dims, dtype=object) < 2 ** 63:  # one int64 key a row: hashing is fast
        key = np.ravel_multi_index(columns, dims)
        repeated, same = pd.Series(key // 3).duplicated(), pd.Series(key).duplicated()
    else:
        rows = pd.DataFrame(dict(zip(("user", "lo", "hi", "context", "judgement"), columns)))
        repeated, same = rows.iloc[:, :4].duplicated(), rows.duplicated()
    repeated, same = repeated.to_numpy(), same.to_numpy()
    return int(same.sum()), int((repeated & ~same).sum())


def _build(users, items_a, items_b, labels, *, name: str, meta: dict, item_table=None,
           item_id: str = "item_id", item_text: str = "text", **records) -> PreferenceData:
    """Attach the item table, construct (the container validates every row), count repeated
    comparisons and log.

    ``meta`` gains ``duplicate_comparisons`` and ``contradictory_comparisons``
    (:func:`_count_repeats`); such rows are kept.
    """
    if len(users) == 0:
        raise ValueError(f"empty dataset: {name!r} yields no comparisons ({meta})")
    used = np.concatenate([np.asarray(items_a, object), np.asarray(items_b, object)])
    ids, text = _item_table(item_table, item_id, item_text, used)
    data = PreferenceData.from_records(users, items_a, items_b, labels, item_ids=ids,
                                       item_text=text, name=name, meta=meta, **records)
    duplicates, contradictions = _count_repeats(data)
    data.meta.update(duplicate_comparisons=duplicates, contradictory_comparisons=contradictions)
    if duplicates or contradictions:
        logger.info("%s: %d duplicate comparisons (an earlier row's user, item pair, context and "
                    "judgement) and %d contradictory ones (an earlier row's user, pair and "
                    "context, another judgement), all kept", name, duplicates, contradictions)
    logger.info("%s: %d comparisons from %d users over %d items%s", name, len(data),
                data.n_users, data.n_items, f"; {meta}" if meta else "")
    return data


def _attach_observations(data: PreferenceData, users: np.ndarray, items: np.ndarray, levels: np.ndarray,
                         scale: tuple, contexts: np.ndarray | None = None) -> PreferenceData:
    """``data`` with the absolute feedback it was made from (:mod:`plural.data.observations`): one
    observation per row of ``users``/``items`` at ``levels`` of ``scale``. Rows of users with no
    comparison (they can follow none) are left out and counted in ``meta`` as
    ``observations_without_comparisons``."""
    known = pd.Index(data.user_ids).get_indexer(users) >= 0
    known &= pd.Index(data.item_ids).get_indexer(items) >= 0
    data.meta["observations_without_comparisons"] = int((~known).sum())
    return data.with_observations(users[known], items[known], levels[known], len(scale), level_names=scale,
                                  contexts=None if contexts is None else contexts[known])


# ---------------------------------------------------------------------------- converters
def from_pandas(df: pd.DataFrame, *, user: str = "user_id", item_a: str = "item_a",
                item_b: str = "item_b", label: str = "label", weight: str | None = None,
                context: str | None = None, item_table: pd.DataFrame | None = None,
                item_id: str = "item_id", item_text: str = "text",
                name: str = "pandas") -> PreferenceData:
    """Comparisons given one per row.

    Args:
        df: ``(n, ...)`` frame; ``label`` is numeric: 1 = ``item_a`` preferred, 0 = ``item_b``,
            0.5 = tie.
        user, item_a, item_b, label: column names.
        weight: optional column of non-negative weights.
        context: optional column of context ids (missing values mean no context).
        item_table: optional frame with an ``item_id`` column and optionally an ``item_text``
            column; without it the items are those compared, without text.
        name: the dataset's name.

    Returns:
        The comparisons. Natively pairwise data whose users judged a handful of pairs each (the
        median user fewer than :data:`FEW_COMPARISONS_PER_USER`, as in UKPConvArg1) records
        ``meta["split_mode"] = "comparisons"``, the protocol's split for it; with more per user the
        key is left out and the split is item-disjoint (``"items"``), since a user's many pairs then
        share items and a random split would let a model re-rank items the user already judged.
        ``split_comparisons(mode=...)``, ``plural train --split`` and ``plural bench --split``
        override it.

    Example:
        >>> df = pd.DataFrame({"user_id": ["u"], "item_a": ["x"], "item_b": ["y"], "label": [1]})
        >>> from_pandas(df).n_comparisons
        1
    """
    df = _frame(df, name)
    _check_columns(df, [user, item_a, item_b, label, weight, context], "data")
    data = _build(_ids(df, user), *_id_columns(df, [item_a, item_b]), _numbers(df, label),
                  weights=None if weight is None else _numbers(df, weight),
                  contexts=_contexts(df, context), item_table=item_table, item_id=item_id,
                  item_text=item_text, name=name, meta={})
    per_user = np.bincount(data.user)
    if np.median(per_user[per_user > 0]) < FEW_COMPARISONS_PER_USER:
        data.meta["split_mode"] = "comparisons"
    return data


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _as_text(value: Any, row: int, col: str) -> str:
    """A TRL cell as text: a string, or a conversational list of ``{"role", "content"}`` messages
    rendered one ``role: content`` line each."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)) and all(
            isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in value)
    raise ValueError(f"row {row}: {col} must be text or a list of chat messages, got {value!r}")


def from_trl(rows: Any, *, prompt: str = "prompt", chosen: str = "chosen",
             rejected: str = "rejected", user_id: str | None = "user_id", weight: str | None = None,
             name: str = "trl", **unknown) -> PreferenceData:
    """Rows in TRL's preference format: ``chosen`` is ``item_a``, ``rejected`` ``item_b``, label 1.

    Item ids are the first 16 hex digits of the SHA-1 of the text, so identical texts are one item
    and ``item_text`` holds the text; the prompt likewise becomes the comparison's context.

    Args:
        rows: a DataFrame, a list of dicts, or anything with ``.to_pandas()`` (a Dataset).
        prompt: prompt column; if absent from the rows, comparisons have no context.
        chosen, rejected: columns of text (or conversational lists of messages).
        user_id: user column; ``None`` attributes every row to the user ``"anonymous"``.
        weight: optional column of non-negative comparison weights (how much a row counts in the
            likelihood). TRL's ``margin`` column is something else, a margin inside the reward
            loss (``-log sigmoid(r_chosen - r_rejected - margin)``), which plural's models do not
            have: a ``margin`` column is left unused with a warning, and ``weight="margin"`` reads it
            as weights where that is what it means.
        name: the dataset's name.

    Returns:
        The comparisons, with ``meta["split_mode"] = "comparisons"`` always: a response is free
        text, which two rows rarely share, so an item-disjoint split would drop about half of the
        rows (those whose two responses fall in different item blocks) and hold out nothing a
        comparison split does not; and without ``user_id`` all rows are one user's.
    """
    if "margin" in unknown:
        raise TypeError("from_trl has no margin option: TRL's margin sits inside its reward loss, which "
                        "plural's models do not have; pass weight='COLUMN' for comparison weights")
    if unknown:
        raise TypeError(f"from_trl got unexpected options: {', '.join(sorted(unknown))}")
    df = _frame(rows, name)
    _check_columns(df, [chosen, rejected, user_id, weight], "TRL rows")
    if "margin" in df.columns and weight != "margin":
        logger.warning("%s: the rows have a 'margin' column, which plural does not use (TRL adds it inside "
                       "its reward loss); weight='margin' reads it as comparison weights", name)
    good = [_as_text(v, r, chosen) for r, v in enumerate(df[chosen])]
    bad = [_as_text(v, r, rejected) for r, v in enumerate(df[rejected])]
    same = next((r for r, (g, b) in enumerate(zip(good, bad)) if g == b), None)
    if same is not None:
        raise ValueError(f"row {same}: chosen and rejected are the same text, so the item is "
                         "compared with itself")
    table = {_text_hash(t): t for t in good + bad}
    users = [ANONYMOUS_USER] * len(df) if user_id is None else _ids(df, user_id)
    records: dict = {"weights": None if weight is None else _numbers(df, weight)}
    if weight is not None and (records["weights"] < 0).any():
        row = int(np.flatnonzero(records["weights"] < 0)[0])
        raise ValueError(f"row {row}: weight {show_value(records['weights'][row])} must be >= 0")
    if prompt is not None and prompt in df.columns:
        texts = [None if _is_missing(v) else _as_text(v, r, prompt)
                 for r, v in enumerate(df[prompt])]
        contexts = {_text_hash(t): t for t in texts if t is not None}
        records.update(contexts=[None if t is None else _text_hash(t) for t in texts],
                       context_ids=list(contexts), context_text=list(contexts.values()))
    else:
        logger.info("%s: no %r column, comparisons have no context", name, prompt)
    items = pd.DataFrame({"item_id": list(table), "text": list(table.values())})
    data = _build(users, [_text_hash(t) for t in good], [_text_hash(t) for t in bad],
                  np.ones(len(df)), item_table=items, name=name, meta={}, **records)
    data.meta["split_mode"] = "comparisons"
    return data


def from_ratings(df: pd.DataFrame, *, user: str = "user_id", item: str = "item_id",
                 rating: str = "rating", min_gap: float = 1.0, max_pairs_per_user: int | None = 500,
                 item_table: pd.DataFrame | None = None, item_id: str = "item_id",
                 item_text: str = "text", random_state: int | None = 0,
                 name: str = "ratings", observations: bool = True,
                 scale: Sequence[float] | None = None) -> PreferenceData:
    """Within each user, two items whose ratings differ by at least ``min_gap`` form a comparison
    in which the higher-rated item is preferred; pairs are sampled uniformly among those that
    qualify (never listing them all) and stored in a random orientation.

    Args:
        df: ``(n_ratings, ...)`` frame, rows in time order; a repeated (user, item) keeps the last.
        user, item, rating: column names.
        min_gap: smallest rating difference that makes a comparison; > 0.
        max_pairs_per_user: most comparisons per user, or None for all.
        item_table, item_id, item_text, name: as in :func:`from_pandas`.
        random_state: seed for sampling and orientation.
        observations: keep every rating as an observation on the rating scale as well
            (:mod:`plural.data.observations`), so models can use each user's level, not only the
            pairs; False gives the comparisons alone.
        scale: the rating scale, lowest first (the distinct ratings in ``df`` by default); a rating
            not on it raises.

    Returns:
        The comparisons (and observations); ``meta`` holds ``dropped_duplicate_ratings``,
        ``pairs_capped``, ``users_without_pairs`` and, with observations,
        ``observations_without_comparisons``.
    """
    if not min_gap > 0:
        raise ValueError(f"min_gap must be > 0, got {min_gap!r}")
    df = _frame(df, name)
    _check_columns(df, [user, item, rating], "ratings")
    users, items, ratings = _ids(df, user), _ids(df, item), _numbers(df, rating)
    keep = _keep_last(users, items)
    users, items, ratings = users[keep], items[keep], ratings[keep]
    threshold = min_gap * (1 - 1e-9)  # tolerate float error: 3.3 - 2.3 counts as a gap of 1

    def pair_space(rows):
        rows = rows[np.argsort(ratings[rows], kind="stable")]
        r = ratings[rows]
        start = np.searchsorted(r, r + threshold, side="left")  # first item beating rows[i]
        count = len(r) - start
        ends = np.cumsum(count)

        def to_rows(flat):
            lo = np.searchsorted(ends, flat, side="right")
            return rows[start[lo] + flat - (ends[lo] - count[lo])], rows[lo]
        return int(ends[-1]), to_rows

    # on a given scale, a rating off it raises before any work; the default scale needs a pair first
    scaled = levels_of(ratings, scale) if observations and scale is not None else None
    data = _user_pairs(users, items, pair_space, cap=max_pairs_per_user, random_state=random_state,
                       name=name, meta={"dropped_duplicate_ratings": int((~keep).sum())},
                       item_table=item_table, item_id=item_id, item_text=item_text)
    if not observations:
        return data
    return _attach_observations(data, users, items, *(scaled or levels_of(ratings)))


def _ranking(value: Any, row: int) -> list | np.ndarray:
    """A ranking cell as a list of raw item ids: a list/array, a JSON array (its literals as
    written, ``[007, 1e3]`` is ``["007", "1e3"]``), or ``"a,b,c"``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = loads_as_written(text) if text.startswith("[") else [
                x.strip() for x in text.split(",") if x.strip()]
        except ValueError as err:
            raise ValueError(f"row {row}: ranking {text!r} is not a JSON array: {err}") from None
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"row {row}: ranking must be a list of item ids, got {value!r}")
    return value


def from_rankings(df: pd.DataFrame, *, user: str = "user_id", ranking: str = "ranking",
                  context: str | None = None, item_table: pd.DataFrame | None = None,
                  item_id: str = "item_id", item_text: str = "text", random_state: int | None = 0,
                  name: str = "rankings") -> PreferenceData:
    """Rankings, one best-first list of item ids per row; every implied pair is a comparison,
    stored in a random orientation.

    Args:
        df: ``(n_rankings, ...)`` frame. A ranking is a list (or array) of item ids, a JSON array
            string, or a comma-separated string; one of fewer than two items is dropped and
            counted in ``meta["short_rankings"]``.
        user, ranking: column names.
        context: optional column of context ids, given to every pair of the row.
        item_table, item_id, item_text, name: as in :func:`from_pandas`.
        random_state: seed for the orientation.
    """
    df = _frame(df, name)
    _check_columns(df, [user, ranking, context], "rankings")
    users, contexts = _ids(df, user), _contexts(df, context)
    rankings = [_ranking(value, row) for row, value in enumerate(df[ranking])]
    lengths = np.array([len(r) for r in rankings], dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(rankings), dtype=object, count=lengths.sum())
    (flat,) = read_ids([(f"column {ranking!r}", flat, np.repeat(np.arange(len(df)), lengths))])
    pair_users, winners, losers, pair_contexts = [], [], [], []
    short = 0
    for row, ids in enumerate(np.split(flat, np.cumsum(lengths)[:-1])):
        if len(set(ids)) < len(ids):
            dup = next(x for k, x in enumerate(ids) if x in ids[:k])
            raise ValueError(f"row {row}: item {dup!r} appears more than once in the ranking")
        if len(ids) < 2:
            short += 1
            continue
        i, j = np.triu_indices(len(ids), 1)
        winners.append(ids[i])
        losers.append(ids[j])
        pair_users += [users[row]] * len(i)
        pair_contexts += [None if contexts is None else contexts[row]] * len(i)
    meta = {"short_rankings": short}
    if not winners:
        raise ValueError(f"empty dataset: {name!r} has no ranking of two or more items ({meta})")
    a, b, labels = _orient(np.concatenate(winners), np.concatenate(losers),
                           np.random.default_rng(random_state))
    return _build(pair_users, a, b, labels, contexts=None if contexts is None else pair_contexts,
                  item_table=item_table, item_id=item_id, item_text=item_text, name=name, meta=meta)


def from_votes(df: pd.DataFrame, *, user: str = "user_id", item: str = "item_id",
               vote: str = "vote", group: str | None = None, max_pairs_per_user: int | None = 500,
               item_table: pd.DataFrame | None = None, item_id: str = "item_id",
               item_text: str = "text", random_state: int | None = 0,
               name: str = "votes", observations: bool = True) -> PreferenceData:
    """Agree (+1) / disagree (-1) / pass (0) votes: within a voter, every agreed item is preferred
    over every disagreed item; pairs are sampled and oriented as in :func:`from_ratings`.

    Args:
        df: ``(n_votes, ...)`` frame, rows in time order; a voter's repeated vote on one item keeps
            the last. Pass votes make no comparison.
        user, item, vote: column names.
        group: optional column (e.g. a conversation); voters are then ``f"{group}/{user}"``, so the
            same user id in two groups is two voters, and each comparison's context is its voter's
            group (``context_ids``: the groups, sorted).
        max_pairs_per_user: most comparisons per voter, or None for all.
        item_table, item_id, item_text, name: as in :func:`from_pandas`.
        random_state: seed for sampling and orientation.
        observations: keep every agree / disagree vote as an observation on the two-level scale
            ``("disagree", "agree")`` as well (:mod:`plural.data.observations`); passes are neither.

    Returns:
        The comparisons (and observations); ``meta`` holds ``dropped_duplicate_votes``,
        ``dropped_pass_votes``, ``pairs_capped``, ``users_without_pairs`` and, with observations,
        ``observations_without_comparisons``.
    """
    df = _frame(df, name)
    _check_columns(df, [user, item, vote, group], "votes")
    users, items, votes = _ids(df, user), _ids(df, item), _numbers(df, vote)
    bad = np.flatnonzero(~np.isin(votes, (-1.0, 0.0, 1.0)))
    if len(bad):
        raise ValueError(f"row {bad[0]}: vote {show_value(df[vote].iloc[bad[0]])} is not one of "
                         "-1 (disagree), 0 (pass), 1 (agree)")
    groups = None if group is None else _ids(df, group)
    if groups is not None:
        users = np.asarray([f"{g}/{u}" for g, u in zip(groups, users)], dtype=object)
    keep = _keep_last(users, items)
    users, items, votes = users[keep], items[keep], votes[keep]
    groups = None if groups is None else groups[keep]

    def pair_space(rows):
        agree, disagree = rows[votes[rows] == 1], rows[votes[rows] == -1]
        return len(agree) * len(disagree), lambda flat: (agree[flat // len(disagree)],
                                                         disagree[flat % len(disagree)])

    meta = {"dropped_duplicate_votes": int((~keep).sum()),
            "dropped_pass_votes": int((votes == 0).sum())}
    data = _user_pairs(users, items, pair_space, cap=max_pairs_per_user, random_state=random_state,
                       name=name, meta=meta, item_table=item_table, item_id=item_id,
                       item_text=item_text)
    if groups is not None:
        # a (namespaced) voter belongs to one group, which is the context of each of their comparisons
        context_ids, group_code = np.unique(groups, return_inverse=True)
        voter_group = dict(zip(users, group_code))
        user_context = np.array([voter_group[u] for u in data.user_ids], dtype=np.int64)
        data = dataclasses.replace(data, context=user_context[data.user], context_ids=context_ids)
    if not observations:
        return data
    cast = votes != 0
    return _attach_observations(data, users[cast], items[cast], (votes[cast] > 0).astype(np.int64),
                                ("disagree", "agree"), None if groups is None else groups[cast])


# ---------------------------------------------------------------------------- files and hubs
_CONVERTERS: dict[str, Callable[..., PreferenceData]] = {
    "pairs": from_pandas, "trl": from_trl, "ratings": from_ratings, "rankings": from_rankings,
    "votes": from_votes,
}


def _converter(kind: str) -> Callable[..., PreferenceData]:
    if kind not in _CONVERTERS:
        raise ValueError(f"kind must be one of {sorted(_CONVERTERS)}, got {kind!r}")
    return _CONVERTERS[kind]


def from_file(path: str | Path, kind: str = "pairs", **column_options) -> PreferenceData:
    """Read ``path`` with :func:`read_table` and convert it with the ``from_*`` function for
    ``kind`` (``"pairs"``, ``"trl"``, ``"ratings"``, ``"rankings"`` or ``"votes"``).

    ``column_options`` go to that function; ``name`` defaults to the file's stem and
    ``item_table`` may also be a path, read the same way.
    """
    convert = _converter(kind)
    column_options.setdefault("name", Path(path).stem)
    if isinstance(column_options.get("item_table"), (str, Path)):
        column_options["item_table"] = read_table(column_options["item_table"])
    return convert(read_table(path), **column_options)


def from_hf_dataset(dataset: Any, kind: str = "trl", **column_options) -> PreferenceData:
    """Convert a Hugging Face ``datasets.Dataset`` (one split) via ``dataset.to_pandas()``, then
    the ``from_*`` function for ``kind`` as in :func:`from_file`."""
    convert = _converter(kind)
    if not hasattr(dataset, "to_pandas"):
        raise TypeError(f"expected a datasets.Dataset (pick a split of a DatasetDict, e.g. "
                        f"ds['train']), got {type(dataset).__name__}")
    return convert(dataset.to_pandas(), **column_options)
