"""Absolute feedback beside comparisons: a user's vote or rating of one item.

An observation is ``(user, item, level, weight, context)``: ``level`` is an index into an ordered
scale of ``n_levels`` values (``level_names``), lowest first. A thumbs down / up or a Polis
disagree / agree is a scale of two levels; MovieLens stars or a 1-5 rating are longer scales.
Users, items and contexts are indices into the vocabularies of the :class:`PreferenceData` the table
belongs to.

Observations ride with the comparisons they came with: the observations that belong to a set of
comparison rows are those of each row's user on the row's two items (:func:`following`). So every
split of the comparisons (seen and unseen users, train and validation, an episode's support and
query, which are item-disjoint) splits the observations the same way with no bookkeeping of its
own, and a vote on an item that is in none of a user's comparisons is used by none of them.

A model sees an observation at level ``l`` as comparisons of its item against the scale's
thresholds (:func:`threshold_rows`): preferred over threshold ``l - 1`` and not over threshold
``l`` (the "immediate-threshold" construction of ordinal regression, Rennie and Srebro 2005). On a
two-level scale that is exactly the logistic likelihood ``P(agree) = sigmoid(r_u(x) - tau)``; on a
longer scale each rating gives two such terms. The thresholds are learned by the model, as items
its users' vectors act on, so each user's threshold moves with their latent vector.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

NO_CONTEXT = -1


@dataclasses.dataclass(eq=False)
class Observations:
    """Votes or ratings, one row per (user, item, context).

    Attributes:
        user: ``(n,)`` int64 index into the data's ``user_ids``.
        item: ``(n,)`` int64 index into the data's ``item_ids``.
        level: ``(n,)`` int64 in ``0 .. n_levels - 1``, the position on the scale (0 lowest).
        n_levels: length of the scale, >= 2.
        weight: ``(n,)`` float32 non-negative weights (default 1).
        context: ``(n,)`` int64 index into the data's ``context_ids`` or -1.
        level_names: the scale's values as text, lowest first (default ``"0" .. "n_levels-1"``).
    """

    user: np.ndarray
    item: np.ndarray
    level: np.ndarray
    n_levels: int
    weight: np.ndarray | None = None
    context: np.ndarray | None = None
    level_names: tuple = ()

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.level = np.asarray(self.level, dtype=np.int64)
        n = len(self.user)
        self.weight = (np.ones(n, np.float32) if self.weight is None
                       else np.asarray(self.weight, dtype=np.float32))
        self.context = (np.full(n, NO_CONTEXT, np.int64) if self.context is None
                        else np.asarray(self.context, dtype=np.int64))
        if int(self.n_levels) != self.n_levels or self.n_levels < 2:
            raise ValueError(f"observations: n_levels must be an integer >= 2, got {self.n_levels!r}")
        self.n_levels = int(self.n_levels)
        self.level_names = tuple(str(v) for v in self.level_names) or \
            tuple(str(i) for i in range(self.n_levels))
        if len(self.level_names) != self.n_levels:
            raise ValueError(f"observations: {len(self.level_names)} level names for a scale of "
                             f"{self.n_levels} levels")
        for what, col in (("item", self.item), ("level", self.level), ("weight", self.weight),
                          ("context", self.context)):
            if col.shape != (n,):
                raise ValueError(f"observations: {what} must have shape ({n},), got {col.shape}")

    def __len__(self) -> int:
        return len(self.user)

    def validate(self, n_users: int, n_items: int, n_contexts: int) -> None:
        """Raise ``ValueError`` naming the first bad observation (called by the container)."""
        for what, col, size in (("user", self.user, n_users), ("item", self.item, n_items),
                                ("level", self.level, self.n_levels)):
            bad = np.flatnonzero((col < 0) | (col >= size))
            if len(bad):
                raise ValueError(f"observation {bad[0]}: {what} index {col[bad[0]]} outside 0..{size - 1}")
        bad = np.flatnonzero((self.context < NO_CONTEXT) | (self.context >= n_contexts))
        if len(bad):
            raise ValueError(f"observation {bad[0]}: context index {self.context[bad[0]]} outside the "
                             f"{n_contexts} contexts")
        bad = np.flatnonzero(~np.isfinite(self.weight) | (self.weight < 0))
        if len(bad):
            raise ValueError(f"observation {bad[0]}: weight {float(self.weight[bad[0]])!r} must be "
                             "finite and >= 0")
        repeated = np.flatnonzero(pd.DataFrame({"u": self.user, "i": self.item, "c": self.context}).duplicated())
        if len(repeated):
            row = int(repeated[0])
            raise ValueError(f"observation {row}: user {self.user[row]} has more than one observation "
                             f"of item {self.item[row]} (context {self.context[row]}); keep one")

    def take(self, rows: np.ndarray) -> "Observations":
        """The observations at ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        return dataclasses.replace(self, user=self.user[rows], item=self.item[rows],
                                   level=self.level[rows], weight=self.weight[rows],
                                   context=self.context[rows])


