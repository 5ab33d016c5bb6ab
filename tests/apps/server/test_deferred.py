"""Deferred writes (``"update": "deferred"``): committed and answered before the state is
recomputed, folded into one recomputation per user, never lost, never resurrecting a deleted
user; a real server over HTTP, and the service in process for exact states."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from tests.apps.server.test_server import comparisons, rows_in_log  # noqa: E402


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


def deferred(*pairs, label=1):
    return {**comparisons(*pairs, label=label), "update": "deferred"}


def settled(http, user_id: str, timeout: float = 20.0) -> dict:
    """The user's state once no deferred write of theirs is pending."""
    deadline = time.monotonic() + timeout
    while True:
        got = http.get(f"/v1/users/{user_id}")
        if got.status_code == 200 and not got.json()["pending"] and got.json()["in_store"]:
            return got.json()
        assert time.monotonic() < deadline, got.text
        time.sleep(0.02)


def test_a_deferred_write_is_committed_before_the_reply_and_applied_after(server, http):
    first = http.post("/v1/users/d-alice/comparisons", json=deferred(("i1", "i2")))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["pending"] is True and body["state"] is None and body["created"] is True
    assert body["accepted"] == 1 and body["n_comparisons"] == 1
    assert rows_in_log(server, "d-alice") == 1  # durable when answered
    more = [http.post("/v1/users/d-alice/comparisons", json=deferred((f"i{k}", f"i{k + 1}"), label=k % 2))
            for k in range(3, 9)]
    assert [r.json()["n_comparisons"] for r in more] == list(range(2, 8))
    assert not any(r.json()["created"] for r in more)
    assert rows_in_log(server, "d-alice") == 7
    state = settled(http, "d-alice")
    assert state["n_comparisons"] == state["n_logged"] == 7 and state["pending"] == 0
    assert state["vector"] is not None and state["total_sd"] > 0
    summary = http.get("/v1/metrics").json()["deferred"]
    assert summary["users_pending"] == 0 and summary["failures"] == 0
    assert summary["writes_applied"] >= 7 and 1 <= summary["updates"] <= summary["writes_applied"]
    assert http.get("/v1/metrics").json()["log"]["in_flight"] == 0  # nothing holds the watermark back
    # a deferred user is scored, ranked and recommended for like any other
    r = http.post("/v1/recommend", json={"user_id": "d-alice", "n": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3


def test_a_now_write_after_deferred_ones_counts_them(http):
    assert http.post("/v1/users/d-bob/comparisons", json=deferred(("i1", "i5"), ("i2", "i5"))).status_code == 200
    now = http.post("/v1/users/d-bob/comparisons", json=comparisons(("i3", "i5")))
    assert now.status_code == 200 and now.json()["pending"] is False
    assert now.json()["n_comparisons"] == 3 and now.json()["state"]["n_comparisons"] == 3
    state = settled(http, "d-bob")
    assert state["n_comparisons"] == state["n_logged"] == 3


def test_deleting_a_user_with_pending_writes(http):
    for k in range(5):
        assert http.post("/v1/users/d-gone/comparisons", json=deferred((f"i{k}", f"i{k + 10}"))).status_code == 200
    r = http.delete("/v1/users/d-gone")
    assert r.status_code == 200 and r.json()["removed_comparisons"] == 5
    time.sleep(0.3)  # the updater had its chance to bring them back
    assert http.get("/v1/users/d-gone").status_code == 404
    assert http.get("/v1/metrics").json()["log"]["in_flight"] == 0


def test_a_retried_deferred_write_counts_once(server, http):
    key = {"Idempotency-Key": "deferred-retry-1"}
    replies = [http.post("/v1/users/d-idem/comparisons", json=deferred(("i4", "i7")), headers=key) for _ in range(3)]
    assert [r.json()["replayed"] for r in replies] == [False, True, True]
    assert all(r.json()["pending"] for r in replies)
    assert rows_in_log(server, "d-idem") == 1
    assert settled(http, "d-idem")["n_comparisons"] == 1


def test_bad_update_mode(http):
    r = http.post("/v1/users/d-bad/comparisons", json={**comparisons(("i1", "i2")), "update": "later"})
    assert r.status_code == 422 and "update" in r.text
    assert http.get("/v1/users/d-bad").status_code == 404


def test_deferred_state_equals_the_state_of_the_whole_history(tiny_run, tmp_path, cache_dir, monkeypatch):
    """In process: after the updater ran, the stored state is exactly personalize over the user's
    logged history (what a write with update "now" computes), and nothing is left in flight."""
    from apps.server import library, schemas
    from apps.server.service import Service

    monkeypatch.setenv("PLURAL_CACHE_DIR", str(cache_dir))
    svc = Service(tiny_run, tmp_path / "state")
    svc.start(background=False)
    try:
        pairs = [("i1", "i2", 1), ("i3", "i4", 0), ("i5", "i9", 1), ("i2", "i7", 0), ("i8", "i3", 1)]

        async def stream() -> list[dict]:
            replies = []
            for a, b, y in pairs:  # not awaited one by one: several land before the updater runs
                replies.append(svc.add_comparisons("carol", [schemas.ComparisonIn(item_a=a, item_b=b, label=y)],
                                                   deferred=True))
            out = await asyncio.gather(*replies)
            assert await svc.drain(30)
            return out

        replies = asyncio.run(stream())
        assert sorted(r["n_comparisons"] for r in replies) == [1, 2, 3, 4, 5]
        assert svc.log.n_in_flight == 0 and svc.n_deferred == 0
        # the four later writes queued on carol's lock before the updater did: one recomputation for all
        assert svc.deferred_stats["writes_applied"] == 5 and svc.deferred_stats["updates"] == 1
        stored = library.stored_state(svc.store, "carol")
        assert svc.store.metadata("carol")["n_comparisons"] == 5
        svc.store.remove(["carol"])  # the store as the updater saw it
        expected, n, _ = svc._compute("carol", svc.log.history("carol"), [])
        assert n == 5
        np.testing.assert_array_equal(stored.vector.numpy(), expected.vector.numpy())
        np.testing.assert_array_equal(stored.covariance.numpy(), expected.covariance.numpy())
    finally:
        svc.close()
