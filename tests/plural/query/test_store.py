"""Tests for plural.query.store: a persistent FAISS index of user vectors."""

from __future__ import annotations

import json
import os
import threading

import faiss
import numpy as np
import pytest

from plural.training.saved_dir import record_checksums
from plural.query.store import StoreError, UserStore, model_fingerprint
from plural.query.store_files import FORMAT_VERSION

D = 16
KINDS = ["flat", "hnsw"]


def _data(n=500, d=D, seed=0):
    rng = np.random.default_rng(seed)
    return [f"u{i}" for i in range(n)], rng.standard_normal((n, d)).astype(np.float32)


def _store(kind, n=500, **kw):
    ids, x = _data(n)
    store = UserStore(D, index=kind, **kw)
    store.add(ids, x)
    return store, ids, x


def _assert_same(a: UserStore, b: UserStore, queries):
    assert a.user_ids == b.user_ids
    np.testing.assert_array_equal(a.get(a.user_ids), b.get(b.user_ids))
    assert [a.metadata(u) for u in a.user_ids] == [b.metadata(u) for u in b.user_ids]
    ids_a, dist_a = a.search(queries, 10)
    ids_b, dist_b = b.search(queries, 10)
    assert ids_a == ids_b
    np.testing.assert_array_equal(dist_a, dist_b)


# ---------------------------------------------------------------------- add / get / search
@pytest.mark.parametrize("kind", KINDS)
def test_add_get_search_returns_string_ids(kind):
    store, ids, x = _store(kind, n=200)
    assert len(store) == 200 and "u5" in store and "nobody" not in store
    np.testing.assert_array_equal(store.get(["u3", "u7"]), x[[3, 7]])
    found, dist = store.search(x[:5], k=3)
    assert dist.shape == (5, 3) and dist.dtype == np.float32
    assert [row[0] for row in found] == ids[:5]  # each vector is its own nearest neighbour
    assert all(isinstance(u, str) for row in found for u in row)
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-5)


def test_auto_picks_flat_small_hnsw_large():
    assert UserStore(D).index_kind == "flat"
    assert UserStore(D, expected_size=49_999).index_kind == "flat"
    assert UserStore(D, expected_size=50_000).index_kind == "hnsw"
    assert UserStore(D, expected_size=10, index="hnsw").index_kind == "hnsw"


def test_hnsw_recall_against_flat():
    flat, _, _ = _store("flat")
    hnsw, _, _ = _store("hnsw")
    queries = np.random.default_rng(1).standard_normal((50, D)).astype(np.float32)
    exact, _ = flat.search(queries, 10)
    approx, _ = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_small_store_returns_fewer_than_k(kind):
    store = UserStore(D, index=kind)
    empty_ids, empty_dist = store.search(np.zeros((2, D)), k=5)
    assert empty_ids == [[], []] and empty_dist.shape == (2, 0)
    store.add(["a", "b"], np.eye(D)[:2])
    found, dist = store.search(np.eye(D)[:1], k=5)
    assert found == [["a", "b"]] and dist.shape == (1, 2)


def test_inner_product_metric_ranks_by_similarity():
    store = UserStore(4, metric="ip")
    store.add(["small", "big"], [[1, 0, 0, 0], [3, 0, 0, 0]])
    found, dist = store.search([[1, 0, 0, 0]], k=2)
    assert found == [["big", "small"]]
    np.testing.assert_allclose(dist, [[3.0, 1.0]])


# ---------------------------------------------------------------------- writes
@pytest.mark.parametrize("kind", KINDS)
def test_remove_then_readd(kind):
    store, ids, x = _store(kind, n=100)
    store.remove(["u0"])
    assert "u0" not in store and len(store) == 99
    with pytest.raises(KeyError, match="u0"):
        store.get(["u0"])
    found, _ = store.search(x[:20], k=10)
    assert all("u0" not in row for row in found)
    store.add(["u0"], x[0])
    assert len(store) == 100
    assert store.search(x[:1], k=1)[0] == [["u0"]]
    np.testing.assert_array_equal(store.get("u0"), x[:1])


