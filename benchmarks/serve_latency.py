"""Latency and throughput of `connector serve`'s POST /v1/similarity under concurrent clients, with
request coalescing on and off, the encoder alone as the ceiling, and the server's memory over a
long steady run.

    .venv/bin/python benchmarks/serve_latency.py --rounds 2          # the whole run (~45 min), writes RESULTS.md
    .venv/bin/python benchmarks/serve_latency.py --seconds 3 --warmup 1 --encoder-seconds 5 \
        --shapes small --memory-minutes 0 --no-write                 # a quick check of the script
    .venv/bin/python benchmarks/serve_latency.py --render a.json b.json   # the section from saved --json figures

What is measured
----------------
* One real `connector serve --model <folder> --host 127.0.0.1 --port P --log-level warning`
  subprocess per cell (shape x clients x run x coalescing; on and off next to each other),
  started, waited for (`/health` 200), and stopped by its own pid with SIGTERM. Models:
  encode_throughput.py's random-weight models of bge-m3's exact shape (`full`: 24 layers, hidden
  1024) and of the `small` shape (6 layers, hidden 384), built once into benchmarks/.cache.
  Coalescing off is `--no-coalesce`: one forward pass per request (both texts of a pair in it).
* Clients: N threads in this process, each with its own keep-alive `http.client` connection,
  send one request after the other for `--seconds` (at most `--max-requests` each), after
  `--warmup` seconds of the same load that are not counted. Each request is two short texts
  (the first 6 words of a sentence of `connector/testing/sentences.txt`) with a counter appended,
  `"... #<client>.<n>"`, so every text is new and the service's embedding cache never answers.
* Per cell: completed requests, throughput (200 answers / seconds from the start of the timed part to
  the last answer), p50/p95/p99 latency of the 200 answers (from sending the request to reading the
  whole answer), errors (503 separately), texts per encoder call and encoder ms per text (the
  service's /metrics), the server's peak RSS (VmHWM of /proc/<pid>/status: includes the model
  load) and the largest VmRSS sampled every 0.5 s while timed, and the CPU the rest of the machine
  used meanwhile (/proc/stat minus the server's and this process's own). A cell where that is above
  DISTURBED_CORES is marked and left out of the coalescing ratio (on / off req/s at the most clients).
* The encoder alone (a subprocess, built by the service's own `open_service_encoder`): ms per text
  for one pair and for batches of 32 and 64 such texts, alternating: the most coalescing can add.
* Memory: one more server (coalescing on, 10 clients, a small `--cache-mb` that is full within the
  warm-up) for `--memory-minutes`, VmRSS sampled every 5 s; growth = last sample - the sample at
  the end of the warm-up (`--memory-warmup`, 60 s).
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, display_python, machine_and_command, publish  # benchmarks/common.py
from encode_throughput import CACHE, RESULTS, SENTENCES, SHAPES, ensure_model

START, END = "<!-- serve-latency:start -->", "<!-- serve-latency:end -->"
SHAPE_NAMES = {"full": "bge-m3's shape (24 layers, hidden 1024)", "small": "small shape (6 layers, hidden 384)"}
SEED_P50_MS, SEED_P95_MS = 221, 268  # the seed's figure: 10 concurrent single pairs, 14-core Xeon
TARGET_RATIO = 3.0
DISTURBED_CORES = 0.25  # other jobs' CPU in a cell above which its figures measure the neighbours
TARGET_GROWTH_MB = 50


# ---------------------------------------------------------------------------------------------- server

class Server:
    """A `connector serve` subprocess on 127.0.0.1; a context manager that stops it with SIGTERM."""

    def __init__(self, model: Path, extra: list[str], log: Path):
        self.port = free_port()
        self.args = ["serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "--log-level", "warning", *extra]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        connector = Path(sys.executable).parent / "connector"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(connector), *self.args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_healthy(timeout=600)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"connector serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = request(self.port, "GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"connector serve was not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def status_mb(self, field_name: str) -> float:
        """VmRSS or VmHWM of the server process, in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field_name} in /proc/{self.proc.pid}/status")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def encoder_totals(self) -> dict[str, float]:
        """Encoder calls, texts encoded and seconds in the encoder so far, from the service's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = request(self.port, "GET", "/metrics")
        wanted = {"connector_encoder_batch_size_count": "calls", "connector_encoder_batch_size_sum": "texts",
                  "bge_m3_vectorize_duration_seconds_sum": "seconds"}
        totals = dict.fromkeys(wanted.values(), 0.0)
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name in wanted:
                    totals[wanted[sample.name]] = sample.value
        return totals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- machine

def process_cpu_seconds(pid: int | str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not iowait) so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_flags() -> str:
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return ", ".join(f for f in wanted if f in flags)
    return "unknown"


# ---------------------------------------------------------------------------------------------- load

WORDS = 6  # words per text, before the counter


def short_sentences() -> list[str]:
    """The test sentences cut to their first WORDS words: query-sized texts."""
    sentences = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if len(s.split()) >= 4]
    return sorted({" ".join(s.split()[:WORDS]) for s in sentences})


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    busy: int = 0  # 503
    errors: list[str] = field(default_factory=list)  # anything else that is not a 200
    tokens: list[int] = field(default_factory=list)  # tokens per text, from the answers
    last_answer: float = 0.0


class Clients:
    """`n` client threads sending /v1/similarity requests, each on its own keep-alive connection."""

    def __init__(self, port: int, n: int, max_requests: int, seed: int):
        self.port, self.n, self.max_requests = port, n, max_requests
        self.sentences = short_sentences()
        self.rng = random.Random(seed)
        self.counter = [0] * n

    def run(self, seconds: float) -> Tally:
        tally, lock = Tally(), threading.Lock()
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=self._client, args=(i, deadline, tally, lock), daemon=True)
                   for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return tally

    def _client(self, i: int, deadline: float, tally: Tally, lock: threading.Lock) -> None:
        rng = random.Random(self.rng.random() + i)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        sent = 0
        while sent < self.max_requests and time.monotonic() < deadline:
            self.counter[i] += 1
            tag = f"#{i}.{self.counter[i]}"  # makes every text new: the cache must not answer
            body = json.dumps({"a": f"{rng.choice(self.sentences)} {tag}", "b": f"{rng.choice(self.sentences)} {tag}"})
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/similarity", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                with lock:
                    tally.errors.append(f"{type(err).__name__}: {err}")
                sent += 1
                continue
            elapsed = time.perf_counter() - started
            sent += 1
            with lock:
                if response.status == 200:
                    answer = json.loads(data)
                    tally.latencies.append(elapsed)
                    tally.tokens += [answer["a"]["tokens"], answer["b"]["tokens"]]
                    tally.last_answer = time.monotonic()
                elif response.status == 503:
                    tally.busy += 1
                else:
                    tally.errors.append(f"HTTP {response.status}: {data[:200]!r}")
        conn.close()


# ---------------------------------------------------------------------------------------------- cells

def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure_cell(model: Path, shape: str, coalesce: bool, clients: int, args) -> dict:
    extra = ([] if coalesce else ["--no-coalesce"]) + args.serve_arg
    log = CACHE / f"serve-{shape}-{'on' if coalesce else 'off'}-{clients}.log"
    with Server(model, extra, log) as server:
        load_before = load_average()
        Clients(server.port, clients, args.max_requests, seed=1).run(args.warmup)
        before = server.encoder_totals()
        machine0, server0, own0 = machine_cpu_seconds(), server.cpu_seconds(), process_cpu_seconds("self")
        rss, stop = [server.status_mb("VmRSS")], threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                rss.append(server.status_mb("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        tally = Clients(server.port, clients, args.max_requests, seed=2).run(args.seconds)
        ended = time.monotonic()
        stop.set()
        sampler.join()
        machine = machine_cpu_seconds() - machine0
        served, own = server.cpu_seconds() - server0, process_cpu_seconds("self") - own0
        totals = {k: v - before[k] for k, v in server.encoder_totals().items()}
        peak = server.status_mb("VmHWM")
    seconds = (tally.last_answer or ended) - started
    ok = len(tally.latencies)
    row = {
        "shape": shape, "coalesce": coalesce, "clients": clients, "requests": ok + tally.busy + len(tally.errors),
        "ok": ok, "busy": tally.busy, "errors": len(tally.errors), "error_examples": sorted(set(tally.errors))[:3],
        "seconds": seconds, "rps": ok / seconds if seconds > 0 else 0.0,
        "p50": percentile(tally.latencies, 50) * 1000 if ok else None,
        "p95": percentile(tally.latencies, 95) * 1000 if ok else None,
        "p99": percentile(tally.latencies, 99) * 1000 if ok else None,
        "mean_batch": totals["texts"] / totals["calls"] if totals["calls"] else None,
        "encoder_ms_per_text": 1000 * totals["seconds"] / totals["texts"] if totals["texts"] else None,
        "encoder_busy": totals["seconds"] / (ended - started),
        "tokens": statistics.mean(tally.tokens) if tally.tokens else None,
        "peak_rss": peak, "max_rss": max(rss), "server_cores": served / (ended - started),
        "client_cores": own / (ended - started), "other_cores": max(0.0, machine - served - own) / (ended - started),
        "load_before": load_before, "load_after": load_average(),
    }
    print(f"{shape:5} coalesce={'on ' if coalesce else 'off'} clients={clients:2}: {ok} ok, {tally.busy} 503, "
          f"{len(tally.errors)} errors, {row['rps']:.1f} req/s, p50 {fmt(row['p50'])} p95 {fmt(row['p95'])} "
          f"p99 {fmt(row['p99'])} ms, batch {fmt(row['mean_batch'], 1)}, encoder {fmt(row['encoder_ms_per_text'])} "
          f"ms/text, busy {row['encoder_busy']:.0%}, server {served / (ended - started):.2f} / clients {own / (ended - started):.2f} cores, peak {peak:.0f} MB, "
          f"others {row['other_cores']:.2f} cores, load {row['load_after']}", flush=True)
    for example in row["error_examples"]:
        print(f"    error: {example}", flush=True)
    return row


def measure_memory(model: Path, shape: str, args) -> dict:
    """Steady load (coalescing on, 10 clients) for --memory-minutes; VmRSS every 5 s."""
    log = CACHE / f"serve-{shape}-memory.log"
    with Server(model, [*args.serve_arg, f"--cache-mb={args.memory_cache_mb:g}"], log) as server:
        load_before = load_average()
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while True:
                samples.append((time.monotonic() - started, server.status_mb("VmRSS")))
                if stop.wait(5):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tally = Clients(server.port, 10, 10**9, seed=3).run(args.memory_minutes * 60)
        stop.set()
        sampler.join()
        peak = server.status_mb("VmHWM")
    after_warmup = [rss for t, rss in samples if t >= args.memory_warmup]
    base = after_warmup[0] if after_warmup else samples[-1][1]
    row = {
        "shape": shape, "minutes": args.memory_minutes, "cache_mb": args.memory_cache_mb, "warmup_s": args.memory_warmup, "ok": len(tally.latencies),
        "busy": tally.busy, "errors": len(tally.errors), "samples": samples, "rss_start": samples[0][1],
        "rss_warm": base, "rss_end": samples[-1][1], "rss_max_after_warmup": max(after_warmup or [base]),
        "growth": samples[-1][1] - base, "peak_rss": peak,
        "p50": percentile(tally.latencies, 50) * 1000 if tally.latencies else None,
        "rps": len(tally.latencies) / (args.memory_minutes * 60), "load_before": load_before, "load_after": load_average(),
    }
    print(f"memory ({shape}, {args.memory_minutes} min): RSS {row['rss_start']:.0f} MB at start, {base:.0f} MB after "
          f"warm-up, {row['rss_end']:.0f} MB at the end (max {row['rss_max_after_warmup']:.0f}): growth "
          f"{row['growth']:+.0f} MB; {row['ok']} requests, {row['busy']} 503, {row['errors']} errors", flush=True)
    return row


def encoder_alone(model: Path, seconds: float) -> dict:
    """The encoder's own cost per text for one pair (what a request costs without coalescing) and
    for a full coalesced batch, in a fresh subprocess set up as the service sets it up: the most
    throughput coalescing can add, without HTTP, threads or JSON."""
    out = subprocess.run([sys.executable, __file__, "--encoder-alone-child", str(model), "--seconds", str(seconds)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"the encoder-alone measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def encoder_alone_child(model: Path, seconds: float) -> None:
    from connector.serve.app import ServeSettings, open_service_encoder

    encoder = open_service_encoder(ServeSettings(model=str(model)))
    encoder.encode(["warm up"])
    sentences, rng, counter = short_sentences(), random.Random(4), 0

    def texts(n: int) -> list[str]:
        nonlocal counter
        counter += 1
        return [f"{rng.choice(sentences)} #{i}.{counter}" for i in range(n)]

    per_text: dict[int, list[float]] = {2: [], ServeSettings.max_batch: [], 2 * ServeSettings.max_batch: []}
    for n in per_text:  # warm-up: kernels for both shapes
        encoder.encode(texts(n), details=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # alternate, so both see the same machine
        for n in per_text:
            batch = texts(n)
            started = time.perf_counter()
            encoder.encode(batch, details=True)
            per_text[n].append((time.perf_counter() - started) / n)
    import torch

    print(json.dumps({"ms_per_text": {n: 1000 * statistics.median(t) for n, t in per_text.items()},
                      "threads": torch.get_num_threads(), "runs": len(per_text[2])}))


# ---------------------------------------------------------------------------------------------- report

def disturbed(row: dict) -> bool:
    return row["other_cores"] > DISTURBED_CORES


def second_half_growth(samples: list[tuple[float, float]]) -> float:
    half = samples[-1][0] / 2
    return samples[-1][1] - next(rss for t, rss in samples if t >= half)


def per_minute(samples: list[tuple[float, float]]) -> list[float]:
    """The first RSS sample of every minute, and the last one."""
    firsts = {}
    for t, rss in samples:
        firsts.setdefault(int(t // 60), rss)
    return [*firsts.values(), samples[-1][1]]


def fmt(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(rows: list[dict], alone: dict, memory: dict | None, args, runs: list[dict]) -> str:
    """The RESULTS.md section; `runs` = the command and load averages of each invocation measured."""
    lines = [START, "## Service latency (`connector serve`, POST /v1/similarity)", "",
             f"A real `connector serve --model <folder> --host 127.0.0.1` process per cell (random weights; "
             f"`--log-level warning`{', ' + ' '.join(args.serve_arg) if args.serve_arg else ''}), driven by N client "
             f"threads with keep-alive connections for {args.seconds:g} s each after {args.warmup:g} s of the same load "
             f"(not counted), at most {args.max_requests} requests per client. Each request is two short texts "
             f"(the first {WORDS} words of a sentence from `connector/testing/sentences.txt`) with a per-request counter appended, "
             "so the embedding cache never answers. Coalescing off = `--no-coalesce`, one forward pass per request "
             "(its two texts together). Written by `benchmarks/serve_latency.py`.", "",
             "| shape | coalescing | clients | run | requests | req/s | p50 ms | p95 ms | p99 ms | errors | 503s "
             "| texts per encoder call | encoder ms per text | peak RSS MB | max RSS under load MB | other jobs, cores |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {'on' if r['coalesce'] else 'off'} | {r['clients']} | {r['round']} | "
                     f"{r['requests']} | {r['rps']:.1f} | {fmt(r['p50'])} | {fmt(r['p95'])} | {fmt(r['p99'])} | "
                     f"{r['errors']} | {r['busy']} | {fmt(r['mean_batch'], 1)} | {fmt(r['encoder_ms_per_text'])} | "
                     f"{r['peak_rss']:.0f} | {r['max_rss']:.0f} | {r['other_cores']:.2f}"
                     f"{' ⚠' if disturbed(r) else ''} |")
    lines.append("")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        cells = [r for r in rows if r["shape"] == shape]
        most = max(r["clients"] for r in cells)
        ratios, left_out = [], []
        for run in sorted({r["round"] for r in cells}):
            pair = {r["coalesce"]: r for r in cells if r["clients"] == most and r["round"] == run}
            if True in pair and False in pair and pair[False]["rps"] > 0:
                if disturbed(pair[True]) or disturbed(pair[False]):
                    left_out.append(f"{pair[True]['rps']:.1f} vs {pair[False]['rps']:.1f} req/s in run {run}")
                else:
                    ratios.append((pair[True]["rps"], pair[False]["rps"]))
        if left_out:
            lines.append(f"- **Left out of the coalescing ratio** ({SHAPE_NAMES[shape]}, other jobs above "
                         f"{DISTURBED_CORES:g} cores in a cell of the pair): " + "; ".join(left_out) + ".")
        if ratios:
            median = statistics.median(on / off for on, off in ratios)
            lines.append(f"- **Coalescing, {SHAPE_NAMES[shape]}, {most} clients**: "
                         + "; ".join(f"{on:.1f} vs {off:.1f} req/s = {on / off:.2f}x" for on, off in ratios)
                         + (f"; median **{median:.2f}x**" if len(ratios) > 1 else "")
                         + f" one pass per request (target ≥ {TARGET_RATIO:g}x: "
                         + f"{'met' if median >= TARGET_RATIO else 'not met'}).")
        if shape in alone:
            e = alone[shape]
            ms = {int(n): v for n, v in e["ms_per_text"].items()}
            pair, best = ms[2], min(ms.values())
            lines.append(f"- **The encoder alone, {SHAPE_NAMES[shape]}** (built as the service builds it, {e['threads']} "
                         f"threads, no HTTP, texts like the clients'; median of {e['runs']} alternating runs), ms per "
                         "text: " + ", ".join(f"{v:.1f} in a batch of {n}" for n, v in sorted(ms.items()))
                         + f": coalescing pairs can add at most **{pair / best:.2f}x** on this machine.")
        if shape == "full":
            seeds = {n: [r for r in cells if r["coalesce"] and r["clients"] == n] for n in (1, 10)}
            lines.append(f"- **Against the seed** (p50 {SEED_P50_MS} ms / p95 {SEED_P95_MS} ms at 10 concurrent single "
                         "pairs on a 14-core Xeon), p50 / p95 here, coalescing on, 2 cores: "
                         + "; ".join(f"{n} client{'s' if n > 1 else ''}: "
                                     + ", ".join(f"{fmt(r['p50'])} / {fmt(r['p95'])} ms" for r in rs)
                                     for n, rs in seeds.items() if rs) + ".")
    tokens = [r["tokens"] for r in rows if r["tokens"]]
    if tokens:
        lines.append(f"- **Texts**: {statistics.mean(tokens):.1f} tokens each on average (`<s>`, `</s>` included; "
                     "the test tokenizer).")
    if memory:
        m = memory
        verdict = "met" if m["growth"] < TARGET_GROWTH_MB else "not met"
        lines.append(f"- **Memory over {m['minutes']:g} minutes** ({SHAPE_NAMES[m['shape']]}, coalescing on, 10 clients, "
                     f"`--cache-mb {m['cache_mb']:g}`, a cache that every new text keeps evicting from once it is full, "
                     "within the warm-up; the default 256 MB would still be filling, by design, for most of the run; "
                     f"{m['ok']} requests, {m['rps']:.1f} req/s, p50 {fmt(m['p50'])} ms, {m['busy']} 503s, "
                     f"{m['errors']} errors; VmRSS every 5 s): {m['rss_start']:.0f} MB at the start, {m['rss_warm']:.0f} MB "
                     f"after the {m['warmup_s']:g} s warm-up, {m['rss_end']:.0f} MB at the end, at most "
                     f"{m['rss_max_after_warmup']:.0f} MB after the warm-up: growth **{m['growth']:+.0f} MB** (target < "
                     f"{TARGET_GROWTH_MB} MB: {verdict}); over the second half of the run: "
                     f"{second_half_growth(m['samples']):+.0f} MB; load average {m['load_before']} before, {m['load_after']} after. "
                     "RSS per minute: "
                     + ", ".join(f"{rss:.0f}" for rss in per_minute(m["samples"])) + " MB.")
    lines += ["- **Columns**: *requests* = answers in the timed part (200s, 503s and errors); *req/s* = 200 answers / "
              "seconds from the start of the timed part to the last answer; latency percentiles over the 200 answers, "
              "from sending a request to reading its whole answer; *texts per encoder call* = the service's "
              "`connector_encoder_batch_size` histogram (sum / count) over the timed part; *encoder ms per text* = "
              "`bge_m3_vectorize_duration_seconds` sum / texts encoded over the timed part; *run* = which of "
              "`--rounds` runs; *peak RSS* = VmHWM of the "
              "server at the end (the model load included); *max RSS under load* = the largest VmRSS sampled every "
              "0.5 s in the timed part; *other jobs* = CPU the rest of the machine used meanwhile (/proc/stat minus "
              "the server and the clients), in cores; ⚠ = above "
              f"{DISTURBED_CORES:g} cores: the 2 cores were shared, and torch's 2 threads wait for each other when "
              "one of them has no core, so such a cell measures the neighbours as much as the service.",
              *[f"- **Load average** (1 / 5 / 15 min) of `{run['command']}`: {run['load_start']} at the start, "
                f"{run['load_end']} at the end." for run in runs],
              *machine_and_command(f" && {display_python()} ".join(run["command"] for run in runs),
                                   machine_note=f" ({cpu_flags()}); clients and server share them"),
              END]
    return "\n".join(lines)


RENDER_SETTINGS = ("seconds", "warmup", "max_requests", "serve_arg")


def publish_figures(files: list[dict], write: bool) -> None:
    """Render the section from the figures of one run or several (a later run's shape replaces an
    earlier run's cells of that shape; its memory run, if any, the earlier one)."""
    cells, alone, memory = [], {}, None
    for figures in files:
        shapes = {c["shape"] for c in figures["cells"]}
        cells = [c for c in cells if c["shape"] not in shapes] + figures["cells"]
        alone.update(figures["encoder_alone"])
        memory = figures["memory"] or memory
    settings = argparse.Namespace(**files[-1]["settings"])
    section = render(cells, alone, memory, settings, files)
    publish(RESULTS, START, END, section, write=write)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="timed seconds per cell")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before each timed part")
    parser.add_argument("--clients", default="1,10,32", help="concurrent clients per cell, comma-separated")
    parser.add_argument("--shapes", default="full,small", help="model shapes: full (bge-m3's), small")
    parser.add_argument("--coalesce", default="on,off", help="coalescing settings to run: on, off")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each cell, on and off in alternation")
    parser.add_argument("--max-requests", type=int, default=5000, help="requests per client per cell, at most")
    parser.add_argument("--memory-minutes", type=float, default=10, help="the memory run's length (0: none)")
    parser.add_argument("--memory-shape", default="full", choices=sorted(SHAPES))
    parser.add_argument("--memory-warmup", type=float, default=60, help="seconds before growth is counted")
    parser.add_argument("--memory-cache-mb", type=float, default=16,
                        help="the memory run's embedding cache: small, so that it is full within the warm-up")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an extra `connector serve` argument for every server, e.g. --serve-arg=--batch-wait-ms=10")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                        help="only write the section, from --json files of earlier runs (a later file's shapes "
                             "replace an earlier one's)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    parser.add_argument("--encoder-seconds", type=float, default=60,
                        help="seconds of the encoder-alone measurement per shape (0: none)")
    parser.add_argument("--encoder-alone-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        publish_figures([json.loads(f.read_text()) for f in args.render], write=not args.no_write)
        return 0
    if args.encoder_alone_child:
        encoder_alone_child(args.encoder_alone_child, args.seconds)
        return 0
    command = "benchmarks/serve_latency.py " + " ".join(sys.argv[1:])
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {sorted(SHAPES)}")
    CACHE.mkdir(exist_ok=True)
    load_start = load_average()
    rows, alone = [], {}
    for shape in shapes:
        model = ensure_model(shape)
        if args.encoder_seconds:
            alone[shape] = encoder_alone(model, args.encoder_seconds)
            print(f"{shape:5} encoder alone: {alone[shape]}", flush=True)
        for clients in [int(c) for c in args.clients.split(",") if c]:
            for run in range(1, args.rounds + 1):
                for coalesce in [c == "on" for c in args.coalesce.split(",") if c]:  # on and off next to each other
                    rows.append({**measure_cell(model, shape, coalesce, clients, args), "round": run})
    memory = measure_memory(ensure_model(args.memory_shape), args.memory_shape, args) if args.memory_minutes else None
    figures = {"cells": rows, "encoder_alone": alone, "memory": memory, "command": command.strip(),
               "load_start": load_start, "load_end": load_average(),
               "settings": {k: getattr(args, k) for k in RENDER_SETTINGS}}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    publish_figures([figures], write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