def following(data, rows: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of ``data.observations`` that belong to the comparisons at ``rows`` (all rows by
    default): each row's user's observations of the row's two items. Empty without observations."""
    obs = data.observations
    if obs is None or not len(obs):
        return np.empty(0, dtype=np.int64)
    rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    compared = np.unique(np.concatenate(compared_keys(data, rows)))
    return np.flatnonzero(np.isin(user_item_keys(data, obs.user, obs.item), compared))


def user_item_keys(data, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """One int64 key per (user, item) pair of ``data``'s indices."""
    return np.asarray(user, dtype=np.int64) * np.int64(data.n_items) + item


def compared_keys(data, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (user, item) keys (:func:`user_item_keys`) of the comparisons at ``rows``: their users with
    ``item_a``, and with ``item_b``."""
    return (user_item_keys(data, data.user[rows], data.item_a[rows]),
            user_item_keys(data, data.user[rows], data.item_b[rows]))


def threshold_rows(level: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The comparisons against thresholds that stand for observations at ``level``.

    Threshold ``t`` (``0 .. n_levels - 2``) separates level ``t`` from level ``t + 1``. An
    observation at level ``l`` is preferred over threshold ``l - 1`` (when ``l > 0``) and not over
    threshold ``l`` (when ``l < n_levels - 1``).

    Returns:
        ``(source, threshold, label)``: for each comparison, the position of its observation in
        ``level``, its threshold index, and its label (1: the item above the threshold).

    Example:
        >>> threshold_rows(np.array([0, 1, 2]), 3)
        (array([0, 1, 1, 2]), array([0, 0, 1, 1]), array([0., 1., 0., 1.], dtype=float32))
    """
    level = np.asarray(level, dtype=np.int64)
    pos = np.arange(len(level))
    above, below = level > 0, level < n_levels - 1
    source = np.concatenate([pos[above], pos[below]])
    threshold = np.concatenate([level[above] - 1, level[below]])
    label = np.concatenate([np.ones(above.sum(), np.float32), np.zeros(below.sum(), np.float32)])
    order = np.lexsort((threshold, source))
    return source[order], threshold[order], label[order]


def levels_of(values: Sequence, scale: Sequence | None = None) -> tuple[np.ndarray, tuple]:
    """``(level indices, scale)`` of numeric ``values`` on ``scale`` (sorted distinct values of
    ``values`` by default); a value not on a given scale raises naming it."""
    values = np.asarray(values, dtype=np.float64)
    scale = np.unique(values) if scale is None else np.asarray(sorted(float(s) for s in scale))
    if len(scale) < 2:
        raise ValueError(f"observations need a scale of at least two values, got {scale.tolist()}")
    level = np.searchsorted(scale, values)
    level = np.minimum(level, len(scale) - 1)
    bad = np.flatnonzero(~np.isclose(scale[level], values))
    if len(bad):
        raise ValueError(f"value {values[bad[0]]!r} is not on the scale {scale.tolist()}")
    return level, tuple(f"{s:g}" for s in scale)
