"""The staged sync against the encoder alone, and peak memory as the corpus grows.

    .venv/bin/python benchmarks/pipeline_sync.py [--docs 400] [--memory-docs 2000 20000] [--stores ...] [--no-write]
    .venv/bin/python benchmarks/pipeline_sync.py --wall-only [--docs 400] [--stores qdrant-edge]

1. Wall time (same process; encode_throughput.py's `--shape small` model: 6 layers, hidden 384,
   vocab 250002, random weights, then its bge-m3-shaped model on a smaller corpus, where encoding
   outweighs everything else as it does in real use): a generated corpus is synced from scratch into
   each store, pipelined (the default) and with the stages one after the other
   (`run_sync(pipelined=False)`), and the distinct chunk texts the sync encoded are encoded alone
   in ONE `encoder.encode()` call (sorted by length over the whole set: the encoder's best case).
   Each is run twice, alternating; the best of each is kept. Target: pipelined sync <= 1.1 x the
   encoder alone.
   Then the small shape into a milvus-lite server behind a TCP proxy that delays each message by
   --delay-ms each way: a store across a network, where the write stage waits rather than computes.
2. Peak memory: a fresh subprocess per corpus size and store syncs N documents from scratch (tiny model, so
   that 20 000 documents take minutes, not hours: the stages' buffers do not depend on the model)
   and reports its own peak RSS (VmHWM). Target: 2 000 vs 20 000 documents < 100 MB apart.

Writes its section of benchmarks/RESULTS.md (between the pipeline markers) unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import cpu_model, publish  # benchmarks/common.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SENTENCES = ROOT / "connector" / "testing" / "sentences.txt"
START, END = "<!-- pipeline:start -->", "<!-- pipeline:end -->"
STORES = ("qdrant-edge", "qdrant-local-mode", "milvus")  # embedded: Qdrant Edge, Qdrant local mode, Milvus Lite
MEMORY_STORES = ("milvus-server", *STORES)


def write_corpus(root: Path, docs: int, seed: int = 5, paragraph_counts: tuple[int, int] = (1, 6)) -> None:
    """Support-article-like documents: 1 to 6 paragraphs (`paragraph_counts`) of 2 to 6 multilingual
    sentences."""
    sentences = [s for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(docs):
        paragraphs = [" ".join(rng.choice(sentences) for _ in range(rng.randint(2, 6)))
                      for _ in range(rng.randint(*paragraph_counts))]
        folder = root / f"part-{n // 1000:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"doc-{n:05d}.md").write_text(f"# Article {n}\n\n" + "\n\n".join(paragraphs), encoding="utf-8")


def make_config(work: Path, model: Path, store: str, name: str, uri: str | None = None):
    """store: qdrant-edge or qdrant-local-mode (embedded Qdrant engines), milvus (Milvus Lite, embedded)
    or milvus-server (at `uri`)."""
    from connector.config import parse_config

    sink = {"qdrant-edge": {"type": "qdrant", "path": f"./{name}/qdrant", "engine": "edge"},
            "qdrant-local-mode": {"type": "qdrant", "path": f"./{name}/qdrant", "engine": "local-mode"},
            "milvus": {"type": "milvus", "uri": f"./{name}/milvus.db"},
            "milvus-server": {"type": "milvus", "uri": uri}}[store]
    return parse_config({
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 128, "overlap_tokens": 16},
        "encoder": {"model": str(model), "max_length": 512, "batch_size": 16},
        "sink": {**sink, "collection": "kb"},
        "state_dir": f"./{name}/state",
    }, work, origin="benchmark config")


# ------------------------------------------------------------------------------------- wall time
def measure_wall(docs: int, shape: str, stores=STORES) -> dict:
    from encode_throughput import ensure_model  # encode_throughput's models, cached in benchmarks/.cache

    from connector.app import make_encoder, open_sink
    from connector.pipeline import run_sync

    model = ensure_model(shape)
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        write_corpus(work / "docs", docs)
        encoder = make_encoder(make_config(work, model, "qdrant-edge", "warm"))
        encoder.encode(["warm-up: loads the weights", "a second text"])
        rows: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}  # the process's CPU seconds (every thread; the embedded stores' too)
        texts: list[str] = []
        reports = {}
        for attempt in range(2):
            for store in stores:
                for pipelined in (True, False):
                    name = f"{store}-{'staged' if pipelined else 'inline'}-{attempt}"
                    config = make_config(work, model, store, name)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    report = run_sync(config, encoder=encoder, pipelined=pipelined)
                    label = f"{store} {'pipelined' if pipelined else 'stages one after the other'}"
                    rows.setdefault(label, []).append(time.perf_counter() - started)
                    cpu.setdefault(label, []).append(time.process_time() - cpu_started)
                    assert report.exit_code == 0, report.to_json()
                    reports[(store, pipelined)] = report
                    if not texts:  # the distinct chunk texts this sync encoded, from the store
                        sink = open_sink(config)
                        texts = sorted({p.payload["text"] for p in sink.retrieve(sorted(sink.all_ids()))})
                        sink.close()
                        assert len(texts) == report.chunks["encoded"], (len(texts), report.chunks)
                    shutil.rmtree(work / name)
            started, cpu_started = time.perf_counter(), time.process_time()
            encoder.encode(texts)
            rows.setdefault("encoder alone", []).append(time.perf_counter() - started)
            cpu.setdefault("encoder alone", []).append(time.process_time() - cpu_started)
        tokens = sum(len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=512)["input_ids"])
        return {"shape": shape, "docs": docs, "chunks": len(texts), "tokens": tokens, "seconds": rows, "cpu": cpu,
                "documents": reports[(stores[0], True)].documents, "threads": __import__("torch").get_num_threads()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_remote(docs: int, delay_ms: float) -> dict:
    """The small shape into a milvus-lite server behind a LatencyProxy (a store `delay_ms` away
    each way): pipelined against one after the other. Here the write stage mostly waits on the
    network, which is what the stages overlap with encoding."""
    from encode_throughput import ensure_model
    from latency_proxy import LatencyProxy

    from connector.app import make_encoder
    from connector.pipeline import run_sync

    model = ensure_model("small")
    work = Path(tempfile.mkdtemp(prefix="pipeline-remote-"))
    server = None
    try:
        write_corpus(work / "docs", docs)
        server = MilvusLiteServer(work / "server-data")
        with LatencyProxy("127.0.0.1", server.port, delay_ms / 1000) as proxy:
            encoder = make_encoder(make_config(work, model, "qdrant-edge", "warm"))
            encoder.encode(["warm-up: loads the weights", "a second text"])
            rows: dict[str, list[float]] = {}
            for attempt in range(2):
                for pipelined in (True, False):
                    name = f"{'staged' if pipelined else 'inline'}-{attempt}"
                    config = make_config(work, model, "milvus-server", name, uri=f"http://127.0.0.1:{proxy.port}")
                    config.sink.collection = f"kb_{name.replace('-', '_')}"
                    started = time.perf_counter()
                    report = run_sync(config, encoder=encoder, pipelined=pipelined)
                    rows.setdefault("pipelined" if pipelined else "stages one after the other", []).append(
                        time.perf_counter() - started)
                    assert report.exit_code == 0, report.to_json()
        return {"docs": docs, "delay_ms": delay_ms, "chunks": report.chunks["upserted"], "seconds": rows}
    finally:
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------- memory
def status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB. (Not ru_maxrss: Linux keeps
    that across exec, so a child would start with its parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def memory_child(docs_dir: str, store: str, work: str, uri: str) -> None:
    """In a fresh process: sync the corpus with the tiny model; print the report and peak RSS."""
    from connector.pipeline import run_sync

    model = CACHE / "model-tiny"
    config = make_config(Path(work), model, store, "run", uri=uri)
    config.source.path = Path(docs_dir)
    baseline = status_mb("VmHWM")
    started = time.perf_counter()
    report = run_sync(config)
    print(json.dumps({"peak_rss_mb": status_mb("VmHWM"), "before_sync_mb": baseline,
                      "seconds": time.perf_counter() - started,
                      "exit_code": report.exit_code, "documents": report.documents, "chunks": report.chunks}))


class MilvusLiteServer:
    """A `milvus-lite server` process on 127.0.0.1 (the store in another process)."""

    def __init__(self, data_dir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        binary = Path(sys.executable).parent / "milvus-lite"
        self.log = open(data_dir.parent / "milvus-lite.log", "ab")
        self.process = subprocess.Popen(
            [str(binary), "server", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"milvus-lite server did not start; see {self.log.name}")
        self.uri = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def measure_memory(sizes: list[int], stores: list[str]) -> list[dict]:
    from connector.testing import make_model

    if not (CACHE / "model-tiny" / "config.json").exists():
        make_model(CACHE / "model-tiny")
    rows = []
    for docs in sizes:
        work = Path(tempfile.mkdtemp(prefix="pipeline-mem-"))
        try:
            write_corpus(work / "docs", docs)
            for store in stores:
                run_dir = work / store
                run_dir.mkdir()
                server = MilvusLiteServer(run_dir / "server-data") if store == "milvus-server" else None
                try:
                    out = subprocess.run([sys.executable, __file__, "--memory-child", str(work / "docs"), store,
                                          str(run_dir), server.uri if server else ""],
                                         check=True, capture_output=True, text=True, cwd=ROOT)
                finally:
                    if server:
                        server.stop()
                row = json.loads(out.stdout.strip().splitlines()[-1])
                assert row["exit_code"] == 0 and row["documents"]["new"] == docs, row
                rows.append({"docs": docs, "store": store, **row})
                print(f"  memory: {docs} docs into {store}: peak RSS {row['peak_rss_mb']:.0f} MB, "
                      f"{row['chunks']['upserted']} chunks in {row['seconds']:.0f} s", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------------------- results
SHAPE_NAMES = {"small": "the `--shape small` model (6 layers, hidden 384, vocab 250002)",
               "full": "a model of bge-m3's exact shape (24 layers, hidden 1024, vocab 250002)"}


def render(walls: list[dict], remote: dict | None, memory: list[dict], command: str) -> str:
    lines = [
        START,
        "## Pipelined sync",
        "",
        "Generated multilingual documents (chunking 128/16) synced from scratch into each embedded store with random-"
        "weight models; the encoder alone = one `encode()` call over the same distinct chunk texts (sorted by length "
        "over the whole set: the encoder's best case). Best of 2 alternating runs each, same process. Target: "
        "pipelined <= 1.1 x the encoder alone.",
    ]
    for wall in walls:
        best = {name: min(values) for name, values in wall["seconds"].items()}
        enc = best["encoder alone"]
        lines += ["", f"{SHAPE_NAMES[wall['shape']]}: {wall['docs']} documents, {wall['chunks']} chunks, "
                      f"{wall['tokens']} tokens, {wall['threads']} encoder threads.", "",
                  "| run | seconds (best of 2) | all runs | x encoder alone |", "|---|---|---|---|"]
        for name, values in wall["seconds"].items():
            lines.append(f"| {name} | {min(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
                         f"{min(values) / enc:.3f} |")
    if remote:
        best = {name: min(values) for name, values in remote["seconds"].items()}
        lines += ["", f"A store across a network: the small shape, {remote['docs']} documents ({remote['chunks']} "
                      f"chunks) into a milvus-lite server behind a TCP proxy that delays every message "
                      f"{remote['delay_ms']:.0f} ms each way (benchmarks/latency_proxy.py). Best of 2 alternating runs.",
                  "", "| run | seconds (best of 2) | all runs | x pipelined |", "|---|---|---|---|"]
        for name, values in remote["seconds"].items():
            lines.append(f"| {name} | {min(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
                         f"{min(values) / best['pipelined']:.3f} |")
    lines += [
        "",
        "Peak memory of a sync from scratch (a fresh process per run, tiny model, VmHWM of /proc/self/status), as the "
        "corpus grows. Target: 2 000 vs 20 000 documents < 100 MB apart. `milvus-server` writes to a `milvus-lite "
        "server` process on 127.0.0.1, so the figure is the connector's own; Qdrant local mode and Milvus Lite keep "
        "the collection inside the syncing process, so their figure includes the store's copy of every point; Qdrant "
        "Edge memory-maps its files, and VmHWM counts the mapped pages it touched.",
        "",
        "| store | documents | chunks | seconds | peak RSS MB | peak before the sync MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in memory:
        lines.append(f"| {row['store']} | {row['docs']} | {row['chunks']['upserted']} | {row['seconds']:.0f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['before_sync_mb']:.0f} |")
    by_store: dict[str, list[dict]] = {}
    for row in memory:
        by_store.setdefault(row["store"], []).append(row)
    for store, rows in by_store.items():
        if len(rows) >= 2:
            lo, hi = rows[0], rows[-1]
            lines.append(f"\n{store}: {hi['docs']} vs {lo['docs']} documents: "
                         f"{hi['peak_rss_mb'] - lo['peak_rss_mb']:+.0f} MB peak RSS.")
    lines += [
        "",
        f"- **Machine**: {cpu_model()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}.",
        f"- **Command** (from the repository root, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC): `{command}`",
        END,
    ]
    return "\n".join(lines)


WALL_START, WALL_END = "<!-- pipeline-stores:start -->", "<!-- pipeline-stores:end -->"


def render_wall_only(wall: dict, command: str) -> str:
    """`--wall-only`: the wall-time runs alone, with the process's CPU seconds next to the wall
    seconds (on a machine shared with other jobs, the CPU ratio is the steadier one)."""
    wall_best = {name: min(values) for name, values in wall["seconds"].items()}
    cpu_best = {name: min(values) for name, values in wall["cpu"].items()}
    lines = [WALL_START, "## Pipelined sync per embedded store (wall and CPU seconds)", "",
             f"{SHAPE_NAMES[wall['shape']]}: {wall['docs']} documents, {wall['chunks']} chunks, {wall['tokens']} tokens, "
             f"{wall['threads']} encoder threads; the generated corpus and settings of the section above, synced from "
             "scratch. CPU = this process's CPU seconds over all its threads (the encoder's, the stages', an embedded "
             "Qdrant's; Milvus Lite runs its engine in a child process, not counted). Best of 2 alternating runs.", "",
             "| run | wall s (best of 2) | all runs | x encoder alone | CPU s (best of 2) | x encoder alone (CPU) |",
             "|---|---:|---|---:|---:|---:|"]
    for name, values in wall["seconds"].items():
        lines.append(f"| {name} | {wall_best[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
                     f"{wall_best[name] / wall_best['encoder alone']:.3f} | {cpu_best[name]:.2f} | "
                     f"{cpu_best[name] / cpu_best['encoder alone']:.3f} |")
    lines += ["", f"- **Machine**: {cpu_model()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}; "
                  f"load average at the end {os.getloadavg()[0]:.1f} (other jobs share the cores).",
              f"- **Command** (from the repository root, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC): `{command}`",
              WALL_END]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--memory-child":
        memory_child(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400, help="documents for the wall-time runs, small shape")
    parser.add_argument("--full-docs", type=int, default=40, help="documents for the wall-time runs, bge-m3's shape")
    parser.add_argument("--delay-ms", type=float, default=25, help="the remote store's delay each way (0: skip)")
    parser.add_argument("--memory-docs", type=int, nargs="*", default=[2000, 20000])
    parser.add_argument("--memory-stores", nargs="*", default=list(MEMORY_STORES), choices=MEMORY_STORES)
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=STORES, help="stores of the wall-time runs")
    parser.add_argument("--wall-only", action="store_true",
                        help="only the small shape's wall-time runs, with CPU seconds, into their own section")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    command = " ".join([".venv/bin/python benchmarks/pipeline_sync.py", *sys.argv[1:]])
    if args.wall_only:
        wall = measure_wall(args.docs, "small", args.stores)
        publish(RESULTS, WALL_START, WALL_END, render_wall_only(wall, command), write=not args.no_write)
        return 0
    walls = [measure_wall(args.docs, "small", args.stores)] + ([measure_wall(args.full_docs, "full", args.stores)] if args.full_docs else [])
    print(json.dumps(walls, indent=1), flush=True)
    remote = measure_remote(args.docs, args.delay_ms) if args.delay_ms else None
    print(json.dumps(remote, indent=1), flush=True)
    memory = measure_memory(args.memory_docs, args.memory_stores)
    section = render(walls, remote, memory, command)
    publish(RESULTS, START, END, section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
