"""Step 2, encode: windows -> parts, the points of each window with their vectors.

A window's points to write are encoded `window_chunks` at a time (at least one part per window,
so that the write step sees every window), so a huge document never holds all its vectors at
once. Vectors come from the embedding cache; the texts it lacks are encoded by the Encoder (the
swap point of an engine: any object with the Encoder interface) and cached. A text shared by
several points is encoded once. The write step asks the same object for the vectors of documents
it dead-letters or wrote late (they are in the cache by then).
"""

from __future__ import annotations

import threading
from contextlib import closing
from dataclasses import dataclass
from typing import Iterator

from connector.config import ProjectionConfig
from connector.encoders.base import Encoder
from connector.encoders.cache import EmbeddingCache
from connector.projection import Projection
from connector.records import Chunk, Point
from connector.steps.plan import DocPlan, Window
from connector.steps.report import SyncReport, busy



@dataclass
class Part:
    """Up to `window_chunks` points of a window, ready to write: (plan index, point)."""

    window: Window
    points: list[tuple[int, Point]]
    encoded: int  # points whose vector the model computed for them (one per distinct new text)
    cached: int  # the other points: vector from the embedding cache, or shared with a point of the same text
    cache_hits: int = 0  # of those, the points whose vector was read from the embedding cache


class EncodeStep:
    """Vectors for planned points (see the module doc). Safe to call from two threads (the encode
    and the write steps): one slice of texts at a time, under one lock, so neither waits long for
    the other and a text is never encoded twice."""

    def __init__(self, *, encoder: Encoder, cache: EmbeddingCache, projection: Projection | None,
                 projection_config: ProjectionConfig | None, window_chunks: int):
        self.encoder = encoder
        self.cache = cache
        self.projection = projection  # adds the legacy vector to each point
        self.projection_config = projection_config  # its output (dense kept or not) and field
        self.window_chunks = window_chunks
        self._lock = threading.Lock()

    def parts(self, windows: Iterator[Window], report: SyncReport,
              stop: threading.Event | None = None) -> Iterator[Part]:
        """Each window's points to write, `window_chunks` at a time (at least one part per window).
        Ends once `stop` is set (the write step stopped). `windows` (a generator: the plan step) is
        closed when this ends."""
        with closing(windows):  # stops the plan step when this step is stopped
            for window in windows:
                work = [(n, i) for n, plan in enumerate(window.plans) for i in plan.write]
                for start in range(0, max(len(work), 1), self.window_chunks):
                    if stop is not None and stop.is_set():  # the write step stopped: encode nothing more
                        return
                    with busy(report, "encode"):
                        part = self.encode_part(window, work[start : start + self.window_chunks], stop)
                    if part is None:  # the write step stopped while this part was encoded
                        return
                    yield part

    def encode_part(self, window: Window, work: list[tuple[int, int]],
                    stop: threading.Event | None = None) -> Part | None:
        """The points of `work` (plan index, chunk index) with their vectors; None if `stop` was set meanwhile."""
        done = self.points(window.plans, work, stop)
        if done is None:
            return None
        points, encoded = done
        hits = sum(1 for n, i in work if window.plans[n].chunks[i].sha256 not in encoded)
        return Part(window, points, len(encoded), len(work) - len(encoded), hits)

    def points(self, plans: list[DocPlan], work: list[tuple[int, int]], stop: threading.Event | None = None
               ) -> tuple[list[tuple[int, Point]], set[str]] | None:
        """The points of `work` (plan index, chunk index) with their vectors, as (plan index, point),
        and the sha256 of the texts encoded for them; None if `stop` was set first."""
        found = self.vectors_for([plans[n].chunks[i] for n, i in work], stop)
        if found is None:
            return None
        vectors, encoded = found
        points = [(n, self.point(plans[n].ids[i], vectors[plans[n].chunks[i].sha256], plans[n].payloads[i]))
                  for n, i in work]
        return points, encoded

    def vectors_for(self, chunks: list[Chunk], stop: threading.Event | None = None) -> tuple[dict, set[str]] | None:
        """Vectors by chunk sha256, from the embedding cache, the rest encoded (and cached); and
        the sha256 of the texts encoded. None if `stop` was set before every slice was encoded (the
        slices done are cached)."""
        texts = {c.sha256: c.text for c in chunks}
        with self._lock:  # the tokenizer too: it is not safe to use from two threads at once
            found = self.cache.get_many(texts)
            missing = [sha for sha in texts if sha not in found]
            if missing:
                self.encoder.start()  # a remote engine's workers start at the run's first text to encode
            per_call = self.encoder.texts_per_call
            if len(missing) > per_call:
                # by token count, longest first, so that each slice gives the encoder batches as full as
                # one call with every text would (its batches end where padding would exceed 2%)
                ids = self.encoder.tokenizer([texts[sha] for sha in missing], add_special_tokens=False,
                                             return_attention_mask=False)["input_ids"]
                tokens = {sha: len(i) for sha, i in zip(missing, ids)}
                missing.sort(key=lambda sha: -tokens[sha])
        encoded: set[str] = set()
        for start in range(0, len(missing), per_call):
            if stop is not None and stop.is_set():
                return None
            part = missing[start : start + per_call]
            with self._lock:
                done = self.cache.get_many(part)  # the other step may have encoded some meanwhile
                todo = [sha for sha in part if sha not in done]
                if todo:
                    done.update(zip(todo, self.encoder.encode([texts[sha] for sha in todo])))
                    self.cache.put_many({sha: done[sha] for sha in todo})
            found.update(done)
            encoded.update(todo)
        return found, encoded

    def point(self, pid: str, vectors, payload: dict) -> Point:
        """A point with its vectors: the dense one, the legacy one (projected), or both, as the
        projection config says."""
        p = self.projection
        if p is None:
            return Point(id=pid, dense=vectors.dense, sparse=vectors.sparse, payload=payload)
        legacy = p.apply(vectors.dense)
        dense = None if self.projection_config.output == "legacy" else vectors.dense
        return Point(id=pid, dense=dense, sparse=vectors.sparse, payload=payload,
                     extra={self.projection_config.field: legacy})
