"""Synthetic preferences whose true rewards are known, for tests and recovery checks.

Every generator but :func:`make_population` returns a :class:`SyntheticData`: the comparisons plus
the true reward of every user, ``r_u(i) = true_user_weights[u] . reward_features[i]``, so the best
any model could do on the data (:meth:`SyntheticData.oracle_accuracy`) is known.

- :func:`make_mixture`: K user types, each with a linear reward (shared part + own part).
- :func:`make_low_rank`: a population reward plus a per-user offset in a small subspace.
- :func:`make_length_preference`: real UKPConvArg1 arguments; most users prefer the longer one, a
  minority the shorter, as PAL (Chen et al., 2024) did with summary length on Reddit TL;DR.
- :func:`make_noisy`: flips a share of the labels of any of them at random.

All labels are Bradley-Terry draws, ``P(a preferred) = sigmoid(r_u(a) - r_u(b))``; label noise is
applied afterwards and recorded (``flipped``, ``clean_label``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.core.likelihood import prediction_agreement
from plural.data.container import PreferenceData

__all__ = ["SyntheticData", "few_shot_oracle", "type_oracle", "make_length_preference", "make_low_rank", "make_mixture", "make_noisy",
           "make_population"]

_CHUNK = 8192  # rows per block when computing margins, to bound memory


@dataclasses.dataclass(eq=False)
class SyntheticData:
    """Preferences together with the true reward of every user.

    Attributes:
        data: the comparisons; ``data.label`` holds the observed (possibly flipped) labels.
        true_user_weights: ``(n_users, d)`` float64; user ``u``'s true reward of item ``i`` is
            ``true_user_weights[u] @ reward_features[i]`` (any reward scale is folded in here).
        user_type: ``(n_users,)`` int64 type of each user, or None where users have no types.
        flipped: ``(n,)`` bool, True where the observed label is the flip of the clean one; the
            realised flip rate is ``flipped.mean()``.
        clean_label: ``(n,)`` float32 Bradley-Terry labels before any flipping.
        reward_features: ``(n_items, d)`` float32 item side of the true reward; the same array as
            ``data.item_features`` for the feature-based generators.
    """

    data: PreferenceData
    true_user_weights: np.ndarray
    user_type: np.ndarray | None
    flipped: np.ndarray
    clean_label: np.ndarray
    reward_features: np.ndarray

    def true_reward(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(n,)`` true reward of ``items[k]`` for ``users[k]`` (integer index arrays)."""
        return _rewards(self.true_user_weights, self.reward_features, np.asarray(users),
                        np.asarray(items))

    def oracle_margin(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``(n,)`` true margins ``r_u(item_a) - r_u(item_b)`` at ``rows`` (indices or a boolean
        mask; all comparisons by default); positive means the user truly prefers ``item_a``."""
        user, a, b = self._columns(rows)
        return self.true_reward(user, a) - self.true_reward(user, b)

    def oracle_accuracy(self, rows: np.ndarray | None = None) -> float:
        """Share of the decisive comparisons at ``rows`` whose observed label agrees with the sign
        of the true margin (a zero margin counts one half): the accuracy of the true rewards."""
        return _agreement(self.oracle_margin(rows), self.data.label[_rows(rows, len(self.data))])

    def majority_type_accuracy(self, rows: np.ndarray | None = None) -> float:
        """Accuracy at ``rows`` of predicting every user with the reward of the most common type:
        roughly the ceiling of a single population reward."""
        if self.user_type is None:
            raise ValueError("majority_type_accuracy needs user types; this data has none")
        majority = int(np.argmax(np.bincount(self.user_type)))
        weights = self.true_user_weights[np.flatnonzero(self.user_type == majority)[0]]
        _, a, b = self._columns(rows)
        diff = self.reward_features[a].astype(np.float64) - self.reward_features[b]
        return _agreement(diff @ weights, self.data.label[_rows(rows, len(self.data))])

    def _columns(self, rows):
        rows = _rows(rows, len(self.data))
        return self.data.user[rows], self.data.item_a[rows], self.data.item_b[rows]


def _rows(rows: np.ndarray | None, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows


def _rewards(weights: np.ndarray, features: np.ndarray, users: np.ndarray,
             items: np.ndarray) -> np.ndarray:
    out = np.empty(len(users), dtype=np.float64)
    for start in range(0, len(users), _CHUNK):
        stop = start + _CHUNK
        out[start:stop] = np.einsum("nd,nd->n", weights[users[start:stop]],
                                    features[items[start:stop]].astype(np.float64))
    return out


def _agreement(margin: np.ndarray, label: np.ndarray) -> float:
    decisive = label != 0.5
    if not decisive.any():
        raise ValueError("no decisive comparisons (labels 0 or 1) at the given rows")
    margin, label = margin[decisive], label[decisive]
    return float(prediction_agreement(0.5 + 0.5 * np.sign(margin), label).mean())


# ---------------------------------------------------------------------- shared steps
def _check_counts(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_share(name: str, value: float, high: float = 1.0) -> None:
    if not 0.0 <= value <= high:
        raise ValueError(f"{name} must be in [0, {high}], got {value!r}")


def _assign_types(rng: np.random.Generator, n_users: int, shares: np.ndarray) -> np.ndarray:
    """``(n_users,)`` types with counts as close to ``shares * n_users`` as whole users allow
    (largest remainder), in random order."""
    exact = shares * n_users
    counts = np.floor(exact).astype(np.int64)
    short = n_users - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return rng.permutation(np.repeat(np.arange(len(shares)), counts))


def _sample_pairs(rng: np.random.Generator, n: int,
                  item_group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` pairs of two distinct items of one group, the group drawn in proportion to its size
    (so every pairable item is equally likely to be ``item_a``). Returns ``(a, b, group)``."""
    order = np.argsort(item_group, kind="stable")
    labels, starts, sizes = np.unique(item_group[order], return_index=True, return_counts=True)
    pairable = sizes >= 2
    if not pairable.any():
        raise ValueError("no group holds two items to compare")
    labels, starts, sizes = labels[pairable], starts[pairable], sizes[pairable]
    group = rng.choice(len(sizes), n, p=sizes / sizes.sum())
    i = rng.integers(0, sizes[group])
    j = (i + rng.integers(1, sizes[group])) % sizes[group]
    return order[starts[group] + i], order[starts[group] + j], labels[group]


def _flip(rng: np.random.Generator, label: np.ndarray,
          flip_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Flip each decisive label with probability ``flip_rate``. The uniforms are drawn whatever
    the rate, so under one seed a lower rate flips a subset of what a higher rate flips."""
    flipped = (rng.random(len(label)) < flip_rate) & (label != 0.5)
    return np.where(flipped, 1 - label, label).astype(np.float32), flipped


def type_oracle(syn: SyntheticData) -> dict:
    """The true per-type rewards of a generator with user types, for :func:`few_shot_oracle`:
    ``{"weights": (T, d), "shares": (T,), "reward_features": (n_items, d), "flip_rate"}``."""
    if syn.user_type is None:
        raise ValueError("type_oracle needs user types; this data has none")
    types = np.unique(syn.user_type)
    weights = np.stack([syn.true_user_weights[np.flatnonzero(syn.user_type == t)[0]] for t in types])
    shares = np.bincount(syn.user_type)[types] / len(syn.user_type)
    return {"weights": weights.astype(np.float64), "shares": shares.astype(np.float64),
            "reward_features": np.asarray(syn.reward_features, dtype=np.float64),
            "flip_rate": float(syn.flipped.mean())}


def few_shot_oracle(data: PreferenceData, episodes, ks, oracle: dict) -> list[dict]:
    """The best accuracy any model can reach on few-shot episodes of a typed population: the Bayes
    predictor that knows every type's true reward and the type shares, and infers a new user's type
    from their k support labels (Bradley-Terry likelihood, with the realised flip rate).

    At k=0 this is the share-weighted mixture of the type rewards; as k grows it approaches the
    oracle accuracy (the user's own true reward). Averaged like :func:`plural.evaluation.fewshot.few_shot_curve`
    (episodes -> per-user mean -> mean over users), so the two can share a table.

    Returns:
        ``[{"k", "accuracy", "n_users"}, ...]``.
    """
    weights, features = oracle["weights"], oracle["reward_features"]
    log_prior = np.log(np.maximum(oracle["shares"], 1e-300))
    eps = float(oracle.get("flip_rate", 0.0))

    def type_prob(rows: np.ndarray) -> np.ndarray:  # (n, T) P(a preferred) under each type
        margin = (features[data.item_a[rows]] - features[data.item_b[rows]]) @ weights.T
        return eps + (1 - 2 * eps) * 0.5 * (1.0 + np.tanh(0.5 * margin))

    out = []
    for k in ks:
        per_user: dict[int, list[float]] = {}
        for ep in episodes:
            if k > len(ep.support_pool):
                continue
            logp = log_prior.copy()
            if k:
                rows = ep.support(k)
                p, y = type_prob(rows), data.label[rows][:, None].astype(np.float64)
                logp = logp + (y * np.log(p) + (1 - y) * np.log1p(-p)).sum(0)
            post = np.exp(logp - logp.max())
            post /= post.sum()
            prob = type_prob(ep.query) @ post
            y = data.label[ep.query]
            decisive = y != 0.5
            if decisive.any():
                right = np.where(prob == 0.5, 0.5, ((prob > 0.5) == (y == 1)).astype(np.float64))
                per_user.setdefault(ep.user, []).append(float(right[decisive].mean()))
        if per_user:
            out.append({"k": int(k), "accuracy": float(np.mean([np.mean(v) for v in per_user.values()])),
                        "n_users": len(per_user)})
    return out


def _synthesize(rng: np.random.Generator, *, user_weights: np.ndarray, reward_features: np.ndarray,
                user_type: np.ndarray | None, user: np.ndarray, a: np.ndarray, b: np.ndarray,
                flip_rate: float, **data_fields) -> SyntheticData:
    """Bradley-Terry labels from the true margins, then random flips; assemble the result."""
    margin = (_rewards(user_weights, reward_features, user, a)
              - _rewards(user_weights, reward_features, user, b))
    p_a = 0.5 * (1.0 + np.tanh(0.5 * margin))  # sigmoid without overflow
    clean = (rng.random(len(margin)) < p_a).astype(np.float32)
    label, flipped = _flip(rng, clean, flip_rate)
    data = PreferenceData(user=user, item_a=a, item_b=b, label=label, **data_fields)
    return SyntheticData(data=data, true_user_weights=user_weights, user_type=user_type,
                         flipped=flipped, clean_label=clean, reward_features=reward_features)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _majority_share(user_type: np.ndarray) -> float:
    return float(np.bincount(user_type).max() / len(user_type))


# ---------------------------------------------------------------------- generators
def make_mixture(n_types: int = 4, n_users: int = 400, n_items: int = 2000, dim: int = 384,
                 comparisons_per_user: int = 100, type_weights=None, scale: float = 4.0,
                 shared_weight: float = 0.5, flip_rate: float = 0.0,
                 random_state: int = 0) -> SyntheticData:
    """Users of ``n_types`` types, each type with its own linear reward over item features.

    Type ``k`` has the unit direction ``w_k = normalize(shared_weight * w_shared + (1 -
    shared_weight) * v_k)`` (``w_shared``, ``v_k`` random unit vectors) and the reward
    ``r_k(x) = scale * w_k . x``; the shared part makes a single population reward better than
    chance but worse than the per-type ones. Items are unit-normalized Gaussian vectors, so a margin
    has standard deviation about ``scale * sqrt(2 / dim)``: at 384-d and ``scale=4`` labels are
    close to coin flips; raise ``scale`` for a clearer signal.

    Args:
        n_types: number of user types K.
        n_users, n_items, dim: sizes; features are ``(n_items, dim)`` float32.
        comparisons_per_user: random pairs of two distinct items judged by each user.
        type_weights: ``(n_types,)`` non-negative shares of users per type (normalized). Default
            proportional to ``K, K-1, ..., 1``, i.e. ``[0.4, 0.3, 0.2, 0.1]`` for K=4, so type 0
            is the majority. Type counts are exact up to rounding, not sampled.
        scale: reward scale; larger means less noisy Bradley-Terry labels.
        shared_weight: in [0, 1]; 1 gives every type the same reward, 0 independent ones.
        flip_rate: in [0, 0.5]; share of labels flipped after labelling.
        random_state: seed.

    Returns:
        :class:`SyntheticData` with ``user_type``; ``data.meta`` holds ``n_types``,
        ``majority_type_share`` (realised) and ``flip_rate``.

    Example:
        >>> syn = make_mixture(n_types=2, n_users=20, n_items=50, dim=8, comparisons_per_user=10)
        >>> syn.data.n_comparisons, syn.true_user_weights.shape
        (200, (20, 8))
    """
    _check_counts(n_types=n_types, n_users=n_users, dim=dim,
                  comparisons_per_user=comparisons_per_user)
    if n_items < 2:
        raise ValueError(f"n_items must be >= 2, got {n_items!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    _check_share("shared_weight", shared_weight)
    _check_share("flip_rate", flip_rate, 0.5)
    if type_weights is None:
        shares = np.arange(n_types, 0, -1, dtype=np.float64)
    else:
        shares = np.asarray(type_weights, dtype=np.float64)
        if shares.shape != (n_types,):
            raise ValueError(f"type_weights must have {n_types} entries, got shape {shares.shape}")
        if not (np.isfinite(shares).all() and (shares >= 0).all() and shares.sum() > 0):
            raise ValueError(f"type_weights must be non-negative with a positive sum, got "
                             f"{type_weights!r}")
    shares = shares / shares.sum()
    rng = np.random.default_rng(random_state)
    features = _unit_rows(rng.standard_normal((n_items, dim))).astype(np.float32)
    shared = _unit_rows(rng.standard_normal(dim))
    specific = _unit_rows(rng.standard_normal((n_types, dim)))
    directions = _unit_rows(shared_weight * shared + (1 - shared_weight) * specific)
    user_type = _assign_types(rng, n_users, shares)
    user = np.repeat(np.arange(n_users), comparisons_per_user)
    a, b, _ = _sample_pairs(rng, len(user), np.zeros(n_items, np.int64))
    return _synthesize(
        rng, user_weights=scale * directions[user_type], reward_features=features,
        user_type=user_type, user=user, a=a, b=b, flip_rate=flip_rate,
        user_ids=[f"u{i}" for i in range(n_users)], item_ids=[f"i{j}" for j in range(n_items)],
        item_features=features, name="synthetic_mixture",
        meta={"n_types": n_types, "majority_type_share": _majority_share(user_type),
              "flip_rate": flip_rate})


def make_low_rank(n_users: int = 400, n_items: int = 2000, dim: int = 64, rank: int = 3,
                  comparisons_per_user: int = 100, scale: float = 4.0, flip_rate: float = 0.0,
                  random_state: int = 0) -> SyntheticData:
    """A population reward plus a per-user offset in a ``rank``-dimensional subspace.

    User ``u`` has ``w_u = w0 + B @ c_u`` with ``c_u ~ N(0, 0.5^2 I)`` (``(rank,)``), where the unit
    population direction ``w0`` and the ``(dim, rank)`` basis ``B`` are orthonormal together; the
    reward is ``r_u(x) = scale * w_u . x`` (``w_u`` is not re-normalized) on unit-normalized
    Gaussian item features.

    Args:
        n_users, n_items, dim: sizes; features are ``(n_items, dim)`` float32.
        rank: size of the personal subspace, 1 to ``dim - 1``.
        comparisons_per_user: random pairs of two distinct items judged by each user.
        scale: reward scale.
        flip_rate: in [0, 0.5]; share of labels flipped after labelling.
        random_state: seed.

    Returns:
        :class:`SyntheticData` without user types; ``data.meta`` holds ``rank`` and ``flip_rate``.
    """
    _check_counts(n_users=n_users, dim=dim, rank=rank, comparisons_per_user=comparisons_per_user)
    if n_items < 2:
        raise ValueError(f"n_items must be >= 2, got {n_items!r}")
    if rank >= dim:
        raise ValueError(f"rank must be < dim ({dim}), got {rank!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    _check_share("flip_rate", flip_rate, 0.5)
    rng = np.random.default_rng(random_state)
    features = _unit_rows(rng.standard_normal((n_items, dim))).astype(np.float32)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, rank + 1)))
    coefs = 0.5 * rng.standard_normal((n_users, rank))
    weights = scale * (basis[:, 0] + coefs @ basis[:, 1:].T)
    user = np.repeat(np.arange(n_users), comparisons_per_user)
    a, b, _ = _sample_pairs(rng, len(user), np.zeros(n_items, np.int64))
    return _synthesize(
        rng, user_weights=weights, reward_features=features, user_type=None, user=user, a=a, b=b,
        flip_rate=flip_rate, user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{j}" for j in range(n_items)], item_features=features,
        name="synthetic_low_rank", meta={"rank": rank, "flip_rate": flip_rate})


def make_length_preference(data: PreferenceData | None = None, minority_share: float = 0.3,
                           n_users: int = 300, comparisons_per_user: int = 60, scale: float = 3.0,
                           flip_rate: float = 0.0, random_state: int = 0) -> SyntheticData:
    """Semi-synthetic users on real texts: most prefer the longer item, a minority the shorter.

    The items (ids and texts) are those of ``data``, by default the UKPConvArg1 arguments
    (``load("ukpconvarg1")``); its own labels are not used. With ``z(i)`` the log character length
    of item ``i`` standardized over all items, a type-0 user has the reward ``scale * z`` (prefers
    longer) and a type-1 user ``-scale * z`` (prefers shorter). Pairs are drawn within one context
    (debate topic): an item's topic is read from the comparisons of ``data`` it appears in (an item
    seen under several takes one of them; items seen under none are pooled); each comparison keeps
    its topic as ``context``. Without contexts any two items are paired. No features are attached:
    models are meant to encode the text.

    Args:
        data: source of the items; needs ``item_text``.
        minority_share: in [0, 1]; share of users who prefer the shorter item (exact up to
            rounding).
        n_users: simulated users.
        comparisons_per_user: pairs judged by each user.
        scale: reward scale per standard deviation of log length.
        flip_rate: in [0, 0.5]; share of labels flipped after labelling.
        random_state: seed.

    Returns:
        :class:`SyntheticData` with ``user_type`` (1 = prefers shorter), ``true_user_weights``
        ``(n_users, 1)`` and ``reward_features`` ``(n_items, 1)`` = ``z``; ``data.meta`` holds
        ``n_types`` (2), ``minority_share`` and ``majority_type_share`` (realised), ``flip_rate``
        and ``source``.
    """
    _check_counts(n_users=n_users, comparisons_per_user=comparisons_per_user)
    _check_share("minority_share", minority_share)
    _check_share("flip_rate", flip_rate, 0.5)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    if data is None:
        from plural.data.bundled import load

        data = load("ukpconvarg1")
    if data.item_text is None:
        raise ValueError(f"data {data.name!r} has no item_text to measure lengths on")
    lengths = np.array([len(t or "") for t in data.item_text], dtype=np.float64)
    log_len = np.log(np.maximum(lengths, 1.0))
    spread = log_len.std()
    z = (log_len - log_len.mean()) / (spread if spread > 0 else 1.0)
    item_topic = np.full(data.n_items, -1, np.int64)
    known = data.context >= 0
    item_topic[np.concatenate([data.item_a[known], data.item_b[known]])] = np.tile(
        data.context[known], 2)
    rng = np.random.default_rng(random_state)
    user_type = _assign_types(rng, n_users, np.array([1 - minority_share, minority_share]))
    user = np.repeat(np.arange(n_users), comparisons_per_user)
    a, b, topic = _sample_pairs(rng, len(user), item_topic)
    return _synthesize(
        rng, user_weights=np.where(user_type == 1, -scale, scale).astype(np.float64)[:, None],
        reward_features=z.astype(np.float32)[:, None], user_type=user_type, user=user, a=a, b=b,
        flip_rate=flip_rate, user_ids=[f"u{i}" for i in range(n_users)], item_ids=data.item_ids,
        item_text=data.item_text, context=topic, context_ids=data.context_ids,
        context_text=data.context_text, name="synthetic_length_preference",
        meta={"n_types": 2, "minority_share": float(user_type.mean()),
              "majority_type_share": _majority_share(user_type), "flip_rate": flip_rate,
              "source": data.name})


def make_noisy(base: SyntheticData, flip_rate: float, random_state: int = 0) -> SyntheticData:
    """A copy of ``base`` with each decisive observed label flipped with probability ``flip_rate``.

    Flips compose with those already in ``base``: ``flipped`` stays relative to ``clean_label``
    (a label flipped twice is clean again), and ``meta["flip_rate"]`` becomes the expected net rate
    ``f0 + f - 2 f0 f``.
    """
    _check_share("flip_rate", flip_rate, 0.5)
    label, new = _flip(np.random.default_rng(random_state), base.data.label, flip_rate)
    before = base.data.meta.get("flip_rate", float(base.flipped.mean()))
    meta = {**base.data.meta, "flip_rate": before + flip_rate - 2 * before * flip_rate}
    data = dataclasses.replace(base.data, label=label, meta=meta)
    return dataclasses.replace(base, data=data, flipped=base.flipped ^ new)


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
