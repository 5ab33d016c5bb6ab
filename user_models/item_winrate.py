"""Item win-rate: a strong non-personalized baseline that knows only item identity.

Each item's reward is the log-odds of its smoothed win rate over the training comparisons,
``log((wins + a) / (losses + a))``; items never compared in training score 0. Ties count half a win
and half a loss. On the bundled data this beats Bradley-Terry on frozen text features by 2 to 5
points, which is why every latent-user model here has hybrid items.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from plural.core.model import ModelConfig, PreferenceModel, UserState, register_model


@dataclasses.dataclass
class ItemWinRateConfig(ModelConfig):
    """Config of :class:`ItemWinRate`."""

    smoothing: float = 1.0
    """Pseudo-count ``a`` added to wins and to losses."""

    def validate(self) -> None:
        super().validate()
        if not self.smoothing > 0:
            raise ValueError(f"smoothing must be > 0, got {self.smoothing!r}")


@register_model
class ItemWinRate(PreferenceModel):
    """Reward = smoothed log-odds of the item's training win rate; no user state."""

    name = "item_winrate"
    config_class = ItemWinRateConfig

    def _build(self, feature_dim: int) -> None:
        self.register_buffer("wins", torch.zeros(len(self.item_ids_) + 1, dtype=torch.float64))
        self.register_buffer("losses", torch.zeros(len(self.item_ids_) + 1, dtype=torch.float64))

    def fit(self, data, *, train_rows=None, encoder=None, **ignored) -> "ItemWinRate":
        """Count wins and losses over ``train_rows`` (closed form: no gradient training)."""
        from plural.data.encoders import ensure_features

        start = time.perf_counter()
        data = ensure_features(data, encoder)
        rows = np.arange(len(data)) if train_rows is None else np.asarray(train_rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError("no training comparisons")
        self.build_for(data, rows)
        y, w = data.label[rows].astype(np.float64), data.weight[rows].astype(np.float64)
        n = len(self.item_ids_)
        wins = np.bincount(data.item_a[rows], y * w, n) + np.bincount(data.item_b[rows], (1 - y) * w, n)
        losses = np.bincount(data.item_a[rows], (1 - y) * w, n) + np.bincount(data.item_b[rows], y * w, n)
        self.wins[:n] = torch.from_numpy(wins)
        self.losses[:n] = torch.from_numpy(losses)
        self.fit_report_ = {"epochs": 0, "best_epoch": None, "best_val_loss": None, "n_train": int(len(rows)),
                            "n_val": 0, "seconds": time.perf_counter() - start, "device": "cpu",
                            "world_size": 1}
        return self

    def item_reward(self, item_index: torch.Tensor | None, n: int) -> torch.Tensor:
        if item_index is None:
            return torch.zeros(n, device=self.wins.device)
        idx = torch.where(item_index < 0, torch.full_like(item_index, len(self.item_ids_)), item_index)
        a = self.config.smoothing
        wins, losses = self.wins[idx], self.losses[idx]
        seen = (wins + losses) > 0
        return torch.where(seen, torch.log((wins + a) / (losses + a)), torch.zeros_like(wins)).float()

    def pair_margin(self, batch: dict) -> torch.Tensor:
        n = len(batch["label"])
        return self.item_reward(batch["item_a"], n) - self.item_reward(batch["item_b"], n)

    def reward(self, item_features, user_state=None, item_index=None) -> torch.Tensor:
        self.check_is_fitted()
        self.check_features(item_features)
        scores = self.item_reward(None if item_index is None else item_index.to(self.wins.device),
                                  len(item_features))
        if isinstance(user_state, torch.Tensor):
            return scores.unsqueeze(0).expand(len(user_state), -1)
        return scores

    def user_states(self) -> torch.Tensor:
        self.check_is_fitted()
        return torch.zeros(len(self.user_ids_), 0)

    def population_state(self) -> UserState:
        return UserState(vector=torch.zeros(0))

    def adapt(self, support=None, prior=None) -> UserState:
        support = self.check_support(support)
        return UserState(vector=torch.zeros(0), n_comparisons=0 if support is None else len(support["label"]))
