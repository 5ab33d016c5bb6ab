"""A persistent FAISS index of user vectors, keyed by string user ids.

Design (memory first: a million 32-d users take the FAISS index plus about 150 bytes each):

- Every *write* of a user (add, update, re-add after removal) gets a fresh, increasing int id.
  The per-user state lives in arrays indexed by that id (the user id string, ``n_comparisons``,
  ``updated_at``), grown by doubling; one dict maps ``user_id -> int id``. Metadata beyond the two
  counters is kept in a second, sparse dict, only for users who have some.
- The FAISS index is the bare index (no ``IndexIDMap``): its row is the int id for HNSW and GPU
  indexes, which cannot ``remove_ids``, and an overwritten or removed id stays in them as a
  *tombstone*. Searches ask FAISS for ``k + n_tombstones`` neighbours and drop the tombstones;
  when tombstones pass ``REBUILD_FRACTION`` of the index, :meth:`rebuild` recreates it from the
  live vectors and renumbers the ids. A CPU flat index removes rows at once; its rows are the live
  ids in ascending order, kept in an array.
- The vectors are read back from FAISS (``reconstruct_batch``) for :meth:`get` and :meth:`rebuild`;
  only a GPU store (flat, small) keeps a float32 copy beside the index.
- Index kinds: ``"flat"`` (exact) and ``"hnsw"`` (approximate, for ``expected_size >= 50_000``).
  IVF-PQ is not offered: it needs training data up front and approximate vectors, which this
  store's "exact ``get``, any-time ``add``" contract does not fit.
- One ``threading.RLock`` guards every read and write.
- Writes are all or nothing: ``add``/``update``/``upsert``/``remove`` check every id, vector and
  metadata value before the store changes, and metadata is copied in and out.
- :meth:`UserStore.save` writes a directory (``manifest.json``, ``index.faiss`` from a CPU copy,
  the ids and counters as ``.npy`` arrays, the user id strings as UTF-8 bytes plus offsets,
  ``metadata.json`` for the extra metadata, ``checksums.json``) through ``plural.training.saved_dir``:
  fsynced, swapped in atomically, locked against other processes, and never over a directory that
  is not a store. Loading never unpickles anything, verifies every file's sha256, and checks the
  model fingerprint and dimension it is asked to.
  Stores saved in format version 1 (``IndexIDMap2``, ``vectors.npy``, ``ids.json``) still load.
  The on-disk format and its readers live in ``plural.query.store_files``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from plural.training import saved_dir
from plural.query.store_files import (COUNTERS, FILES, FORMAT_VERSION, INDEX_KINDS, KNOWN_NAMES, MANIFEST, METRICS,
                                StoreError, encode_ids, import_faiss, is_store, read_covariances, read_manifest, read_v1,
                                       read_v2)

logger = logging.getLogger(__name__)

AUTO_HNSW_THRESHOLD = 50_000
REBUILD_FRACTION = 0.2
_CHUNK = 1 << 16  # rows read back from FAISS at a time when rebuilding
_MAX_COUNT = np.iinfo(np.int64).max


def _json_scalar(value: Any) -> Any:
    """NumPy scalars in metadata as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def _as_id_list(user_ids: str | Iterable[str]) -> list[str]:
    ids = [user_ids] if isinstance(user_ids, str) else list(user_ids)
    for u in ids:
        if not isinstance(u, str):
            raise TypeError(f"user ids must be str, got {type(u).__name__}: {u!r}")
    return ids


def _with_capacity(a: np.ndarray, capacity: int, used: int) -> np.ndarray:
    """``a[:used]`` copied into a new array of ``capacity`` rows (None or 0 beyond ``used``)."""
    out = (np.empty if a.dtype == object else np.zeros)((capacity,) + a.shape[1:], dtype=a.dtype)
    out[:used] = a[:used]
    return out


