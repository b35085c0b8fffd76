"""One encoder worker that coalesces concurrent requests into shared forward passes.

Request threads call `EncodeBatcher.encode(texts)`, which answers from an in-memory LRU cache
where it can and queues the rest. The worker takes the first waiting job, then keeps taking
jobs until the batch holds `max_batch` texts or `max_wait` seconds have passed, and encodes
them all in one `encoder.encode` call: ten clients cost one forward pass, not ten. The queue
is bounded in texts; past it `encode` raises QueueFull at once (the service answers 503).
The batcher has the encoder's interface (`encode`, `dimension`, `tokenizer`, `max_length`,
`colbert_error`), so `connector.api` functions take it in place of an encoder.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from connector.records import Vectors

_STOP = object()


class QueueFull(Exception):
    """The encoder queue holds as many texts as it may; the client should retry shortly."""


@dataclass
class _Job:
    texts: list[str]
    details: bool
    future: Future = field(default_factory=Future)


class VectorCache:
    """An LRU cache of Vectors by text hash, bounded in bytes. A text encoded with details also
    answers a request without them; the key includes the encoder's fingerprint."""

    def __init__(self, fingerprint: str, max_bytes: int):
        self.max_bytes = max_bytes
        self._prefix = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self._items: OrderedDict[tuple[str, bool], tuple[Vectors, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self._prefix}\0{text}".encode()).hexdigest()

    def get(self, key: str, details: bool) -> Vectors | None:
        with self._lock:
            for k in ((key, True),) if details else ((key, False), (key, True)):
                if k in self._items:
                    self._items.move_to_end(k)
                    return self._items[k][0]
        return None

    def put(self, key: str, details: bool, vectors: Vectors) -> None:
        size = _nbytes(vectors)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop((key, details), None)
            if old:
                self._bytes -= old[1]
            self._items[(key, details)] = (vectors, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    @property
    def size_bytes(self) -> int:
        return self._bytes


def _nbytes(v: Vectors) -> int:
    n = v.dense.nbytes + v.sparse.indices.nbytes + v.sparse.values.nbytes + 200
    if v.details is not None:
        n += v.details.token_ids.nbytes + v.details.token_weights.nbytes
        n += v.details.colbert.nbytes if v.details.colbert is not None else 0
    return n


class EncodeBatcher:
    """See the module docstring. `coalesce=False` encodes one request per forward pass (the
    baseline the benchmark compares with). `metrics` is a `connector.serve.metrics.ServiceMetrics`."""

    def __init__(self, encoder, *, max_batch: int = 32, max_wait: float = 0.005, max_queue: int = 512,
                 cache_mb: float = 256, coalesce: bool = True, metrics=None):
        self.encoder = encoder
        self.max_batch, self.max_wait, self.max_queue, self.coalesce = max_batch, max_wait, max_queue, coalesce
        self.metrics = metrics
        self.cache = VectorCache(repr(sorted(encoder.fingerprint.items())), int(cache_mb * 1024 * 1024))
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # texts queued or being encoded
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="connector-encoder", daemon=True)
        self._stopped = False

    # the encoder's interface -----------------------------------------------------------------
    dimension = property(lambda self: self.encoder.dimension)
    tokenizer = property(lambda self: self.encoder.tokenizer)
    max_length = property(lambda self: self.encoder.max_length)
    colbert_error = property(lambda self: self.encoder.colbert_error)
    fingerprint = property(lambda self: self.encoder.fingerprint)

    def encode(self, texts: Sequence[str], *, details: bool = False) -> list[Vectors]:
        """Vectors of `texts` from the cache or the shared worker; blocks until they are ready.
        Raises QueueFull when the queue cannot take the missing texts."""
        texts = list(texts)
        keys = [self.cache.key(t) for t in texts]
        found = [self.cache.get(k, details) for k in keys]
        missing = sorted({t for t, v in zip(texts, found) if v is None})
        if self.metrics:
            self.metrics.cache_hits.inc(len(texts) - sum(v is None for v in found))
            self.metrics.cache_misses.inc(sum(v is None for v in found))
        if missing:
            encoded = dict(zip(missing, self._submit(missing, details).result()))
            found = [v if v is not None else encoded[t] for t, v in zip(texts, found)]
        return found

    def _submit(self, texts: list[str], details: bool) -> Future:
        with self._lock:
            if self._stopped:
                raise QueueFull("the service is shutting down")
            if self._pending + len(texts) > self.max_queue:
                raise QueueFull(f"the encoder queue is full ({self._pending} texts waiting, at most {self.max_queue})")
            self._pending += len(texts)
            self._set_depth()
        job = _Job(texts, details)
        self._queue.put(job)
        return job.future

    def _set_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self._pending)

    # the worker ---------------------------------------------------------------------------
    def start(self) -> "EncodeBatcher":
        self._worker.start()
        return self

    def stop(self, timeout: float | None = 60) -> None:
        """Refuse new work, finish every queued job, then end the worker."""
        with self._lock:
            self._stopped = True
        self._queue.put(_STOP)
        if self._worker.is_alive():
            self._worker.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs, stop = self._collect(first)
            self._encode(jobs)
            if stop:
                return

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and, when coalescing, the jobs that arrive within max_wait, up to max_batch texts."""
        jobs, count = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while self.coalesce and count < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            count += len(job.texts)
        return jobs, False

    def _encode(self, jobs: list[_Job]) -> None:
        details = any(j.details for j in jobs)
        texts = list(dict.fromkeys(t for j in jobs for t in j.texts))  # each distinct text once
        started = time.perf_counter()
        try:
            vectors = dict(zip(texts, self.encoder.encode(texts, details=details)))
        except BaseException as err:  # every waiting request gets the error, the worker lives on
            for job in jobs:
                job.future.set_exception(err)
        else:
            if self.metrics:
                self.metrics.vectorize_seconds.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(texts))
            for text, v in vectors.items():
                self.cache.put(self.cache.key(text), details, v)
            for job in jobs:
                job.future.set_result([vectors[t] for t in job.texts])
        finally:
            with self._lock:
                self._pending -= sum(len(j.texts) for j in jobs)
                self._set_depth()
