"""The durable feedback log: every accepted comparison, in SQLite, committed before the reply.

Durability
----------
The log is one SQLite file, ``<state_dir>/feedback.sqlite``, in WAL mode with
``synchronous=FULL``. In WAL mode a commit appends to the ``-wal`` file; with ``FULL`` that file is
fsynced at every commit, so a comparison the service has acknowledged survives a process kill
(``kill -9``), an OS crash and a power loss. ``NORMAL`` would fsync the WAL only at checkpoints:
a commit would still survive ``kill -9`` (the pages are in the OS page cache) but the last
transactions could be lost on power loss or a kernel crash, and an acknowledgement is a promise
that should not depend on which of those happens. ``FULL`` costs one fsync per commit (about
4.5 ms on the development machine, so about 220 commits/s one at a time); the writer thread pays
it once per *group* of writes: it takes every write waiting in its queue (up to
:data:`MAX_GROUP`), commits them in one transaction, then answers them all, so under load many
acknowledgements share one fsync. A write whose own statement fails (an idempotency key taken
meanwhile) is rolled back alone through a savepoint; the rest of its group commits (a group of
one write takes no savepoint: its transaction is rolled back instead).

Tables
------
- ``comparisons(seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id, item_a, item_b, text_a, text_b,
  label, weight, context, created_at, idempotency_key)``: one row per accepted comparison; each
  side is a catalog item id or a text. ``AUTOINCREMENT`` never reuses a sequence number, even
  after a user's rows are deleted, so "everything up to seq W" stays meaningful for snapshots.
- ``idempotency(key PRIMARY KEY, user_id, request_sha256, response, created_at)``: the reply to
  a write made with an ``Idempotency-Key``, inserted in the same transaction as its comparisons,
  so a retry either finds both or neither.
- ``deletions(user_sha256 PRIMARY KEY, user_id, seq, deleted_at)``: a deleted user, by the
  sha256 of their id (kept, so a deleted training user is not re-seeded from the training data)
  and, until a snapshot taken after the deletion is on disk, by their plain id (so a restart from
  an older snapshot removes them again); ``seq`` is the last sequence number assigned when they
  were deleted.
- ``meta(key PRIMARY KEY, value)``: format version, the run served when the log was created.

Deleting a user deletes their comparisons and idempotency rows in one transaction, with
``secure_delete`` on (freed pages are zeroed) and a WAL checkpoint afterwards, so their rows do
not linger in the database file.

The watermark
-------------
A write is committed first and applied to the in-memory user store afterwards. Until it is
applied it is *in flight* (its first sequence number is held in a counter). :meth:`FeedbackLog.watermark`
is the largest W such that every sequence number up to W is committed and applied: a snapshot of
the store taken after reading W holds everything up to W, and on start the service replays
the users with rows after W.

Reads (histories, counts, idempotency look-ups) use one connection per thread and never wait for
the writer (WAL readers see the last commit).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_GROUP = 256
"""Most writes committed in one transaction (one fsync)."""
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS comparisons (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_a TEXT, item_b TEXT, text_a TEXT, text_b TEXT,
    label REAL NOT NULL CHECK (label IN (0.0, 0.5, 1.0)),
    weight REAL NOT NULL CHECK (weight >= 0),
    context TEXT,
    created_at REAL NOT NULL,
    idempotency_key TEXT,
    CHECK ((item_a IS NULL) <> (text_a IS NULL)),
    CHECK ((item_b IS NULL) <> (text_b IS NULL))
);
CREATE INDEX IF NOT EXISTS comparisons_by_user ON comparisons (user_id, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_by_user ON idempotency (user_id);
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency (created_at);
CREATE TABLE IF NOT EXISTS deletions (
    user_sha256 TEXT PRIMARY KEY,
    user_id TEXT,
    seq INTEGER NOT NULL,
    deleted_at REAL NOT NULL
);
"""


