"""`connector rebind`: a collection that moved whole (a copied store folder, a restored snapshot)
keeps its state dir, so nothing is encoded again; a store that does not hold what the ledger
lists is refused and the state dir stays bound to the old one. Real Edge stores, the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from connector.app import sink_target
from connector.config import load_config
from connector.ledger import Ledger
from connector.sinks.factory import make_sink
from test_edge_store import cli, write_project


def point_at(cfg: Path, store: str) -> None:
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    data["sink"]["path"] = store
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")


def bound_target(tmp_path: Path) -> str:
    ledger = Ledger.open_read_only(tmp_path / "state")
    try:
        return ledger.get_meta("target")
    finally:
        ledger.close()


def synced_project(tmp_path: Path, model: Path) -> Path:
    cfg = write_project(tmp_path, model)
    proc = cli("sync", "-c", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["chunks"]["encoded"] > 0
    return cfg


def copied_store_missing_two_points(tmp_path: Path, model: Path) -> tuple[Path, str]:
    """A synced project whose config now names a copy of its store with 2 points deleted; and the
    target its state dir is bound to."""
    cfg = synced_project(tmp_path, model)
    old = bound_target(tmp_path)
    shutil.copytree(tmp_path / "store", tmp_path / "partial")
    point_at(cfg, "./partial")
    with make_sink(load_config(cfg).sink) as sink:
        sink.delete(list(sink.iter_ids())[:2])
    return cfg, old


def test_a_copied_store_folder_is_rebound_and_the_next_sync_encodes_nothing(tmp_path, tiny_model_dir):
    cfg = synced_project(tmp_path, tiny_model_dir)
    shutil.copytree(tmp_path / "store", tmp_path / "moved")
    point_at(cfg, "./moved")

    refused = cli("sync", "-c", str(cfg), "--json")  # the ledger belongs to ./store
    assert refused.returncode == 2 and "connector rebind" in refused.stderr, refused.stderr

    proc = cli("rebind", "-c", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["changed"] and data["points"] > 0
    assert data["previous_target"].endswith("/store#kb") and data["target"] == sink_target(load_config(cfg))
    assert bound_target(tmp_path) == data["target"]

    again = cli("sync", "-c", str(cfg), "--json")
    assert again.returncode == 0, again.stderr
    chunks = json.loads(again.stdout)["chunks"]
    assert chunks["encoded"] == chunks["upserted"] == chunks["payload_updated"] == 0
    assert cli("verify", "-c", str(cfg)).returncode == 0
    second = json.loads(cli("rebind", "-c", str(cfg), "--json").stdout)
    assert second["changed"] is False


def test_a_restored_snapshot_is_rebound_and_later_edits_sync_into_it(tmp_path, tiny_model_dir):
    from qdrant_edge import EdgeShard

    cfg = synced_project(tmp_path, tiny_model_dir)
    snapshot = tmp_path / "kb.snapshot"
    assert cli("export-snapshot", "-c", str(cfg), str(snapshot)).returncode == 0
    EdgeShard.unpack_snapshot(str(snapshot), str(tmp_path / "restored" / "edge" / "kb"))
    point_at(cfg, "./restored")

    proc = cli("rebind", "-c", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "docs" / "doc-03.md").write_text("Document 3 now talks about valves.", encoding="utf-8")
    sync = cli("sync", "-c", str(cfg), "--json")
    assert sync.returncode == 0, sync.stderr
    report = json.loads(sync.stdout)
    assert report["documents"]["changed"] == 1 and report["documents"]["unchanged"] == 5
    assert cli("verify", "-c", str(cfg)).returncode == 0
    with make_sink(load_config(cfg).sink) as sink:
        texts = [p.payload["text"] for p in sink.retrieve(list(sink.iter_ids()))]
    assert any("valves" in t for t in texts)


def test_a_store_missing_points_is_refused_and_the_old_binding_kept(tmp_path, tiny_model_dir):
    cfg, old = copied_store_missing_two_points(tmp_path, tiny_model_dir)

    proc = cli("rebind", "-c", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "does not hold what the ledger lists" in proc.stderr and "missing 2" in proc.stderr, proc.stderr
    assert bound_target(tmp_path) == old
    point_at(cfg, "./store")
    assert cli("sync", "-c", str(cfg)).returncode == 0  # still bound to the old store, which works


def test_rebind_says_what_is_missing(tmp_path, tiny_model_dir):
    cfg = write_project(tmp_path, tiny_model_dir)
    proc = cli("rebind", "-c", str(cfg))
    assert proc.returncode == 2 and "holds no ledger" in proc.stderr, proc.stderr
    assert not (tmp_path / "state").exists()

    assert cli("sync", "-c", str(cfg)).returncode == 0
    point_at(cfg, "./empty")
    proc = cli("rebind", "-c", str(cfg))
    assert proc.returncode == 2 and "does not exist in the store the config names" in proc.stderr, proc.stderr
    assert bound_target(tmp_path).endswith("/store#kb")


def test_a_rebind_killed_while_it_compares_leaves_the_state_dir_on_the_old_store(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    cfg, old = copied_store_missing_two_points(tmp_path, tiny_model_dir)
    # the comparison of ledger and store (26 s at 500 000 points) ends in a kill -9
    script = ("import os, sys\nfrom connector import api, recovery\nfrom connector.config import load_config\n"
              "def killed(*args, **kwargs):\n    os.kill(os.getpid(), 9)\n"
              "recovery.compare_store = recovery.verify = killed\napi.rebind(load_config(sys.argv[1]))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(cfg)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert bound_target(tmp_path) == old  # so the next sync is refused, and never skips the 2 missing points
    refused = cli("sync", "-c", str(cfg))
    assert refused.returncode == 2 and "connector rebind" in refused.stderr, refused.stderr


def test_a_ledger_with_work_waiting_for_the_old_store_says_to_finish_it_first(tmp_path, tiny_model_dir):
    import sqlite3

    cfg = synced_project(tmp_path, tiny_model_dir)
    shutil.copytree(tmp_path / "store", tmp_path / "moved")
    db = sqlite3.connect(tmp_path / "state" / Ledger.FILENAME)
    with db:  # a delete the old store had not confirmed yet
        db.execute("INSERT INTO pending_deletes(point_id, doc_id) VALUES (?, ?)", ("0" * 32, "doc-01.md"))
    db.close()
    point_at(cfg, "./moved")

    proc = cli("rebind", "-c", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "1 deletes waiting" in proc.stderr and "connector retry" in proc.stderr, proc.stderr
    assert bound_target(tmp_path).endswith("/store#kb")
