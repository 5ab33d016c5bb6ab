"""The recommender backend behind the HTTP routes: a run's model and catalog, the user store, the
feedback log, snapshots and replay. Nothing here knows about HTTP.

Lifecycle: :meth:`Service.start` loads everything in a background thread (``/v1/health`` answers
at once, ``/v1/ready`` once the model, the catalog, the store and the replay are done):

1. take an exclusive ``flock`` on ``<state_dir>/lock`` (one service per state directory);
2. load the run (``library.load_run``) and the catalog's ``ItemIndex``;
3. open the feedback log (``feedback.FeedbackLog``);
4. load the latest snapshot of the store (``<state_dir>/snapshots/store`` with its watermark W in
   ``snapshots/snapshot.json``), or build the store from the model when there is none (or it
   belongs to another model, or does not load: W = 0, the whole log is replayed);
5. remove the users deleted at or after W, then recompute, from their whole history, every user
   with a logged comparison after W;
6. compute the 2-D map, start the snapshot thread, and be ready.

Writes (one user's comparisons) are serialised per user by an ``asyncio.Lock`` and go: validate ->
compute the new state from the whole history plus the new comparisons (``plural.personalize``, on
the event loop for a small user, in the compute thread otherwise: :data:`INLINE_COMPARISONS`; a
bad support is refused before anything is written) -> commit to the log
(group commit, fsynced) -> upsert the store -> reply. Reads use the store (its own lock) and the
``ItemIndex`` and take no lock of the service's.

A write may ask for a *deferred* update (``update="deferred"``): it is validated and committed to
the log (fsynced) and answered at once; the state is recomputed from the user's whole history
soon after by the updater (a task on the event loop, one user at a time, under the same per-user
lock), and writes that arrive for a user meanwhile are folded into one recomputation. Until then
the write is in flight (the watermark stays below it), so a crash loses nothing: the replay on
start recomputes the user. The reply carries no state (``pending``); ``GET /v1/users/{id}`` counts
the comparisons not yet in the state. That trades read-your-writes for throughput: under load,
the expensive part (personalize) runs once per user per round, not once per request.

Snapshots: every ``snapshot_every_s`` seconds when something changed, after each deletion
(before the deletion is answered) and at shutdown: read the log's watermark W, save the store
atomically (``UserStore.save``), then write ``snapshot.json`` (atomically, fsynced) naming W.
Because every user with rows after W is recomputed from their whole history on start, a snapshot
that holds *more* than W is harmless, and so is a crash between the two files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plural.training.saved_dir import fsync_path

from apps.server import library
from apps.server.feedback import FeedbackLog, Idempotent, IdempotencyConflict, Row, user_hash

logger = logging.getLogger(__name__)

SNAPSHOT_EVERY_S = 30.0
IDEMPOTENCY_TTL_S = 24 * 3600.0
POOL_PAIRS = 5000
MAP_FIT_USERS = 20_000
MAP_POINTS = 2000
INLINE_COMPARISONS = 32
"""While no read is being served, writes of a user with at most this many comparisons in all
(training, logged and new; no texts) compute the new state on the event loop itself: a few
milliseconds of NumPy that a worker thread makes dearer, not cheaper (the two threads take the GIL
from each other between NumPy calls: at 32 concurrent writes on 2 cores, about 2 ms more CPU per
write and a quarter to a third fewer writes/s). With reads in flight, or for larger users and any
with texts (the encoder), the state is computed in the one compute thread and the event loop
serves reads meanwhile: computing inline under mixed traffic held scoring's p99 at 185-360 ms
against 30 ms."""
READ_QUIET_S = 0.5
"""Seconds without a read in flight before writes compute inline again (a read is not counted
until the event loop has parsed it: without this, a read arriving among writes would wait
behind several writes' computations)."""


# ---------------------------------------------------------------------- errors the routes turn into 4xx
class ServiceError(Exception):
    status = 400


class BadRequest(ServiceError):
    pass


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Invalid(ServiceError):
    status = 422


class NotReady(ServiceError):
    status = 503


def default_state_dir(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>.serve``, beside the run (never inside it: a run is a checksummed checkpoint)."""
    run = Path(run_dir).resolve()
    return run.with_name(run.name + ".serve")


def _write_json_atomically(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _show(ids: Sequence[str], n: int = 5) -> str:
    head = ", ".join(repr(i) for i in list(ids)[:n])
    return head + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


class KeyedLocks:
    """One ``asyncio.Lock`` per key, created on first use and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str):
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


@dataclass
class UserMap:
    snapshot_seq: int
    computed_at: float
    n_users: int
    mean: np.ndarray | None
    components: np.ndarray | None  # (2, d)
    explained: list[float]
    points: np.ndarray  # (m, 2)

    def project(self, vector: np.ndarray) -> tuple[float, float]:
        if self.mean is None:
            return 0.0, 0.0
        xy = (np.asarray(vector, np.float64) - self.mean) @ self.components.T
        return float(xy[0]), float(xy[1])


def compute_map(ids: list[str], vectors: np.ndarray, snapshot_seq: int, random_state: int = 0) -> UserMap:
    """PCA of the stored vectors (fitted on a seeded sample of up to ``MAP_FIT_USERS``), with the
    coordinates of a seeded sample of up to ``MAP_POINTS`` users."""
    n = len(ids)
    now = time.time()
    if n == 0:
        return UserMap(snapshot_seq, now, 0, None, None, [], np.zeros((0, 2)))
    x = np.asarray(vectors, np.float64)
    rng = np.random.default_rng(random_state)
    fit = x if n <= MAP_FIT_USERS else x[np.sort(rng.choice(n, MAP_FIT_USERS, replace=False))]
    mean = fit.mean(0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    components = np.zeros((2, x.shape[1]))
    k = min(2, vt.shape[0])
    components[:k] = vt[:k]
    var = s ** 2
    explained = (var[:2] / var.sum()).tolist() if var.sum() > 0 else [0.0] * k
    shown = x if n <= MAP_POINTS else x[np.sort(rng.choice(n, MAP_POINTS, replace=False))]
    return UserMap(snapshot_seq, now, n, mean, components, [float(v) for v in explained],
                   (shown - mean) @ components.T)


class Service:
    """See the module docstring.

    Args:
        run_dir: a run written by ``plural train``.
        state_dir: the service's own state (log, snapshots); default ``<run_dir>.serve``.
        snapshot_every_s: seconds between background snapshots (when something changed).
        synchronous: the log's SQLite ``synchronous`` setting (``"FULL"``; see ``feedback``).
        run: an already loaded ``library.Run`` (tests; ``run_dir`` is then only a name).
    """

    def __init__(self, run_dir: str | os.PathLike, state_dir: str | os.PathLike | None = None,
                 snapshot_every_s: float = SNAPSHOT_EVERY_S, synchronous: str = "FULL",
                 run: library.Run | None = None) -> None:
        self.run_dir = Path(run_dir)
        if run is None and not library.is_run(self.run_dir):
            raise FileNotFoundError(f"{self.run_dir} is not a plural run (no run.json); train one with `plural train`")
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir(self.run_dir)
        resolved_run, resolved_state = self.run_dir.resolve(), self.state_dir.resolve()
        if resolved_state == resolved_run or resolved_run in resolved_state.parents:
            raise ValueError(f"the state directory {self.state_dir} is inside the run {self.run_dir}: a run is a "
                             "checksummed checkpoint and must not gain files; choose another --state-dir")
        if not snapshot_every_s > 0:
            raise ValueError(f"snapshot_every_s must be > 0, got {snapshot_every_s!r}")
        self.snapshot_every_s = float(snapshot_every_s)
        self.synchronous = synchronous
        self.run: library.Run | None = run
        self.status = "starting"
        self.error: str | None = None
        self.ready = False
        self.started_at = time.time()
        self.log: FeedbackLog | None = None
        self.store = None
        self.index = None
        self.pool = None
        self.map: UserMap | None = None
        self.last_snapshot: dict | None = None
        self._locks = KeyedLocks()
        self._forgotten: set[str] = set()
        self._generation = 0
        self._snapshot_generation = -1
        self._snapshot_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._snapshot_thread: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._population = None
        # one thread computes the states of writes, one after another: several would only take
        # the GIL from each other between NumPy calls (the computation is pure Python + NumPy)
        self.reads_in_flight = 0  # requests other than writes being served (counted by the app, on the event loop)
        self.last_read_at = -math.inf  # time.monotonic() when one last started or ended
        self._compute_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                   thread_name_prefix="plural-compute")
        # deferred updates: user -> first sequence numbers of their committed, not yet applied writes
        self._deferred: dict[str, list[int]] = {}
        self._failed: dict[str, list[int]] = {}  # writes whose deferred update failed (applied by a later one)
        self._updater: asyncio.Task | None = None
        self.deferred_stats = {"updates": 0, "writes_applied": 0, "failures": 0}

    # ------------------------------------------------------------------ start and stop
    def start(self, background: bool = True) -> None:
        if background:
            self._loader = threading.Thread(target=self._load_guarded, name="plural-service-loader", daemon=True)
            self._loader.start()
        else:
            self._load_guarded()
            if self.error:
                raise RuntimeError(self.error)

    def _load_guarded(self) -> None:
        try:
            self._load()
        except Exception as err:  # reported by /v1/ready
            logger.exception("the service failed to start")
            self.status, self.error = "failed", f"{type(err).__name__}: {err}"

    def _take_state_lock(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another service holds the state directory {self.state_dir}") from None
        except ImportError:  # pragma: no cover - not POSIX
            pass
        self._lock_fd = fd

    def _load(self) -> None:
        t0 = time.perf_counter()
        self._take_state_lock()
        library.limit_threads()
        self.status = "loading the run"
        if self.run is None:
            self.run = library.load_run(self.run_dir)
        run = self.run
        self.status = "opening the feedback log"
        self.log = FeedbackLog(self.state_dir / "feedback.sqlite", synchronous=self.synchronous,
                               meta={"run_dir": str(self.run_dir.resolve()), "model_fingerprint": run.fingerprint})
        self.pool = library.question_pool(run, POOL_PAIRS)
        self._population = library.population_state(run.model)
        self.status = "loading the user store"
        watermark = self._load_store()
        self.status = "indexing the catalog"
        self.index = library.item_index(run, self.state_dir / "item_index", self.store)
        self.status = "replaying the feedback log"
        replayed = self._replay(watermark)
        self._snapshot_generation = self._generation if not replayed else -1
        self.map = self._compute_map(watermark)
        self._snapshot_thread = threading.Thread(target=self._snapshot_loop, name="plural-snapshots", daemon=True)
        self._snapshot_thread.start()
        self.status, self.ready = "ready", True
        if run.texts_supported:  # load the text model now rather than on the first text request
            threading.Thread(target=self._warm_encoder, name="plural-encoder-warmup", daemon=True).start()
        logger.info("ready in %.1fs: %s, %d items, %s users in the store, %d users replayed after seq %d",
                    time.perf_counter() - t0, run.model.name, len(run.data.item_ids),
                    len(self.store) if self.store is not None else 0, replayed, watermark)

    def _warm_encoder(self) -> None:
        try:
            library.warm_encoder(self.run)
        except Exception as err:
            logger.warning("text encoder not loaded ahead (%s); it loads on the first text", err)

    @property
    def _snapshot_dir(self) -> Path:
        return self.state_dir / "snapshots"

    def _load_store(self) -> int:
        run = self.run
        if not run.has_user_vectors:
            self.store = None
            return self.log.last_seq()
        meta_path = self._snapshot_dir / "snapshot.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                store = library.load_store(self._snapshot_dir / "store", run.model)
                self.store = store
                self.last_snapshot = meta
                return int(meta["last_seq"])
            except Exception as err:
                logger.warning("snapshot in %s not used (%s: %s); rebuilding the store from the model and "
                               "replaying the whole log", self._snapshot_dir, type(err).__name__, err)
        self.store = library.new_store(run.model)
        return 0

    def _replay(self, watermark: int) -> int:
        self._forgotten = self.log.deleted_hashes()
        if self.store is None:
            return 0
        for uid in self.log.deletions_after(watermark):
            if uid in self.store:
                self.store.remove([uid])
        if watermark == 0:  # a store rebuilt from the model: forget deleted training users again
            gone = [u for u in self.store.user_ids if user_hash(u) in self._forgotten]
            if gone:
                self.store.remove(gone)
        users = self.log.users_after(watermark)
        for uid in users:
            history = self.log.history(uid)
            try:
                state, n, contexts = self._compute(uid, history, [])
            except Exception as err:  # e.g. an item no longer in the catalog: keep serving the others
                logger.error("replay: user %r not recomputed (%s: %s)", uid, type(err).__name__, err)
                continue
            self._apply(uid, state, n, contexts)
        return len(users)

    def close(self) -> None:
        """Stop the snapshot thread, snapshot what changed, close the log, release the state lock."""
        self._stop.set()
        self._wake.set()
        if self._loader is not None and self._loader.is_alive():
            self._loader.join(60)
        if self._snapshot_thread is not None:
            self._snapshot_thread.join(60)
        if self.ready and self._generation != self._snapshot_generation:
            try:
                self.snapshot()
            except Exception:
                logger.exception("final snapshot failed (the log replays it on the next start)")
        self.ready = False
        self._compute_pool.shutdown(wait=True)
        if self.log is not None:
            self.log.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ snapshots
    def _snapshot_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.snapshot_every_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._generation != self._snapshot_generation:
                try:
                    self.snapshot()
                except Exception:
                    logger.exception("snapshot failed; retrying at the next interval")

    def snapshot(self) -> dict:
        """Save the store with the log's watermark (see the module docstring); recompute the map."""
        with self._snapshot_lock:
            generation = self._generation
            watermark = self.log.watermark()
            t0 = time.perf_counter()
            n_users = 0
            if self.store is not None:
                self._snapshot_dir.mkdir(parents=True, exist_ok=True)
                library.save_store(self.store, self._snapshot_dir / "store")
                n_users = len(self.store)
            meta = {"last_seq": watermark, "created_at": time.time(), "n_users": n_users,
                    "model_fingerprint": self.run.fingerprint, "seconds": round(time.perf_counter() - t0, 4)}
            if self.store is not None:
                _write_json_atomically(self._snapshot_dir / "snapshot.json", meta)
            self.log.maintain(watermark, older_than=time.time() - IDEMPOTENCY_TTL_S).result(timeout=60)
            self._snapshot_generation = generation
            self.last_snapshot = meta
            self.map = self._compute_map(watermark)
            return meta

    def _compute_map(self, watermark: int) -> UserMap:
        if self.store is None:
            return compute_map([], np.zeros((0, 2)), watermark)
        ids, vectors = library.store_vectors(self.store)
        return compute_map(ids, vectors, watermark)

    # ------------------------------------------------------------------ checks
    def require_ready(self) -> None:
        if not self.ready:
            raise NotReady(f"the service is not ready: {self.error or self.status}")

    def _require_users(self) -> None:
        if self.store is None:
            raise BadRequest(f"model {self.run.model.name!r} has no user vectors: users cannot be personalized "
                             "here; only population scoring (no user_id) is served")

    def _check_items(self, ids: Sequence[str], what: str) -> None:
        row_of = library.catalog_rows(self.run)
        unknown = [i for i in dict.fromkeys(ids) if i not in row_of]
        if unknown:
            raise Invalid(f"unknown item ids in {what}: {_show(unknown)}")

    def _check_texts_supported(self) -> None:
        if not self.run.texts_supported:
            raise BadRequest(f"texts are not supported for this model: its catalog's features are not text "
                             f"embeddings ({self.run.record.get('dataset')!r} has features of its own); "
                             "use catalog item ids")

    # ------------------------------------------------------------------ user history and state
    def _base_rows(self, user_id: str) -> np.ndarray:
        """The training comparisons the model learned this user from (none for a deleted user)."""
        rows = library.training_support_rows(self.run, user_id)
        if len(rows) and user_hash(user_id) in self._forgotten:
            return rows[:0]
        return rows

    def _computes_inline(self, user_id: str, history: list[Row], new: list[Row]) -> bool:
        """Whether a write's state is computed on the event loop itself: no read is being served or
        was in the last ``READ_QUIET_S`` (``reads_in_flight``, ``last_read_at``: the app keeps them),
        and the user has at most ``INLINE_COMPARISONS`` comparisons in all and no texts (the encoder
        is slow)."""
        if self.reads_in_flight or time.monotonic() - self.last_read_at < READ_QUIET_S:
            return False
        if len(history) + len(new) > INLINE_COMPARISONS:
            return False
        if any(r.text_a is not None or r.text_b is not None for r in history) or \
                any(r.text_a is not None or r.text_b is not None for r in new):
            return False
        return len(history) + len(new) + len(self._base_rows(user_id)) <= INLINE_COMPARISONS

    def _compute(self, user_id: str, history: list[Row], new: list[Row]):
        """``(state, n_comparisons, contexts)`` from the user's training rows, logged history and
        new comparisons (``plural.personalize`` under the store's users as the prior). For a
        prompt-aware run a text is embedded under the prompt of its comparison's context
        (``library.context_prompt``: a context of the catalog with a text), else with no prompt."""
        run = self.run
        data = run.data
        base = self._base_rows(user_id)
        keys_a = data.item_ids[data.item_a[base]].tolist()  # item_ids is already an array of str
        keys_b = data.item_ids[data.item_b[base]].tolist()
        labels = data.label[base].astype(np.float64).tolist()
        weights = data.weight[base].astype(np.float64).tolist()
        ctx = data.context[base]
        contexts: list[str | None] = ([None] * len(base) if data.context_ids is None else
                                      [str(data.context_ids[c]) if c >= 0 else None for c in ctx.tolist()])
        texts: dict[str, tuple[str, str | None]] = {}  # key -> (text, prompt)
        for r in list(history) + list(new):
            # a prompt-aware run judges a text under its comparison's context's prompt (None otherwise)
            prompt = library.context_prompt(run, r.context) if (r.text_a is not None or r.text_b is not None) else None
            for item, text in ((r.item_a, r.text_a), (r.item_b, r.text_b)):
                if text is not None:
                    texts.setdefault(library.text_key(text, prompt), (text, prompt))
            keys_a.append(r.item_a if r.item_a is not None else library.text_key(r.text_a, prompt))
            keys_b.append(r.item_b if r.item_b is not None else library.text_key(r.text_b, prompt))
            labels.append(float(r.label))
            weights.append(float(r.weight))
            contexts.append(r.context)
        features = {}
        if texts:
            self._check_texts_supported()
            keys = list(texts)
            features = dict(zip(keys, library.encode_texts(run, [texts[k][0] for k in keys],
                                                           [texts[k][1] for k in keys])))
        n = len(labels)
        if n == 0:
            state = self._population
        else:
            support = library.support_batch(run, user_id, keys_a, keys_b, labels, weights, contexts, features)
            state = library.personalize(run, self.store, support)
        vec = state.vector.detach().float().cpu().numpy()
        if not np.isfinite(vec).all() or (state.covariance is not None and
                                          not np.isfinite(state.covariance.detach().cpu().numpy()).all()):
            raise RuntimeError(f"personalize gave a non-finite state for user {user_id!r}")
        return state, n, sorted({c for c in contexts if c is not None})

    def _apply(self, user_id: str, state, n: int, contexts: list[str]) -> None:
        meta: dict[str, Any] = {"n_comparisons": int(n), "online": True}
        if contexts:
            meta["contexts"] = contexts
        library.upsert_state(self.store, user_id, state, meta)
        self._generation += 1

    def _state_out(self, user_id: str, state, *, in_store: bool, n: int, n_logged: int,
                   updated_at: float | None, pending: int = 0) -> dict:
        vector = state.vector.detach().float().cpu().numpy().tolist() if state is not None else None
        diag = total = None
        if state is not None and state.covariance is not None:
            d = np.clip(np.diag(state.covariance.detach().double().cpu().numpy()), 0, None)
            diag, total = d.tolist(), float(math.sqrt(d.sum()))
        return {"user_id": user_id, "in_store": in_store, "n_comparisons": int(n), "n_logged": int(n_logged),
                "pending": int(pending), "vector": vector, "covariance_diagonal": diag, "total_sd": total,
                "updated_at": updated_at}

    def user_state(self, user_id: str) -> dict:
        self.require_ready()
        self._require_users()
        n_logged = self.log.count(user_id)
        if user_id not in self.store:
            if n_logged:  # committed, not applied yet (a deferred write, an instant after a write, a failed replay)
                return self._state_out(user_id, None, in_store=False, n=len(self._base_rows(user_id)) + n_logged,
                                       n_logged=n_logged, updated_at=None, pending=n_logged)
            raise NotFound(f"unknown user {user_id!r}")
        try:
            state = library.stored_state(self.store, user_id)
            meta = library.store_metadata(self.store, user_id)
        except KeyError:  # deleted meanwhile
            raise NotFound(f"unknown user {user_id!r}") from None
        n = meta.get("n_comparisons", 0)
        pending = max(0, len(self._base_rows(user_id)) + n_logged - n) if self._waiting(user_id) else 0
        return self._state_out(user_id, state, in_store=True, n=n, n_logged=n_logged,
                               updated_at=meta.get("updated_at"), pending=pending)

    # ------------------------------------------------------------------ writes
    def _rows_of(self, comparisons) -> list[Row]:
        rows = [Row(c.item_a, c.item_b, c.text_a, c.text_b, float(c.label), float(c.weight), c.context)
                for c in comparisons]
        items = [i for r in rows for i in (r.item_a, r.item_b) if i is not None]
        if items:
            self._check_items(items, "comparisons")
        if any(r.text_a is not None or r.text_b is not None for r in rows):
            self._check_texts_supported()
        return rows

    async def add_comparisons(self, user_id: str, comparisons, *, create_only: bool = False,
                              idempotency_key: str | None = None, request_sha256: str = "",
                              deferred: bool = False) -> dict:
        """Log ``comparisons`` of ``user_id`` durably and update their state (see the module docstring).
        With ``create_only`` the user must not exist yet (409 otherwise); with ``deferred`` the state
        is updated after the reply (the module docstring)."""
        self.require_ready()
        self._require_users()
        rows = self._rows_of(comparisons)
        async with self._locks.hold(user_id):
            if idempotency_key is not None:
                hit = self.log.idempotent_reply(idempotency_key)
                if hit is not None:
                    if hit[0] != user_id or hit[1] != request_sha256:
                        raise Invalid(f"Idempotency-Key {idempotency_key!r} was already used for another request")
                    return {**hit[2], "replayed": True}
            in_store = user_id in self.store
            history = self.log.history(user_id)
            if create_only and (in_store or history):
                raise Conflict(f"user {user_id!r} already exists; add comparisons with "
                               f"POST /v1/users/{{user_id}}/comparisons")
            if deferred:  # commit now, compute later (the updater)
                state_out, n = None, len(self._base_rows(user_id)) + len(history) + len(rows)
            else:
                state, n, contexts = await self._state_of(user_id, history, rows)
                state_out = self._state_out(user_id, state, in_store=True, n=n, n_logged=len(history) + len(rows),
                                            updated_at=time.time())
            created = not (in_store or history)

            def render(first: int, last: int) -> dict:
                return {"user_id": user_id, "accepted": len(rows), "first_seq": first, "last_seq": last,
                        "n_comparisons": n, "created": created, "state": state_out, "pending": deferred,
                        "replayed": False}

            idem = None if idempotency_key is None else Idempotent(idempotency_key, request_sha256, render)
            try:
                first, last = await asyncio.wrap_future(self.log.append(user_id, rows, idem))
            except IdempotencyConflict as err:
                raise Invalid(str(err)) from None
            if deferred:
                self._deferred.setdefault(user_id, []).append(first)
                self._start_updater()
            else:
                self._apply(user_id, state, n, contexts)  # on failure the write stays in flight: replayed on start
                # the state was computed from the whole logged history: earlier deferred writes are in it
                self._mark_applied([first] + self._take_waiting(user_id))
            return render(first, last)

    async def _state_of(self, user_id: str, history: list[Row], new: list[Row]):
        """:meth:`_compute` on the event loop for a small user (a few ms: see INLINE_COMPARISONS),
        otherwise in the compute thread while the event loop keeps serving reads."""
        if self._computes_inline(user_id, history, new):
            return self._compute(user_id, history, new)
        return await asyncio.get_running_loop().run_in_executor(self._compute_pool, self._compute,
                                                                user_id, history, new)

    def _mark_applied(self, firsts: list[int]) -> None:
        for first in firsts:
            self.log.applied(first)

    def _waiting(self, user_id: str) -> bool:
        """Whether the user has deferred writes not in their state yet (failed ones included)."""
        return user_id in self._deferred or user_id in self._failed

    def _take_waiting(self, user_id: str) -> list[int]:
        """Forget the user's deferred writes (pending and failed): their first sequence numbers."""
        return self._deferred.pop(user_id, []) + self._failed.pop(user_id, [])

    def _start_updater(self) -> None:
        if self._updater is None or self._updater.done():
            self._updater = asyncio.get_running_loop().create_task(self._run_updates())

    async def _run_updates(self) -> None:
        """Recompute the states of users with deferred writes, one user at a time, until none is left."""
        while self._deferred and self.ready:
            user_id = next(iter(self._deferred))
            async with self._locks.hold(user_id):
                # kept in _deferred while computing (so reads count them as pending); under the user's
                # lock no write or deletion of this user changes them meanwhile
                firsts = self._deferred.get(user_id)
                if not firsts:  # a "now" write or a deletion took them
                    self._deferred.pop(user_id, None)
                    continue
                try:
                    state, n, contexts = await self._state_of(user_id, self.log.history(user_id), [])
                    self._apply(user_id, state, n, contexts)
                except Exception as err:  # the writes stay in flight (replayed on start) until a later update
                    logger.error("deferred update of user %r failed (%s: %s); its writes stay in flight",
                                 user_id, type(err).__name__, err)
                    self.deferred_stats["failures"] += 1
                    self._failed.setdefault(user_id, []).extend(self._deferred.pop(user_id))
                    continue
                firsts = self._take_waiting(user_id)
                self._mark_applied(firsts)
                self.deferred_stats["updates"] += 1
                self.deferred_stats["writes_applied"] += len(firsts)
            await asyncio.sleep(0)  # let the event loop serve requests between users

    @property
    def n_deferred(self) -> int:
        """Users whose deferred writes are not in their state yet (failed ones included)."""
        return len(self._deferred.keys() | self._failed.keys())

    async def drain(self, timeout: float = 30.0) -> bool:
        """Wait (up to ``timeout`` s) until every deferred write is applied; whether they all are."""
        deadline = time.monotonic() + timeout
        while self._deferred and time.monotonic() < deadline:
            self._start_updater()
            await asyncio.sleep(0.01)
        return not self._deferred

    async def delete_user(self, user_id: str) -> dict:
        """Delete the user from the store, the log (comparisons and idempotency replies) and, before
        answering, from the snapshot on disk."""
        self.require_ready()
        self._require_users()
        async with self._locks.hold(user_id):
            in_store = user_id in self.store
            if not in_store and self.log.count(user_id) == 0:
                raise NotFound(f"unknown user {user_id!r}")
            n_rows, marker = await asyncio.wrap_future(self.log.delete_user(user_id))
            self._mark_applied(self._take_waiting(user_id))  # their rows are gone
            self._forgotten.add(user_hash(user_id))
            if user_id in self.store:
                self.store.remove([user_id])
            self._generation += 1
            self.log.applied(marker)
        await asyncio.to_thread(self.snapshot)
        return {"user_id": user_id, "deleted": True, "removed_comparisons": int(n_rows), "removed_from_store": in_store}

    # ------------------------------------------------------------------ reads
    def _read_state(self, user_id: str | None):
        """The user's stored state (None: the population reward); 404 for a user not stored."""
        if user_id is None:
            return None
        self._require_users()
        try:
            return library.stored_state(self.store, user_id)
        except KeyError:
            raise NotFound(f"unknown user {user_id!r}") from None

    def _read_user(self, user_id: str | None):
        """What the item index is given for the user (see ``library.user_for_index``); 404 for a
        user not stored."""
        if user_id is not None:
            self._require_users()
        try:
            return library.user_for_index(self.index, self.store, user_id)
        except KeyError:
            raise NotFound(f"unknown user {user_id!r}") from None

    def _judged(self, user_id: str) -> set[str]:
        judged = self.log.judged_items(user_id)
        base = self._base_rows(user_id)
        if len(base):
            data = self.run.data
            judged.update(data.item_ids[data.items_of(base)].tolist())
        return judged

    def score(self, user_id: str | None, item_ids: list[str] | None, texts: list[str] | None,
              prompt: str | None = None) -> dict:
        """Scores of catalog items and texts; texts under ``prompt`` for a prompt-aware run (a
        prompt-blind run ignores it: ``library.encode_texts``)."""
        self.require_ready()
        user = self._read_user(user_id)
        if texts:
            self._check_texts_supported()
        out = self._score_items(user, item_ids)
        if texts:
            out.extend(self._score_texts(self._read_state(user_id), texts,
                                         library.encode_texts(self.run, texts, prompt)))
        return {"user_id": user_id, "scores": out}

    def _score_items(self, user, item_ids) -> list[dict]:
        if not item_ids:
            return []
        self._check_items(item_ids, "item_ids")
        scores = dict(library.rank(self.index, user, list(dict.fromkeys(item_ids))))
        return [{"item_id": i, "score": float(scores[i])} for i in item_ids]

    def _score_texts(self, state, texts, features) -> list[dict]:
        values = library.score_features(self.run, features, state)
        return [{"text": t, "score": float(v)} for t, v in zip(texts, values.tolist())]

    def rank(self, user_id: str | None, candidates: list[str]) -> dict:
        self.require_ready()
        user = self._read_user(user_id)
        self._check_items(candidates, "candidates")
        return {"user_id": user_id, "ranked": [{"item_id": i, "score": float(s)}
                                               for i, s in library.rank(self.index, user, candidates)]}

    def recommend(self, user_id: str | None, n: int = 10, exclude_judged: bool = True,
                  exclude: Sequence[str] = (), candidates: Sequence[str] | None = None) -> dict:
        self.require_ready()
        user = self._read_user(user_id)
        if exclude:
            self._check_items(exclude, "exclude")
        if candidates is not None:
            self._check_items(candidates, "candidates")
        excluded = set(exclude)
        if exclude_judged and user_id is not None:
            excluded |= self._judged(user_id)
        text = self.run.data.item_text
        row_of = library.catalog_rows(self.run)
        items = library.top_n(self.index, user, n, sorted(excluded), candidates)
        return {"user_id": user_id, "items": [
            {"item_id": i, "score": float(s), "text": None if text is None else text[row_of[i]]} for i, s in items]}

    def batch_score(self, user_ids, item_ids, texts, prompt: str | None = None) -> dict:
        """:meth:`score` for many users; the texts are embedded once (under ``prompt``)."""
        self.require_ready()
        users = [self._read_user(u) for u in user_ids]  # every user checked before any work
        if item_ids:
            self._check_items(item_ids, "item_ids")
        features = None
        if texts:
            self._check_texts_supported()
            features = library.encode_texts(self.run, texts, prompt)
        results = []
        for u, user in zip(user_ids, users):
            scores = self._score_items(user, item_ids)
            if features is not None:
                scores.extend(self._score_texts(self._read_state(u), texts, features))
            results.append({"user_id": u, "scores": scores})
        return {"results": results}

    def batch_rank(self, user_ids, candidates) -> dict:
        self.require_ready()
        for u in user_ids:
            self._read_user(u)
        self._check_items(candidates, "candidates")
        return {"results": [self.rank(u, candidates) for u in user_ids]}

    def batch_recommend(self, user_ids, n: int, exclude_judged: bool) -> dict:
        self.require_ready()
        for u in user_ids:
            self._read_user(u)
        return {"results": [self.recommend(u, n, exclude_judged) for u in user_ids]}

    def _compared_pairs(self, user_id: str) -> set[tuple[int, int]]:
        row_of = library.catalog_rows(self.run)
        pairs = set()
        for r in self.log.history(user_id):
            if r.item_a is not None and r.item_b is not None:
                a, b = row_of[r.item_a], row_of[r.item_b]
                pairs.add((min(a, b), max(a, b)))
        base = self._base_rows(user_id)
        data = self.run.data
        for a, b in zip(data.item_a[base].tolist(), data.item_b[base].tolist()):
            pairs.add((min(a, b), max(a, b)))
        return pairs

    def next_question(self, user_id: str, pool_size: int, strategy: str) -> dict:
        """The comparison to ask ``user_id`` next: ``plural.ActiveSession`` from their current state over
        ``pool_size`` pairs they have not compared, drawn (seeded by the user and their count) from a
        fixed pool over the catalog. A user not stored yet starts from the population."""
        self.require_ready()
        self._require_users()
        if self.pool is None:
            raise Conflict("the catalog has fewer than two items: there is nothing to ask")
        if user_id in self.store:
            state = library.stored_state(self.store, user_id)
            n = int(library.store_metadata(self.store, user_id).get("n_comparisons", 0))
        else:
            state, n = self._population, 0
        a, b = self.pool.item_a, self.pool.item_b
        compared = self._compared_pairs(user_id)
        if compared:
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            done = np.fromiter(((x, y) in compared for x, y in zip(lo.tolist(), hi.tolist())), bool, len(a))
            rows = np.flatnonzero(~done)
        else:
            rows = np.arange(len(a))
        if len(rows) == 0:
            raise Conflict(f"user {user_id!r} has compared every pair of the question pool")
        seed = int.from_bytes(hashlib.sha256(f"{user_id}\x00{n}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        if len(rows) > pool_size:
            rows = np.sort(rng.choice(rows, pool_size, replace=False))
        i, score = library.next_question(self.run, self.pool, rows, state, strategy, seed % (2 ** 32))
        row = int(rows[i])
        ids, text = self.pool.item_ids, self.run.data.item_text
        row_of = library.catalog_rows(self.run)

        def item(k: int) -> dict:
            item_id = str(ids[k])
            return {"item_id": item_id, "text": None if text is None else text[row_of[item_id]]}

        return {"user_id": user_id, "item_a": item(int(a[row])), "item_b": item(int(b[row])),
                "score": None if math.isnan(score) else score, "strategy": strategy, "pool_size": int(len(rows)),
                "n_comparisons": n}

    def user_map(self, user_id: str | None, limit: int) -> dict:
        self.require_ready()
        m = self.map
        out = {"snapshot_seq": m.snapshot_seq, "computed_at": m.computed_at, "n_users": m.n_users,
               "explained_variance_ratio": m.explained, "points": np.round(m.points[:limit], 5).tolist(), "user": None}
        if user_id is not None:
            state = self._read_state(user_id)
            x, y = m.project(state.vector.numpy())
            out["user"] = {"x": x, "y": y}
        return out

    def items(self, offset: int, limit: int) -> dict:
        self.require_ready()
        ids, text = self.run.data.item_ids, self.run.data.item_text
        end = min(len(ids), offset + limit)
        return {"total": len(ids), "offset": offset, "items": [
            {"item_id": str(ids[i]), "text": None if text is None else text[i]} for i in range(offset, end)]}

    def deferred_summary(self) -> dict:
        """Deferred updates: users waiting, states recomputed, writes applied, failures."""
        return {"users_pending": self.n_deferred, **self.deferred_stats}

    def info(self) -> dict:
        run = self.run
        out = {"status": self.status, "ready": self.ready, "error": self.error, "run_dir": str(self.run_dir),
               "state_dir": str(self.state_dir), "uptime_s": round(time.time() - self.started_at, 3)}
        if self.ready:
            out.update({"model": run.model.name, "user_dim": int(getattr(run.model, "user_dim", 0) or 0),
                        "n_items": len(run.data.item_ids), "n_users": len(self.store) if self.store is not None else 0,
                        "texts_supported": run.texts_supported, "prompt_aware": run.prompt_aware,
                        "has_user_vectors": self.store is not None,
                        "model_fingerprint": run.fingerprint, "last_snapshot": self.last_snapshot,
                        "log": self.log.stats(), "deferred": self.deferred_summary()})
        return out
