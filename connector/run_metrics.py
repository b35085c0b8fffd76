"""Prometheus metrics of one batch sync, for node_exporter's textfile collector or a Pushgateway.

    registry = sync_registry(report, config)                 # a fresh registry per run
    write_textfile(registry, Path("/var/lib/prometheus/node-exporter/connector.prom"))
    push_metrics(registry, "http://127.0.0.1:9091", config.sink.collection)

`connector sync --metrics-file PATH --pushgateway URL` does both through `export_run_metrics`.
Every metric is a gauge holding the value of the last run and carries the label `collection`
(two syncs that write files into one textfile folder do not collide); README "Metrics" lists
the names.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from connector.locations import public_url

if TYPE_CHECKING:
    from connector.config import SyncConfig
    from connector.steps.report import SyncReport

JOB = "connector_sync"  # the Pushgateway job; the grouping key adds the collection
PUSH_TIMEOUT_SECONDS = 10
STAGES = ("plan", "encode", "write")


def sync_registry(report: SyncReport, config: SyncConfig, exit_code: int | None = None,
                  finished: float | None = None) -> CollectorRegistry:
    """The metrics of one sync, in a registry of their own. `exit_code`: the command's, when the
    sync raised (default: the report's); `finished`: the Unix time the run ended (default: now)."""
    exit_code = report.exit_code if exit_code is None else exit_code
    registry = CollectorRegistry()
    labels = {"collection": config.sink.collection}

    def gauge(name: str, documentation: str, value: float) -> None:
        Gauge(f"connector_sync_{name}", documentation, [*labels], registry=registry).labels(**labels).set(value)

    def gauges(name: str, documentation: str, label: str, values: dict) -> None:
        metric = Gauge(f"connector_sync_{name}", documentation, [*labels, label], registry=registry)
        for key, value in values.items():
            metric.labels(**labels, **{label: key}).set(value)

    gauges("documents", "Documents of the last sync by outcome (seen = new + changed + unchanged + failed).",
           "outcome", report.documents)
    gauges("chunks", "Points (chunks) of the last sync by outcome; encoded + cached = upserted without failures.",
           "outcome", report.chunks)
    timings = report.timings()
    gauges("stage_busy_seconds", "Seconds each stage of the last sync was busy (the stages overlap in threads).",
           "stage", {stage: timings[stage] for stage in STAGES})
    gauge("duration_seconds", "Wall-clock seconds of the last sync.", timings["total"])
    gauge("embedding_cache_hits", "Points of the last sync whose vector was read from the embedding cache.",
          report.cache_hits)
    gauge("dead_letters", "Dead letters the last sync recorded (see `connector failed`).", report.dead_letters)
    gauge("outages", "Store outages during the last sync.", len(report.outages))
    gauge("documents_not_written", "Documents the last sync set aside during a store outage and never wrote.",
          report.not_written)
    gauge("stopped", "1 if the last sync stopped early (on_error: stop, or a store down too long).",
          int(report.stopped))
    gauge("last_run_timestamp_seconds", "Unix time the last sync ended.", time.time() if finished is None else finished)
    gauge("success", "1 if the last sync exited 0, else 0.", int(exit_code == 0))
    gauge("exit_code", "Exit code of the last sync (0 done, 1 error, 2 usage or config, 3 failures recorded).",
          exit_code)
    return registry


def write_textfile(registry: CollectorRegistry, path: Path) -> None:
    """Write the registry in the Prometheus text format, atomically: into a temporary file in the
    same folder (a name node_exporter skips: it reads only *.prom), then renamed over `path`. If
    anything fails the old file stays as it was and no temporary file is left. The file is
    readable by all (node_exporter usually runs as another user); it holds no secrets."""
    data = generate_latest(registry)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def push_metrics(registry: CollectorRegistry, url: str, collection: str, timeout: float = PUSH_TIMEOUT_SECONDS) -> None:
    """Replace the metrics of the group job="connector_sync", collection=COLLECTION on the
    Pushgateway at `url` (HTTP PUT); a `user:password@` in the URL is sent as basic auth.
    Raises OSError (or http.client.HTTPException) on failure."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    handler = default_handler
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

        def handler(**request):
            return basic_auth_handler(**request, username=user, password=password)

    push_to_gateway(url, job=JOB, registry=registry, grouping_key={"collection": collection}, timeout=timeout,
                    handler=handler)


def export_run_metrics(report: SyncReport, config: SyncConfig, *, path: Path | None = None,
                       pushgateway: str | None = None, exit_code: int | None = None) -> list[str]:
    """Write the sync's metrics to `path` and/or push them to `pushgateway`. A failure to write or
    to push never changes the sync's result: it comes back as a warning (one line each)."""
    registry = sync_registry(report, config, exit_code)
    warnings = []
    if path is not None:
        try:
            write_textfile(registry, path)
        except OSError as err:
            warnings.append(f"could not write the metrics file {path}: {err}; the previous file is unchanged")
    if pushgateway is not None:
        try:
            push_metrics(registry, pushgateway, config.sink.collection)
        except (OSError, http.client.HTTPException) as err:
            warnings.append(f"could not push the metrics to the Pushgateway at {public_url(pushgateway)}: {err}; "
                            "the sync's result and exit code stand, the next run pushes again")
    return warnings
