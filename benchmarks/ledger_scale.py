"""The ledger at scale, with no model and no store: its bytes per chunk, and how fast one writer
commits what a first sync (a backfill) commits.

    .venv/bin/python benchmarks/ledger_scale.py [--chunks 100000 1000000] [--batch 64] [--folder DIR] [--no-write]

Per size, a new ledger (connector.ledger.Ledger, the real one: SQLite, WAL, synchronous=FULL) in a
state dir under --folder (default: a temporary folder; every transaction is fsynced, so the file
system matters, and the section names it) receives exactly the ledger calls of the sync's write
step (connector/steps/write.py, Writer._write_batch) for a first sync: the points go in write
batches of --batch points (sink.batch_size, 64 by default), and per batch the step calls
`mark_in_flight(the batch's points)` (one transaction: each point is new, so it is queued for
deletion) and then `commit_documents(the documents whose last point was in the batch)` (one
transaction, when any). The store's upsert between the two is left out. Documents have 1-60
chunks (about 30 on average), with commands_at_scale.py's doc ids; per chunk the records a sync
writes: the point id (UUIDv5), the chunk key and the text hash (sha256 hex).

Per size: the ledger file's bytes per chunk once the writer closed it (WAL checkpointed), and
the commit rate: documents and chunks committed per second of ledger calls (making the records is
not timed), over the whole build and over its first and last tenth (does it slow as it grows?),
milliseconds per transaction, and the CPU share of those seconds (the rest is waiting for fsync).
Then, as a finished sync does, one stamp per file (`replace_stamps`), and what the next sync loads
from the ledger into the driver's memory before it reads the source (`doc_origins()`, `stamps()`):
seconds and bytes.
Writes its section of benchmarks/RESULTS.md (between the ledger-scale markers) unless --no-write.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import machine_and_command, publish  # benchmarks/common.py (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- ledger-scale:start -->", "<!-- ledger-scale:end -->"
COLLECTION = "kb"
FINGERPRINT = "5f" * 32  # one pipeline fingerprint for every document, as after one sync


def document_commit(doc_no: int, count: int):
    """The ledger record of one document of `count` chunks, as a sync makes it."""
    from connector.hashes import volatile_hash
    from connector.ledger import DocCommit, LedgerChunk
    from connector.records import point_id, sha256_text

    name = doc_id(doc_no)
    chunks = [LedgerChunk(i, point_id(COLLECTION, name, i), sha256_text(f"key {name} {i}"),
                          sha256_text(f"text {name} {i}")) for i in range(count)]
    return DocCommit(name, sha256_text(name), FINGERPRINT, chunks, [], origin=name,
                     volatile_hash=volatile_hash({"modified": "2026-11-29T10:00:00+00:00"}))


def batches(n: int, batch: int, rng: random.Random):
    """Write batches of `batch` points, `n` in all: per batch its (doc_id, point_id) pairs and the
    documents whose last point is in it (the last document is cut to make exactly n)."""
    points, done, made, doc_no = [], [], 0, 0
    while made < n:
        commit = document_commit(doc_no, min(rng.randint(1, 60), n - made))
        doc_no += 1
        made += len(commit.chunks)
        for chunk in commit.chunks:
            points.append((commit.doc_id, chunk.point_id))
            if chunk is commit.chunks[-1]:
                done.append(commit)
            if len(points) == batch:
                yield points, done
                points, done = [], []
    if points:
        yield points, done


def build(folder: Path, n: int, batch: int) -> dict:
    """A ledger of n chunks written as a first sync writes it; its size and commit rates."""
    from connector.ledger import Ledger

    ledger = Ledger(folder)
    ledger.bind_target(f"qdrant-edge:{folder}/store:{COLLECTION}")
    timeline = []  # after each batch: (ledger seconds, documents committed, chunks committed)
    seconds = cpu = 0.0
    docs = chunks = transactions = 0
    for points, done in batches(n, batch, random.Random(n)):
        wall, own = time.perf_counter(), time.process_time()
        ledger.mark_in_flight(points)
        if done:
            ledger.commit_documents(done)
        seconds += time.perf_counter() - wall
        cpu += time.process_time() - own
        transactions += 1 + bool(done)
        docs += len(done)
        chunks += sum(len(c.chunks) for c in done)
        timeline.append((seconds, docs, chunks))
    # the end of a finished sync: every file's stamp (size:mtime_ns:inode:settings|fingerprint part)
    ledger.replace_stamps({doc_id(d): f"{4000 + d}:1764410400{d:09d}:{d + 10**6}:{'3a' * 8}|{'5f' * 8}"
                           for d in range(docs)})
    ledger.close()
    size = sum(f.stat().st_size for f in folder.glob(Ledger.FILENAME + "*"))
    start = sync_start_state(folder)
    tenth = max(len(timeline) // 10, 1)
    return {"chunks": chunks, "documents": docs, "batch": batch, "bytes": size, "seconds": seconds, "cpu": cpu,
            **start, "transactions": transactions, "whole": rates(timeline[-1], (0.0, 0, 0)),
            "first": rates(timeline[tenth - 1], (0.0, 0, 0)), "last": rates(timeline[-1], timeline[-1 - tenth])}


def sync_start_state(folder: Path) -> dict:
    """What every sync loads from the ledger into the driver's memory before reading the source:
    each document's origin (renames, pruning) and each file's stamp (which files to skip). Seconds
    (a reopened ledger), and the bytes Python holds for both (tracemalloc, in a second pass)."""
    from connector.ledger import Ledger

    ledger = Ledger(folder)
    began = time.perf_counter()
    origins, stamps = ledger.doc_origins(), ledger.stamps()
    seconds = time.perf_counter() - began
    del origins, stamps
    tracemalloc.start()
    origins, stamps = ledger.doc_origins(), ledger.stamps()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    ledger.close()
    return {"start_seconds": seconds, "start_bytes": held}


def doc_id(doc_no: int) -> str:
    return f"manuals/section-{doc_no // 100:03d}/doc-{doc_no:06d}.md"  # commands_at_scale.py's doc ids


def rates(end: tuple, start: tuple) -> tuple[float, float]:
    """Documents and chunks committed per second between two points of the timeline."""
    seconds = end[0] - start[0]
    return (end[1] - start[1]) / seconds, (end[2] - start[2]) / seconds


def file_system(path: Path) -> str:
    """The type and device of the file system that holds `path` (from /proc/mounts)."""
    best = ("", "unknown", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, kind = line.split()[:3]
        if path.resolve().is_relative_to(mount) and len(mount) >= len(best[0]):
            best = (mount, kind, device)
    return f"{best[1]} on {best[2]}"


def render(results: list[dict], fs: str, loads: tuple[str, str], arguments: str) -> str:
    lines = [
        START,
        "## The ledger at scale (`benchmarks/ledger_scale.py`)",
        "",
        "A new ledger (`connector.ledger.Ledger`: SQLite, WAL, `synchronous=FULL`) receives the ledger calls of a "
        "first sync's write step, with no model and no store: per write batch `mark_in_flight(its points)`, then "
        "`commit_documents(the documents it finished)`, one transaction each, one writer. Documents of 1-60 chunks "
        "(~30 on average); per chunk a UUIDv5 point id, a chunk key and a text hash. Rates count the seconds spent "
        "in ledger calls only (making the records is not timed).",
        "",
        "| chunks | documents | batch | ledger MB | bytes per chunk | chunks committed/s (whole / first tenth / "
        "last tenth) | documents/s (whole) | ms per transaction | CPU share | sync start: s / MB in memory |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['chunks']:,} | {r['documents']:,} | {r['batch']} | {r['bytes'] / 1e6:.1f} | "
            f"{r['bytes'] / r['chunks']:.0f} | {r['whole'][1]:,.0f} / {r['first'][1]:,.0f} / {r['last'][1]:,.0f} | "
            f"{r['whole'][0]:,.0f} | {1000 * r['seconds'] / r['transactions']:.2f} | {r['cpu'] / r['seconds']:.0%} | "
            f"{r['start_seconds']:.2f} / {r['start_bytes'] / 1e6:.0f} |"
        )
    lines += [
        "",
        "- **Ledger MB** includes the `files` table a finished sync leaves (one stamp per document's file). "
        "**Sync start**: what every sync loads from the ledger before reading the source (`doc_origins()` for "
        "renames and pruning, `stamps()` for the files it may skip): seconds, and the memory Python holds for "
        "both (tracemalloc).",
        f"- **State dir**: {fs}; every transaction fsyncs the WAL. *CPU share*: this process's CPU seconds / wall "
        "seconds of the ledger calls (the rest: waiting for the disk, or for a core).",
        f"- **Load average** (1 / 5 / 15 min): {loads[0]} at the start, {loads[1]} at the end.",
        *machine_and_command(arguments),
        END,
    ]
    return "\n".join(lines)


def load_average() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch", type=int, nargs="+", default=[64], help="points per write batch (sink.batch_size)")
    parser.add_argument("--folder", type=Path, default=None, help="where the state dirs go (default: a temp folder)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    if args.folder:
        args.folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ledger-scale-", dir=args.folder))
    loads = [load_average()]
    results = []
    try:
        for n in args.chunks:
            for batch in args.batch:
                r = build(work / f"{n}-{batch}", n, batch)
                print(f"{n:,} chunks, batch {batch}: {r['seconds']:.1f} s, {r['bytes'] / r['chunks']:.0f} B/chunk, "
                      f"{r['whole'][1]:,.0f} chunks/s", file=sys.stderr)
                results.append(r)
                shutil.rmtree(work / f"{n}-{batch}")
        fs = file_system(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loads.append(load_average())
    arguments = " ".join(["benchmarks/ledger_scale.py", *sys.argv[1:]])
    publish(RESULTS, START, END, render(results, fs, tuple(loads), arguments), not args.no_write)


if __name__ == "__main__":
    main()
