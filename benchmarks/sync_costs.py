"""Re-sync costs: an unchanged corpus, one paragraph edited, one line added at the top of a document.

    .venv/bin/python benchmarks/sync_costs.py [--docs 400] [--html 120] [--no-write]
        [--json-out FILE] [--before FILE]

Builds (once, cached in benchmarks/.cache/) a bge-m3-layout model of a smaller shape (6 layers,
hidden 384; random weights) so the first sync is long enough to measure, and a corpus of generated
multilingual Markdown documents, a 50-chunk `manual.md`, a 3 000-word `long.md`, HTML pages of
Python's documentation (/usr/share/doc/python3.11-doc, when installed), and generated PDFs and
DOCX files. It syncs the corpus into embedded Qdrant, then times in the same process:
  - the first sync (everything encoded and written),
  - a re-sync of the unchanged corpus (target: <= 2% of the first),
  - a re-sync after one paragraph of `manual.md` was edited (only its touched chunks may be encoded),
  - a re-sync after one line was added at the top of `long.md` (target: only the re-encoded
    chunks written with vectors).
For every run it counts what went to the store through a counting wrapper on the sink: points
written with their vectors, points whose payload alone was rewritten, and the bytes of the
request bodies as JSON (what Qdrant's REST API would receive; embedded Qdrant sends nothing over a
wire, so this is the size of the work handed to the store).

`--json-out` saves the figures; `--before FILE` (figures saved by an older version of the code,
e.g. run with PYTHONPATH pointing at an export of it) adds them to the table for comparison.
Writes its section of benchmarks/RESULTS.md (between the sync-costs markers).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine_and_command, publish  # benchmarks/common.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- sync-costs:start -->", "<!-- sync-costs:end -->"
PYTHON_DOCS = Path("/usr/share/doc/python3.11-doc/html/library")
RUNS = ["first sync", "unchanged re-sync", "one paragraph edited", "one line added at the top"]


def model_dir() -> Path:
    from connector.testing import make_model

    folder = CACHE / "sync-costs-model"
    if not (folder / "config.json").exists():
        make_model(folder, num_layers=6, hidden_size=384, num_heads=6, intermediate_size=1536)
    return folder


def corpus(root: Path, docs: int, html: int) -> dict[str, int]:
    """Write the corpus; return the number of files per kind."""
    from connector.testing.hostile import minimal_docx, minimal_pdf

    sentences = (ROOT / "connector" / "testing" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    rng = random.Random(3)
    for n in range(docs):
        paragraphs = [" ".join(rng.choice(sentences) for _ in range(4)) for _ in range(1 + n % 4)]
        (root / f"doc-{n:04d}.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    (root / "manual.md").write_text("\n\n".join(f"Section {k}. " + " ".join(rng.choice(sentences) for _ in range(2))
                                                for k in range(50)), encoding="utf-8")
    paragraphs, words = [], 0
    while words < 3000:
        paragraphs.append(" ".join(rng.choice(sentences) for _ in range(rng.randint(2, 6))))
        words += len(paragraphs[-1].split())
    (root / "long.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    latin = [s for s in sentences if s.isascii()]
    kinds = {"md": docs + 2, "pdf": 0, "docx": 0, "html": 0}
    for n in range(max(docs // 20, 1)):
        (root / f"report-{n:03d}.pdf").write_bytes(minimal_pdf([rng.choice(latin) for _ in range(8)], title=f"Report {n}"))
        (root / f"memo-{n:03d}.docx").write_bytes(minimal_docx([rng.choice(latin) for _ in range(12)], title=f"Memo {n}"))
        kinds["pdf"] += 1
        kinds["docx"] += 1
    pages = sorted(PYTHON_DOCS.glob("*.html")) if PYTHON_DOCS.is_dir() else []
    for page in pages[:: max(len(pages) // html, 1)][:html] if html else []:
        shutil.copyfile(page, root / page.name)
        kinds["html"] += 1
    return kinds


class StoreCounter:
    """Counts what the sync hands to the store, by wrapping the Qdrant sink's primitives."""

    def __init__(self):
        self.vector_points = 0
        self.payload_points = 0
        self.bytes = 0

    def install(self) -> None:
        from connector.sinks.qdrant import QdrantSink

        classes = [QdrantSink]
        try:  # the embedded default (`path:`) is Qdrant Edge; absent in versions of the code before it
            from connector.sinks.qdrant_edge import QdrantEdgeSink
        except ImportError:
            pass
        else:
            classes.append(QdrantEdgeSink)
        for cls in classes:
            self._wrap(cls)

    def _wrap(self, cls) -> None:
        counter = self
        upsert = cls._upsert

        def counting_upsert(sink, points):
            counter.vector_points += len(points)
            counter.bytes += len(json.dumps({"points": [point_body(p) for p in points]}))
            return upsert(sink, points)

        cls._upsert = counting_upsert
        set_payloads = cls.__dict__.get("_set_payloads")
        if set_payloads is not None:  # absent before payload-only updates existed
            def counting_set_payloads(sink, items):
                counter.payload_points += len(items)
                counter.bytes += len(json.dumps({"operations": [{"overwrite_payload": {"points": [pid], "payload": p}}
                                                                for pid, p in items]}))
                return set_payloads(sink, items)

            cls._set_payloads = counting_set_payloads

    def take(self) -> dict:
        figures = {"vector_points": self.vector_points, "payload_points": self.payload_points, "bytes": self.bytes}
        self.vector_points = self.payload_points = self.bytes = 0
        return figures


