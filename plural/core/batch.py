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


def _remap(lookup, ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``codes`` (indices into ``ids``) as indices of the model's vocabulary; ``lookup`` is the model's
    ``user_index``/``item_index``/``context_index`` (None: keep the codes)."""
    if lookup is None:
        return codes
    table = lookup([str(x) for x in ids]).numpy().astype(np.int64, copy=False)
    return table[codes]


class ComparisonDataset(torch.utils.data.Dataset):
    """Comparisons of ``data`` at ``rows`` as model-ready tensors, fetched a batch at a time.

    Args:
        data: the preferences; must carry ``item_features``.
        rows: comparison rows to serve (all by default).
        model: when given (and built), user, item and context indices are translated into the
            model's vocabularies through its ``user_index``, ``item_index`` and ``context_index``.
    """

    def __init__(self, data: PreferenceData, rows: np.ndarray | None = None, model=None) -> None:
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
        if built and data.context_ids is not None:
            table = np.append(_remap(model.context_index, data.context_ids, np.arange(len(data.context_ids))), -1)
            context = table[data.context[rows]]  # index -1 (no context) reads the appended -1
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
