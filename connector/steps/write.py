"""Step 3, write: parts -> the store and the ledger.

Each part is upserted batch by batch; a document is committed once the store confirmed all its
points (one ledger transaction per batch), then its stale points are deleted. Crash safety, in
the order of writes:
  1. before a batch goes to the store, the ledger marks its points in flight (unknown ids are
     queued for deletion, known ones and their documents marked dirty);
  2. the store takes the batch;
  3. the ledger commits the finished documents, which takes their points off the delete queue
     and queues their stale points;
  4. the store deletes the stale points, and the ledger drops them from the queue.
A crash between any two steps leaves a state the next run converges from: it first deletes
what is queued, then rewrites every document that is not committed as it is in the source.

A batch the store refuses for good (a terminal error) is split by document down to the one bad
document, which becomes a dead letter with all its points (vectors from the embedding cache),
so `retry` needs no encoder. When the store is down (connector.retry.CircuitBreaker, from
`watch_store`): a batch that fails every retry with a transient error sets its documents aside
(DeferredPlans), and once a few calls in a row failed the circuit opens: no more store calls,
while reading and encoding go on. `resume_writes` probes the store at growing intervals; when it
answers, the documents set aside are written. A store down longer than
retry.outage_budget_seconds stops the sync (StopSync); the next sync writes what this one
encoded without encoding it again. Only this step writes the ledger.
"""

from __future__ import annotations

import logging
import time

from connector.config import SyncConfig
from connector.errors import StoreError, TransientError, error_kind
from connector.ledger import Ledger
from connector.records import REFUSED_KINDS, FailedDocument, Point, points_to_bytes
from connector.retry import CircuitBreaker
from connector.sinks.base import Sink
from connector.steps.deferred import DeferredPlans
from connector.steps.encode import EncodeStep, Part
from connector.steps.plan import DocPlan, Window
from connector.steps.report import SyncReport

log = logging.getLogger("connector.sync")

TICK_SECONDS = 1.0  # while waiting for the encoder, the write step checks a store that is down this often


class StopSync(Exception):
    """on_error: stop (a batch failed for good), or a store down longer than the outage budget:
    end the sync after recording why."""


