"""Prometheus metrics of a batch sync: `connector sync --metrics-file` (node_exporter textfile
format, written atomically) and `--pushgateway` (Debian's real prometheus-pushgateway, and a
minimal HTTP receiver that checks the exact request). Every value is checked against the
sync's `--json` report."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connector import run_metrics
from connector.cli import cli
from connector.config import load_config
from connector.pipeline import SyncReport, run_sync

PUSHGATEWAY = "prometheus-pushgateway"


# ---- helpers -----------------------------------------------------------------------------
def make_project(root: Path, model: Path, sink: dict | None = None) -> Path:
    """A small corpus (one empty file: a failed document, exit 3) and its config; the config's path."""
    docs = root / "docs"
    docs.mkdir(parents=True)
    (docs / "reset.md").write_text("# Reset\n\nOpen the sign-in page and choose Forgot password.\n", encoding="utf-8")
    (docs / "cable.txt").write_text("When the cable is replaced the counter resets and the light blinks twice.\n",
                                    encoding="utf-8")
    (docs / "old.md").write_text("This page describes the old billing portal.\n", encoding="utf-8")
    (docs / "empty.md").write_text("", encoding="utf-8")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 16, "overlap_tokens": 2},
        "encoder": {"model": str(model), "max_length": 512, "batch_size": 4},
        "sink": sink or {"type": "qdrant", "path": "./store", "collection": "kb"},
        "retry": {"attempts": 1, "initial_wait": 0, "jitter": 0},
        "state_dir": "./state",
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def edit_corpus(docs: Path) -> None:
    """One changed, one deleted (with --prune), one new document that repeats a stored text (cache hits)."""
    (docs / "cable.txt").write_text("When the cable is replaced the counter resets. Then it blinks three times.\n",
                                    encoding="utf-8")
    (docs / "old.md").unlink()
    shutil.copy(docs / "reset.md", docs / "reset-copy.md")


def sync_cli(config: Path, *args: str) -> tuple[int, dict, str]:
    """`connector sync -c CONFIG --json ARGS` in this process: exit code, JSON report, stderr."""
    result = CliRunner().invoke(cli, ["sync", "-c", str(config), "--json", *args], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout), result.stderr


