"""Failed writes never lose data: dead letters, `connector retry`, `verify`, the lock — through the CLI,
against a real milvus-lite server that is killed mid-sync, and against embedded Qdrant with the real
qdrant-client exception types raised at the client boundary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from connector.cli import cli
from connector.config import load_config
from connector.encoders.bge_m3 import BGEM3Encoder
from connector.ledger import Ledger
from connector.sinks.factory import make_sink
from milvus_server import MilvusServer, free_port

SECRET = "tok-ab12cd34ef56"
DOCS = 12


def write_corpus(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(DOCS):
        paragraphs = [f"Document {n}, part {k}: the device with serial {n * 100 + k} reports status code {k}."
                      for k in range(1 + n % 3)]
        (root / f"doc-{n:02d}.md").write_text("\n\n".join(paragraphs), encoding="utf-8")


def make_config(tmp_path: Path, model: Path, sink: dict, sink_batch_size: int = 4, **extra) -> Path:
    write_corpus(tmp_path / "docs")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 16, "overlap_tokens": 2},
        "encoder": {"model": str(model), "max_length": 512, "batch_size": 8},
        "sink": {**sink, "collection": "kb", "batch_size": sink_batch_size},
        "retry": {"attempts": 2, "initial_wait": 0.01, "max_wait": 0.02, "jitter": 0, "outage_budget_seconds": 5},
        "state_dir": "./state",
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    out = result.stdout + result.stderr
    assert SECRET not in out
    return result.exit_code, (json.loads(result.stdout) if result.stdout.strip() else {}), out


def assert_store_matches_source(config_path: Path) -> None:
    """Every chunk of the source in the store exactly once, with the vectors a fresh encode gives."""
    config = load_config(config_path)
    ledger = Ledger(config.state_dir)
    try:
        ledger_ids = sorted(ledger.iter_point_ids())
        assert sorted(ledger.doc_ids()) == sorted(p.name for p in (config_path.parent / "docs").iterdir())
        assert ledger.counts()["dead_letters"] == 0 and ledger.counts()["pending_deletes"] == 0
    finally:
        ledger.close()
    sink = make_sink(config.sink)
    try:
        store_ids = sorted(sink.iter_ids())
        assert store_ids == ledger_ids and sink.count() == len(ledger_ids)
        points = sink.retrieve(store_ids, with_vectors=True)
    finally:
        sink.close()
    encoder = BGEM3Encoder(config.encoder.model, max_length=512)
    fresh = encoder.encode([p.payload["text"] for p in points])
    for point, vectors in zip(points, fresh):
        np.testing.assert_allclose(point.dense, vectors.dense, atol=1e-5)
        assert point.sparse.indices.tolist() == vectors.sparse.indices.tolist()
        np.testing.assert_allclose(point.sparse.values, vectors.sparse.values, atol=1e-5)
    code, verified, out = run("verify", "-c", str(config_path))
    assert code == 0 and verified["ok"], out


def assert_secret_not_stored(state_dir: Path) -> None:
    for file in state_dir.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file


@pytest.mark.server
def test_milvus_server_killed_mid_sync_stops_after_the_outage_budget_and_the_next_sync_completes(
        tmp_path, tiny_model_dir, monkeypatch):
    from connector.sinks.milvus import MilvusSink

    monkeypatch.setenv("MILVUS_TOKEN", SECRET)
    server = MilvusServer(tmp_path / "milvus-data", port=free_port()).start()
    try:
        cfg = make_config(tmp_path, tiny_model_dir,
                          {"type": "milvus", "uri": server.uri, "token_env": "MILVUS_TOKEN", "timeout": 3})
        real_upsert = MilvusSink._upsert
        calls = []

        def upsert_then_kill_server(self, points):
            real_upsert(self, points)
            calls.append(len(points))
            if len(calls) == 2:
                server.kill()  # the store dies in the middle of the sync

        monkeypatch.setattr(MilvusSink, "_upsert", upsert_then_kill_server)
        code, report, out = run("sync", "-c", str(cfg))
        assert code == 3 and report["stopped"], out
        assert report["chunks"]["upserted"] == 8  # the two batches the server took
        assert report["documents_not_written"] > 0 and report["documents"]["failed"] == 0  # not dead letters
        assert report["outages"][0]["ended"] is None and report["outages"][0]["probes"] >= 1
        assert "store unreachable since" in out and "run `connector sync` again" in out
        assert run("failed", "-c", str(cfg))[1]["dead_letters"] == 0

        monkeypatch.setattr(MilvusSink, "_upsert", real_upsert)
        code, data, out = run("sync", "-c", str(cfg))  # still down: found before anything is read
        assert code == 1 and "cannot reach the store" in data["error"] and server.uri in data["error"], out

        server.start()  # same port, same data dir
        code, again, out = run("sync", "-c", str(cfg))
        assert code == 0 and again["chunks"]["encoded"] == 0, out  # every vector came from the cache
        assert again["chunks"]["upserted"] > 0
        assert_store_matches_source(cfg)
        assert_secret_not_stored(tmp_path / "state")
    finally:
        server.stop()


class QdrantFault:
    """Raises a real qdrant-client exception from QdrantClient.upsert after `after` good calls."""

    def __init__(self, monkeypatch, error, after: int):
        from qdrant_client import QdrantClient

        self.error, self.after, self.calls, self.active = error, after, 0, True
        real = QdrantClient.upsert

        def upsert(client, *args, **kwargs):
            self.calls += 1
            if self.active and self.calls > self.after:
                raise self.error
            return real(client, *args, **kwargs)

        monkeypatch.setattr(QdrantClient, "upsert", upsert)


def connect_error():
    from qdrant_client.http.exceptions import ResponseHandlingException

    return ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused"))


def bad_request():
    from qdrant_client.http.exceptions import UnexpectedResponse

    return UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"Wrong input"}}', httpx.Headers())


def test_a_store_that_answers_but_refuses_every_write_stops_within_the_outage_budget(
        tmp_path, tiny_model_dir, monkeypatch):
    """Probes (a count) succeed, every upsert fails transiently: that store is down, and the time it
    is down adds up from the first failure, whatever the probes say."""
    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"})
    fault = QdrantFault(monkeypatch, connect_error(), after=3)
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 3 and report["stopped"], out
    assert report["chunks"]["upserted"] == 12 and report["documents_not_written"] > 0
    assert report["outages"][-1]["probes"] >= 1 and "store unreachable since" in out
    assert run("failed", "-c", str(cfg))[1]["dead_letters"] == 0
    fault.active = False
    code, again, out = run("sync", "-c", str(cfg))
    assert code == 0 and again["chunks"]["encoded"] == 0 and again["chunks"]["upserted"] > 0, out
    assert_store_matches_source(cfg)


def test_qdrant_terminal_failures_become_dead_letters_and_retry_completes(tmp_path, tiny_model_dir, monkeypatch):
    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"})
    fault = QdrantFault(monkeypatch, bad_request(), after=3)
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 3, out
    assert report["chunks"]["upserted"] == 12 and report["chunks"]["failed"] > 0
    code, failed, _ = run("failed", "-c", str(cfg))
    assert failed["documents"] == report["documents"]["failed"] == failed["dead_letters"]  # one letter a document
    assert failed["groups"][0]["kind"] == "terminal" and "Wrong input" in failed["groups"][0]["error"]
    code, status, _ = run("status", "-c", str(cfg))
    assert status["ledger"]["dead_letters"] == failed["dead_letters"]
    assert len(status["failed_documents"]) == report["documents"]["failed"]
    code, verified, _ = run("verify", "-c", str(cfg))
    assert code == 3 and not verified["ok"]

    fault.active = False
    code, retried, out = run("retry", "-c", str(cfg), "--limit", "1")
    assert code == 0 and retried["letters"]["succeeded"] == 1, out
    code, retried, out = run("retry", "-c", str(cfg))
    assert code == 0 and retried["letters"]["failed"] == 0, out
    assert run("status", "-c", str(cfg))[1]["failed_documents"] == []
    assert_store_matches_source(cfg)


def test_terminal_error_is_not_retried_and_on_error_stop_stops(tmp_path, tiny_model_dir, monkeypatch):
    from qdrant_client.http.exceptions import UnexpectedResponse

    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"},
                      on_error="stop")
    bad_request = UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"Wrong input"}}', httpx.Headers())
    fault = QdrantFault(monkeypatch, bad_request, after=1)
    code, report, out = run("sync", "-c", str(cfg), "--prune")
    assert code == 3 and report["stopped"] is True, out
    assert fault.calls == 2  # one good batch, one failing call: no retry of a terminal error, then stop
    committed = run("status", "-c", str(cfg))[1]["ledger"]["documents"]
    assert 0 < committed and committed + report["documents"]["failed"] < DOCS  # the rest waits for the next run
    code, failed, _ = run("failed", "-c", str(cfg))
    assert failed["dead_letters"] == 1 and failed["groups"][0]["kind"] == "terminal"
    assert "Wrong input" in failed["groups"][0]["error"] and failed["groups"][0]["attempts"] == 1

    fault.active = False  # the next sync converges by itself, and the dead letter is superseded
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 0, out
    assert run("failed", "-c", str(cfg))[1]["dead_letters"] == 0
    assert_store_matches_source(cfg)


def test_verify_repair_fixes_missing_orphan_and_stale_points(tmp_path, tiny_model_dir):
    from connector.records import Point, SparseVector

    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"})
    assert run("sync", "-c", str(cfg))[0] == 0
    config = load_config(cfg)
    with make_sink(config.sink) as sink:
        ids = sorted(sink.iter_ids())
        sink.delete(ids[:2])  # missing
        victim = sink.retrieve([ids[5]], with_vectors=True)[0]
        victim.payload["text"] = "tampered"
        sink.upsert([victim])  # stale payload
        payload = {**victim.payload, "doc_id": "ghost.md"}
        sink.upsert([Point("9b3c1d1e-0000-4000-8000-000000000001", victim.dense, SparseVector.empty(), payload)])
    code, report, out = run("verify", "-c", str(cfg))
    assert code == 3, out
    assert [m["id"] for m in report["missing"]] == ids[:2]
    assert [m["id"] for m in report["mismatched"]] == [ids[5]]
    assert report["orphans"] == [{"id": "9b3c1d1e-0000-4000-8000-000000000001", "doc_id": "ghost.md"}]
    assert {"doc_id": "ghost.md", "ledger": 0, "store": 1} in report["stale_counts"]
    code, report, out = run("verify", "-c", str(cfg), "--repair")
    assert code == 0 and report["ok"], out
    assert report["repaired"]["orphans_deleted"] == 1 and report["repaired"]["points_invalidated"] == 3
    assert report["repaired"]["sync"]["chunks"]["encoded"] == 0  # rewritten from the embedding cache
    assert_store_matches_source(cfg)


def test_a_second_sync_on_the_same_state_dir_fails_at_once(tmp_path, tiny_model_dir):
    from connector.lock import StateLock

    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"})
    state = load_config(cfg).state_dir
    with StateLock(state):
        code, data, out = run("sync", "-c", str(cfg))
        assert code == 1 and f"already running (pid {os.getpid()})" in data["error"], out
        assert str(state) in data["error"]
    # a lock file left behind by a dead process (no OS lock held any more) is taken over
    (state / "lock").write_text("999999")
    code, data, out = run("sync", "-c", str(cfg))
    assert code == 0 and data["documents"]["new"] == DOCS, out


def test_crash_after_the_store_write_before_the_commit_leaves_no_orphans(tmp_path, tiny_model_dir, monkeypatch):
    """The store took a new version's points, the process died before the ledger commit, and the
    source went back to the old version: the next sync still converges (no orphan, no stale text)."""
    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"})
    assert run("sync", "-c", str(cfg))[0] == 0
    doc = tmp_path / "docs" / "doc-05.md"
    original = doc.read_text(encoding="utf-8")
    doc.write_text("\n\n".join(f"A much longer new version, section {k}, with new words." for k in range(12)))

    def crash(self, commits):
        raise RuntimeError("simulated crash before the ledger commit")

    monkeypatch.setattr(Ledger, "commit_documents", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("sync", "-c", str(cfg))
    monkeypatch.undo()
    doc.write_text(original, encoding="utf-8")
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 0, out
    assert report["chunks"]["deleted"] > 0  # the new version's extra points, queued before the write
    assert_store_matches_source(cfg)


# ---- regressions: dead letters must never bring back old or deleted content ----------------
def dead_letter_then_heal(tmp_path, tiny_model_dir, monkeypatch, edit) -> tuple[Path, QdrantFault]:
    """Sync, apply `edit` to the source, sync again while the store refuses every upsert (dead letters)."""
    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"})
    assert run("sync", "-c", str(cfg))[0] == 0
    edit(tmp_path / "docs")
    fault = QdrantFault(monkeypatch, bad_request(), after=0)
    assert run("sync", "-c", str(cfg))[0] == 3
    assert run("failed", "-c", str(cfg))[1]["dead_letters"] >= 1
    fault.active = False
    return cfg, fault


def test_verify_is_not_ok_while_dead_letters_wait(tmp_path, tiny_model_dir, monkeypatch):
    cfg, _ = dead_letter_then_heal(tmp_path, tiny_model_dir, monkeypatch,
                                   lambda docs: (docs / "new.md").write_text("a brand new document"))
    code, verified, out = run("verify", "-c", str(cfg))
    assert code == 3 and not verified["ok"] and verified["dead_letters"] == 1, out
    code, repaired, out = run("verify", "-c", str(cfg), "--repair")
    assert code == 0 and repaired["ok"], out
    assert_store_matches_source(cfg)


def test_a_pruned_document_is_not_brought_back_by_retry(tmp_path, tiny_model_dir, monkeypatch):
    cfg, _ = dead_letter_then_heal(tmp_path, tiny_model_dir, monkeypatch,
                                   lambda docs: (docs / "doc-03.md").write_text("edited doc 3"))
    (tmp_path / "docs" / "doc-03.md").unlink()
    assert run("sync", "-c", str(cfg), "--prune")[0] == 0
    code, retried, out = run("retry", "-c", str(cfg))
    assert code == 0 and retried["letters"]["retried"] == 0, out  # pruning dropped its dead letter
    assert_store_matches_source(cfg)


def test_an_old_dead_letter_never_overwrites_a_newer_write(tmp_path, tiny_model_dir, monkeypatch):
    cfg, _ = dead_letter_then_heal(tmp_path, tiny_model_dir, monkeypatch,
                                   lambda docs: (docs / "doc-00.md").write_text("VERSION ONE text."))
    (tmp_path / "docs" / "doc-00.md").write_text("VERSION TWO text.")

    def crash(self, commits):
        raise RuntimeError("simulated crash before the ledger commit")

    monkeypatch.setattr(Ledger, "commit_documents", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("sync", "-c", str(cfg))  # VERSION TWO reached the store, the commit did not
    monkeypatch.undo()
    code, retried, out = run("retry", "-c", str(cfg))
    assert code == 0 and retried["letters"]["retried"] == 0, out  # the newer write made the letter obsolete
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 0, out
    assert_store_matches_source(cfg)
    with make_sink(load_config(cfg).sink) as sink:
        texts = [p.payload["text"] for p in sink.retrieve(sorted(sink.iter_ids())) if p.payload["doc_id"] == "doc-00.md"]
    assert texts == ["VERSION TWO text."]


def test_retry_after_the_collection_was_dropped_says_to_sync(tmp_path, tiny_model_dir, monkeypatch):
    cfg, _ = dead_letter_then_heal(tmp_path, tiny_model_dir, monkeypatch,
                                   lambda docs: (docs / "doc-01.md").write_text("changed text"))
    with make_sink(load_config(cfg).sink) as sink:
        sink.drop()  # the store lost its data
    code, data, out = run("retry", "-c", str(cfg))
    assert code == 1 and "run `connector sync` first" in data["error"], out
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 0 and report["warnings"] and report["documents"]["new"] == DOCS, out
    assert_store_matches_source(cfg)


# ---- one bad point spoils nothing (issue 10, item 4) -------------------------------------------
@pytest.mark.parametrize("sink", [{"type": "qdrant", "path": "./store"}, {"type": "milvus", "uri": "./milvus.db"}],
                         ids=["qdrant", "milvus-lite"])
def test_a_value_over_the_layout_limit_fails_its_document_alone(tmp_path, tiny_model_dir, sink):
    cfg = make_config(tmp_path, tiny_model_dir, sink)
    long_id = "ticket-" + "x" * 3000  # doc_id is a VARCHAR(2048) in Milvus
    records = [{"id": "t-1", "text": "The printer is offline."}, {"id": long_id, "text": "A ticket with a huge id."},
               {"id": "t-3", "text": "The VPN drops every hour."}]
    (tmp_path / "docs" / "tickets.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 3, out
    assert [f["kind"] for f in report["failures"]] == ["too_large"]
    failure = report["failures"][0]
    assert long_id in failure["doc_id"] and "'doc_id'" in failure["reason"] and "2048" in failure["reason"]
    assert report["documents"]["new"] == DOCS + 2 and report["chunks"]["failed"] == 0
    assert run("failed", "-c", str(cfg))[1]["dead_letters"] == 0
    code, verified, out = run("verify", "-c", str(cfg))
    assert code == 0 and verified["ok"], out


def test_a_batch_refused_for_one_document_is_split_down_to_that_document(tmp_path, tiny_model_dir, monkeypatch):
    from qdrant_client import QdrantClient
    from qdrant_client.http.exceptions import UnexpectedResponse

    cfg = make_config(tmp_path, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"},
                      sink_batch_size=64)
    real = QdrantClient.upsert
    calls = []

    def refuse_doc_07(client, collection_name, points, **kwargs):
        calls.append(len(points))
        if any(p.payload["doc_id"] == "doc-07.md" for p in points):
            raise UnexpectedResponse(400, "Bad Request", b'{"status":{"error":"Wrong input: doc 7"}}', httpx.Headers())
        return real(client, collection_name, points, **kwargs)

    monkeypatch.setattr(QdrantClient, "upsert", refuse_doc_07)
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 3, out
    assert [f["doc_id"] for f in report["failures"]] == ["doc-07.md"]  # its neighbours in the batch are written
    batches = -(-(report["chunks"]["upserted"] + report["chunks"]["failed"]) // 64)
    assert len(calls) <= batches + 2 * 4  # halving 12 documents down to one: a few calls, not one per point
    code, failed, _ = run("failed", "-c", str(cfg))
    assert failed["dead_letters"] == 1 and failed["groups"][0]["documents"] == ["doc-07.md"]
    assert "Wrong input: doc 7" in failed["groups"][0]["error"]
    assert run("status", "-c", str(cfg))[1]["ledger"]["documents"] == DOCS - 1
    monkeypatch.setattr(QdrantClient, "upsert", real)
    code, retried, out = run("retry", "-c", str(cfg))
    assert code == 0 and retried["letters"]["succeeded"] == 1, out
    assert_store_matches_source(cfg)
