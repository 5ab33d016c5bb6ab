"""Low-rank personalized rewards (LoRe / reward features).

Follows Bose et al., "LoRe: Personalizing LLMs via Low-Rank Reward Modeling" (2025) and the
reward-features view of Barreto et al. (2025): a user's reward is a combination of K shared basis
rewards. Departures: (1) the reward is a full-rank population reward plus the low-rank personal part,
``r_u(x) = (w0 + B u) . phi(x) + b(x)``, with ``u = 0`` for a user with no comparisons, so the model
is a Bradley-Terry model at k=0 (a low-rank model whose population term is only the mean user
weight lost 3-5 points at k=0 on the bundled data); (2) items are hybrid (``phi`` and ``b`` from
features plus learned item embeddings); (3) a new user is fitted by Newton's method under the
population's empirical Gaussian prior, with a Laplace covariance, instead of gradient steps; (4)
where the training data has absolute observations (votes, ratings), training starts from their
truncated SVD (``plural.core.spectral``), the classical collaborative-filtering factorization, and
fine-tunes it at a tenth of the learning rate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from plural.core.laplace import LinearMargins
from plural.core.latent import LatentConfig, LatentUserModel
from plural.core.model import INNER_PRODUCT, RetrievalForm, register_model
from plural.core.spectral import SpectralStart, spectral_start


@dataclasses.dataclass
class LowRankConfig(LatentConfig):
    """Config of :class:`LowRank`; ``n_components`` is the rank K of the personal part."""

    spectral_start: bool = True
    """Where the training comparisons' users have observations (votes, ratings) and items have
    learned identities, start the user vectors, the personal factors ``B^T phi(x)`` and the
    population reward from the observations' truncated SVD (``plural.core.spectral``) instead of
    random weights. Trained from random weights on Polis, the item factors were worse than the SVD's
    (``benchmarks/polis_factors.py``)."""
    spectral_lr_multiplier: float = 0.1
    """Multiplies every learning rate when training starts from the SVD: at the full rate the
    first epoch's steps undid the start (best epoch 0, and the population reward lost 1.8 points
    of k=0 accuracy on Polis); at a tenth training improved on it for four epochs."""

    def validate(self) -> None:
        super().validate()
        if not self.spectral_lr_multiplier > 0:
            raise ValueError(f"spectral_lr_multiplier must be > 0, got {self.spectral_lr_multiplier!r}")


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

    def initialize_from(self, data, train_rows, random_state: int = 0) -> None:
        """The spectral start (``config.spectral_start``): sets ``start_`` to what was done."""
        self.start_ = {"kind": "random"}
        cfg = self.config
        if not (cfg.spectral_start and cfg.use_identity) or cfg.item_dim < cfg.n_components:
            return
        user_index = self.user_index(list(data.user_ids)).numpy()
        item_index = self.item_index(list(data.item_ids)).numpy()
        start = spectral_start(data, train_rows, user_index, item_index, len(self.user_ids_),
                               len(self.item_ids_), cfg.n_components, random_state)
        if start is None:
            return
        self._install_start(start, data.item_features, item_index, random_state)
        self.start_ = {"kind": "spectral", "logit_scale": start.logit_scale,
                       "n_observations": start.n_observations, "n_users": int(start.observed_users.sum()),
                       "n_items": int(start.observed_items.sum())}

    def _install_start(self, start: SpectralStart, features: np.ndarray, item_index: np.ndarray,
                       random_state: int) -> None:
        """Weights such that the population reward of an observed item is ``logit_scale * mean``, its
        personal factors ``B^T phi(x)`` are ``logit_scale * factors``, and the observed users' vectors
        are the SVD's: an orthonormal ``B``, a population weight orthogonal to it, and the item
        identities making up the difference from the feature map's output."""
        scale = start.logit_scale
        generator = torch.Generator().manual_seed(random_state)
        with torch.no_grad():
            basis, _ = torch.linalg.qr(torch.randn(self.config.item_dim, self.config.n_components,
                                                   generator=generator))
            self.basis.copy_(basis)
            w0 = self.population_weight
            w0 -= basis @ (basis.T @ w0)
            known = item_index >= 0
            rows = torch.from_numpy(item_index[known])
            observed = torch.from_numpy(start.observed_items)[rows]
            rows = rows[observed]
            x = torch.from_numpy(np.ascontiguousarray(features[known], dtype=np.float32))[observed]
            mapped = self.items.feature_map(x)
            target = scale * torch.from_numpy(start.factors[rows.numpy()]).float()
            self.items.item_embedding.weight[rows] = target @ basis.T - (mapped @ basis) @ basis.T
            mean = torch.from_numpy(start.mean[rows.numpy()]).float()
            self.items.item_bias.weight[rows, 0] = scale * mean - self.items.feature_bias(x)[:, 0] - mapped @ w0
            users = torch.from_numpy(np.flatnonzero(start.observed_users))
            self.user_embedding.weight[users] = torch.from_numpy(start.users[users.numpy()]).float()
            cuts = torch.from_numpy(start.cut_points).float()
            if self.items.n_thresholds == len(cuts):
                self.items.threshold_embedding.zero_()
                self.items.threshold_start.fill_(float(cuts[0]))
                self.items.threshold_gaps.copy_(torch.log(torch.expm1(torch.diff(cuts))))

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        if getattr(self, "start_", {}).get("kind") == "spectral":  # a spectral start is fine-tuned, not retrained
            for group in optimizer.param_groups:
                group["lr"] *= self.config.spectral_lr_multiplier
        return optimizer

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
