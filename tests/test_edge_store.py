"""The embedded Qdrant engines: which one a folder gets, one process at a time on an Edge store
(real processes), and `export-snapshot`. The contract and kill -9 suites run on Edge too."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from connector.app import sink_target
from connector.config import QdrantSinkConfig, load_config
from connector.errors import ConfigError
from connector.sinks.base import rrf_fuse
from connector.sinks.factory import make_sink
from connector.sinks.qdrant import QdrantSink
from connector.sinks.qdrant_edge import QdrantEdgeSink
from test_sinks_contract import DIM, make_points

CONNECTOR = str(Path(sys.executable).parent / "connector")


def write_project(tmp_path: Path, model: Path, docs: int = 6, **sink) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for n in range(docs):
        (folder / f"doc-{n:02d}.md").write_text(f"Document {n}: the pump {n} reports pressure code {n * 7}.",
                                                encoding="utf-8")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 16, "overlap_tokens": 2},
        "encoder": {"model": str(model), "max_length": 512, "batch_size": 8},
        "sink": {"type": "qdrant", "path": "./store", "collection": "kb", **sink},
        "state_dir": "./state",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CONNECTOR, *args], capture_output=True, text=True, timeout=300)


# ---- which engine ----------------------------------------------------------------------------
def test_a_new_folder_gets_edge_and_a_local_mode_folder_stays_on_local_mode(tmp_path, caplog):
    edge = QdrantSinkConfig(path=tmp_path / "new", collection="kb")
    with make_sink(edge) as sink:
        assert isinstance(sink, QdrantEdgeSink)
        sink.ensure_collection(DIM)
    with make_sink(edge) as again:  # the folder now holds an Edge store: still Edge
        assert isinstance(again, QdrantEdgeSink) and again.count() == 0

    with make_sink(QdrantSinkConfig(path=tmp_path / "old", engine="local-mode", collection="kb")) as sink:
        sink.ensure_collection(DIM)
        sink.upsert(make_points(3))
    old = QdrantSinkConfig(path=tmp_path / "old", collection="kb")  # no engine: the folder's files decide
    with caplog.at_level(logging.WARNING, logger="connector.sinks"):
        with make_sink(old) as sink:
            assert type(sink) is QdrantSink and sink.count() == 3
    assert sum("holds a Qdrant local-mode store: kept on local mode" in r.message for r in caplog.records) == 1

    with pytest.raises(ConfigError, match="holds a Qdrant local-mode store, but sink.engine is 'edge'"):
        make_sink(QdrantSinkConfig(path=tmp_path / "old", engine="edge", collection="kb"))
    with pytest.raises(ConfigError, match="holds a Qdrant Edge store, but sink.engine is 'local-mode'"):
        make_sink(QdrantSinkConfig(path=tmp_path / "new", engine="local-mode", collection="kb"))


def test_a_ledger_bound_to_one_engine_refuses_the_other(tmp_path, tiny_model_dir):
    cfg = write_project(tmp_path, tiny_model_dir, engine="local-mode")
    assert cli("sync", "-c", str(cfg), "--json").returncode == 0
    assert sink_target(load_config(cfg)).startswith("qdrant:")
    # the store folder is gone and the config names no engine: a new folder would be Edge
    shutil.rmtree(tmp_path / "store")
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    del data["sink"]["engine"]
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert sink_target(load_config(cfg)).startswith("qdrant-edge:")
    proc = cli("sync", "-c", str(cfg), "--json")
    assert proc.returncode == 2 and "belongs to qdrant:" in proc.stderr and "qdrant-edge:" in proc.stderr, proc.stderr
    assert not (tmp_path / "store" / "edge").exists()  # nothing was written


def test_engine_needs_a_path():
    with pytest.raises(ValueError, match="'engine' only applies with 'path'"):
        QdrantSinkConfig(url="http://localhost:6333", engine="edge")


# ---- search -----------------------------------------------------------------------------------
def test_edge_hybrid_search_scores_as_the_shared_rrf_fusion(tmp_path):
    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb")) as sink:
        sink.ensure_collection(DIM)
        points = make_points(25, seed=7)
        sink.upsert(points)
        target = points[13]
        hits = sink.search("hybrid", dense=target.dense, sparse=target.sparse, limit=25)
        dense = sink.search("dense", dense=target.dense, limit=100)
        sparse = sink.search("sparse", sparse=target.sparse, limit=100)
    expected = rrf_fuse([dense, sparse], limit=25)
    assert {h.id: pytest.approx(h.score, rel=1e-5) for h in hits} == {h.id: h.score for h in expected}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].id == target.id and hits[0].payload == target.payload


# ---- one process at a time ----------------------------------------------------------------------
SLOW_SYNC = """
import sqlite3, sys, time
from pathlib import Path
from connector.sinks.qdrant_edge import QdrantEdgeSink
from connector.cli import main
real, release, ledger = QdrantEdgeSink._upsert, Path(sys.argv[2]), Path(sys.argv[3])
def committed():
    if not ledger.exists():
        return 0
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM documents WHERE content_hash != ''").fetchone()[0]
    finally:
        db.close()
