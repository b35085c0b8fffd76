"""The read commands (verify, status, failed, search) on a large collection, as a user runs them.

    .venv/bin/python benchmarks/commands_at_scale.py [--points 50000 500000] [--folder /tmp/commands-at-scale]
                                                     [--local-mode-points 50000] [--cold] [--no-write]

Per size, a state dir and an embedded Qdrant Edge store of N points are built ONCE under
`--folder` (reused when present: `FOLDER/N/built.json` marks a finished build). The points have
bge-m3's shape (1024-d unit dense vectors, random; sparse vectors of 40-160 token ids; a
540-character payload text with the metadata a files source gives), 1-60 points per document
(about 30 on average), written through the connector's own Sink (256 points per upsert) and
committed to its own Ledger document by document, exactly the records a sync leaves (point ids,
chunk keys, fingerprints, the owner mark); the sink's close builds the indexes, as at the end of a
sync. A model with bge-m3's file layout and hidden size 1024 (2 layers, random weights;
`connector.testing.make_model`) stands in for bge-m3 so that `search` runs end to end.

Then the real CLI runs as subprocesses: `connector verify -c CFG --json`, `connector status -c CFG
--json`, `connector failed -c CFG --json` and `connector search -c CFG QUERY --json`; per command
its wall time and peak RSS (/usr/bin/time's maximum resident set: memory-mapped store files
included) and its largest anonymous RSS (heap; /proc sampled every 20 ms). `search` is measured a
second way too, in one process through the library (`connector.api.search` with an encoder that is
already loaded): the model load, then each query (first and median of the next ones), and the
RSS the queries add beyond the loaded model. Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import machine_and_command, publish  # benchmarks/common.py (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- commands-at-scale:start -->", "<!-- commands-at-scale:end -->"
DIM, VOCAB, BATCH, COLLECTION = 1024, 250_002, 256, "kb"
FINGERPRINT = "5f" * 32  # one pipeline fingerprint for every document, as after one sync
WORDS = ("pump pressure valve controller alarm limit minute event sensor flow reading threshold maintenance "
         "schedule operator manual warning reset calibration drift filter inlet outlet gauge").split()
QUERIES = ["valve pressure alarm after the limit", "how to reset the controller", "calibration drift of the sensor",
           "maintenance schedule for the inlet filter", "operator manual warning"]


# ---- building the state dir and the store (once) -------------------------------------------
def write_config(folder: Path, model: Path, engine: str) -> Path:
    docs = folder / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    engine_line = f", engine: {engine}" if engine != "edge" else ""
    config.write_text(
        f"source: {{type: files, path: {docs}}}\n"
        f"encoder: {{model: {model}, max_length: 1024}}\n"
        f"sink: {{type: qdrant, path: {folder / 'store'}, collection: {COLLECTION}, "
        f"batch_size: {BATCH}{engine_line}}}\n"
        f"state_dir: {folder / 'state'}\n",
        encoding="utf-8",
    )
    return config


def make_search_model(folder: Path) -> Path:
    """bge-m3's file layout and dense size (1024) with 2 layers of random weights (built once)."""
    model = folder / "model-1024"
    if not (model / "model.safetensors").is_file():
        from connector.testing import make_model

        make_model(model, num_layers=2, hidden_size=DIM, num_heads=16, intermediate_size=4096)
    return model


