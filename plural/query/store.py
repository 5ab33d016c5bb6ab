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
import logging
import threading
import time
from typing import Any, Iterable, Sequence

import numpy as np

from plural.core.fingerprint import model_fingerprint  # noqa: F401,F811  (re-exported: plural.query.store.model_fingerprint)
from plural.query.store_checks import as_id_list, check_covariances, check_vectors, checked_metadata
from plural.query.store_files import COUNTERS, INDEX_KINDS, METRICS, StoreError, import_faiss  # noqa: F401 (StoreError re-exported)
from plural.query.store_persistence import StorePersistence

logger = logging.getLogger(__name__)

__all__ = ["AUTO_HNSW_THRESHOLD", "REBUILD_FRACTION", "StoreError", "UserStore", "model_fingerprint"]

AUTO_HNSW_THRESHOLD = 50_000
REBUILD_FRACTION = 0.2
_CHUNK = 1 << 16  # rows read back from FAISS at a time when rebuilding


def _with_capacity(a: np.ndarray, capacity: int, used: int) -> np.ndarray:
    """``a[:used]`` copied into a new array of ``capacity`` rows (None or 0 beyond ``used``)."""
    out = (np.empty if a.dtype == object else np.zeros)((capacity,) + a.shape[1:], dtype=a.dtype)
    out[:used] = a[:used]
    return out


class UserStore(StorePersistence):
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
            from plural.installation import FAISS_GPU_ROUTE

            raise ImportError(f"use_gpu=True needs the GPU build of FAISS and a visible GPU: {FAISS_GPU_ROUTE}")
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

    def _check_ids(self, user_ids: str | Iterable[str], *, known: bool | None) -> list[str]:
        ids = as_id_list(user_ids)
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
        metadata = checked_metadata(ids, metadata)
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
            self._write(ids, check_vectors(vectors, self.dim, len(ids)), metadata, check_covariances(covariances, ids, self.dim))

    def update(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None,
               covariances: Any = None) -> None:
        """Replace the vectors ``(n, dim)`` of stored users (metadata dicts are merged in). A vector
        written without a covariance drops the user's old covariance, which described the old vector.

        Raises:
            KeyError: an id is not stored.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            self._write(ids, check_vectors(vectors, self.dim, len(ids)), metadata, check_covariances(covariances, ids, self.dim))

    def upsert(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None,
               covariances: Any = None) -> None:
        """Add the new users and update the stored ones; ``vectors`` is ``(n, dim)`` (as :meth:`update`)."""
        with self._lock:
            ids = self._check_ids(user_ids, known=None)
            self._write(ids, check_vectors(vectors, self.dim, len(ids)), metadata, check_covariances(covariances, ids, self.dim))

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
            x = check_vectors(vectors, self.dim)
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
