"""The HTTP service end to end: a real server (a subprocess on a loopback port, a bearer token
set) over a tiny low_rank run, every route, every bad input, auth, idempotency, deletion,
concurrent writers; and, in process, a catalog whose features are not text embeddings."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

TOKEN = "s3cret-test-token-5f3a9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(token=TOKEN)


@pytest.fixture(scope="module")
def trained(tiny_run) -> list[str]:
    """The run's training users (in the store from the start)."""
    return json.loads((tiny_run / "vocab.json").read_text())["user_ids"]


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


def rows_in_log(server, user_id: str | None = None) -> int:
    conn = sqlite3.connect(f"file:{server.state_dir / 'feedback.sqlite'}?mode=ro", uri=True)
    try:
        if user_id is None:
            return conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]
        return conn.execute("SELECT COUNT(*) FROM comparisons WHERE user_id = ?", (user_id,)).fetchone()[0]
    finally:
        conn.close()


def comparisons(*pairs, label=1):
    return {"comparisons": [{"item_a": a, "item_b": b, "label": label} for a, b in pairs]}


def detail(r) -> str:
    return json.dumps(r.json()["detail"])


# ---------------------------------------------------------------------- operations
def test_health_ready_info_openapi(http):
    assert http.get("/v1/health").json() == {"status": "ok"}
    ready = http.get("/v1/ready")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["model"] == "low_rank"
    info = http.get("/v1/info").json()
    assert info["texts_supported"] and info["has_user_vectors"] and info["auth_required_for_writes"]
    assert info["limits"]["max_candidates"] == 1000 and info["n_items"] == 40
    assert info["log"]["synchronous"] == "FULL"
    schema = http.get("/openapi.json").json()
    for path in ("/v1/users", "/v1/users/{user_id}/comparisons", "/v1/users/{user_id}", "/v1/users/{user_id}/next",
                 "/v1/score", "/v1/rank", "/v1/recommend", "/v1/batch/score", "/v1/batch/rank",
                 "/v1/batch/recommend", "/v1/map", "/v1/items", "/v1/metrics"):
        assert path in schema["paths"], path
    items = http.get("/v1/items", params={"limit": 5}).json()
    assert items["total"] == 40 and [i["item_id"] for i in items["items"]] == ["i0", "i1", "i2", "i3", "i4"]
    assert items["items"][0]["text"].startswith("a short note about cats")


def test_run_directory_gains_no_files(server, tiny_run):
    assert sorted(p.name for p in tiny_run.iterdir()) == ["checksums.json", "config.json", "run.json", "split.npz",
                                                          "vocab.json", "weights.safetensors"]
    assert server.state_dir != tiny_run and (server.state_dir / "feedback.sqlite").is_file()


