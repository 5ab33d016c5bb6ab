"""A persistent FAISS index of user vectors, keyed by string user ids.

Design:

- FAISS holds int64 ids; the store keeps ``user_id <-> int id`` dicts and gives every *write* of a
  user (add, update, re-add after removal) a fresh, increasing int id. An overwritten or removed
  int id is either removed from the index (CPU flat) or left in it as a *tombstone* (HNSW and GPU
  indexes, which cannot ``remove_ids``). Searches ask FAISS for ``k + n_tombstones`` neighbours and
  drop the tombstones; when tombstones pass ``REBUILD_FRACTION`` of the index, :meth:`rebuild`
  recreates it from the live vectors.
- The raw vectors live beside the index in a float32 array (row map ``int id -> row``), so
  :meth:`get` and :meth:`rebuild` work for every index kind.
- Index kinds: ``"flat"`` (exact) and ``"hnsw"`` (approximate, for ``expected_size >= 50_000``).
  IVF-PQ is not offered: it needs training data up front and approximate vectors, which this
  store's "exact ``get``, any-time ``add``" contract does not fit.
- One ``threading.RLock`` guards every read and write.
- :meth:`UserStore.save` writes a directory (``manifest.json``, ``index.faiss`` from a CPU copy,
  ``vectors.npy``, ``ids.json``) beside its target and swaps it in with ``os.replace``; loading
  never unpickles anything and checks the model fingerprint and dimension it is asked to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
AUTO_HNSW_THRESHOLD = 50_000
REBUILD_FRACTION = 0.2
_METRICS = ("l2", "ip")
_INDEX_KINDS = ("auto", "flat", "hnsw")
_MANIFEST_KEYS = ("format_version", "dim", "metric", "index", "model_fingerprint", "count",
                  "created_at", "updated_at")


class StoreError(ValueError):
    """A saved store that cannot be loaded as asked: missing or corrupt files, wrong model or dim."""


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError("UserStore needs FAISS: pip install faiss-cpu (or plural[gpu] for "
                          "faiss-gpu-cu12)") from err
    return faiss


def _as_id_list(user_ids: str | Iterable[str]) -> list[str]:
    ids = [user_ids] if isinstance(user_ids, str) else list(user_ids)
    for u in ids:
        if not isinstance(u, str):
            raise TypeError(f"user ids must be str, got {type(u).__name__}: {u!r}")
    return ids


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
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        if index not in _INDEX_KINDS:
            raise ValueError(f"index must be one of {_INDEX_KINDS}, got {index!r}")
        if hnsw_m < 2 or hnsw_ef_search < 1:
            raise ValueError(f"hnsw_m must be >= 2 and hnsw_ef_search >= 1, got {hnsw_m!r}, {hnsw_ef_search!r}")
        if hnsw_ef_construction is not None and hnsw_ef_construction < 1:
            raise ValueError(f"hnsw_ef_construction must be >= 1, got {hnsw_ef_construction!r}")
        faiss = _faiss()
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
        self._int_of: dict[str, int] = {}
        self._user_of: dict[int, str] = {}
        self._next_id = 0
        self._meta: dict[str, dict[str, Any]] = {}
        self._vectors = np.empty((0, self.dim), dtype=np.float32)  # capacity grows by doubling
        self._row_of: dict[int, int] = {}
        self._row_ids: list[int] = []
        self._tombstones: set[int] = set()
        self._index = self._new_index()

    # ------------------------------------------------------------------ index plumbing
    def _new_index(self):
        faiss = _faiss()
        faiss_metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if self.index_kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss_metric)
            base.hnsw.efConstruction = self.hnsw_ef_construction
        else:
            base = faiss.IndexFlat(self.dim, faiss_metric)
        index = faiss.IndexIDMap2(base)
        return self._to_gpu(index) if self.use_gpu else index

    def _to_gpu(self, index):
        faiss = _faiss()
        if not hasattr(faiss, "index_cpu_to_all_gpus") or getattr(faiss, "get_num_gpus", lambda: 0)() < 1:
            raise ImportError("use_gpu=True needs faiss-gpu and a visible GPU: pip install plural[gpu]")
        return faiss.index_cpu_to_all_gpus(index)

    def _cpu_index(self):
        return _faiss().index_gpu_to_cpu(self._index) if self.use_gpu else self._index

    @property
    def _can_remove(self) -> bool:
        return self.index_kind == "flat" and not self.use_gpu

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

    def _check_ids(self, user_ids: str | Iterable[str], *, known: bool | None) -> list[str]:
        ids = _as_id_list(user_ids)
        if len(set(ids)) != len(ids):
            dup = next(u for u in ids if ids.count(u) > 1)
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

    def _drop(self, int_ids: list[int]) -> None:
        """Forget ``int_ids``: their rows, map entries and index entries (or tombstone them)."""
        for int_id in int_ids:
            self._drop_row(int_id)
        if not int_ids:
            return
        if self._can_remove:
            self._index.remove_ids(np.asarray(int_ids, dtype=np.int64))
        else:
            self._tombstones.update(int_ids)

    def _drop_row(self, int_id: int) -> None:
        row = self._row_of.pop(int_id)
        last = len(self._row_ids) - 1
        if row != last:  # move the last row into the hole
            moved = self._row_ids[last]
            self._vectors[row] = self._vectors[last]
            self._row_ids[row] = moved
            self._row_of[moved] = row
        self._row_ids.pop()
        del self._user_of[int_id]

    def _write(self, ids: list[str], x: np.ndarray, metadata: Sequence[dict] | None) -> None:
        if metadata is not None and len(metadata) != len(ids):
            raise ValueError(f"got {len(ids)} user ids but {len(metadata)} metadata dicts")
        if metadata is not None:
            try:
                json.dumps(list(metadata))
            except (TypeError, ValueError) as err:
                raise ValueError(f"metadata must be JSON-serialisable dicts: {err}") from None
        now = time.time()
        self._drop([self._int_of[u] for u in ids if u in self._int_of])
        new = np.arange(self._next_id, self._next_id + len(ids), dtype=np.int64)
        self._next_id += len(ids)
        start = len(self._row_ids)
        if start + len(ids) > self._vectors.shape[0]:
            grown = np.empty((max(2 * self._vectors.shape[0], start + len(ids), 16), self.dim), np.float32)
            grown[:start] = self._vectors[:start]
            self._vectors = grown
        self._vectors[start:start + len(ids)] = x
        for j, (u, i) in enumerate(zip(ids, new.tolist())):
            self._int_of[u] = i
            self._user_of[i] = u
            self._row_of[i] = start + j
            self._row_ids.append(i)
            meta = self._meta.setdefault(u, {"n_comparisons": 0})
            if metadata is not None and metadata[j] is not None:
                meta.update(dict(metadata[j]))
            meta["updated_at"] = now
        self._index.add_with_ids(x, new)
        self.updated_at = now
        self._maybe_rebuild()

    def _maybe_rebuild(self) -> None:
        if self._tombstones and len(self._tombstones) > REBUILD_FRACTION * self._index.ntotal:
            self.rebuild()

    # ------------------------------------------------------------------ public API
    def add(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None) -> None:
        """Add new users.

        Args:
            user_ids: ``n`` new string ids (a single str is one id).
            vectors: ``(n, dim)`` array-like.
            metadata: optionally ``n`` JSON-serialisable dicts kept with the users.

        Raises:
            ValueError: an id is already stored, or the vectors have the wrong shape or are not finite.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=False)
            self._write(ids, self._check_vectors(vectors, len(ids)), metadata)

    def update(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None) -> None:
        """Replace the vectors ``(n, dim)`` of stored users (metadata dicts are merged in).

        Raises:
            KeyError: an id is not stored.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            self._write(ids, self._check_vectors(vectors, len(ids)), metadata)

    def upsert(self, user_ids: str | Sequence[str], vectors: Any, metadata: Sequence[dict] | None = None) -> None:
        """Add the new users and update the stored ones; ``vectors`` is ``(n, dim)``."""
        with self._lock:
            ids = self._check_ids(user_ids, known=None)
            self._write(ids, self._check_vectors(vectors, len(ids)), metadata)

    def remove(self, user_ids: str | Sequence[str]) -> None:
        """Remove stored users (their metadata goes too).

        Raises:
            KeyError: an id is not stored.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            self._drop([self._int_of.pop(u) for u in ids])
            for u in ids:
                del self._meta[u]
            self.updated_at = time.time()
            self._maybe_rebuild()

    def get(self, user_ids: str | Sequence[str]) -> np.ndarray:
        """The stored vectors of ``n`` users, shape ``(n, dim)``, float32 (a copy).

        Raises:
            KeyError: naming the first unknown id.
        """
        with self._lock:
            ids = self._check_ids(user_ids, known=True)
            rows = [self._row_of[self._int_of[u]] for u in ids]
            return self._vectors[rows].copy()

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
            k_search = min(k_out + len(self._tombstones), self._index.ntotal)
            if self.index_kind == "hnsw":
                _faiss().downcast_index(self._index.index).hnsw.efSearch = max(self.hnsw_ef_search, k_search)
            raw_d, raw_i = self._index.search(x, k_search)
            ids: list[list[str]] = []
            for q in range(x.shape[0]):
                hits = [(d, i) for d, i in zip(raw_d[q].tolist(), raw_i[q].tolist())
                        if i >= 0 and i not in self._tombstones][:k_out]
                ids.append([self._user_of[i] for _, i in hits])
                distances[q, :len(hits)] = [d for d, _ in hits]
            return ids, distances

    def rebuild(self) -> None:
        """Recreate the index from the live vectors, dropping every tombstone."""
        with self._lock:
            index = self._new_index()
            n = len(self._row_ids)
            if n:
                index.add_with_ids(self._vectors[:n], np.asarray(self._row_ids, dtype=np.int64))
            logger.debug("rebuilt %s index: %d vectors, %d tombstones dropped", self.index_kind, n,
                         len(self._tombstones))
            self._index = index
            self._tombstones.clear()

    def metadata(self, user_id: str) -> dict[str, Any]:
        """A copy of the user's metadata: at least ``n_comparisons`` and ``updated_at`` (epoch seconds)."""
        with self._lock:
            self._check_ids(user_id, known=True)
            return dict(self._meta[user_id])

    @property
    def user_ids(self) -> list[str]:
        """The stored ids, in storage order."""
        with self._lock:
            return [self._user_of[i] for i in self._row_ids]

    def __len__(self) -> int:
        with self._lock:
            return len(self._int_of)

    def __contains__(self, user_id: object) -> bool:
        with self._lock:
            return user_id in self._int_of

    def __repr__(self) -> str:
        return (f"UserStore(dim={self.dim}, metric={self.metric!r}, index={self.index_kind!r}, "
                f"n_users={len(self)}, tombstones={len(self._tombstones)})")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the store to the directory ``path``, replacing an earlier save atomically."""
        faiss = _faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
            old = path.with_name(f".{path.name}.old")
            moved_aside = False
            try:
                n = len(self._row_ids)
                manifest = {"format_version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric,
                            "index": self.index_kind, "model_fingerprint": self.model_fingerprint,
                            "count": n, "created_at": self.created_at, "updated_at": self.updated_at,
                            "hnsw_m": self.hnsw_m, "hnsw_ef_search": self.hnsw_ef_search,
                            "hnsw_ef_construction": self.hnsw_ef_construction}
                np.save(tmp / "vectors.npy", self._vectors[:n], allow_pickle=False)
                ids = {"user_ids": [self._user_of[i] for i in self._row_ids], "int_ids": self._row_ids,
                       "next_id": self._next_id, "tombstones": sorted(self._tombstones),
                       "metadata": [self._meta[self._user_of[i]] for i in self._row_ids]}
                (tmp / "ids.json").write_text(json.dumps(ids))
                faiss.write_index(self._cpu_index(), str(tmp / "index.faiss"))
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
                if path.exists():
                    if old.exists():
                        shutil.rmtree(old)
                    os.replace(path, old)
                    moved_aside = True
                os.replace(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if moved_aside and not path.exists():
                    try:
                        os.replace(old, path)
                    except OSError:  # load() falls back to the .old directory
                        logger.warning("save to %s failed; the previous store is left at %s", path, old)
                raise
            shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_fingerprint: str | None = None,
             expected_dim: int | None = None, *, use_gpu: bool | None = None) -> "UserStore":
        """Load a store written by :meth:`save`.

        Args:
            path: the saved directory (if a crash mid-save left only its ``.old`` sibling, that is read).
            expected_fingerprint: if given, the model fingerprint the store must have been saved with.
            expected_dim: if given, the vector dimension the store must have.
            use_gpu: as in the constructor.

        Raises:
            StoreError (a ValueError): missing or corrupt files, or a fingerprint or dim mismatch.
        """
        faiss = _faiss()
        path = Path(path)
        old = path.with_name(f".{path.name}.old")
        if not (path / "manifest.json").is_file() and (old / "manifest.json").is_file():
            logger.warning("%s is missing; loading the previous save left at %s", path, old)
            path = old
        manifest = _read_manifest(path)
        if expected_fingerprint is not None and manifest["model_fingerprint"] != expected_fingerprint:
            raise StoreError(f"{path} was saved for model fingerprint {manifest['model_fingerprint']!r}, "
                             f"expected {expected_fingerprint!r}")
        if expected_dim is not None and manifest["dim"] != expected_dim:
            raise StoreError(f"{path} holds {manifest['dim']}-d vectors, expected {expected_dim}-d")
        try:
            vectors = np.load(path / "vectors.npy", allow_pickle=False)
            ids = json.loads((path / "ids.json").read_text())
            index = faiss.read_index(str(path / "index.faiss"))
        except (OSError, ValueError, RuntimeError) as err:
            raise StoreError(f"{path} is corrupt: {err}") from None
        n, dim = manifest["count"], manifest["dim"]
        int_ids = ids.get("int_ids", [])
        if (vectors.shape != (n, dim) or vectors.dtype != np.float32 or len(int_ids) != n
                or len(ids.get("user_ids", [])) != n or len(ids.get("metadata", [])) != n
                or index.d != dim or index.ntotal != n + len(ids.get("tombstones", []))):
            raise StoreError(f"{path} is inconsistent: manifest says {n} x {dim}, vectors are "
                             f"{vectors.shape} {vectors.dtype}, index holds {index.ntotal} x {index.d}")
        store = cls(dim, metric=manifest["metric"], index=manifest["index"],
                    model_fingerprint=manifest["model_fingerprint"], hnsw_m=manifest.get("hnsw_m", 32),
                    hnsw_ef_search=manifest.get("hnsw_ef_search", 64),
                    hnsw_ef_construction=manifest.get("hnsw_ef_construction"), use_gpu=use_gpu)
        store._index = store._to_gpu(index) if store.use_gpu else index
        store._vectors = np.ascontiguousarray(vectors)
        store._row_ids = [int(i) for i in int_ids]
        store._row_of = {i: r for r, i in enumerate(store._row_ids)}
        store._int_of = dict(zip(ids["user_ids"], store._row_ids))
        store._user_of = dict(zip(store._row_ids, ids["user_ids"]))
        store._meta = dict(zip(ids["user_ids"], ids["metadata"]))
        store._tombstones = {int(i) for i in ids.get("tombstones", [])}
        store._next_id = int(ids["next_id"])
        store.created_at, store.updated_at = manifest["created_at"], manifest["updated_at"]
        return store


def _read_manifest(path: Path) -> dict:
    file = path / "manifest.json"
    if not file.is_file():
        raise StoreError(f"{path} is not a saved UserStore (no manifest.json)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{file} is corrupt: {err}") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{file} is corrupt: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise StoreError(f"{file} is corrupt: missing keys {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise StoreError(f"{path}: format version {manifest['format_version']!r} is not supported "
                         f"(expected {FORMAT_VERSION})")
    if manifest["metric"] not in _METRICS or manifest["index"] not in _INDEX_KINDS[1:]:
        raise StoreError(f"{file} is corrupt: metric {manifest['metric']!r}, index {manifest['index']!r}")
    return manifest


def model_fingerprint(model) -> str:
    """A sha256 hex digest identifying a built ``plural.model.PreferenceModel`` and its weights.

    Hashes the model's name, its config (``dataclasses.asdict``), ``feature_dim_`` and every
    state-dict tensor's name, dtype, shape and bytes, so two differently trained models differ.
    """
    import torch

    h = hashlib.sha256()
    h.update(json.dumps({"name": model.name, "config": dataclasses.asdict(model.config),
                         "feature_dim": model.feature_dim_}, sort_keys=True, default=repr).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"\0{name}\0{t.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
