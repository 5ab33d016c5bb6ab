"""How a :class:`plural.store.UserStore` lies on disk: the manifest, the atomic directory swap, and
the readers of each format version (2: bare FAISS index, ids and counters as ``.npy``, user ids as
UTF-8 bytes plus offsets; 1: ``IndexIDMap2``, ``vectors.npy``, ``ids.json``). Nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""The format :meth:`plural.store.UserStore.save` writes."""
LOADABLE_VERSIONS = (1, 2)
METRICS = ("l2", "ip")
INDEX_KINDS = ("auto", "flat", "hnsw")
MANIFEST_KEYS = ("format_version", "dim", "metric", "index", "model_fingerprint", "count",
                 "created_at", "updated_at")
COUNTERS = ("n_comparisons", "updated_at")  # metadata kept in arrays, not in the extra dicts


class StoreError(ValueError):
    """A saved store that cannot be loaded as asked: missing or corrupt files, wrong model or dim."""


def import_faiss():
    """The faiss module, or an ImportError that says what to install."""
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError("UserStore needs FAISS: pip install faiss-cpu (or plural[gpu] for "
                          "faiss-gpu-cu12)") from err
    return faiss


def encode_ids(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """User ids as ``(offsets (n + 1,) int64, UTF-8 bytes (offsets[-1],) uint8)``."""
    joined = "".join(names)
    blob = joined.encode("utf-8", "surrogatepass")
    if len(blob) == len(joined):  # ASCII: one byte per character
        lengths = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
    else:
        lengths = np.fromiter((len(u.encode("utf-8", "surrogatepass")) for u in names),
                              dtype=np.int64, count=len(names))
    offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.frombuffer(blob, dtype=np.uint8)


def decode_ids(offsets: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_ids`: an ``(n,)`` object array of str."""
    raw = memoryview(blob)
    pieces = (str(raw[a:b], "utf-8", "surrogatepass") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    return np.fromiter(pieces, dtype=object, count=len(offsets) - 1)


def replace_directory(path: Path, fill: Callable[[Path], None]) -> Path:
    """Write a directory at ``path`` atomically: ``fill(tmp)`` writes it in a temporary sibling,
    which then takes ``path``'s place with ``os.replace``; an earlier ``path`` is moved aside to
    ``.<name>.old`` for the swap and removed after it. A crash midway leaves either the previous
    directory at ``path`` or, between the two renames, at ``.<name>.old``, where
    :func:`saved_directory` finds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    moved_aside = False
    try:
        fill(tmp)
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
            except OSError:  # saved_directory() falls back to the .old directory
                logger.warning("save to %s failed; the previous store is left at %s", path, old)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def saved_directory(path: Path) -> Path:
    """``path``, or its ``.old`` sibling when a crash mid-save left only that one."""
    old = path.with_name(f".{path.name}.old")
    if not (path / "manifest.json").is_file() and (old / "manifest.json").is_file():
        logger.warning("%s is missing; loading the previous save left at %s", path, old)
        return old
    return path


def read_v2(path: Path, manifest: dict):
    """The parts of a version-2 save: ``(index, rows, names, n_comparisons, updated_at, extra)``."""
    faiss = import_faiss()
    # Memory-mapped: read once, copied where kept, so they leave no freed slack in the heap.
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
              for name in ("rows", "user_id_offsets", "user_id_bytes", "n_comparisons", "updated_at")}
    extra = json.loads((path / "metadata.json").read_text())
    index = faiss.read_index(str(path / "index.faiss"))
    n, dim, n_rows = manifest["count"], manifest["dim"], manifest.get("n_rows", manifest["count"])
    rows, offsets, blob = arrays["rows"], arrays["user_id_offsets"], arrays["user_id_bytes"]
    shapes_ok = (rows.shape == arrays["n_comparisons"].shape == arrays["updated_at"].shape == (n,)
                 and offsets.shape == (n + 1,) and blob.ndim == 1
                 and rows.dtype == offsets.dtype == arrays["n_comparisons"].dtype == np.int64
                 and arrays["updated_at"].dtype == np.float64 and blob.dtype == np.uint8)
    if (not shapes_ok or index.d != dim or index.ntotal != n_rows or not isinstance(extra, dict)
            or not all(isinstance(meta, dict) for meta in extra.values())):
        raise StoreError(f"{path} is inconsistent: manifest says {n} users x {dim} in {n_rows} rows, index "
                         f"holds {index.ntotal} x {index.d}, rows {rows.shape} {rows.dtype}")
    if n and (rows[0] < 0 or rows[-1] >= n_rows or not np.all(rows[1:] > rows[:-1]) or offsets[0] != 0
              or offsets[-1] != blob.size or not np.all(offsets[1:] >= offsets[:-1])):
        raise StoreError(f"{path} is inconsistent: rows or user id offsets out of order or range")
    names = decode_ids(offsets, blob)
    return index, rows, names, arrays["n_comparisons"], arrays["updated_at"], extra


def read_v1(path: Path, manifest: dict):
    """The parts of a version-1 save (``IndexIDMap2``, ``vectors.npy``, ``ids.json``), as :func:`read_v2`."""
    faiss = import_faiss()
    vectors = np.load(path / "vectors.npy", mmap_mode="r", allow_pickle=False)  # the shape check only
    ids = json.loads((path / "ids.json").read_text())
    id_map = faiss.read_index(str(path / "index.faiss"))
    n, dim = manifest["count"], manifest["dim"]
    int_ids = np.asarray(ids.get("int_ids", []), dtype=np.int64)
    tombstones = np.asarray(ids.get("tombstones", []), dtype=np.int64)
    if (vectors.shape != (n, dim) or vectors.dtype != np.float32 or len(int_ids) != n
            or len(ids.get("user_ids", [])) != n or len(ids.get("metadata", [])) != n
            or id_map.d != dim or id_map.ntotal != n + len(tombstones) or not hasattr(id_map, "id_map")):
        raise StoreError(f"{path} is inconsistent: manifest says {n} x {dim}, vectors are "
                         f"{vectors.shape} {vectors.dtype}, index holds {id_map.ntotal} x {id_map.d}")
    labels = faiss.vector_to_array(id_map.id_map).astype(np.int64)  # row -> version-1 int id
    index = faiss.clone_index(id_map.index)  # the bare index, owned by Python
    del id_map
    order = np.argsort(labels, kind="stable")
    pos = np.searchsorted(labels, int_ids, sorter=order)
    if n and (pos.max() >= len(labels) or np.any(labels[order[pos]] != int_ids)):
        raise StoreError(f"{path} is inconsistent: a stored user's id is not in the index")
    rows = order[pos]
    by_row = np.argsort(rows)
    rows = rows[by_row].astype(np.int64)
    users, metas = ids["user_ids"], ids["metadata"]
    names = np.fromiter((users[j] for j in by_row.tolist()), dtype=object, count=n)
    metas = [metas[j] for j in by_row.tolist()]
    counts = np.asarray([m.get("n_comparisons", 0) for m in metas], dtype=np.int64)
    updated = np.asarray([m.get("updated_at", manifest["updated_at"]) for m in metas], dtype=np.float64)
    extra = {}
    for u, m in zip(names, metas):
        rest = {key: v for key, v in m.items() if key not in COUNTERS}
        if rest:
            extra[u] = rest
    return index, rows, names, counts, updated, extra


def read_manifest(path: Path) -> dict:
    file = path / "manifest.json"
    if not file.is_file():
        raise StoreError(f"{path} is not a saved UserStore (no manifest.json)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{file} is corrupt: {err}") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{file} is corrupt: expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise StoreError(f"{file} is corrupt: missing keys {missing}")
    if manifest["format_version"] not in LOADABLE_VERSIONS:
        raise StoreError(f"{path}: format version {manifest['format_version']!r} is not supported "
                         f"(expected one of {LOADABLE_VERSIONS})")
    if manifest["metric"] not in METRICS or manifest["index"] not in INDEX_KINDS[1:]:
        raise StoreError(f"{file} is corrupt: metric {manifest['metric']!r}, index {manifest['index']!r}")
    return manifest
