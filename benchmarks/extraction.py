"""HTML extraction on real documentation sites: the whole page (html.mode: full) vs its main content (main).

    .venv/bin/python benchmarks/extraction.py [--pages 150] [--no-write]

The sites are the HTML docs of three Debian packages: the Rust book (rust-doc), Node.js's API
docs (nodejs-doc) and Python's library reference (python3.11-doc). Pages are read from
/usr/share/doc where the packages are installed; otherwise the set-up downloads the packages with
`apt-get download` and unpacks them with `dpkg-deb -x` into benchmarks/.cache/debian-docs (no root
needed, and nothing is installed: installing nodejs-doc removes a nodejs from another source).

For each site, at most --pages pages of its folder (every k-th of the sorted list; the site's
one-page copy of the whole book, print.html / all.html, left out), read with FilesSource's HTML
reader in both modes, then chunked with the connector's Chunker (default chunking settings) and the
tokenizer of a tiny bge-m3-layout model (connector.testing.make_model; enough to count chunks).
Reported: documents, chunks, chunks whose exact text appears in more than one document (the
boilerplate symptom: menus, sidebars, footers repeated on every page), and extraction seconds per
MB of HTML. Writes its section of benchmarks/RESULTS.md (between the extraction markers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from common import machine_and_command, publish  # benchmarks/common.py (on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- extraction:start -->", "<!-- extraction:end -->"
MIB = 1024 * 1024

# site name -> (Debian package, its HTML folder below the package root, the site's one-page copy
# of all its pages: left out, as every chunk of it repeats another page's)
SITES = {
    "Rust book": ("rust-doc", "usr/share/doc/rust-doc/html/book", "print.html"),
    "Node.js API": ("nodejs-doc", "usr/share/doc/nodejs/api", "all.html"),
    "Python library reference": ("python3.11-doc", "usr/share/doc/python3.11/html/library", None),
}


def site_folder(package: str, folder: str) -> Path:
    """The site's HTML folder: installed under /, else unpacked from the downloaded package."""
    installed = Path("/") / folder
    if installed.is_dir():
        return installed
    unpacked = CACHE / "debian-docs" / package
    if not (unpacked / folder).is_dir():
        download = CACHE / "debian-docs" / "debs"
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=download, check=True)
        deb = max(download.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    return unpacked / folder


def sample(pages: list[Path], limit: int) -> list[Path]:
    step = max(1, -(-len(pages) // limit))  # ceil: at most `limit` pages, spread over the site
    return pages[::step][:limit]


def tokenizer():
    from transformers import AutoTokenizer

    from connector.testing import make_model

    folder = CACHE / "extraction-model"
    if not (folder / "config.json").exists():
        make_model(folder)
    return AutoTokenizer.from_pretrained(folder)


def page_text(data: bytes, mode: str) -> str:
    """The page's text as FilesSource reads it; '' for a page it would fail."""
    from connector.sources.htmlfile import read_html
    from connector.sources.reading import ReadFailure

    try:
        return read_html(data, mode=mode).text
    except ReadFailure:
        return ""


def measure(pages: list[tuple[str, bytes]], mode: str, chunker) -> dict:
    """Read every page in `mode`, chunk it, and count what repeats across documents."""
    from connector.sources.reading import has_visible_text

    started = time.perf_counter()
    texts = {name: page_text(data, mode) for name, data in pages}
    seconds = time.perf_counter() - started
    texts = {name: text for name, text in texts.items() if has_visible_text(text)}
    chunks = {name: [c.text for c in chunker.split(name, text)] for name, text in texts.items()}
    docs_with = Counter(chunk for doc_chunks in chunks.values() for chunk in set(doc_chunks))
    repeated = sum(1 for doc_chunks in chunks.values() for chunk in doc_chunks if docs_with[chunk] > 1)
    most = docs_with.most_common(1)[0] if docs_with else ("", 0)
    return {
        "documents": len(texts),
        "chunks": sum(map(len, chunks.values())),
        "repeated": repeated,
        "most_docs": most[1],
        "most_text": " ".join(most[0].split())[:60],
        "seconds_per_mb": seconds / (sum(len(d) for _, d in pages) / MIB),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=150, help="at most this many pages per site")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from connector.config import ChunkingConfig
    from connector.preprocess.chunking import Chunker

    chunker = Chunker.from_config(tokenizer(), ChunkingConfig())
    table = [
        "| site | pages (MB) | mode | documents | chunks | chunks repeated across documents | most repeated chunk: in documents | extraction s/MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for site, (package, folder, all_in_one) in SITES.items():
        root = site_folder(package, folder)
        all_pages = sorted(p for p in root.glob("*.html") if p.name != all_in_one)
        chosen = sample(all_pages, args.pages)
        pages = [(str(p.relative_to(root)), p.read_bytes()) for p in chosen]
        mb = sum(len(d) for _, d in pages) / MIB
        for mode in ("full", "main"):
            r = measure(pages, mode, chunker)
            share = f"{100 * r['repeated'] / r['chunks']:.0f}%" if r["chunks"] else "–"
            table.append(
                f"| {site} | {len(pages)} of {len(all_pages)} ({mb:.1f}) | {mode} | {r['documents']} | {r['chunks']} | "
                f"{r['repeated']} ({share}) | {r['most_docs']} | {r['seconds_per_mb']:.2f} |"
            )
            notes.append(f"- {site}, {mode}: the most repeated chunk begins “{r['most_text']}”")
            print(table[-1], flush=True)

    section = "\n".join([
        START,
        "## HTML extraction: whole page vs main content",
        "",
        "Real documentation sites from Debian packages (rust-doc, nodejs-doc, python3.11-doc), read by the HTML "
        "reader with `source.html.mode: full` (the whole page, the behaviour before main-content extraction) and "
        "`main` (the default: trafilatura's main content), then chunked with the default chunking settings "
        "(512 tokens, 64 overlap; the tokenizer of a tiny bge-m3-layout model, so counts are indicative). "
        "The sites' one-page copies of all their pages (print.html, all.html) are left out. "
        "A chunk is *repeated* when its exact text is a chunk of more than one document: menus, sidebars, "
        "footers. The machine was shared and slow, so each site is a sample of at most "
        f"{args.pages} pages (every k-th page in path order). Written by `benchmarks/extraction.py`.",
        "",
        *table,
        "",
        *notes,
        *machine_and_command(f"benchmarks/extraction.py --pages {args.pages}", " shared with other work"),
        END,
    ])
    publish(RESULTS, START, END, section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
