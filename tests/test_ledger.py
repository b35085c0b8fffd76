import pytest

from connector.errors import ConfigError
from connector.ledger import DocCommit, Ledger, LedgerChunk


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "state")
    yield led
    led.close()


def chunks(*ids):
    return [LedgerChunk(i, pid, f"key-{pid}") for i, pid in enumerate(ids)]


def test_commit_replaces_chunks_and_queues_stale(ledger):
    ledger.commit_document(DocCommit("a", "h1", "fp", chunks("p0", "p1", "p2"), []))
    assert [c.point_id for c in ledger.chunks("a")] == ["p0", "p1", "p2"]
    ledger.commit_document(DocCommit("a", "h2", "fp", chunks("p0"), ["p1", "p2"]))
    assert ledger.document("a").content_hash == "h2" and len(ledger.chunks("a")) == 1
    assert ledger.pending_deletes() == ["p1", "p2"]
    ledger.deletes_done(["p1"])
    assert ledger.pending_deletes() == ["p2"]


def test_rewritten_point_is_never_deleted_by_an_older_queued_delete(ledger):
    ledger.commit_document(DocCommit("a", "h1", "fp", chunks("p0"), ["p1"]))
    ledger.commit_document(DocCommit("a", "h2", "fp", chunks("p0", "p1"), []))
    assert ledger.pending_deletes() == []


def test_forget_moves_points_to_pending(ledger):
    ledger.commit_document(DocCommit("a", "h", "fp", chunks("p0", "p1"), []))
    ledger.record_failure("a", "old failure")
    assert ledger.forget_document("a") == ["p0", "p1"]
    assert ledger.document("a") is None and ledger.chunks("a") == []
    assert ledger.pending_deletes() == ["p0", "p1"] and ledger.failed_documents() == []
    assert ledger.counts() == {"documents": 0, "chunks": 0, "failed_documents": 0, "pending_deletes": 2, "dead_letters": 0}


def test_rename_keeps_the_chunks_and_marks_the_document_changed(ledger):
    ledger.commit_document(DocCommit("7", "h", "fp", chunks("p0", "p1"), [], origin="kb.jsonl"))
    ledger.commit_document(DocCommit("8", "h", "fp", chunks("q0"), [], origin="kb.jsonl"))
    ledger.commit_document(DocCommit("kb.jsonl#8", "h", "fp", chunks("r0"), [], origin="kb.jsonl"))
    ledger.record_failure("7", "old failure")
    ledger.add_dead_letter("boom", "transient", 1, [(DocCommit("7", "h2", "fp", chunks("p0"), []), b"[]", 1)])
    queued = ledger.rename_documents({"7": "kb.jsonl#7", "8": "kb.jsonl#8"})
    assert ledger.doc_ids() == ["kb.jsonl#7", "kb.jsonl#8"]
    assert ledger.document("kb.jsonl#7").content_hash == ""  # the next sync rewrites it
    assert [c.point_id for c in ledger.chunks("kb.jsonl#7")] == ["p0", "p1"]  # and deletes these as stale
    assert ledger.failed_documents() == [] and ledger.dead_letters() == []
    # already known under its new id: the old entry is forgotten, its points queued for deletion
    assert queued == ["q0"] and ledger.pending_deletes() == ["q0"]
    assert [c.point_id for c in ledger.chunks("kb.jsonl#8")] == ["r0"]


def test_commit_clears_a_recorded_failure(ledger):
    ledger.record_failure("a", "could not read")
    assert ledger.failed_documents()[0]["reason"] == "could not read"
    ledger.commit_document(DocCommit("a", "h", "fp", chunks("p0"), []))
    assert ledger.failed_documents() == []


def test_state_survives_reopen_and_target_binding(tmp_path):
    led = Ledger(tmp_path / "s")
    led.bind_target("qdrant:/x#kb")
    led.commit_document(DocCommit("a", "h", "fp", chunks("p0"), []))
    led.close()
    led = Ledger(tmp_path / "s")
    try:
        led.bind_target("qdrant:/x#kb")
        assert led.doc_ids() == ["a"] and list(led.iter_point_ids()) == ["p0"]
        with pytest.raises(ConfigError, match="belongs to qdrant:/x#kb"):
            led.bind_target("milvus:/y#kb")
    finally:
        led.close()


def test_wal_mode(ledger):
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
