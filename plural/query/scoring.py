"""Scoring items for a user: the entry point a recommender backend calls."""

from __future__ import annotations

import numpy as np
import torch

from plural.data.container import PreferenceData
from plural.core.model import PreferenceModel, UserState


@torch.no_grad()
def score_items(model: PreferenceModel, items: PreferenceData | np.ndarray,
                user: str | UserState | None = None, item_ids=None) -> np.ndarray:
    """Rewards of items for one user.

    Args:
        model: a fitted model.
        items: a ``PreferenceData`` (its item table, with features) or an ``(n_items, d)`` feature matrix.
        user: a :class:`UserState` (e.g. from ``model.adapt``), the id of a user seen in training, or
            None for the population reward.
        item_ids: ids of the rows of a feature matrix, so items the model knows use their learned
            identity (ignored for ``PreferenceData``, whose ids are used).

    Returns:
        ``(n_items,)`` float scores; higher is preferred.
    """
    model.check_is_fitted()
    if isinstance(items, PreferenceData):
        if items.item_features is None:
            raise ValueError(f"{items.name}: items have no features; encode them first "
                             "(plural.encode_items)")
        features, item_ids = items.item_features, items.item_ids
    else:
        features = np.asarray(items, dtype=np.float32)
    index = None if item_ids is None else model.item_index(item_ids).to(model.device)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(model.device)
    if isinstance(user, str):
        row = int(model.user_index([user])[0])
        if row < 0:
            raise ValueError(f"unknown user id {user!r}: not seen in training; adapt a state for them instead")
        state = model.user_states()[row:row + 1]
        return model.reward(x, state, index)[0].float().cpu().numpy()
    return model.reward(x, user, index).float().cpu().numpy()
