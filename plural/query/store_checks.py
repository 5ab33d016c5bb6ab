"""What :class:`plural.query.store.UserStore` accepts: every id, vector, covariance and metadata
value is checked (and copied) here before a write changes anything, so a refused write leaves the
store as it was."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np

MAX_COUNT = np.iinfo(np.int64).max
"""The largest ``n_comparisons`` a store holds (its counters are int64)."""


def json_scalar(value: Any) -> Any:
    """NumPy scalars in metadata as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def as_id_list(user_ids: str | Iterable[str]) -> list[str]:
    ids = [user_ids] if isinstance(user_ids, str) else list(user_ids)
    for u in ids:
        if not isinstance(u, str):
            raise TypeError(f"user ids must be str, got {type(u).__name__}: {u!r}")
    return ids



def check_vectors(vectors: Any, dim: int, n: int | None = None) -> np.ndarray:
    """``vectors`` as ``(n, dim)`` C-contiguous float32, checked for shape and finite values."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {tuple(np.shape(vectors))}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"got {n} user ids but {x.shape[0]} vectors")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"vectors must be finite: row {int(bad[0])} holds NaN or inf")
    return x



def check_covariances(covariances: Any, ids: list[str], dim: int) -> np.ndarray | None:
    """``(n, dim, dim)`` float32 copies of symmetric PSD covariances, or None; raises before any change."""
    if covariances is None:
        return None
    c = np.array(covariances, dtype=np.float32)
    if c.ndim == 2:
        c = c[None]
    if c.shape != (len(ids), dim, dim):
        raise ValueError(f"covariances must have shape ({len(ids)}, {dim}, {dim}), "
                         f"got {tuple(np.shape(covariances))}")
    if not np.isfinite(c).all():
        raise ValueError("covariances must be finite")
    scale = np.abs(c).max(axis=(1, 2)) + 1e-12
    asym = np.abs(c - np.swapaxes(c, 1, 2)).max(axis=(1, 2)) > 1e-4 * scale
    low = np.linalg.eigvalsh(0.5 * (c + np.swapaxes(c, 1, 2)).astype(np.float64)).min(axis=1) < -1e-5 * scale
    bad = np.flatnonzero(asym | low)
    if bad.size:
        raise ValueError(f"the covariance of user {ids[int(bad[0])]!r} is not symmetric positive semi-definite")
    return np.ascontiguousarray(0.5 * (c + np.swapaxes(c, 1, 2)))



def checked_metadata(ids: list[str], metadata: Sequence[dict] | None) -> list[dict] | None:
    """``metadata`` validated and deep-copied (a JSON round trip), so no caller's dict is held by
    reference; raises before the store changes."""
    if metadata is None:
        return None
    if isinstance(metadata, dict) or len(metadata) != len(ids):
        raise ValueError(f"got {len(ids)} user ids but {1 if isinstance(metadata, dict) else len(metadata)} "
                         "metadata dicts (pass a list of dicts)")
    for u, meta in zip(ids, metadata):
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"metadata must be dicts (or None), got {type(meta).__name__} for user {u!r}")
        if meta and any(not isinstance(key, str) for key in meta):
            raise ValueError(f"metadata keys must be str for user {u!r}, got {list(meta)!r}")
        count = (meta or {}).get("n_comparisons", 0)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise ValueError(f"metadata n_comparisons must be an int, got {count!r} for user {u!r}")
        if not 0 <= count <= MAX_COUNT:
            raise ValueError(f"metadata n_comparisons must be in 0..{MAX_COUNT}, got {count!r} for user {u!r}")
    try:
        return json.loads(json.dumps([dict(meta or {}) for meta in metadata], allow_nan=False,
                                     default=json_scalar))
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serialisable dicts of finite values: {err}") from None

