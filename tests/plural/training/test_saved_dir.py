"""Tests for plural.training.saved_dir through its two users, UserStore.save/load and save_model/load_model:
nothing lost on a crash, nothing foreign deleted, nothing altered served."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plural.training import saved_dir
from plural.training.checkpoint import CheckpointError, load_model, save_model
from plural.core.model import make_model
from plural.query.store import StoreError, UserStore

D = 8
REPO = Path(__file__).resolve().parents[3]


def _store(n=20, kind="flat", seed=0, version=0):
    rng = np.random.default_rng(seed)
    store = UserStore(D, index=kind, model_fingerprint="fp")
    store.add([f"u{i}" for i in range(n)], rng.standard_normal((n, D)),
              [{"version": version, "n_comparisons": i} for i in range(n)])
    return store


def _model(seed=0):
    torch.manual_seed(seed)
    return make_model("low_rank", hidden_dim=8, n_components=2, item_dim=4).build(
        D, ["ann", "007", "7"], ["x", "y", "z"], user_counts=[3, 1, 2])


def _same_store(a: UserStore, b: UserStore) -> bool:
    return (a.user_ids == b.user_ids and np.array_equal(a.get(a.user_ids), b.get(b.user_ids))
            and [a.metadata(u) for u in a.user_ids] == [b.metadata(u) for u in b.user_ids]
            and (a.dim, a.metric, a.index_kind, a.model_fingerprint, a.created_at, a.updated_at)
            == (b.dim, b.metric, b.index_kind, b.model_fingerprint, b.created_at, b.updated_at))


def _same_model(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return (a.name == b.name and a.config == b.config and sa.keys() == sb.keys()
            and all(torch.equal(sa[k], sb[k]) for k in sa)
            and (a.user_ids_, a.item_ids_, a.context_ids_, a.user_counts_, a.user_contexts_)
            == (b.user_ids_, b.item_ids_, b.context_ids_, b.user_counts_, b.user_contexts_)
            and getattr(a, "fit_report_", None) == getattr(b, "fit_report_", None))


SAVES = {
    "store": (lambda: _store(), lambda obj, path, **kw: obj.save(path, **kw), UserStore.load, StoreError),
    "checkpoint": (lambda: _model(), lambda obj, path, **kw: save_model(obj, path, **kw), load_model,
                   CheckpointError),
}


# ---------------------------------------------------------------------- a save deletes only its own files
@pytest.mark.parametrize("kind", SAVES)
def test_save_never_replaces_a_directory_of_other_files(tmp_path, kind):
    make, save, load, _ = SAVES[kind]
    obj = make()
    target = tmp_path / "target"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="thesis.tex.*overwrite=True"):
        save(obj, target)
    assert (target / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path)) == ["target"]  # no temporary left behind
    file = tmp_path / "a_file"
    file.write_text("data")
    with pytest.raises(FileExistsError, match="not a directory"):
        save(obj, file)
    assert file.read_text() == "data"
    save(obj, target, overwrite=True)  # forced: the directory becomes the save
    assert not (target / "thesis.tex").exists() and load(target) is not None


@pytest.mark.parametrize("kind", SAVES)
def test_a_save_of_ours_with_a_users_file_inside_is_not_replaced(tmp_path, kind):
    make, save, load, _ = SAVES[kind]
    obj = make()
    path = save(obj, tmp_path / "s")
    save(obj, path)  # an earlier save of the same kind is replaced
    (path / "my_notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="my_notes.txt"):
        save(obj, path)
    assert (path / "my_notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    save(obj, empty)  # an empty directory holds nothing to lose
    load(empty)


def test_a_store_is_not_saved_over_a_checkpoint_or_the_reverse(tmp_path):
    save_model(_model(), tmp_path / "m")
    with pytest.raises(FileExistsError):
        _store().save(tmp_path / "m")
    _store().save(tmp_path / "s")
    with pytest.raises(FileExistsError):
        save_model(_model(), tmp_path / "s")
    load_model(tmp_path / "m")
    UserStore.load(tmp_path / "s")


# ---------------------------------------------------------------------- durability
@pytest.mark.parametrize("kind", SAVES)
def test_files_and_the_parent_directory_are_fsynced(tmp_path, kind, monkeypatch):
    make, save, _, _ = SAVES[kind]
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save(make(), tmp_path / "s")
    names = {Path(p).name for p in synced}
    assert set(os.listdir(path)) <= names  # every file written, checksums included
    assert str(tmp_path) in synced  # the parent, after the rename


def test_a_crash_between_the_renames_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    first = _model(seed=0)
    save_model(first, tmp_path / "m")
    real_replace = os.replace
    calls = []

    def crash_after_moving_aside(src, dst):
        calls.append(dst)
        if len(calls) >= 2:  # the old checkpoint is aside; the new one never arrives
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_moving_aside)
    with pytest.raises(OSError, match="power cut"):
        save_model(_model(seed=1), tmp_path / "m")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "m").exists()
    assert _same_model(first, load_model(tmp_path / "m"))
    second = _model(seed=1)
    save_model(second, tmp_path / "m")  # the next save recovers
    assert _same_model(second, load_model(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path)) == ["m"]


@pytest.mark.parametrize("kind", SAVES)
@pytest.mark.parametrize("then", ["save", "load"])
def test_temporaries_of_killed_saves_are_cleaned_up(tmp_path, kind, then):
    make, save, load, _ = SAVES[kind]
    obj = make()
    path = save(obj, tmp_path / "s")
    for junk in (".s.tmp.dead1", ".s.tmp.dead2"):
        (tmp_path / junk).mkdir()
        (tmp_path / junk / "index.faiss").write_bytes(b"half")
    (tmp_path / ".other.tmp.x").mkdir()  # another save's: not ours to clean
    save(obj, path) if then == "save" else load(path)
    assert sorted(os.listdir(tmp_path)) == [".other.tmp.x", "s"]


# ---------------------------------------------------------------------- two processes
# Another process taking a save's lock as plural does (flock on the parent directory), without
# importing plural, so the test does not wait for torch to import.
_LOCK_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(path), str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("kind", SAVES)
def test_a_load_waits_for_another_process_saving(tmp_path, kind):
    make, save, load, error = SAVES[kind]
    obj = make()
    path = save(obj, tmp_path / "s")
    proc = _hold_lock(path, 1.0)
    start = time.monotonic()
    loaded = load(path)
    waited = time.monotonic() - start
    proc.wait(timeout=30)
    assert waited > 0.5 and loaded is not None
    proc = _hold_lock(path, 5.0)
    try:
        with pytest.raises(error, match="another process"):
            with saved_dir.locked(path, exclusive=False, error=error, timeout=0.2):
                pass
        with pytest.raises(error, match="another process"):
            with saved_dir.locked(path, exclusive=True, error=error, timeout=0.2):
                pass
    finally:
        proc.kill()
        proc.wait(timeout=30)


_SAVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from plural.query.store import UserStore
    path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    stop = time.monotonic() + float(sys.argv[4]) if len(sys.argv) > 4 else float("inf")
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0  # flock is not fair: let readers in
    for version in range(start, start + count):
        if time.monotonic() > stop:
            break
        rng = np.random.default_rng(version)
        n = 5 + version % 7
        store = UserStore(8, index="hnsw" if version % 2 else "flat")
        store.add([f"u{i}" for i in range(n)], rng.standard_normal((n, 8)), [{"version": version}] * n)
        store.save(path)
        print(version, flush=True)
        time.sleep(pause)
""")


