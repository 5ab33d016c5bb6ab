"""kill -9 loses no acknowledged comparison: a real server killed during a stream of writes from
several clients (state updated before the reply, or deferred), restarted on the same state
directory, serves every acknowledged comparison; and a deletion survives a crash before the next
snapshot."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest

httpx = pytest.importorskip("httpx")


def log_rows(state_dir) -> dict[str, list[int]]:
    conn = sqlite3.connect(f"file:{state_dir / 'feedback.sqlite'}?mode=ro", uri=True)
    try:
        out: dict[str, list[int]] = {}
        for user, seq in conn.execute("SELECT user_id, seq FROM comparisons ORDER BY seq"):
            out.setdefault(user, []).append(seq)
        return out
    finally:
        conn.close()


def test_kill9_during_writes_loses_no_acknowledged_comparison(start_server, tmp_path):
    state = tmp_path / "state"
    server = start_server(state_dir=state, snapshot_every=0.3)  # snapshots while the writes stream
    users = [f"w{k}" for k in range(6)]
    acked: dict[str, list[tuple[int, int]]] = {u: [] for u in users}
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []

    def client_loop(t: int) -> None:
        with server.client(timeout=10) as client:
            j = 0
            while not stop.is_set():
                user = users[(t + j) % len(users)]
                a, b = (3 * t + j) % 40, (3 * t + j + 1 + j % 5) % 40
                body = {"comparisons": [{"item_a": f"i{a}", "item_b": f"i{b}", "label": j % 2}] * (1 + j % 2),
                        "update": "deferred" if j % 3 == 1 else "now"}  # a deferred write is acknowledged too
                try:
                    r = client.post(f"/v1/users/{user}/comparisons", json=body)
                except httpx.TransportError:
                    return  # the server is gone: this write was never acknowledged
                if r.status_code != 200:
                    failures.append(r.text)
                    return
                with lock:
                    acked[user].append((r.json()["first_seq"], r.json()["last_seq"]))
                j += 1

    threads = [threading.Thread(target=client_loop, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    # a user deleted mid-stream must stay deleted
    with server.client() as c:
        assert c.post("/v1/users", json={"user_id": "gone", "comparisons": [
            {"item_a": "i1", "item_b": "i2", "label": 1}]}).status_code == 201
        time.sleep(0.8)
        assert c.delete("/v1/users/gone").status_code == 200
    deadline = time.monotonic() + 10
    while sum(len(v) for v in acked.values()) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill9()  # mid-stream: requests are in flight
    stop.set()
    for th in threads:
        th.join(30)
    assert not failures, failures[:3]

    snapshot = json.loads((state / "snapshots" / "snapshot.json").read_text())
    rows = log_rows(state)
    n_acked = sum(last - first + 1 for v in acked.values() for first, last in v)
    assert n_acked >= 150
    assert snapshot["last_seq"] > 0  # a snapshot was taken mid-stream, so the restart replays after it
    assert "gone" not in rows
    for user in users:
        logged = set(rows.get(user, []))
        for first, last in acked[user]:
            assert set(range(first, last + 1)) <= logged, (user, first, last)
    assert max(s for v in rows.values() for s in v) > snapshot["last_seq"]  # some rows only in the log

    restarted = start_server(state_dir=state, snapshot_every=30)
    with restarted.client() as c:
        for user in users:
            got = c.get(f"/v1/users/{user}").json()
            assert got["in_store"] and got["n_comparisons"] == got["n_logged"] == len(rows[user]), (user, got)
        assert c.get("/v1/users/gone").status_code == 404
        assert c.get("/v1/metrics").json()["log"]["last_seq"] == max(s for v in rows.values() for s in v)
        # and it keeps going
        r = c.post("/v1/users/w0/comparisons", json={"comparisons": [{"item_a": "i1", "item_b": "i3", "label": 1}]})
        assert r.status_code == 200 and r.json()["n_comparisons"] == len(rows["w0"]) + 1
    assert restarted.stop() in (0, -15)  # SIGTERM: a graceful stop (uvicorn re-raises the signal it caught)
    final = json.loads((state / "snapshots" / "snapshot.json").read_text())
    assert final["last_seq"] == r.json()["last_seq"]  # the shutdown snapshot holds everything


def test_a_deletion_survives_a_crash_before_the_next_snapshot(tiny_run, tmp_path, cache_dir, monkeypatch):
    """Delete acknowledged, then the process dies before any snapshot without the user is written:
    the restart loads the older snapshot (which still holds them) and removes them again."""
    import os

    from apps.server import library
    from apps.server.service import Service
    from plural import UserStore

    monkeypatch.setenv("PLURAL_CACHE_DIR", str(cache_dir))
    run = library.load_run(tiny_run)
    state = tmp_path / "state"
    svc = Service(tiny_run, state, run=run)
    svc.start(background=False)
    comparison = SimpleNamespace(item_a="i1", item_b="i2", text_a=None, text_b=None, label=1.0, weight=1.0,
                                 context=None)

    async def scenario():
        await svc.add_comparisons("victim", [comparison])
        await svc.add_comparisons("keeper", [comparison, comparison])
        await asyncio.to_thread(svc.snapshot)  # the snapshot on disk holds the victim
        svc.snapshot = lambda: None  # the process "dies" before the deletion's snapshot
        await svc.delete_user("victim")
        await svc.add_comparisons("keeper", [comparison])

    asyncio.run(scenario())
    assert "victim" in UserStore.load(state / "snapshots" / "store")
    # simulate kill -9: no final snapshot, no graceful close of the store
    svc._stop.set()
    svc._wake.set()
    svc.log.close()
    os.close(svc._lock_fd)

    again = Service(tiny_run, state, run=run)
    again.start(background=False)
    try:
        assert "victim" not in again.store
        assert again.user_state("keeper")["n_comparisons"] == 3
        assert again.log.count("victim") == 0
        again.snapshot()
        assert "victim" not in UserStore.load(state / "snapshots" / "store")
    finally:
        again.close()
