"""Pipeline stages: run an iterator in its own thread, joined to the next stage by a bounded queue.

    windows = background(plan(documents), maxsize=2, name="plan")
    parts = background(encode(windows), maxsize=2, name="encode")
    for part in parts:
        write(part)

Each stage works ahead of its consumer by at most `maxsize` items, so memory stays bounded
however large the corpus is, while reading and chunking, encoding and writing overlap (the
encoder's torch or ONNX Runtime kernels and the stores' network calls release the GIL).

An exception in a stage is raised in its consumer, where the item would have arrived. When the
consumer stops early (an exception of its own, `break`, Ctrl-C), the stage is told to stop: it
finishes the item it is working on, closes its source iterator (so an upstream stage stops too)
and ends; nothing it produced after that is used.

With `tick=SECONDS` the consumer also receives TICK whenever no item arrived for that long, so
that it can do its own periodic work (the sync's write stage probes a store that is down)
while it waits for a slow producer.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()
TICK = object()  # see `tick` in the module doc
_POLL_S = 0.1  # how often a blocked stage checks whether its consumer has gone


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def background(items: Iterable[T], maxsize: int = 2, name: str = "stage", tick: float | None = None) -> Iterator[T]:
    """Iterate `items` in a daemon thread, `maxsize` items ahead of the caller (see the module doc)."""
    if maxsize < 1:
        raise ValueError(f"maxsize must be at least 1, not {maxsize}")
    out: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failed(err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=f"connector-{name}", daemon=True)
    thread.start()
    return _consume(out, stop, thread, tick)


def _consume(out: queue.Queue, stop: threading.Event, thread: threading.Thread, tick: float | None) -> Iterator:
    try:
        while True:
            try:
                item = out.get(timeout=tick)
            except queue.Empty:
                yield TICK
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a stage blocked on a full queue see the stop
            try:
                out.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        thread.join()
