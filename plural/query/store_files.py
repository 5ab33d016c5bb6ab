"""How a :class:`plural.query.store.UserStore` lies on disk: the manifest, and the files and
readers of each format version (2: bare FAISS index, ids and counters as ``.npy``, user ids as
UTF-8 bytes plus offsets; 1: ``IndexIDMap2``, ``vectors.npy``, ``ids.json``). Nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import numpy as np

from plural.training import saved_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""The format :meth:`plural.query.store.UserStore.save` writes (3: version 2 plus covariances)."""
LOADABLE_VERSIONS = (1, 2, 3)
METRICS = ("l2", "ip")
INDEX_KINDS = ("auto", "flat", "hnsw")
MANIFEST_KEYS = ("format_version", "dim", "metric", "index", "model_fingerprint", "count",
                 "created_at", "updated_at")
COUNTERS = ("n_comparisons", "updated_at")  # metadata kept in arrays, not in the extra dicts
MANIFEST = "manifest.json"
FILES = {  # the files of a save, by format version
    1: ("manifest.json", "index.faiss", "vectors.npy", "ids.json"),
    2: ("manifest.json", "index.faiss", "rows.npy", "user_id_offsets.npy", "user_id_bytes.npy",
        "n_comparisons.npy", "updated_at.npy", "metadata.json"),
}
FILES[3] = FILES[2] + ("covariance_rows.npy", "covariances.npy")
KNOWN_NAMES = frozenset(name for names in FILES.values() for name in names)


class StoreError(ValueError):
    """A saved store that cannot be loaded as asked: missing or corrupt files, wrong model or dim."""


def import_faiss():
    """The faiss module, or an ImportError that says what to install (also when two FAISS builds
    are installed at once: ``plural.installation.check_faiss_distributions``)."""
    from plural.installation import FAISS_GPU_ROUTE, check_faiss_distributions

    check_faiss_distributions()
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError(f"UserStore needs FAISS: pip install faiss-cpu (for the GPU build: {FAISS_GPU_ROUTE})") from err
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


def is_store(path: Path) -> bool:
    """Whether the directory ``path`` holds a saved store's manifest (for the save guard)."""
    manifest = saved_dir.marker(path, MANIFEST)
    return manifest is not None and manifest.get("format_version") in LOADABLE_VERSIONS


def check_index_matches(path: Path, index, manifest: dict) -> None:
    """Refuse an index file whose kind or metric contradicts the manifest."""
    faiss = import_faiss()
    kind = "hnsw" if isinstance(index, faiss.IndexHNSW) else "flat" if isinstance(index, faiss.IndexFlat) else None
    metric = {faiss.METRIC_L2: "l2", faiss.METRIC_INNER_PRODUCT: "ip"}.get(index.metric_type)
    if kind != manifest["index"] or metric != manifest["metric"]:
        raise StoreError(f"{path / 'index.faiss'} is a {kind or type(index).__name__} index with metric "
                         f"{metric or index.metric_type}, but {path / MANIFEST} says {manifest['index']} "
                         f"with {manifest['metric']}")


def read_v2(path: Path, manifest: dict):
    """The parts of a version-2 save: ``(index, rows, names, n_comparisons, updated_at, extra)``."""
    faiss = import_faiss()
    # Memory-mapped: read once, copied where kept, so they leave no freed slack in the heap.
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
              for name in ("rows", "user_id_offsets", "user_id_bytes", "n_comparisons", "updated_at")}
    extra = json.loads((path / "metadata.json").read_text())
    index = faiss.read_index(str(path / "index.faiss"))
    check_index_matches(path, index, manifest)
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


def read_covariances(path: Path, manifest: dict, names) -> dict:
    """``{user id: (dim, dim) float32}`` of a version-3 save's users stored with a covariance."""
    rows = np.load(path / "covariance_rows.npy", allow_pickle=False)
    covs = np.load(path / "covariances.npy", allow_pickle=False)
    n, dim = len(names), manifest["dim"]
    if (rows.ndim != 1 or rows.dtype != np.int64 or covs.dtype != np.float32 or covs.shape != (len(rows), dim, dim)
            or (len(rows) and (rows.min() < 0 or rows.max() >= n or not np.all(rows[1:] > rows[:-1])))
            or not np.isfinite(covs).all()):
        raise StoreError(f"{path} is inconsistent: covariances {covs.shape} {covs.dtype} for rows "
                         f"{rows.shape} {rows.dtype} of {n} users x {dim}")
    return {names[r]: covs[j].copy() for j, r in enumerate(rows.tolist())}


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
    check_index_matches(path, index, manifest)
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
    file = path / MANIFEST
    if not file.is_file():
        raise StoreError(f"{path} is not a saved UserStore (no manifest.json)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
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
    ints = {"dim": 1, "count": 0, "n_rows": 0, "hnsw_m": 2, "hnsw_ef_search": 1, "hnsw_ef_construction": 1}
    for key, least in ints.items():
        value = manifest.get(key, least)
        if value is None and key == "hnsw_ef_construction":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise StoreError(f"{file} is corrupt: {key} must be an int >= {least}, got {value!r}")
    for key in ("created_at", "updated_at"):
        if isinstance(manifest[key], bool) or not isinstance(manifest[key], (int, float)):
            raise StoreError(f"{file} is corrupt: {key} must be a number, got {manifest[key]!r}")
    if manifest["model_fingerprint"] is not None and not isinstance(manifest["model_fingerprint"], str):
        raise StoreError(f"{file} is corrupt: model_fingerprint must be a string or null")
    return manifest
