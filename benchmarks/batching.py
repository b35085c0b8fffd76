"""How much padding a batch may carry: the torch encoder on bge-m3's shape with length_batches'
`max_padding` at 1.0 (plain length-sorted batches of 16, the old behaviour), 0.10, 0.05 and 0.02.

    .venv/bin/python benchmarks/batching.py [--no-write]

Same texts as encode_throughput.py (its full-shape model and text set), one process, one warm-up
pass, then every setting twice in alternation; the best time of each is kept. Writes its section
of benchmarks/RESULTS.md (between the batching markers) unless --no-write.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from datetime import datetime, timezone

from common import cpu_model, publish  # benchmarks/common.py
from encode_throughput import BATCH_SIZE, MAX_LENGTH, RESULTS, TEXTS, build_texts, ensure_model

START, END = "<!-- batching:start -->", "<!-- batching:end -->"
SETTINGS = (1.0, 0.10, 0.05, 0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    import connector.encoders.bge_m3 as bge_m3

    model = ensure_model("full")
    encoder = bge_m3.BGEM3Encoder(str(model), max_length=MAX_LENGTH, batch_size=BATCH_SIZE)
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [t for group in build_texts(tokenizer, TEXTS["full"]).values() for t in group]
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    tokens = sum(lengths)
    original = bge_m3.length_batches
    encoder.encode(texts)  # warm-up: weights, oneDNN kernels for the common shapes
    seconds: dict[float, list[float]] = {}
    padded: dict[float, int] = {}
    try:
        for _ in range(2):
            for setting in SETTINGS:
                bge_m3.length_batches = functools.partial(original, max_padding=setting)
                batches = bge_m3.length_batches(lengths, BATCH_SIZE)
                padded[setting] = sum(lengths[b[0]] * len(b) for b in batches)
                started = time.perf_counter()
                encoder.encode(texts)
                seconds.setdefault(setting, []).append(time.perf_counter() - started)
                print(f"max_padding {setting}: {len(batches)} batches, {seconds[setting][-1]:.2f} s", flush=True)
    finally:
        bge_m3.length_batches = original
    base = min(seconds[1.0])
    lines = [START, "## Batching: padding allowed per batch (torch, bge-m3's shape)", "",
             f"{len(texts)} texts, {tokens} real tokens (encode_throughput.py's set), `batch_size` {BATCH_SIZE}, "
             f"{torch.get_num_threads()} threads; one process, a warm-up pass, then each setting twice in "
             "alternation, best kept. `max_padding` 1.0 = plain length-sorted batches of 16.", "",
             "| max_padding | padded tokens | seconds (best of 2) | tokens/s | × plain batches |", "|---|---:|---:|---:|---:|"]
    for setting in SETTINGS:
        best = min(seconds[setting])
        lines.append(f"| {setting:.2f} | {padded[setting]} | {best:.2f} | {tokens / best:.0f} | {base / best:.2f} |")
    lines += ["", f"The encoder uses `max_padding` = {bge_m3.MAX_PADDING}.", "",
              f"- **Machine**: {cpu_model()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}, "
              f"torch {torch.__version__}.",
              f"- **Command** (from the repository root, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC): "
              "`.venv/bin/python benchmarks/batching.py`", END]
    section = "\n".join(lines)
    publish(RESULTS, START, END, section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