@pytest.mark.parametrize("kind", KINDS)
def test_update_changes_vector_and_search(kind):
    store, ids, x = _store(kind, n=100)
    before = store.metadata("u1")["updated_at"]
    target = x[50] + 1e-3
    store.update(["u1"], target[None])
    np.testing.assert_array_equal(store.get("u1")[0], target)
    found, _ = store.search(x[50:51], k=2)
    assert set(found[0]) == {"u1", "u50"}
    assert store.search(x[1:2], k=1)[0] != [["u1"]]  # the old vector is gone
    assert store.metadata("u1")["updated_at"] >= before
    assert len(store) == 100


def test_tombstones_filtered_and_rebuilt_automatically():
    store, ids, x = _store("hnsw", n=50)
    store.remove(ids[:5])
    assert store.n_tombstones == 5
    found, _ = store.search(x, k=50)
    assert all(len(row) == 45 and not set(row) & set(ids[:5]) for row in found)
    store.remove(ids[5:15])  # 15 tombstones > 20% of 50 -> rebuilt
    assert store.n_tombstones == 0 and store._index.ntotal == 35
    found, _ = store.search(x[20:21], k=1)
    assert found == [["u20"]]


def test_upsert_and_metadata():
    store = UserStore(4)
    store.add(["a"], np.ones((1, 4)), metadata=[{"n_comparisons": 7, "source": "survey"}])
    meta = store.metadata("a")
    assert meta["n_comparisons"] == 7 and meta["source"] == "survey" and "updated_at" in meta
    store.upsert(["a", "b"], np.zeros((2, 4)))
    assert len(store) == 2 and store.metadata("a")["source"] == "survey"
    assert store.metadata("b")["n_comparisons"] == 0
    np.testing.assert_array_equal(store.get(["a"]), np.zeros((1, 4)))


def test_users_where_matches_values_and_lists_and_forgets_removed_users():
    store = UserStore(4)
    store.add(["a", "b", "c", "d"], np.eye(4), metadata=[{"contexts": ["x", "y"]}, {"contexts": ["y"]},
                                                         {"contexts": "x"}, None])
    assert store.users_where("contexts", "x") == ["a", "c"]
    assert store.users_where("contexts", "y") == ["a", "b"]
    assert store.users_where("contexts", "z") == [] and store.users_where("other", "x") == []
    store.remove(["a"])
    store.upsert(["d"], np.ones((1, 4)), metadata=[{"contexts": ["x"]}])
    assert store.users_where("contexts", "x") == ["c", "d"]


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    store = UserStore(4)
    store.add(["a"], np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        store.add(["b"], np.ones((1, 5)))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        store.search(np.ones((1, 3)), k=1)
    bad = np.ones((3, 4))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        store.add(["b", "c", "d"], bad)
    with pytest.raises(ValueError, match="row 0"):
        store.search([[np.inf, 0, 0, 0]], k=1)
    with pytest.raises(ValueError, match="already"):
        store.add(["a"], np.ones((1, 4)))
    with pytest.raises(KeyError, match="ghost"):
        store.update(["ghost"], np.ones((1, 4)))
    with pytest.raises(KeyError, match="ghost"):
        store.remove(["ghost"])
    with pytest.raises(KeyError, match="ghost"):
        store.metadata("ghost")
    with pytest.raises(ValueError, match="2 user ids but 1 vectors"):
        store.add(["x", "y"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="twice"):
        store.add(["x", "x"], np.ones((2, 4)))
    assert len(store) == 1  # nothing half-written


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_exact(tmp_path, kind):
    store, ids, x = _store(kind, n=100, model_fingerprint="fp1")
    store.remove(["u3"])  # leaves a tombstone for hnsw
    store.update(["u4"], np.zeros((1, D)), metadata=[{"n_comparisons": 12}])
    store.save(tmp_path / "s")
    loaded = UserStore.load(tmp_path / "s", expected_fingerprint="fp1", expected_dim=D)
    assert loaded.index_kind == kind and loaded.model_fingerprint == "fp1"
    _assert_same(store, loaded, x[:20])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["count"] == 99 and manifest["dim"] == D and manifest["index"] == kind
    loaded.add(["u3"], x[3])  # keeps working after load, no id clash
    assert loaded.search(x[3:4], k=1)[0] == [["u3"]]


def test_failed_write_during_second_save_leaves_first(tmp_path, monkeypatch):
    store, ids, x = _store("flat", n=30)
    store.save(tmp_path / "s")
    first = UserStore.load(tmp_path / "s")
    store.add(["new"], np.ones((1, D)))

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        store.save(tmp_path / "s")
    _assert_same(first, UserStore.load(tmp_path / "s"), x[:5])
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temp dirs left behind


def test_crash_between_swaps_leaves_previous_loadable(tmp_path, monkeypatch):
    store, ids, x = _store("flat", n=30)
    store.save(tmp_path / "s")
    first = UserStore.load(tmp_path / "s")
    store.add(["new"], np.ones((1, D)))
    real_replace = os.replace
    calls = []

    def crash_after_moving_aside(src, dst):
        calls.append(dst)
        if len(calls) >= 2:  # the old dir is aside; the new one never arrives, nor can it be restored
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_moving_aside)
    with pytest.raises(OSError, match="power cut"):
        store.save(tmp_path / "s")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "s").exists()
    _assert_same(first, UserStore.load(tmp_path / "s"), x[:5])
    store.save(tmp_path / "s")  # the next save recovers
    assert "new" in UserStore.load(tmp_path / "s")


