"""The feedback log's group commit, one write at a time and in groups: a write that fails (an
idempotency key already taken) leaves nothing behind, and the log goes on."""

from __future__ import annotations

import sqlite3

import pytest

from apps.server.feedback import FeedbackLog, Idempotent, IdempotencyConflict, Row


def _rows(n: int) -> list[Row]:
    return [Row(f"i{k}", f"i{k + 1}", None, None, 1.0) for k in range(n)]


def _stored(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT seq, user_id FROM comparisons ORDER BY seq").fetchall()


def test_a_lone_write_that_fails_leaves_nothing_and_the_log_goes_on(tmp_path):
    log = FeedbackLog(tmp_path / "log.sqlite")
    try:
        idem = Idempotent("key-1", "sha", lambda first, last: {"first_seq": first, "last_seq": last})
        assert log.append("a", _rows(2), idem).result(10) == (1, 2)
        again = Idempotent("key-1", "other", lambda first, last: {})
        with pytest.raises(IdempotencyConflict):
            log.append("b", _rows(3), again).result(10)
        assert log.append("c", _rows(1)).result(10) == (3, 3)
        for seq in (1, 3):
            log.applied(seq)
        assert [u for _, u in _stored(tmp_path / "log.sqlite")] == ["a", "a", "c"]
        assert log.watermark() == 3 and log.history("b") == []
    finally:
        log.close()


def test_a_failed_write_in_a_group_is_rolled_back_alone(tmp_path):
    log = FeedbackLog(tmp_path / "log.sqlite")
    try:
        log.append("a", _rows(1), Idempotent("k", "sha", lambda f, l: {})).result(10)
        group = [("b", _rows(2), None), ("c", _rows(1), Idempotent("k", "x", lambda f, l: {})), ("d", _rows(1), None)]
        # queue them together, so the writer takes them as one group (it may still split them)
        futures = [log.append(u, rows, idem) for u, rows, idem in group]
        assert futures[0].result(10)[1] - futures[0].result(10)[0] == 1
        with pytest.raises(IdempotencyConflict):
            futures[1].result(10)
        futures[2].result(10)
        assert sorted({u for _, u in _stored(tmp_path / "log.sqlite")}) == ["a", "b", "d"]
    finally:
        log.close()
