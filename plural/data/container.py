"""The columnar preference container.

A comparison is ``(user, item_a, item_b, label, weight, context)``: label 1.0 means ``item_a`` was
preferred, 0.0 that ``item_b`` was, 0.5 a tie. Users, items and contexts are vocabularies (string ids);
comparisons hold integer indices into them, so one item text is stored and embedded once however many
comparisons use it, and a slice by user is a cheap numpy operation.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

import numpy as np

from plural.data.ids import read_ids
from plural.data.observations import Observations

logger = logging.getLogger(__name__)

VALID_LABELS = (0.0, 0.5, 1.0)
NO_CONTEXT = -1


def _as_str_array(values: Iterable, what: str) -> np.ndarray:
    """A vocabulary as an ``(n,)`` object array of id strings (see :func:`read_ids`)."""
    return read_ids([(what, values)])[0]


def _check_unique(ids: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1][0]
        raise ValueError(f"{what} ids must be unique; {dup!r} appears {counts[counts > 1][0]} times")


def _lookup(vocab: np.ndarray, values: Sequence[str], what: str,
            row_numbers: Sequence[int] | None = None) -> np.ndarray:
    """Map string ids to their index in ``vocab``; raise naming the first unknown row."""
    index = {v: i for i, v in enumerate(vocab)}
    out = np.empty(len(values), dtype=np.int64)
    for pos, key in enumerate(values):
        try:
            out[pos] = index[key]
        except KeyError:
            row = pos if row_numbers is None else row_numbers[pos]
            raise ValueError(f"row {row}: unknown {what} id {key!r}") from None
    return out


def _context_codes(contexts: np.ndarray, context_ids: np.ndarray | None) -> np.ndarray:
    """Indices into ``context_ids`` of ``contexts`` (ids as read, None for no context: -1); an unknown
    id raises naming its row."""
    ctx = np.full(len(contexts), NO_CONTEXT, np.int64)
    rows = np.flatnonzero([c is not None for c in contexts])
    if len(rows):
        ctx[rows] = _lookup(context_ids, contexts[rows], "context", rows)
    return ctx


@dataclasses.dataclass(eq=False)
class PreferenceData:
    """Pairwise preferences tagged with who made them.

    Attributes:
        user_ids: ``(n_users,)`` string ids of the users.
        item_ids: ``(n_items,)`` string ids of the items.
        user: ``(n,)`` int64 index into ``user_ids`` for each comparison.
        item_a: ``(n,)`` int64 index of the first item.
        item_b: ``(n,)`` int64 index of the second item.
        label: ``(n,)`` float32 in {0, 0.5, 1}; 1 means ``item_a`` preferred.
        weight: ``(n,)`` float32 non-negative weight of each comparison (default 1).
        context: ``(n,)`` int64 index into ``context_ids``, or -1 where a comparison has none.
        item_text: optional ``(n_items,)`` object array of item texts.
        item_features: optional ``(n_items, d)`` float32 feature matrix.
        context_ids: optional ``(n_contexts,)`` string ids of contexts (prompts, topics, queries).
        context_text: optional ``(n_contexts,)`` texts of the contexts.
        name: a short name for reports.
        meta: free-form provenance, e.g. ``{"dropped_ties": 12}``; converters record here every
            row they drop on purpose, with the reason.
        observations: optional absolute feedback (votes, ratings) of the same users on the same
            items (:class:`plural.data.observations.Observations`); shared by every subset, where
            the observations that count are those following the subset's comparisons.

    Example:
        >>> data = PreferenceData.from_records(
        ...     users=["ann", "bob"], items_a=["x", "y"], items_b=["y", "z"], labels=[1, 0],
        ...     item_ids=["x", "y", "z"])
        >>> data.n_comparisons, data.n_users, data.n_items
        (2, 2, 3)
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user: np.ndarray
    item_a: np.ndarray
    item_b: np.ndarray
    label: np.ndarray
    weight: np.ndarray | None = None
    context: np.ndarray | None = None
    item_text: np.ndarray | None = None
    item_features: np.ndarray | None = None
    context_ids: np.ndarray | None = None
    context_text: np.ndarray | None = None
    name: str = "data"
    meta: dict = dataclasses.field(default_factory=dict)
    observations: Observations | None = None

    def __post_init__(self) -> None:
        self.user_ids = _as_str_array(self.user_ids, "user_ids")
        self.item_ids = _as_str_array(self.item_ids, "item_ids")
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item_a = np.asarray(self.item_a, dtype=np.int64)
        self.item_b = np.asarray(self.item_b, dtype=np.int64)
        self.label = np.asarray(self.label, dtype=np.float32)
        n = len(self.user)
        self.weight = (np.ones(n, np.float32) if self.weight is None
                       else np.asarray(self.weight, dtype=np.float32))
        self.context = (np.full(n, NO_CONTEXT, np.int64) if self.context is None
                        else np.asarray(self.context, dtype=np.int64))
        if self.item_text is not None:
            self.item_text = np.asarray([None if t is None else str(t) for t in self.item_text],
                                        dtype=object)
        if self.item_features is not None:
            self.item_features = np.ascontiguousarray(self.item_features, dtype=np.float32)
        if self.context_ids is not None:
            self.context_ids = _as_str_array(self.context_ids, "context_ids")
        if self.context_text is not None:
            self.context_text = np.asarray([str(t) for t in self.context_text], dtype=object)
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_records(
        cls,
        users: Sequence,
        items_a: Sequence,
        items_b: Sequence,
        labels: Sequence,
        *,
        item_ids: Sequence | None = None,
        item_text: Sequence | None = None,
        item_features: np.ndarray | None = None,
        weights: Sequence | None = None,
        contexts: Sequence | None = None,
        context_ids: Sequence | None = None,
        context_text: Sequence | None = None,
        user_ids: Sequence | None = None,
        name: str = "data",
        meta: dict | None = None,
    ) -> "PreferenceData":
        """Build from per-comparison ids.

        Ids are kept as written (see :func:`read_ids`): strings as they are, integers as their
        decimal text. A missing id (None, NaN, ``pd.NA``) raises naming its row and argument, and
        so do two different values that would read as one id (``1`` and ``"1"``, ``1`` and
        ``1.0``), checked across the arguments of one vocabulary (``users`` and ``user_ids``;
        ``items_a``, ``items_b`` and ``item_ids``; ``contexts`` and ``context_ids``).

        Args:
            users, items_a, items_b, labels: one entry per comparison.
            item_ids: the item table's ids; when given, a comparison naming any other item is an
                error. When omitted, the item table is the sorted set of items compared.
            item_text, item_features: aligned with ``item_ids``.
            contexts: per-comparison context ids (None entries mean no context).
            context_ids, context_text: the context table; inferred from ``contexts`` when omitted.
            user_ids: the user vocabulary; inferred (sorted) when omitted.
        """
        n = len(users)
        for what, col in (("items_a", items_a), ("items_b", items_b), ("labels", labels)):
            if len(col) != n:
                raise ValueError(f"{what} has {len(col)} rows but users has {n}")
        if n == 0:
            raise ValueError("empty dataset: no comparisons given")
        if item_ids is None and (item_text is not None or item_features is not None):
            raise ValueError("item_text/item_features need item_ids to align with")
        items_a, items_b, *item_ids = read_ids(
            [("items_a", items_a), ("items_b", items_b)]
            + ([] if item_ids is None else [("item_ids", item_ids)]))
        item_ids = _as_str_array(item_ids[0] if item_ids else sorted(set(items_a) | set(items_b)),
                                 "item_ids")
        _check_unique(item_ids, "item")
        users, *user_ids = read_ids([("users", users)]
                                    + ([] if user_ids is None else [("user_ids", user_ids)]))
        user_ids = _as_str_array(user_ids[0] if user_ids else sorted(set(users)), "user_ids")
        _check_unique(user_ids, "user")
        ctx = None
        if contexts is not None:
            if len(contexts) != n:
                raise ValueError(f"contexts has {len(contexts)} rows but users has {n}")
            contexts, *context_ids = read_ids(
                [("contexts", contexts)] + ([] if context_ids is None
                                            else [("context_ids", context_ids)]),
                none_ok=("contexts",))
            context_ids = _as_str_array(context_ids[0] if context_ids else
                                        sorted({c for c in contexts if c is not None}),
                                        "context_ids")
            ctx = _context_codes(contexts, context_ids)
        weight = None if weights is None else np.asarray(weights, dtype=np.float32)
        return cls(
            user_ids=user_ids,
            item_ids=item_ids,
            user=_lookup(user_ids, users, "user"),
            item_a=_lookup(item_ids, items_a, "item"),
            item_b=_lookup(item_ids, items_b, "item"),
            label=np.asarray(labels, dtype=np.float64),
            weight=weight,
            context=ctx,
            item_text=item_text,
            item_features=item_features,
            context_ids=context_ids,
            context_text=context_text,
            name=name,
            meta=dict(meta or {}),
        )

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad row; called on construction."""
        n = len(self.user)
        if n == 0:
            raise ValueError("empty dataset: no comparisons")
        for what, col in (("item_a", self.item_a), ("item_b", self.item_b), ("label", self.label),
                          ("weight", self.weight), ("context", self.context)):
            if col.shape != (n,):
                raise ValueError(f"{what} must have shape ({n},), got {col.shape}")
        self._check_index(self.user, len(self.user_ids), "user")
        self._check_index(self.item_a, len(self.item_ids), "item_a")
        self._check_index(self.item_b, len(self.item_ids), "item_b")
        n_ctx = 0 if self.context_ids is None else len(self.context_ids)
        bad = np.flatnonzero((self.context < NO_CONTEXT) | (self.context >= n_ctx))
        if len(bad):
            raise ValueError(f"row {bad[0]}: context index {self.context[bad[0]]} outside the "
                             f"{n_ctx} contexts")
        ok = np.isin(self.label, VALID_LABELS)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"row {row}: label {float(self.label[row])!r} is not one of 0, 0.5, 1")
        bad = np.flatnonzero(~np.isfinite(self.weight) | (self.weight < 0))
        if len(bad):
            raise ValueError(f"row {bad[0]}: weight {float(self.weight[bad[0]])!r} must be finite and >= 0")
        same = np.flatnonzero(self.item_a == self.item_b)
        if len(same):
            row = int(same[0])
            raise ValueError(f"row {row}: item {self.item_ids[self.item_a[row]]!r} is compared "
                             "with itself")
        n_items = len(self.item_ids)
        if self.item_text is not None and len(self.item_text) != n_items:
            raise ValueError(f"item_text has {len(self.item_text)} rows but there are {n_items} items")
        if self.item_features is not None:
            check_features(self.item_features, n_items)
        if self.context_text is not None and (self.context_ids is None
                                              or len(self.context_text) != len(self.context_ids)):
            raise ValueError("context_text must align with context_ids")
        if self.observations is not None:
            self.observations.validate(len(self.user_ids), n_items, n_ctx)

    @staticmethod
    def _check_index(idx: np.ndarray, size: int, what: str) -> None:
        bad = np.flatnonzero((idx < 0) | (idx >= size))
        if len(bad):
            raise ValueError(f"row {bad[0]}: {what} index {idx[bad[0]]} outside 0..{size - 1}")

    # ------------------------------------------------------------------ sizes
    @property
    def n_comparisons(self) -> int:
        return len(self.user)

    def __len__(self) -> int:
        return self.n_comparisons

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_observations(self) -> int:
        return 0 if self.observations is None else len(self.observations)

    @property
    def feature_dim(self) -> int | None:
        return None if self.item_features is None else int(self.item_features.shape[1])

    def __repr__(self) -> str:
        feats = "none" if self.item_features is None else f"{self.feature_dim}-d"
        return (f"PreferenceData(name={self.name!r}, comparisons={self.n_comparisons}, "
                f"users={self.n_users}, items={self.n_items}, features={feats}, "
                f"ties={int((self.label == 0.5).sum())}"
                + (f", observations={self.n_observations}" if self.observations is not None else "") + ")")

    # ------------------------------------------------------------------ slicing
    def subset(self, rows: np.ndarray, name: str | None = None) -> "PreferenceData":
        """Comparisons at ``rows`` (indices or boolean mask); vocabularies and tables are shared,
        so user and item indices keep their meaning across subsets."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows) == 0:
            raise ValueError("subset would be empty")
        return dataclasses.replace(
            self, user=self.user[rows], item_a=self.item_a[rows], item_b=self.item_b[rows],
            label=self.label[rows], weight=self.weight[rows], context=self.context[rows],
            name=name or self.name, meta=dict(self.meta))

    def rows_by_user(self) -> dict[int, np.ndarray]:
        """``{user index: comparison rows}`` for every user with at least one comparison."""
        order = np.argsort(self.user, kind="stable")
        users, starts = np.unique(self.user[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        return {int(u): order[s:e] for u, s, e in zip(users, starts, ends)}

    def users_present(self) -> np.ndarray:
        """Sorted indices of users with at least one comparison."""
        return np.unique(self.user)

    def items_of(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Sorted indices of the items appearing in ``rows`` (all rows by default)."""
        if rows is None:
            return np.unique(np.concatenate([self.item_a, self.item_b]))
        return np.unique(np.concatenate([self.item_a[rows], self.item_b[rows]]))

    def drop_ties(self) -> tuple["PreferenceData", int]:
        """Remove tied comparisons; returns the data and how many rows were dropped."""
        keep = self.label != 0.5
        n_dropped = int((~keep).sum())
        if not n_dropped:
            return self, 0
        logger.info("%s: dropped %d tied comparisons of %d", self.name, n_dropped, len(self))
        out = self.subset(keep)
        out.meta = {**self.meta, "dropped_ties": self.meta.get("dropped_ties", 0) + n_dropped}
        return out, n_dropped

    def with_observations(self, users: Sequence, items: Sequence, levels: Sequence, n_levels: int, *,
                          level_names: Sequence = (), weights: Sequence | None = None,
                          contexts: Sequence | None = None) -> "PreferenceData":
        """A copy carrying absolute feedback: one observation per entry of ``users`` and ``items``
        (ids as in the vocabularies; an unknown one raises naming its row), at ``levels`` (indices
        into a scale of ``n_levels`` values, lowest first, named by ``level_names``), with optional
        ``weights`` and ``contexts`` (context ids, None for none)."""
        users, items = read_ids([("users", users)])[0], read_ids([("items", items)])[0]
        n = len(users)
        if len(items) != n or len(levels) != n:
            raise ValueError(f"observations: users has {n} rows, items {len(items)}, levels {len(levels)}")
        ctx = None
        if contexts is not None:
            if len(contexts) != n:
                raise ValueError(f"observations: contexts has {len(contexts)} rows but users has {n}")
            contexts = read_ids([("contexts", contexts)], none_ok=("contexts",))[0]
            if self.context_ids is None and any(c is not None for c in contexts):
                raise ValueError("observations name contexts but the data has none")
            ctx = _context_codes(contexts, self.context_ids)
        obs = Observations(user=_lookup(self.user_ids, users, "user"), item=_lookup(self.item_ids, items, "item"),
                           level=np.asarray(levels), n_levels=n_levels, level_names=tuple(level_names),
                           weight=None if weights is None else np.asarray(weights), context=ctx)
        return dataclasses.replace(self, observations=obs)

    def with_features(self, features: np.ndarray) -> "PreferenceData":
        """A copy whose item table carries ``features`` ``(n_items, d)``."""
        check_features(np.asarray(features), self.n_items)
        return dataclasses.replace(self, item_features=features)

    def to_pandas(self):
        """One row per comparison with string ids (``user_id``, ``item_a``, ``item_b``, ``label``,
        ``weight``, ``context``)."""
        import pandas as pd

        ctx = None
        if self.context_ids is not None:
            ctx = np.where(self.context >= 0, self.context_ids[np.maximum(self.context, 0)], None)
        return pd.DataFrame({
            "user_id": self.user_ids[self.user], "item_a": self.item_ids[self.item_a],
            "item_b": self.item_ids[self.item_b], "label": self.label, "weight": self.weight,
            "context": ctx})


def check_features(features: np.ndarray, n_items: int | None = None, dim: int | None = None) -> None:
    """Raise ``ValueError`` for a feature matrix of the wrong shape or with non-finite values."""
    if features.ndim != 2:
        raise ValueError(f"item features must be 2-d (n_items, d), got shape {features.shape}")
    if n_items is not None and features.shape[0] != n_items:
        raise ValueError(f"item features have {features.shape[0]} rows but there are {n_items} items")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(f"item features have dimension {features.shape[1]}, expected {dim}")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"item row {row}: features contain NaN or infinite values")