def _version(version: int) -> UserStore:
    rng = np.random.default_rng(version)
    n = 5 + version % 7
    store = UserStore(8, index="hnsw" if version % 2 else "flat")
    store.add([f"u{i}" for i in range(n)], rng.standard_normal((n, 8)), [{"version": version}] * n)
    return store


def _matches_version(loaded: UserStore, version: int) -> bool:
    want = _version(version)
    return (loaded.user_ids == want.user_ids and np.array_equal(loaded.get(want.user_ids), want.get(want.user_ids))
            and all(loaded.metadata(u)["version"] == version for u in want.user_ids))


def test_concurrent_saves_and_loads_in_two_processes(tmp_path):
    path = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), "0", "100000", "3", "0.01"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "0"
    seen = set()
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        store = UserStore.load(path)  # never a FileNotFoundError or a half-written directory
        version = store.metadata("u0")["version"]
        assert _matches_version(store, version)
        seen.add(version)
    proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert len(seen) >= 2


# ---------------------------------------------------------------------- kill -9 while saving
def test_sigkill_at_random_moments_leaves_the_last_or_the_new_version(tmp_path):
    rng = np.random.default_rng(12)
    path = tmp_path / "s"
    last = -1
    outcomes = {"last": 0, "new": 0}
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), str(last + 1), "1000"], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline().strip()  # the interpreter and FAISS are up: one save is done
        assert first == str(last + 1), first
        last = int(first)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().split()
        proc.wait(timeout=30)
        if rest:
            last = int(rest[-1])  # acknowledged before the kill
        loaded = UserStore.load(path)
        if _matches_version(loaded, last):
            outcomes["last"] += 1
        else:  # the kill fell after the swap, before the acknowledgement
            assert _matches_version(loaded, last + 1), f"attempt {attempt}: neither version {last} nor {last + 1}"
            outcomes["new"] += 1
            last += 1
    print("kill outcomes:", outcomes)
    leftovers = [p for p in os.listdir(tmp_path) if p != "s" and not p.startswith(".s.")]
    assert leftovers == []