# ---------------------------------------------------------------------- auth
def test_writes_need_the_token_reads_do_not(server, http, trained):
    body = {"user_id": "auth-user", **comparisons(("i1", "i2"))}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        r = http.post("/v1/users", json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    assert http.post("/v1/users/auth-user/comparisons", json=comparisons(("i1", "i2"))).status_code == 401
    assert http.delete(f"/v1/users/{trained[0]}").status_code == 401
    assert rows_in_log(server, "auth-user") == 0 and http.get("/v1/users/" + trained[0]).json()["user_id"] == trained[0]
    r = http.post("/v1/users", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert http.get("/v1/users/auth-user").status_code == 200  # reads are open
    assert http.post("/v1/score", json={"user_id": "auth-user", "item_ids": ["i1"]}).status_code == 200


# ---------------------------------------------------------------------- users
def test_create_user_then_add_item_and_text_comparisons(server, http, trained):
    r = http.post("/v1/users", json={"user_id": "alice", **comparisons(("i0", "i2"), ("i5", "i7"))}, headers=AUTH)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["created"] and out["accepted"] == 2 and out["n_comparisons"] == 2 and not out["replayed"]
    assert out["last_seq"] - out["first_seq"] == 1
    state = out["state"]
    assert state["in_store"] and len(state["vector"]) == 2 and len(state["covariance_diagonal"]) == 2
    assert state["total_sd"] > 0
    assert http.post("/v1/users", json={"user_id": "alice", **comparisons(("i0", "i3"))},
                     headers=AUTH).status_code == 409
    assert http.post("/v1/users", json={"user_id": trained[0], **comparisons(("i0", "i3"))},
                     headers=AUTH).status_code == 409  # a training user exists already

    r = http.post("/v1/users/alice/comparisons", headers=AUTH, json={"comparisons": [
        {"text_a": "a short note about cats, number 0", "item_b": "i1", "label": 0},
        {"text_a": "a brand new text about dogs", "text_b": "another new text, about space", "label": 0.5,
         "weight": 2.0, "context": "some-topic"}]})
    assert r.status_code == 200, r.text
    assert not r.json()["created"] and r.json()["n_comparisons"] == 4
    got = http.get("/v1/users/alice").json()
    assert got["n_comparisons"] == 4 and got["n_logged"] == 4 and got["in_store"]
    assert got["vector"] == pytest.approx(r.json()["state"]["vector"])
    assert rows_in_log(server, "alice") == 4


def test_training_user_gets_online_updates_on_top_of_training(http, trained):
    user = trained[1]
    before = http.get(f"/v1/users/{user}").json()
    assert before["in_store"] and before["n_logged"] == 0 and before["n_comparisons"] > 0
    assert before["covariance_diagonal"] is None  # training vectors come without a covariance
    r = http.post(f"/v1/users/{user}/comparisons", json=comparisons(("i3", "i8")), headers=AUTH)
    assert r.status_code == 200, r.text
    after = http.get(f"/v1/users/{user}").json()
    assert after["n_comparisons"] == before["n_comparisons"] + 1 and after["n_logged"] == 1
    assert after["covariance_diagonal"] is not None and after["vector"] != before["vector"]


def test_user_ids_with_slashes(http):
    r = http.post("/v1/users/conv1/p7/comparisons", json=comparisons(("i1", "i2")), headers=AUTH)
    assert r.status_code == 200 and r.json()["user_id"] == "conv1/p7", r.text
    assert http.get("/v1/users/conv1/p7").json()["n_logged"] == 1
    assert http.get("/v1/users/conv1%2Fp7").json()["user_id"] == "conv1/p7"
    assert http.get("/v1/users/conv1/p7/next").json()["user_id"] == "conv1/p7"
    assert http.delete("/v1/users/conv1/p7", headers=AUTH).json()["removed_comparisons"] == 1


def test_unknown_user_is_404(http, trained):
    assert http.get("/v1/users/nobody").status_code == 404
    assert "unknown user 'nobody'" in detail(http.post("/v1/score", json={"user_id": "nobody", "item_ids": ["i1"]}))
    assert http.post("/v1/rank", json={"user_id": "nobody", "candidates": ["i1"]}).status_code == 404
    assert http.post("/v1/recommend", json={"user_id": "nobody"}).status_code == 404
    assert http.post("/v1/batch/score", json={"user_ids": [trained[0], "nobody"], "item_ids": ["i1"]}).status_code == 404
    assert http.get("/v1/map", params={"user_id": "nobody"}).status_code == 404
    assert http.delete("/v1/users/nobody", headers=AUTH).status_code == 404


# ---------------------------------------------------------------------- idempotency
def test_idempotency_key_counts_a_retry_once(server, http):
    body = {"user_id": "idem", **comparisons(("i1", "i4"))}
    first = http.post("/v1/users", json=body, headers={**AUTH, "Idempotency-Key": "create-idem-1"})
    assert first.status_code == 201
    again = http.post("/v1/users", json=body, headers={**AUTH, "Idempotency-Key": "create-idem-1"})
    assert again.status_code == 201 and again.json()["replayed"]
    assert {**again.json(), "replayed": False} == first.json()

    add = comparisons(("i2", "i9"), ("i3", "i9"))
    key = {**AUTH, "Idempotency-Key": "add-idem-1"}
    replies = [http.post("/v1/users/idem/comparisons", json=add, headers=key) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert [r.json()["replayed"] for r in replies] == [False, True, True]
    assert len({(r.json()["first_seq"], r.json()["last_seq"]) for r in replies}) == 1
    assert rows_in_log(server, "idem") == 3 and http.get("/v1/users/idem").json()["n_comparisons"] == 3

    other = http.post("/v1/users/idem/comparisons", json=comparisons(("i2", "i8")), headers=key)
    assert other.status_code == 422 and "already used for another request" in detail(other)
    elsewhere = http.post("/v1/users/alice/comparisons", json=add, headers=key)
    assert elsewhere.status_code == 422
    bad_key = http.post("/v1/users/idem/comparisons", json=add, headers={**AUTH, "Idempotency-Key": "x" * 200})
    assert bad_key.status_code == 422 and "Idempotency-Key" in detail(bad_key)
    assert rows_in_log(server, "idem") == 3


# ---------------------------------------------------------------------- scoring
def test_score_rank_recommend(http):
    population = http.post("/v1/score", json={"item_ids": ["i1", "i2", "i1"], "texts": ["a note about music"]})
    assert population.status_code == 200, population.text
    scores = population.json()["scores"]
    assert population.json()["user_id"] is None and len(scores) == 4
    assert scores[0]["item_id"] == "i1" and scores[0]["score"] == scores[2]["score"]
    assert scores[3]["text"] == "a note about music"

    user = http.post("/v1/score", json={"user_id": "alice", "item_ids": ["i1", "i2"]}).json()["scores"]
    ranked = http.post("/v1/rank", json={"user_id": "alice", "candidates": ["i1", "i2", "i2"]}).json()["ranked"]
    assert [r["item_id"] for r in ranked] == [s["item_id"] for s in sorted(user, key=lambda s: -s["score"])]
    assert len(ranked) == 2  # a repeated candidate is ranked once

    judged = {"i0", "i1", "i2", "i5", "i7"}
    recs = http.post("/v1/recommend", json={"user_id": "alice", "n": 40}).json()["items"]
    assert not judged & {r["item_id"] for r in recs} and len(recs) == 40 - len(judged)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    assert recs[0]["text"].startswith("a short note about")
    every = http.post("/v1/recommend", json={"user_id": "alice", "n": 40, "exclude_judged": False}).json()["items"]
    assert len(every) == 40
    some = http.post("/v1/recommend", json={"user_id": "alice", "n": 2, "candidates": ["i3", "i4", "i6"],
                                            "exclude": ["i4"]}).json()["items"]
    assert {r["item_id"] for r in some} <= {"i3", "i6"} and len(some) == 2
    top = http.post("/v1/recommend", json={}).json()
    assert top["user_id"] is None and len(top["items"]) == 10


def test_batch_routes(http, trained):
    users = ["alice", None, trained[0]]
    scores = http.post("/v1/batch/score", json={"user_ids": users, "item_ids": ["i1", "i2"], "texts": ["x y z"]})
    assert scores.status_code == 200, scores.text
    results = scores.json()["results"]
    assert [r["user_id"] for r in results] == users and all(len(r["scores"]) == 3 for r in results)
    single = http.post("/v1/score", json={"user_id": trained[0], "item_ids": ["i1", "i2"]}).json()["scores"]
    assert [s["score"] for s in results[2]["scores"][:2]] == pytest.approx([s["score"] for s in single])
    ranks = http.post("/v1/batch/rank", json={"user_ids": users, "candidates": ["i3", "i1"]}).json()["results"]
    assert all(len(r["ranked"]) == 2 for r in ranks)
    recs = http.post("/v1/batch/recommend", json={"user_ids": users, "n": 3}).json()["results"]
    assert [len(r["items"]) for r in recs] == [3, 3, 3]
    single_rec = http.post("/v1/recommend", json={"user_id": "alice", "n": 3}).json()["items"]
    assert recs[0]["items"] == single_rec


# ---------------------------------------------------------------------- active questioning and the map
def test_next_question(http):
    new = http.get("/v1/users/newcomer/next")
    assert new.status_code == 200, new.text
    q = new.json()
    assert q["n_comparisons"] == 0 and q["strategy"] == "eig" and q["pool_size"] == 100
    assert q["item_a"]["item_id"] != q["item_b"]["item_id"] and q["item_a"]["text"]
    assert http.get("/v1/users/newcomer/next").json() == q  # seeded: the same question until answered
    asked = http.get("/v1/users/alice/next", params={"pool": 20, "strategy": "entropy"}).json()
    assert asked["pool_size"] == 20 and asked["n_comparisons"] == 4
    pair = {asked["item_a"]["item_id"], asked["item_b"]["item_id"]}
    assert pair not in ({"i0", "i2"}, {"i5", "i7"})  # never a pair already compared
    assert http.get("/v1/users/alice/next", params={"strategy": "random"}).json()["score"] is None
    assert http.get("/v1/users/alice/next", params={"strategy": "oracle"}).status_code == 422
    assert http.get("/v1/users/alice/next", params={"pool": 100_000}).status_code == 422


def test_map_of_stored_users(http):
    m = http.get("/v1/map", params={"user_id": "alice", "limit": 10}).json()
    assert m["n_users"] >= 32 and len(m["points"]) == 10 and all(len(p) == 2 for p in m["points"])
    assert set(m["user"]) == {"x", "y"} and len(m["explained_variance_ratio"]) == 2
    assert http.get("/v1/map").json()["user"] is None


# ---------------------------------------------------------------------- bad input: a 4xx naming the problem
@pytest.mark.parametrize("body, status, words", [
    (comparisons(("i1", "nope")), 422, "unknown item ids in comparisons: 'nope'"),
    ({"comparisons": []}, 422, "at least 1"),
    (comparisons(("i1", "i2"), label=2), 422, "label must be 1 (a preferred), 0 (b preferred) or 0.5"),
    (comparisons(("i1", "i2"), label="yes"), 422, "label"),
    (comparisons(("i1", "i1")), 422, "compared with itself"),
    ({"comparisons": [{"item_a": "i1", "text_a": "t", "item_b": "i2", "label": 1}]}, 422, "exactly one of item_a or text_a"),
    ({"comparisons": [{"item_b": "i2", "label": 1}]}, 422, "exactly one of item_a or text_a"),
    ({"comparisons": [{"item_a": "i1", "item_b": "i2", "label": 1, "weight": -1}]}, 422, "weight"),
    ({"comparisons": [{"item_a": "i1", "item_b": "i2", "label": 1, "evil": "__import__('os')"}]}, 422, "Extra inputs"),
    ({"comparisons": [{"item_a": "i\x01", "item_b": "i2", "label": 1}]}, 422, "control characters"),
    ({"comparisons": [{"item_a": "i" * 129, "item_b": "i2", "label": 1}]}, 422, "the limit is 128"),
    ({"comparisons": [{"text_a": "x" * 2001, "item_b": "i2", "label": 1}]}, 422, "the limit is 2000"),
    ({"comparisons": [{"text_a": f"t{i}", "text_b": f"s{i}", "label": 1} for i in range(33)]}, 422, "the limit is 64"),
    ({"comparisons": [{"item_a": "i1", "item_b": "i2", "label": 1}] * 101}, 422, "at most 100"),
    ({}, 422, "comparisons"),
])
def test_bad_comparisons(server, http, body, status, words):
    before = rows_in_log(server)
    r = http.post("/v1/users/bad-input/comparisons", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert words in detail(r), r.text
    assert rows_in_log(server) == before


def test_bad_reads_and_ids(http):
    cases = [
        ("/v1/score", {"user_id": "alice"}, "give a non-empty list of item_ids or texts"),
        ("/v1/score", {"item_ids": []}, "give a non-empty list"),
        ("/v1/score", {"item_ids": ["i1", "zzz"]}, "unknown item ids in item_ids: 'zzz'"),
        ("/v1/score", {"item_ids": [f"i{k}" for k in range(1001)]}, "at most 1000"),
        ("/v1/score", {"texts": ["t"] * 65}, "at most 64"),
        ("/v1/score", {"texts": [""]}, "text must not be empty"),
        ("/v1/rank", {"candidates": []}, "at least 1"),
        ("/v1/rank", {"candidates": ["i1"] * 1001}, "at most 1000"),
        ("/v1/rank", {"candidates": ["i1", "bad"]}, "unknown item ids in candidates: 'bad'"),
        ("/v1/recommend", {"n": 0}, "greater than or equal to 1"),
        ("/v1/recommend", {"n": 101}, "less than or equal to 100"),
        ("/v1/recommend", {"exclude": ["nope"]}, "unknown item ids in exclude"),
        ("/v1/recommend", {"user_id": " padded"}, "white space"),
        ("/v1/batch/score", {"user_ids": [], "item_ids": ["i1"]}, "at least 1"),
        ("/v1/batch/recommend", {"user_ids": ["x"] * 101}, "at most 100"),
    ]
    for path, body, words in cases:
        r = http.post(path, json=body)
        assert r.status_code == 422, (path, body, r.text)
        assert words in detail(r), (path, body, r.text)
    r = http.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in detail(r)
    assert http.get("/v1/users/" + "u" * 129).status_code == 422
    r = http.get("/v1/users/bad%01id")
    assert r.status_code == 422 and "control characters" in detail(r)
    r = http.post("/v1/users", json={"user_id": "a\u0085b", **comparisons(("i1", "i2"))}, headers=AUTH)
    assert r.status_code == 422 and "control characters" in detail(r)


def test_body_size_limit(http):
    big = b'{"item_ids": ["' + b"x" * (1 << 20) + b'"]}'
    r = http.post("/v1/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over 1048576 bytes" in r.json()["detail"]

    def chunks():
        for _ in range(20):
            yield b" " * 65536

    r = http.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# ---------------------------------------------------------------------- deletion
def test_delete_user_everywhere(server, http):
    from plural import UserStore

    key = {**AUTH, "Idempotency-Key": "doomed-1"}
    assert http.post("/v1/users", json={"user_id": "doomed", **comparisons(("i1", "i2"), ("i3", "i4"))},
                     headers=key).status_code == 201
    assert rows_in_log(server, "doomed") == 2
    r = http.delete("/v1/users/doomed", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": "doomed", "deleted": True, "removed_comparisons": 2, "removed_from_store": True}
    assert http.get("/v1/users/doomed").status_code == 404
    assert http.post("/v1/score", json={"user_id": "doomed", "item_ids": ["i1"]}).status_code == 404
    assert rows_in_log(server, "doomed") == 0
    conn = sqlite3.connect(f"file:{server.state_dir / 'feedback.sqlite'}?mode=ro", uri=True)
    assert conn.execute("SELECT COUNT(*) FROM idempotency WHERE user_id = 'doomed'").fetchone()[0] == 0
    conn.close()
    snapshot = json.loads((server.state_dir / "snapshots" / "snapshot.json").read_text())
    stored = UserStore.load(server.state_dir / "snapshots" / "store")
    assert "doomed" not in stored and "alice" in stored and snapshot["n_users"] == len(stored)
    assert http.delete("/v1/users/doomed", headers=AUTH).status_code == 404
    # the key is free again, and the id starts over with no history
    again = http.post("/v1/users", json={"user_id": "doomed", **comparisons(("i5", "i6"))}, headers=key)
    assert again.status_code == 201 and again.json()["n_comparisons"] == 1 and not again.json()["replayed"]


def test_deleted_training_user_is_not_reseeded_from_training_data(http, trained):
    user = trained[2]
    assert http.get(f"/v1/users/{user}").json()["n_comparisons"] > 5
    assert http.delete(f"/v1/users/{user}", headers=AUTH).json()["removed_from_store"]
    assert http.get(f"/v1/users/{user}").status_code == 404
    r = http.post(f"/v1/users/{user}/comparisons", json=comparisons(("i1", "i9")), headers=AUTH)
    assert r.status_code == 200 and r.json()["created"] and r.json()["n_comparisons"] == 1


# ---------------------------------------------------------------------- concurrency
def test_concurrent_writers_lose_nothing(server, http):
    users = [f"conc{k}" for k in range(4)]
    per_thread, threads = 12, 8
    acked: list[tuple[str, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def writer(t: int) -> None:
        with server.client() as client:
            for j in range(per_thread):
                user = users[(t + j) % len(users)]
                a, b = (t * 7 + j) % 40, (t * 7 + j + 1 + t % 3) % 40
                r = client.post(f"/v1/users/{user}/comparisons", headers=AUTH,
                                json=comparisons((f"i{a}", f"i{b}")))
                with lock:
                    (acked.append((user, r.json()["last_seq"])) if r.status_code == 200
                     else errors.append(r.text))
                client.post("/v1/score", json={"user_id": user, "item_ids": ["i1", "i2"]})

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors
    assert len(acked) == per_thread * threads and len({s for _, s in acked}) == len(acked)
    for user in users:
        n = sum(1 for u, _ in acked if u == user)
        state = http.get(f"/v1/users/{user}").json()
        assert rows_in_log(server, user) == n == state["n_comparisons"] == state["n_logged"]


# ---------------------------------------------------------------------- metrics and the page
def test_metrics_per_route_and_status(http):
    http.get("/v1/users/nobody-for-metrics")
    m = http.get("/v1/metrics").json()
    route = m["routes"]["GET /v1/users/{user_id}"]
    assert route["by_status"]["404"] >= 1 and route["by_status"]["200"] >= 1
    assert route["count"] == sum(route["by_status"].values())
    assert 0 < route["p50_ms"] <= route["p99_ms"]
    assert m["routes"]["POST /v1/users"]["by_status"]["401"] >= 4
    assert m["routes"]["POST /v1/score"]["by_status"]["413"] >= 1
    assert m["log"]["synchronous"] == "FULL" and m["log"]["in_flight"] == 0


def test_web_page_mount_tolerates_a_missing_folder(http):
    from apps.server.app import WEB_DIR

    root = http.get("/")
    if (WEB_DIR / "index.html").is_file():
        assert root.status_code == 200 and "html" in root.headers["content-type"]
    else:
        assert root.status_code == 404 and "/v1" in root.json()["detail"]
    assert http.get("/web/no-such-file.js").status_code == 404


# ---------------------------------------------------------------------- in process: other catalogs
def test_texts_refused_for_a_catalog_without_text_features(tiny_run, tmp_path, cache_dir, monkeypatch):
    """A catalog whose features are its own (not text embeddings): texts are a 400 naming why."""
    from fastapi.testclient import TestClient

    from apps.server import library
    from apps.server.app import create_app
    from apps.server.service import Service

    monkeypatch.setenv("PLURAL_CACHE_DIR", str(cache_dir))
    loaded = library.load_run(tiny_run)
    run = library.run_from_parts(loaded.model, loaded.data, texts_supported=False, run_dir=tmp_path / "features-run")
    service = Service(tmp_path / "features-run", tmp_path / "state", run=run)
    app = create_app(None, service=service, token="")
    early = TestClient(app)  # no lifespan yet: nothing is loaded
    assert early.get("/v1/health").status_code == 200
    assert early.get("/v1/ready").status_code == 503 and early.get("/v1/ready").json()["status"] == "starting"
    r = early.post("/v1/score", json={"item_ids": ["i1"]})
    assert r.status_code == 503 and "not ready" in r.json()["detail"]
    with TestClient(app) as client:
        for _ in range(400):
            if client.get("/v1/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/v1/ready").status_code == 200, client.get("/v1/ready").text
        r = client.post("/v1/score", json={"texts": ["a new text"]})
        assert r.status_code == 400 and "texts are not supported for this model" in r.json()["detail"]
        r = client.post("/v1/users/t/comparisons", json={"comparisons": [{"text_a": "x", "item_b": "i1", "label": 1}]})
        assert r.status_code == 400 and "texts are not supported" in r.json()["detail"]
        # without a token, writes are open
        assert client.post("/v1/users/t/comparisons", json=comparisons(("i1", "i2"))).status_code == 200
        assert client.post("/v1/score", json={"item_ids": ["i1"]}).status_code == 200
