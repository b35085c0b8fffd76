"""`verify` stays linear at scale: one scan of the store with payloads, page by page, no per-page
retrieve (at 475 000 points the old sorted-id retrieves took 15 minutes). Counted store calls,
never durations; the report's findings are the same as before."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connector.config import RetryConfig, parse_config
from connector.errors import TransientError
from connector.pipeline import run_sync
from connector.records import Point, SparseVector
from connector.recovery import verify
from connector.retry import RetryPolicy
from connector.schemas_layout import load_layout
from connector.sinks.base import Sink
from connector.sinks.factory import make_sink
from connector.sinks.qdrant_edge import QdrantEdgeSink

PAGE = 16
ORPHAN = "9b3c1d1e-0000-4000-8000-000000000001"


class CountingShard:
    """An Edge shard whose calls are counted by name."""

    def __init__(self, shard, calls: list[str]):
        self._shard, self._calls = shard, calls

    def __getattr__(self, name):
        attr = getattr(self._shard, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self._calls.append(name)
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def edge_calls(monkeypatch) -> list[str]:
    """The names of the Edge shard calls every QdrantEdgeSink makes (scroll, retrieve, count, ...)."""
    calls: list[str] = []
    opened = QdrantEdgeSink._open
    monkeypatch.setattr(QdrantEdgeSink, "_open", lambda self, *a, **k: CountingShard(opened(self, *a, **k), calls))
    return calls


def synced_config(tmp_path, tiny_model_dir, tiny_encoder):
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(40):
        parts = [f"Document {n}, part {k}: the pump with serial {n * 10 + k} reports pressure {k * 3} bar."
                 for k in range(1 + n % 4)]
        (docs / f"doc-{n:02d}.md").write_text("\n\n".join(parts), encoding="utf-8")
    config = parse_config({
        "source": {"type": "files", "path": str(docs)},
        "chunking": {"max_tokens": 16, "overlap_tokens": 2},
        "encoder": {"model": str(tiny_model_dir), "batch_size": 8},
        "sink": {"type": "qdrant", "path": str(tmp_path / "qdrant"), "collection": "kb", "batch_size": 32},
        "state_dir": str(tmp_path / "state"),
    }, tmp_path, origin="test")
    assert run_sync(config, encoder=tiny_encoder).exit_code == 0
    return config


def test_verify_scans_the_store_once_page_by_page_and_retrieves_nothing(tmp_path, tiny_model_dir, tiny_encoder,
                                                                         monkeypatch, edge_calls):
    config = synced_config(tmp_path, tiny_model_dir, tiny_encoder)
    monkeypatch.setattr(QdrantEdgeSink, "page_size", PAGE)
    edge_calls.clear()
    report = verify(config)
    assert report.ok and report.store_points == report.ledger_points > 4 * PAGE
    assert edge_calls.count("retrieve") == 0  # the old verify retrieved every point again, page by page
    assert edge_calls.count("scroll") <= math.ceil(report.store_points / PAGE) + 1


def test_the_findings_of_one_scan(tmp_path, tiny_model_dir, tiny_encoder, monkeypatch, edge_calls):
    """Missing, orphan (counted for its document), stale payload: as the old verify reported them."""
    config = synced_config(tmp_path, tiny_model_dir, tiny_encoder)
    with make_sink(config.sink) as sink:
        ids = sorted(sink.iter_ids())
        sink.delete(ids[:2])
        victim = sink.retrieve([ids[5]], with_vectors=True)[0]
        sink.upsert([Point(victim.id, victim.dense, victim.sparse, {**victim.payload, "text": "tampered"})])
        ghost = {**victim.payload, "doc_id": "ghost.md"}
        sink.upsert([Point(ORPHAN, victim.dense, SparseVector.empty(), ghost)])
    monkeypatch.setattr(QdrantEdgeSink, "page_size", PAGE)
    edge_calls.clear()
    report = verify(config)
    assert edge_calls.count("retrieve") == 0 and not report.ok
    assert [m["id"] for m in report.missing] == ids[:2]
    assert report.mismatched == [{"id": ids[5], "doc_id": victim.payload["doc_id"]}]
    assert report.orphans == [{"id": ORPHAN, "doc_id": "ghost.md"}]
    assert report.store_points == report.ledger_points - 2 + 1
    short = {m["doc_id"] for m in report.missing}  # documents with a point missing: one row each
    assert {r["doc_id"] for r in report.stale_counts} == short | {"ghost.md"}
    assert {"doc_id": "ghost.md", "ledger": 0, "store": 1} in report.stale_counts
    for row in report.stale_counts:
        if row["doc_id"] != "ghost.md":
            gone = sum(1 for m in report.missing if m["doc_id"] == row["doc_id"])
            assert row["ledger"] > 0 and row["store"] == row["ledger"] - gone


class PagedSink(Sink):
    """A fake store with only ids and retrieve (as a plugin might have): counts its calls."""

    def __init__(self, n: int):
        super().__init__("kb", batch_size=8, layout=load_layout(), page_size=10)
        self.points = {f"p{i:03d}": {"doc_id": f"d{i // 3}"} for i in range(n)}
        self.retrieves: list[int] = []
        self.fail_once = False

    def iter_ids(self):
        for n, pid in enumerate(self.points):
            if n == 25 and self.fail_once:
                self.fail_once = False
                raise TransientError("connection reset during the scan")
            yield pid

    def _retrieve(self, ids, with_vectors=False):
        self.retrieves.append(len(ids))
        return [Point(i, np.zeros(0, np.float32), SparseVector.empty(), self.points[i]) for i in ids]

    def _describe(self): ...
    def _create(self, sizes): ...
    def _upsert(self, points): ...
    def _delete(self, ids): ...
    def _search_dense(self, vector, limit, using="dense"): ...
    def _search_sparse(self, vector, limit): ...
    def _count(self): ...
    def _drop(self): ...


def test_a_sink_without_its_own_scan_retrieves_each_page_of_ids_once():
    sink = PagedSink(35)
    assert sink.scan_payloads(dict) == sink.points
    assert sink.retrieves == [10, 10, 10, 5]


def test_a_scan_that_fails_midway_is_retried_from_the_start_with_a_fresh_consumer():
    sink = PagedSink(35)
    sink.retry, sink.fail_once = RetryPolicy(RetryConfig(attempts=2, initial_wait=0, jitter=0), sleep=lambda s: None), True
    consumers = []

    def consume(points):
        consumers.append({})
        consumers[-1].update(points)
        return consumers[-1]

    assert sink.scan_payloads(consume) == sink.points
    assert len(consumers) == 2 and len(consumers[0]) == 20  # the first one saw two pages, then the error


def test_the_chunk_keys_of_existing_ledgers_still_match():
    """stable_hash keeps its exact output (the ledger's chunk keys are compared with it)."""
    from datetime import date

    from connector.hashes import stable_hash

    obj = {"payload": {"text": "Ünïcode ✓ 日本語", "doc_id": "a.md", "chunk_index": 2,
                       "metadata": {"path": "a.md", "pages": [2, 3], "when": date(2026, 11, 29)}},
           "fingerprint": "f" * 64}
    assert stable_hash(obj) == "9b224e38dc5ed95d9b91a1087e8ba6ef7a93e9318de91ccf385b26f7c2759d25"


def test_a_scan_that_gives_a_point_twice_makes_no_orphan_and_counts_it_once(monkeypatch):
    import connector.recovery as recovery

    index = {"a": ("doc-1", "key-a", "fp"), "b": ("doc-1", "key-b", "fp"), "c": ("doc-2", "key-c", "fp")}
    payloads = {pid: {"doc_id": doc, "key": key} for pid, (doc, key, _) in index.items()}
    monkeypatch.setattr(recovery, "chunk_key", lambda payload, fingerprint: payload.get("key"))
    # a plugin whose paging repeats a point at a page boundary, and an unknown point given twice
    scan = [("a", payloads["a"]), ("b", payloads["b"]), ("b", payloads["b"]), ("x", {"doc_id": "doc-9"}),
            ("x", {"doc_id": "doc-9"})]
    report = recovery._compare(iter(scan), dict(index), ours=None)
    assert report.orphans == [{"id": "x", "doc_id": "doc-9"}]  # not "b": repair would delete a live point
    assert report.missing == [{"id": "c", "doc_id": "doc-2"}] and report.mismatched == []
    assert report.store_points == 3 and report.ledger_points == 3
