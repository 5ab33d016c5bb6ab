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
    """

    def __init__(self, feature_dim: int, n_items: int, out_dim: int, hidden_dim: int,
                 dropout: float = 0.0, use_identity: bool = True) -> None:
        super().__init__()
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
    def from_config(cls, feature_dim: int, n_items: int, config) -> "HybridItems":
        """Items as a latent-user config asks (``item_dim``, ``hidden_dim``, ``dropout``, ``use_identity``)."""
        return cls(feature_dim, n_items, config.item_dim, config.hidden_dim, config.dropout, config.use_identity)

    def identity_penalty(self) -> torch.Tensor:
        """Sum of squares of the learned item embeddings and biases (their Gaussian prior)."""
        if not self.use_identity:
            return self.feature_bias.weight.new_zeros(())
        return self.item_embedding.weight.pow(2).sum() + self.item_bias.weight.pow(2).sum()

    def forward(self, features: torch.Tensor, item_index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.feature_map(features)
        bias = self.feature_bias(features).squeeze(-1)
        if self.use_identity and item_index is not None:
            idx = torch.where(item_index < 0, torch.full_like(item_index, self.n_items), item_index)
            phi = phi + self.item_embedding(idx)
            bias = bias + self.item_bias(idx).squeeze(-1)
        return phi, bias
