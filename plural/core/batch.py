"""Comparison batches: the tensors a model's steps and ``adapt`` consume.

A batch is a dict of tensors, one row per comparison:

- ``user`` ``(B,)`` long: the model's index of the user (-1 for a user it has not seen);
- ``item_a``, ``item_b`` ``(B,)`` long: the model's index of each item (-1 for an item it has no
  learned identity for, which then falls back on its features);
- ``features_a``, ``features_b`` ``(B, d)`` float32: the items' features;
- ``label`` ``(B,)`` float32 in {0, 0.5, 1}; ``weight`` ``(B,)`` float32;
- ``context`` ``(B,)`` long: the model's index of the context (-1: none, or one it has not seen);
- ``level`` ``(B,)`` long, only in batches that carry observations (votes, ratings;
  :mod:`plural.data.observations`): -1 for a comparison, and for a row that stands for an
  observation the index of the threshold its item (``item_a``) is compared with; ``item_b`` is -1
  and ``features_b`` zero on such rows, which models with thresholds replace by the threshold.
"""

from __future__ import annotations

import numpy as np
import torch

from plural.core.likelihood import graph_items, independent_share_by_user
from plural.data.container import PreferenceData
from plural.data.observations import compared_keys, following, threshold_rows, user_item_keys


def _remap(lookup, ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``codes`` (indices into ``ids``) as indices of the model's vocabulary; ``lookup`` is the model's
    ``user_index``/``item_index``/``context_index`` (None: keep the codes)."""
    if lookup is None:
        return codes
    table = lookup([str(x) for x in ids]).numpy().astype(np.int64, copy=False)
    return table[codes]


class ComparisonDataset(torch.utils.data.Dataset):
    """Comparisons of ``data`` at ``rows`` as model-ready tensors, fetched a batch at a time.

    With ``observations`` and a ``model`` that has thresholds for observations (``observation_levels_``,
    set when it was built on data with observations), the observations following ``rows`` (:func:`plural.data.observations.following`)
    are served too, as the threshold comparisons that stand for them
    (:func:`plural.data.observations.threshold_rows`), at positions ``n_pairs ..`` after the
    comparisons; :meth:`with_observations` adds, to positions of comparisons, those of their
    observations.

    Args:
        data: the preferences; must carry ``item_features``.
        rows: comparison rows to serve (all by default).
        model: when given (and built), user, item and context indices are translated into the
            model's vocabularies through its ``user_index``, ``item_index`` and ``context_index``.
        observations: serve the observations too (training, few-shot episodes); by default the
            dataset holds the comparisons alone, one row per comparison at ``rows``.
    """

    def __init__(self, data: PreferenceData, rows: np.ndarray | None = None, model=None,
                 observations: bool = False) -> None:
        if data.item_features is None:
            raise ValueError(f"{data.name}: items have no features; encode them first "
                             "(plural.data.encoders.encode_items) or pass an encoder to fit")
        rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
        built = model is not None and model.is_built  # an unbuilt model has no vocabularies yet
        same_items = built and len(model.item_ids_) == data.n_items and \
            all(a == b for a, b in zip(model.item_ids_, data.item_ids))
        self.features = torch.from_numpy(data.item_features)
        self.data_item_a = torch.from_numpy(data.item_a[rows])
        self.data_item_b = torch.from_numpy(data.item_b[rows])
        user_codes = model.user_index if built else None
        item_codes = model.item_index if built and not same_items else None
        context_table = None  # the model's index of each of the data's contexts, then -1 (no context)
        if built and data.context_ids is not None:
            context_table = np.append(_remap(model.context_index, data.context_ids,
                                             np.arange(len(data.context_ids))), -1)
            context = context_table[data.context[rows]]  # index -1 (no context) reads the appended -1
        else:
            context = np.full(len(rows), -1, np.int64) if model is not None else data.context[rows]
        self.tensors = {
            "user": torch.from_numpy(_remap(user_codes, data.user_ids, data.user[rows])),
            "item_a": torch.from_numpy(_remap(item_codes, data.item_ids, data.item_a[rows])),
            "item_b": torch.from_numpy(_remap(item_codes, data.item_ids, data.item_b[rows])),
            "label": torch.from_numpy(data.label[rows]),
            "weight": torch.from_numpy(data.weight[rows]),
            "context": torch.from_numpy(np.ascontiguousarray(context)),
        }
        self.n_pairs = len(rows)
        self._observation_keys = np.empty(0, np.int64)
        levels = getattr(model, "observation_levels_", 0) if built and observations else 0
        obs_rows = following(data, rows) if levels else np.empty(0, np.int64)
        if len(obs_rows):
            self._add_observations(data, rows, obs_rows, levels, user_codes, item_codes, context_table)

    def _add_observations(self, data, rows, obs_rows, levels, user_codes, item_codes, context_table) -> None:
        obs = data.observations.take(obs_rows)
        if obs.n_levels != levels:
            raise ValueError(f"{data.name}: observations on a scale of {obs.n_levels} levels; the model "
                             f"was trained on a scale of {levels}")
        source, threshold, label = threshold_rows(obs.level, obs.n_levels)
        context = obs.context[source] if context_table is None else context_table[obs.context[source]]
        m = len(source)
        extra = {
            "user": _remap(user_codes, data.user_ids, obs.user[source]),
            "item_a": _remap(item_codes, data.item_ids, obs.item[source]),
            "item_b": np.full(m, -1, np.int64), "label": label, "weight": obs.weight[source],
            "context": np.ascontiguousarray(context),
        }
        self.tensors = {k: torch.cat([v, torch.from_numpy(extra[k])]) for k, v in self.tensors.items()}
        self.tensors["level"] = torch.from_numpy(np.concatenate([np.full(self.n_pairs, -1, np.int64), threshold]))
        # threshold rows read a zero feature row appended after the items'
        self.features = torch.cat([self.features, self.features.new_zeros(1, self.features.shape[1])])
        self.data_item_a = torch.cat([self.data_item_a, torch.from_numpy(obs.item[source])])
        self.data_item_b = torch.cat([self.data_item_b, torch.full((m,), data.n_items, dtype=torch.long)])
        # (user, item) key of each threshold row, sorted, to find the observations of given comparisons
        keys = user_item_keys(data, obs.user[source], obs.item[source])
        order = np.argsort(keys, kind="stable")
        self._observation_keys, self._observation_order = keys[order], order + self.n_pairs
        self._pair_keys = compared_keys(data, rows)

    def temper_by_user(self) -> None:
        """Multiply each row's weight by its user's independent share over the rows served here
        (``plural.core.likelihood.independent_share_by_user``), a threshold row joining its item to
        one node per threshold."""
        t = self.tensors
        # the graph is over the data's items (the model's -1 would make every unknown item distinct)
        item_b = graph_items(self.data_item_b, t["level"]) if "level" in t else self.data_item_b
        share = independent_share_by_user(t["user"], self.data_item_a, item_b)
        t["weight"] = t["weight"] * torch.from_numpy(share.astype(np.float32))

    @property
    def has_observations(self) -> bool:
        return len(self._observation_keys) > 0

    @property
    def threshold_feature_row(self) -> int | None:
        """The row of ``features`` every threshold row reads (a zero row after the items'); None
        without observations."""
        return len(self.features) - 1 if self.has_observations else None

    def observations_of(self, positions) -> np.ndarray:
        """Positions of the threshold rows of the observations following the comparisons at
        ``positions`` (positions below ``n_pairs``); empty when the dataset serves none."""
        if not self.has_observations:
            return np.empty(0, np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        keys = np.unique(np.concatenate([self._pair_keys[0][positions], self._pair_keys[1][positions]]))
        lo = np.searchsorted(self._observation_keys, keys, side="left")
        hi = np.searchsorted(self._observation_keys, keys, side="right")
        if not (hi > lo).any():
            return np.empty(0, np.int64)
        return np.sort(np.concatenate([self._observation_order[a:b] for a, b in zip(lo, hi) if b > a]))

    def with_observations(self, positions) -> np.ndarray:
        """``positions`` followed by :meth:`observations_of` them: the comparisons and their observations."""
        return np.concatenate([np.asarray(positions, dtype=np.int64), self.observations_of(positions)])

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def __getitems__(self, indices) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {k: v[idx] for k, v in self.tensors.items()}
        batch["features_a"] = self.features[self.data_item_a[idx]]
        batch["features_b"] = self.features[self.data_item_b[idx]]
        return batch

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def all(self) -> dict:
        """Every comparison as one batch."""
        return self.__getitems__(range(len(self)))


def identity_collate(batch: dict) -> dict:
    """``__getitems__`` already returns a batch."""
    return batch


def comparison_batch(data: PreferenceData, rows: np.ndarray | None = None, model=None) -> dict:
    """The comparisons of ``data`` at ``rows`` as one batch (see the module docstring)."""
    return ComparisonDataset(data, rows, model).all()


def batch_to(batch: dict, device: torch.device | str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}
