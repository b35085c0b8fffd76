"""The counts of one sync (SyncReport), and the busy time of each step."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator


@dataclass
class SyncReport:
    """Counts of one sync (or of a dry run: what it would do).

    `chunks` counts points: `upserted` written with their vectors, `payload_updated` whose payload
    alone was rewritten (their text is unchanged, only its position or the volatile metadata
    moved), `deleted`, `failed` (kept as dead letters); and of
    the points given vectors, `encoded` those the model encoded (a text shared by several points is
    encoded once, for one of them) and `cached` the others, whose vector came from the embedding
    cache or from a point of the same text. Without failures, encoded + cached == upserted.
    `cache_hits` counts the points whose vector was read from the embedding cache (a part of `cached`).

    `seconds`: `total` the wall time of the run; `plan`, `encode` and `write` the time each stage
    was busy (reading and chunking; encoding; writing the store and the ledger, waiting for a
    store that is down included). The stages run in parallel threads, so their sum may exceed
    `total`; a stage's time waiting for the one before it is not counted."""

    dry_run: bool = False
    documents: dict = field(
        default_factory=lambda: dict.fromkeys(["seen", "new", "changed", "unchanged", "deleted", "failed"], 0)
    )
    chunks: dict = field(
        default_factory=lambda: dict.fromkeys(["encoded", "cached", "upserted", "payload_updated", "deleted",
                                               "failed"], 0)
    )
    failures: list = field(default_factory=list)  # [{doc_id, reason, dead_letter?}]
    errors: list = field(default_factory=list)  # problems not tied to one document: [{operation, reason, ...}]
    warnings: list = field(default_factory=list)  # things the run noticed and repaired by itself
    stopped: bool = False  # on_error: stop, or a store down too long, ended the sync early
    changes: list = field(default_factory=list)  # dry run only: [{doc_id, action, ...}]
    outages: list = field(default_factory=list)  # store outages: [{started, ended (None: still down), probes}]
    not_written: int = 0  # documents set aside while the store was down and never written (outage too long)
    cache_hits: int = 0  # points whose vector was read from the embedding cache
    seconds: dict = field(default_factory=lambda: dict.fromkeys(["plan", "encode", "write", "total"], 0.0))

    ignore_kinds: tuple = ()  # failure kinds the config ignores (still reported, exit code 0)

    @property
    def exit_code(self) -> int:
        counted = [f for f in self.failures if f.get("kind") not in self.ignore_kinds]
        return 3 if counted or self.errors else 0

    def to_json(self) -> dict:
        out = {"dry_run": self.dry_run, "documents": self.documents, "chunks": self.chunks,
               "failures": self.failures, "errors": self.errors, "warnings": self.warnings, "stopped": self.stopped,
               "outages": self.outages, "documents_not_written": self.not_written,
               "embedding_cache_hits": self.cache_hits, "seconds": self.timings()}
        if self.dry_run:
            out["changes"] = self.changes
        return out

    def timings(self) -> dict:
        """`seconds`, to the millisecond."""
        return {stage: round(value, 3) for stage, value in self.seconds.items()}

    @property
    def dead_letters(self) -> int:
        """Dead letters this run recorded."""
        return len({f["dead_letter"] for f in self.failures if "dead_letter" in f})



@contextmanager
def busy(report: SyncReport, stage: str):
    """Add the time the block takes to the stage's busy seconds."""
    started = time.perf_counter()
    try:
        yield
    finally:
        report.seconds[stage] += time.perf_counter() - started


_END = object()


def busy_items(items: Iterable, report: SyncReport, stage: str) -> Iterator:
    """`items`, adding the time spent producing each item to the stage's busy seconds (not the
    time the consumer holds it, nor the time it waits to take the next)."""
    iterator = iter(items)
    try:
        while True:
            with busy(report, stage):
                item = next(iterator, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
