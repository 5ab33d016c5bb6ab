"""Saving and loading a :class:`plural.query.store.UserStore`: the consistency check a save makes,
the save itself (through ``plural.training.saved_dir``: fsynced, checksummed, locked, swapped in
atomically) and the load that verifies every file. A mixin of ``UserStore``; the on-disk format and
its readers are ``plural.query.store_files``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from plural.core.fingerprint import model_fingerprint
from plural.query.store_files import (FILES, FORMAT_VERSION, KNOWN_NAMES, MANIFEST, StoreError, encode_ids,
                                      import_faiss, is_store, read_covariances, read_manifest, read_v1, read_v2)
from plural.training import saved_dir

logger = logging.getLogger(__name__)


class StorePersistence:
    """``check_consistency``, ``save`` and ``load`` of :class:`~plural.query.store.UserStore`."""

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
        position, and their ``(dim, dim)`` matrices) and ``checksums.json``. An index holding
        tombstones (HNSW, GPU) is rebuilt first, so a removed user's vector is not written. The
        store's lock is held only while a consistent copy is taken, not while files are written, so
        reads and writes go on during a save (the save holds the store as it was when it began).

        Args:
            path: the target directory: new, empty, or an earlier save of a store.
            overwrite: also replace a directory holding other files (they are deleted).

        Raises:
            FileExistsError: ``path`` holds files that are not a store's, and ``overwrite`` is False.
            StoreError: the store fails :meth:`check_consistency`, or another process holds the path.
        """
        faiss = import_faiss()
        with self._lock:  # a consistent copy of everything, then the slow writes without the lock
            self.check_consistency()
            if self._n_tombstones:
                self.rebuild()
            live = self._live_ids()
            names = self._users[live].tolist()
            manifest = {"format_version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric,
                        "index": self.index_kind, "model_fingerprint": self.model_fingerprint,
                        "count": len(live), "n_rows": int(self._index.ntotal),
                        "created_at": self.created_at, "updated_at": self.updated_at,
                        "hnsw_m": self.hnsw_m, "hnsw_ef_search": self.hnsw_ef_search,
                        "hnsw_ef_construction": self.hnsw_ef_construction}
            offsets, blob = encode_ids(names)
            with_cov = [j for j, u in enumerate(names) if u in self._covariances]
            arrays = {"rows": self._rows(live).astype(np.int64), "user_id_offsets": offsets,
                      "user_id_bytes": blob, "n_comparisons": self._n_comparisons[live].copy(),
                      "updated_at": self._updated_at[live].copy(),
                      "covariance_rows": np.asarray(with_cov, dtype=np.int64),
                      "covariances": (np.stack([self._covariances[names[j]] for j in with_cov]) if with_cov
                                      else np.zeros((0, self.dim, self.dim), np.float32))}
            metadata = json.dumps({u: self._extra[u] for u in names if u in self._extra})
            index = self._cpu_index()
            index = faiss.clone_index(index) if index is self._index else index  # ours to write alone

        def fill(tmp: Path) -> None:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            (tmp / "metadata.json").write_text(metadata)
            faiss.write_index(index, str(tmp / "index.faiss"))
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

        return saved_dir.write(Path(path), fill, what="a UserStore", is_kind=is_store,
                               known_names=KNOWN_NAMES, overwrite=overwrite, error=StoreError)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_fingerprint: str | None = None,
             expected_dim: int | None = None, *, model=None, use_gpu: bool | None = None):
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
        cls._adopt(store, index, rows, names, counts, updated, extra, covariances)
        if len(store) != len(names):
            raise StoreError(f"{path} is corrupt: a user id appears twice")
        store.created_at, store.updated_at = manifest["created_at"], manifest["updated_at"]
        return store

    def _adopt(self, index, rows: np.ndarray, names: np.ndarray, counts: np.ndarray, updated: np.ndarray,
               extra: dict[str, dict], covariances: dict[str, np.ndarray]) -> None:
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
        self._covariances = covariances
        self._next_id = n_rows
        self._n_tombstones = 0 if self._can_remove else n_rows - len(rows)
        if self._row_ids is not None:
            self._row_ids = np.arange(n_rows, dtype=np.int64)
        if self.use_gpu:
            self._gpu_vectors = index.reconstruct_n(0, n_rows) if n_rows else self._gpu_vectors
            index = self._to_gpu(index)
        self._index = index
