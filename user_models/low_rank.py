"""Low-rank personalized rewards (LoRe / reward features).

Follows Bose et al., "LoRe: Personalizing LLMs via Low-Rank Reward Modeling" (2025) and the
reward-features view of Barreto et al. (2025): a user's reward is a combination of K shared basis
rewards. Departures: (1) the reward is a full-rank population reward plus the low-rank personal part,
``r_u(x) = (w0 + B u) . phi(x) + b(x)``, with ``u = 0`` for a user with no comparisons, so the model
is a Bradley-Terry model at k=0 (a low-rank model whose population term is only the mean user
weight lost 3-5 points at k=0 on the bundled data); (2) items are hybrid (``phi`` and ``b`` from
features plus learned item embeddings); (3) a new user is fitted by Newton's method under the
population's empirical Gaussian prior, with a Laplace covariance, instead of gradient steps.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from plural.core.laplace import LinearMargins
from plural.core.latent import LatentConfig, LatentUserModel
from plural.core.model import INNER_PRODUCT, RetrievalForm, register_model


@dataclasses.dataclass
class LowRankConfig(LatentConfig):
    """Config of :class:`LowRank`; ``n_components`` is the rank K of the personal part."""


@register_model
class LowRank(LatentUserModel):
    """``r_u(x) = (w0 + B u) . phi(x) + b(x)`` with ``B`` of shape ``(item_dim, K)``."""

    name = "low_rank"
    config_class = LowRankConfig
    listing_order = 50

    def _build_head(self, feature_dim: int) -> None:
        h, k = self.config.item_dim, self.config.n_components
        self.population_weight = nn.Parameter(torch.randn(h) / h ** 0.5)
        self.basis = nn.Parameter(torch.randn(h, k) / h ** 0.5)

    def score(self, phi, bias, u, context=None):
        w = self.population_weight + u @ self.basis.T
        return (phi * w).sum(-1) + bias

    def _absorb_user_mean(self, mean: torch.Tensor) -> None:
        self.population_weight += self.basis @ mean  # (w0 + B m) + B (u - m) = w0 + B u

    def retrieval_form(self) -> RetrievalForm:
        """Inner product: items ``phi(x)``, bias ``b(x)``, query ``w0 + B u``."""
        return self._retrieval_form(INNER_PRODUCT, lambda u: self.population_weight + self.basis @ u)

    def _margins_of(self, support: dict) -> LinearMargins:
        n = len(support["features_a"])  # both sides through the item layers in one pass
        level = support.get("level")
        if level is not None:  # only the b side can be a threshold
            level = torch.cat([torch.full_like(level, -1), level])
        phi, bias = self.items(torch.cat([support["features_a"], support["features_b"]]),
                               torch.cat([support["item_a"], support["item_b"]]), level)
        delta = (phi[:n] - phi[n:]).double()
        offset = delta @ self.population_weight.double() + (bias[:n] - bias[n:]).double()
        return LinearMargins(delta @ self.basis.double(), offset)
