"""The on-disk cache of text embeddings, so a text is embedded once however many runs, processes or
comparisons use it.

One SQLite file per model, ``<cache root>/<model key>/embeddings.sqlite``, with a table
``embeddings(text_sha256 TEXT PRIMARY KEY, vector BLOB)`` holding little-endian float32 vectors and
a ``meta`` table (format version, model, dimension). Each batch of new vectors is written in one
transaction, so a crash leaves either all of them or none, never half an entry; concurrent writers
wait on SQLite's lock. Nothing is pickled. The cache root is the ``cache_dir`` argument, else
``$PLURAL_CACHE_DIR``, else ``~/.cache/plural``. The model key is the model's sanitized name plus a
short hash of its resolved path (or hub name), so two models never share vectors. Vectors are
stored as the model outputs them; ``normalize`` is applied on the way out, so one cache serves both
settings. Delete a model's folder to clear its cache.

A cache can be bounded (``max_entries``; ``TextEncoder(cache=n)``): after a write leaves more
vectors than the bound, entries other than those just written are evicted in the order of their
keys, the SHA-256 of their texts, which amounts to random replacement (the file keeps no access
times). The bound applies to the whole file, whichever process wrote it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

CACHE_ENV = "PLURAL_CACHE_DIR"
CACHE_FORMAT_VERSION = 1
CACHE_FILE = "embeddings.sqlite"
_SQL_CHUNK = 500  # ids per IN (...) query; below SQLite's oldest bound-parameter limit (999)


def model_key(model_name_or_path: str) -> str:
    """The cache folder name of a model: its sanitized name and a short hash of its identity.

    A local path is identified by its resolved absolute path, a hub name by the name itself.

    Example:
        >>> model_key("sentence-transformers/all-MiniLM-L6-v2")[:39]
        'sentence-transformers_all-MiniLM-L6-v2-'
    """
    path = Path(model_name_or_path).expanduser()
    if path.exists():
        resolved = path.resolve()
        identity, name = str(resolved), "-".join(resolved.parts[-2:])
    else:
        identity = name = str(model_name_or_path)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:64] or "model"
    return f"{safe}-{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:12]}"


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "plural"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingCache:
    """One model's vectors in one SQLite file; see the module docstring."""

    def __init__(self, path: Path, model: str, max_entries: int | None = None) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be >= 1 or None, got {max_entries!r}")
        self.path = path
        self.model = model
        self.max_entries = max_entries

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Autocommit mode: transactions are opened explicitly where they are needed.
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _meta(conn: sqlite3.Connection) -> dict[str, str]:
        try:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:  # file exists but was never initialised
            return {}

    def _check_version(self, meta: dict[str, str]) -> None:
        version = meta.get("format_version")
        if version is not None and int(version) != CACHE_FORMAT_VERSION:
            raise RuntimeError(f"embedding cache {self.path} has format version {version}, this "
                               f"plural reads version {CACHE_FORMAT_VERSION}; delete the folder")

    def dim(self) -> int | None:
        """The stored vectors' dimension, or None when nothing is stored yet."""
        if not self.path.exists():
            return None
        with self._connect() as conn:
            meta = self._meta(conn)
        self._check_version(meta)
        return int(meta["dim"]) if "dim" in meta else None

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those ``keys`` that are present; a corrupt entry counts as absent."""
        if not keys or not self.path.exists():
            return {}
        found: dict[str, np.ndarray] = {}
        with self._connect() as conn:
            meta = self._meta(conn)
            self._check_version(meta)
            if "dim" not in meta:
                return {}
            n_bytes = 4 * int(meta["dim"])
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[start:start + _SQL_CHUNK]
                rows = conn.execute(
                    "SELECT text_sha256, vector FROM embeddings WHERE text_sha256 IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, blob in rows:
                    if len(blob) != n_bytes:
                        logger.warning("embedding cache %s: entry %s has %d bytes, expected %d; "
                                       "re-embedding it", self.path, key, len(blob), n_bytes)
                        continue
                    found[key] = np.frombuffer(blob, dtype="<f4")
        return found

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` ``(len(keys), d)`` under ``keys``, all in one transaction (with a bound,
        at most ``max_entries`` of them, and older entries evicted to make room)."""
        if self.max_entries is not None:
            keys, vectors = list(keys)[: self.max_entries], vectors[: self.max_entries]
        dim = int(vectors.shape[1])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blobs = np.ascontiguousarray(vectors, dtype="<f4")
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS embeddings "
                             "(text_sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID")
                meta = self._meta(conn)
                self._check_version(meta)
                if "dim" in meta and int(meta["dim"]) != dim:
                    raise RuntimeError(f"embedding cache {self.path} holds {meta['dim']}-d vectors, "
                                       f"got {dim}-d ones for the same model key")
                conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", [
                    ("format_version", str(CACHE_FORMAT_VERSION)), ("model", self.model),
                    ("dim", str(dim)), ("dtype", "float32-le")])
                conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?)",
                                 ((key, blobs[i].tobytes()) for i, key in enumerate(keys)))
                if self.max_entries is not None:
                    self._evict(conn, set(keys))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _evict(self, conn: sqlite3.Connection, keep: set[str]) -> None:
        """Delete entries beyond ``max_entries``, never one of ``keep`` (the batch just written)."""
        excess = conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] - self.max_entries
        if excess <= 0:
            return
        victims = [key for (key,) in conn.execute(
            "SELECT text_sha256 FROM embeddings ORDER BY text_sha256 LIMIT ?", (excess + len(keep),))
            if key not in keep][:excess]
        conn.executemany("DELETE FROM embeddings WHERE text_sha256 = ?", ((k,) for k in victims))
        logger.debug("embedding cache %s: evicted %d entries (bound %d)", self.path, len(victims), self.max_entries)

    def __len__(self) -> int:
        """Vectors stored."""
        if not self.path.exists():
            return 0
        with self._connect() as conn:
            try:
                return int(conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
            except sqlite3.OperationalError:
                return 0
