"""A store that goes down mid-sync costs seconds, not hours (issue 10, item 1): the circuit opens,
writes pause while reading and encoding go on, the store is probed, and the sync either resumes
when the store is back or stops once `retry.outage_budget_seconds` is spent. Against a real
`milvus-lite server` process that the test kills (SIGKILL) at about 10% of a 3 000-document sync.
No chunk is ever encoded twice across the runs: the tests count the texts the encoder gets."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from connector.config import parse_config
from connector.encoders.bge_m3 import BGEM3Encoder
from connector.errors import StoreUnreachableError
from connector.pipeline import run_sync
from connector.recovery import verify
from connector.retry import CircuitBreaker
from milvus_server import MilvusServer, free_port

DOCS = 3000


class CountingEncoder:
    """The real encoder, counting every text it encodes; calls `on_progress(texts so far)`.
    `seconds_per_text` makes it as slow as a big model, so that a sync is still encoding when
    the outage budget runs out."""

    def __init__(self, encoder: BGEM3Encoder, on_progress=None, seconds_per_text: float = 0.0):
        self._encoder = encoder
        self.texts: Counter = Counter()
        self.on_progress = on_progress
        self.seconds_per_text = seconds_per_text

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode(self, texts):
        texts = list(texts)
        self.texts.update(texts)
        if self.on_progress is not None:
            self.on_progress(sum(self.texts.values()))
        time.sleep(self.seconds_per_text * len(texts))
        return self._encoder.encode(texts)


def corpus(root: Path) -> None:
    root.mkdir(parents=True)
    for n in range(DOCS):
        (root / f"doc-{n:04d}.txt").write_text(
            f"Ticket {n}: the router in room {n % 97} drops the connection every {n % 13 + 2} minutes.",
            encoding="utf-8")


def config_for(tmp_path: Path, model: Path, uri: str, budget: float):
    corpus(tmp_path / "docs")
    return parse_config({
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 32, "overlap_tokens": 4},
        "encoder": {"model": str(model), "max_length": 512},
        "sink": {"type": "milvus", "uri": uri, "collection": "kb", "batch_size": 64, "timeout": 5},
        "retry": {"attempts": 3, "initial_wait": 0.2, "max_wait": 2, "jitter": 0,
                  "outage_budget_seconds": budget},
        "state_dir": "./state",
    }, tmp_path)


def outage_run(workdir: Path, model: Path, budget: float, restart_after: float | None,
               seconds_per_text: float = 0.0) -> dict:
    """Sync DOCS documents into a milvus-lite server that is killed (SIGKILL) once 10% of them are
    encoded, and restarted `restart_after` seconds later (None: only after the sync ended); then
    sync again with the server up. Returns both reports, the wall time from the kill to the end
    of the first sync, and how often each text was encoded across both runs. Also used by
    benchmarks/store_outage.py."""
    server = MilvusServer(workdir / "milvus-data", port=free_port()).start()
    try:
        config = config_for(workdir, model, server.uri, budget=budget)
        killed: list[float] = []

        def kill_at_10_percent(encoded: int) -> None:
            if not killed and encoded >= 0.1 * DOCS:
                killed.append(time.monotonic())
                server.kill()
                if restart_after is not None:
                    threading.Timer(restart_after, server.start).start()

        first = CountingEncoder(BGEM3Encoder(str(model), max_length=512), kill_at_10_percent, seconds_per_text)
        report = run_sync(config, encoder=first)
        kill_to_exit = time.monotonic() - killed[0]
        if restart_after is None:
            server.start()  # the store is back (same port and data)
        second = CountingEncoder(BGEM3Encoder(str(model), max_length=512))
        again = run_sync(config, encoder=second)
        return {"first": report, "second": again, "kill_to_exit": kill_to_exit, "first_texts": first.texts,
                "second_texts": second.texts, "verified": verify(config).ok}
    finally:
        server.stop()


@pytest.mark.server
@pytest.mark.slow
def test_store_killed_and_never_back_stops_within_the_budget_and_the_next_sync_encodes_nothing_again(
        tmp_path, tiny_model_dir):
    # 20 ms a text: the whole corpus would take a minute, so the budget runs out while encoding
    run = outage_run(tmp_path, tiny_model_dir, budget=20, restart_after=None, seconds_per_text=0.02)
    report, again = run["first"], run["second"]
    print(f"killed -> exit: {run['kill_to_exit']:.1f} s; encoded {sum(run['first_texts'].values())} texts, "
          f"then {sum(run['second_texts'].values())}")
    assert report.exit_code == 3 and report.stopped
    assert sum(run["first_texts"].values()) < DOCS  # stopped while the encoder was still at work
    assert run["kill_to_exit"] <= 20 + 60
    assert report.outages and report.outages[-1]["ended"] is None and report.outages[-1]["probes"] >= 1
    assert report.not_written > 0 and report.documents["failed"] == 0  # deferred, not dead letters
    assert "store unreachable since" in report.errors[-1]["reason"]
    assert "run `connector sync` again" in report.errors[-1]["reason"]

    assert again.exit_code == 0, again.to_json()
    assert not set(run["first_texts"]) & set(run["second_texts"])  # nothing encoded twice across the runs
    assert max((run["first_texts"] + run["second_texts"]).values()) == 1
    assert run["verified"] and again.documents["seen"] == DOCS


@pytest.mark.server
@pytest.mark.slow
def test_store_killed_and_back_20s_later_costs_the_run_nothing(tmp_path, tiny_model_dir):
    run = outage_run(tmp_path, tiny_model_dir, budget=120, restart_after=20)
    report, again = run["first"], run["second"]
    print(f"killed -> exit: {run['kill_to_exit']:.1f} s; outages {report.outages}")
    assert report.exit_code == 0, report.to_json()
    assert len(report.outages) >= 1 and all(o["ended"] for o in report.outages)
    assert report.not_written == 0 and report.documents["failed"] == 0 and not report.errors
    assert report.documents["new"] == DOCS
    assert max(run["first_texts"].values()) == 1  # every chunk encoded once
    assert run["verified"]
    assert again.exit_code == 0 and sum(run["second_texts"].values()) == 0 and again.documents["unchanged"] == DOCS


def test_a_store_down_at_the_start_is_found_before_anything_is_read_or_encoded(tmp_path, tiny_model_dir):
    config = config_for(tmp_path, tiny_model_dir, f"http://127.0.0.1:{free_port()}", budget=60)
    encoder = CountingEncoder(BGEM3Encoder(str(tiny_model_dir), max_length=512))
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError) as caught:
        run_sync(config, encoder=encoder)
    message = str(caught.value)
    assert "127.0.0.1" in message and "kb" in message and "Nothing was read" in message
    assert sum(encoder.texts.values()) == 0
    print(f"unreachable store found in {time.monotonic() - started:.1f} s")


def test_breaker_opens_after_failed_calls_probes_with_growing_intervals_and_closes():
    from connector.errors import TransientError

    now = [0.0]
    breaker = CircuitBreaker(threshold=3, budget=100, first_interval=1, max_interval=8, clock=lambda: now[0])
    breaker.failed()
    now[0] += 7  # the first call spent its retry schedule
    breaker.failed()
    assert not breaker.is_open and breaker.failures == 2
    breaker.failed()
    assert breaker.is_open and not breaker.probe_due()

    def down():
        raise TransientError("connection refused")

    intervals = []
    for _ in range(5):
        wait = breaker.seconds_to_next_probe()
        intervals.append(wait)
        now[0] += wait
        assert breaker.probe_due() and not breaker.probe(down)
    assert intervals == [1, 2, 4, 8, 8]
    assert breaker.seconds_down() == 7 + 23 and not breaker.budget_spent()

    # the store answers a probe but the next write fails: open again at once, the interval keeps growing,
    # and the time keeps counting (a store that answers probes but refuses writes is down)
    now[0] += breaker.seconds_to_next_probe()
    assert breaker.probe(lambda: None) and not breaker.is_open
    breaker.failed()
    assert breaker.is_open and breaker.seconds_to_next_probe() == 8
    now[0] += 100
    assert breaker.budget_spent()
    breaker.succeeded()  # a real write got through
    assert not breaker.is_open and breaker.failures == 0 and not breaker.budget_spent()
    assert len(breaker.outages) == 1 and breaker.outages[0]["probes"] == 6 and breaker.outages[0]["ended"]
