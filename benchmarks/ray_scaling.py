"""The Ray engine against the local engine on this machine: the same corpus, the same CPUs.

    .venv/bin/python benchmarks/ray_scaling.py [--docs 200] [--cpus 2] [--shape small] [--no-write]

A one-node Ray cluster with --cpus CPUs on 127.0.0.1 (`ray.cluster_utils.Cluster`, started and
stopped by this script) runs the Ray engine with --cpus encoder actors of one CPU each; the local
engine runs with --cpus torch threads. Each syncs the same generated corpus (pipeline_sync.py's)
from scratch into an embedded Qdrant Edge store, with its encoder started beforehand (the actors'
start and model load are reported apart). Each engine runs twice, alternating; the best is kept.

Per engine: wall seconds, chunks encoded per second, Ray / local (target >= 0.9: the engine's
overhead under 10 %), and this process's CPU seconds per 1 000 chunks: for the Ray engine the
driver's share (reading, chunking, batch planning, serialization, store writes, ledger), for the
local engine everything. Bytes per chunk: the pickled texts sent to the actors plus the pickled
vectors returned (what Ray serializes; its framing not included).

Writes its section of benchmarks/RESULTS.md (between the ray-scaling markers) unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import machine_and_command, publish  # benchmarks/common.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- ray-scaling:start -->", "<!-- ray-scaling:end -->"
# Ray keeps every node on 127.0.0.1 with this; read when ray is imported, so set before.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def engine_config(work: Path, model: Path, name: str, cpus: int, address: str | None):
    """pipeline_sync's config on Qdrant Edge; the Ray engine at `address`, or the local engine."""
    from pipeline_sync import make_config

    from connector.config import LocalEngineConfig, RayEngineConfig

    config = make_config(work, model, "qdrant-edge", name)
    config.encoder.threads = cpus
    engine = RayEngineConfig(address=address, encoders=cpus, cpus_per_encoder=1) if address else LocalEngineConfig()
    return config.model_copy(update={"engine": engine})


def measure(docs: int, cpus: int, shape: str) -> dict:
    import ray
    from encode_throughput import ensure_model
    from pipeline_sync import write_corpus
    from ray.cluster_utils import Cluster

    from connector.pipeline import make_encoder, run_sync

    model = ensure_model(shape)
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
    encoders = {}
    try:
        write_corpus(work / "docs", docs)
        started = time.perf_counter()
        encoders["ray"] = make_encoder(engine_config(work, model, "warm-ray", cpus, cluster.address))
        start_seconds = time.perf_counter() - started
        encoders["local"] = make_encoder(engine_config(work, model, "warm-local", cpus, None))
        encoders["local"].encode(["warm-up: loads the weights"])
        runs: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        chunks = 0
        for attempt in range(2):
            for name, encoder in encoders.items():
                label = f"{name}-{attempt}"
                config = engine_config(work, model, label, cpus, cluster.address if name == "ray" else None)
                wall, cpu = time.perf_counter(), time.process_time()
                report = run_sync(config, encoder=encoder)
                runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                assert report.exit_code == 0, report.to_json()
                chunks = report.chunks["encoded"]
                shutil.rmtree(work / label)
        texts = [f"Sample chunk {n}: " + "the relay resets when the fuse is replaced. " * 12 for n in range(64)]
        sent = len(pickle.dumps(texts)) + len(pickle.dumps(encoders["local"].encode(texts)))
        return {"docs": docs, "cpus": cpus, "shape": shape, "chunks": chunks, "start_seconds": start_seconds,
                "best": {name: min(values) for name, values in runs.items()}, "bytes_per_chunk": sent / len(texts),
                "dimension": encoders["local"].dimension, "ray_version": ray.__version__}
    finally:
        if "ray" in encoders:
            encoders["ray"].close()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def render(result: dict, command: str) -> str:
    chunks = result["chunks"]
    rows = []
    for name in ("local", "ray"):
        wall, cpu = result["best"][name]
        rows.append(f"| {name} | {wall:.1f} | {chunks / wall:.1f} | {cpu / chunks * 1000:.2f} |")
    ratio = (chunks / result["best"]["ray"][0]) / (chunks / result["best"]["local"][0])
    return "\n".join([
        START,
        "## Ray engine against the local engine (`benchmarks/ray_scaling.py`)",
        "",
        f"{result['docs']} generated documents, {chunks} chunks encoded, from scratch into Qdrant Edge; "
        f"model `--shape {result['shape']}` (random weights); {result['cpus']} CPUs for each engine: "
        f"the local engine with {result['cpus']} torch threads, the Ray engine ({result['ray_version']}) with "
        f"{result['cpus']} actors of 1 CPU on a one-node cluster on 127.0.0.1. Best of 2 runs each.",
        "",
        "| engine | wall s | chunks/s | this process's CPU s per 1 000 chunks |",
        "|---|---|---|---|",
        *rows,
        "",
        f"- Ray / local throughput: **{ratio:.2f}x** (target >= 0.9).",
        f"- Starting the Ray pool (connect, {result['cpus']} actors each loading the model): "
        f"{result['start_seconds']:.1f} s, once per command.",
        f"- Bytes per chunk to and from the actors (pickled texts + vectors, {result['dimension']}-d dense, on 64 "
        f"chunk-sized texts): {result['bytes_per_chunk']:.0f}.",
        *machine_and_command(command),
        END,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--shape", choices=("small", "full"), default="small")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args()
    result = measure(args.docs, args.cpus, args.shape)
    command = f"benchmarks/ray_scaling.py --docs {args.docs} --cpus {args.cpus} --shape {args.shape}"
    publish(RESULTS, START, END, render(result, command), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