def held(self, points):  # once a document is committed, writes wait until the test has read
    deadline = time.monotonic() + 300
    while committed() >= 1 and not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    real(self, points)
QdrantEdgeSink._upsert = held
sys.argv = ["connector", "sync", "-c", sys.argv[1], "--json"]
main()
"""


def committed_documents(state: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True, timeout=0.05)
        try:
            return db.execute("SELECT COUNT(*) FROM documents WHERE content_hash != ''").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_reads_during_a_sync_fail_at_once_and_the_store_stays_sound(tmp_path, tiny_model_dir):
    cfg = write_project(tmp_path, tiny_model_dir, docs=12, batch_size=1)
    release = tmp_path / "release"
    sync = subprocess.Popen([sys.executable, "-c", SLOW_SYNC, str(cfg), str(release),
                             str(tmp_path / "state" / "ledger.sqlite")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while committed_documents(tmp_path / "state") < 1 and sync.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sync.poll() is None, "the sync ended before the reads"
        status = cli("status", "-c", str(cfg), "--json")
        verify = cli("verify", "-c", str(cfg), "--json")
        search = cli("search", "-c", str(cfg), "pump pressure", "--json")
        assert sync.poll() is None, "the sync ended during the reads: they proved nothing"
    finally:
        release.touch()
        out, err = sync.communicate(timeout=300)
    assert status.returncode == 1
    assert "is open in another process" in json.loads(status.stdout)["store"]["error"]
    for proc in (verify, search):
        assert proc.returncode == 1 and "is open in another process" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert sync.returncode == 0, err
    assert json.loads(out)["documents"]["new"] == 12
    verified = cli("verify", "-c", str(cfg), "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"], verified.stdout


# ---- export-snapshot ------------------------------------------------------------------------------
def test_export_snapshot_restores_into_a_shard_with_every_point(tmp_path, tiny_model_dir):
    from qdrant_edge import CountRequest, EdgeShard

    cfg = write_project(tmp_path, tiny_model_dir)
    assert cli("sync", "-c", str(cfg), "--json").returncode == 0
    out = tmp_path / "export" / "kb.snapshot"
    proc = cli("export-snapshot", "-c", str(cfg), str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["collection"] == "kb" and report["points"] > 0 and report["bytes"] == out.stat().st_size
    with tarfile.open(out) as archive:
        top = {name.split("/")[0] for name in archive.getnames()}
    assert {"segments", "wal"} <= top  # a Qdrant shard snapshot's layout

    restored = tmp_path / "restored"
    EdgeShard.unpack_snapshot(str(out), str(restored))  # the shard-snapshot unpacker Qdrant's recovery uses
    shard = EdgeShard.load(str(restored))
    try:
        assert shard.count(CountRequest(exact=True)) == report["points"]
        with make_sink(load_config(cfg).sink) as sink:
            ids = sorted(sink.iter_ids())
            originals = sink.retrieve(ids, with_vectors=True)
        records = {str(r.id): r for r in shard.retrieve(ids, with_payload=True, with_vector=True)}
        assert sorted(records) == ids
        for point in originals:
            record = records[point.id]
            assert record.payload == point.payload
            np.testing.assert_allclose(record.vector["dense"], point.dense, atol=1e-6)
            assert list(record.vector["sparse"].indices) == [int(i) for i in point.sparse.indices]
    finally:
        shard.close()


def test_export_snapshot_of_another_store_says_what_to_do(tmp_path, tiny_model_dir):
    cfg = write_project(tmp_path, tiny_model_dir, engine="local-mode")
    proc = cli("export-snapshot", "-c", str(cfg), str(tmp_path / "kb.snapshot"))
    assert proc.returncode == 2 and "reads an embedded Qdrant Edge store" in proc.stderr, proc.stderr
    assert not (tmp_path / "kb.snapshot").exists()


def test_set_payloads_overwrites_the_payload_and_keeps_the_vectors(tmp_path):
    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb")) as sink:
        sink.ensure_collection(DIM)
        points = make_points(3)
        sink.upsert(points)
        moved = {**points[1].payload, "char_start": 7, "char_end": 99}
        sink._set_payloads([(points[1].id, moved)])
        got = {p.id: p for p in sink.retrieve([p.id for p in points], with_vectors=True)}
    assert got[points[1].id].payload == moved
    assert got[points[0].id].payload == points[0].payload
    np.testing.assert_allclose(got[points[1].id].dense, points[1].dense, atol=1e-6)
    np.testing.assert_array_equal(got[points[1].id].sparse.indices, points[1].sparse.indices)


# ---- indexes at scale: int8 copy with rescoring, builds during a long sync ------------------------
def exact_top(points, query, limit):
    scores = sorted(((float(np.dot(p.dense, query)), p.id) for p in points), reverse=True)
    return [pid for _, pid in scores[:limit]], [s for s, _ in scores[:limit]]


def test_dense_vectors_get_an_int8_copy_and_searches_rescore_with_the_float_vectors(tmp_path, monkeypatch):
    import connector.sinks.qdrant_edge as edge_module

    # an HNSW graph even for 300 points, and searched (not a full scan): else the test checks a float scan
    monkeypatch.setattr(edge_module, "INDEXING_THRESHOLD_KB", 1)
    monkeypatch.setattr(edge_module, "FULL_SCAN_KB", 1)
    found = expected = 0
    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb")) as sink:
        sink.ensure_collection(DIM)
        points = make_points(300, seed=3)
        sink.upsert(points)
        sink.build_indexes()
        assert sink.client.info().indexed_vectors_count == 600  # dense and sparse
        config = json.loads((sink.shard_dir / "edge_config.json").read_text(encoding="utf-8"))
        by_id = {p.id: p.dense for p in points}
        rng = np.random.default_rng(5)
        for target in points[::20]:
            query = target.dense + rng.normal(0, 0.05, DIM).astype(np.float32)
            query /= np.linalg.norm(query)
            hits = sink.search("dense", dense=query, limit=10)
            ids, _ = exact_top(points, query, 10)
            # rescored: each score is the float cosine (an int8 score is off by ~1e-3), in descending order
            for hit in hits:
                vector = by_id[hit.id]
                assert hit.score == pytest.approx(float(vector @ query / np.linalg.norm(vector)), abs=1e-5)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            found, expected = found + len({h.id for h in hits} & set(ids)), expected + len(ids)
    assert found / expected >= 0.9  # HNSW is approximate; on 300 points it finds nearly all of the exact top 10
    assert config["vectors"]["dense"]["quantization_config"] == {
        "scalar": {"type": "int8", "quantile": 0.99, "memory": "cold"}}
    # nothing is read into memory when a shard opens (`cached` made status and search read the whole
    # int8 copy and indexes first: 12.6 s at 500 000 points)
    assert config["hnsw_config"]["memory"] == config["sparse_vectors"]["sparse"]["memory"] == "cold"


def test_a_long_sync_builds_indexes_as_it_writes_not_only_at_its_end(tmp_path, monkeypatch):
    import connector.sinks.qdrant_edge as edge_module

    monkeypatch.setattr(edge_module, "INDEXING_THRESHOLD_KB", 1)  # index even a tiny segment
    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb", batch_size=50)) as sink:
        sink.index_every = 100
        sink.ensure_collection(DIM)
        points = make_points(250, seed=4)
        sink.upsert(points[:100])  # two batches: the second one reaches index_every
        indexed_mid_sync = sink.client.info().indexed_vectors_count
        sink.upsert(points[100:])  # a second build at 200 points, 50 left for close()
        segments, unindexed_tail = sink.client.info().segments_count, sink._unindexed
    assert indexed_mid_sync >= 100
    assert segments == 3  # two indexed segments of 100 points (not merged into one) and the one written to
    assert unindexed_tail == 50
    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb")) as sink:
        assert sink.client.info().indexed_vectors_count >= 250 and sink.count() == 250


def test_a_shard_created_without_int8_copy_keeps_its_config_and_searches(tmp_path):
    import qdrant_edge as e

    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb")) as sink:
        shard_dir = sink.shard_dir
    old = e.EdgeConfig(  # the config of shards created before the int8 copy
        vectors={"dense": e.EdgeVectorParams(size=DIM, distance=e.Distance.Cosine, memory=e.Memory.Cold)},
        sparse_vectors={"sparse": e.EdgeSparseVectorParams(memory=e.Memory.Cached)}, payload_memory=e.Memory.Cold,
        hnsw_config=e.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000, memory=e.Memory.Cached))
    e.EdgeShard.create(str(shard_dir), old).close()
    points = make_points(40, seed=6)
    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb", batch_size=10)) as sink:
        sink.index_every = 10
        sink.ensure_collection(DIM)
        sink.upsert(points)
        assert sink._unindexed == 40  # its segments are unbounded: one build, at the end
    with make_sink(QdrantSinkConfig(path=tmp_path / "q", collection="kb")) as sink:
        hits = sink.search("hybrid", dense=points[7].dense, sparse=points[7].sparse, limit=5)
        assert sink.count() == 40 and hits[0].id == points[7].id
    config = json.loads((shard_dir / "edge_config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config["vectors"]["dense"]


class FailingOptimize:
    """An open Edge shard whose index builds fail (a full disk, say); everything else passes through."""

    def __init__(self, shard):
        self.shard = shard

    def optimize(self):
        raise RuntimeError("No space left on device (simulated)")

    def __getattr__(self, name):
        return getattr(self.shard, name)


def test_a_failed_index_build_fails_no_write_and_close_still_releases_the_store(tmp_path, caplog):
    config = QdrantSinkConfig(path=tmp_path / "q", collection="kb", batch_size=10)
    sink = make_sink(config)
    sink.index_every = 10
    sink.ensure_collection(DIM)
    sink._shard = FailingOptimize(sink._shard)
    points = make_points(20, seed=8)
    with caplog.at_level(logging.WARNING, logger="connector.sinks"):
        sink.upsert(points)  # written and flushed: the failed build after it must not make it a failure
        sink.close()  # the build at the end fails too; the shard is closed and its lock released anyway
    assert sum("did not build the indexes" in r.getMessage() for r in caplog.records) >= 2
    with make_sink(config) as again:  # in this same process: the lock was released
        assert again.count() == 20
        assert again.search("dense", dense=points[3].dense, limit=1)[0].id == points[3].id  # scanned, not indexed