def test_corrupt_or_mismatched_saves_raise_value_errors(tmp_path):
    store, ids, x = _store("flat", n=10, model_fingerprint="fp1")
    path = store.save(tmp_path / "s")
    with pytest.raises(ValueError, match="'fp1'.*'fp2'"):
        UserStore.load(path, expected_fingerprint="fp2")
    with pytest.raises(ValueError, match="16-d.*8-d"):
        UserStore.load(path, expected_dim=8)
    manifest_file = path / "manifest.json"
    good = json.loads(manifest_file.read_text())
    manifest_file.write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        UserStore.load(path)
    manifest_file.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(StoreError, match="manifest.json is corrupt: its sha256"):
        UserStore.load(path)  # an edit is refused until the save is re-stamped
    record_checksums(path)
    with pytest.raises(ValueError, match="format version 99"):
        UserStore.load(path)
    manifest_file.write_text(json.dumps({k: v for k, v in good.items() if k != "dim"}))
    record_checksums(path)
    with pytest.raises(ValueError, match="missing keys.*dim"):
        UserStore.load(path)
    manifest_file.write_text(json.dumps({**good, "count": 11}))
    record_checksums(path)
    with pytest.raises(ValueError, match="inconsistent"):
        UserStore.load(path)
    with pytest.raises(ValueError, match="no manifest"):
        UserStore.load(tmp_path / "elsewhere")


def test_vectors_are_loaded_without_pickle(tmp_path):
    store, _, _ = _store("flat", n=5)
    path = store.save(tmp_path / "s")
    for name in ("n_comparisons", "user_id_bytes"):
        good = np.load(path / f"{name}.npy")
        np.save(path / f"{name}.npy", np.array([{"evil": 1}] * 5, dtype=object), allow_pickle=True)
        record_checksums(path)  # past the checksums, the reader itself must refuse the pickle
        with pytest.raises(StoreError):
            UserStore.load(path)
        np.save(path / f"{name}.npy", good)
        record_checksums(path)
    assert len(UserStore.load(path)) == 5


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_keeps_extra_metadata_and_unusual_ids(tmp_path, kind):
    ids = ["", "é", "用户-1", "a\nb", "\ud800", "plain"]  # empty, non-ASCII, newline, lone surrogate
    x = np.random.default_rng(3).standard_normal((len(ids), D)).astype(np.float32)
    store = UserStore(D, index=kind)
    store.add(ids, x, metadata=[{"source": "survey", "tags": [1, 2]}, None, {}, {"n_comparisons": 3},
                                {"n_comparisons": 4, "weight": 0.5}, None])
    store.remove(["plain"])
    loaded = UserStore.load(store.save(tmp_path / "s"))
    _assert_same(store, loaded, x)
    assert loaded.metadata("") == {"n_comparisons": 0, "source": "survey", "tags": [1, 2],
                                   "updated_at": store.metadata("")["updated_at"]}
    assert loaded.metadata("\ud800")["weight"] == 0.5 and loaded.metadata("\ud800")["n_comparisons"] == 4
    assert loaded.n_tombstones == 0 and loaded._index.ntotal == 5  # the removed user's vector is not saved


