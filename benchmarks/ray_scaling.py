"""The Ray engine against the local engine on this machine: the same corpus, the same CPUs.

    .venv/bin/python benchmarks/ray_scaling.py [--docs 200] [--cpus 2] [--nodes 1] [--encoders N]
        [--cpus-per-encoder 1] [--shape small] [--layers N] [--max-tokens 512] [--no-write]

A Ray cluster of --nodes nodes with --cpus CPUs in all on 127.0.0.1 (`ray.cluster_utils.Cluster`,
started and stopped by this script) runs the Ray engine with --encoders actors (default: --cpus)
of --cpus-per-encoder CPUs each (0.5: two actors per CPU); the local engine runs with --cpus torch
threads. Each syncs the same generated corpus (pipeline_sync.py's) from scratch into an embedded
Qdrant Edge store, with its encoder started beforehand (the actors' start and model load are
reported apart). Each engine runs twice, alternating; the best is kept. The section also gives
the texts the encode step hands the Ray encoder per call (`texts_per_call`: two batches per
actor) and the load average before the runs: figures taken on a busy machine say little.

Per engine: wall seconds, chunks encoded per second, Ray / local (target >= 0.9: the engine's
overhead under 10 %), and this process's CPU seconds per 1 000 chunks: for the Ray engine the
driver's share (reading, chunking, batch planning, serialization, store writes, ledger), for the
local engine everything. Bytes per chunk: the pickled texts sent to the actors plus the pickled
vectors returned (what Ray serializes; its framing not included).

Driver tokenization: the driver tokenizes each chunk's text after the chunker did (the batch plan,
and the encode step's length sort when a window has more texts than `texts_per_call`); the
section gives the CPU seconds of one such pass per 1 000 chunks, to set against the driver's.

--layers N gives the model N layers instead of the shape's (the driver's work does not depend on
them: `--shape full --layers 1` measures the driver at bge-m3's vector size without the cost of 24
layers); --max-tokens N chunks at N tokens (overlap N/8) instead of pipeline_sync's 128/16, over
longer documents (8-16 paragraphs), reports the mean tokens per chunk, and takes the bytes per
chunk on the corpus's own chunks.

Writes its section of benchmarks/RESULTS.md unless --no-write: between the ray-scaling markers for
the default run (one node, one actor of one CPU per CPU, the shape's layers, 128-token chunks),
else between markers named after the layout and then the variant (e.g. ray-scaling-2n-4x0.5,
ray-scaling-1-layers-512-tokens, ray-scaling-2n-4x0.5-1-layers-512-tokens).
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


def markers(cpus: int, nodes: int, encoders: int, cpus_per_encoder: float, layers: int | None = None,
            max_tokens: int | None = None) -> tuple[str, str]:
    """The RESULTS.md markers of a cluster layout and a layer count / chunk size: the default run
    keeps the plain ones, any other gets a name of its own (layout part, then variant part)."""
    layout = "" if (nodes, encoders, cpus_per_encoder) == (1, cpus, 1) else f"-{nodes}n-{encoders}x{cpus_per_encoder:g}"
    variant = (f"-{layers}-layers" if layers else "") + (f"-{max_tokens}-tokens" if max_tokens else "")
    if not layout and not variant:
        return START, END
    name = f"ray-scaling{layout}{variant}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def engine_config(work: Path, model: Path, name: str, cpus: int, address: str | None, encoders: int = 0,
                  cpus_per_encoder: float = 1, max_tokens: int | None = None):
    """pipeline_sync's config on Qdrant Edge (chunking at `max_tokens`, overlap 1/8, if given); the
    Ray engine at `address`, or the local engine."""
    from pipeline_sync import make_config

    from connector.config import LocalEngineConfig, RayEngineConfig

    config = make_config(work, model, "qdrant-edge", name)
    config.encoder.threads = cpus
    if max_tokens:
        config.chunking.max_tokens, config.chunking.overlap_tokens = max_tokens, max_tokens // 8
        config.encoder.max_length = max(config.encoder.max_length, max_tokens + 2)
    engine = (RayEngineConfig(address=address, encoders=encoders or cpus, cpus_per_encoder=cpus_per_encoder)
              if address else LocalEngineConfig())
    return config.model_copy(update={"engine": engine})


def stored_texts(config) -> list[str]:
    """The chunk texts a sync stored."""
    from connector.app import open_sink

    with open_sink(config) as sink:
        ids = sorted(sink.all_ids())
        return [p.payload["text"] for start in range(0, len(ids), 256) for p in sink.retrieve(ids[start : start + 256])]


def tokenize_seconds(encoder, texts: list[str]) -> float:
    """CPU seconds of one tokenization of `texts` as the batch plan does it (best of 3)."""
    best = float("inf")
    for _ in range(3):
        cpu = time.process_time()
        encoder.plan_batches(texts)
        best = min(best, time.process_time() - cpu)
    return best


def measure(docs: int, cpus: int, shape: str, nodes: int = 1, actors: int = 0, cpus_per_encoder: float = 1,
            layers: int | None = None, max_tokens: int | None = None) -> dict:
    import ray
    from encode_throughput import ensure_model
    from pipeline_sync import write_corpus
    from ray.cluster_utils import Cluster

    from connector.pipeline import make_encoder, run_sync

    model = ensure_model(shape, layers)
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus // nodes})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus // nodes)
    cluster.wait_for_nodes()
    layout = {"encoders": actors or cpus, "cpus_per_encoder": cpus_per_encoder}
    load_before = os.getloadavg()
    encoders = {}
    try:
        write_corpus(work / "docs", docs, paragraph_counts=(8, 16) if max_tokens else (1, 6))
        started = time.perf_counter()
        encoders["ray"] = make_encoder(engine_config(work, model, "warm-ray", cpus, cluster.address, **layout,
                                                     max_tokens=max_tokens))
        encoders["ray"].start()  # the pool starts at the first text otherwise
        start_seconds = time.perf_counter() - started
        encoders["local"] = make_encoder(engine_config(work, model, "warm-local", cpus, None, max_tokens=max_tokens))
        encoders["local"].encode(["warm-up: loads the weights"])
        runs: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        chunks, texts = 0, []
        for attempt in range(2):
            for name, encoder in encoders.items():
                label = f"{name}-{attempt}"
                config = engine_config(work, model, label, cpus, cluster.address if name == "ray" else None, **layout,
                                       max_tokens=max_tokens)
                wall, cpu = time.perf_counter(), time.process_time()
                report = run_sync(config, encoder=encoder)
                runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                assert report.exit_code == 0, report.to_json()
                chunks = report.chunks["encoded"]
                if not texts:
                    texts = stored_texts(config)
                shutil.rmtree(work / label)
        local = encoders["local"]
        tokenize = tokenize_seconds(local, texts) / len(texts)
        chunk_tokens = None
        if max_tokens:  # the corpus's own chunks
            chunk_tokens = sum(len(local.tokenizer.encode(t, add_special_tokens=False)) for t in texts) / len(texts)
            samples = texts[:64]
        else:
            samples = [f"Sample chunk {n}: " + "the relay resets when the fuse is replaced. " * 12 for n in range(64)]
        sent = len(pickle.dumps(samples)) + len(pickle.dumps(local.encode(samples)))
        return {"docs": docs, "cpus": cpus, "shape": shape, "layers": layers, "max_tokens": max_tokens,
                "chunk_tokens": chunk_tokens, "chunks": chunks, "start_seconds": start_seconds,
                "best": {name: min(values) for name, values in runs.items()}, "bytes_per_chunk": sent / len(samples),
                "dimension": encoders["local"].dimension, "ray_version": ray.__version__, "nodes": nodes,
                **layout, "texts_per_call": encoders["ray"].texts_per_call,
                "batch_size": encoders["local"].batch_size, "tokenize_seconds_per_chunk": tokenize,
                "load_before": load_before, "load_after": os.getloadavg()}
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
    layers, max_tokens = result["layers"], result["max_tokens"]
    default_layout = (result["nodes"], result["encoders"], result["cpus_per_encoder"]) == (1, result["cpus"], 1)
    start, end = markers(result["cpus"], result["nodes"], result["encoders"], result["cpus_per_encoder"], layers,
                         max_tokens)
    nodes = "a one-node cluster" if result["nodes"] == 1 else f"a {result['nodes']}-node cluster"
    driver_cpu = result["best"]["ray"][1] / chunks
    tokenize = result["tokenize_seconds_per_chunk"]
    variant = ", ".join(v for v in (f"{layers} layer(s)" if layers else "",
                                    f"{max_tokens}-token chunks" if max_tokens else "") if v)
    model = f"model `--shape {result['shape']}`" + (f" with {layers} layer(s)" if layers else "")
    chunking = (f"chunking {max_tokens}/{max_tokens // 8} over documents of 8-16 paragraphs, "
                f"{result['chunk_tokens']:.0f} tokens per chunk on average" if max_tokens else "chunking 128/16")
    sample = "of the corpus's chunks" if max_tokens else "chunk-sized texts"
    return "\n".join([
        start,
        "## Ray engine against the local engine (`benchmarks/ray_scaling.py`)"
        + ("" if default_layout else f": {result['nodes']} nodes, {result['encoders']} actors")
        + (f" ({variant})" if variant else ""),
        "",
        f"{result['docs']} generated documents, {chunks} chunks encoded ({chunking}), from scratch into Qdrant "
        f"Edge; {model} (random weights); {result['cpus']} CPUs for each engine: "
        f"the local engine with {result['cpus']} torch threads, the Ray engine ({result['ray_version']}) with "
        f"{result['encoders']} actors of {result['cpus_per_encoder']:g} CPU on {nodes} on 127.0.0.1. "
        "Best of 2 runs each.",
        "",
        "| engine | wall s | chunks/s | this process's CPU s per 1 000 chunks |",
        "|---|---|---|---|",
        *rows,
        "",
        f"- Ray / local throughput: **{ratio:.2f}x** (target >= 0.9).",
        f"- Starting the Ray pool (connect, {result['encoders']} actors each loading the model): "
        f"{result['start_seconds']:.1f} s, once per command.",
        f"- Bytes per chunk to and from the actors (pickled texts + vectors, {result['dimension']}-d dense, on 64 "
        f"{sample}): {result['bytes_per_chunk']:.0f}.",
        f"- Texts per encode call (the encode step's fan-out: two batches of {result['batch_size']} per actor): "
        f"{result['texts_per_call']}.",
        f"- One tokenization of the chunks in the driver (as the batch plan does it): {tokenize * 1000:.2f} CPU s "
        f"per 1 000 chunks, {tokenize / driver_cpu:.0%} of the driver's CPU.",
        f"- Load average (1 min) before the runs {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}.",
        *machine_and_command(command),
        end,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the cluster, and the local engine's threads")
    parser.add_argument("--nodes", type=int, default=1, help="Ray nodes sharing --cpus (default 1)")
    parser.add_argument("--encoders", type=int, default=0, help="encoder actors (default: --cpus)")
    parser.add_argument("--cpus-per-encoder", type=float, default=1.0, help="CPUs per actor, e.g. 0.5 (default 1)")
    parser.add_argument("--shape", choices=("small", "full"), default="small")
    parser.add_argument("--layers", type=int, default=None, help="layers of the model (default: the shape's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="chunk size, overlap 1/8 (default: 128, overlap 16)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args()
    if args.nodes < 1 or args.cpus % args.nodes:
        parser.error(f"--cpus ({args.cpus}) must be a multiple of --nodes ({args.nodes})")
    encoders = args.encoders or args.cpus
    if encoders * args.cpus_per_encoder > args.cpus:
        parser.error(f"{encoders} encoders x {args.cpus_per_encoder:g} CPUs do not fit in --cpus {args.cpus}")
    if (args.layers is not None and args.layers < 1) or (args.max_tokens is not None and args.max_tokens < 8):
        parser.error("--layers must be at least 1 and --max-tokens at least 8 (chunking.max_tokens's minimum)")
    result = measure(args.docs, args.cpus, args.shape, args.nodes, encoders, args.cpus_per_encoder, args.layers,
                     args.max_tokens)
    command = (f"benchmarks/ray_scaling.py --docs {args.docs} --cpus {args.cpus} --nodes {args.nodes} "
               f"--encoders {encoders} --cpus-per-encoder {args.cpus_per_encoder:g} --shape {args.shape}")
    command += (f" --layers {args.layers}" if args.layers else "") + (f" --max-tokens {args.max_tokens}" if args.max_tokens else "")
    start, end = markers(args.cpus, args.nodes, encoders, args.cpus_per_encoder, args.layers, args.max_tokens)
    publish(RESULTS, start, end, render(result, command), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
