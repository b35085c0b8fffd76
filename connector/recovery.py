"""Getting back to a store that matches the ledger: replay dead letters, verify, repair."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from connector.config import SyncConfig
from connector.errors import ConnectorError, StoreError, error_kind
from connector.ownership import claim
from connector.app import open_state, shared_collection, store_lost
from connector.hashes import chunk_key
from connector.records import points_from_bytes


@dataclass
class RetryReport:
    letters: dict = field(default_factory=lambda: dict.fromkeys(["retried", "succeeded", "failed"], 0))
    documents_committed: int = 0
    points_written: int = 0
    points_deleted: int = 0
    failures: list = field(default_factory=list)  # [{dead_letter, error, documents}]

    @property
    def exit_code(self) -> int:
        return 3 if self.failures else 0

    def to_json(self) -> dict:
        return {"letters": self.letters, "documents_committed": self.documents_committed,
                "points_written": self.points_written, "points_deleted": self.points_deleted,
                "failures": self.failures}


def retry_dead_letters(config: SyncConfig, ids: list[int] | None = None, limit: int | None = None,
                       sleep=None) -> RetryReport:
    """Replay dead letters (oldest first) without re-encoding: on success the documents are
    committed to the ledger and the letter is removed; on failure it stays, with the new error."""
    report = RetryReport()
    with open_state(config, sleep=sleep) as (ledger, sink):
        try:
            lost = store_lost(sink, ledger)
        except StoreError:
            lost = None  # unreachable: every letter fails below and stays, with the error
        if lost:
            raise ConnectorError(f"{lost}; run `connector sync` first: it rewrites every document from the "
                                 "source (from the embedding cache, without re-encoding) and drops the dead letters")
        try:
            claim(sink, ledger, shared_collection(config))
        except StoreError:
            pass  # unreachable (every letter fails below and stays) or not created yet (the letter creates it)
        report.points_deleted += _delete_pending(ledger, sink, ledger.pending_deletes(), report)
        for letter in ledger.dead_letters(ids=ids, limit=limit):
            report.letters["retried"] += 1
            contents = ledger.dead_letter_contents(letter.id)
            points = [p for _, blob in contents for p in points_from_bytes(blob)]
            owner = {p.id: commit.doc_id for commit, blob in contents for p in points_from_bytes(blob)}
            try:
                if points:
                    sink.ensure_collection(len(points[0].dense))
                    ledger.mark_in_flight(((owner[p.id], p.id) for p in points), replaying_dead_letter=True)
                    sink.upsert(points)
            except StoreError as err:
                attempts = getattr(err, "attempts", 1)
                ledger.dead_letter_failed_again(letter.id, str(err), error_kind(err), attempts)
                report.letters["failed"] += 1
                report.failures.append({"dead_letter": letter.id, "error": str(err), "documents": letter.doc_ids})
                continue
            commits = ledger.resolve_dead_letter(letter.id)
            report.letters["succeeded"] += 1
            report.documents_committed += len(commits)
            report.points_written += len(points)
            stale = [pid for c in commits for pid in c.stale_point_ids]
            report.points_deleted += _delete_pending(ledger, sink, stale, report)
    return report


def _delete_pending(ledger, sink, ids: list[str], report: RetryReport) -> int:
    """Delete queued points; a failure leaves them queued (the next run tries again)."""
    if not ids:
        return 0
    try:
        sink.delete(ids)
    except StoreError as err:
        report.failures.append({"dead_letter": None, "error": f"deleting {len(ids)} queued point(s): {err}",
                                "documents": []})
        return 0
    ledger.deletes_done(ids)
    return len(ids)


@dataclass
class VerifyReport:
    ledger_points: int = 0
    store_points: int = 0
    missing: list = field(default_factory=list)  # in the ledger, not in the store: [{id, doc_id}]
    orphans: list = field(default_factory=list)  # in the store, unknown to the ledger: [{id, doc_id}]
    mismatched: list = field(default_factory=list)  # in both, but the store's payload is not the ledger's
    stale_counts: list = field(default_factory=list)  # [{doc_id, ledger, store}]
    dead_letters: int = 0
    pending_deletes: int = 0
    foreign: int = 0  # shared collection: points of other state dirs (never orphans, never deleted)
    repaired: dict | None = None

    @property
    def ok(self) -> bool:
        """The store holds exactly what the ledger lists, and nothing is waiting to be written or deleted."""
        return not (self.missing or self.orphans or self.mismatched or self.stale_counts
                    or self.dead_letters or self.pending_deletes)

    def to_json(self) -> dict:
        return {"ok": self.ok, "ledger_points": self.ledger_points, "store_points": self.store_points,
                "missing": self.missing, "orphans": self.orphans, "mismatched": self.mismatched,
                "stale_counts": self.stale_counts, "dead_letters": self.dead_letters,
                "pending_deletes": self.pending_deletes, "foreign_points": self.foreign, "repaired": self.repaired}


def verify(config: SyncConfig, sleep=None) -> VerifyReport:
    """Compare the ledger with the store: every ledger point present with the payload the ledger
    recorded, no point the ledger does not know, and per document the same number of points."""
    with open_state(config, sleep=sleep, dry_run=True) as (ledger, sink):
        return compare_store(ledger, sink, shared_collection(config))


def compare_store(ledger, sink, shared: bool) -> VerifyReport:
    """`verify`'s comparison of an open ledger with an open sink (whatever store the ledger is bound to).

    One scan of the store, with payloads, in the store's own order, each point looked up in the
    ledger's point index: time linear in the points, memory that of the index."""
    # shared collection: the points of other state dirs are not orphans; ours are those the ledger queued
    ours = set(ledger.pending_deletes()) if shared else None

    def compare(points):  # a scan retried from the start compares afresh
        return _compare(points, ledger.point_index(), ours)

    report = compare(iter(())) if sink.describe() is None else sink.scan_payloads(compare)
    counts = ledger.counts()
    report.dead_letters, report.pending_deletes = counts["dead_letters"], counts["pending_deletes"]
    return report