def test_metadata_merges_on_update_and_goes_with_the_user():
    store = UserStore(4)
    store.add(["a"], np.ones((1, 4)), metadata=[{"n_comparisons": 2, "source": "survey"}])
    store.update(["a"], np.zeros((1, 4)), metadata=[{"lang": "fr", "updated_at": -1.0}])
    meta = store.metadata("a")
    assert meta["n_comparisons"] == 2 and meta["source"] == "survey" and meta["lang"] == "fr"
    assert meta["updated_at"] > 0  # set by the store
    store.metadata("a")["source"] = "changed"  # a copy
    assert store.metadata("a")["source"] == "survey"
    store.remove(["a"])
    store.add(["a"], np.ones((1, 4)))
    assert store.metadata("a") == {"n_comparisons": 0, "updated_at": store.metadata("a")["updated_at"]}
    with pytest.raises(ValueError, match="n_comparisons must be an int"):
        store.update(["a"], np.ones((1, 4)), metadata=[{"n_comparisons": "many"}])
    with pytest.raises(ValueError, match="JSON"):
        store.update(["a"], np.ones((1, 4)), metadata=[{"when": object()}])
    assert store.metadata("a")["n_comparisons"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_per_user_state_is_arrays_and_vectors_live_only_in_faiss(kind):
    store, ids, x = _store(kind, n=300)
    assert store._gpu_vectors is None  # CPU stores keep no copy of the vectors
    assert not store._extra  # no per-user dicts without extra metadata
    assert store._users.dtype == object and store._n_comparisons.dtype == np.int64
    assert all(store._users[store._int_of[u]] is u for u in ids)  # one str object per id, shared
    np.testing.assert_array_equal(store.get(ids[::-1]), x[::-1])


def test_update_heavy_flat_store_renumbers_its_ids():
    store, ids, x = _store("flat", n=20)
    rng = np.random.default_rng(5)
    for _ in range(200):
        j = int(rng.integers(20))
        x[j] = rng.standard_normal(D)
        store.update([ids[j]], x[j:j + 1], metadata=[{"n_comparisons": j}])
    assert store._next_id <= 2 * 20 + 1024 and store._index.ntotal == 20 and store.n_tombstones == 0
    np.testing.assert_array_equal(store.get(ids), x)
    assert store.search(x, k=1)[0] == [[u] for u in ids]
    for _ in range(600):  # past the renumbering threshold
        store.update([ids[0]], x[:1])
    assert store._next_id < 1100 and store.user_ids[-1] == "u0"
    np.testing.assert_array_equal(store.get(ids), x)


def test_hnsw_rebuild_renumbers_and_keeps_metadata():
    store, ids, x = _store("hnsw", n=100)
    store.update(ids[:10], x[:10], metadata=[{"n_comparisons": i, "k": i} for i in range(10)])
    assert store.n_tombstones == 10
    store.update(ids[10:30], x[10:30])  # 30 tombstones > 20% of 130 -> rebuilt
    assert store.n_tombstones == 0 and store._index.ntotal == 100 and store._next_id == 100
    assert store.metadata("u7")["n_comparisons"] == 7 and store.metadata("u7")["k"] == 7
    np.testing.assert_array_equal(store.get(ids), x)
    assert [row[0] for row in store.search(x[:20], k=1)[0]] == ids[:20]


def _save_v1(path, kind, n=60, n_tombstones=5, seed=0):
    """A store directory in format version 1 (as written by the first UserStore): an IndexIDMap2,
    the vectors in ``vectors.npy`` in their own row order, ``ids.json``."""
    rng = np.random.default_rng(seed)
    ids, x = _data(n, seed=seed)
    int_ids = rng.permutation(np.arange(1, 2 * n + 1, 2))  # live ids, odd, in the vectors' row order
    dead = np.arange(0, 2 * n_tombstones, 2)  # tombstoned ids, even
    base = faiss.IndexHNSWFlat(D, 32) if kind == "hnsw" else faiss.IndexFlat(D)
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(rng.standard_normal((n_tombstones, D)).astype(np.float32), dead.astype(np.int64))
    order = np.argsort(int_ids)  # the index holds the live users in id order
    index.add_with_ids(x[order], int_ids[order].astype(np.int64))
    metadata = [{"n_comparisons": i % 7, "updated_at": 1000.0 + i} | ({"group": i % 3} if i % 2 else {})
                for i in range(n)]
    path.mkdir()
    np.save(path / "vectors.npy", x)
    (path / "ids.json").write_text(json.dumps({"user_ids": ids, "int_ids": int_ids.tolist(),
                                               "next_id": 2 * n + 1, "tombstones": dead.tolist(),
                                               "metadata": metadata}))
    faiss.write_index(index, str(path / "index.faiss"))
    (path / "manifest.json").write_text(json.dumps({
        "format_version": 1, "dim": D, "metric": "l2", "index": kind, "model_fingerprint": "fp0",
        "count": n, "created_at": 1.0, "updated_at": 2000.0, "hnsw_m": 32, "hnsw_ef_search": 64,
        "hnsw_ef_construction": 64}))
    return ids, x, metadata


@pytest.mark.parametrize("kind", KINDS)
def test_loads_version_1_stores(tmp_path, kind):
    ids, x, metadata = _save_v1(tmp_path / "v1", kind)
    store = UserStore.load(tmp_path / "v1", expected_fingerprint="fp0", expected_dim=D)
    assert len(store) == len(ids) and sorted(store.user_ids) == sorted(ids) and store.index_kind == kind
    np.testing.assert_array_equal(store.get(ids), x)
    assert [store.metadata(u) for u in ids] == metadata
    assert store.n_tombstones == (5 if kind == "hnsw" else 0)  # a CPU flat index drops its tombstones
    assert [row[0] for row in store.search(x, k=1)[0]] == ids
    assert all(len(row) == 10 for row in store.search(x[:5], k=10)[0])
    again = UserStore.load(store.save(tmp_path / "v2"))
    assert json.loads((tmp_path / "v2" / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
    _assert_same(store, again, x[:10])
    store.add(["new"], np.ones((1, D)))  # no id clash after the migration
    assert store.search(np.ones((1, D)), k=1)[0] == [["new"]]


def test_flat_save_with_tombstones_loads_on_cpu_without_them(tmp_path):
    """A flat store saved from a GPU index holds tombstoned rows; on CPU they are removed at load."""
    store, ids, x = _store("flat", n=20)
    path = store.save(tmp_path / "s")
    index = faiss.read_index(str(path / "index.faiss"))
    grown = faiss.IndexFlat(D)
    grown.add(np.full((1, D), 9.0, np.float32))  # a tombstone at row 0: every live row moves by one
    grown.add(index.reconstruct_n(0, index.ntotal))
    faiss.write_index(grown, str(path / "index.faiss"))
    np.save(path / "rows.npy", np.arange(1, 21, dtype=np.int64))
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "n_rows": 21}))
    record_checksums(path)
    loaded = UserStore.load(path)
    assert loaded._index.ntotal == 20 and loaded.n_tombstones == 0
    _assert_same(store, loaded, x[:5])
    _, dist = loaded.search(np.full((1, D), 9.0), k=1)
    assert dist[0, 0] > 1.0  # the tombstone (at distance 0) is gone


