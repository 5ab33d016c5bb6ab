"""The population Bradley-Terry reward model: one reward for everybody.

Follows Bradley & Terry (1952) as used for RLHF reward models (Ouyang et al., 2022): a scalar reward
``r(x) = MLP(features(x))`` and ``P(a preferred over b) = sigmoid(r(a) - r(b))``. It has no user state:
``adapt`` returns the population state whatever the support, and ``user_states`` is ``(n_users, 0)``.
It is content-only (no learned item identities): the baseline every latent-user model must beat.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from plural.core.model import ModelConfig, PreferenceModel, UserState, register_model


@dataclasses.dataclass
class BradleyTerryConfig(ModelConfig):
    """Config of :class:`BradleyTerry` (the shared fields only)."""


@register_model
class BradleyTerry(PreferenceModel):
    """Population reward ``r(x) = MLP(x)`` over item features.

    Example:
        >>> import plural
        >>> model = plural.make_model("bradley_terry", hidden_dim=32)
        >>> model.name
        'bradley_terry'
    """

    name = "bradley_terry"
    config_class = BradleyTerryConfig
    listing_order = 10

    def _build(self, feature_dim: int) -> None:
        cfg = self.config
        self.head = nn.Sequential(
            nn.Linear(feature_dim, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, 1))

    def item_reward(self, features: torch.Tensor) -> torch.Tensor:
        """``(n,)`` population reward of items with features ``(n, d)``."""
        return self.head(features).squeeze(-1)

    def pair_margin(self, batch: dict) -> torch.Tensor:
        return self.item_reward(batch["features_a"]) - self.item_reward(batch["features_b"])

    def reward(self, item_features, user_state=None, item_index=None) -> torch.Tensor:
        self.check_is_fitted()
        self.check_features(item_features)
        scores = self.item_reward(item_features.to(self.device))
        if isinstance(user_state, torch.Tensor):
            return scores.unsqueeze(0).expand(len(user_state), -1)
        return scores

    def user_states(self) -> torch.Tensor:
        self.check_is_fitted()
        return torch.zeros(len(self.user_ids_), 0, device=self.device)

    def population_state(self) -> UserState:
        self.check_is_fitted()
        return UserState(vector=torch.zeros(0))

    def adapt(self, support=None, prior=None) -> UserState:
        support = self.check_support(support)
        n = 0 if support is None else int(len(support["label"]))
        return UserState(vector=torch.zeros(0), n_comparisons=n)
