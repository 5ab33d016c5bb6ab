"""Comparison batches: the tensors a model's steps and ``adapt`` consume.

A batch is a dict of tensors, one row per comparison:

- ``user`` ``(B,)`` long: the model's index of the user (-1 for a user it has not seen);
- ``item_a``, ``item_b`` ``(B,)`` long: the model's index of each item (-1 for an item it has no
  learned identity for, which then falls back on its features);
- ``features_a``, ``features_b`` ``(B, d)`` float32: the items' features;
- ``label`` ``(B,)`` float32 in {0, 0.5, 1}; ``weight`` ``(B,)`` float32;
- ``context`` ``(B,)`` long: the model's index of the context (-1: none, or one it has not seen).
"""

from __future__ import annotations

import numpy as np
import torch

from plural.data.container import PreferenceData


def _remap(model_index: dict | None, ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if model_index is None:
        return codes
    table = np.array([model_index.get(str(x), -1) for x in ids], dtype=np.int64)
    return table[codes]


class ComparisonDataset(torch.utils.data.Dataset):
    """Comparisons of ``data`` at ``rows`` as model-ready tensors, fetched a batch at a time.

    Args:
        data: the preferences; must carry ``item_features``.
        rows: comparison rows to serve (all by default).
        model: when given, user and item indices are translated into the model's vocabularies.
    """

    def __init__(self, data: PreferenceData, rows: np.ndarray | None = None, model=None) -> None:
        if data.item_features is None:
            raise ValueError(f"{data.name}: items have no features; encode them first "
                             "(plural.data.encoders.encode_items) or pass an encoder to fit")
        rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
        user_map = getattr(model, "_user_index", None)
        item_map = getattr(model, "_item_index", None)
        same_items = item_map is not None and len(model.item_ids_) == data.n_items and \
            all(a == b for a, b in zip(model.item_ids_, data.item_ids))
        self.features = torch.from_numpy(data.item_features)
        self.data_item_a = torch.from_numpy(data.item_a[rows])
        self.data_item_b = torch.from_numpy(data.item_b[rows])
        item_codes = None if same_items else item_map
        context_map = getattr(model, "_context_index", None)
        if context_map is not None and data.context_ids is not None:
            table = np.append(_remap(context_map, data.context_ids, np.arange(len(data.context_ids))), -1)
            context = table[data.context[rows]]  # index -1 (no context) reads the appended -1
        else:
            context = np.full(len(rows), -1, np.int64) if model is not None else data.context[rows]
        self.tensors = {
            "user": torch.from_numpy(_remap(user_map, data.user_ids, data.user[rows])),
            "item_a": torch.from_numpy(_remap(item_codes, data.item_ids, data.item_a[rows])),
            "item_b": torch.from_numpy(_remap(item_codes, data.item_ids, data.item_b[rows])),
            "label": torch.from_numpy(data.label[rows]),
            "weight": torch.from_numpy(data.weight[rows]),
            "context": torch.from_numpy(np.ascontiguousarray(context)),
        }

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
