"""The sync: source -> plan -> encode -> write -> store + ledger (the steps are connector.steps).

`SyncRun` checks the store before anything is read (it answers, the collection matches the layout
and still holds what the ledger lists, this state dir may write it), builds once what the steps
derive from the encoder (`prepare`), and runs the three steps, each in its own thread, joined by
bounded queues (connector/stages.py):
  plan    read documents, skip the unchanged ones (ledger), clean and chunk the rest, and group
          them in windows of a few hundred chunks to write (connector.steps.plan);
  encode  vectors for each window's chunks from the embedding cache, the rest encoded (and
          cached), in parts of at most WINDOW_CHUNKS points (connector.steps.encode);
  write   (the calling thread) upsert each part batch by batch, commit the documents whose
          points the store has all confirmed, then delete their stale points; set documents
          aside while the store is down (connector.steps.write: the order of writes, crash
          safety and the circuit breaker are described there).
So reading and writing overlap encoding, and memory stays flat however large the corpus: each
step is at most QUEUE_DEPTH items ahead of the next. Only the write step writes the ledger, and
it writes nothing, to the store or the ledger, before the first part is ready (`_start_writing`),
and a collection is created only once the encoder has started: an encoder that cannot start (a
Ray cluster unreachable: its pool starts at the first text to encode) fails the run untouched
when the first window has texts to encode.
`pipelined=False` runs the same steps one after the other in the calling thread.

What every command opens (state, sink, encoder, projection) is in connector.app.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from typing import Callable, Iterable

# make_encoder's home is connector.app; importable from here too (benchmarks and plugins use it)
from connector.app import make_encoder, open_state, projection_key, shared_collection, sink_target, store_lost
from connector.config import SyncConfig
from connector.encoders.base import Encoder
from connector.errors import StoreUnreachableError, TransientError
from connector.ledger import Ledger
from connector.ownership import claim
from connector.preprocess.chunking import CHUNKING_VERSION_KEY, chunking_version
from connector.preprocess.factory import document_text_settings, make_preprocessor
from connector.sinks.base import Sink
from connector.sources.base import Source
from connector.stages import TICK, background
from connector.steps.deferred import DeferredPlans
from connector.steps.encode import EncodeStep
from connector.steps.plan import DocPlan, Planner
from connector.steps.report import SyncReport, busy, busy_items
from connector.steps.setup import SyncSetup, prepare_sync
from connector.steps.write import TICK_SECONDS, StopSync, Writer

log = logging.getLogger("connector.sync")

WINDOW_CHUNKS = 1024  # chunks gathered before encoding; bounds memory, gives the encoder texts to sort by length
QUEUE_DEPTH = 2  # windows (parts) a step may work ahead of the next


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
        self.normalize = make_preprocessor(config)
        self.text_settings = document_text_settings(config)
        self.chunking_version = chunking_version(config.chunking, ledger)  # recorded by the sync (not a dry run)
        self.progress = progress
        self.pipelined = pipelined  # False: the same steps one after the other (a baseline, and for debugging)
        self.take_over = take_over  # claim the collection even if another state dir owns it
        self._cancel = threading.Event()  # set when the write step stops early: the others stop too
        self._deferred = DeferredPlans(config.state_dir)
        self._dry_run_shas: Counter[str] = Counter()  # points to write per text
        self._chunk_bar = None  # chunks written, so that one huge document still shows progress
        self._writing = False  # the writes have started: _start_writing
        # built by prepare()
        self.setup: SyncSetup | None = None
        self.planner: Planner | None = None
        self.encoding: EncodeStep | None = None
        self.writer: Writer | None = None

    def prepare(self) -> SyncSetup:
        """Build, once, the encoder and what the steps derive from it (connector.steps.setup), and
        the three steps. Neither loads the model's weights: an unchanged corpus never does."""
        if self.setup is None:
            setup = prepare_sync(self.config, self._encoder_factory(), self.sink.layout.name, self.chunking_version)
            self.planner = Planner(chunker=setup.chunker, fingerprint=setup.fingerprint, normalize=self.normalize,
                                   text_settings=self.text_settings, layout=self.sink.layout,
                                   collection=self.sink.collection, window_chunks=WINDOW_CHUNKS)
            self.encoding = EncodeStep(encoder=setup.encoder, cache=setup.cache, projection=setup.projection,
                                       projection_config=self.config.projection, window_chunks=WINDOW_CHUNKS)
            self.writer = Writer(config=self.config, sink=self.sink, ledger=self.ledger, encoding=self.encoding,
                                 deferred=self._deferred, window_chunks=WINDOW_CHUNKS)
            self.setup = setup
        return self.setup

    def ensure_collection(self) -> bool:
        setup = self.prepare()  # the model's dimension and the projection
        k = setup.projection.k if setup.projection else None
        created = self.sink.ensure_collection(setup.encoder.dimension, k)
        if setup.projection:  # recorded with the collection: queries must use the same matrix
            self.ledger.set_meta(projection_key(self.sink.collection), setup.projection.sha256)
        return created

    def close(self) -> None:
        self._deferred.close()
        if self.writer is not None:
            self.writer.release()
        if self.setup is not None:
            self.setup.close()
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
            self._move_renamed_documents(report)
        self.prepare()  # a dry run's first need of it: the fingerprint, for the stamps
        planner, writer = self.planner, self.writer
        planner.offer_stamps(self.source, self.ledger)
        try:
            if dry_run:
                self._dry_run(items, report)
            else:
                self._sync(items, report)
        except StopSync:
            report.stopped = True  # the rest waits for the next run, nothing is pruned
            return report
        finally:
            if writer.breaker is not None:
                report.outages = writer.breaker.outages
        if prune:
            with busy(report, "write"):
                writer.prune(planner.seen, planner.failed_origins, report, dry_run)
        if dry_run:
            cache = self.setup.cache
            in_cache = cache.get_many(self._dry_run_shas) if self._dry_run_shas else {}
            to_encode = len(self._dry_run_shas) - len(in_cache)
            report.chunks["encoded"] = to_encode
            report.chunks["cached"] = report.chunks["upserted"] - to_encode
            report.cache_hits = sum(self._dry_run_shas[sha] for sha in in_cache)
        else:
            self.ledger.keep_failures(f["doc_id"] for f in report.failures)
            unsettled = planner.failed_origins | writer.unsettled  # read again next time, whatever their stamp
            self.ledger.replace_stamps({o: s for o, s in planner.stamps.items() if o not in unsettled})
            if writer.deletes_waiting:  # left queued while the store was down
                with busy(report, "write"):
                    writer.delete(self.ledger.pending_deletes(), report, last=True)
        return report

    def _preflight(self, report: SyncReport) -> None:
        """Before anything is read or encoded: the store answers, the collection exists (created if
        missing) with the configured layout, and still holds what the ledger lists. A collection is
        created only once the encoder has started (a new collection's documents are all to encode),
        so that an encoder that cannot start (a Ray cluster unreachable) leaves the store untouched."""
        try:
            self._check_store_has_ledger(report)
            if self.sink.describe() is None:
                self.prepare().encoder.start()
            self.ensure_collection()
            claim(self.sink, self.ledger, shared_collection(self.config), self.take_over)
        except TransientError as err:
            raise StoreUnreachableError(
                f"cannot reach the store {sink_target(self.config)}: {err} Nothing was read, encoded or written: "
                "start the store (or correct the sink's address) and run the sync again."
            ) from err

    def _start_writing(self, report: SyncReport) -> None:
        """Just before the sync's first write of documents: by then the first window's vectors are
        ready (or it needed none), so an encoder that could not start at its first text (a Ray
        cluster unreachable) has failed the run with the store and the ledger untouched. Record the
        chunking version, delete what a crashed run had queued, then let a store outage pause the
        writes instead of failing them. Once per run."""
        if self._writing:
            return
        self._writing = True
        # Before any document is written with it: an interrupted re-chunk goes on with this version.
        self.ledger.set_meta(CHUNKING_VERSION_KEY, str(self.chunking_version))
        with busy(report, "write"):
            self.writer.delete(self.ledger.pending_deletes(), report)  # what a crashed run had queued
        self.writer.watch_store()

    def _sync(self, items, report: SyncReport) -> None:
        """The three steps (see the module doc); inline, one after the other, when not pipelined."""
        def stage(items, name, tick=None):
            return background(items, QUEUE_DEPTH, name, tick) if self.pipelined else iter(items)

        writer = self.writer
        reader = self.ledger.reader()  # the plan step's own connection (SQLite connections are per thread)
        try:
            windows = stage(busy_items(self.planner.windows(self._progress(items), reader, report, self._cancel),
                                       report, "plan"), "plan")
            with closing(stage(self.encoding.parts(windows, report, self._cancel), "encode",
                               tick=TICK_SECONDS)) as parts:
                try:
                    for part in parts:
                        if part is not TICK:
                            self._start_writing(report)
                        with busy(report, "write"):
                            writer.resume_writes(report)
                            if part is not TICK:
                                writer.write(part, report)
                    self._start_writing(report)  # nothing to write: the pending deletes are still done
                    with busy(report, "write"):
                        writer.drain_deferred(report)
                except BaseException:
                    self._cancel.set()  # the other steps stop at their next document / part
                    raise
        finally:
            reader.close()

    def _dry_run(self, items, report: SyncReport) -> None:
        windows = self.planner.windows(self._progress(items), self.ledger, report, self._cancel)
        for window in busy_items(windows, report, "plan"):
            for item in window.failed:
                self.writer.fail(report, item, dry_run=True)
            for plan in window.plans:
                self._describe(plan, report)

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
        """`items` with progress bars on stderr (documents read, points written) when asked for."""
        if not self.progress:
            return items
        from tqdm import tqdm

        self._chunk_bar = self.writer.chunk_bar = tqdm(desc="written", unit="chunk", file=sys.stderr, position=1)
        return tqdm(items, desc="read", unit="doc", file=sys.stderr, position=0)


def run_sync(config: SyncConfig, *, prune: bool = False, dry_run: bool = False, progress: bool = False,
             encoder: Encoder | None = None, sleep=None, pipelined: bool = True, take_over: bool = False,
             report: SyncReport | None = None) -> SyncReport:
    """Sync the config's source into its sink; the library entry point behind `connector sync`.
    `pipelined=False` runs the stages one after the other in this thread (same result, slower);
    `take_over` claims a collection that another state dir owns (see connector.ownership);
    `report`: fill this one in (see SyncRun.run), so that the counts survive an exception."""
    from connector.sources.factory import make_source

    source = make_source(config.source)
    built: list[Encoder] = []  # the encoder this call builds (none when given one) is closed by it

    def build() -> Encoder:
        built.append(make_encoder(config))
        return built[-1]

    with open_state(config, sleep=sleep, dry_run=dry_run) as (ledger, sink):
        run = SyncRun(config, source, sink, ledger, (lambda: encoder) if encoder else build,
                      progress=progress, pipelined=pipelined, take_over=take_over)
        try:
            return run.run(prune=prune, dry_run=dry_run, report=report)
        finally:
            run.close()
            for made in built:
                made.close()