class UserStore:
    """User vectors in a FAISS index, with string ids, metadata, tombstones and atomic saves.

    Args:
        dim: vector dimension ``d``.
        metric: ``"l2"`` (smaller is nearer) or ``"ip"`` (inner product, larger is nearer).
        index: ``"flat"``, ``"hnsw"``, or ``"auto"`` (HNSW when ``expected_size >= 50_000``).
        expected_size: how many users the store is expected to hold; only used by ``"auto"``.
        model_fingerprint: :func:`model_fingerprint` of the model the vectors come from.
        hnsw_m: HNSW graph degree.
        hnsw_ef_search: HNSW search breadth (raised to the number of neighbours asked for).
        hnsw_ef_construction: HNSW build breadth; None means ``max(40, 2 * hnsw_m)``.
        use_gpu: put a flat index on all GPUs; None means "when FAISS sees a GPU".

    Example:
        >>> store = UserStore(4)
        >>> store.add(["alice", "bob"], np.eye(4)[:2])
        >>> ids, dist = store.search(np.eye(4)[:1], k=1)
        >>> ids
        [['alice']]
    """

    def __init__(self, dim: int, *, metric: str = "l2", index: str = "auto",
                 expected_size: int | None = None, model_fingerprint: str | None = None,
                 hnsw_m: int = 32, hnsw_ef_search: int = 64, hnsw_ef_construction: int | None = None,
                 use_gpu: bool | None = None) -> None:
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}")
        if hnsw_m < 2 or hnsw_ef_search < 1:
            raise ValueError(f"hnsw_m must be >= 2 and hnsw_ef_search >= 1, got {hnsw_m!r}, {hnsw_ef_search!r}")
        if hnsw_ef_construction is not None and hnsw_ef_construction < 1:
            raise ValueError(f"hnsw_ef_construction must be >= 1, got {hnsw_ef_construction!r}")
        faiss = import_faiss()
        if index == "auto":
            index = "hnsw" if (expected_size or 0) >= AUTO_HNSW_THRESHOLD else "flat"
        if use_gpu is None:
            use_gpu = getattr(faiss, "get_num_gpus", lambda: 0)() > 0
        self.dim = int(dim)
        self.metric = metric
        self.index_kind = index
        self.model_fingerprint = model_fingerprint
        self.hnsw_m = int(hnsw_m)
        self.hnsw_ef_search = int(hnsw_ef_search)
        self.hnsw_ef_construction = (max(40, 2 * self.hnsw_m) if hnsw_ef_construction is None
                                     else int(hnsw_ef_construction))
        self.use_gpu = bool(use_gpu) and index == "flat"
        if use_gpu and index != "flat":
            logger.info("GPU indexes are flat only; keeping the %s index on CPU", index)
        self.created_at = self.updated_at = time.time()
        self._lock = threading.RLock()
        self._index = self._new_index()
        self._int_of: dict[str, int] = {}  # user id -> int id of its live write
        self._next_id = 0
        # Per int id, capacity grown by doubling (valid below _next_id); a dead id's user is None.
        self._users = np.empty(0, dtype=object)
        self._n_comparisons = np.zeros(0, dtype=np.int64)
        self._updated_at = np.zeros(0, dtype=np.float64)
        self._extra: dict[str, dict[str, Any]] = {}  # metadata beyond the counters, only where given
        self._covariances: dict[str, np.ndarray] = {}  # (dim, dim) float32, only where given
        self._where: dict[tuple, list[str]] = {}  # users_where answers, until the next write
        self._n_tombstones = 0
        # CPU flat only: the int id of each index row (ascending); elsewhere the row is the int id.
        self._row_ids = np.zeros(0, dtype=np.int64) if self._can_remove else None
        # GPU only: the vectors by int id, since a GPU index may not reconstruct.
        self._gpu_vectors = np.zeros((0, self.dim), dtype=np.float32) if self.use_gpu else None

    # ------------------------------------------------------------------ index plumbing
    def _new_index(self):
        faiss = import_faiss()
        faiss_metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if self.index_kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss_metric)
            index.hnsw.efConstruction = self.hnsw_ef_construction
        else:
            index = faiss.IndexFlat(self.dim, faiss_metric)
        return self._to_gpu(index) if self.use_gpu else index

    def _to_gpu(self, index):
        faiss = import_faiss()
        if not hasattr(faiss, "index_cpu_to_all_gpus") or getattr(faiss, "get_num_gpus", lambda: 0)() < 1:
            raise ImportError("use_gpu=True needs faiss-gpu and a visible GPU: pip install plural[gpu]")
        return faiss.index_cpu_to_all_gpus(index)

    def _cpu_index(self):
        return import_faiss().index_gpu_to_cpu(self._index) if self.use_gpu else self._index

    @property
    def _can_remove(self) -> bool:
        return self.index_kind == "flat" and not self.use_gpu

    def _rows(self, int_ids: np.ndarray) -> np.ndarray:
        """Index rows of live int ids."""
        if self._row_ids is None:
            return int_ids
        return np.searchsorted(self._row_ids[:self._index.ntotal], int_ids)

    def _ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows if self._row_ids is None else self._row_ids[rows]

    def _vectors_of(self, int_ids: np.ndarray) -> np.ndarray:
        """``(n, dim)`` float32 vectors of live int ids, read back from FAISS (a new array)."""
        if self._gpu_vectors is not None:
            return self._gpu_vectors[int_ids]
        if not len(int_ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(self._rows(int_ids))

    def _live_ids(self) -> np.ndarray:
        """The live int ids, ascending (storage order)."""
        live = np.fromiter(self._int_of.values(), dtype=np.int64, count=len(self._int_of))
        live.sort()
        return live

    def _check_vectors(self, vectors: Any, n: int | None = None) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {tuple(np.shape(vectors))}")
        if n is not None and x.shape[0] != n:
            raise ValueError(f"got {n} user ids but {x.shape[0]} vectors")
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if bad.size:
            raise ValueError(f"vectors must be finite: row {int(bad[0])} holds NaN or inf")
        return x

    def _check_covariances(self, covariances: Any, ids: list[str]) -> np.ndarray | None:
        """``(n, dim, dim)`` float32 copies of symmetric PSD covariances, or None; raises before any change."""
        if covariances is None:
            return None
        c = np.array(covariances, dtype=np.float32)
        if c.ndim == 2:
            c = c[None]
        if c.shape != (len(ids), self.dim, self.dim):
            raise ValueError(f"covariances must have shape ({len(ids)}, {self.dim}, {self.dim}), "
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

    def _check_ids(self, user_ids: str | Iterable[str], *, known: bool | None) -> list[str]:
        ids = _as_id_list(user_ids)
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(u for u in ids if u in seen or seen.add(u))
            raise ValueError(f"user id {dup!r} appears twice in one call")
        if known is True:
            missing = [u for u in ids if u not in self._int_of]
            if missing:
                raise KeyError(f"unknown user id {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                    if len(missing) > 1 else ""))
        elif known is False:
            present = [u for u in ids if u in self._int_of]
            if present:
                raise ValueError(f"user id {present[0]!r} is already in the store (use update or upsert)")
        return ids

    def _checked_metadata(self, ids: list[str], metadata: Sequence[dict] | None) -> list[dict] | None:
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
            if not 0 <= count <= _MAX_COUNT:
                raise ValueError(f"metadata n_comparisons must be in 0..{_MAX_COUNT}, got {count!r} for user {u!r}")
        try:
            return json.loads(json.dumps([dict(meta or {}) for meta in metadata], allow_nan=False,
                                         default=_json_scalar))
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata must be JSON-serialisable dicts of finite values: {err}") from None

    def _reserve(self, n_ids: int) -> None:
        """Make the per-id arrays hold at least ``n_ids`` ids."""
        capacity = self._users.shape[0]
        if n_ids <= capacity:
            return
        capacity = max(2 * capacity, n_ids, 16)
        used = self._next_id
        self._users = _with_capacity(self._users, capacity, used)
        self._n_comparisons = _with_capacity(self._n_comparisons, capacity, used)
        self._updated_at = _with_capacity(self._updated_at, capacity, used)
        if self._gpu_vectors is not None:
            self._gpu_vectors = _with_capacity(self._gpu_vectors, capacity, used)

    def _drop(self, int_ids: np.ndarray) -> None:
        """Forget live ``int_ids`` (already out of ``_int_of``): remove their rows or tombstone them."""
        if not len(int_ids):
            return
        self._where.clear()
        if self._can_remove:
            ntotal = self._index.ntotal
            rows = self._rows(int_ids)
            self._index.remove_ids(rows)
            keep = np.ones(ntotal, dtype=bool)
            keep[rows] = False
            self._row_ids[:ntotal - len(rows)] = self._row_ids[:ntotal][keep]
        else:
            self._n_tombstones += len(int_ids)
        self._users[int_ids] = None

    def _write(self, ids: list[str], x: np.ndarray, metadata: Sequence[dict] | None,
               covariances: np.ndarray | None = None) -> None:
        """Write validated ``ids`` and vectors ``x``: all or nothing. Everything that can be refused is
        checked before the store changes; the FAISS add is the first change, and what follows it
        cannot fail."""
        metadata = self._checked_metadata(ids, metadata)
        now = time.time()
        n = len(ids)
        old = np.fromiter((self._int_of.get(u, -1) for u in ids), dtype=np.int64, count=n)
        known = old >= 0
        counts = np.zeros(n, dtype=np.int64)
        counts[known] = self._n_comparisons[old[known]]
        if metadata is not None:
            for j, meta in enumerate(metadata):
                if "n_comparisons" in meta:
                    counts[j] = meta["n_comparisons"]
        start, ntotal = self._next_id, self._index.ntotal
        self._reserve(start + n)  # bigger copies of the per-id arrays: no change the store can see
        if self._row_ids is not None and ntotal + n > self._row_ids.shape[0]:
            self._row_ids = _with_capacity(self._row_ids, max(2 * self._row_ids.shape[0], ntotal + n, 16), ntotal)
        self._index.add(x)
        self._where.clear()
        self._users[start:start + n] = ids
        for j, u in enumerate(ids):
            self._int_of[u] = start + j
            extra = {} if metadata is None else {k: v for k, v in metadata[j].items() if k not in COUNTERS}
            if extra:
                self._extra.setdefault(u, {}).update(extra)
            if covariances is None:
                self._covariances.pop(u, None)
            else:
                self._covariances[u] = covariances[j]
        self._n_comparisons[start:start + n] = counts
        self._updated_at[start:start + n] = now
        if self._gpu_vectors is not None:
            self._gpu_vectors[start:start + n] = x
        if self._row_ids is not None:
            self._row_ids[ntotal:ntotal + n] = np.arange(start, start + n)
        self._next_id += n
        self._drop(old[known])  # the overwritten writes, now that their replacements are in
        self.updated_at = now
        self._maybe_rebuild()

    def _maybe_rebuild(self) -> None:
        if self._n_tombstones and self._n_tombstones > REBUILD_FRACTION * self._index.ntotal:
            self.rebuild()
        elif self._can_remove and self._next_id > 2 * len(self._int_of) + 1024:
            self._renumber(self._live_ids())  # most ids are dead: shrink the per-id arrays

    def _renumber(self, live: np.ndarray) -> None:
        """Give the live int ids ``live`` (ascending, as the index rows are) the ids ``0 .. n-1``."""
        self._where.clear()
        self._users = self._users[live]
        self._n_comparisons = self._n_comparisons[live]
        self._updated_at = self._updated_at[live]
        if self._gpu_vectors is not None:
            self._gpu_vectors = self._gpu_vectors[live]
        for i, u in enumerate(self._users):
            self._int_of[u] = i
        self._next_id = len(live)
        if self._row_ids is not None:
            self._row_ids = np.arange(len(live), dtype=np.int64)

    # ------------------------------------------------------------------ public API
    def add(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None,
            covariances: Any = None) -> None:
        """Add new users.

        Args:
            user_ids: ``n`` new string ids (a single str is one id).
            vectors: ``(n, dim)`` array-like.
            metadata: optionally ``n`` JSON-serialisable dicts kept with the users (``n_comparisons``,
                if given, must be an int; ``updated_at`` is set by the store).
            covariances: optionally ``(n, dim, dim)`` symmetric positive semi-definite matrices, the
                uncertainty of each vector (a ``UserState``'s covariance), kept with it.

        Raises:
            ValueError: an id is already stored, or the vectors or covariances have the wrong shape,
                are not finite, or the covariances are not symmetric positive semi-definite.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=False)
            self._write(ids, self._check_vectors(vectors, len(ids)), metadata, self._check_covariances(covariances, ids))

    def update(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None,
               covariances: Any = None) -> None:
        """Replace the vectors ``(n, dim)`` of stored users (metadata dicts are merged in). A vector
        written without a covariance drops the user's old covariance, which described the old vector.

        Raises:
            KeyError: an id is not stored.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            self._write(ids, self._check_vectors(vectors, len(ids)), metadata, self._check_covariances(covariances, ids))

    def upsert(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None,
               covariances: Any = None) -> None:
        """Add the new users and update the stored ones; ``vectors`` is ``(n, dim)`` (as :meth:`update`)."""
        with self._lock:
            ids = self._check_ids(user_ids, known=None)
            self._write(ids, self._check_vectors(vectors, len(ids)), metadata, self._check_covariances(covariances, ids))

    def remove(self, user_ids: str | Sequence[str]) -> None:
        """Remove stored users (their metadata goes too).

        Raises:
            KeyError: an id is not stored.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            self._drop(np.fromiter((self._int_of.pop(u) for u in ids), dtype=np.int64, count=len(ids)))
            for u in ids:
                self._extra.pop(u, None)
                self._covariances.pop(u, None)
            self.updated_at = time.time()
            self._maybe_rebuild()

    def get(self, user_ids: str | Sequence[str]) -> np.ndarray:
        """The stored vectors of ``n`` users, shape ``(n, dim)``, float32 (a copy).

        Raises:
            KeyError: naming the first unknown id.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            int_ids = np.fromiter(map(self._int_of.__getitem__, ids), dtype=np.int64, count=len(ids))
            return self._vectors_of(int_ids)

    def get_covariance(self, user_ids: str | Sequence[str]) -> list[np.ndarray | None]:
        """The stored covariances ``(dim, dim)`` float32 of ``n`` users (copies), None for a user
        stored without one.

        Raises:
            KeyError: naming the first unknown id.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            return [None if u not in self._covariances else self._covariances[u].copy() for u in ids]

    def search(self, vectors: Any, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` stored users nearest to each query.

        Args:
            vectors: queries, ``(q, dim)``.
            k: neighbours wanted per query.

        Returns:
            ``ids``: ``q`` lists of up to ``k`` user ids, nearest first; ``distances``: ``(q, k')``
            float32 with ``k' = min(k, len(self))`` (squared L2, or inner products for ``"ip"``).
            A row with fewer than ``k'`` hits (possible with HNSW) is padded with ``inf``
            (``-inf`` for ``"ip"``).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        with self._lock:
            x = self._check_vectors(vectors)
            k_out = min(k, len(self))
            pad = np.inf if self.metric == "l2" else -np.inf
            distances = np.full((x.shape[0], k_out), pad, dtype=np.float32)
            if k_out == 0:
                return [[] for _ in range(x.shape[0])], distances
            k_search = min(k_out + self._n_tombstones, self._index.ntotal)
            if self.index_kind == "hnsw":
                self._index.hnsw.efSearch = max(self.hnsw_ef_search, k_search)
            raw_d, raw_i = self._index.search(x, k_search)
            ids: list[list[str]] = []
            for q in range(x.shape[0]):
                found = raw_i[q] >= 0
                names = self._users[self._ids_of_rows(raw_i[q][found])].tolist()
                dist = raw_d[q][found]
                if self._n_tombstones:
                    keep = [j for j, u in enumerate(names) if u is not None][:k_out]
                    names, dist = [names[j] for j in keep], dist[keep]
                ids.append(names[:k_out])
                distances[q, :len(ids[-1])] = dist[:k_out]
            return ids, distances

    def rebuild(self) -> None:
        """Recreate the index from the live vectors, dropping every tombstone (the int ids are renumbered)."""
        with self._lock:
            live = self._live_ids()
            index = self._new_index()
            for start in range(0, len(live), _CHUNK):
                index.add(self._vectors_of(live[start:start + _CHUNK]))
            logger.debug("rebuilt %s index: %d vectors, %d tombstones dropped", self.index_kind, len(live),
                         self._n_tombstones)
            self._index = index
            self._n_tombstones = 0
            self._renumber(live)

    def metadata(self, user_id: str) -> dict[str, Any]:
        """A copy of the user's metadata: at least ``n_comparisons`` and ``updated_at`` (epoch seconds)."""
        with self._lock:
            self._check_ids(user_id, known=True)
            i = self._int_of[user_id]
            meta: dict[str, Any] = {"n_comparisons": int(self._n_comparisons[i])}
            meta.update(copy.deepcopy(self._extra.get(user_id, {})))
            meta["updated_at"] = float(self._updated_at[i])
            return meta

    def users_where(self, key: str, value: Any) -> list[str]:
        """The stored users whose metadata ``key`` equals ``value``, or is a list holding it, in
        storage order. The first ask scans every user's metadata; the answer (for a hashable
        ``value``) is kept until the next write, so a store that is only read, as when serving
        :func:`plural.personalize`, scans once per value."""
        with self._lock:
            try:
                return list(self._where[(key, value)])
            except TypeError:  # an unhashable value is scanned for every time
                cacheable = False
            except KeyError:
                cacheable = True
            out = []
            for u in self._users[self._live_ids()].tolist():
                v = self._extra.get(u, {}).get(key)
                if v == value or (isinstance(v, list) and value in v):
                    out.append(u)
            if cacheable:
                self._where[(key, value)] = out
            return list(out)

    @property
    def user_ids(self) -> list[str]:
        """The stored ids, in storage order (the order of their last write)."""
        with self._lock:
            return self._users[self._live_ids()].tolist()

    @property
    def n_tombstones(self) -> int:
        """Index entries of overwritten or removed users still in the index (HNSW and GPU only)."""
        with self._lock:
            return self._n_tombstones

    def __len__(self) -> int:
        with self._lock:
            return len(self._int_of)

    def __contains__(self, user_id: object) -> bool:
        with self._lock:
            return user_id in self._int_of

    def __repr__(self) -> str:
        return (f"UserStore(dim={self.dim}, metric={self.metric!r}, index={self.index_kind!r}, "
                f"n_users={len(self)}, tombstones={self.n_tombstones})")

    # ------------------------------------------------------------------ persistence
    def check_consistency(self) -> None:
        """Raise :class:`StoreError` if the store's id map, per-user arrays and index disagree
        (:meth:`save` checks this before writing, so a damaged store never replaces a good save)."""
        with self._lock:
            live = self._live_ids()
            n, ntotal = len(live), self._index.ntotal
            problems = []
            if n and (live[0] < 0 or live[-1] >= self._next_id):
                problems.append("an id past the per-user arrays")
            else:
                names = self._users[live]
                if any(u is None or self._int_of.get(u) != i for u, i in zip(names.tolist(), live.tolist())):
                    problems.append("the id map and the user array disagree")
                if n and (self._n_comparisons[live] < 0).any():
                    problems.append("a negative n_comparisons")
            if self._can_remove:
                if ntotal != n or not np.array_equal(self._row_ids[:ntotal], live):
                    problems.append(f"{ntotal} index rows for {n} users")
            elif ntotal != n + self._n_tombstones or (n and live[-1] >= ntotal):
                problems.append(f"{ntotal} index rows for {n} users and {self._n_tombstones} tombstones")
            if not set(self._extra) <= set(self._int_of):
                problems.append("metadata of a user who is not stored")
            if not set(self._covariances) <= set(self._int_of):
                problems.append("a covariance of a user who is not stored")
            if problems:
                raise StoreError(f"the store is inconsistent ({'; '.join(problems)}); refusing to save it")

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the store to the directory ``path``, atomically and durably (``plural.training.saved_dir``:
        a crash at any point leaves the previous save loadable, and every file's sha256 is recorded
        in ``checksums.json`` and checked on load).

        The directory holds ``manifest.json``, ``index.faiss`` (the bare FAISS index),
        ``rows.npy`` (the index row of each live user, ascending), ``user_id_offsets.npy`` and
        ``user_id_bytes.npy`` (the user ids, UTF-8), ``n_comparisons.npy``, ``updated_at.npy`` (one
        entry per live user), ``metadata.json`` (the extra metadata of the users who have some) and
        ``covariance_rows.npy`` / ``covariances.npy`` (the users stored with a covariance, by
        position, and their ``(dim, dim)`` matrices) and ``checksums.json``. An index holding tombstones (HNSW, GPU) is rebuilt first, so a removed
        user's vector is not written.

        Args:
            path: the target directory: new, empty, or an earlier save of a store.
            overwrite: also replace a directory holding other files (they are deleted).

        Raises:
            FileExistsError: ``path`` holds files that are not a store's, and ``overwrite`` is False.
            StoreError: the store fails :meth:`check_consistency`, or another process holds the path.
        """
        faiss = import_faiss()
        with self._lock:
            self.check_consistency()
            if self._n_tombstones:
                self.rebuild()

            def fill(tmp: Path) -> None:
                live = self._live_ids()
                names = self._users[live].tolist()
                manifest = {"format_version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric,
                            "index": self.index_kind, "model_fingerprint": self.model_fingerprint,
                            "count": len(live), "n_rows": int(self._index.ntotal),
                            "created_at": self.created_at, "updated_at": self.updated_at,
                            "hnsw_m": self.hnsw_m, "hnsw_ef_search": self.hnsw_ef_search,
                            "hnsw_ef_construction": self.hnsw_ef_construction}
                offsets, blob = encode_ids(names)
                arrays = {"rows": self._rows(live).astype(np.int64), "user_id_offsets": offsets,
                          "user_id_bytes": blob, "n_comparisons": self._n_comparisons[live],
                          "updated_at": self._updated_at[live]}
                for name, array in arrays.items():
                    np.save(tmp / f"{name}.npy", array, allow_pickle=False)
                (tmp / "metadata.json").write_text(json.dumps({u: self._extra[u] for u in names
                                                               if u in self._extra}))
                with_cov = [j for j, u in enumerate(names) if u in self._covariances]
                np.save(tmp / "covariance_rows.npy", np.asarray(with_cov, dtype=np.int64), allow_pickle=False)
                np.save(tmp / "covariances.npy", np.stack([self._covariances[names[j]] for j in with_cov])
                        if with_cov else np.zeros((0, self.dim, self.dim), np.float32), allow_pickle=False)
                faiss.write_index(self._cpu_index(), str(tmp / "index.faiss"))
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

            return saved_dir.write(Path(path), fill, what="a UserStore", is_kind=is_store,
                                   known_names=KNOWN_NAMES, overwrite=overwrite, error=StoreError)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_fingerprint: str | None = None,
             expected_dim: int | None = None, *, model=None, use_gpu: bool | None = None) -> "UserStore":
        """Load a store written by :meth:`save` (format version 3, or 1 and 2 from earlier releases).

        Every file is checked against the sha256 recorded at save time (a save older than
        checksums loads with a logged warning), and the manifest against the index file.

        Args:
            path: the saved directory (if a crash mid-save left only its ``.old`` sibling, that is read).
            expected_fingerprint: if given, the model fingerprint the store must have been saved with.
            expected_dim: if given, the vector dimension the store must have.
            model: a fitted model the store must belong to: sets ``expected_fingerprint`` to
                :func:`model_fingerprint` of it and ``expected_dim`` to its user dimension.
            use_gpu: as in the constructor.

        Raises:
            StoreError (a ValueError): missing, altered or corrupt files, or a fingerprint or dim
                mismatch; the message names the file.
        """
        if model is not None:
            expected_fingerprint = expected_fingerprint or model_fingerprint(model)
            expected_dim = expected_dim or getattr(model, "user_dim", None)
        with saved_dir.reading(Path(path), MANIFEST, StoreError) as path:
            recorded = saved_dir.verify(path, StoreError)
            manifest = read_manifest(path)
            saved_dir.require(path, FILES[manifest["format_version"]], recorded, StoreError)
            if recorded is None:
                logger.warning("%s records no checksums (saved by an older release): its files are not verified",
                               path)
            if expected_fingerprint is not None and manifest["model_fingerprint"] != expected_fingerprint:
                raise StoreError(f"{path} was saved for model fingerprint {manifest['model_fingerprint']!r}, "
                                 f"expected {expected_fingerprint!r}: this store belongs to another model")
            if expected_dim is not None and manifest["dim"] != expected_dim:
                raise StoreError(f"{path} holds {manifest['dim']}-d vectors, expected {expected_dim}-d")
            try:
                read = read_v1 if manifest["format_version"] == 1 else read_v2
                index, rows, names, counts, updated, extra = read(path, manifest)
                rows, counts, updated = (np.array(a) for a in (rows, counts, updated))  # off the files
                covariances = read_covariances(path, manifest, names) if manifest["format_version"] >= 3 else {}
            except StoreError:
                raise
            except Exception as err:  # numpy, json and FAISS each raise their own types on bad files
                raise StoreError(f"{path} is corrupt: {type(err).__name__}: {err}") from None
        store = cls(manifest["dim"], metric=manifest["metric"], index=manifest["index"],
                    model_fingerprint=manifest["model_fingerprint"], hnsw_m=manifest.get("hnsw_m", 32),
                    hnsw_ef_search=manifest.get("hnsw_ef_search", 64),
                    hnsw_ef_construction=manifest.get("hnsw_ef_construction"), use_gpu=use_gpu)
        store._adopt(index, rows, names, counts, updated, extra)
        store._covariances = covariances
        if len(store._int_of) != len(names):
            raise StoreError(f"{path} is corrupt: a user id appears twice")
        store.created_at, store.updated_at = manifest["created_at"], manifest["updated_at"]
        return store

    def _adopt(self, index, rows: np.ndarray, names: np.ndarray, counts: np.ndarray, updated: np.ndarray,
               extra: dict[str, dict]) -> None:
        """Take over a CPU ``index`` whose rows ``rows`` (ascending) hold the users ``names`` (object array)."""
        n_rows, n = index.ntotal, len(names)
        if self._can_remove and n < n_rows:  # a flat index saved from a GPU store: drop its tombstones
            keep = np.zeros(n_rows, dtype=bool)
            keep[rows] = True
            index.remove_ids(np.flatnonzero(~keep))
            n_rows = n
        if n == n_rows:  # no tombstones: row j holds user j
            # The dict first: the arrays then fill the heap its resizing freed.
            self._int_of = dict(zip(names, range(n)))
            self._users = names
            self._n_comparisons = np.array(counts, dtype=np.int64)
            self._updated_at = np.array(updated, dtype=np.float64)
        else:
            self._int_of = dict(zip(names, map(int, rows)))
            self._users = np.empty(n_rows, dtype=object)
            self._users[rows] = names
            self._n_comparisons = np.zeros(n_rows, dtype=np.int64)
            self._n_comparisons[rows] = counts
            self._updated_at = np.zeros(n_rows, dtype=np.float64)
            self._updated_at[rows] = updated
        self._extra = extra
        self._next_id = n_rows
        self._n_tombstones = 0 if self._can_remove else n_rows - len(rows)
        if self._row_ids is not None:
            self._row_ids = np.arange(n_rows, dtype=np.int64)
        if self.use_gpu:
            self._gpu_vectors = index.reconstruct_n(0, n_rows) if n_rows else self._gpu_vectors
            index = self._to_gpu(index)
        self._index = index


def model_fingerprint(model) -> str:
    """A sha256 hex digest identifying a built ``plural.core.model.PreferenceModel`` and its weights.

    Hashes the model's name, its config (``dataclasses.asdict``), ``feature_dim_`` and every
    state-dict tensor's name, dtype, shape and bytes, so two differently trained models differ.
    The digest is cached on the model until a weight is replaced or changed (any in-place update
    bumps a tensor's version counter) or the config changes, so query-time checks stay cheap.
    """
    import torch

    header = json.dumps({"name": model.name, "config": dataclasses.asdict(model.config),
                         "feature_dim": model.feature_dim_}, sort_keys=True, default=repr)
    state = sorted(model.state_dict(keep_vars=True).items())
    versions = [t._version for _, t in state]
    cached = getattr(model, "_plural_fingerprint", None)
    # The cache holds the tensors themselves, so their memory cannot be reused by new weights.
    if (cached is not None and cached[0] == header and len(cached[1]) == len(state)
            and all(a is t and n == m for (n, t), (m, a) in zip(state, cached[1])) and cached[2] == versions):
        return cached[3]
    h = hashlib.sha256()
    h.update(header.encode())
    for name, tensor in state:
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"\0{name}\0{t.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    object.__setattr__(model, "_plural_fingerprint", (header, [(n, t) for n, t in state], versions, digest))
    return digest
