"""Fixtures of the HTTP service's tests: one tiny run trained per session, and real servers
(``python -m apps.server``) started as subprocesses on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[3]
TOPICS = ["cats", "dogs", "space", "cooking", "music"]
N_ITEMS, N_USERS, PER_USER = 40, 40, 40


def write_dataset(folder: Path) -> tuple[Path, Path]:
    """Pairs of 40 users over 40 items with texts, two planted user types preferring different topics."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, len(TOPICS)))
    types = rng.integers(0, 2, N_USERS)
    rows = []
    for u in range(N_USERS):
        for _ in range(PER_USER):
            a, b = rng.choice(N_ITEMS, 2, replace=False)
            m = w[types[u], a % 5] - w[types[u], b % 5]
            rows.append((f"u{u}", f"i{a}", f"i{b}", int(rng.random() < 1 / (1 + np.exp(-3 * m)))))
    pairs, items = folder / "pairs.csv", folder / "items.csv"
    pd.DataFrame(rows, columns=["user_id", "item_a", "item_b", "label"]).to_csv(pairs, index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)],
                  "text": [f"a short note about {TOPICS[i % 5]}, number {i}" for i in range(N_ITEMS)]}
                 ).to_csv(items, index=False)
    return pairs, items


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The text encoder's cache shared by the training and every server (so servers start on cache hits)."""
    return tmp_path_factory.mktemp("server_cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir) -> Path:
    """A ``low_rank`` run of ``plural train`` on the tiny text dataset (seconds)."""
    from plural.data.encoders import TextEncoder
    from plural.training.runs import train_run

    folder = tmp_path_factory.mktemp("server_data")
    pairs, items = write_dataset(folder)
    out = folder / "run"
    train_run(str(pairs), "low_rank", out, max_epochs=5, batch_size=128, show_progress=False,
              model_options=dict(n_components=2, hidden_dim=16, item_dim=8),
              read_options={"item_table": str(items)}, encoder=TextEncoder(cache_dir=cache_dir))
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m apps.server RUN --port P --state-dir S`` on 127.0.0.1, waited for until ready."""

    def __init__(self, run_dir: Path, state_dir: Path, cache_dir: Path, log_path: Path, *,
                 token: str | None = None, snapshot_every: float = 30.0) -> None:
        self.run_dir, self.state_dir, self.log_path = run_dir, state_dir, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "PLURAL_API_TOKEN"}
        env.update(OMP_NUM_THREADS="1", PLURAL_CACHE_DIR=str(cache_dir), PYTHONPATH=str(REPO))
        if token is not None:
            env["PLURAL_API_TOKEN"] = token
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apps.server", str(run_dir), "--host", "127.0.0.1", "--port", str(self.port),
             "--state-dir", str(state_dir), "--snapshot-every", str(snapshot_every), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/v1/ready", timeout=2)
                if r.status_code == 200:
                    return self
                if r.json().get("error"):
                    raise RuntimeError(f"server failed to load: {r.json()['error']}\n{self.log_tail()}")
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def client(self, **kwargs) -> "httpx.Client":
        return httpx.Client(base_url=self.url, **{"timeout": 30, **kwargs})

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(tiny_run, cache_dir, tmp_path_factory):
    """``start_server(state_dir=None, token=None, snapshot_every=30.0) -> ServerProcess`` (ready);
    every server started is stopped at the end of the session."""
    started: list[ServerProcess] = []

    def start(state_dir: Path | None = None, token: str | None = None, snapshot_every: float = 30.0,
              wait: bool = True) -> ServerProcess:
        state_dir = state_dir or tmp_path_factory.mktemp("state")
        logs = tmp_path_factory.mktemp("server_log")
        server = ServerProcess(tiny_run, state_dir, cache_dir, logs / "server.log", token=token,
                               snapshot_every=snapshot_every)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def serve_run(cache_dir, tmp_path_factory):
    """``serve_run(run_dir, token=None) -> ServerProcess`` (ready) for a run other than ``tiny_run``;
    every server started is stopped at the end of the session."""
    started: list[ServerProcess] = []

    def start(run_dir: Path, token: str | None = None) -> ServerProcess:
        logs = tmp_path_factory.mktemp("server_log")
        server = ServerProcess(run_dir, tmp_path_factory.mktemp("state"), cache_dir, logs / "server.log", token=token)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()