def user_hash(user_id: str) -> str:
    """sha256 hex of a user id: how the deletions table remembers a deleted user."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Row:
    """One logged comparison. Exactly one of ``item_a``/``text_a`` (and of ``item_b``/``text_b``) is set."""

    item_a: str | None
    item_b: str | None
    text_a: str | None
    text_b: str | None
    label: float
    weight: float = 1.0
    context: str | None = None
    seq: int | None = None


class IdempotencyConflict(Exception):
    """An idempotency key already names another request."""


@dataclass
class Idempotent:
    """What a write with an ``Idempotency-Key`` stores: the key, the request's hash and its reply,
    rendered from the sequence numbers the write gets (``render(first_seq, last_seq) -> dict``)."""

    key: str
    request_sha256: str
    render: Callable[[int, int], dict]


@dataclass
class _Append:
    user_id: str
    rows: list[Row]
    idempotent: Idempotent | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class _Delete:
    user_id: str
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class _Maintain:
    """Housekeeping after a snapshot of watermark ``upto_seq``: forget the plain ids of deletions
    with ``seq < upto_seq`` (such a deletion was applied before the watermark was read, so the
    snapshot does not hold the user) and drop idempotency rows older than ``older_than``."""

    upto_seq: int
    older_than: float | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class FeedbackLog:
    """The SQLite log of accepted comparisons (see the module docstring).

    Args:
        path: the database file (created with its tables if missing).
        meta: facts recorded when the file is created (e.g. the run served); compared, with a
            warning, when it is opened again.
        synchronous: ``"FULL"`` (the default, see the module docstring) or ``"NORMAL"``.
    """

    def __init__(self, path: str | Path, meta: dict[str, str] | None = None, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the watermark state
        self._in_flight: collections.Counter[int] = collections.Counter()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self.n_commits = 0
        self.n_writes = 0
        conn = self._connect()
        with conn:
            conn.executescript(_SCHEMA)
        self._check_meta(conn, dict(meta or {}))
        self._max_committed = self.last_seq()
        self._writer = threading.Thread(target=self._run_writer, name="plural-feedback-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _check_meta(self, conn: sqlite3.Connection, meta: dict[str, str]) -> None:
        stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = stored.get("format_version")
        if version is not None and int(version) != FORMAT_VERSION:
            raise RuntimeError(f"{self.path} is a feedback log of format {version}; this service reads "
                               f"format {FORMAT_VERSION}")
        if not stored:
            with conn:
                conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                 [("format_version", str(FORMAT_VERSION)), ("created_at", repr(time.time()))]
                                 + [(k, str(v)) for k, v in meta.items()])
            return
        for key, value in meta.items():
            if key in stored and stored[key] != str(value):
                logger.warning("%s was created with %s=%r, now %r: its comparisons are replayed for the "
                               "model now served", self.path, key, stored[key], value)

    # ------------------------------------------------------------------ the writer
    def _submit(self, op) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError("the feedback log is closed")
        self._queue.put(op)
        return op.future

    def append(self, user_id: str, rows: list[Row], idempotent: Idempotent | None = None) -> concurrent.futures.Future:
        """Queue ``rows`` of ``user_id`` for the next group commit. The future resolves to
        ``(first_seq, last_seq)`` once they are durable (and ``first_seq`` is then in flight until
        :meth:`applied`), or raises :class:`IdempotencyConflict`."""
        if not rows:
            raise ValueError("no comparisons to append")
        return self._submit(_Append(user_id, list(rows), idempotent))

    def delete_user(self, user_id: str) -> concurrent.futures.Future:
        """Queue the deletion of every row of ``user_id``; resolves to ``(n_rows_deleted, marker_seq)``
        (``marker_seq`` in flight until :meth:`applied`)."""
        return self._submit(_Delete(user_id))

    def maintain(self, upto_seq: int, older_than: float | None = None) -> concurrent.futures.Future:
        """Forget the plain ids of deletions with ``seq < upto_seq`` (a snapshot of watermark
        ``upto_seq`` is on disk, and does not hold them) and drop idempotency rows created before
        ``older_than`` (epoch seconds)."""
        return self._submit(_Maintain(upto_seq, older_than))

    def _run_writer(self) -> None:
        conn = self._connect()
        while True:
            op = self._queue.get()
            if op is None:
                break
            group = [op]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._commit_group(conn, group)
            if stop:
                break
        conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list) -> None:
        results: list[tuple[Any, Any, BaseException | None]] = []
        checkpoint = False
        alone = len(group) == 1  # no savepoint: a failed write rolls its own (one-write) transaction back
        rolled_back = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in group:
                if not alone:
                    conn.execute("SAVEPOINT op")
                try:
                    result = self._execute(conn, op)
                    if not alone:
                        conn.execute("RELEASE op")
                    results.append((op, result, None))
                    checkpoint |= isinstance(op, _Delete)
                except (IdempotencyConflict, sqlite3.IntegrityError, ValueError) as err:
                    if alone:
                        conn.execute("ROLLBACK")
                        rolled_back = True
                    else:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                    results.append((op, None, err))
            if not rolled_back:
                conn.execute("COMMIT")
        except BaseException as err:  # the whole group failed to commit: nothing of it is durable
            logger.exception("feedback log: a group of %d writes failed to commit", len(group))
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for op in group:
                if not op.future.done():
                    op.future.set_exception(err if isinstance(err, Exception) else RuntimeError(str(err)))
            return
        with self._lock:  # committed: register what is in flight before anyone learns of it
            self.n_commits += 1
            for op, result, err in results:
                if err is None and isinstance(op, _Append):
                    self._in_flight[result[0]] += 1
                    self._max_committed = max(self._max_committed, result[1])
                    self.n_writes += len(op.rows)
                elif err is None and isinstance(op, _Delete):
                    self._in_flight[result[1]] += 1
        for op, result, err in results:
            if err is None:
                op.future.set_result(result)
            else:
                op.future.set_exception(err if isinstance(err, IdempotencyConflict) else ValueError(str(err)))
        if checkpoint:  # a deleted user's pages out of the WAL too (best effort)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                logger.warning("feedback log: checkpoint after a deletion failed: %s", err)

    def _execute(self, conn: sqlite3.Connection, op) -> Any:
        now = time.time()
        if isinstance(op, _Append):
            key = op.idempotent.key if op.idempotent else None
            if key is not None:
                hit = conn.execute("SELECT user_id, request_sha256 FROM idempotency WHERE key = ?", (key,)).fetchone()
                if hit is not None:
                    raise IdempotencyConflict(f"Idempotency-Key {key!r} was already used for another request")
            first = last = None
            for r in op.rows:
                cur = conn.execute(
                    "INSERT INTO comparisons (user_id, item_a, item_b, text_a, text_b, label, weight, context, "
                    "created_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (op.user_id, r.item_a, r.item_b, r.text_a, r.text_b, float(r.label), float(r.weight),
                     r.context, now, key))
                last = cur.lastrowid
                first = last if first is None else first
            if op.idempotent is not None:
                response = json.dumps(op.idempotent.render(first, last), allow_nan=False)
                conn.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)",
                             (key, op.user_id, op.idempotent.request_sha256, response, now))
            return first, last
        if isinstance(op, _Delete):
            n = conn.execute("DELETE FROM comparisons WHERE user_id = ?", (op.user_id,)).rowcount
            conn.execute("DELETE FROM idempotency WHERE user_id = ?", (op.user_id,))
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'comparisons'").fetchone()
            seq = int(seq[0]) if seq else 0
            conn.execute("INSERT OR REPLACE INTO deletions VALUES (?, ?, ?, ?)",
                         (user_hash(op.user_id), op.user_id, seq, now))
            return n, seq
        if isinstance(op, _Maintain):
            conn.execute("UPDATE deletions SET user_id = NULL WHERE seq < ? AND user_id IS NOT NULL", (op.upto_seq,))
            dropped = 0
            if op.older_than is not None:
                dropped = conn.execute("DELETE FROM idempotency WHERE created_at < ?", (op.older_than,)).rowcount
            return dropped
        raise TypeError(f"unknown log operation {op!r}")

    # ------------------------------------------------------------------ the watermark
    def applied(self, seq: int) -> None:
        """The write (or deletion) registered in flight under ``seq`` is now applied to the store."""
        with self._lock:
            self._in_flight[seq] -= 1
            if self._in_flight[seq] <= 0:
                del self._in_flight[seq]

    def watermark(self) -> int:
        """The largest W such that every sequence number up to W is committed and applied."""
        with self._lock:
            if self._in_flight:
                return min(self._in_flight) - 1
            return self._max_committed

    @property
    def n_in_flight(self) -> int:
        with self._lock:
            return sum(self._in_flight.values())

    # ------------------------------------------------------------------ reads
    def last_seq(self) -> int:
        """The last sequence number ever assigned (0 for an empty log)."""
        row = self._reader().execute("SELECT seq FROM sqlite_sequence WHERE name = 'comparisons'").fetchone()
        return int(row[0]) if row else 0

    def history(self, user_id: str) -> list[Row]:
        """Every logged comparison of ``user_id``, oldest first."""
        rows = self._reader().execute(
            "SELECT item_a, item_b, text_a, text_b, label, weight, context, seq FROM comparisons "
            "WHERE user_id = ? ORDER BY seq", (user_id,)).fetchall()
        return [Row(*r) for r in rows]

    def count(self, user_id: str | None = None) -> int:
        """Logged comparisons of ``user_id`` (of everyone for None)."""
        if user_id is None:
            return int(self._reader().execute("SELECT COUNT(*) FROM comparisons").fetchone()[0])
        return int(self._reader().execute("SELECT COUNT(*) FROM comparisons WHERE user_id = ?",
                                          (user_id,)).fetchone()[0])

    def judged_items(self, user_id: str) -> set[str]:
        """Catalog item ids in ``user_id``'s logged comparisons."""
        rows = self._reader().execute(
            "SELECT item_a FROM comparisons WHERE user_id = ? AND item_a IS NOT NULL UNION "
            "SELECT item_b FROM comparisons WHERE user_id = ? AND item_b IS NOT NULL", (user_id, user_id)).fetchall()
        return {r[0] for r in rows}

    def users_after(self, seq: int) -> list[str]:
        """Users with a logged comparison after ``seq``, in the order of their first such row."""
        rows = self._reader().execute(
            "SELECT user_id, MIN(seq) AS first FROM comparisons WHERE seq > ? GROUP BY user_id ORDER BY first",
            (seq,)).fetchall()
        return [r[0] for r in rows]

    def deletions_after(self, seq: int) -> list[str]:
        """Plain ids of users whose deletion has a marker ``>= seq``: a snapshot of watermark ``seq``
        may still hold them (a deletion committed while the watermark was read carries the
        watermark itself as its marker)."""
        rows = self._reader().execute(
            "SELECT user_id FROM deletions WHERE seq >= ? AND user_id IS NOT NULL ORDER BY seq", (seq,)).fetchall()
        return [r[0] for r in rows]

    def deleted_hashes(self) -> set[str]:
        """sha256 of every user id ever deleted."""
        return {r[0] for r in self._reader().execute("SELECT user_sha256 FROM deletions").fetchall()}

    def idempotent_reply(self, key: str) -> tuple[str, str, dict] | None:
        """``(user_id, request_sha256, reply)`` stored under an idempotency key, or None."""
        row = self._reader().execute("SELECT user_id, request_sha256, response FROM idempotency WHERE key = ?",
                                     (key,)).fetchone()
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def stats(self) -> dict:
        return {"path": str(self.path), "synchronous": self.synchronous, "last_seq": self.last_seq(),
                "watermark": self.watermark(), "in_flight": self.n_in_flight, "commits": self.n_commits,
                "comparisons_written": self.n_writes, "queued": self._queue.qsize()}

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, stop the writer and close this thread's reader."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
