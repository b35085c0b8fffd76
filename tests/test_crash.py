"""kill -9 at any moment, then run again: the store converges to the source (verify finds nothing)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from connector.config import load_config
from connector.ledger import Ledger
from connector.sinks.factory import make_sink

DOCS = 40
CONNECTOR = str(Path(sys.executable).parent / "connector")


def write_corpus(root: Path, version: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(DOCS):
        parts = 1 + (n + version) % 4  # edits change the number of chunks both ways
        text = "\n\n".join(f"Version {version} of document {n}, part {k}: status code {k * 7 + n}." for k in range(parts))
        (root / f"doc-{n:02d}.md").write_text(text, encoding="utf-8")


def ledger_query(state: Path, sql: str) -> int:
    try:
        db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True, timeout=0.05)
        try:
            return db.execute(sql).fetchone()[0] or 0
        finally:
            db.close()
    except sqlite3.Error:
        return 0  # not created yet, or busy


def sync_killed_when(cfg: Path, state: Path, sql: str, threshold: int, delay: float, *args: str) -> bool:
    """Start `connector sync`, kill -9 it once `sql` on the ledger reaches `threshold` (plus `delay`).
    Returns True if it was killed, False if it finished first."""
    proc = subprocess.Popen([CONNECTOR, "sync", "-c", str(cfg), "--json", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if ledger_query(state, sql) >= threshold:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.wait(30)
    return False


def run_cli(cfg: Path, *args: str) -> tuple[int, dict]:
    proc = subprocess.run([CONNECTOR, *args, "-c", str(cfg), "--json"], capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout)


def assert_converged(cfg: Path) -> None:
    code, verified = run_cli(cfg, "verify")
    assert code == 0 and verified["ok"], verified
    config = load_config(cfg)
    ledger = Ledger(config.state_dir)
    try:
        docs = sorted(ledger.doc_ids())
        ledger_ids = sorted(ledger.iter_point_ids())
        assert ledger.counts()["pending_deletes"] == 0 and ledger.counts()["dead_letters"] == 0
    finally:
        ledger.close()
    assert docs == sorted(p.name for p in (cfg.parent / "docs").iterdir())
    with make_sink(config.sink) as sink:
        store_ids = sorted(sink.iter_ids())
        texts = {p.payload["doc_id"]: [] for p in sink.retrieve(store_ids)}
        for p in sink.retrieve(store_ids):
            texts[p.payload["doc_id"]].append(p.payload["text"])
    assert store_ids == ledger_ids  # every id exactly once, nothing unknown
    for doc_id, chunks in texts.items():  # and the content is the source's current content
        source = (cfg.parent / "docs" / doc_id).read_text(encoding="utf-8")
        assert all(chunk in source for chunk in chunks), doc_id


@pytest.mark.parametrize("backend", ["qdrant-edge", "qdrant-local-mode", "milvus"])
def test_kill_9_at_any_moment_converges(tmp_path, tiny_model_dir, backend):
    docs = tmp_path / "docs"
    write_corpus(docs, version=0)
    sink = {"qdrant-edge": {"type": "qdrant", "path": "./store/qdrant", "engine": "edge"},
            "qdrant-local-mode": {"type": "qdrant", "path": "./store/qdrant", "engine": "local-mode"},
            "milvus": {"type": "milvus", "uri": "./store/milvus.db"}}[backend]
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 16, "overlap_tokens": 2},
        "encoder": {"model": str(tiny_model_dir), "max_length": 512, "batch_size": 8},
        "sink": {**sink, "collection": "kb", "batch_size": 2},
        "state_dir": "./state",
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    state = tmp_path / "state"
    committed = "SELECT COUNT(*) FROM documents"
    in_flight = "SELECT COUNT(*) FROM documents WHERE content_hash=''"

    # first sync, killed three times at growing depths, each run resuming the last
    kills = [sync_killed_when(cfg, state, committed, threshold, 0) for threshold in (1, DOCS // 3, 2 * DOCS // 3)]
    assert kills.count(True) >= 2
    code, report = run_cli(cfg, "sync")
    assert code == 0, report
    assert report["documents"]["new"] + report["documents"]["changed"] > 0  # the killed runs left work to do
    assert_converged(cfg)

    # every document edited (chunk counts grow and shrink): killed while points are in flight
    write_corpus(docs, version=1)
    for delay in (0.0, 0.05):
        assert sync_killed_when(cfg, state, in_flight, 1, delay)
    # some documents deleted, then a pruning sync killed midway
    for n in range(0, DOCS, 5):
        (docs / f"doc-{n:02d}.md").unlink()
    sync_killed_when(cfg, state, "SELECT COUNT(*) FROM pending_deletes", 1, 0, "--prune")
    code, report = run_cli(cfg, "sync", "--prune")
    assert code == 0, report
    assert_converged(cfg)