# ---------------------------------------------------------------------- corruption
def _corruptions(data: bytes, rng: np.random.Generator, n_flips: int):
    """``(description, bytes)``: single-bit flips at random offsets, and truncations."""
    for _ in range(n_flips):
        if not data:
            break
        pos = int(rng.integers(len(data)))
        bit = 1 << int(rng.integers(8))
        yield f"flip bit {bit} at {pos}", data[:pos] + bytes([data[pos] ^ bit]) + data[pos + 1:]
    for cut in sorted({0, len(data) // 2, max(len(data) - 1, 0), int(rng.integers(len(data) + 1))}):
        if cut < len(data):
            yield f"truncate to {cut}", data[:cut]


def _corruption_counts(save_dir: Path, load, same, error, rng, n_flips):
    counts = {"refused": 0, "identical": 0}
    original = load(save_dir)
    for file in sorted(save_dir.iterdir()):
        good = file.read_bytes()
        for what, bad in _corruptions(good, rng, n_flips):
            file.write_bytes(bad)
            try:
                loaded = load(save_dir)
            except error:
                counts["refused"] += 1
            else:
                assert same(original, loaded), f"{file.name}: {what} loaded different content"
                counts["identical"] += 1
            finally:
                file.write_bytes(good)
    return counts


def test_every_flipped_or_truncated_file_is_refused_or_loads_identical(tmp_path, caplog):
    rng = np.random.default_rng(2026)
    results = {}
    for kind in ("flat", "hnsw"):
        store = _store(n=30, kind=kind)
        store.remove(["u3"])
        path = store.save(tmp_path / kind)
        results[kind] = _corruption_counts(path, UserStore.load, _same_store, StoreError, rng, n_flips=12)
    path = save_model(_model(), tmp_path / "model")
    results["checkpoint"] = _corruption_counts(path, load_model, _same_model, CheckpointError, rng, n_flips=12)
    print("corruption cases:", json.dumps(results))
    for kind, counts in results.items():
        assert counts["refused"] >= 50, (kind, counts)


# ---------------------------------------------------------------------- older saves
def test_a_save_without_checksums_loads_with_a_warning(tmp_path, caplog):
    store = _store()
    path = store.save(tmp_path / "s")
    (path / saved_dir.CHECKSUMS).unlink()  # as written by a release before checksums
    with caplog.at_level(logging.WARNING):
        assert _same_store(store, UserStore.load(path))
    assert "no checksums" in caplog.text
    store.save(path)  # and it is recognised as a store, so saving over it is allowed
    assert (path / saved_dir.CHECKSUMS).is_file()