def test_gpu_code_path_with_a_cpu_stand_in(tmp_path, monkeypatch):
    """The GPU flat path (tombstones, a vector copy, save from a CPU copy) with the GPU move stubbed."""
    monkeypatch.setattr(UserStore, "_to_gpu", lambda self, index: index)
    monkeypatch.setattr(UserStore, "_cpu_index", lambda self: self._index)
    ids, x = _data(50)
    store = UserStore(D, index="flat", use_gpu=True)
    store.add(ids, x)
    assert store.use_gpu and store._row_ids is None
    store.remove(["u0"])
    store.update(["u1"], x[2:3])
    assert store.n_tombstones == 2 and "u0" not in store.search(x[:1], k=49)[0][0]
    x[1] = x[2]
    np.testing.assert_array_equal(store.get(ids[1:]), x[1:])
    path = store.save(tmp_path / "s")  # compacts first: no forgotten vector reaches the disk
    assert store.n_tombstones == 0 and store._index.ntotal == 49
    on_gpu = UserStore.load(path, use_gpu=True)
    assert on_gpu.n_tombstones == 0
    _assert_same(store, on_gpu, x[:10])
    on_cpu = UserStore.load(path, use_gpu=False)
    assert on_cpu.n_tombstones == 0 and on_cpu._index.ntotal == 49
    _assert_same(store, on_cpu, x[:10])
    store.remove(ids[2:12])  # 10 tombstones > 20% of 49 -> rebuilt
    assert store.n_tombstones == 0 and store._index.ntotal == 39 and store._gpu_vectors.shape[0] == 39
    np.testing.assert_array_equal(store.get(ids[12:]), x[12:])


