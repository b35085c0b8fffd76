"""A store that dies mid-sync: wall time from the kill to the end of the sync, exit codes, and
how often each chunk is encoded across the runs.

    .venv/bin/python benchmarks/store_outage.py [--no-write]

Runs the two scenarios of tests/test_outage.py (one function, `outage_run`) against a real
`milvus-lite server` process killed with SIGKILL once 10% of 3 000 documents are encoded, with
the tiny bge-m3-layout model:
  - never back during the sync (outage budget 20 s; the encoder slowed to 20 ms a text so that
    it is still at work when the budget runs out), then a second sync once the server is back;
  - back 20 s after the kill (outage budget 120 s), then a second sync.
Writes its section of benchmarks/RESULTS.md (between the store-outage markers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from common import machine_and_command, publish  # benchmarks/common.py (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- store-outage:start -->", "<!-- store-outage:end -->"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test_outage.outage_run and milvus_server.MilvusServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from connector.testing import make_model
    from test_outage import DOCS, outage_run

    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="store-outage-") as tmp:
        model = make_model(Path(tmp) / "model")
        for name, kwargs in (("killed, never back during the sync (budget 20 s)",
                              {"budget": 20, "restart_after": None, "seconds_per_text": 0.02}),
                             ("killed, back after 20 s (budget 120 s)", {"budget": 120, "restart_after": 20})):
            work = Path(tmp) / str(len(rows))
            work.mkdir()
            run = outage_run(work, model, **kwargs)
            first, second = run["first"], run["second"]
            texts = run["first_texts"] + run["second_texts"]
            outage = first.outages[0] if first.outages else {}
            rows.append(
                f"| {name} | {first.exit_code} | {run['kill_to_exit']:.1f} | {outage.get('probes', 0)} | "
                f"{first.not_written} | {sum(run['first_texts'].values())} | {second.exit_code} | "
                f"{sum(run['second_texts'].values())} | {max(texts.values())} | {'yes' if run['verified'] else 'NO'} |")
            print(rows[-1], flush=True)
    section = "\n".join([
        START,
        "## A store that dies mid-sync",
        "",
        f"{DOCS} documents synced into a real `milvus-lite server` process, killed with SIGKILL once 10% of them "
        "were encoded (tiny bge-m3-layout model; `retry: {attempts: 3, initial_wait: 0.2, max_wait: 2}`, so probes "
        "are at most 2 s apart). Written by `benchmarks/store_outage.py` (the scenarios of `tests/test_outage.py`).",
        "",
        "| scenario | exit | kill -> end of sync, s | probes | documents not written | texts encoded | "
        "second sync exit | texts encoded by it | most encodings of one text | verify |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Before the circuit breaker every batch after the kill went through the whole retry schedule and became a "
        "dead letter: about 9 s a batch of 64 points with the default `retry:` (measured in issue 10), so about "
        "6.5 minutes for the ~43 batches after the kill here, and ~2 700 chunks to replay with `connector retry`.",
        "",
        *machine_and_command("benchmarks/store_outage.py", f", load average {load_before:.1f} before the run, "
                             f"{os.getloadavg()[0]:.1f} after (other work slows the encoder, not the outage handling)"),
        END,
    ])
    publish(RESULTS, START, END, section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
