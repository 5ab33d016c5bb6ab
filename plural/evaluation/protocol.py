"""The evaluation protocol's users and splits, written once (``docs/protocol.md``).

For one seed: the users with comparisons are split 80/20 into seen and unseen by a seeded
permutation (:func:`plural.data.splits.split_users`); the seen users' comparisons are split into
train / validation / test by the dataset's split mode (:func:`default_split_mode`: item-disjoint
unless the data says ``meta["split_mode"] = "comparisons"``); and at most ``max_unseen_users`` of
the unseen users are scored, sampled without replacement with the seed and sorted.

``plural bench`` (``apps/bench.py``), ``plural train`` (:func:`plural.training.runs.train_run`), the
demo's :func:`plural.training.runs.personalization_run` and the scripts in ``benchmarks/`` all start
from :func:`protocol_split`, so they score the same users on the same comparisons for a seed.

>>> from plural.data.synthetic import make_population
>>> data, _ = make_population(n_users=20, n_items=40, dim=4, comparisons_per_user=30, random_state=0)
>>> p = protocol_split(data, seed=0, max_unseen_users=3)
>>> len(p.seen), len(p.unseen), len(p.scored), p.mode
(16, 4, 3, 'items')
"""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.data.container import PreferenceData
from plural.data.splits import MODES, ComparisonSplit, split_comparisons, split_users

__all__ = ["ProtocolSplit", "default_split_mode", "protocol_split", "scored_users"]


def default_split_mode(data: PreferenceData) -> str:
    """The split a dataset asks for: ``data.meta["split_mode"]`` (``"comparisons"`` for natively
    pairwise data whose users rarely judge an item twice, such as UKPConvArg1 or most TRL files),
    else ``"items"``."""
    return data.meta.get("split_mode", "items")


@dataclasses.dataclass(frozen=True)
class ProtocolSplit:
    """The users and comparisons of one protocol seed.

    Attributes:
        seen, unseen: sorted user indices (``split_users``).
        split: the seen users' comparison rows, train / val / test.
        scored: the unseen users scored (all of them, or a seeded sample of ``max_unseen_users``).
        mode: ``"items"`` or ``"comparisons"``, the mode of ``split`` (and of the episodes to make).
        seed: the seed every part was drawn with.
    """

    seen: np.ndarray
    unseen: np.ndarray
    split: ComparisonSplit
    scored: np.ndarray
    mode: str
    seed: int


def scored_users(unseen: np.ndarray, max_unseen_users: int | None, seed: int) -> np.ndarray:
    """``unseen`` if there are at most ``max_unseen_users`` (or it is None), else a sorted sample of
    that many drawn without replacement by ``np.random.default_rng(seed)``."""
    if max_unseen_users is None or len(unseen) <= max_unseen_users:
        return unseen
    return np.sort(np.random.default_rng(seed).choice(unseen, max_unseen_users, replace=False))


def protocol_split(data: PreferenceData, seed: int, unseen_fraction: float = 0.2, mode: str | None = None,
                   max_unseen_users: int | None = None) -> ProtocolSplit:
    """Seen / unseen users, the seen users' comparison split and the scored unseen users for ``seed``.

    Args:
        data: the preferences.
        seed: seeds the user permutation, the comparison split and the sample of scored users (each
            its own generator, in that order).
        unseen_fraction: share of users held out as unseen (0.2 in the protocol).
        mode: ``"items"`` or ``"comparisons"``; None takes :func:`default_split_mode`.
        max_unseen_users: cap on the unseen users scored; None scores all.
    """
    mode = default_split_mode(data) if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"split mode must be one of {MODES}, got {mode!r}")
    seen, unseen = split_users(data, unseen_fraction, random_state=seed)
    split = split_comparisons(data, seen, mode=mode, random_state=seed)
    return ProtocolSplit(seen=seen, unseen=unseen, split=split,
                         scored=scored_users(unseen, max_unseen_users, seed), mode=mode, seed=seed)