def point_body(p) -> dict:
    vectors = {"dense": np.asarray(p.dense, dtype=np.float32).tolist(),
               "sparse": {"indices": [int(i) for i in p.sparse.indices], "values": [float(v) for v in p.sparse.values]}}
    return {"id": p.id, "vector": vectors, "payload": p.payload}


def parse_counter(monkeypatched: dict) -> None:
    """Count the documents the files source parses (every reader of a whole-file format)."""
    import connector.sources.files as files

    for suffix, reader in list(files.DOCUMENT_READERS.items()):
        def counting(*args, reader=reader, **kwargs):
            monkeypatched["parsed"] += 1
            return reader(*args, **kwargs)

        files.DOCUMENT_READERS[suffix] = counting
    read_docx = files.read_docx  # FilesSource binds its options to it

    def counting_docx(*args, **kwargs):
        monkeypatched["parsed"] += 1
        return read_docx(*args, **kwargs)

    files.read_docx = counting_docx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--html", type=int, default=120, help="pages of Python's docs (if installed)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--before", type=Path, help="figures saved with --json-out by an older version")
    args = parser.parse_args()

    from connector.config import parse_config
    from connector.pipeline import run_sync

    counter = StoreCounter()
    counter.install()
    parsed = {"parsed": 0}
    parse_counter(parsed)
    figures: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="sync-costs-"))
    try:
        (work / "docs").mkdir()
        kinds = corpus(work / "docs", args.docs, args.html)
        config = parse_config({
            "source": {"type": "files", "path": "./docs"},
            "chunking": {"max_tokens": 96, "overlap_tokens": 8},
            "encoder": {"model": str(model_dir()), "max_length": 512, "batch_size": 16},
            "sink": {"type": "qdrant", "path": "./qdrant", "collection": "kb"},
            "state_dir": "./state",
        }, work)

        def timed(name: str):
            parsed["parsed"] = 0
            started = time.perf_counter()
            report = run_sync(config)
            seconds = time.perf_counter() - started
            figures[name] = {"seconds": seconds, "encoded": report.chunks["encoded"], "files_parsed": parsed["parsed"],
                             **counter.take()}
            return report

        timed(RUNS[0])
        if not figures[RUNS[0]]["vector_points"]:
            raise SystemExit("the store counter saw no write in the first sync: StoreCounter does not wrap the sink "
                             "this config opens")
        timed(RUNS[1])
        manual = work / "docs" / "manual.md"
        text = manual.read_text(encoding="utf-8").split("\n\n")
        text[25] = text[25].replace("Section 25.", "Section 25 (edited).")
        manual.write_text("\n\n".join(text), encoding="utf-8")
        timed(RUNS[2])
        long = work / "docs" / "long.md"
        long.write_text("A new first line, added by the benchmark.\n" + long.read_text(encoding="utf-8"),
                        encoding="utf-8")
        timed(RUNS[3])
        from connector.ledger import Ledger

        ledger = Ledger(config.state_dir)
        manual_chunks, long_chunks = len(ledger.chunks("manual.md")), len(ledger.chunks("long.md"))
        chunking = ledger.get_meta("chunking_version") or "1"
        ledger.close()
        from connector.app import open_sink

        engine = type(open_sink(config)).__name__
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    before = json.loads(args.before.read_text(encoding="utf-8")) if args.before else {}
    table = ["| run | version | seconds | of the first sync | files parsed | chunks encoded | points written with "
             "vectors | payload-only updates | bytes to the store |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in RUNS:
        for label, run in (("before", before.get(name)), ("after", figures[name])):
            if run is None:
                continue
            base = (before if label == "before" else figures)[RUNS[0]]["seconds"]
            table.append(f"| {name} | {label} | {run['seconds']:.2f} | {100 * run['seconds'] / base:.2f}% | "
                         f"{run['files_parsed']} | {run['encoded']} | {run['vector_points']} | {run['payload_points']} | "
                         f"{run['bytes']:,} |")
    described = ", ".join(f"{n} {kind.upper()}" for kind, n in kinds.items() if n)
    section = "\n".join([
        START,
        "## Re-sync costs",
        "",
        f"{sum(kinds.values())} files ({described}; the HTML pages from Python's documentation, the PDFs and "
        f"DOCX generated), {figures[RUNS[0]]['encoded']} chunks, synced into embedded Qdrant ({engine}, chunking version "
        f"{chunking}) with a bge-m3-layout "
        "model of a smaller shape (6 layers, hidden 384, random weights), `max_tokens: 96`; then synced again "
        f"unchanged, then after one paragraph in the middle of `manual.md` ({manual_chunks} chunks) was edited, then "
        f"after one line was added at the top of the 3 000-word `long.md` ({long_chunks} chunks). \"before\": the "
        "code before payload-only updates, stat-based skipping and chunking version 2 (same script, run against an "
        "export of it, so chunking version 1 and its chunk counts); "
        "bytes: the JSON request bodies handed to the store (vectors as JSON numbers). Written by "
        "`benchmarks/sync_costs.py`.",
        "",
        *table,
        "",
        *machine_and_command(f"benchmarks/sync_costs.py --docs {args.docs} --html {args.html}"
                             + (" --before FILE" if args.before else "")),
        END,
    ])
    publish(RESULTS, START, END, section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
