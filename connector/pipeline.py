"""Sync planning and the staged run: source -> preprocess -> chunk -> encode -> sink -> ledger.

Three stages, each in its own thread, joined by bounded queues (connector/stages.py):
  plan    read documents, skip the unchanged ones (ledger), clean and chunk the rest, and group
          them in windows of a few hundred chunks to write (so the encoder gets full batches
          across small documents);
  encode  vectors for each window's chunks from the embedding cache, the rest encoded (and
          cached), in parts of at most WINDOW_CHUNKS points (a huge document never holds all
          its vectors at once);
  write   (the calling thread) upsert each part batch by batch, commit the documents whose
          points the store has all confirmed (one ledger transaction per batch), then delete
          their stale points.
So reading and writing overlap encoding, and memory stays flat however large the corpus: each
stage is at most QUEUE_DEPTH items ahead of the next. Only the write stage writes the ledger.

Crash safety, in the order of writes:
  1. before a batch goes to the store, the ledger marks its points in flight (unknown ids are
     queued for deletion, known ones and their documents marked dirty);
  2. the store takes the batch;
  3. the ledger commits the finished documents, which takes their points off the delete queue
     and queues their stale points;
  4. the store deletes the stale points, and the ledger drops them from the queue.
A crash between any two steps leaves a state the next run converges from: it first deletes
what is queued, then rewrites every document that is not committed as it is in the source.

When the store is down (connector.retry.CircuitBreaker): before anything is read, the store must
answer and the collection match the layout. A batch that fails every retry with a transient
error sets its documents aside (spilled to a temporary file, see DeferredPlans), and once a few
calls in a row failed the circuit opens: no more store calls, but reading and encoding go on
(the vectors land in the embedding cache). The write stage probes the store at growing
intervals; when it answers, the documents set aside are written (vectors from the cache). A store
down longer than retry.outage_budget_seconds stops the sync; the next sync writes what this one
encoded without encoding it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections import Counter
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from connector.config import QdrantSinkConfig, SyncConfig
from connector.encoders.base import Encoder
from connector.encoders.cache import EmbeddingCache
from connector.errors import StoreError, StoreUnreachableError, TransientError
from connector.ledger import DocCommit, Ledger, LedgerChunk
from connector.ownership import claim
from connector.locations import public_url
from connector.preprocess.chunking import CHUNKING_VERSION_KEY, chunking_version, fingerprint_settings, make_chunker
from connector.preprocess.factory import document_text_settings, make_preprocessor
from connector.records import (REFUSED_KINDS, Chunk, Document, FailedDocument, Point, UnchangedFile, point_id,
                               points_to_bytes)
from connector.sinks.base import Sink
from connector.retry import CircuitBreaker
from connector.stages import TICK, background
from connector.sources.base import Source

log = logging.getLogger("connector.sync")

WINDOW_CHUNKS = 1024  # chunks gathered before encoding; bounds memory, gives the encoder texts to sort by length
QUEUE_DEPTH = 2  # windows (parts) a stage may work ahead of the next
ENCODE_SLICE = 32  # texts per encoder call: how long a stopping sync, or the write stage's cache read, may wait
TICK_SECONDS = 1.0  # while waiting for the encoder, the write stage checks a store that is down this often
VOLATILE_METADATA = ("modified",)  # metadata that alone does not make a document "changed"


# json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str), with its encoder built once (json.dumps
# builds one per call with these options: a third of the time verify spends per point)
_STABLE_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


def stable_hash(obj) -> str:
    return hashlib.sha256(_STABLE_JSON.encode(obj).encode()).hexdigest()


def stable_metadata(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k not in VOLATILE_METADATA}


def volatile_hash(metadata: dict) -> str:
    """The volatile metadata a document's points carry: when it moves (a file touched, its text
    unchanged), the points get a payload-only update."""
    return stable_hash({k: metadata[k] for k in VOLATILE_METADATA if k in metadata})


def document_hash(doc: Document) -> str:
    return stable_hash({"text": doc.text, "metadata": stable_metadata(doc.metadata)})


# The text settings (document_text_settings) shape the cleaned text, which the payload, hence the
# chunk key, already holds: so they decide whether a document is read again (they are part of its
# content hash), not whether its points are rewritten (they are not part of the fingerprint). A
# config that changes a rule, or moves it to queries, re-reads every document and rewrites only
# those whose cleaned text changed. Fingerprints once held those settings: they keep the default
# value, so that stores synced with the default settings keep their chunk keys.
DEFAULT_TEXT_SETTINGS = {"preprocess": {"normalize_unicode": True, "abbreviations": {}, "drop_symbols": []}}


def content_hash_for(doc: Document, text_settings: dict) -> str:
    """What decides whether a document must be read again: its text and metadata, and the text
    settings it is cleaned with (left out when they are the defaults, as before they were part of it)."""
    if text_settings == DEFAULT_TEXT_SETTINGS:
        return document_hash(doc)
    return stable_hash({"document": document_hash(doc), "text_settings": text_settings})


def chunk_key(payload: dict, fingerprint: str) -> str:
    """What the ledger records per point: a hash of its payload (less volatile metadata) and of
    the pipeline fingerprint. A point is rewritten when its key changes."""
    metadata = stable_metadata(payload.get("metadata") or {})
    return stable_hash({"payload": {**payload, "metadata": metadata}, "fingerprint": fingerprint})


def error_kind(err: Exception) -> str:
    return "transient" if isinstance(err, TransientError) else "terminal"


def sink_target(config: SyncConfig) -> str:
    """A secret-free description of the store + collection a config writes to."""
    s = config.sink
    where = s.path if getattr(s, "path", None) is not None else getattr(s, "url", None) or getattr(s, "uri", "")
    kind = s.type
    if isinstance(s, QdrantSinkConfig) and s.path is not None:
        from connector.sinks.qdrant_edge import EDGE, resolve_engine

        if resolve_engine(s.path, s.engine) == EDGE:
            kind = "qdrant-edge"  # a ledger bound to one embedded engine never switches to the other
    return f"{kind}:{public_url(str(where))}#{s.collection}"  # no user:password@ or ?api-key=...


def chunk_metadata(metadata: dict, spans: list[tuple[int, int, dict]], chunk: Chunk) -> dict:
    """The document's metadata plus, per section key, the values of the sections the chunk
    overlaps: a chunk over PDF pages 2 and 3 gets `pages: [2, 3]`."""
    if not spans:
        return metadata
    merged: dict[str, list] = {}
    for start, end, meta in spans:
        if start < chunk.char_end and end > chunk.char_start:
            for key, value in meta.items():
                values = merged.setdefault(f"{key}s", [])
                if value not in values:
                    values.append(value)
    return {**metadata, **merged}


def chunk_payload(chunk: Chunk, metadata: dict) -> dict:
    return {
        "text": chunk.text,
        "doc_id": chunk.doc_id,
        "chunk_index": chunk.index,
        "char_start": chunk.char_start,
        "char_end": chunk.char_end,
        "content_hash": chunk.sha256,
        "metadata": metadata,
    }


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


@dataclass
class DocPlan:
    """What a new, changed or touched document needs: its chunks, and which points to (re)write."""

    doc: Document
    action: str  # 'new', 'changed', or 'unchanged' (same content, the file touched: its `modified` moved)
    content_hash: str
    fingerprint: str
    chunks: list[Chunk]
    payloads: list[dict]
    keys: list[str]
    ids: list[str]
    write: list[int]  # indices of chunks whose point must be (re)written with its vectors
    stale_ids: list[str]
    payload_only: list[int] = field(default_factory=list)  # chunks whose point keeps its vectors, gets this payload

    def commit(self) -> DocCommit:
        return DocCommit(
            self.doc.doc_id, self.content_hash, self.fingerprint,
            [LedgerChunk(i, self.ids[i], self.keys[i], self.chunks[i].sha256) for i in range(len(self.chunks))],
            self.stale_ids, origin=self.doc.metadata.get("path"), volatile_hash=volatile_hash(self.doc.metadata),
        )


@dataclass
class Window:
    """Planned documents on their way through the stages, with the source's failures among them."""

    plans: list[DocPlan] = field(default_factory=list)
    failed: list[FailedDocument] = field(default_factory=list)
    chunks: int = 0  # chunks to write
    # kept by the write stage
    remaining: list[int] | None = None  # per plan, points not yet confirmed by the store
    set_aside: set[int] = field(default_factory=set)  # plans dead-lettered or deferred: skip their other points