class Writer:
    """Writes parts into the sink and commits them in the ledger (see the module doc). The sink,
    the ledger and `deferred` belong to the caller; `encoding` gives the vectors of documents
    written late or dead-lettered (from its cache). Counts go into the `report` of each call."""

    def __init__(self, *, config: SyncConfig, sink: Sink, ledger: Ledger, encoding: EncodeStep,
                 deferred: DeferredPlans, window_chunks: int):
        self.config = config  # on_error, and retry (the circuit breaker's settings)
        self.sink = sink
        self.ledger = ledger
        self.encoding = encoding
        self.deferred = deferred
        self.window_chunks = window_chunks  # points per group of deferred documents written at once
        self.breaker: CircuitBreaker | None = None  # set by watch_store
        self.deletes_waiting = False  # deletes left queued while the store was down
        self.unsettled: set[str] = set()  # origins of documents dead-lettered: read them again next time
        self.chunk_bar = None  # a progress bar of the points written (tqdm), or None

    def watch_store(self) -> None:
        """From here on a store outage pauses the writes instead of failing them (see the module doc)."""
        if self.sink.retry is None:
            return
        c = self.config.retry
        self.breaker = CircuitBreaker(c.open_after_failures, c.outage_budget_seconds, max_interval=max(c.max_wait, 1.0))
        self.sink.retry.breaker = self.breaker

    def release(self) -> None:
        """Give the sink back without the circuit breaker (the sink outlives the run)."""
        if self.breaker is not None and self.sink.retry is not None:
            self.sink.retry.breaker = None

    def write(self, part: Part, report: SyncReport, final: bool = False) -> None:
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
                self.fail(report, item, dry_run=False)
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
        if self.chunk_bar is not None:
            self.chunk_bar.update(len(batch))
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
            raise StopSync() from err

    def _defer(self, window: Window, docs: set[int]) -> None:
        for n in sorted(docs - window.set_aside):
            window.set_aside.add(n)
            self.deferred.add(window.plans[n])

    def resume_writes(self, report: SyncReport) -> None:
        """Between parts (and every TICK_SECONDS while the encoder works): probe a store that is
        down when a probe is due, stop the sync when it has been down too long, and write the
        deferred documents once it answers."""
        breaker = self.breaker
        if breaker is None:
            return
        if breaker.budget_spent() and len(self.deferred):
            raise self._outage_stop(report)
        if breaker.is_open and not (breaker.probe_due() and breaker.probe(self.sink.probe)):
            return
        if len(self.deferred):
            self._write_deferred(report, final=False)

    def drain_deferred(self, report: SyncReport) -> None:
        """After the last part: write every deferred document, waiting for the store while it is
        down, until the outage budget is spent."""
        while len(self.deferred):
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
        """Write the deferred documents, `window_chunks` points at a time, vectors from the cache."""
        plans: list[DocPlan] = []
        points = 0
        for plan in self.deferred.take():
            if self.breaker.is_open:  # down again: the rest waits, without fetching its vectors
                self.deferred.add(plan)
                continue
            plans.append(plan)
            points += len(plan.write) + len(plan.payload_only)
            if points >= self.window_chunks:
                self._write_plans(plans, report, final)
                plans, points = [], 0
        if plans:
            self._write_plans(plans, report, final)

    def _write_plans(self, plans: list[DocPlan], report: SyncReport, final: bool) -> None:
        window = Window(plans=plans)
        work = [(n, i) for n, plan in enumerate(plans) for i in plan.write]
        points, _ = self.encoding.points(plans, work)
        self.write(Part(window, points, 0, 0), report, final)  # counted when their window was encoded

    def _outage_stop(self, report: SyncReport) -> StopSync:
        breaker = self.breaker
        report.not_written = len(self.deferred)
        since = breaker.outages[-1]["started"][11:19]
        message = (
            f"store unreachable since {since} UTC ({breaker.seconds_down():.0f} s in this run, longer than "
            f"retry.outage_budget_seconds); {report.not_written} document(s) not written; the vectors encoded so "
            "far are cached: run `connector sync` again when the store is back"
        )
        log.error(message)
        report.errors.append({"operation": "write", "reason": message, "documents_not_written": report.not_written})
        return StopSync(message)

    def _commit(self, plans: list[DocPlan], report: SyncReport) -> None:
        if plans:
            self.ledger.commit_documents(plan.commit() for plan in plans)
            self.delete([pid for plan in plans for pid in plan.stale_ids], report)

    def _dead_letter(self, plans: list[DocPlan], err: StoreError, report: SyncReport) -> None:
        """Keep a failed write with every point the documents need (vectors from the embedding
        cache), so `retry` needs no encoder."""
        attempts = getattr(err, "attempts", 1)
        letter_docs = []
        points_total = 0
        for plan in plans:
            rewrite = plan.write + plan.payload_only  # a replay writes whole points
            placed, _ = self.encoding.points([plan], [(0, i) for i in rewrite])
            points = [point for _, point in placed]
            letter_docs.append((plan.commit(), points_to_bytes(points), len(points)))
            points_total += len(points)
        letter = self.ledger.add_dead_letter(str(err), error_kind(err), attempts, letter_docs)
        self.unsettled.update(plan.doc.metadata.get("path") for plan in plans)
        reason = f"store write failed after {attempts} attempt(s), kept as dead letter {letter}: {err}"
        for plan in plans:
            report.documents["failed"] += 1
            report.failures.append({"doc_id": plan.doc.doc_id, "reason": reason, "dead_letter": letter,
                                    "kind": "store"})
            self.ledger.record_failure(plan.doc.doc_id, reason)
        report.chunks["failed"] += points_total

    def delete(self, ids: list[str], report: SyncReport, last: bool = False) -> None:
        """Delete points the ledger already queued; on failure they stay queued for the next run
        (while the store is down, for the end of this one: `last`)."""
        if not ids:
            return
        try:
            self.sink.delete(ids)
        except TransientError as err:
            if self.breaker is not None and not last:
                self.deletes_waiting = True
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

    def prune(self, seen: set[str], failed_origins: set[str], report: SyncReport, dry_run: bool) -> None:
        """Remove the documents of the ledger that the source no longer gave (`seen`), except those
        from files with an unreadable part (`failed_origins`); refused when the source gave nothing."""
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
            self.remove(doc_id, report, dry_run)

    def remove(self, doc_id: str, report: SyncReport, dry_run: bool) -> None:
        """Delete a document from the ledger and its points from the store (a dry run counts them)."""
        report.documents["deleted"] += 1
        if dry_run:
            n = len(self.ledger.chunks(doc_id))
            report.chunks["deleted"] += n
            report.changes.append({"doc_id": doc_id, "action": "delete", "chunks_to_delete": n})
        else:
            self.delete(self.ledger.forget_document(doc_id), report)

    def fail(self, report: SyncReport, item: FailedDocument, dry_run: bool) -> None:
        """Record a document the source or the plan could not use (a dry run only counts it)."""
        report.documents["failed"] += 1
        entry = {"doc_id": item.doc_id, "reason": item.reason, "kind": item.kind}
        if item.kind in report.ignore_kinds:
            entry["ignored"] = True
        report.failures.append(entry)
        if item.kind in REFUSED_KINDS and item.origin:
            # stored before the source refused the file (an older version, or an opt-in since
            # withdrawn): it must not stay searchable, whether or not the sync prunes
            for doc_id in self.ledger.documents_from(item.origin):
                self.remove(doc_id, report, dry_run)
        if not dry_run:
            self.ledger.record_failure(item.doc_id, f"[{item.kind}] {item.reason}")