# ---------------------------------------------------------------------- threads
@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_searches_and_adds(kind):
    store, ids, x = _store(kind, n=50)
    errors = []

    def work(t):
        try:
            rng = np.random.default_rng(t)
            for j in range(25):
                store.add([f"t{t}-{j}"], rng.standard_normal((1, D)))
                found, _ = store.search(rng.standard_normal((2, D)), k=5)
                assert all(len(row) == 5 for row in found)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(store) == 50 + 4 * 25


# ---------------------------------------------------------------------- fingerprint
def test_model_fingerprint_differs_between_seeds_and_is_stable():
    import torch

    from plural.core.model import make_model

    def tiny(seed):
        torch.manual_seed(seed)
        return make_model("bradley_terry", hidden_dim=4).build(8, ["u"], ["i"])

    a, b = tiny(0), tiny(1)
    fp = model_fingerprint(a)
    assert len(fp) == 64 and fp == model_fingerprint(a)
    assert fp == model_fingerprint(tiny(0))
    assert fp != model_fingerprint(b)


def test_gpu_defaults_off_without_gpu_and_asking_for_one_names_the_gpu_route():
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        pytest.skip("a GPU is visible")
    assert UserStore(4).use_gpu is False
    with pytest.raises(ImportError, match="pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12"):
        UserStore(4, use_gpu=True)


# ---------------------------------------------------------------------- failed writes change nothing
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_meta", [{"n_comparisons": 2 ** 63}, {"n_comparisons": -1}, {"when": object()},
                                      {"score": float("nan")}, {3: "non-str key"}])
def test_a_refused_write_leaves_the_store_and_its_save_as_they_were(tmp_path, kind, bad_meta):
    store, ids, x = _store(kind, n=20)
    path = store.save(tmp_path / "s")
    before = UserStore.load(path)
    for call, who in ((store.add, ["new"]), (store.update, ["u1"]), (store.upsert, ["u2", "new"])):
        with pytest.raises(ValueError, match="metadata"):
            call(who, np.full((len(who), D), 5.0), [dict(bad_meta)] * len(who))
        assert "new" not in store and len(store) == 20
        _assert_same(before, store, x[:5])  # u1 and u2 keep their vectors
    assert store.check_consistency() is None
    store.save(path)
    _assert_same(before, UserStore.load(path), x[:5])


def test_save_refuses_an_inconsistent_store_and_keeps_the_good_save(tmp_path):
    store, ids, x = _store("flat", n=20)
    path = store.save(tmp_path / "s")
    store._int_of["ghost"] = 999  # as a bug or a half-applied write would leave it
    with pytest.raises(StoreError, match="inconsistent.*refusing to save"):
        store.save(path)
    assert len(UserStore.load(path)) == 20


def test_metadata_is_copied_in_and_out():
    store = UserStore(D)
    meta = {"tags": ["a"], "profile": {"age": 30}}
    store.add(["u"], np.ones(D), [meta])
    meta["tags"].append("changed by the caller")
    meta["profile"]["age"] = 99
    out = store.metadata("u")
    out["tags"].append("changed by a reader")
    out["profile"]["age"] = 1
    assert store.metadata("u")["tags"] == ["a"] and store.metadata("u")["profile"] == {"age": 30}
    store.update(["u"], np.ones(D), [{"n_comparisons": np.int64(3)}])
    assert store.metadata("u")["n_comparisons"] == 3 and store.metadata("u")["tags"] == ["a"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_removed_users_vector_is_not_in_the_saved_index(tmp_path, kind):
    store, ids, x = _store(kind, n=40)
    secret = np.full((1, D), 7.25, dtype=np.float32)
    store.add(["leaver"], secret)
    store.update(["u1"], np.zeros((1, D)))  # the overwritten vector must not survive either
    store.remove(["leaver"])
    path = store.save(tmp_path / "s")
    index = faiss.read_index(str(path / "index.faiss"))
    saved = index.reconstruct_n(0, index.ntotal)
    assert index.ntotal == 40
    assert not (saved == secret).all(axis=1).any()
    assert not (saved == x[1]).all(axis=1).any()
    _assert_same(store, UserStore.load(path), x[:5])


def test_load_checks_the_model_it_is_given(tmp_path):
    from plural.core.model import make_model

    model = make_model("low_rank", hidden_dim=8, n_components=D, item_dim=4).build(4, ["a", "b"], ["x", "y"])
    store = UserStore(D, model_fingerprint=model_fingerprint(model))
    store.add(["a"], np.ones(D))
    path = store.save(tmp_path / "s")
    assert len(UserStore.load(path, model=model)) == 1
    other = make_model("low_rank", hidden_dim=8, n_components=D, item_dim=4).build(4, ["a", "b"], ["x", "y"])
    with torch_no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(StoreError, match="belongs to another model"):
        UserStore.load(path, model=other)
    narrow = make_model("low_rank", hidden_dim=8, n_components=2, item_dim=4).build(4, ["a"], ["x", "y"])
    with pytest.raises(StoreError):
        UserStore.load(path, model=narrow)


def torch_no_grad():
    import torch

    return torch.no_grad()


@pytest.mark.parametrize("field, value", [("metric", "ip"), ("index", "hnsw")])
def test_a_manifest_contradicting_its_index_file_is_refused(tmp_path, field, value):
    store, _, _ = _store("flat", n=10)
    path = store.save(tmp_path / "s")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, field: value}))
    record_checksums(path)  # past the checksums: the contradiction itself must be caught
    with pytest.raises(StoreError, match="index.faiss is a flat index with metric l2, but"):
        UserStore.load(path)


