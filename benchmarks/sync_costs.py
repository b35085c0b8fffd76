"""Re-sync costs: an unchanged corpus, and one paragraph edited in a 50-chunk document.

    .venv/bin/python benchmarks/sync_costs.py [--docs 400] [--no-write]

Builds (once, cached in benchmarks/.cache/) a bge-m3-layout model of a smaller shape (6 layers,
hidden 384; random weights) so the first sync is long enough to measure, syncs a generated
multilingual corpus into embedded Qdrant, then times in the same process:
  - the first sync (everything encoded and written),
  - a re-sync of the unchanged corpus (target: <= 2% of the first),
  - a re-sync after one paragraph of a 50-chunk document was edited (only its touched chunks
    may be encoded).
Writes its section of benchmarks/RESULTS.md (between the sync-costs markers).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import machine_and_command, publish  # benchmarks/common.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- sync-costs:start -->", "<!-- sync-costs:end -->"


def model_dir() -> Path:
    from connector.testing import make_model

    folder = CACHE / "sync-costs-model"
    if not (folder / "config.json").exists():
        make_model(folder, num_layers=6, hidden_size=384, num_heads=6, intermediate_size=1536)
    return folder


def corpus(root: Path, docs: int) -> Path:
    sentences = (ROOT / "connector" / "testing" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    rng = random.Random(3)
    for n in range(docs):
        paragraphs = [" ".join(rng.choice(sentences) for _ in range(4)) for _ in range(1 + n % 4)]
        (root / f"doc-{n:04d}.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    big = root / "manual.md"  # the 50-chunk document
    big.write_text("\n\n".join(f"Section {k}. " + " ".join(rng.choice(sentences) for _ in range(2))
                               for k in range(50)), encoding="utf-8")
    return big


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from connector.config import parse_config
    from connector.pipeline import run_sync

    work = Path(tempfile.mkdtemp(prefix="sync-costs-"))
    try:
        (work / "docs").mkdir()
        big = corpus(work / "docs", args.docs)
        config = parse_config({
            "source": {"type": "files", "path": "./docs"},
            "chunking": {"max_tokens": 96, "overlap_tokens": 8},
            "encoder": {"model": str(model_dir()), "max_length": 512, "batch_size": 16},
            "sink": {"type": "qdrant", "path": "./qdrant", "collection": "kb"},
            "state_dir": "./state",
        }, work)

        def timed():
            started = time.perf_counter()
            report = run_sync(config)
            return time.perf_counter() - started, report

        first_s, first = timed()
        again_s, again = timed()
        text = big.read_text(encoding="utf-8").split("\n\n")
        text[25] = text[25].replace("Section 25.", "Section 25 (edited).")
        big.write_text("\n\n".join(text), encoding="utf-8")
        edit_s, edit = timed()
        from connector.ledger import Ledger

        ledger = Ledger(config.state_dir)
        manual_chunks = len(ledger.chunks("manual.md"))
        ledger.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("first sync", first_s, first.chunks["encoded"], first.chunks["upserted"], "100%"),
        ("unchanged re-sync", again_s, again.chunks["encoded"], again.chunks["upserted"], f"{100 * again_s / first_s:.2f}%"),
        ("one paragraph edited", edit_s, edit.chunks["encoded"], edit.chunks["upserted"], f"{100 * edit_s / first_s:.2f}%"),
    ]
    table = ["| run | seconds | chunks encoded | chunks upserted | of the first sync |", "|---|---|---|---|---|"]
    table += [f"| {name} | {s:.2f} | {enc} | {up} | {share} |" for name, s, enc, up, share in rows]
    section = "\n".join([
        START,
        "## Re-sync costs",
        "",
        f"{args.docs + 1} documents ({first.chunks['encoded']} chunks) synced into embedded Qdrant with a bge-m3-layout "
        "model of a smaller shape (6 layers, hidden 384, random weights), then synced again unchanged, then again "
        f"after one paragraph of `manual.md` ({manual_chunks} chunks) was edited. Written by `benchmarks/sync_costs.py`.",
        "",
        *table,
        "",
        *machine_and_command(f"benchmarks/sync_costs.py --docs {args.docs}"),
        END,
    ])
    publish(RESULTS, START, END, section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
