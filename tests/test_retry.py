"""The retry policy: only transient errors, backoff schedule from the config, bounded, logged."""

import logging

import numpy as np
import pytest

from connector.config import RetryConfig
from connector.errors import BatchTooLargeError, TerminalError, TransientError
from connector.records import Point, SparseVector
from connector.retry import RetryPolicy
from connector.schemas_layout import load_layout
from connector.sinks.base import Sink


class Flaky:
    """Fails `failures` times with `error`, then returns 'ok'."""

    def __init__(self, failures, error):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def policy(sleeps, **overrides):
    config = RetryConfig(**{"attempts": 5, "initial_wait": 0.5, "multiplier": 2, "max_wait": 3, "jitter": 0, **overrides})
    return RetryPolicy(config, sleep=sleeps.append)


def test_backoff_follows_the_config_without_sleeping():
    sleeps = []
    fn = Flaky(4, TransientError("store down"))
    assert policy(sleeps).call("upsert", fn) == "ok"
    assert fn.calls == 5
    assert sleeps == [0.5, 1.0, 2.0, 3.0]  # exponential, capped at max_wait


def test_jitter_stays_within_its_bound():
    sleeps = []
    fn = Flaky(4, TransientError("store down"))
    policy(sleeps, jitter=0.25, max_wait=100).call("upsert", fn)
    for wait, base in zip(sleeps, [0.5, 1.0, 2.0, 4.0]):
        assert base <= wait <= base + 0.25


def test_gives_up_after_attempts_and_reports_them():
    sleeps = []
    fn = Flaky(10, TransientError("store down"))
    with pytest.raises(TransientError) as err:
        policy(sleeps, attempts=3).call("upsert", fn)
    assert fn.calls == 3 and len(sleeps) == 2 and err.value.attempts == 3


def test_terminal_errors_are_not_retried():
    sleeps = []
    fn = Flaky(10, TerminalError("dimension mismatch"))
    with pytest.raises(TerminalError) as err:
        policy(sleeps).call("upsert", fn)
    assert fn.calls == 1 and sleeps == [] and err.value.attempts == 1


def test_unknown_exceptions_are_not_retried():
    sleeps = []
    fn = Flaky(10, ValueError("bug"))
    with pytest.raises(ValueError):
        policy(sleeps).call("upsert", fn)
    assert fn.calls == 1 and sleeps == []


def test_total_time_bounds_the_retries():
    fn = Flaky(10_000, TransientError("store down"))
    config = RetryConfig(attempts=10_000, initial_wait=0.01, max_wait=0.01, jitter=0, max_total_seconds=0.2)
    with pytest.raises(TransientError):
        RetryPolicy(config).call("upsert", fn)  # real sleeps of 10 ms: stops on time, not on attempts
    assert 2 <= fn.calls < 10_000


def test_each_retry_is_logged_with_attempt_and_wait(caplog):
    sleeps = []
    with caplog.at_level(logging.WARNING, logger="connector.retry"):
        policy(sleeps).call("upsert on collection 'kb'", Flaky(2, TransientError("connection refused")))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("upsert on collection 'kb' failed (attempt 1 of 5), retrying in 0.50s")
    assert "attempt 2 of 5" in messages[1] and "1.00s" in messages[1] and "connection refused" in messages[1]


class MemorySink(Sink):
    """A fake store (unit tests of the base class only): refuses batches above `limit` as too large."""

    def __init__(self, limit):
        super().__init__("kb", batch_size=8, layout=load_layout())
        self.limit, self.calls, self.points = limit, [], {}

    def _upsert(self, points):
        self.calls.append(len(points))
        if len(points) > self.limit:
            raise BatchTooLargeError("request too large")
        self.points.update({p.id: p for p in points})

    def _describe(self): ...
    def _create(self, dense_size): ...
    def _delete(self, ids): ...
    def _search_dense(self, vector, limit): ...
    def _search_sparse(self, vector, limit): ...
    def _retrieve(self, ids, with_vectors=False): ...
    def iter_ids(self): ...
    def _count(self): ...
    def _drop(self): ...


def make_points(n):
    payload = dict.fromkeys(["text", "doc_id", "chunk_index", "char_start", "char_end", "content_hash", "metadata"])
    return [Point(f"p{i}", np.ones(4, np.float32), SparseVector.empty(), payload) for i in range(n)]


def test_a_batch_too_large_is_split_in_halves():
    sink = MemorySink(limit=3)
    sink.upsert(make_points(8))
    assert sorted(sink.points) == sorted(f"p{i}" for i in range(8))
    assert sink.calls == [8, 4, 2, 2, 4, 2, 2]


def test_a_single_point_too_large_is_an_error():
    sink = MemorySink(limit=0)
    with pytest.raises(BatchTooLargeError):
        sink.upsert(make_points(2))


def test_with_a_breaker_a_call_after_a_failed_one_is_tried_once_and_an_open_circuit_sends_nothing():
    from connector.retry import CircuitBreaker, CircuitOpenError

    sleeps = []
    retry = policy(sleeps)
    retry.breaker = CircuitBreaker(threshold=3, clock=lambda: 0.0)
    down = Flaky(100, TransientError("connection refused"))
    for _ in range(3):
        with pytest.raises(TransientError):
            retry.call("upsert", down)
    assert down.calls == 5 + 1 + 1  # the whole schedule once, then one attempt per call
    assert retry.breaker.is_open
    with pytest.raises(CircuitOpenError, match="not tried"):
        retry.call("upsert", down)
    assert down.calls == 7
    retry.breaker.succeeded()  # a probe got through
    assert retry.call("upsert", Flaky(0, None)) == "ok" and retry.breaker.failures == 0
    bad = Flaky(1, TerminalError("bad request"))
    with pytest.raises(TerminalError):
        retry.call("upsert", bad)
    assert retry.breaker.failures == 0 and not retry.breaker.is_open  # the store answered
