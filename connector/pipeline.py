"""Sync planning and the staged run: source -> preprocess -> chunk -> encode -> sink -> ledger.

Documents stream through in windows (a few hundred chunks at a time), so nothing holds a whole
corpus in memory and the encoder still gets full batches across small documents. Per window:
encode the chunks whose text is not in the embedding cache, upsert the points whose content
changed, and commit each document to the ledger as soon as the store confirmed all its points;
then delete the document's stale points.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

from connector.config import SyncConfig
from connector.encoders.base import Encoder
from connector.encoders.cache import EmbeddingCache
from connector.ledger import Ledger, LedgerChunk
from connector.preprocess.chunking import Chunker
from connector.preprocess.normalize import Normalizer
from connector.records import Chunk, Document, FailedDocument, Point, point_id
from connector.sinks.base import Sink
from connector.sources.base import Source

WINDOW_CHUNKS = 256  # chunks gathered before encoding; bounds memory, keeps batches full
VOLATILE_METADATA = ("modified",)  # metadata that alone does not make a document "changed"


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def document_hash(doc: Document) -> str:
    meta = {k: v for k, v in doc.metadata.items() if k not in VOLATILE_METADATA}
    return stable_hash({"text": doc.text, "metadata": meta})


def without_volatile(payload: dict) -> dict:
    meta = {k: v for k, v in payload["metadata"].items() if k not in VOLATILE_METADATA}
    return {**payload, "metadata": meta}


def sink_target(config: SyncConfig) -> str:
    """A secret-free description of the store + collection a config writes to."""
    s = config.sink
    where = s.path if getattr(s, "path", None) is not None else getattr(s, "url", None) or s.uri
    return f"{s.type}:{where}#{s.collection}"


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
    """Counts of one sync (or of a dry run: what it would do)."""

    dry_run: bool = False
    documents: dict = field(
        default_factory=lambda: dict.fromkeys(["seen", "new", "changed", "unchanged", "deleted", "failed"], 0)
    )
    chunks: dict = field(default_factory=lambda: dict.fromkeys(["encoded", "cached", "upserted", "deleted"], 0))
    failures: list = field(default_factory=list)  # [{doc_id, reason}]
    changes: list = field(default_factory=list)  # dry run only: [{doc_id, action, ...}]

    @property
    def exit_code(self) -> int:
        return 3 if self.failures else 0

    def to_json(self) -> dict:
        out = {"dry_run": self.dry_run, "documents": self.documents, "chunks": self.chunks, "failures": self.failures}
        if self.dry_run:
            out["changes"] = self.changes
        return out


@dataclass
class DocPlan:
    doc: Document
    action: str  # 'new' or 'changed'
    content_hash: str
    chunks: list[Chunk]
    payloads: list[dict]
    keys: list[str]
    ids: list[str]
    write: list[int]  # indices of chunks whose point must be (re)written
    stale_ids: list[str]


class SyncRun:
    """One sync of a source into a sink, tracked by a ledger. Build with `open_sync`."""

    def __init__(
        self,
        config: SyncConfig,
        source: Source,
        sink: Sink,
        ledger: Ledger,
        encoder_factory: Callable[[], Encoder],
        progress: bool = False,
    ):
        self.config = config
        self.source = source
        self.sink = sink
        self.ledger = ledger
        self._encoder_factory = encoder_factory
        self._encoder: Encoder | None = None
        self._cache: EmbeddingCache | None = None
        self.normalize = Normalizer(config.preprocess)
        self.progress = progress
        self.collection_ready = False

    # ---- lazily built parts (an unchanged corpus never loads the model) ------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self._encoder_factory()
            self.chunker = Chunker(
                self._encoder.tokenizer, self.config.chunking.max_tokens, self.config.chunking.overlap_tokens
            )
            self.fingerprint = stable_hash(
                {
                    "encoder": self._encoder.fingerprint,
                    "chunking": self.config.chunking.model_dump(),
                    "preprocess": self.config.preprocess.model_dump(),
                    "layout": self.sink.layout.name,
                }
            )
            self._cache = EmbeddingCache(self.config.state_dir, stable_hash(self._encoder.fingerprint))
        return self._encoder

    @property
    def cache(self) -> EmbeddingCache:
        self.encoder  # noqa: B018 - builds the cache
        return self._cache

    def ensure_collection(self) -> bool:
        created = self.sink.ensure_collection(self.encoder.dimension)
        self.collection_ready = True
        return created

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    # ---- the run ----------------------------------------------------------------------------
    def run(self, prune: bool = False, dry_run: bool = False) -> SyncReport:
        report = SyncReport(dry_run=dry_run)
        if not dry_run:
            self._finish_pending_deletes(report)
        seen: set[str] = set()
        failed_origins: set[str] = set()  # files with an unreadable part: never prune what came from them
        window: list[DocPlan] = []
        window_chunks = 0
        for item in self._progress(self.source.read()):
            report.documents["seen"] += 1
            seen.add(item.doc_id)
            if isinstance(item, FailedDocument):
                self._fail(report, item.doc_id, item.reason, dry_run)
                if item.origin:
                    failed_origins.add(item.origin)
                continue
            plan = self._plan(item)
            if plan is None:
                report.documents["unchanged"] += 1
                continue
            report.documents[plan.action] += 1
            if dry_run:
                self._describe(plan, report)
                continue
            window.append(plan)
            window_chunks += len(plan.write)
            if window_chunks >= WINDOW_CHUNKS:
                self._write_window(window, report)
                window, window_chunks = [], 0
        if window:
            self._write_window(window, report)
        if prune:
            self._prune(seen, failed_origins, report, dry_run)
        if not dry_run:
            self.ledger.keep_failures(f["doc_id"] for f in report.failures)
        if dry_run:
            report.chunks["encoded"] = self._count_to_encode(report)
        return report

    def _plan(self, doc: Document) -> DocPlan | None:
        content_hash = document_hash(doc)
        known = self.ledger.document(doc.doc_id)
        self.encoder  # noqa: B018 - fingerprint and chunker need the model's tokenizer
        if known and known.content_hash == content_hash and known.fingerprint == self.fingerprint:
            return None
        text = self.normalize(doc.text)
        chunks = self.chunker.split(doc.doc_id, text)
        payloads = [chunk_payload(c, doc.metadata) for c in chunks]
        # 'modified' alone does not rewrite a point: only the chunks whose text or payload changed are.
        keys = [stable_hash({"payload": without_volatile(p), "fingerprint": self.fingerprint}) for p in payloads]
        ids = [point_id(self.sink.collection, doc.doc_id, c.index) for c in chunks]
        old = {c.chunk_index: c for c in self.ledger.chunks(doc.doc_id)} if known else {}
        write = [i for i in range(len(chunks)) if i not in old or old[i].chunk_key != keys[i] or old[i].point_id != ids[i]]
        live = set(ids)
        stale = [c.point_id for c in old.values() if c.point_id not in live]
        return DocPlan(doc, "changed" if known else "new", content_hash, chunks, payloads, keys, ids, write, stale)

    def _write_window(self, window: list[DocPlan], report: SyncReport) -> None:
        if not self.collection_ready:
            self.ensure_collection()
        vectors = self._vectors_for(window, report)
        points: list[tuple[int, Point]] = []
        remaining = []
        for n, plan in enumerate(window):
            remaining.append(len(plan.write))
            for i in plan.write:
                v = vectors[plan.chunks[i].sha256]
                points.append((n, Point(id=plan.ids[i], dense=v.dense, sparse=v.sparse, payload=plan.payloads[i])))
        committed = 0
        committed = self._commit_ready(window, remaining, committed, report)
        size = self.sink.batch_size
        for start in range(0, len(points), size):
            batch = points[start : start + size]
            self.sink.upsert([p for _, p in batch])
            report.chunks["upserted"] += len(batch)
            for n, _ in batch:
                remaining[n] -= 1
            committed = self._commit_ready(window, remaining, committed, report)

    def _commit_ready(self, window: list[DocPlan], remaining: list[int], start: int, report: SyncReport) -> int:
        """Commit, in order, every document whose points the store has all confirmed."""
        n = start
        while n < len(window) and remaining[n] == 0:
            plan = window[n]
            self.ledger.commit_document(
                plan.doc.doc_id,
                plan.content_hash,
                self.fingerprint,
                [LedgerChunk(i, plan.ids[i], plan.keys[i]) for i in range(len(plan.chunks))],
                plan.stale_ids,
                origin=plan.doc.metadata.get("path"),
            )
            self._delete(plan.stale_ids, report)
            n += 1
        return n

    def _vectors_for(self, window: list[DocPlan], report: SyncReport) -> dict:
        texts = {plan.chunks[i].sha256: plan.chunks[i].text for plan in window for i in plan.write}
        found = self.cache.get_many(texts)
        missing = [sha for sha in texts if sha not in found]
        if missing:
            encoded = dict(zip(missing, self.encoder.encode([texts[sha] for sha in missing])))
            self.cache.put_many(encoded)
            found.update(encoded)
        report.chunks["encoded"] += len(missing)
        report.chunks["cached"] += len(texts) - len(missing)
        return found

    def _delete(self, ids: list[str], report: SyncReport) -> None:
        if ids:
            self.sink.delete(ids)
            self.ledger.deletes_done(ids)
            report.chunks["deleted"] += len(ids)

    def _finish_pending_deletes(self, report: SyncReport) -> None:
        """Deletes a crashed run had queued but not confirmed."""
        self._delete(self.ledger.pending_deletes(), report)

    def _prune(self, seen: set[str], failed_origins: set[str], report: SyncReport, dry_run: bool) -> None:
        for doc_id, origin in self.ledger.doc_origins().items():
            if doc_id in seen or origin in failed_origins:
                continue
            report.documents["deleted"] += 1
            if dry_run:
                n = len(self.ledger.chunks(doc_id))
                report.chunks["deleted"] += n
                report.changes.append({"doc_id": doc_id, "action": "delete", "chunks_to_delete": n})
            else:
                self._delete(self.ledger.forget_document(doc_id), report)

    def _fail(self, report: SyncReport, doc_id: str, reason: str, dry_run: bool) -> None:
        report.documents["failed"] += 1
        report.failures.append({"doc_id": doc_id, "reason": reason})
        if not dry_run:
            self.ledger.record_failure(doc_id, reason)

    # ---- dry run ----------------------------------------------------------------------------
    def _describe(self, plan: DocPlan, report: SyncReport) -> None:
        report.chunks["upserted"] += len(plan.write)
        report.chunks["deleted"] += len(plan.stale_ids)
        report.changes.append(
            {
                "doc_id": plan.doc.doc_id,
                "action": plan.action,
                "chunks": len(plan.chunks),
                "chunks_to_upsert": len(plan.write),
                "chunks_to_delete": len(plan.stale_ids),
                "_shas": [plan.chunks[i].sha256 for i in plan.write],
            }
        )

    def _count_to_encode(self, report: SyncReport) -> int:
        shas = {sha for change in report.changes for sha in change.pop("_shas", [])}
        if not shas:
            return 0
        return len(shas) - len(self.cache.get_many(shas))

    def _progress(self, items: Iterable):
        if not self.progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc="sync", unit="doc", file=sys.stderr)


def make_encoder(config: SyncConfig) -> Encoder:
    from connector.encoders.bge_m3 import BGEM3Encoder

    return BGEM3Encoder.from_config(config.encoder)


def run_sync(config: SyncConfig, *, prune: bool = False, dry_run: bool = False, progress: bool = False,
             encoder: Encoder | None = None) -> SyncReport:
    """Sync the config's source into its sink; the library entry point behind `connector sync`."""
    from connector.sinks.factory import make_sink
    from connector.sources.files import FilesSource

    source = FilesSource(config.source)
    ledger = Ledger(config.state_dir)
    try:
        ledger.bind_target(sink_target(config))
        sink = make_sink(config.sink)
        try:
            run = SyncRun(config, source, sink, ledger, (lambda: encoder) if encoder else (lambda: make_encoder(config)),
                          progress=progress)
            try:
                return run.run(prune=prune, dry_run=dry_run)
            finally:
                run.close()
        finally:
            sink.close()
    finally:
        ledger.close()