def document_points(doc_no: int, rng: np.random.Generator):
    """One document's points and its ledger record, as a sync makes them."""
    from connector.ledger import DocCommit, LedgerChunk
    from connector.hashes import chunk_key, volatile_hash
    from connector.steps.plan import chunk_payload
    from connector.records import Chunk, Point, SparseVector, point_id, sha256_text

    doc_id = f"manuals/section-{doc_no // 100:03d}/doc-{doc_no:06d}.md"
    metadata = {"path": doc_id, "modified": "2026-11-29T10:00:00+00:00"}
    count = int(rng.integers(1, 61))
    dense = rng.standard_normal((count, DIM), dtype=np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    points, chunks = [], []
    for index in range(count):
        words = rng.choice(WORDS, 90)
        text = (f"Document {doc_no}, part {index}: " + " ".join(words))[:540]
        chunk = Chunk(doc_id=doc_id, index=index, text=text, char_start=index * 480, char_end=index * 480 + len(text))
        payload = chunk_payload(chunk, metadata)
        ids = np.unique(np.minimum(rng.zipf(1.3, rng.integers(40, 160)), VOCAB - 1).astype(np.int64)
                        + rng.integers(0, 5000))
        pid = point_id(COLLECTION, doc_id, index)
        points.append(Point(id=pid, dense=dense[index], payload=payload,
                            sparse=SparseVector(ids, rng.uniform(0.01, 0.4, len(ids)).astype(np.float32))))
        chunks.append(LedgerChunk(index, pid, chunk_key(payload, FINGERPRINT), chunk.sha256))
    commit = DocCommit(doc_id, sha256_text(doc_id), FINGERPRINT, chunks, [], origin=doc_id,
                       volatile_hash=volatile_hash(metadata))
    return points, commit


def build(folder: Path, n: int, engine: str, model: Path) -> dict:
    """Write N points and their ledger under `folder` (see the module docstring); returns timings."""
    from connector.config import load_config
    from connector.ledger import Ledger
    from connector.ownership import claim
    from connector.app import open_sink, sink_target

    config = load_config(write_config(folder, model, engine))
    rng = np.random.default_rng(n)
    ledger = Ledger(config.state_dir)
    ledger.bind_target(sink_target(config))
    sink = open_sink(config)
    began = time.perf_counter()
    sink.ensure_collection(DIM)
    claim(sink, ledger, shared=False)
    written, doc_no, pending, commits = 0, 0, [], []
    while written < n:
        points, commit = document_points(doc_no, rng)
        doc_no += 1
        keep = n - written
        if len(points) > keep:  # the last document is cut to make exactly N points
            points, commit.chunks = points[:keep], commit.chunks[:keep]
        pending += points
        commits.append(commit)
        written += len(points)
        if len(pending) >= 4096 or written >= n:
            sink.upsert(pending)
            ledger.commit_documents(commits)
            pending, commits = [], []
            if written % 50_000 < 4096 + 60:
                print(f"  {written:,} points written ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    insert_s = time.perf_counter() - began
    began = time.perf_counter()
    sink.close()  # Edge: builds the HNSW and sparse indexes, as at the end of a sync
    index_s = time.perf_counter() - began
    ledger.close()
    disk = sum(f.stat().st_size for f in (folder / "store").rglob("*") if f.is_file())
    return {"points": n, "documents": doc_no, "engine": engine, "insert_s": insert_s, "index_s": index_s,
            "store_mb": disk / 2**20}


def ensure_built(folder: Path, n: int, engine: str, model: Path) -> dict:
    marker = folder / "built.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} holds an unfinished build (no built.json): delete it and run again")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"building {n:,} points ({engine}) in {folder} ...", file=sys.stderr)
    info = build(folder, n, engine, model)
    marker.write_text(json.dumps(info))
    return info


# ---- measuring ---------------------------------------------------------------------------
def anon_rss_mb(pid: int | str = "self") -> float:
    """A process's anonymous resident memory (its heap; not the memory-mapped files)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_command(args: list[str]) -> dict:
    """Run `args` under /usr/bin/time (its peak RSS is the command's own: a child's ru_maxrss read by
    this process would count the pages it shared with this one before its exec); returns the wall
    seconds, exit code, peak RSS (MB), largest anonymous RSS (MB, sampled) and the output."""
    report = Path(f"/tmp/commands-at-scale-time-{os.getpid()}.txt")
    began = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(report), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    anon, done = [0.0], threading.Event()

    def sample():
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        while not done.wait(0.02):
            try:
                anon.extend(anon_rss_mb(pid) for pid in children.read_text().split())
            except OSError:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - began
    done.set()
    sampler.join()
    peak_kb = int(report.read_text().split()[-1])
    report.unlink()
    return {"wall_s": wall, "exit": proc.returncode, "peak_rss_mb": peak_kb / 1024,
            "anon_rss_mb": max(anon), "stdout": stdout, "stderr": stderr}


def cli(config: Path, *command: str) -> list[str]:
    return [str(Path(sys.executable).parent / "connector"), command[0], "-c", str(config), *command[1:]]


def library_search(config_path: Path) -> dict:
    """Runs in a child: load the encoder once, then time api.search per query (each opens the store
    as the CLI does) and the RSS the queries add beyond the loaded model."""
    import resource

    from connector import api
    from connector.config import load_config

    from connector.app import open_sink

    config = load_config(config_path)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    before, began = rss(), time.perf_counter()
    with open_sink(config) as sink:  # what opening the store costs (status: this and the ledger's counts)
        sink.describe()
        open_s, open_mb = time.perf_counter() - began, rss() - before
    began = time.perf_counter()
    encoder = api.open_encoder(config)
    encoder.encode(["warm up"])
    load_s, after_model = time.perf_counter() - began, rss()
    anon_model = anon_rss_mb()
    spent, hits = [], 0
    for q in QUERIES * 2:
        began = time.perf_counter()
        hits += len(api.search(config, q, encoder=encoder, limit=10)["hits"])
        spent.append(time.perf_counter() - began)
    encode = []
    for q in QUERIES:
        began = time.perf_counter()
        encoder.encode([q])
        encode.append(time.perf_counter() - began)
    return {"open_s": open_s, "open_mb": open_mb, "model_load_s": load_s, "first_s": spent[0], "median_s": statistics.median(spent[1:]),
            "max_s": max(spent), "encode_median_s": statistics.median(encode), "hits": hits,
            "rss_after_model_mb": after_model, "peak_rss_mb": rss(), "anon_after_model_mb": anon_model,
            "anon_after_mb": anon_rss_mb()}


def drop_page_cache() -> None:
    """Empty the kernel's page cache, so that the next command reads the store from disk (root only)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        raise SystemExit(f"--cold needs root to empty the page cache (/proc/sys/vm/drop_caches): {err}") from None


