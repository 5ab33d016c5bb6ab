"""Building blocks shared by the model zoo."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> GELU -> Dropout -> Linear``."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, out_dim))


class HybridItems(nn.Module):
    """Hybrid item representation: features through a learned map, plus a learned embedding and
    bias for items seen in training (in the manner of LightFM), so warm items get the collaborative
    signal and new items fall back on their features.

    ``forward(features (n, d), item_index (n,))`` returns ``phi (n, out_dim)`` and ``bias (n,)``;
    ``item_index`` -1 marks an item with no learned identity (its embedding and bias are zero).

    Args:
        feature_dim: input feature dimension ``d``.
        n_items: number of items that get a learned identity.
        out_dim: dimension of ``phi``.
        hidden_dim, dropout: of the feature MLP.
        use_identity: False gives a content-only representation.
        n_levels: length of the scale of the observations (votes, ratings) the model learns from;
            0 for none. A scale of ``L`` levels gets ``L - 1`` ordered thresholds, items of their
            own: one learned representation shared by the thresholds (so a user's vector moves
            them together) and increasing biases. ``forward``'s ``level`` (``(n,)``, -1 for a real
            item) puts threshold ``level`` in a row's place.
    """

    def __init__(self, feature_dim: int, n_items: int, out_dim: int, hidden_dim: int,
                 dropout: float = 0.0, use_identity: bool = True, n_levels: int = 0) -> None:
        super().__init__()
        self.n_thresholds = max(int(n_levels) - 1, 0)
        if self.n_thresholds:
            self.threshold_embedding = nn.Parameter(torch.zeros(out_dim))
            self.threshold_start = nn.Parameter(torch.zeros(()))
            self.threshold_gaps = nn.Parameter(torch.zeros(self.n_thresholds - 1))
        self.n_items = n_items
        self.use_identity = use_identity
        self.feature_map = mlp(feature_dim, hidden_dim, out_dim, dropout)
        self.feature_bias = nn.Linear(feature_dim, 1)
        if use_identity:
            # the last row is the "unknown item" row: zero, and never trained (padding_idx)
            self.item_embedding = nn.Embedding(n_items + 1, out_dim, padding_idx=n_items)
            self.item_bias = nn.Embedding(n_items + 1, 1, padding_idx=n_items)
            nn.init.zeros_(self.item_embedding.weight)
            nn.init.zeros_(self.item_bias.weight)

    @classmethod
    def from_config(cls, feature_dim: int, n_items: int, config, n_levels: int = 0) -> "HybridItems":
        """Items as a latent-user config asks (``item_dim``, ``hidden_dim``, ``dropout``, ``use_identity``)."""
        return cls(feature_dim, n_items, config.item_dim, config.hidden_dim, config.dropout, config.use_identity,
                   n_levels)

    def identity_penalty(self) -> torch.Tensor:
        """Sum of squares of the learned item embeddings and biases (their Gaussian prior), the
        thresholds' shared representation included."""
        total = self.feature_bias.weight.new_zeros(())
        if self.n_thresholds:
            total = total + self.threshold_embedding.pow(2).sum()
        if not self.use_identity:
            return total
        return total + self.item_embedding.weight.pow(2).sum() + self.item_bias.weight.pow(2).sum()

    def threshold_biases(self) -> torch.Tensor:
        """``(n_thresholds,)`` increasing biases of the thresholds (the population's cut points)."""
        gaps = nn.functional.softplus(self.threshold_gaps)
        return self.threshold_start + torch.cat([gaps.new_zeros(1), torch.cumsum(gaps, 0)])

    def forward(self, features: torch.Tensor, item_index: torch.Tensor | None = None,
                level: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.feature_map(features)
        bias = self.feature_bias(features).squeeze(-1)
        if self.use_identity and item_index is not None:
            idx = torch.where(item_index < 0, torch.full_like(item_index, self.n_items), item_index)
            phi = phi + self.item_embedding(idx)
            bias = bias + self.item_bias(idx).squeeze(-1)
        if level is not None and self.n_thresholds:
            is_threshold = level >= 0
            phi = torch.where(is_threshold.unsqueeze(-1), self.threshold_embedding.to(phi.dtype), phi)
            bias = torch.where(is_threshold, self.threshold_biases().to(bias.dtype)[level.clamp_min(0)], bias)
        elif level is not None and bool((level >= 0).any()):
            raise ValueError("these items have no thresholds: the model was not trained on observations")
        return phi, bias