_FOUND = object()  # `_compare` marks each ledger point the scan found with it (no copy of the index kept)


def _compare(points, expected: dict, ours: set | None) -> VerifyReport:
    """The report of the store's (id, payload) pairs against the ledger's point index
    (point_id -> (doc_id, chunk_key, fingerprint)), whose found entries it marks: the others are missing.
    `ours`: in a shared collection, the unknown points that are this state dir's (else None)."""
    report = VerifyReport(ledger_points=len(expected))
    ledger_per_doc = Counter(doc_id for doc_id, _, _ in expected.values())
    orphans: dict[str, dict] = {}
    for pid, payload in points:
        entry = expected.get(pid)
        if entry is _FOUND:  # a scan that gave a point twice: never an orphan (repair deletes those)
            continue
        if entry is None:
            if ours is not None and pid not in ours:
                report.foreign += 1
            elif pid not in orphans:
                orphans[pid] = {"id": pid, "doc_id": payload.get("doc_id")}
            continue
        expected[pid] = _FOUND
        report.store_points += 1
        doc_id, key, fingerprint = entry
        if chunk_key(payload, fingerprint) != key:
            report.mismatched.append({"id": pid, "doc_id": doc_id})
    report.orphans = list(orphans.values())
    report.store_points += report.foreign + len(report.orphans)
    report.missing = [{"id": pid, "doc_id": entry[0]} for pid, entry in expected.items() if entry is not _FOUND]
    for found in (report.missing, report.orphans, report.mismatched):
        found.sort(key=lambda point: point["id"])
    # A document's store count is its ledger count, less its missing points, plus its orphans.
    missing_per_doc = Counter(p["doc_id"] for p in report.missing)
    orphans_per_doc = Counter(p["doc_id"] for p in report.orphans if p["doc_id"] is not None)
    report.stale_counts = [
        {"doc_id": d, "ledger": ledger_per_doc[d], "store": ledger_per_doc[d] - missing_per_doc[d] + orphans_per_doc[d]}
        for d in sorted(set(missing_per_doc) | set(orphans_per_doc))
        if missing_per_doc[d] != orphans_per_doc[d]
    ]
    return report


def repair(config: SyncConfig, found: VerifyReport, sleep=None, encoder=None) -> dict:
    """Fix what `verify` found: delete orphans, then let a sync rewrite missing and mismatched
    points (from the embedding cache, re-reading the source)."""
    from connector.pipeline import run_sync

    rewrite = [p["id"] for p in found.missing + found.mismatched]
    orphans = [p["id"] for p in found.orphans]
    with open_state(config, sleep=sleep) as (ledger, sink):
        claim(sink, ledger, shared_collection(config))  # never delete another state dir's points
        if orphans:
            sink.delete(orphans)
            ledger.deletes_done(orphans)
        ledger.invalidate(rewrite)
    # Dead letters are superseded by the sync (it rewrites their documents from the source).
    sync = run_sync(config, sleep=sleep, encoder=encoder)
    return {"orphans_deleted": len(orphans), "points_invalidated": len(rewrite),
            "sync": {"documents": sync.documents, "chunks": sync.chunks, "failures": sync.failures}}
