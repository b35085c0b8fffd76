"""The embedded stores at scale: Qdrant Edge, Qdrant local mode, Milvus Lite.

    .venv/bin/python benchmarks/stores.py [--points 10000 100000] [--stores edge local-mode milvus-lite]
                                          [--queries 50] [--no-write]

Per store and size, in a fresh process (so that its peak RSS is its own): N points of bge-m3's
shape (1024-d unit dense vectors, random; sparse vectors of 40-160 token ids drawn Zipf-like from
the 250 002-token vocabulary; a 540-character payload text) are upserted through the connector's
own sink, 256 points per call; the sink is closed (Edge builds its indexes then) and opened again;
then `--queries` dense, sparse and hybrid searches (limit 10) of perturbed stored points are timed.
Reports insert seconds (points/s), index-build seconds (Edge: the close after the writes), query
p50/p95 per mode, the process's peak RSS (memory-mapped file pages included), its largest heap
(anonymous RSS, sampled) and the store's size on disk. The dense vectors alone
take N x 4 KiB. Writes its section of benchmarks/RESULTS.md (between the stores markers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine_and_command, publish  # benchmarks/common.py (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- stores:start -->", "<!-- stores:end -->"
DIM, VOCAB, BATCH = 1024, 250_002, 256
TEXT = ("The pump reports its pressure every minute; when the valve closes, the controller logs the event "
        "and raises an alarm if the pressure stays above the limit for more than five minutes. ") * 3


def sink_config(store: str, folder: Path):
    from connector.config import MilvusSinkConfig, QdrantSinkConfig

    if store == "milvus-lite":
        return MilvusSinkConfig(uri=str(folder / "milvus.db"), collection="bench", batch_size=BATCH)
    return QdrantSinkConfig(path=folder / "qdrant", engine=store, collection="bench", batch_size=BATCH)


def points(start: int, count: int, rng: np.random.Generator):
    from connector.records import Point, SparseVector, point_id, sha256_text

    dense = rng.standard_normal((count, DIM), dtype=np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    out = []
    for n in range(count):
        i = start + n
        ids = np.unique(np.minimum(rng.zipf(1.3, rng.integers(40, 160)), VOCAB - 1).astype(np.int64) +
                        rng.integers(0, 5000))
        text = TEXT[: 540]
        payload = {"text": text, "doc_id": f"doc-{i // 20}.md", "chunk_index": i % 20, "char_start": 0,
                   "char_end": len(text), "content_hash": sha256_text(text),
                   "metadata": {"path": f"doc-{i // 20}.md", "modified": "2026-11-29T00:00:00+00:00"}}
        out.append(Point(id=point_id("bench", payload["doc_id"], i), dense=dense[n],
                         sparse=SparseVector(ids, rng.uniform(0.01, 0.4, len(ids)).astype(np.float32)),
                         payload=payload))
    return out


def anon_rss_mb() -> float:
    """The process's anonymous resident memory (heap, not memory-mapped files the kernel may drop)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(store: str, n: int, queries: int, folder: Path) -> dict:
    """Runs inside the child process: write, reopen, query; returns the measurements."""
    from connector.sinks.factory import make_sink

    rng = np.random.default_rng(0)
    config = sink_config(store, folder)
    sink = make_sink(config)
    sink.ensure_collection(DIM)
    samples = []
    anon = [anon_rss_mb()]
    written = 0.0
    for start in range(0, n, 10_000):
        batch = points(start, min(10_000, n - start), rng)
        samples += batch[:: max(1, len(batch) // 20)][:3]
        began = time.perf_counter()
        sink.upsert(batch)
        written += time.perf_counter() - began
        del batch
        anon.append(anon_rss_mb())
    began = time.perf_counter()
    sink.close()  # Edge: builds the indexes of what was written
    indexing = time.perf_counter() - began
    anon.append(anon_rss_mb())
    sink = make_sink(config)
    count = sink.count()
    timings = {}
    for mode in ("dense", "sparse", "hybrid"):
        spent = []
        for q in range(queries):
            p = samples[q % len(samples)]
            dense = p.dense + rng.normal(0, 0.01, DIM).astype(np.float32)
            began = time.perf_counter()
            sink.search(mode, dense=dense, sparse=p.sparse, limit=10)
            spent.append((time.perf_counter() - began) * 1000)
        timings[mode] = (float(np.percentile(spent, 50)), float(np.percentile(spent, 95)))
        anon.append(anon_rss_mb())
    sink.close()
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"store": store, "points": n, "count": count, "insert_s": written, "index_s": indexing,
            "queries": timings, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "anon_rss_mb": max(anon),
            "disk_mb": disk / 2**20}


def measure(store: str, n: int, queries: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"stores-{store}-"))
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", store, str(n), str(queries), str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:  # a row that says why, and the other runs go on
            return {"store": store, "points": n, "error": "failed: " + proc.stderr.strip().splitlines()[-1][:300]}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def row(r: dict) -> str:
    if "error" in r:
        return f"| {r['store']} | {r['points']:,} | {r['error']} | | | | | | | | {r['points'] * DIM * 4 / 2**20:,.0f} |"
    q = r["queries"]
    return (f"| {r['store']} | {r['points']:,} | {r['insert_s']:.1f} ({r['points'] / r['insert_s']:,.0f}/s) | "
            f"{r['index_s']:.1f} | {q['dense'][0]:.1f} / {q['dense'][1]:.1f} | {q['sparse'][0]:.1f} / "
            f"{q['sparse'][1]:.1f} | {q['hybrid'][0]:.1f} / {q['hybrid'][1]:.1f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['anon_rss_mb']:,.0f} | "
            f"{r['disk_mb']:,.0f} | {r['points'] * DIM * 4 / 2**20:,.0f} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        store, n, queries, folder = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        print(json.dumps(run_one(store, n, queries, folder)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--stores", nargs="+", default=["edge", "local-mode"],
                        choices=["edge", "local-mode", "milvus-lite"])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--from-log", type=Path, help="Build the table from the result lines a run printed on "
                        "stderr (one JSON object a line) instead of measuring.")
    args = parser.parse_args()
    load = os.getloadavg()
    if args.from_log:
        results = [json.loads(line) for line in args.from_log.read_text().splitlines() if line.startswith('{"store"')]
        rows = [row(r) for r in results]
    else:
        rows = []
        for n in args.points:
            for store in args.stores:
                result = measure(store, n, args.queries)
                print(json.dumps(result), file=sys.stderr)
                rows.append(row(result))
    after = os.getloadavg()
    section = "\n".join([
        START,
        "## Embedded stores at scale (bge-m3's shape)",
        "",
        f"Points of bge-m3's shape (1024-d dense, sparse of 40-160 ids, 540-character payload) upserted through "
        f"the connector's sinks, {BATCH} per call; then {args.queries} searches per mode (limit 10) after a reopen. "
        "Insert: the upserts (Edge flushes each); index: the close after the writes (Edge builds its HNSW and "
        "sparse indexes then). Query times p50 / p95 in ms. Peak RSS counts the pages of memory-mapped files "
        "too (the kernel drops them under pressure); heap: the largest anonymous RSS sampled after each "
        "10 000 points and each query mode. Written by `benchmarks/stores.py`.",
        "",
        "| store | points | insert s (points/s) | index s | dense ms | sparse ms | hybrid ms | peak RSS MB | "
        "heap MB | disk MB | dense vectors MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *machine_and_command(
            f"benchmarks/stores.py --points {' '.join(map(str, args.points))} --stores {' '.join(args.stores)} "
            f"--queries {args.queries}",
            f", shared with other jobs (load average {load[0]:.1f} at the start, {after[0]:.1f} at the end)"),
        END,
    ])
    publish(RESULTS, START, END, section, write=not args.no_write)


if __name__ == "__main__":
    main()
