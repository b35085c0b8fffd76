"""The Ray engine against the local engine on this machine: the same corpus, the same CPUs.

    .venv/bin/python benchmarks/ray_scaling.py [--docs 200] [--cpus 2] [--shape small] [--no-write]
                                               [--layers N] [--max-tokens 512]

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

--layers N gives the model N layers instead of the shape's (the driver's work does not depend on
them: `--shape full --layers 1` measures the driver at bge-m3's vector size without the cost of 24
layers); --max-tokens N chunks at N tokens (overlap N/8) instead of pipeline_sync's 128/16, over
longer documents (8-16 paragraphs), and reports the mean tokens per chunk.

Writes its section of benchmarks/RESULTS.md (between the ray-scaling markers; with --layers or
--max-tokens, markers of its own) unless --no-write.
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


def engine_config(work: Path, model: Path, name: str, cpus: int, address: str | None, max_tokens: int | None):
    """pipeline_sync's config on Qdrant Edge (chunking at `max_tokens` if given); the Ray engine at
    `address`, or the local engine."""
    from pipeline_sync import make_config

    from connector.config import LocalEngineConfig, RayEngineConfig

    config = make_config(work, model, "qdrant-edge", name)
    config.encoder.threads = cpus
    if max_tokens:
        config.chunking.max_tokens, config.chunking.overlap_tokens = max_tokens, max_tokens // 8
        config.encoder.max_length = max(config.encoder.max_length, max_tokens + 2)
    engine = RayEngineConfig(address=address, encoders=cpus, cpus_per_encoder=1) if address else LocalEngineConfig()
    return config.model_copy(update={"engine": engine})


def corpus_chunks(work: Path, tokenizer, chunking) -> list[str]:
    """The corpus's chunk texts as a new state dir chunks them (version 1; the files' text as is)."""
    from connector.preprocess.chunking import make_chunker

    chunker = make_chunker(tokenizer, chunking, 1)
    return [c.text for path in sorted((work / "docs").rglob("*.md"))
            for c in chunker.split(path.name, path.read_text(encoding="utf-8"))]


def measure(docs: int, cpus: int, shape: str, layers: int | None, max_tokens: int | None) -> dict:
    import ray
    from encode_throughput import ensure_model
    from pipeline_sync import write_corpus
    from ray.cluster_utils import Cluster

    from connector.pipeline import make_encoder, run_sync

    model = ensure_model(shape, layers)
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
    encoders = {}
    try:
        write_corpus(work / "docs", docs, paragraph_counts=(8, 16) if max_tokens else (1, 6))
        started = time.perf_counter()
        encoders["ray"] = make_encoder(engine_config(work, model, "warm-ray", cpus, cluster.address, max_tokens))
        start_seconds = time.perf_counter() - started
        encoders["local"] = make_encoder(engine_config(work, model, "warm-local", cpus, None, max_tokens))
        encoders["local"].encode(["warm-up: loads the weights"])
        runs: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        chunks = 0
        for attempt in range(2):
            for name, encoder in encoders.items():
                label = f"{name}-{attempt}"
                config = engine_config(work, model, label, cpus, cluster.address if name == "ray" else None, max_tokens)
                wall, cpu = time.perf_counter(), time.process_time()
                report = run_sync(config, encoder=encoder)
                runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                assert report.exit_code == 0, report.to_json()
                chunks = report.chunks["encoded"]
                shutil.rmtree(work / label)
        local = encoders["local"]
        chunk_tokens = None
        if max_tokens:  # the corpus's own chunks
            texts = corpus_chunks(work, local.tokenizer, config.chunking)
            chunk_tokens = sum(len(local.tokenizer.encode(t, add_special_tokens=False)) for t in texts) / len(texts)
            texts = texts[:64]
        else:
            texts = [f"Sample chunk {n}: " + "the relay resets when the fuse is replaced. " * 12 for n in range(64)]
        sent = len(pickle.dumps(texts)) + len(pickle.dumps(local.encode(texts)))
        return {"docs": docs, "cpus": cpus, "shape": shape, "layers": layers, "max_tokens": max_tokens,
                "chunk_tokens": chunk_tokens, "chunks": chunks, "start_seconds": start_seconds,
                "best": {name: min(values) for name, values in runs.items()}, "bytes_per_chunk": sent / len(texts),
                "dimension": encoders["local"].dimension, "ray_version": ray.__version__}
    finally:
        if "ray" in encoders:
            encoders["ray"].close()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def markers(layers: int | None, max_tokens: int | None) -> tuple[str, str]:
    """The default run's section markers, or those of a run with another layer count or chunk size."""
    name = "ray-scaling" + (f"-{layers}-layers" if layers else "") + (f"-{max_tokens}-tokens" if max_tokens else "")
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def render(result: dict, command: str) -> str:
    chunks = result["chunks"]
    start, end = markers(result["layers"], result["max_tokens"])
    model = f"model `--shape {result['shape']}`" + (f" with {result['layers']} layer(s)" if result["layers"] else "")
    chunking = (f"chunking {result['max_tokens']}/{result['max_tokens'] // 8} over documents of 8-16 paragraphs, "
                f"{result['chunk_tokens']:.0f} tokens per chunk on average" if result["max_tokens"] else "chunking 128/16")
    rows = []
    for name in ("local", "ray"):
        wall, cpu = result["best"][name]
        rows.append(f"| {name} | {wall:.1f} | {chunks / wall:.1f} | {cpu / chunks * 1000:.2f} |")
    ratio = (chunks / result["best"]["ray"][0]) / (chunks / result["best"]["local"][0])
    variant = ", ".join(v for v in (f"{result['layers']} layer(s)" if result["layers"] else "",
                                    f"{result['max_tokens']}-token chunks" if result["max_tokens"] else "") if v)
    title = f" ({variant})" if variant else ""
    sample = "of the corpus's chunks" if result["max_tokens"] else "chunk-sized texts"
    return "\n".join([
        start,
        f"## Ray engine against the local engine (`benchmarks/ray_scaling.py`){title}",
        "",
        f"{result['docs']} generated documents, {chunks} chunks encoded ({chunking}), from scratch into Qdrant "
        f"Edge; {model} (random weights); {result['cpus']} CPUs for each engine: "
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
        f"{sample}): {result['bytes_per_chunk']:.0f}.",
        *machine_and_command(command, f", load average {result['loads'][0]} at the start, {result['loads'][1]} at the end"),
        end,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--shape", choices=("small", "full"), default="small")
    parser.add_argument("--layers", type=int, default=None, help="layers of the model (default: the shape's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="chunk size (default: 128, overlap 16)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args()
    loads = [load_average()]
    result = measure(args.docs, args.cpus, args.shape, args.layers, args.max_tokens)
    result["loads"] = [*loads, load_average()]
    command = f"benchmarks/ray_scaling.py --docs {args.docs} --cpus {args.cpus} --shape {args.shape}"
    command += (f" --layers {args.layers}" if args.layers else "") + (f" --max-tokens {args.max_tokens}" if args.max_tokens else "")
    publish(RESULTS, *markers(args.layers, args.max_tokens), render(result, command), write=not args.no_write)
    return 0


def load_average() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    sys.exit(main())
