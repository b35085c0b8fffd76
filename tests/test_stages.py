"""connector.stages.background: order, bounded look-ahead, errors raised in the consumer, and a
consumer that stops early stopping its stages."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest

from connector.stages import background


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def settle(read: list) -> int:
    """The count once it stopped growing for 0.3 s (the producer is blocked)."""
    last = -1
    while len(read) != last:
        last = len(read)
        time.sleep(0.3)
    return last


def test_items_arrive_in_order_and_all_of_them():
    assert list(background(iter(range(1000)), maxsize=3)) == list(range(1000))
    assert list(background([], maxsize=1)) == []


def test_the_producer_works_ahead_by_at_most_maxsize_items():
    read = []

    def produce():
        for n in range(100):
            read.append(n)
            yield n

    items = background(produce(), maxsize=2)
    assert next(items) == 0
    # the consumer holds item 0; the queue holds 2 more; the producer holds the one it cannot put
    assert settle(read) == 1 + 2 + 1
    assert next(items) == 1
    assert settle(read) == 5
    assert list(items) == list(range(2, 100))


def test_an_error_in_the_stage_is_raised_in_the_consumer_after_the_items_before_it():
    def produce():
        yield 1
        yield 2
        raise KeyError("source broke")

    got = []
    with pytest.raises(KeyError, match="source broke"):
        for item in background(produce(), maxsize=1):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_and_closes_the_chain():
    closed = threading.Event()
    read = []

    def produce():
        try:
            for n in range(10**9):
                read.append(n)
                yield n
        finally:
            closed.set()

    def double(items):
        with closing(items):  # a stage closes its input when it is stopped (as the sync's stages do)
            for item in items:
                yield 2 * item

    stage1 = background(produce(), maxsize=1, name="one")
    stage2 = background(double(stage1), maxsize=1, name="two")
    with pytest.raises(RuntimeError):
        for item in stage2:
            if item == 10:
                raise RuntimeError("the consumer failed")
    stage2.close()
    assert wait_until(closed.is_set), "the first stage was never closed"
    n = len(read)
    time.sleep(0.3)
    assert len(read) == n, "the first stage still reads"
    assert not any(t.name.startswith("connector-") and t.is_alive() for t in threading.enumerate())


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError, match="maxsize"):
        background([1], maxsize=0)