def measure(folder: Path, info: dict, cold: bool = False) -> dict:
    """Each read command on the store in `folder`; with `cold`, after emptying the page cache each time."""
    config = folder / "config.yaml"
    rows = {}
    for name, args in (("verify", cli(config, "verify", "--json")), ("status", cli(config, "status", "--json")),
                       ("failed", cli(config, "failed", "--json")),
                       ("search", cli(config, "search", QUERIES[0], "--json"))):
        if cold:
            drop_page_cache()
        result = run_command(args)
        if result["exit"] != 0:
            tail = (result["stderr"].strip().splitlines() or ["(no output)"])[-1]
            raise SystemExit(f"`connector {name}` failed (exit {result['exit']}) on {folder}: {tail}")
        data = json.loads(result["stdout"])
        if name == "verify" and not (data["ok"] and data["store_points"] == info["points"]):
            raise SystemExit(f"verify did not find the store clean: {result['stdout'][:500]}")
        print(f"  {info['engine']} {info['points']:,} {name}: {result['wall_s']:.2f} s, "
              f"{result['peak_rss_mb']:.0f} MB", file=sys.stderr)
        rows[name] = {k: result[k] for k in ("wall_s", "peak_rss_mb", "anon_rss_mb")}
    if cold:
        drop_page_cache()
    model_only = run_command([sys.executable, __file__, "--load-model", str(config)])
    rows["model_load"] = {k: model_only[k] for k in ("wall_s", "peak_rss_mb", "anon_rss_mb")}
    if cold:
        drop_page_cache()
    lib = run_command([sys.executable, __file__, "--library-search", str(config)])
    if lib["exit"] != 0:
        raise SystemExit(f"library search failed: {lib['stderr'].strip()[-500:]}")
    rows["library_search"] = json.loads(lib["stdout"].strip().splitlines()[-1])
    return {**info, "commands": rows, "cache": "cold" if cold else "warm"}


# ---- the table -----------------------------------------------------------------------------
def label(r: dict) -> str:
    return (r["engine"] + (" (no indexes)" if r.get("index_s", 0) is None else "")
            + (", page cache emptied" if r.get("cache") == "cold" else ""))


