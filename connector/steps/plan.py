"""Step 1, plan: source items -> windows of DocPlans.

For each document the source gives, the ledger says whether it changed (content hash, pipeline
fingerprint); a new, changed or touched one is cleaned and chunked, and its chunks matched to the
points the ledger holds: which to write with vectors, which to give a new payload only, which are
stale. Documents are grouped in windows of about `window_chunks` chunks to write (so the encoder
gets full batches across small documents). Needs the model's tokenizer (the chunker), never its
weights; reads the ledger, writes nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from connector.hashes import chunk_key, content_hash_for, stable_hash, volatile_hash
from connector.ledger import DocCommit, Ledger, LedgerChunk
from connector.preprocess.chunking import BaseChunker
from connector.records import Chunk, Document, FailedDocument, UnchangedFile, point_id
from connector.schemas_layout import Layout
from connector.sources.base import Source
from connector.steps.report import SyncReport


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
    """Planned documents on their way through the steps, with the source's failures among them."""

    plans: list[DocPlan] = field(default_factory=list)
    failed: list[FailedDocument] = field(default_factory=list)
    chunks: int = 0  # chunks to write
    # kept by the write step
    remaining: list[int] | None = None  # per plan, points not yet confirmed by the store
    set_aside: set[int] = field(default_factory=set)  # plans dead-lettered or deferred: skip their other points


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


class Planner:
    """Plans a source's documents against a ledger (see the module doc).

    What it saw is kept for the run's end: `seen` (doc ids: what pruning keeps), `failed_origins`
    (files with an unreadable part: never pruned) and `stamps` (origin -> stamp of each file read or
    skipped, with `stamp_suffix`: what the ledger records so that the next run may skip it)."""

    def __init__(self, *, chunker: BaseChunker, fingerprint: str, normalize: Callable[[str], str],
                 text_settings: dict, layout: Layout, collection: str, window_chunks: int):
        self.chunker = chunker
        self.fingerprint = fingerprint
        self.normalize = normalize
        self.text_settings = text_settings
        self.layout = layout  # a payload it finds too large fails its document before it is encoded
        self.collection = collection  # point ids are derived from it
        self.window_chunks = window_chunks
        self.seen: set[str] = set()
        self.failed_origins: set[str] = set()
        self.stamps: dict[str, str] = {}
        self._known_stamps: dict[str, str] = {}  # what the ledger recorded, for the files the source may skip

    @property
    def stamp_suffix(self) -> str:
        """What besides the file decides its documents' points (text settings, model, chunking, layout):
        recorded after each file's stamp, so that a change of either makes every file be read again."""
        return "|" + stable_hash({"text_settings": self.text_settings, "fingerprint": self.fingerprint})[:16]

    def offer_stamps(self, source: Source, ledger: Ledger) -> None:
        """Tell the source which files it need not read (see Source.skip_unchanged)."""
        suffix = self.stamp_suffix
        self._known_stamps = {origin: stamp for origin, stamp in ledger.stamps().items() if stamp.endswith(suffix)}
        source.skip_unchanged({origin: stamp[: -len(suffix)] for origin, stamp in self._known_stamps.items()})

    def windows(self, items: Iterable, reader: Ledger, report: SyncReport,
                stop: threading.Event | None = None) -> Iterator[Window]:
        """Plan every item of a source's read(); yield them in windows of about `window_chunks`
        chunks to write. Counts the documents in `report`; ends early once `stop` is set."""
        window = Window()
        for item in items:
            if stop is not None and stop.is_set():
                return
            if isinstance(item, UnchangedFile):
                self._skipped(item.origin, reader, report)
                continue
            report.documents["seen"] += 1
            self.seen.add(item.doc_id)
            if isinstance(item, Document):
                origin = item.metadata.get("path")
                if item.stamp is not None and origin is not None:
                    self.stamps[origin] = item.stamp + self.stamp_suffix
                item = self.plan(item, reader)  # a DocPlan, a FailedDocument, or None when unchanged
            if item is None:
                report.documents["unchanged"] += 1
                continue
            if isinstance(item, FailedDocument):
                window.failed.append(item)
                if item.origin:
                    self.failed_origins.add(item.origin)
            else:
                report.documents[item.action] += 1
                window.plans.append(item)
                window.chunks += len(item.write) + len(item.payload_only)
            if window.chunks >= self.window_chunks or len(window.failed) >= self.window_chunks:
                yield window
                window = Window()
        if window.plans or window.failed:
            yield window

    def _skipped(self, origin: str, reader: Ledger, report: SyncReport) -> None:
        """A file the source did not read (its stamp is unchanged): its documents are seen, unchanged."""
        doc_ids = reader.documents_from(origin)
        report.documents["seen"] += len(doc_ids)
        report.documents["unchanged"] += len(doc_ids)
        self.seen.update(doc_ids)
        self.stamps[origin] = self._known_stamps[origin]

    def plan(self, doc: Document, reader: Ledger) -> DocPlan | FailedDocument | None:
        """What the document needs written, given what the ledger (`reader`) holds: None when it is
        unchanged, a FailedDocument when a chunk's payload is too large for the store."""
        content_hash = content_hash_for(doc, self.text_settings)
        known = reader.document(doc.doc_id)
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
            problem = self.layout.oversized(payload)
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
            while (pid := point_id(self.collection, doc_id, chunks[i].index, variant)) in taken:
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
