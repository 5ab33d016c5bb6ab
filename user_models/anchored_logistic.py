"""Per-user logistic regression in the full feature space: the strong per-user baselines.

The population is a linear Bradley-Terry model on raw item features, ``r(x) = w . x``. A new user
gets their own ``w_u``, the MAP of a logistic regression on their k support comparisons under an L2
prior: centred on the population weights (``anchored_logistic``, the strong baseline), or on zero
(``per_user_logistic``, the classic per-user model that knows nothing of the population). Solved
by Newton's method with a Laplace covariance, exactly like the latent models' adaptation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from plural.core.laplace import gauss_newton_map, linear_margins
from plural.core.model import ModelConfig, PreferenceModel, UserState, register_model


@dataclasses.dataclass
class AnchoredLogisticConfig(ModelConfig):
    """Config of :class:`AnchoredLogistic`."""

    prior_precision: float = 10.0
    """Strength of the L2 prior on a user's weights (larger: stay closer to the anchor)."""
    anchored: bool = True
    """Centre the prior on the population weights (True) or on zero (False)."""
    adapt_steps: int = 8
    """Newton steps in ``adapt``."""

    def validate(self) -> None:
        super().validate()
        if not self.prior_precision > 0:
            raise ValueError(f"prior_precision must be > 0, got {self.prior_precision!r}")


@register_model
class AnchoredLogistic(PreferenceModel):
    """Linear population reward; per-user weights by MAP around it (see the module docstring)."""

    name = "anchored_logistic"
    config_class = AnchoredLogisticConfig
    listing_order = 40

    def _build(self, feature_dim: int) -> None:
        self.weight = nn.Parameter(torch.zeros(feature_dim))

    def pair_margin(self, batch: dict) -> torch.Tensor:
        return (batch["features_a"] - batch["features_b"]) @ self.weight

    def _anchor(self) -> torch.Tensor:
        w = self.weight.detach().double()
        return w if self.config.anchored else torch.zeros_like(w)

    def reward(self, item_features, user_state=None, item_index=None) -> torch.Tensor:
        self.check_is_fitted()
        self.check_features(item_features)
        x = item_features.to(self.weight.device)
        if isinstance(user_state, torch.Tensor):
            if user_state.shape[1] == 0:  # users seen in training use the population weights
                return (x @ self.weight).unsqueeze(0).expand(len(user_state), -1)
            return user_state.to(x) @ x.T
        w = self.weight if user_state is None or user_state.vector.numel() == 0 else user_state.vector.to(x)
        return x @ w

    def user_states(self) -> torch.Tensor:
        self.check_is_fitted()
        return torch.zeros(len(self.user_ids_), 0)

    def population_state(self) -> UserState:
        self.check_is_fitted()
        return UserState(vector=self._anchor().float().cpu())

    def adapt(self, support=None, prior=None) -> UserState:
        support = self.check_support(support)
        mean = self._anchor() if prior is None else prior.vector.double().to(self.weight.device)
        n = 0 if support is None else int(len(support["label"]))
        if n == 0:
            return UserState(vector=mean.float().cpu(), n_comparisons=0)
        delta = (support["features_a"] - support["features_b"]).to(self.weight.device)
        d = self.feature_dim_
        precision = torch.eye(d, dtype=torch.float64, device=delta.device) * self.config.prior_precision
        u, cov = gauss_newton_map(linear_margins(delta, torch.zeros(n, device=delta.device)),
                                  support["label"].to(delta.device), mean, precision,
                                  weight=support["weight"].to(delta.device), n_steps=self.config.adapt_steps)
        return UserState(vector=u.float().cpu(), covariance=cov.float().cpu(), n_comparisons=n)


@dataclasses.dataclass
class PerUserLogisticConfig(AnchoredLogisticConfig):
    """Config of :class:`PerUserLogistic`: the prior is centred on zero."""

    anchored: bool = False
    prior_precision: float = 1.0


@register_model
class PerUserLogistic(AnchoredLogistic):
    """Per-user logistic regression with an L2 prior at zero (no population anchor)."""

    name = "per_user_logistic"
    config_class = PerUserLogisticConfig
    listing_order = 30