def table_rows(r: dict) -> list[str]:
    c, lib = r["commands"], r["commands"]["library_search"]
    model = c["model_load"]["peak_rss_mb"]
    where = f"{label(r)} | {r['points']:,}"
    out = []
    for name in ("verify", "status", "failed"):
        m = c[name]
        out.append(f"| {where} | `{name}` | {m['wall_s']:.2f} | {m['peak_rss_mb']:,.0f} | {m['anon_rss_mb']:,.0f} | |")
    out.append(f"| {where} | opening the store (library: the sink's `describe()`, in a new process) | "
               f"{lib['open_s']:.3f} | {lib['open_mb']:+,.0f} | | |")
    m = c["search"]
    out.append(f"| {where} | `search` (process: model load + 1 query) | {m['wall_s']:.2f} | {m['peak_rss_mb']:,.0f} | "
               f"{m['anon_rss_mb']:,.0f} | {m['peak_rss_mb'] - model:+,.0f} |")
    out.append(f"| {where} | search after the model is loaded (library; first / median of "
               f"{2 * len(QUERIES) - 1}; encoding the query: {lib['encode_median_s']:.3f}) | "
               f"{lib['first_s']:.3f} / {lib['median_s']:.3f} | {lib['peak_rss_mb']:,.0f} | "
               f"{lib['anon_after_mb']:,.0f} | {lib['peak_rss_mb'] - lib['rss_after_model_mb']:+,.0f} |")
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--library-search":
        print(json.dumps(library_search(Path(sys.argv[2]))))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--load-model":
        from connector import api
        from connector.config import load_config

        api.open_encoder(load_config(sys.argv[2])).encode(["warm up"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="*", default=[50_000, 500_000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/commands-at-scale"))
    parser.add_argument("--local-mode-points", type=int, nargs="*", default=[],
                        help="Also measure Qdrant local mode (engine: local-mode) at these sizes (slow).")
    parser.add_argument("--prebuilt", type=Path, nargs="*", default=[],
                        help="Also measure these folders as they are (a config.yaml, a state dir and a store, and a "
                        "built.json whose 'note' says how they differ from a build of this script).")
    parser.add_argument("--build-only", action="store_true", help="Build the stores, measure nothing.")
    parser.add_argument("--cold", action="store_true",
                        help="Measure every store a second time, emptying the kernel's page cache before each command "
                        "(root only): the store read from disk, as after a reboot or once the OS reclaimed the files.")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    model = make_search_model(args.folder)
    runs = [("edge", n) for n in args.points] + [("local-mode", n) for n in args.local_mode_points]
    built = [(args.folder / (f"{n}" if engine == "edge" else f"{engine}-{n}"), engine, n) for engine, n in runs]
    infos = [ensure_built(folder, n, engine, model) for folder, engine, n in built]
    for folder in args.prebuilt:
        built.append((folder, None, None))
        infos.append(json.loads((folder / "built.json").read_text()))
    if args.build_only:
        return
    load = os.getloadavg()
    results = [measure(folder, info, cold) for cold in ((False, True) if args.cold else (False,))
               for (folder, _, _), info in zip(built, infos)]
    after = os.getloadavg()
    (args.folder / "results.json").write_text(json.dumps(results, indent=1))
    builds = "; ".join(f"{label(r)} {r['points']:,} points in {r['documents']:,} documents: {r['insert_s']:.0f} s "
                       f"of upserts, " + (f"{r['index_s']:.0f} s of index build" if r["index_s"] is not None
                                         else r.get("note", "")) + f", {r['store_mb']:,.0f} MB on disk"
                       for r in results if r.get("cache") != "cold")
    model = results[0]["commands"]["model_load"]
    model_mb = f"{model['peak_rss_mb']:,.0f} MB and {model['wall_s']:.1f} s"
    section = "\n".join([
        START,
        "## Read commands at scale (verify, status, failed, search)",
        "",
        "The real CLI (`connector verify|status|failed -c CFG --json`, `connector search -c CFG QUERY --json`) as a "
        "subprocess on a state dir and embedded store built once through the connector's own Ledger and Sink "
        "(bge-m3's shape: 1024-d dense, sparse of 40-160 ids, 540-character payloads, 1-60 points per document). "
        "Wall time in seconds; peak RSS = the process's largest resident set (memory-mapped store files "
        "included); heap = its largest anonymous RSS (sampled every 20 ms). `search` loads a model with bge-m3's "
        f"dense size (2 layers, random weights; alone it takes {model_mb} to load); *beyond the model* = peak RSS "
        "minus that of loading the model alone (library row: minus the process's RSS once the model was loaded). "
        "Written by `benchmarks/commands_at_scale.py`.",
        "",
        "| store | points | command | seconds | peak RSS MB | heap MB | beyond the model MB |",
        "|---|---:|---|---:|---:|---:|---:|",
        *[line for r in results for line in table_rows(r)],
        "",
        f"- **Stores** (built once, reused): {builds}.",
        *machine_and_command(
            f"benchmarks/commands_at_scale.py --points {' '.join(map(str, args.points))}"
            + (f" --prebuilt {' '.join(map(str, args.prebuilt))}" if args.prebuilt else "")
            + (f" --local-mode-points {' '.join(map(str, args.local_mode_points))}" if args.local_mode_points else "")
            + (" --cold" if args.cold else ""),
            f" ({flags()}), shared with other sessions (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
            f"at the start, {after[0]:.1f} / {after[1]:.1f} / {after[2]:.1f} at the end)"),
        END,
    ])
    publish(RESULTS, START, END, section, write=not args.no_write)


def flags() -> str:
    """The vector instruction sets the CPU has, of those the stores' distance kernels use."""
    try:
        have = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "flags unknown"
    return ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni") if f in have) or "no avx2"


if __name__ == "__main__":
    main()