def sync_metrics(text: str, collection: str = "kb") -> dict:
    """The connector_sync_* samples of a Prometheus text exposition: {(name, outcome or stage): value}."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("connector_sync_"):
                assert sample.labels["collection"] == collection, sample
                key = (sample.name, sample.labels.get("outcome") or sample.labels.get("stage"))
                assert key not in values, f"{key} twice"
                values[key] = sample.value
    return values


def expected_metrics(report: dict, exit_code: int) -> dict:
    """What the metrics must say for a sync's `--json` report (all but the run's timestamp)."""
    expected = {("connector_sync_documents", k): v for k, v in report["documents"].items()}
    expected.update({("connector_sync_chunks", k): v for k, v in report["chunks"].items()})
    expected.update({("connector_sync_stage_busy_seconds", stage): report["seconds"][stage]
                     for stage in ("plan", "encode", "write")})
    expected.update({
        ("connector_sync_duration_seconds", None): report["seconds"]["total"],
        ("connector_sync_embedding_cache_hits", None): report["embedding_cache_hits"],
        ("connector_sync_dead_letters", None): len({f["dead_letter"] for f in report["failures"] if "dead_letter" in f}),
        ("connector_sync_outages", None): len(report["outages"]),
        ("connector_sync_documents_not_written", None): report["documents_not_written"],
        ("connector_sync_stopped", None): int(report["stopped"]),
        ("connector_sync_success", None): int(exit_code == 0),
        ("connector_sync_exit_code", None): exit_code,
    })
    return expected


def assert_metrics_match(text: str, report: dict, exit_code: int, started: float, ended: float) -> None:
    values = sync_metrics(text)
    assert started <= values.pop(("connector_sync_last_run_timestamp_seconds", None)) <= ended
    assert values == expected_metrics(report, exit_code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- --metrics-file ----------------------------------------------------------------------
def test_metrics_file_holds_the_json_reports_values(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    metrics_dir = tmp_path / "textfile"
    metrics_dir.mkdir()
    metrics = metrics_dir / "connector.prom"

    started = time.time()
    code, first, _ = sync_cli(config, "--metrics-file", str(metrics))
    assert code == 3 and first["documents"]["failed"] == 1  # the empty file: metrics are written on exit 3 too
    assert_metrics_match(metrics.read_text(), first, code, started, time.time())
    assert first["documents"]["new"] == 3 and first["chunks"]["encoded"] > 0

    edit_corpus(tmp_path / "docs")
    (tmp_path / "docs" / "empty.md").write_text("Now it has text.\n", encoding="utf-8")
    started = time.time()
    code, second, _ = sync_cli(config, "--prune", "--metrics-file", str(metrics))
    assert code == 0
    assert_metrics_match(metrics.read_text(), second, code, started, time.time())
    d, c = second["documents"], second["chunks"]
    assert (d["new"], d["changed"], d["unchanged"], d["deleted"], d["failed"]) == (2, 1, 1, 1, 0)
    assert c["deleted"] > 0 and c["cached"] > 0 and second["embedding_cache_hits"] == c["cached"]
    assert os.listdir(metrics_dir) == ["connector.prom"]  # no temporary file left behind
    assert (metrics.stat().st_mode & 0o777) == 0o644  # node_exporter runs as another user


def test_metrics_file_says_a_sync_that_raised_failed(tmp_path, tiny_model_dir):
    """A store that does not answer aborts the sync (exit 1): the file still says so."""
    sink = {"type": "qdrant", "url": f"http://127.0.0.1:{free_port()}", "collection": "kb"}
    config = make_project(tmp_path, tiny_model_dir, sink=sink)
    metrics = tmp_path / "connector.prom"
    metrics.write_text("connector_sync_success 1\n")  # the previous run's

    started = time.time()
    result = CliRunner().invoke(cli, ["sync", "-c", str(config), "--metrics-file", str(metrics)])
    assert result.exit_code == 1 and "cannot reach the store" in result.stderr
    values = sync_metrics(metrics.read_text())
    assert values[("connector_sync_success", None)] == 0 and values[("connector_sync_exit_code", None)] == 1
    assert values[("connector_sync_documents", "seen")] == 0 and values[("connector_sync_chunks", "upserted")] == 0
    assert started <= values[("connector_sync_last_run_timestamp_seconds", None)] <= time.time()


def test_bad_metrics_options_fail_before_the_sync(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    runner = CliRunner()
    missing = runner.invoke(cli, ["sync", "-c", str(config), "--metrics-file", str(tmp_path / "nope" / "m.prom")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    dry = runner.invoke(cli, ["sync", "-c", str(config), "--dry-run", "--metrics-file", str(tmp_path / "m.prom")])
    assert dry.exit_code == 2 and "--dry-run writes no metrics" in dry.stderr
    bad_url = runner.invoke(cli, ["sync", "-c", str(config), "--pushgateway", "http://127.0.0.1:99999"])
    assert bad_url.exit_code == 2 and "port" in bad_url.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "m.prom").exists()  # nothing ran


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, failing):
    config = load_config(make_project(tmp_path / "p", Path("unused-model")))
    metrics = tmp_path / "textfile" / "connector.prom"
    metrics.parent.mkdir()
    metrics.write_text("connector_sync_success 1\n")

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    report = SyncReport()
    with pytest.raises(OSError, match="No space left"):
        run_metrics.write_textfile(run_metrics.sync_registry(report, config), metrics)
    warnings = run_metrics.export_run_metrics(report, config, path=metrics)
    assert len(warnings) == 1 and "could not write the metrics file" in warnings[0] and "No space left" in warnings[0]
    assert metrics.read_text() == "connector_sync_success 1\n"
    assert os.listdir(metrics.parent) == ["connector.prom"]


def test_registry_maps_every_report_field(tmp_path):
    """Dead letters, outages, documents not written and an early stop, which a healthy sync leaves at 0."""
    config = load_config(make_project(tmp_path, Path("unused-model")))
    report = SyncReport()
    report.documents.update(seen=7, new=2, failed=3)
    report.chunks.update(encoded=5, cached=4, upserted=9, failed=6)
    report.failures = [{"doc_id": f"d{n}", "reason": "store", "dead_letter": n // 2, "kind": "store"} for n in range(3)]
    report.outages = [{"started": "a", "ended": "b", "probes": 1}, {"started": "c", "ended": None, "probes": 2}]
    report.not_written, report.stopped, report.cache_hits = 4, True, 3
    report.seconds.update(plan=1.25, encode=2.5, write=0.75, total=3.0)

    text = generate_latest(run_metrics.sync_registry(report, config, finished=1_700_000_000.0)).decode()
    values = sync_metrics(text)
    assert values.pop(("connector_sync_last_run_timestamp_seconds", None)) == 1_700_000_000.0
    assert values == expected_metrics(report.to_json(), 3)
    assert values[("connector_sync_dead_letters", None)] == 2 and values[("connector_sync_outages", None)] == 2
    assert values[("connector_sync_stopped", None)] == 1 and values[("connector_sync_documents_not_written", None)] == 4


# ---- the report's new fields -------------------------------------------------------------
def test_cache_hits_count_points_read_from_the_cache_and_seconds_are_measured(tmp_path, tiny_model_dir, tiny_encoder):
    config = load_config(make_project(tmp_path, tiny_model_dir))
    docs = tmp_path / "docs"
    shutil.copy(docs / "reset.md", docs / "reset-twin.md")  # the same text twice in one run: encoded once

    first = run_sync(config, encoder=tiny_encoder)
    assert first.chunks["cached"] > 0 and first.cache_hits == 0  # shared within the run, not read from the cache
    for stage in ("plan", "encode", "write"):
        assert 0 < first.seconds[stage] <= first.seconds["total"]  # each stage runs in one thread inside the run
    assert first.to_json()["seconds"] == first.timings() and first.to_json()["embedding_cache_hits"] == 0

    shutil.copy(docs / "cable.txt", docs / "cable-copy.txt")
    preview = run_sync(config, encoder=tiny_encoder, dry_run=True)
    second = run_sync(config, encoder=tiny_encoder)
    assert second.chunks["encoded"] == 0 and second.cache_hits == second.chunks["cached"] > 0
    assert preview.cache_hits == second.cache_hits and preview.seconds["encode"] == 0


def test_a_report_passed_in_keeps_the_counts_when_the_sync_raises(tmp_path, tiny_model_dir, tiny_encoder,
                                                                   monkeypatch):
    config = load_config(make_project(tmp_path, tiny_model_dir))
    (tmp_path / "docs" / "later.md").write_text("read after the failing one\n", encoding="utf-8")
    report = SyncReport()

    from connector.steps.plan import Planner

    real_plan = Planner.plan

    def plan(self, doc, reader):
        if doc.doc_id == "old.md":
            raise RuntimeError("boom")
        return real_plan(self, doc, reader)

    monkeypatch.setattr(Planner, "plan", plan)
    with pytest.raises(RuntimeError, match="boom"):
        run_sync(config, encoder=tiny_encoder, report=report)
    assert report.documents["seen"] >= 1 and report.seconds["total"] > 0


# ---- --pushgateway -----------------------------------------------------------------------
class Receiver:
    """A minimal HTTP server on 127.0.0.1 that records each request and answers `status`."""

    def __init__(self, status: int = 200):
        self.requests: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"method": self.command, "path": self.path, "body": body,
                                          "content_type": self.headers.get("Content-Type"),
                                          "authorization": self.headers.get("Authorization")})
                self.send_response(status)
                self.end_headers()

            do_PUT = do_POST = do_DELETE = _record

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_push_sends_one_put_to_the_collections_group(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    with Receiver() as receiver:
        started = time.time()
        code, report, stderr = sync_cli(config, "--pushgateway", receiver.url)
        ended = time.time()
    assert code == 3 and "warning" not in stderr and report["warnings"] == []
    assert len(receiver.requests) == 1 and receiver.requests[0]["authorization"] is None
    request = receiver.requests[0]
    assert request["method"] == "PUT"  # replaces the group's metrics: none left over from an older run
    assert request["path"] == "/metrics/job/connector_sync/collection/kb"
    assert request["content_type"].startswith("text/plain; version=0.0.4")
    assert_metrics_match(request["body"].decode(), report, code, started, ended)


def test_a_refused_push_is_a_warning_that_shows_no_password(tmp_path):
    """`user:password@` in the URL is sent as basic auth, and never printed."""
    config = load_config(make_project(tmp_path, Path("unused-model")))
    with Receiver(status=401) as receiver:
        url = receiver.url.replace("http://", "http://ops:pa%40ss@")
        warnings = run_metrics.export_run_metrics(SyncReport(), config, pushgateway=url)
    (request,) = receiver.requests
    assert request["path"] == "/metrics/job/connector_sync/collection/kb" and request["method"] == "PUT"
    assert base64.b64decode(request["authorization"].removeprefix("Basic ")) == b"ops:pa@ss"
    assert len(warnings) == 1 and f"Pushgateway at {receiver.url}:" in warnings[0] and "401" in warnings[0]
    assert "pa%40ss" not in warnings[0] and "pa@ss" not in warnings[0] and "ops" not in warnings[0]


def test_a_dead_pushgateway_is_a_warning_and_the_file_is_still_written(tmp_path, tiny_model_dir):
    config = make_project(tmp_path, tiny_model_dir)
    metrics = tmp_path / "connector.prom"
    dead = f"http://127.0.0.1:{free_port()}"
    code, report, stderr = sync_cli(config, "--pushgateway", dead, "--metrics-file", str(metrics))
    assert code == 3  # the sync's own exit code (the empty file), not the push's
    assert report["documents"]["new"] == 3
    assert len(report["warnings"]) == 1 and f"Pushgateway at {dead}" in report["warnings"][0]
    assert f"warning: could not push the metrics to the Pushgateway at {dead}" in stderr
    assert sync_metrics(metrics.read_text())[("connector_sync_documents", "new")] == 3


@pytest.fixture
def pushgateway(tmp_path):
    """Debian's prometheus-pushgateway on 127.0.0.1 (no persistence file), stopped by its pid."""
    binary = shutil.which(PUSHGATEWAY)
    if binary is None:
        pytest.fail(f"{PUSHGATEWAY} is not installed: run scripts/install-system-deps (CI does), "
                    "or `apt-get install -y prometheus-pushgateway`")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "pushgateway.log").open("wb")
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{PUSHGATEWAY} did not start: {(tmp_path / 'pushgateway.log').read_text()}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_push_to_a_real_pushgateway(tmp_path, tiny_model_dir, pushgateway):
    config = make_project(tmp_path, tiny_model_dir)
    sync_cli(config, "--pushgateway", pushgateway)
    started = time.time()
    edit_corpus(tmp_path / "docs")
    code, second, stderr = sync_cli(config, "--prune", "--pushgateway", pushgateway)
    ended = time.time()
    assert code == 3 and "warning" not in stderr

    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (success,) = families["connector_sync_success"].samples  # the second push replaced the first
    assert success.labels == {"collection": "kb", "job": "connector_sync", "instance": ""}
    assert_metrics_match(text, second, code, started, ended)
    assert second["documents"]["deleted"] == 1 and second["embedding_cache_hits"] > 0
    (push_time,) = [s for s in families["push_time_seconds"].samples if s.labels.get("job") == "connector_sync"]
    assert started <= push_time.value <= ended
