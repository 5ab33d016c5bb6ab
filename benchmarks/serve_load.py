"""Load on the HTTP service (issue 14): throughput, p50 / p99 latency and errors for adding
comparisons, scoring 100 candidates and recommending, against the same calls made in process
(the library without HTTP), and a check that every acknowledged comparison is in SQLite.

The service runs as its own process (``python -m apps.server``, one process, FULL-synchronous
feedback log) on 127.0.0.1; this script is the client, a closed loop of ``--concurrency``
keep-alive connections per phase (a small HTTP/1.1 client on asyncio streams, so the client's
own cost stays low: on a 2-core machine it shares the CPUs with the server).

Targets on 2 CPU cores: scoring >= 300 req/s with p99 < 50 ms, >= 200 acknowledged comparisons/s,
no errors. An add request carries ``--per-request`` comparisons of one user (default 1); the
acknowledged comparisons/s count comparisons (from the sequence numbers of the replies), req/s
counts requests. The write phase runs twice: with ``update: "now"`` (the state is recomputed
before the reply) and with ``update: "deferred"`` (committed, answered, then recomputed once per
user for the writes that arrived meanwhile); after the deferred phase the script waits until no
update is pending and checks that every user's state counts every logged comparison.

    .venv/bin/python benchmarks/serve_load.py                 # trains a synthetic run first (~1 min)
    .venv/bin/python benchmarks/serve_load.py --run RUN_DIR --seconds 10 --out serve_load.json
    .venv/bin/python benchmarks/serve_load.py --run RUN_DIR --per-request 3   # a few comparisons per request

Without ``--run`` a low_rank run is trained on a synthetic text catalog (500 items, 200 users;
two user types preferring different topics) in ``--work`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/serve_load.py` from a checkout
    sys.path.insert(0, str(REPO))
TOPICS = ["cats", "dogs", "space", "cooking", "music", "football", "politics", "gardening"]
WRITE_PHASES = {"add_comparisons": "now", "add_deferred": "deferred"}
"""The write phases and the ``update`` mode of their requests."""
PHASES = (*WRITE_PHASES, "score_100", "recommend_10")


# ---------------------------------------------------------------------- a synthetic run
def make_run(work: Path, n_items: int = 500, n_users: int = 200, per_user: int = 60) -> Path:
    import pandas as pd

    from plural.training.runs import train_run

    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, len(TOPICS)))
    types = rng.integers(0, 2, n_users)
    rows = []
    for u in range(n_users):
        for _ in range(per_user):
            a, b = rng.choice(n_items, 2, replace=False)
            m = w[types[u], a % len(TOPICS)] - w[types[u], b % len(TOPICS)]
            rows.append((f"u{u}", f"i{a}", f"i{b}", int(rng.random() < 1 / (1 + np.exp(-3 * m)))))
    work.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_a", "item_b", "label"]).to_csv(work / "pairs.csv", index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                  "text": [f"item {i}: a short text about {TOPICS[i % len(TOPICS)]}" for i in range(n_items)]}
                 ).to_csv(work / "items.csv", index=False)
    out = work / "run"
    if not (out / "run.json").is_file():
        train_run(str(work / "pairs.csv"), "low_rank", out, max_epochs=8, batch_size=256, show_progress=False,
                  model_options=dict(n_components=4), read_options={"item_table": str(work / "items.csv")})
    return out


# ---------------------------------------------------------------------- a small keep-alive HTTP client
class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        self.writer.write(head + data)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_phase(host: str, port: int, seconds: float, concurrency: int, make_request, on_reply=None) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        conn = Connection(host, port)
        await conn.open()
        rng = random.Random(k)
        try:
            while time.perf_counter() < stop_at:
                method, path, body = make_request(rng)
                t0 = time.perf_counter()
                try:
                    status, payload = await conn.request(method, path, body)
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    conn.close()
                    conn = Connection(host, port)
                    await conn.open()
                    continue
                latencies.append(time.perf_counter() - t0)
                if status >= 400:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                elif on_reply is not None:
                    on_reply(body, payload)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1e3
    return {"requests": len(latencies), "seconds": round(wall, 3), "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "errors": errors, "concurrency": concurrency}


# ---------------------------------------------------------------------- the service process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, state_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PLURAL_API_TOKEN"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "apps.server", str(run_dir), "--port", str(port),
                             "--state-dir", str(state_dir), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    import urllib.request

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server not ready")


# ---------------------------------------------------------------------- the phases
def http_phases(run_dir: Path, state_dir: Path, item_ids: list[str], trained: list[str], args) -> dict:
    port = free_port()
    proc = start_server(run_dir, state_dir, port, state_dir.parent / "server.log")
    host = "127.0.0.1"
    new_users = [f"bench-{k}" for k in range(args.users)]
    acked: list[tuple[int, int]] = []
    rng0 = random.Random(0)
    candidates = [rng0.sample(item_ids, 100) for _ in range(64)]
    readers = trained[:100] + new_users

    def adder(update: str):
        def add(rng):  # one request: --per-request comparisons of one user, as a page or a backend sends them
            comparisons = []
            for _ in range(args.per_request):
                a, b = rng.sample(item_ids, 2)
                comparisons.append({"item_a": a, "item_b": b, "label": rng.choice((0, 1))})
            return "POST", f"/v1/users/{rng.choice(new_users)}/comparisons", {"comparisons": comparisons,
                                                                               "update": update}
        return add

    def on_ack(body, payload):
        reply = json.loads(payload)
        acked.append((reply["first_seq"], reply["last_seq"]))

    def score(rng):
        return "POST", "/v1/score", {"user_id": rng.choice(readers), "item_ids": rng.choice(candidates)}

    def recommend(rng):
        return "POST", "/v1/recommend", {"user_id": rng.choice(readers), "n": 10}

    try:
        results = {}
        # warm up: every benchmark user gets a first comparison (so reads can use them), then a few reads
        for u in new_users:
            a, b = rng0.sample(item_ids, 2)
            asyncio.run(_one(host, port, "POST", f"/v1/users/{u}/comparisons",
                             {"comparisons": [{"item_a": a, "item_b": b, "label": 1}]}, on_ack))
        asyncio.run(run_phase(host, port, 1.0, 4, score))
        marks = {}
        for phase, update in WRITE_PHASES.items():
            start = len(acked)
            results[phase] = asyncio.run(run_phase(host, port, args.seconds, args.write_concurrency, adder(update),
                                                   on_ack))
            marks[phase] = (start, len(acked))
        results["deferred_updates"] = wait_for_updates(host, port, new_users)
        results["score_100"] = asyncio.run(run_phase(host, port, args.seconds, args.read_concurrency, score))
        results["recommend_10"] = asyncio.run(run_phase(host, port, args.seconds, args.read_concurrency, recommend))
        metrics = asyncio.run(_one(host, port, "GET", "/v1/metrics", None))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    for phase, (start, end) in marks.items():
        results[phase]["acknowledged_comparisons"] = sum(l - f + 1 for f, l in acked[start:end])
        results[phase]["acknowledged_per_s"] = round(
            results[phase]["acknowledged_comparisons"] / results[phase]["seconds"], 1)
    results["server_metrics"] = {k: v for k, v in json.loads(metrics)["routes"].items()
                                 if k in ("POST /v1/score", "POST /v1/recommend", "POST /v1/users/{user_id}/comparisons")}
    results["log"] = json.loads(metrics)["log"]
    results["durability"] = check_log(state_dir, acked)
    return results


async def _one(host, port, method, path, body, on_reply=None):
    conn = Connection(host, port)
    await conn.open()
    try:
        status, payload = await conn.request(method, path, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {payload[:200]!r}")
        if on_reply is not None:
            on_reply(body, payload)
        return payload
    finally:
        conn.close()


def wait_for_updates(host: str, port: int, users: list[str], timeout: float = 120.0) -> dict:
    """After the deferred phase: seconds until no deferred update is pending, and whether every
    user's state then counts every comparison logged for them (``pending`` 0, ``n_comparisons ==
    n_logged``: these users have no training comparisons)."""
    t0 = time.perf_counter()
    while True:
        summary = json.loads(asyncio.run(_one(host, port, "GET", "/v1/metrics", None)))["deferred"]
        if summary["users_pending"] == 0 or time.perf_counter() - t0 > timeout:
            break
        time.sleep(0.05)
    drained_s = round(time.perf_counter() - t0, 3)
    behind = []
    for u in users:
        state = json.loads(asyncio.run(_one(host, port, "GET", f"/v1/users/{u}", None)))
        if state["pending"] or state["n_comparisons"] != state["n_logged"]:
            behind.append(u)
    return {"drained_after_s": drained_s, **summary, "users_checked": len(users), "users_behind": len(behind),
            "every_state_counts_every_comparison": not behind}


def check_log(state_dir: Path, acked: list[tuple[int, int]]) -> dict:
    conn = sqlite3.connect(f"file:{state_dir / 'feedback.sqlite'}?mode=ro", uri=True)
    seqs = {r[0] for r in conn.execute("SELECT seq FROM comparisons")}
    conn.close()
    wanted = {s for f, l in acked for s in range(f, l + 1)}
    return {"acknowledged": len(wanted), "rows_in_sqlite": len(seqs), "missing": len(wanted - seqs),
            "all_acknowledged_in_sqlite": wanted <= seqs}


# ---------------------------------------------------------------------- the same calls in process
def in_process(run_dir: Path, seconds: float, users: int, per_request: int = 1) -> dict:
    """The library calls the routes make, without HTTP, one thread: personalize + upsert for
    ``per_request`` new comparisons (no SQLite), ItemIndex.rank of 100 candidates, ItemIndex.top_n
    excluding judged items."""
    from apps.server import library

    library.limit_threads()
    run = library.load_run(run_dir)
    store = library.new_store(run.model)
    index = library.item_index(run, None, store)
    ids = [str(i) for i in run.data.item_ids]
    rng = random.Random(0)
    history: dict[str, list] = {}
    names = [f"bench-{k}" for k in range(users)]

    def add():
        u = rng.choice(names)
        h = history.setdefault(u, [])
        for _ in range(per_request):
            a, b = rng.sample(ids, 2)
            h.append((a, b, float(rng.choice((0, 1)))))
        support = library.support_batch(run, u, [x[0] for x in h], [x[1] for x in h], [x[2] for x in h],
                                        [1.0] * len(h), [None] * len(h), {})
        state = library.personalize(run, store, support)
        library.upsert_state(store, u, state, {"n_comparisons": len(h)})

    for u in names:  # every user stored once first, as in the HTTP run
        history[u] = []
        a, b = rng.sample(ids, 2)
        history[u].append((a, b, 1.0))
        support = library.support_batch(run, u, [a], [b], [1.0], [1.0], [None], {})
        library.upsert_state(store, u, library.personalize(run, store, support), {"n_comparisons": 1})
    cands = [rng.sample(ids, 100) for _ in range(64)]
    readers = list(run.model.user_ids_[:100]) + names

    def score():
        library.rank(index, rng.choice(readers), rng.choice(cands))

    def recommend():
        u = rng.choice(names)
        library.top_n(index, u, 10, sorted({x for c in history[u] for x in c[:2]}), None)

    out = {}
    for name, fn in (("add_comparisons", add), ("score_100", score), ("recommend_10", recommend)):
        lat = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t0)
        lat = np.asarray(lat) * 1e3
        out[name] = {"calls": len(lat), "per_s": round(len(lat) / seconds, 1),
                     "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a run of `plural train` (default: train one)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the synthetic run and the state")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--users", type=int, default=200, help="users the write phase spreads over")
    parser.add_argument("--per-request", type=int, default=1,
                        help="comparisons in one add request (acknowledged comparisons/s counts comparisons)")
    parser.add_argument("--write-concurrency", type=int, default=32)
    parser.add_argument("--read-concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="plural-serve-load-"))
    t0 = time.perf_counter()
    run_dir = args.run or make_run(work / "data")
    print(f"run {run_dir} ready in {time.perf_counter() - t0:.0f}s", flush=True)
    vocab = json.loads((run_dir / "vocab.json").read_text())
    state_dir = work / f"state-{int(time.time())}"
    results = {"run": str(run_dir), "cpus": os.cpu_count(), "seconds_per_phase": args.seconds,
               "client": {"comparisons_per_add_request": args.per_request, "users": args.users,
                          "write_concurrency": args.write_concurrency, "read_concurrency": args.read_concurrency,
                          "http": "HTTP/1.1 keep-alive, one asyncio connection per concurrent request"},
               "http": http_phases(run_dir, state_dir, [str(i) for i in vocab["item_ids"]], vocab["user_ids"], args)}
    results["in_process"] = in_process(run_dir, min(args.seconds, 5.0), args.users, args.per_request)
    for name in PHASES:  # both write phases against the in-process write path
        h, p = results["http"][name], results["in_process"]["add_comparisons" if name in WRITE_PHASES else name]
        h["in_process_per_s"] = p["per_s"]
        h["http_over_in_process"] = round(h["rps"] / p["per_s"], 3) if p["per_s"] else None
    h = results["http"]
    results["targets"] = {
        "score_rps>=300": h["score_100"]["rps"] >= 300, "score_p99<50ms": (h["score_100"]["p99_ms"] or 1e9) < 50,
        "acknowledged_comparisons_per_s>=200 (update=now)": h["add_comparisons"]["acknowledged_per_s"] >= 200,
        "acknowledged_comparisons_per_s>=200 (update=deferred)": h["add_deferred"]["acknowledged_per_s"] >= 200,
        "zero_errors": not any(sum(h[k]["errors"].values()) for k in PHASES),
        "every_acknowledged_comparison_in_sqlite": h["durability"]["all_acknowledged_in_sqlite"],
        "every_deferred_update_applied": h["deferred_updates"]["every_state_counts_every_comparison"]}
    print(f"{'phase':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'in-proc/s':>11}{'ratio':>8}")
    for name in PHASES:
        r = h[name]
        print(f"{name:<18}{r['rps']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}{sum(r['errors'].values()):>8}"
              f"{r['in_process_per_s']:>11}{r['http_over_in_process']:>8}")
    print(f"client: {args.per_request} comparison(s) per add request, {args.write_concurrency} write / "
          f"{args.read_concurrency} read connections, {args.users} users")
    for name in WRITE_PHASES:
        print(f"{name}: acknowledged comparisons {h[name]['acknowledged_comparisons']} in {h[name]['seconds']}s "
              f"({h[name]['acknowledged_per_s']}/s)")
    print(f"log commits {h['log']['commits']} for {h['log']['comparisons_written']} comparisons; durability "
          f"{h['durability']}; deferred updates {h['deferred_updates']}")
    print("targets:", json.dumps(results["targets"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