@dataclass
class Part:
    """Up to WINDOW_CHUNKS points of a window, ready to write: (plan index, point)."""

    window: Window
    points: list[tuple[int, Point]]
    encoded: int  # points whose vector the model computed for them (one per distinct new text)
    cached: int  # the other points: vector from the embedding cache, or shared with a point of the same text
    cache_hits: int = 0  # of those, the points whose vector was read from the embedding cache


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


class _StopSync(Exception):
    """on_error: stop (a batch failed for good), or a store down longer than the outage budget:
    end the sync after recording why."""


class DeferredPlans:
    """Documents whose write waits for the store to come back, spilled to a temporary file in the
    state dir (deleted on close), so that a long outage holds no texts in memory. Their vectors
    are in the embedding cache."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._file = None
        self.count = 0

    def add(self, plan: "DocPlan") -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.folder, prefix="deferred-")
        pickle.dump(plan, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def take(self) -> Iterator["DocPlan"]:
        """Every plan added so far, oldest first; plans added meanwhile wait for the next take()."""
        spill, self._file, self.count = self._file, None, 0
        if spill is None:
            return
        with spill:
            spill.seek(0)
            while True:
                try:
                    yield pickle.load(spill)
                except EOFError:
                    return

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return self.count


class SyncRun:
    """One sync of a source into a sink, tracked by a ledger (see `run_sync`)."""

    def __init__(
        self,
        config: SyncConfig,
        source: Source,
        sink: Sink,
        ledger: Ledger,
        encoder_factory: Callable[[], Encoder],
        progress: bool = False,
        pipelined: bool = True,
        take_over: bool = False,
    ):
        self.config = config
        self.source = source
        self.sink = sink
        self.ledger = ledger
        self._encoder_factory = encoder_factory
        self._encoder: Encoder | None = None
        self._cache: EmbeddingCache | None = None
        self.normalize = make_preprocessor(config)
        self.text_settings = document_text_settings(config)
        self.chunking_version = chunking_version(config.chunking, ledger)  # recorded by the sync (not a dry run)
        self.progress = progress
        self.pipelined = pipelined  # False: the same stages one after the other (a baseline, and for debugging)
        self.take_over = take_over  # claim the collection even if another state dir owns it
        self._encode_lock = threading.Lock()
        self._cancel = threading.Event()  # set when the write stage stops early: the others stop too
        self.breaker: CircuitBreaker | None = None  # while the sync writes (see the module doc)
        self._deferred = DeferredPlans(config.state_dir)
        self._deletes_waiting = False  # deletes left queued while the store was down
        self._dry_run_shas: Counter[str] = Counter()  # points to write per text
        self._chunk_bar = None  # chunks written, so that one huge document still shows progress
        self._stamps: dict[str, str] = {}  # origin -> stamp (with stamp_suffix) of the files this run read or skipped
        self._unsettled: set[str] = set()  # origins of documents dead-lettered or set aside: read them again next time
        self._known_stamps: dict[str, str] = {}  # what the ledger recorded, for the files the source may skip

    # ---- lazily built parts (an unchanged corpus never loads the model weights) -------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            encoder = self._encoder_factory()
            self.chunker = make_chunker(encoder.tokenizer, self.config.chunking, self.chunking_version)
            vectors_id = vector_identity(encoder)
            self.projection = load_projection_for(self.config, encoder)
            self.fingerprint = stable_hash(
                {
                    "vectors": vectors_id,
                    "chunking": fingerprint_settings(self.config.chunking, self.chunking_version),
                    **DEFAULT_TEXT_SETTINGS,  # see content_hash_for
                    "layout": self.sink.layout.name,
                    "projection": self.projection.sha256 if self.projection else None,
                }
            )
            self._cache = EmbeddingCache(self.config.state_dir, stable_hash(vectors_id))
            self._encoder = encoder
        return self._encoder

    @property
    def cache(self) -> EmbeddingCache:
        self.encoder  # noqa: B018 - builds the cache
        return self._cache

    def ensure_collection(self) -> bool:
        self.encoder  # noqa: B018 - the model's dimension and the projection
        k = self.projection.k if self.projection else None
        created = self.sink.ensure_collection(self.encoder.dimension, k)
        if self.projection:  # recorded with the collection: queries must use the same matrix
            self.ledger.set_meta(projection_key(self.sink.collection), self.projection.sha256)
        return created

    def close(self) -> None:
        self._deferred.close()
        if self.breaker is not None and self.sink.retry is not None:
            self.sink.retry.breaker = None
        if self._cache is not None:
            self._cache.close()
        if self._chunk_bar is not None:
            self._chunk_bar.close()

    # ---- the run ----------------------------------------------------------------------------
    def run(self, prune: bool = False, dry_run: bool = False, report: SyncReport | None = None) -> SyncReport:
        """Sync (or dry-run) the source into the sink. The counts go into `report` (a new one if
        None) as the run goes, so a caller that passes its own still has them if the run raises."""
        report = report if report is not None else SyncReport()
        report.dry_run = dry_run
        report.ignore_kinds = tuple(self.config.ignore_failures)
        started = time.perf_counter()
        try:
            return self._run(prune, dry_run, report)
        finally:
            report.seconds["total"] = time.perf_counter() - started

    def _run(self, prune: bool, dry_run: bool, report: SyncReport) -> SyncReport:
        items = self.source.read()  # a missing source folder fails here, before the store is touched
        if not dry_run:
            self._preflight(report)
            # Before any document is written with it: an interrupted re-chunk goes on with this version.
            self.ledger.set_meta(CHUNKING_VERSION_KEY, str(self.chunking_version))
            self._move_renamed_documents(report)
            with busy(report, "write"):
                self._delete(self.ledger.pending_deletes(), report)  # what a crashed run had queued
            self._watch_store()
        self._offer_stamps()
        seen: set[str] = set()
        failed_origins: set[str] = set()  # files with an unreadable part: never prune what came from them
        try:
            if dry_run:
                self._dry_run(items, seen, failed_origins, report)
            else:
                self._sync(items, seen, failed_origins, report)
        except _StopSync:
            report.stopped = True  # the rest waits for the next run, nothing is pruned
            return report
        finally:
            if self.breaker is not None:
                report.outages = self.breaker.outages
        if prune:
            with busy(report, "write"):
                self._prune(seen, failed_origins, report, dry_run)
        if dry_run:
            in_cache = self.cache.get_many(self._dry_run_shas) if self._dry_run_shas else {}
            to_encode = len(self._dry_run_shas) - len(in_cache)
            report.chunks["encoded"] = to_encode
            report.chunks["cached"] = report.chunks["upserted"] - to_encode
            report.cache_hits = sum(self._dry_run_shas[sha] for sha in in_cache)
        else:
            self.ledger.keep_failures(f["doc_id"] for f in report.failures)
            unsettled = failed_origins | self._unsettled  # read again next time, whatever their stamp
            self.ledger.replace_stamps({o: s for o, s in self._stamps.items() if o not in unsettled})
            if self._deletes_waiting:  # left queued while the store was down
                with busy(report, "write"):
                    self._delete(self.ledger.pending_deletes(), report, last=True)
        return report

    def _preflight(self, report: SyncReport) -> None:
        """Before anything is read or encoded: the store answers, the collection exists (created if
        missing) with the configured layout, and still holds what the ledger lists."""
        try:
            self._check_store_has_ledger(report)
            self.ensure_collection()
            claim(self.sink, self.ledger, shared_collection(self.config), self.take_over)
        except TransientError as err:
            raise StoreUnreachableError(
                f"cannot reach the store {sink_target(self.config)}: {err} Nothing was read, encoded or written: "
                "start the store (or correct the sink's address) and run the sync again."
            ) from err

    def _watch_store(self) -> None:
        """From here on a store outage pauses the writes instead of failing them (see the module doc)."""
        if self.sink.retry is None:
            return
        c = self.config.retry
        self.breaker = CircuitBreaker(c.open_after_failures, c.outage_budget_seconds, max_interval=max(c.max_wait, 1.0))
        self.sink.retry.breaker = self.breaker

    def _sync(self, items, seen: set[str], failed_origins: set[str], report: SyncReport) -> None:
        """The three stages (see the module doc); inline, one after the other, when not pipelined."""
        def stage(items, name, tick=None):
            return background(items, QUEUE_DEPTH, name, tick) if self.pipelined else iter(items)

        self.encoder  # noqa: B018 - built here, not by the first stage to need it (the stages are threads)
        reader = self.ledger.reader()  # the plan stage's own connection (SQLite connections are per thread)
        try:
            windows = stage(busy_items(self._windows(items, reader, seen, failed_origins, report), report, "plan"),
                            "plan")
            with closing(stage(self._parts(windows, report), "encode", tick=TICK_SECONDS)) as parts:
                try:
                    for part in parts:
                        with busy(report, "write"):
                            self._resume_writes(report)
                            if part is not TICK:
                                self._write(part, report)
                    with busy(report, "write"):
                        self._drain_deferred(report)
                except BaseException:
                    self._cancel.set()  # the other stages stop at their next document / part
                    raise
        finally:
            reader.close()

    def _dry_run(self, items, seen: set[str], failed_origins: set[str], report: SyncReport) -> None:
        for window in busy_items(self._windows(items, self.ledger, seen, failed_origins, report), report, "plan"):
            for item in window.failed:
                self._fail(report, item, dry_run=True)
            for plan in window.plans:
                self._describe(plan, report)

    def _stamp_suffix(self) -> str:
        """What besides the file decides its documents' points (text settings, model, chunking, layout):
        recorded after each file's stamp, so that a change of either makes every file be read again."""
        return "|" + stable_hash({"text_settings": self.text_settings, "fingerprint": self.fingerprint})[:16]

    def _offer_stamps(self) -> None:
        """Tell the source which files it need not read (see Source.skip_unchanged)."""
        self.encoder  # noqa: B018 - the fingerprint
        suffix = self._stamp_suffix()
        self._known_stamps = {origin: stamp for origin, stamp in self.ledger.stamps().items() if stamp.endswith(suffix)}
        self.source.skip_unchanged({origin: stamp[: -len(suffix)] for origin, stamp in self._known_stamps.items()})

    def _check_store_has_ledger(self, report: SyncReport) -> None:
        """A collection dropped or emptied behind the ledger's back: start over (the cache keeps it cheap)."""
        lost = store_lost(self.sink, self.ledger)
        if lost:
            message = f"{lost}: the ledger was reset and every document is written again"
            log.warning(message)
            report.warnings.append(message)
            self.ledger.reset()

    def _move_renamed_documents(self, report: SyncReport) -> None:
        """Documents the source now names differently keep their ledger entry under the new doc_id;
        planned as changed, their points are rewritten under the new ids from the embedding cache
        and the old points deleted."""
        renames = self.source.renamed_doc_ids(self.ledger.doc_origins())
        if renames:
            self.ledger.rename_documents(renames)  # what it queues is deleted with the pending deletes
            example = next(iter(renames.items()))
            report.warnings.append(
                f"{len(renames)} document(s) renamed by the source (e.g. {example[0]!r} is now {example[1]!r}): "
                "their points are rewritten under the new ids from the embedding cache, the old ones deleted"
            )

    # ---- stage 1: plan -----------------------------------------------------------------------
    def _windows(self, items, reader: Ledger, seen: set[str], failed_origins: set[str],
                 report: SyncReport) -> Iterator[Window]:
        """Plan every document; yield them in windows of about WINDOW_CHUNKS chunks to write."""
        window = Window()
        for item in self._progress(items):
            if self._cancel.is_set():
                return
            if isinstance(item, UnchangedFile):
                self._skipped(item.origin, reader, seen, report)
                continue
            report.documents["seen"] += 1
            seen.add(item.doc_id)
            if isinstance(item, Document):
                origin = item.metadata.get("path")
                if item.stamp is not None and origin is not None:
                    self._stamps[origin] = item.stamp + self._stamp_suffix()
                item = self._plan(item, reader)  # a DocPlan, a FailedDocument, or None when unchanged
            if item is None:
                report.documents["unchanged"] += 1
                continue
            if isinstance(item, FailedDocument):
                window.failed.append(item)
                if item.origin:
                    failed_origins.add(item.origin)
            else:
                report.documents[item.action] += 1
                window.plans.append(item)
                window.chunks += len(item.write) + len(item.payload_only)
            if window.chunks >= WINDOW_CHUNKS or len(window.failed) >= WINDOW_CHUNKS:
                yield window
                window = Window()
        if window.plans or window.failed:
            yield window

    def _skipped(self, origin: str, reader: Ledger, seen: set[str], report: SyncReport) -> None:
        """A file the source did not read (its stamp is unchanged): its documents are seen, unchanged."""
        doc_ids = reader.documents_from(origin)
        report.documents["seen"] += len(doc_ids)
        report.documents["unchanged"] += len(doc_ids)
        seen.update(doc_ids)
        self._stamps[origin] = self._known_stamps[origin]

    def _plan(self, doc: Document, reader: Ledger) -> DocPlan | FailedDocument | None:
        content_hash = content_hash_for(doc, self.text_settings)
        known = reader.document(doc.doc_id)
        self.encoder  # noqa: B018 - the fingerprint and the chunker need the model's tokenizer
        touched = False  # same content, but the points' volatile metadata (`modified`) is out of date
        if known and known.content_hash == content_hash and known.fingerprint == self.fingerprint:
            # '' : recorded before the ledger kept it; such points are refreshed with the next change
            touched = known.volatile_hash not in ("", volatile_hash(doc.metadata))
            if not touched:
                return None
        text, spans = self._clean(doc)
        chunks = self.chunker.split(doc.doc_id, text)
        payloads = [chunk_payload(c, chunk_metadata(doc.metadata, spans, c)) for c in chunks]
        for payload in payloads:
            problem = self.sink.layout.oversized(payload)
            if problem:  # fails alone, before it is encoded, instead of spoiling the batch it would be written in
                return FailedDocument(doc.doc_id, problem, origin=doc.metadata.get("path"), kind="too_large")
        keys = [chunk_key(p, self.fingerprint) for p in payloads]
        old = list(reader.chunks(doc.doc_id)) if known else []
        same_model = known is not None and known.fingerprint == self.fingerprint
        ids, write, payload_only = self._match_points(doc.doc_id, chunks, keys, old, same_model, touched)
        kept = set(ids)
        stale = [c.point_id for c in old if c.point_id not in kept]
        action = "unchanged" if touched else "changed" if known else "new"
        return DocPlan(doc, action, content_hash, self.fingerprint, chunks, payloads, keys, ids, write, stale,
                       payload_only)

    def _match_points(self, doc_id: str, chunks: list[Chunk], keys: list[str], old: list[LedgerChunk],
                      same_model: bool, touched: bool) -> tuple[list[str], list[int], list[int]]:
        """Point ids for a document's chunks, and which chunks need their point written with vectors
        (`write`) or only its payload (`payload_only`), given the points the ledger has (`old`).

        A chunk keeps the point that holds its text's vectors already (`same_model`): the one at
        its own index first, else any other of the document with that text (text inserted above
        moved it to another index); such a point gets a payload-only update when its payload
        changed (position, or the volatile metadata of a `touched` file). A point with exactly the
        chunk's payload is kept as it is. Every other chunk is written with its vectors under the
        point id of its index (`point_id`), or a variant of it when a kept point holds that id.
        A renamed document's points are not kept (the ledger forgot their texts): it is written anew."""
        ids: list[str | None] = [None] * len(chunks)
        payload_only: list[int] = []
        by_index = {c.chunk_index: c for c in old}
        for i, chunk in enumerate(chunks):  # the same text at the same index, or the same payload
            before = by_index.get(i)
            if before is None:
                continue
            if same_model and before.content_hash == chunk.sha256:
                ids[i] = before.point_id
                if before.chunk_key != keys[i] or touched:
                    payload_only.append(i)
            elif before.chunk_key == keys[i]:
                ids[i] = before.point_id
                if touched:
                    payload_only.append(i)
        taken = {pid for pid in ids if pid is not None}
        free: dict[str, list[str]] = {}  # text sha256 -> points that hold its vectors, not kept yet
        for before in old:
            if same_model and before.content_hash and before.point_id not in taken:
                free.setdefault(before.content_hash, []).append(before.point_id)
        for i, chunk in enumerate(chunks):  # moved texts
            if ids[i] is None and free.get(chunk.sha256):
                ids[i] = free[chunk.sha256].pop(0)
                taken.add(ids[i])
                payload_only.append(i)
        write = [i for i in range(len(chunks)) if ids[i] is None]
        for i in write:  # new texts
            variant = 0
            while (pid := point_id(self.sink.collection, doc_id, chunks[i].index, variant)) in taken:
                variant += 1
            ids[i] = pid
            taken.add(pid)
        return ids, write, sorted(payload_only)

    def _clean(self, doc: Document) -> tuple[str, list[tuple[int, int, dict]]]:
        """The normalised text, and for a document with sections (PDF pages) each section's span
        in it, so that chunks can carry the page numbers they cover."""
        if not doc.sections:
            return self.normalize(doc.text), []
        parts, spans, offset = [], [], 0
        for section in doc.sections:
            text = self.normalize(section.text)
            if not text:
                continue
            if parts:
                offset += 2  # the "\n\n" between sections
            spans.append((offset, offset + len(text), section.metadata))
            parts.append(text)
            offset += len(text)
        return "\n\n".join(parts), spans

    # ---- stage 2: encode ---------------------------------------------------------------------
    def _parts(self, windows: Iterator[Window], report: SyncReport) -> Iterator[Part]:
        """Each window's points to write, WINDOW_CHUNKS at a time (at least one part per window)."""
        with closing(windows):  # stops the plan stage when this stage is stopped
            for window in windows:
                work = [(n, i) for n, plan in enumerate(window.plans) for i in plan.write]
                for start in range(0, max(len(work), 1), WINDOW_CHUNKS):
                    if self._cancel.is_set():  # the write stage stopped: encode nothing more
                        return
                    with busy(report, "encode"):
                        part = self._encode_part(window, work[start : start + WINDOW_CHUNKS])
                    if part is None:  # the write stage stopped while this part was encoded
                        return
                    yield part

    def _encode_part(self, window: Window, work: list[tuple[int, int]]) -> Part | None:
        """The points of `work` (plan index, chunk index) with their vectors; None if the sync stopped meanwhile."""
        chunks = [window.plans[n].chunks[i] for n, i in work]
        found = self._vectors_for(chunks, stop=self._cancel)
        if found is None:
            return None
        vectors, encoded = found
        points = [(n, self._point(window.plans[n].ids[i], vectors[window.plans[n].chunks[i].sha256],
                                  window.plans[n].payloads[i])) for n, i in work]
        hits = sum(1 for chunk in chunks if chunk.sha256 not in encoded)
        return Part(window, points, len(encoded), len(work) - len(encoded), hits)

    # ---- stage 3: write ----------------------------------------------------------------------
    def _write(self, part: Part, report: SyncReport, final: bool = False) -> None:
        """Upsert a part batch by batch; commit each document once the store confirmed all its
        points. A document whose write failed for good becomes a dead letter with all its points,
        one whose write waits for the store is deferred; either way its later points are skipped.
        With the window's first part go the payload-only updates of all its documents."""
        window = part.window
        report.chunks["encoded"] += part.encoded
        report.chunks["cached"] += part.cached
        report.cache_hits += part.cache_hits
        if window.remaining is None:  # the window's first part
            for item in window.failed:
                self._fail(report, item, dry_run=False)
            window.remaining = [len(plan.write) + len(plan.payload_only) for plan in window.plans]
            self._commit([plan for n, plan in enumerate(window.plans) if window.remaining[n] == 0], report)
            payloads = [(n, Point(id=plan.ids[i], dense=None, sparse=None, payload=plan.payloads[i]))
                        for n, plan in enumerate(window.plans) for i in plan.payload_only]
            self._write_queue(window, payloads, report, final, vectors=False)
        self._write_queue(window, part.points, report, final)

    def _write_queue(self, window: Window, points: list[tuple[int, Point]], report: SyncReport, final: bool,
                     vectors: bool = True) -> None:
        queue = [(n, p) for n, p in points if n not in window.set_aside]
        while queue:
            if self.breaker is not None and self.breaker.is_open:  # the store is down: no calls until a probe says so
                self._defer(window, {n for n, _ in queue})
                return
            batch, queue = queue[: self.sink.batch_size], queue[self.sink.batch_size :]
            self._write_batch(window, batch, report, final, vectors)
            queue = [(n, p) for n, p in queue if n not in window.set_aside]

    def _write_batch(self, window: Window, batch: list[tuple[int, Point]], report: SyncReport, final: bool,
                     vectors: bool = True) -> None:
        """One upsert (or, without `vectors`, one payload-only update). A transient failure defers the
        batch's documents (during the last pass, with the store answering, they become dead letters). A
        terminal one is split by document in halves, down to the one bad document: only that one
        becomes a dead letter."""
        self.ledger.mark_in_flight(((window.plans[n].doc.doc_id, p.id) for n, p in batch), vectors=vectors)
        try:
            if vectors:
                self.sink.upsert([p for _, p in batch])
            else:
                self.sink.set_payloads([(p.id, p.payload) for _, p in batch])
        except TransientError as err:
            docs = {n for n, _ in batch}
            if self.breaker is None or (final and not self.breaker.is_open):
                self._give_up(window, docs, err, report)
            else:
                self._defer(window, docs)
            return
        except StoreError as err:
            docs = sorted({n for n, _ in batch})
            if len(docs) == 1:
                self._give_up(window, set(docs), err, report)
                return
            log.warning("the store refused a batch of %d documents (%s): writing it in halves to find the one "
                        "that causes it", len(docs), err)
            first = set(docs[: len(docs) // 2])
            for half in ([(n, p) for n, p in batch if n in first], [(n, p) for n, p in batch if n not in first]):
                half = [(n, p) for n, p in half if n not in window.set_aside]
                if half:
                    self._write_batch(window, half, report, final, vectors)
            return
        report.chunks["upserted" if vectors else "payload_updated"] += len(batch)
        if self._chunk_bar is not None:
            self._chunk_bar.update(len(batch))
        done = []
        for n, _ in batch:
            window.remaining[n] -= 1
            if window.remaining[n] == 0:
                done.append(window.plans[n])
        self._commit(done, report)

    def _give_up(self, window: Window, docs: set[int], err: StoreError, report: SyncReport) -> None:
        window.set_aside.update(docs)
        self._dead_letter([window.plans[n] for n in sorted(docs)], err, report)
        if self.config.on_error == "stop":
            raise _StopSync() from err

    def _defer(self, window: Window, docs: set[int]) -> None:
        for n in sorted(docs - window.set_aside):
            window.set_aside.add(n)
            self._deferred.add(window.plans[n])

    def _resume_writes(self, report: SyncReport) -> None:
        """Between parts (and every TICK_SECONDS while the encoder works): probe a store that is
        down when a probe is due, stop the sync when it has been down too long, and write the
        deferred documents once it answers."""
        breaker = self.breaker
        if breaker is None:
            return
        if breaker.budget_spent() and len(self._deferred):
            raise self._outage_stop(report)
        if breaker.is_open and not (breaker.probe_due() and breaker.probe(self.sink.probe)):
            return
        if len(self._deferred):
            self._write_deferred(report, final=False)

    def _drain_deferred(self, report: SyncReport) -> None:
        """After the last part: write every deferred document, waiting for the store while it is
        down, until the outage budget is spent."""
        while len(self._deferred):
            breaker = self.breaker
            if breaker.budget_spent():
                raise self._outage_stop(report)
            if breaker.is_open:
                time.sleep(min(breaker.seconds_to_next_probe(), TICK_SECONDS))
                if breaker.probe_due():
                    breaker.probe(self.sink.probe)
                continue
            self._write_deferred(report, final=True)

    def _write_deferred(self, report: SyncReport, final: bool) -> None:
        """Write the deferred documents, WINDOW_CHUNKS points at a time, vectors from the cache."""
        plans: list[DocPlan] = []
        points = 0
        for plan in self._deferred.take():
            if self.breaker.is_open:  # down again: the rest waits, without fetching its vectors
                self._deferred.add(plan)
                continue
            plans.append(plan)
            points += len(plan.write) + len(plan.payload_only)
            if points >= WINDOW_CHUNKS:
                self._write_plans(plans, report, final)
                plans, points = [], 0
        if plans:
            self._write_plans(plans, report, final)

    def _write_plans(self, plans: list[DocPlan], report: SyncReport, final: bool) -> None:
        window = Window(plans=plans)
        work = [(n, i) for n, plan in enumerate(plans) for i in plan.write]
        vectors, _ = self._vectors_for([plans[n].chunks[i] for n, i in work])
        points = [(n, self._point(plans[n].ids[i], vectors[plans[n].chunks[i].sha256], plans[n].payloads[i]))
                  for n, i in work]
        self._write(Part(window, points, 0, 0), report, final)  # counted when their window was encoded

    def _outage_stop(self, report: SyncReport) -> _StopSync:
        breaker = self.breaker
        report.not_written = len(self._deferred)
        since = breaker.outages[-1]["started"][11:19]
        message = (
            f"store unreachable since {since} UTC ({breaker.seconds_down():.0f} s in this run, longer than "
            f"retry.outage_budget_seconds); {report.not_written} document(s) not written; the vectors encoded so "
            "far are cached: run `connector sync` again when the store is back"
        )
        log.error(message)
        report.errors.append({"operation": "write", "reason": message, "documents_not_written": report.not_written})
        return _StopSync(message)

    def _point(self, pid: str, vectors, payload: dict) -> Point:
        p = self.projection
        if p is None:
            return Point(id=pid, dense=vectors.dense, sparse=vectors.sparse, payload=payload)
        legacy = p.apply(vectors.dense)
        dense = None if self.config.projection.output == "legacy" else vectors.dense
        return Point(id=pid, dense=dense, sparse=vectors.sparse, payload=payload,
                     extra={self.config.projection.field: legacy})

    def _commit(self, plans: list[DocPlan], report: SyncReport) -> None:
        if plans:
            self.ledger.commit_documents(plan.commit() for plan in plans)
            self._delete([pid for plan in plans for pid in plan.stale_ids], report)

    def _dead_letter(self, plans: list[DocPlan], err: StoreError, report: SyncReport) -> None:
        """Keep a failed write with every point the documents need (vectors from the embedding
        cache), so `retry` needs no encoder."""
        attempts = getattr(err, "attempts", 1)
        letter_docs = []
        points_total = 0
        for plan in plans:
            rewrite = plan.write + plan.payload_only  # a replay writes whole points
            vectors, _ = self._vectors_for([plan.chunks[i] for i in rewrite])
            points = [self._point(plan.ids[i], vectors[plan.chunks[i].sha256], plan.payloads[i]) for i in rewrite]
            letter_docs.append((plan.commit(), points_to_bytes(points), len(points)))
            points_total += len(points)
        letter = self.ledger.add_dead_letter(str(err), error_kind(err), attempts, letter_docs)
        self._unsettled.update(plan.doc.metadata.get("path") for plan in plans)
        reason = f"store write failed after {attempts} attempt(s), kept as dead letter {letter}: {err}"
        for plan in plans:
            report.documents["failed"] += 1
            report.failures.append({"doc_id": plan.doc.doc_id, "reason": reason, "dead_letter": letter,
                                    "kind": "store"})
            self.ledger.record_failure(plan.doc.doc_id, reason)
        report.chunks["failed"] += points_total

    def _vectors_for(self, chunks: list[Chunk], stop: threading.Event | None = None) -> tuple[dict, set[str]] | None:
        """Vectors by chunk sha256, from the embedding cache, the rest encoded (and cached); and
        the sha256 of the texts encoded. None if `stop` was set before every slice was encoded (the slices
        done are cached). The encode and write stages both call this (a dead letter needs all the
        vectors of its documents): one slice at a time, so neither waits long for the other, and
        a text is never encoded twice."""
        texts = {c.sha256: c.text for c in chunks}
        with self._encode_lock:  # the tokenizer too: it is not safe to use from two threads at once
            found = self.cache.get_many(texts)
            missing = [sha for sha in texts if sha not in found]
            if len(missing) > ENCODE_SLICE:
                # by token count, longest first, so that each slice gives the encoder batches as full as
                # one call with every text would (its batches end where padding would exceed 2%)
                ids = self.encoder.tokenizer([texts[sha] for sha in missing], add_special_tokens=False,
                                             return_attention_mask=False)["input_ids"]
                tokens = {sha: len(i) for sha, i in zip(missing, ids)}
                missing.sort(key=lambda sha: -tokens[sha])
        encoded: set[str] = set()
        for start in range(0, len(missing), ENCODE_SLICE):
            if stop is not None and stop.is_set():
                return None
            part = missing[start : start + ENCODE_SLICE]
            with self._encode_lock:
                done = self.cache.get_many(part)  # the other stage may have encoded some meanwhile
                todo = [sha for sha in part if sha not in done]
                if todo:
                    done.update(zip(todo, self.encoder.encode([texts[sha] for sha in todo])))
                    self.cache.put_many({sha: done[sha] for sha in todo})
            found.update(done)
            encoded.update(todo)
        return found, encoded

    def _delete(self, ids: list[str], report: SyncReport, last: bool = False) -> None:
        """Delete points the ledger already queued; on failure they stay queued for the next run
        (while the store is down, for the end of this one: `last`)."""
        if not ids:
            return
        try:
            self.sink.delete(ids)
        except TransientError as err:
            if self.breaker is not None and not last:
                self._deletes_waiting = True
                return
            self._delete_failed(ids, err, report)
            return
        except StoreError as err:
            self._delete_failed(ids, err, report)
            return
        self.ledger.deletes_done(ids)
        report.chunks["deleted"] += len(ids)

    @staticmethod
    def _delete_failed(ids: list[str], err: StoreError, report: SyncReport) -> None:
        report.errors.append({"operation": "delete", "points": len(ids), "reason": str(err),
                              "note": "kept in the ledger's pending deletes; the next sync or retry deletes them"})

    def _prune(self, seen: set[str], failed_origins: set[str], report: SyncReport, dry_run: bool) -> None:
        known = self.ledger.doc_origins()
        if not seen and known:
            report.errors.append({"operation": "prune", "reason": (
                f"the source gave no documents at all, so nothing was pruned (the ledger has {len(known)}). "
                "If the source really is empty, delete the collection with `connector schema --recreate`; "
                "otherwise check source.path and source.include")})
            return
        for doc_id, origin in known.items():
            if doc_id in seen or origin in failed_origins:
                continue
            self._remove(doc_id, report, dry_run)

    def _remove(self, doc_id: str, report: SyncReport, dry_run: bool) -> None:
        """Delete a document from the ledger and its points from the store (a dry run counts them)."""
        report.documents["deleted"] += 1
        if dry_run:
            n = len(self.ledger.chunks(doc_id))
            report.chunks["deleted"] += n
            report.changes.append({"doc_id": doc_id, "action": "delete", "chunks_to_delete": n})
        else:
            self._delete(self.ledger.forget_document(doc_id), report)

    def _fail(self, report: SyncReport, item: FailedDocument, dry_run: bool) -> None:
        report.documents["failed"] += 1
        entry = {"doc_id": item.doc_id, "reason": item.reason, "kind": item.kind}
        if item.kind in report.ignore_kinds:
            entry["ignored"] = True
        report.failures.append(entry)
        if item.kind in REFUSED_KINDS and item.origin:
            # stored before the source refused the file (an older version, or an opt-in since
            # withdrawn): it must not stay searchable, whether or not the sync prunes
            for doc_id in self.ledger.documents_from(item.origin):
                self._remove(doc_id, report, dry_run)
        if not dry_run:
            self.ledger.record_failure(item.doc_id, f"[{item.kind}] {item.reason}")

    def _describe(self, plan: DocPlan, report: SyncReport) -> None:
        """Dry run: count what the plan would do."""
        report.chunks["upserted"] += len(plan.write)
        report.chunks["payload_updated"] += len(plan.payload_only)
        report.chunks["deleted"] += len(plan.stale_ids)
        self._dry_run_shas.update(plan.chunks[i].sha256 for i in plan.write)  # a Counter: counts points
        report.changes.append({"doc_id": plan.doc.doc_id, "action": plan.action, "chunks": len(plan.chunks),
                               "chunks_to_upsert": len(plan.write), "chunks_to_update_payload": len(plan.payload_only),
                               "chunks_to_delete": len(plan.stale_ids)})

    def _progress(self, items: Iterable):
        if not self.progress:
            return items
        from tqdm import tqdm

        self._chunk_bar = tqdm(desc="written", unit="chunk", file=sys.stderr, position=1)
        return tqdm(items, desc="read", unit="doc", file=sys.stderr, position=0)


def shared_collection(config: SyncConfig) -> bool:
    """Does the config let several state dirs write its collection (`sink.shared`)?"""
    return bool(getattr(config.sink, "shared", False))


def collection_layout(config: SyncConfig):
    """The layout of the config's collection: with a legacy vector when projection.output asks for one."""
    from connector.schemas_layout import load_layout

    p = config.projection
    if p is None or p.output == "dense":
        return load_layout("chunks")
    return load_layout("chunks_dense_legacy" if p.output == "dense+legacy" else "chunks_legacy", legacy_field=p.field)


def projection_key(collection: str) -> str:
    return f"projection:{collection}"


def load_projection_for(config: SyncConfig, encoder: Encoder):
    """The fitted projection the config's collection needs (None without legacy vectors); it must
    have the configured size and have been fitted on this model's vectors."""
    from connector.projection import ProjectionError, load

    p = config.projection
    if p is None or p.output == "dense":
        return None
    projection = load(config.state_dir)
    if projection.k != p.dim:
        raise ProjectionError(
            f"the fitted projection has k={projection.k} but projection.dim is {p.dim}; "
            "run `connector projection fit -c CONFIG` again"
        )
    if projection.source_fingerprint != stable_hash(vector_identity(encoder)):
        raise ProjectionError(
            "the fitted projection was fitted on another model's vectors; run `connector projection fit -c CONFIG` again"
        )
    return projection


def with_collection(config: SyncConfig, collection: str) -> SyncConfig:
    """A copy of the config that targets another collection of the same store."""
    copy = config.model_copy(deep=True)
    copy.sink.collection = collection
    return copy


def open_sink(config: SyncConfig, sleep=None) -> Sink:
    """The config's sink, with its layout and the retry policy."""
    from connector.retry import RetryPolicy
    from connector.sinks.factory import make_sink

    policy = RetryPolicy(config.retry) if sleep is None else RetryPolicy(config.retry, sleep=sleep)
    return make_sink(config.sink, layout=collection_layout(config), retry=policy)


def store_lost(sink: Sink, ledger: Ledger) -> str | None:
    """Why the store no longer holds what the ledger lists (dropped or emptied collection), or None."""
    chunks = ledger.counts()["chunks"]
    if not chunks:
        return None
    info = sink.describe()
    if info is None:
        return f"collection '{sink.collection}' does not exist but the ledger lists {chunks} points"
    if info.count == 0:
        return f"collection '{sink.collection}' is empty but the ledger lists {chunks} points"
    return None


def vector_identity(encoder: Encoder) -> dict:
    """What decides the vectors of a text: the model's content and revision. Not its path (a moved
    folder is the same model) and not max_length (chunks always fit it)."""
    fp = encoder.fingerprint
    identity = {"content_sha256": fp.get("content_sha256"), "revision": fp.get("revision")}
    # only when not the defaults, so that torch encoders keep their identity (int8 vectors differ)
    if fp.get("backend", "torch") != "torch":
        identity["backend"] = fp["backend"]
    if fp.get("quantize", "none") != "none":
        identity["quantize"] = fp["quantize"]
    # int8 vectors depend on the ONNX graph recipe (fused attention is quantized too); fp32 ones
    # agree to ~1e-6 whatever the recipe, so their identity (cache, fitted projections) is kept
    if fp.get("quantize", "none") != "none" and fp.get("graph") is not None:
        identity["graph"] = fp["graph"]
    return identity


def make_encoder(config: SyncConfig) -> Encoder:
    """The config's encoder, run by the config's engine (local or ray: see connector.engines)."""
    from connector.engines import make_engine_encoder

    return make_engine_encoder(config)


def run_sync(config: SyncConfig, *, prune: bool = False, dry_run: bool = False, progress: bool = False,
             encoder: Encoder | None = None, sleep=None, pipelined: bool = True, take_over: bool = False,
             report: SyncReport | None = None) -> SyncReport:
    """Sync the config's source into its sink; the library entry point behind `connector sync`.
    `pipelined=False` runs the stages one after the other in this thread (same result, slower);
    `take_over` claims a collection that another state dir owns (see connector.ownership);
    `report`: fill this one in (see SyncRun.run), so that the counts survive an exception."""
    from connector.sources.factory import make_source

    source = make_source(config.source)
    with open_state(config, sleep=sleep, dry_run=dry_run) as (ledger, sink):
        run = SyncRun(config, source, sink, ledger, (lambda: encoder) if encoder else (lambda: make_encoder(config)),
                      progress=progress, pipelined=pipelined, take_over=take_over)
        try:
            return run.run(prune=prune, dry_run=dry_run, report=report)
        finally:
            run.close()


@contextmanager
def open_state(config: SyncConfig, *, sleep=None, dry_run: bool = False):
    """The sink (with the retry policy) and the ledger bound to the config's target, under the
    state dir's lock (not for a dry run, which writes nothing); closed on exit."""
    from connector.lock import StateLock

    with ExitStack() as stack:
        sink = open_sink(config, sleep=sleep)  # reads the secrets: a missing one fails before any write
        stack.callback(sink.close)
        if not dry_run:
            stack.enter_context(StateLock(config.state_dir))
        ledger = Ledger(config.state_dir)
        stack.callback(ledger.close)
        ledger.bind_target(sink_target(config), write=not dry_run)
        yield ledger, sink
