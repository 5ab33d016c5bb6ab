"""Synthetic preferences whose true rewards are known, for tests and recovery checks."""

from __future__ import annotations

import numpy as np

from plural.data.container import PreferenceData


def make_population(n_users: int = 50, n_items: int = 200, dim: int = 16, comparisons_per_user: int = 40,
                    noise_scale: float = 1.0, random_state: int = 0) -> tuple[PreferenceData, np.ndarray]:
    """Everybody shares one linear reward ``r(x) = w . x``; labels follow Bradley-Terry.

    Args:
        n_users, n_items, dim: sizes; items get standard normal features ``(n_items, dim)``.
        comparisons_per_user: random item pairs judged by each user.
        noise_scale: scale of ``w`` is ``3 / noise_scale``; larger means noisier labels.
        random_state: seed.

    Returns:
        ``(data, w)``: the preferences (with features) and the true weight vector ``(dim,)``.
    """
    for name, value in (("n_users", n_users), ("n_items", n_items), ("dim", dim),
                        ("comparisons_per_user", comparisons_per_user)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if n_items < 2:
        raise ValueError(f"n_items must be >= 2, got {n_items!r}")
    rng = np.random.default_rng(random_state)
    features = rng.standard_normal((n_items, dim)).astype(np.float32)
    w = rng.standard_normal(dim)
    w *= 3.0 / (noise_scale * np.linalg.norm(w))
    n = n_users * comparisons_per_user
    user = np.repeat(np.arange(n_users), comparisons_per_user)
    a = rng.integers(0, n_items, n)
    b = (a + rng.integers(1, n_items, n)) % n_items
    margin = (features[a] - features[b]) @ w
    label = (rng.random(n) < 1 / (1 + np.exp(-margin))).astype(np.float32)
    data = PreferenceData(
        user_ids=[f"u{i}" for i in range(n_users)], item_ids=[f"i{j}" for j in range(n_items)],
        user=user, item_a=a, item_b=b, label=label, item_features=features, name="synthetic_population")
    return data, w