# ---------------------------------------------------------------------- covariances
def _covs(n, seed=0):
    a = np.random.default_rng(seed).standard_normal((n, D, D)).astype(np.float32)
    return a @ np.swapaxes(a, 1, 2) / D + 0.1 * np.eye(D, dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_covariances_are_kept_with_their_vectors_and_saved(tmp_path, kind):
    ids, x = _data(30)
    covs = _covs(30)
    store = UserStore(D, index=kind)
    store.add(ids[:20], x[:20], covariances=covs[:20])
    store.add(ids[20:], x[20:])  # users without one
    store.update(["u1"], x[1])  # a new vector without a covariance forgets the old one
    store.upsert(["u2"], x[2], covariances=covs[29])
    store.remove(["u3"])
    got = store.get_covariance(["u0", "u1", "u2", "u25"])
    np.testing.assert_allclose(got[0], covs[0], rtol=1e-6)
    assert got[1] is None and got[3] is None
    np.testing.assert_allclose(got[2], covs[29], rtol=1e-6)
    got[0][0, 0] = 99.0  # a copy
    assert store.get_covariance("u0")[0][0, 0] != 99.0
    loaded = UserStore.load(store.save(tmp_path / "s"))
    for u in loaded.user_ids:
        a, b = store.get_covariance(u)[0], loaded.get_covariance(u)[0]
        assert (a is None and b is None) or np.array_equal(a, b)
    store.add(["u3"], x[3])
    assert store.get_covariance("u3") == [None]  # a removed user's covariance went with them


def test_bad_covariances_are_refused_and_change_nothing():
    store, ids, x = _store("flat", n=5)
    good = _covs(1)[0]
    skew = good.copy()
    skew[0, 1] += 1.0
    negative = -np.eye(D, dtype=np.float32)
    for bad, message in ((skew, "symmetric"), (negative, "positive semi-definite"),
                         (np.full((D, D), np.nan), "finite"), (np.eye(D + 1), "shape")):
        with pytest.raises(ValueError, match=message):
            store.update(["u1"], np.zeros(D), covariances=bad)
        np.testing.assert_array_equal(store.get(["u1"]), x[1:2])
    assert store.get_covariance("u1") == [None]


def test_a_version_2_save_without_covariances_still_loads(tmp_path):
    store, ids, x = _store("flat", n=10)
    path = store.save(tmp_path / "s")
    for name in ("covariances.npy", "covariance_rows.npy"):
        (path / name).unlink()
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    record_checksums(path)
    loaded = UserStore.load(path)
    _assert_same(store, loaded, x[:3])
    assert loaded.get_covariance("u0") == [None]


def test_the_store_takes_reads_and_writes_while_a_save_writes_its_files(tmp_path, monkeypatch):
    store, ids, x = _store("flat", n=20)
    real_write = faiss.write_index
    during = {}

    def slow_write(index, path):
        writer = threading.Thread(target=lambda: store.add(["during"], np.ones((1, D))))
        writer.start()
        writer.join(timeout=20)
        during["blocked"] = writer.is_alive()
        real_write(index, path)

    monkeypatch.setattr(faiss, "write_index", slow_write)
    path = store.save(tmp_path / "s")
    assert during == {"blocked": False} and "during" in store
    assert "during" not in UserStore.load(path)  # the save holds the store as it was when it began
