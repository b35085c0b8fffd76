"""Encoder throughput on this machine's CPU: bge-m3's exact shape, random weights, per backend.

Run from the repository root:

    .venv/bin/python benchmarks/encode_throughput.py                      # full shape, all backends
    .venv/bin/python benchmarks/encode_throughput.py --shape small --no-write   # quick check
    .venv/bin/python benchmarks/encode_throughput.py --backends torch

The ``sentence-transformers`` row needs a benchmark-only peer, not in pyproject.toml (like chunk_fill.py's
LangChain and LlamaIndex): ``.venv/bin/pip install sentence-transformers torch==2.13.0`` (the torch pin keeps
pip from replacing the CPU build; sentence-transformers 6.2 runs on transformers 5). Without it that row
is skipped, with this command as the reason.

It writes its figures between the markers ``<!-- encode-throughput:start -->`` and
``<!-- encode-throughput:end -->`` in benchmarks/RESULTS.md (everything outside the markers is
kept) unless ``--no-write``, and prints the same table to stdout. Nothing is downloaded.

What is measured
----------------
* Model: ``connector.testing.make_model`` with BAAI/bge-m3's shape (``--shape full``: 24 layers,
  hidden 1024, 16 heads, FFN 4096, vocab 250002; ``--shape mid``: 6 layers, hidden 768, 12 heads,
  FFN 3072; ``--shape small``: 6 layers, hidden 384, 6 heads, FFN 1536; both vocab 250002) and random weights, built once into ``benchmarks/.cache/model-<shape>/``
  (gitignored). The cost of a forward pass depends on the shape only, not on the weights; the
  tokenizer is the test tokenizer (trained on ``connector/testing/sentences.txt``), so token counts
  per character differ from the real bge-m3's: all rates are per token.
* Texts: built deterministically (seeded) from ``connector/testing/sentences.txt`` (multilingual):
  short queries of 5-15 tokens, passages of ~250-350 characters (random sentences concatenated), long
  chunks of 384-512 tokens (``max_length`` = 512 truncates). Counts per class: see ``TEXTS``.
* Backends, each in a fresh subprocess (so peak RSS does not mix): ``reference`` (FlagEmbedding's
  BGEM3FlagModel, fp32, in its own venv built once from PyPI into benchmarks/.cache/reference-venv:
  FlagEmbedding does not import with transformers 5), ``torch`` (BGEM3Encoder, fp32),
  ``onnx`` and ``onnx-int8`` (``connector/encoders/onnx.py``'s OnnxEncoder, quantize none / int8) -
  these three built through ``connector.app.make_encoder(config)`` - and the two baselines a user
  would pick instead: ``transformers`` (PlainTransformersEncoder: AutoModel, length-sorted batches,
  CLS + bge-m3's sparse head from the hidden states, fp32, torch's default BLAS) and
  ``sentence-transformers`` (``SentenceTransformer.encode``, dense only). An ONNX row is skipped, with the
  reason in the output, when that module is missing, does not import, or the config/factory does not
  give an OnnxEncoder. For ONNX a first subprocess builds the encoder and encodes once (so the
  export cache is warm); the measured subprocess then loads from the cache.
* tokens/s: real tokens (after truncation, ``<s>``/``</s>`` included, padding excluded) of all texts
  / wall time of one ``encoder.encode(all texts)`` call (``batch_size`` 16, the encoder sorts by
  length, as in a sync), after one warm-up call. Two ways:
  - amortised (the first table, the figure to lead with): FlagEmbedding's ``encode`` runs its first
    (longest) batch through the model one extra time per call, to probe the batch size it can
    afford. That probe is timed on its own and subtracted: a forward hook on the reference's model
    times every forward pass of the call, and the first one is the probe (ReferenceEncoder checks
    that a call makes exactly one pass more than it has batches). This is what the reference costs
    when a corpus goes through few large calls. (A text set large enough to push the probe under 2%
    would take some 30x these texts: about half an hour for the reference alone at bge-m3's shape.)
    The other backends have no probe: their two figures are the same.
  - per call (the second table): the wall time as it is, probe included, what a caller that
    encodes per request pays; with the per-text latency below, and the probe's share of each.
* ms per text p50 / p95: per-text latency = wall time of ``encoder.encode([text])`` for one text
  alone (batch of one, no padding), for every 3rd text of each class; percentiles over those texts
  (the mix is dominated by passages and queries; per-class p50 are printed below the table).
* Vectors: every row's vectors of every text are compared with the reference's (torch fp32's when
  the reference is not run; with neither, nothing is checked and the section says so): dense cosine
  and max |diff|, sparse ids and weights (max |diff|, an id on one side only counting as weight 0),
  top-10 sparse overlap. fp32 rows must agree to float rounding
  (FP32_TOLERANCE), int8 loosely (INT8_TOLERANCE, dense only); otherwise the script prints the section,
  exits 2 and writes nothing.
* peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the backend's subprocess at its end
  (load + warm-up + both passes). The parent never imports torch, so nothing inherited inflates it.
* GFLOP/s = useful FLOPs / time, FLOPs per text of n tokens = n * (2 * P_layers + 4 * L * n * h),
  P_layers = L * (4 h^2 + 2 h f) (the weights of the Q, K, V, output and two FFN matrices, 2 FLOPs per
  multiply-add), 4 * L * n * h = QK^T and attention x V (2 n h FLOPs each per token per layer).
  Embeddings, LayerNorm, softmax, GELU, biases and the heads are left out (< 1%), padding is not
  counted. bge-m3 (L=24, h=1024, f=4096): 0.604 GFLOP/token + 98 kFLOP/token per token of length,
  i.e. ~0.63 GFLOP/token at n = 300.
* Other jobs: the CPU time the rest of the machine used during the tokens/s pass and the peak
  measurement (/proc/stat minus our own) is reported; above 0.25 cores the section says the figures
  are low. Run on an idle machine.
* % of fp32 peak (for int8, fp32-equivalent FLOPs: int8 MatMuls can exceed 100%): GFLOP/s / the
  fastest 4096x4096 @ 4096x4096 fp32 product (2 * 4096^3 FLOPs) of torch.matmul (MKL), numpy
  (OpenBLAS), torch's oneDNN linear with a packed weight and ONNX Runtime's MatMul (MLAS), best of
  8 runs each, measured in this run with the same thread count. (On AMD CPUs MKL runs AVX2 code:
  torch.matmul alone would understate the machine by half.)

What a CPU without AVX-512 gets
-------------------------------
The torch rows can be held to AVX2 on an AVX-512 machine; every backend's subprocess inherits the
environment::

    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
        .venv/bin/python benchmarks/encode_throughput.py --shape small --no-write

(oneDNN: torch's packed linears; MKL: torch.matmul, the transformers rows; OpenBLAS: numpy's peak
candidate). ONNX Runtime has no such switch: MLAS picks its kernels from CPUID and XCR0 when the
library loads (``onnxruntime/core/mlas/lib/platform.cpp``, ``MLAS_PLATFORM::MLAS_PLATFORM``; no
environment variable or session option selects an instruction set; the session config keys of
onnxruntime 1.32 under ``mlas.`` are Arm/KleidiAI and conv tuning only), so the ``onnx`` and
``onnx-int8`` rows of such a run still use AVX-512 (and AMX where the CPU has it), and the "% of
fp32 peak" column is against a peak that ONNX Runtime's AVX-512 MatMul may set. Measure ONNX on an
AVX2 machine itself.

Running the whole comparison on an idle machine
-----------------------------------------------
The figures are only worth publishing from one run on a machine nothing else uses: on 2 cores shared
with other jobs they drop unevenly per row, so even the ratios are wrong. From the repository root::

    uptime                                        # 1-min load average below 0.3; stop whatever is running
    .venv/bin/pip install sentence-transformers torch==2.13.0
    .venv/bin/python benchmarks/encode_throughput.py              # full shape, all six rows, writes RESULTS.md
    uptime

How long (an estimate): the four first rows took 224 s on 2 cores (AMD EPYC, 2026-11-25), the reference
about half of it; the two baselines add about a torch row each, so about 6 minutes. The first run also
builds the full-shape model into benchmarks/.cache, the reference venv (from the pip cache) and the ONNX
exports: a few minutes more, before anything is timed.

What to check before publishing: ``uptime`` before the run below 0.3; in the section, "CPU during the
tokens/s pass" shows at most ~0.05 cores for everything else on every row (above 0.25 the section says
the figures are low: run again), the fp32 peak line's "cores busy with other jobs" likewise, and the
load average at the end is about the thread count (the benchmark's own load), not above it; the run
exits 0 (the vectors agree). Then commit benchmarks/RESULTS.md and take the README's speed figures
from that one section: amortised tokens/s first, per-call latency apart.
"""

from __future__ import annotations

from common import cpu_model, display_python, write_section  # benchmarks/common.py (this folder is on sys.path when run as a script)
import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

RESULTS = HERE / "RESULTS.md"
CACHE = HERE / ".cache"
START, END = "<!-- encode-throughput:start -->", "<!-- encode-throughput:end -->"


def markers(shape: str) -> tuple[str, str]:
    """The RESULTS.md markers of one shape's section (bge-m3's own shape keeps the original ones)."""
    if shape == "full":
        return START, END
    return f"<!-- encode-throughput-{shape}:start -->", f"<!-- encode-throughput-{shape}:end -->"
SENTENCES = ROOT / "connector" / "testing" / "sentences.txt"

SHAPES = {
    "full": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096, vocab_size=250002),
    "mid": dict(num_layers=6, hidden_size=768, num_heads=12, intermediate_size=3072, vocab_size=250002),
    "small": dict(num_layers=6, hidden_size=384, num_heads=6, intermediate_size=1536, vocab_size=250002),
}
#: Texts per class (queries, passages, long chunks) per shape.
TEXTS = {"full": (40, 30, 10), "mid": (40, 30, 10), "small": (24, 18, 6)}
MAX_LENGTH = 512
BATCH_SIZE = 16
SEED = 20261125
PEAK_REPEATS = 8
LATENCY_EVERY = 3  # every 3rd text of each class gets a batch-of-one latency measurement
#: name -> quantize (None: fp32). "transformers" and "sentence-transformers" are the baselines a user
#: would pick instead of the connector (see PlainTransformersEncoder, SentenceTransformersEncoder).
BACKENDS = {"torch": None, "onnx": "none", "onnx-int8": "int8", "reference": None, "transformers": None,
            "sentence-transformers": None}
#: What the section names the rows that are not the connector's encoders.
BASELINE_NAMES = {"reference": "FlagEmbedding.BGEM3FlagModel",
                  "transformers": "transformers.AutoModel + bge-m3's heads (PlainTransformersEncoder in this script)",
                  "sentence-transformers": "sentence_transformers.SentenceTransformer.encode"}
#: The benchmark-only peer behind the "sentence-transformers" row (not in pyproject.toml, like chunk_fill.py's).
SENTENCE_TRANSFORMERS_INSTALL = ".venv/bin/pip install sentence-transformers torch==2.13.0"
#: The reference implementation, FlagEmbedding's BGEM3FlagModel, runs in its own venv: it does not
#: import with transformers 5 (which the connector uses). Built once into benchmarks/.cache.
REFERENCE_VENV = CACHE / "reference-venv"
REFERENCE_PACKAGES = ["torch==2.13.0", "FlagEmbedding==1.4.2", "transformers==4.57.6"]
SAMPLE_TEXTS = 1000  # texts (all of them) whose vectors each backend returns, to compare backends


def fail(message: str) -> NoReturn:
    print(f"encode_throughput: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------- model

def ensure_model(shape: str, layers: int | None = None) -> Path:
    """The cached random-weight model of this shape (with `layers` layers instead of the shape's,
    when given); built (in a subprocess) if missing or stale."""
    folder = CACHE / (f"model-{shape}" + (f"-{layers}-layers" if layers else ""))
    stamp = folder / "BENCH_SHAPE.json"
    want = {**SHAPES[shape], **({"num_layers": layers} if layers else {})}
    try:
        if json.loads(stamp.read_text()) == want:
            return folder
    except (OSError, ValueError):
        pass
    print(f"building the {shape} model in {folder.relative_to(ROOT)} (once) ...", flush=True)
    t0 = time.perf_counter()
    code = ("import sys, json; from pathlib import Path; from connector.testing import make_model; "
            "make_model(Path(sys.argv[1]), **json.loads(sys.argv[2]))")
    if stamp.exists():
        stamp.unlink()
    subprocess.run([sys.executable, "-c", code, str(folder), json.dumps(want)], check=True, cwd=ROOT)
    stamp.write_text(json.dumps(want, sort_keys=True))
    print(f"built in {time.perf_counter() - t0:.0f}s", flush=True)
    return folder


# ---------------------------------------------------------------------------------------------- texts

def build_texts(tokenizer, counts: tuple[int, int, int]) -> dict[str, list[str]]:
    """Deterministic multilingual texts: queries (5-15 tokens), passages (~250-350 chars), long
    chunks (384-512 tokens), from sentences.txt with a seeded RNG."""
    sentences = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    rng = random.Random(SEED)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    queries = []
    while len(queries) < counts[0]:
        target = rng.randint(5, 15)
        words = rng.choice(sentences).split()
        text = ""
        for i in range(1, len(words) + 1):
            candidate = " ".join(words[:i])
            if n_tokens(candidate) > 15:
                break
            text = candidate
            if n_tokens(text) >= target:
                break
        if 5 <= n_tokens(text) <= 15:
            queries.append(text)

    passages = []
    for _ in range(counts[1]):
        target = rng.randint(250, 350)
        text = rng.choice(sentences)
        while len(text) < target:
            text += " " + rng.choice(sentences)
        passages.append(text)

    long = []
    for _ in range(counts[2]):
        target = rng.randint(384, MAX_LENGTH)
        text = rng.choice(sentences)
        while n_tokens(text) < target:
            text += " " + rng.choice(sentences)
        long.append(text)
    return {"query": queries, "passage": passages, "long": long}


# --------------------------------------------------------------------------------------------- worker

def worker_peak(threads: int) -> dict:
    """The machine's fp32 matrix-multiply rate: a 4096x4096 @ 4096x4096 product through every
    library at hand (torch's BLAS = MKL, numpy's = OpenBLAS, ONNX Runtime's MLAS, torch's oneDNN
    with a packed weight), best of PEAK_REPEATS each; the peak is the fastest of them."""
    import torch

    torch.set_num_threads(threads)
    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    candidates = {"torch.matmul (MKL)": lambda: torch.matmul(a, b), "numpy (OpenBLAS)": lambda: an @ bn}
    try:
        candidates["torch oneDNN linear (packed)"] = _onednn_matmul(a, b)
    except Exception as err:  # noqa: BLE001 - a library that cannot run is left out, and said so
        print(f"  oneDNN: {type(err).__name__}: {err}", flush=True)
    try:
        candidates["ONNX Runtime MatMul (MLAS)"] = _ort_matmul(an, bn, threads)
    except Exception as err:  # noqa: BLE001
        print(f"  ONNX Runtime: {type(err).__name__}: {err}", flush=True)
    flops = 2 * n ** 3
    rates, medians = {}, {}
    busy0, own0, start = system_busy_s(), own_cpu_s(), time.perf_counter()
    for name, fn in candidates.items():
        fn()  # warm-up
        times = []
        for _ in range(PEAK_REPEATS):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rates[name] = flops / min(times) / 1e9
        medians[name] = flops / statistics.median(times) / 1e9
    wall = time.perf_counter() - start
    others = max(0.0, (system_busy_s() - busy0) - (own_cpu_s() - own0)) / wall
    best = max(rates, key=rates.get)
    return {"others_cores": others, "peak_gflops": rates[best], "median_gflops": medians[best], "peak_by": best,
            "rates": rates, "torch_threads": torch.get_num_threads()}


def _onednn_matmul(a, b):
    import torch

    packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
    return lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")


def _ort_matmul(an, bn, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = an.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("A", "B")],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": an, "B": bn})


class ReferenceEncoder:
    """FlagEmbedding's BGEM3FlagModel (fp32 on the CPU, dense + sparse, ColBERT vectors off), with
    the same max_length and batch_size as ours. Runs in the reference venv.

    Each `encode` call of BGEM3FlagModel first runs its first (longest) batch through the model one
    extra time, to probe the batch size it can afford (M3Embedder.encode_single_device, "adjust
    batch size"), then encodes every batch. A forward hook times each forward pass of the model:
    after `encode`, `probe_s` is the probe's (the call's first forward pass) seconds."""

    def __init__(self, model: Path, threads: int):
        import torch
        from FlagEmbedding import BGEM3FlagModel

        torch.set_num_threads(threads)
        self.model = BGEM3FlagModel(str(model), use_fp16=False, devices="cpu")
        self._forward_s: list[float] = []
        self._forward_start = 0.0
        module = self.model.model  # the torch module every forward pass goes through

        def started(*_):
            self._forward_start = time.perf_counter()

        def ended(*_):
            self._forward_s.append(time.perf_counter() - self._forward_start)

        module.register_forward_pre_hook(started)
        module.register_forward_hook(ended)
        self.probe_s = 0.0

    def encode(self, texts):
        self._forward_s.clear()
        out = self.model.encode(list(texts), batch_size=BATCH_SIZE, max_length=MAX_LENGTH, return_dense=True,
                                return_sparse=True, return_colbert_vecs=False)
        batches = -(-len(texts) // BATCH_SIZE)
        if len(self._forward_s) != batches + 1:
            raise RuntimeError(f"expected {batches} batches and one probe, saw {len(self._forward_s)} forward "
                               "passes: this FlagEmbedding version encodes differently, the probe cannot be timed")
        self.probe_s = self._forward_s[0]
        return [(dense, {int(k): float(v) for k, v in weights.items()})
                for dense, weights in zip(out["dense_vecs"], out["lexical_weights"])]


class PlainTransformersEncoder:
    """What a user writes with transformers alone: AutoTokenizer + AutoModel (its default attention),
    fp32, torch's default BLAS (no weight packing), the texts sorted by token count and cut into
    batches of BATCH_SIZE padded to their longest; dense = the L2-normalised hidden state of <s> (CLS),
    sparse = bge-m3's head computed from the same hidden states: relu(sparse_linear(h)) per token,
    special tokens and weights <= 0 dropped, the max kept for a repeated token id."""

    def __init__(self, model: Path, threads: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model, dtype=torch.float32).eval()
        head = torch.load(model / "sparse_linear.pt", weights_only=True)
        self.sparse_weight, self.sparse_bias = head["weight"].float(), head["bias"].float()
        tok = self.tokenizer
        self.special = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id} - {None}

    def encode(self, texts):
        torch = self.torch
        ids = self.tokenizer(list(texts), truncation=True, max_length=MAX_LENGTH)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        out: list = [None] * len(ids)
        with torch.inference_mode():
            for start in range(0, len(order), BATCH_SIZE):
                batch = order[start:start + BATCH_SIZE]
                padded = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
                hidden = self.model(**padded).last_hidden_state
                dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1).numpy()
                weights = torch.relu(hidden @ self.sparse_weight.T + self.sparse_bias)[..., 0].tolist()
                for row, i in enumerate(batch):
                    sparse: dict[int, float] = {}
                    for token_id, w in zip(ids[i], weights[row]):  # zip stops at the text's own length
                        if token_id not in self.special and w > sparse.get(token_id, 0.0):
                            sparse[token_id] = w
                    out[i] = (dense[row], sparse)
        return out


class SentenceTransformersEncoder:
    """sentence-transformers' `SentenceTransformer(model folder).encode` (the folder's modules.json:
    Transformer, CLS pooling, Normalize, as bge-m3 ships them), fp32, BATCH_SIZE, max_seq_length
    MAX_LENGTH: dense vectors only (it has no sparse head)."""

    def __init__(self, model: Path, threads: int):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(model), device="cpu")
        self.model.max_seq_length = MAX_LENGTH

    def encode(self, texts):
        dense = self.model.encode(list(texts), batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)
        return [(vector, None) for vector in dense]


def sample_vectors(out) -> list:
    """[dense as a list, {token id: weight} or None (a dense-only backend)] of the first SAMPLE_TEXTS
    results: ours (Vectors) or a baseline's ((dense, sparse) tuples)."""
    rows = []
    for item in out[:SAMPLE_TEXTS]:
        if isinstance(item, tuple):
            dense, sparse = item
        else:
            dense, sparse = item.dense, dict(zip(item.sparse.indices.tolist(), item.sparse.values.tolist()))
        weights = None if sparse is None else {str(k): float(v) for k, v in sparse.items()}
        rows.append([[float(x) for x in dense], weights])
    return rows


def reference_python() -> Path:
    """The reference venv's python; the venv is created on first use (PyPI only, no model hub)."""
    python = REFERENCE_VENV / "bin" / "python"
    stamp = REFERENCE_VENV / "PACKAGES.json"
    try:
        if json.loads(stamp.read_text()) == REFERENCE_PACKAGES:
            return python
    except (OSError, ValueError):
        pass
    print(f"creating the reference venv in {REFERENCE_VENV.relative_to(ROOT)} (once): {' '.join(REFERENCE_PACKAGES)}",
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(REFERENCE_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, REFERENCE_PACKAGES[0]], check=True)  # torch first: the CPU build (see README)
    subprocess.run([*pip, *REFERENCE_PACKAGES], check=True)
    stamp.write_text(json.dumps(REFERENCE_PACKAGES))
    return python


def make_backend_encoder(backend: str, model: Path, shape: str, threads: int):
    """(encoder, None) or (None, reason it cannot be built)."""
    if backend == "reference":
        try:
            return ReferenceEncoder(model, threads), None
        except Exception as err:  # noqa: BLE001 - reported as the reason for skipping
            return None, f"FlagEmbedding's BGEM3FlagModel could not be built: {type(err).__name__}: {err}"
    if backend == "transformers":
        return PlainTransformersEncoder(model, threads), None
    if backend == "sentence-transformers":
        try:
            import sentence_transformers  # noqa: F401 - a benchmark-only peer, maybe not installed
        except ImportError as err:
            return None, f"sentence-transformers is not installed ({err}): `{SENTENCE_TRANSFORMERS_INSTALL}`"
        return SentenceTransformersEncoder(model, threads), None
    from connector.config import EncoderConfig, parse_config

    quantize = BACKENDS[backend]
    encoder = {"model": str(model), "max_length": MAX_LENGTH, "batch_size": BATCH_SIZE, "threads": threads}
    onnx_cls = None
    if quantize is not None:
        import importlib

        if not (ROOT / "connector" / "encoders" / "onnx.py").is_file():
            return None, "connector/encoders/onnx.py does not exist (yet): no ONNX backend to measure"
        try:
            onnx_module = importlib.import_module("connector.encoders.onnx")
        except Exception as err:  # noqa: BLE001 - any import failure is a reason to skip
            return None, f"connector.encoders.onnx does not import: {type(err).__name__}: {err}"
        onnx_cls = getattr(onnx_module, "OnnxEncoder", None)
        if onnx_cls is None:
            return None, "connector.encoders.onnx has no OnnxEncoder"
        encoder.update(backend="onnx", quantize=quantize)
        # Keep the export cache under benchmarks/.cache if the config has a field for it.
        for field in ("cache_dir", "export_dir", "onnx_dir", "onnx_cache"):
            if field in EncoderConfig.model_fields:
                encoder[field] = str(CACHE / f"onnx-{shape}")
    state = CACHE / f"state-{shape}"
    data = {"source": {"type": "files", "path": str(ROOT)}, "encoder": encoder,
            "chunking": {"max_tokens": MAX_LENGTH - 2, "overlap_tokens": 0},
            "sink": {"type": "qdrant", "path": str(state / "qdrant")}, "state_dir": str(state)}
    try:
        config = parse_config(data, ROOT, origin="benchmark config")
    except Exception as err:  # noqa: BLE001
        detail = " ".join(str(err).split("\n")[1:]).strip(" -") or str(err)
        return None, f"the config does not accept encoder {encoder}: {detail}"
    from connector.app import make_encoder

    try:
        enc = make_encoder(config)
    except Exception as err:  # noqa: BLE001
        return None, f"make_encoder failed: {type(err).__name__}: {err}".replace("\n", " ")
    if onnx_cls is not None and not isinstance(enc, onnx_cls):
        return None, f"make_encoder returned {type(enc).__name__}, not OnnxEncoder (backend: onnx not wired yet?)"
    return enc, None


def worker_encode(backend: str, model: Path, shape: str, threads: int, prepare_only: bool) -> dict:
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    enc, reason = make_backend_encoder(backend, model, shape, threads)
    if enc is None:
        return {"backend": backend, "skipped": reason}
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = build_texts(tokenizer, TEXTS[shape])
    every = [t for cls in texts.values() for t in cls]
    lengths = {cls: [len(ids) for ids in tokenizer(ts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
               for cls, ts in texts.items()}
    # Warm-up: loads the weights (or the ONNX export), runs both a long and a short shape once.
    enc.encode([texts["long"][0], texts["passage"][0], texts["query"][0]])
    load_s = time.perf_counter() - t0
    if prepare_only:
        return {"backend": backend, "load_s": load_s}

    busy0, own0, t0 = system_busy_s(), own_cpu_s(), time.perf_counter()
    out = enc.encode(every)
    throughput_s = time.perf_counter() - t0
    probe_s = getattr(enc, "probe_s", 0.0)  # the reference's batch-size probe inside that call
    # CPU used by everything else on the machine during the pass, in cores (0 = we had it alone).
    others = max(0.0, (system_busy_s() - busy0) - (own_cpu_s() - own0)) / throughput_s
    own_cores = (own_cpu_s() - own0) / throughput_s
    assert len(out) == len(every)

    latencies: dict[str, list[float]] = {}
    latency_probe_s = 0.0
    for cls, ts in texts.items():
        for text in ts[::LATENCY_EVERY]:
            t0 = time.perf_counter()
            enc.encode([text])
            latencies.setdefault(cls, []).append((time.perf_counter() - t0) * 1e3)
            latency_probe_s += getattr(enc, "probe_s", 0.0)

    cfg = json.loads((model / "config.json").read_text())
    L, h, f = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    p_layers = L * (4 * h * h + 2 * h * f)
    all_lengths = [n for cls in texts for n in lengths[cls]]
    useful_flops = sum(n * (2 * p_layers + 4 * L * n * h) for n in all_lengths)
    versions = {}
    for pkg in ("torch", "onnxruntime", "transformers", "FlagEmbedding", "sentence-transformers"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    import torch

    return {
        "backend": backend,
        "encoder": BASELINE_NAMES.get(backend, f"{type(enc).__module__}.{type(enc).__name__}"),
        "sample": sample_vectors(out),
        "texts_sha256": hashlib.sha256("\x00".join(every).encode()).hexdigest()[:16],
        "counts": {cls: len(ts) for cls, ts in texts.items()},
        "tokens": {cls: sum(v) for cls, v in lengths.items()},
        "token_range": {cls: (min(v), max(v)) for cls, v in lengths.items()},
        "chars_mean": {cls: statistics.mean(len(t) for t in ts) for cls, ts in texts.items()},
        "total_tokens": sum(all_lengths),
        "useful_gflop": useful_flops / 1e9,
        "gflop_per_token_300": (2 * p_layers + 4 * L * 300 * h) / 1e9,
        "load_s": load_s,
        "throughput_s": throughput_s,
        "probe_s": probe_s,
        "latency_probe_share": latency_probe_s * 1e3 / sum(x for v in latencies.values() for x in v),
        "others_cores": others,
        "own_cores": own_cores,
        "latency_ms": latencies,
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def system_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat), 0 where unavailable."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def run_worker(args: list[str], python: str | Path = sys.executable) -> dict:
    """Run this script as a worker in a fresh process; return its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    try:
        proc = subprocess.run([str(python), __file__, "--worker", *args, "--out", str(out)], cwd=ROOT)
        if proc.returncode != 0:
            return {"error": f"worker {args[0]} exited with {proc.returncode} (see its output above)"}
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- machine

def physical_cores() -> int:
    cores = set()
    for cpu in sorted(os.sched_getaffinity(0)):
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return len(os.sched_getaffinity(0))
    return max(1, len(cores))


def machine(threads: int) -> dict:
    cpu = cpu_model()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = ", ".join(x for x in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f" {x}" in flags)
    vers = {}
    for pkg in ("torch", "onnxruntime", "transformers"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = "not installed"
    return {"cpu": cpu, "isa": isa, "usable": len(os.sched_getaffinity(0)), "online": os.cpu_count(),
            "physical": physical_cores(), "threads": threads, "python": platform.python_version(), **vers,
            "load": os.getloadavg()}


# ---------------------------------------------------------------------------------------------- report

def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default), without numpy in the parent."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def report_row(r: dict) -> None:
    if "throughput_s" in r:
        print(f"  {r['total_tokens']} tokens in {r['throughput_s']:.1f}s = "
              f"{r['total_tokens'] / r['throughput_s']:.0f} tokens/s; load {r['load_s']:.1f}s; "
              f"rss {r['max_rss_mb']:.0f} MB; cores busy: own {r['own_cores']:.2f}, "
              f"others {r['others_cores']:.2f}", flush=True)
    else:
        print(f"  skipped: {r.get('skipped') or r.get('error')}", flush=True)


def compare(a: list, b: list) -> dict:
    """Agreement of two backends' vectors of the same texts: dense cosine (mean, min), dense max
    |diff|; where both have sparse vectors: texts with identical sparse ids, the largest sparse
    weight difference (an id on one side only counts as weight 0 on the other) and the mean overlap
    of the 10 heaviest sparse ids. Sparse figures are None when either side is dense only."""
    cosines, diffs, same_ids, sparse_diffs, overlaps = [], [], 0, [], []
    for (da, sa), (db, sb) in zip(a, b):
        dot = sum(x * y for x, y in zip(da, db))
        na, nb = sum(x * x for x in da) ** 0.5, sum(y * y for y in db) ** 0.5
        cosines.append(dot / (na * nb))
        diffs.append(max(abs(x - y) for x, y in zip(da, db)))
        if sa is None or sb is None:
            continue
        same_ids += set(sa) == set(sb)
        sparse_diffs.append(max((abs(sa.get(k, 0.0) - sb.get(k, 0.0)) for k in set(sa) | set(sb)), default=0.0))
        if sa and sb:
            top_a = set(sorted(sa, key=sa.get, reverse=True)[:10])
            top_b = set(sorted(sb, key=sb.get, reverse=True)[:10])
            overlaps.append(len(top_a & top_b) / min(10, len(sa), len(sb)))
    sparse = bool(sparse_diffs)
    return {"texts": len(cosines), "cos_mean": sum(cosines) / len(cosines), "cos_min": min(cosines),
            "dense_max_diff": max(diffs), "same_ids": same_ids if sparse else None,
            "sparse_max_diff": max(sparse_diffs) if sparse else None,
            "top10": (sum(overlaps) / len(overlaps) if overlaps else float("nan")) if sparse else None}


#: How closely a backend's vectors must match the reference's (or torch fp32's when the reference
#: did not run): fp32 backends compute the same function, so only float rounding may differ; int8
#: changes the numbers by design (tests/test_onnx.py holds it to its quality bar on a trained-like
#: model), so only its dense vectors are held here, loosely.
FP32_TOLERANCE = {"cos_min": 0.99999, "dense_max_diff": 1e-4, "sparse_max_diff": 1e-4}
INT8_TOLERANCE = {"cos_min": 0.99}


def disagreement(backend: str, c: dict) -> list[str]:
    """What of `compare`'s result `c` is outside the backend's tolerance; empty when it agrees."""
    tolerance = INT8_TOLERANCE if BACKENDS.get(backend) == "int8" else FP32_TOLERANCE
    problems = []
    if c["cos_min"] < tolerance["cos_min"]:
        problems.append(f"dense cosine min {c['cos_min']:.6f} < {tolerance['cos_min']}")
    if "dense_max_diff" in tolerance and c["dense_max_diff"] > tolerance["dense_max_diff"]:
        problems.append(f"dense max |diff| {c['dense_max_diff']:.1e} > {tolerance['dense_max_diff']:.0e}")
    limit = tolerance.get("sparse_max_diff")
    if limit is not None and c["sparse_max_diff"] is not None and c["sparse_max_diff"] > limit:
        problems.append(f"sparse weight max |diff| {c['sparse_max_diff']:.1e} > {limit:.0e}")
    return problems


def comparison_base(rows: list[dict]) -> dict | None:
    """The row every other row's vectors are checked against: the reference's, else torch fp32's."""
    for name in ("reference", "torch"):
        base = next((r for r in rows if r.get("backend") == name and "sample" in r), None)
        if base is not None:
            return base
    return None


def comparisons(rows: list[dict], base: dict | None):
    """(row, compare(row's vectors, base's)) for every other row that has vectors; none without a base."""
    if base is None:
        return
    for r in rows:
        if r is not base and "sample" in r:
            yield r, compare(r["sample"], base["sample"])


def agreement(rows: list[dict], against: str) -> list[str]:
    """Each backend's vectors against those of the backend `against`, one line each."""
    base = next((r for r in rows if r.get("backend") == against and "sample" in r), None)
    out = []
    for r, c in comparisons(rows, base):
        line = (f"{r['backend']}: dense cosine mean {c['cos_mean']:.6f} (min {c['cos_min']:.6f}, max |diff| "
                f"{c['dense_max_diff']:.1e}), ")
        if c["sparse_max_diff"] is None:
            line += "dense only (no sparse vectors)"
        else:
            line += (f"sparse ids identical in {c['same_ids']}/{c['texts']} texts, sparse weight max |diff| "
                     f"{c['sparse_max_diff']:.1e}, top-10 sparse ids overlap {c['top10']:.3f}")
        out.append(line)
    return out


def check_agreement(rows: list[dict]) -> list[str]:
    """Every row whose vectors are outside its tolerance against the comparison base, as
    'backend: problem; problem'; empty when all agree (or there is nothing to compare with)."""
    base = comparison_base(rows)
    failures = []
    for r, c in comparisons(rows, base):
        problems = disagreement(r["backend"], c)
        if problems:
            failures.append(f"{r['backend']} against {base['backend']}: " + "; ".join(problems))
    return failures


def amortised_seconds(call_s: float, probe_s: float) -> float:
    """Seconds of one encode call less the reference's batch-size probe (timed on its own inside
    that call; 0 for the backends that have none): what each call costs when the probe is paid once
    for a whole corpus."""
    if not 0 <= probe_s < call_s:
        raise ValueError(f"the probe ({probe_s} s) must take at least 0 s and less than its call ({call_s} s)")
    return call_s - probe_s


def summarise(rows: list[dict], peak: float) -> list[dict]:
    """Add the figures of the table to each measured row: tokens/s amortised (leading) and per call,
    GFLOP/s and % of peak (amortised), latency p50/p95, ratios to torch fp32 and to the reference."""
    for r in rows:
        if "throughput_s" not in r:
            continue
        r["amortised_s"] = amortised_seconds(r["throughput_s"], r.get("probe_s", 0.0))
        r["tokens_s"] = r["total_tokens"] / r["amortised_s"]
        r["tokens_s_call"] = r["total_tokens"] / r["throughput_s"]
        r["gflops"] = r["useful_gflop"] / r["amortised_s"]
        r["pct_peak"] = 100 * r["gflops"] / peak
        lat = [x for v in r["latency_ms"].values() for x in v]
        r["p50"], r["p95"] = pct(lat, 50), pct(lat, 95)

    def rate(backend: str, key: str) -> float | None:
        return next((r[key] for r in rows if r.get("backend") == backend and key in r), None)

    torch_tps = rate("torch", "tokens_s")
    ref_tps, ref_call = rate("reference", "tokens_s"), rate("reference", "tokens_s_call")
    for r in rows:
        if "tokens_s" in r:
            r["ratio"] = r["tokens_s"] / torch_tps if torch_tps else None
            r["ratio_ref"] = r["tokens_s"] / ref_tps if ref_tps else None
            r["ratio_ref_call"] = r["tokens_s_call"] / ref_call if ref_call else None
    return rows


def render_table(rows: list[dict]) -> str:
    """Two tables: the amortised throughput first (what encoding a corpus costs), then one call's
    throughput and the latency of one text per call (what a caller per request pays)."""

    def ratio(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    lines = ["**Throughput, amortised** (the reference's batch-size probe timed on its own and subtracted; "
             "the other backends have none)", "",
             "| backend | tokens/s | × reference | × torch fp32 | GFLOP/s | % of fp32 peak | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "tokens_s" in r:
            lines.append(f"| {r['backend']} | {r['tokens_s']:.0f} | {ratio(r['ratio_ref'])} | {ratio(r['ratio'])} "
                         f"| {r['gflops']:.1f} | {r['pct_peak']:.0f}% | {r['max_rss_mb']:.0f} |")
        else:
            lines.append(f"| {r['backend']} | skipped (see below) | – | – | – | – | – |")
    lines += ["", "**Per call** (one `encode` call as it runs, the reference's probe included)", "",
              "| backend | tokens/s, one call of all texts | × reference | probe share of the call "
              "| p50 ms/text, one text per call | p95 ms/text, one text per call |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "tokens_s" in r:
            share = r.get("probe_s", 0.0) / r["throughput_s"]
            lines.append(f"| {r['backend']} | {r['tokens_s_call']:.0f} | {ratio(r['ratio_ref_call'])} "
                         f"| {100 * share:.0f}% | {r['p50']:.0f} | {r['p95']:.0f} |")
        else:
            lines.append(f"| {r['backend']} | skipped (see below) | – | – | – | – |")
    return "\n".join(lines)


def render_section(table: str, rows: list[dict], peak: dict, info: dict, shape: str, command: str,
                   elapsed: float) -> str:
    ok = [r for r in rows if "tokens_s" in r]
    s = SHAPES[shape]
    title = "bge-m3's shape" if shape == "full" else f"{shape.upper()} shape, not bge-m3's size"
    lines = [markers(shape)[0], f"## Encoder throughput (CPU, random weights, {title})", ""]
    lines.append(f"Model: `connector.testing.make_model` with {s['num_layers']} layers, hidden {s['hidden_size']}, "
                 f"{s['num_heads']} heads, FFN {s['intermediate_size']}, vocab {s['vocab_size']}"
                 f"{' (BAAI/bge-m3 exactly)' if shape == 'full' else f' (`--shape {shape}`, NOT bge-m3 size)'}, "
                 f"random weights; `max_length` {MAX_LENGTH}, `batch_size` {BATCH_SIZE}. "
                 "Written by `benchmarks/encode_throughput.py`.")
    lines += ["", table, ""]
    if ok:
        r0 = ok[0]
        cls_desc = ", ".join(
            f"{r0['counts'][c]} {c} texts ({r0['token_range'][c][0]}–{r0['token_range'][c][1]} tokens, "
            f"mean {r0['chars_mean'][c]:.0f} chars, {r0['tokens'][c]} tokens in all)" for c in r0["counts"])
        lines.append(f"- **Texts**: {cls_desc}; {r0['total_tokens']} real tokens, {r0['useful_gflop']:.1f} GFLOP "
                     "of useful work per pass. Built deterministically from `connector/testing/sentences.txt` "
                     "(multilingual; random sentences concatenated, seeded) and tokenized by the test tokenizer "
                     "(trained on those sentences, so fewer tokens per character than the real bge-m3's: "
                     "compare per token, not per text).")
    lines.append("- **tokens/s**: real tokens (`<s>`/`</s>` included, padding excluded, after truncation) of all "
                 "texts / wall time of one `encoder.encode(all texts)` call (the encoder sorts by length and "
                 "pads each batch to its longest text, as in a sync), after a warm-up call. **Amortised**: that "
                 "wall time less the reference's batch-size probe, timed on its own inside the same call "
                 "(BGEM3FlagModel runs its first, longest batch through the model one extra time per `encode` "
                 "call; a forward hook times every forward pass and the call's first one is the probe): what "
                 "the reference costs when a corpus goes through few calls. **Per call**: the wall time as it "
                 "is, probe included: what a caller pays per request." + (" Probe: " + "; ".join(
                     f"{r['backend']} {r['probe_s']:.1f} s of {r['throughput_s']:.1f} s"
                     for r in ok if r.get("probe_s")) + "." if any(r.get("probe_s") for r in ok) else ""))
    lines.append(f"- **p50 / p95 ms/text**: latency of one text encoded alone (`encoder.encode([text])`, no "
                 f"batching), over every {LATENCY_EVERY}rd text of each class; not batch time / batch size"
                 + "".join(f"; the reference's probe included ({100 * r['latency_probe_share']:.0f}% of it)"
                           for r in ok if r.get("latency_probe_share")) + ". "
                 "Per class p50 (query / passage / long): " + "; ".join(
                     f"{r['backend']} " + " / ".join(f"{statistics.median(v):.0f}" for v in r["latency_ms"].values())
                     + " ms" for r in ok) + ".")
    lines.append("- **GFLOP/s**: useful FLOPs / time; FLOPs of a text of n tokens = n·(2·P + 4·L·n·h) with "
                 "P = L·(4h² + 2h·f) the weights of the Q/K/V/output and FFN matrices (2 FLOPs per multiply-add) "
                 "and 4·L·n·h for QKᵀ and attention·V per token; embeddings, norms, softmax, GELU and heads "
                 f"left out; padding not counted. This shape: {ok[0]['gflop_per_token_300']:.3f} GFLOP/token at "
                 "n = 300." if ok else "- **GFLOP/s**: see the script's docstring.")
    lines.append(f"- **fp32 peak**: {peak['peak_gflops']:.0f} GFLOP/s = the fastest 4096×4096 @ 4096×4096 fp32 "
                 f"product on this machine, by {peak['peak_by']} (best of {PEAK_REPEATS}; median "
                 f"{peak['median_gflops']:.0f}), measured in this run with {peak['torch_threads']} threads: "
                 + ", ".join(f"{k} {v:.0f}" for k, v in peak["rates"].items())
                 + f" GFLOP/s; {peak['others_cores']:.2f} cores busy with other jobs meanwhile. "
                 "% of fp32 peak = GFLOP/s / the fastest.")
    if any(BACKENDS.get(r["backend"]) == "int8" for r in ok):
        lines.append("- **int8**: its GFLOP/s count the same (fp32-equivalent) FLOPs, but its MatMuls run as int8 "
                     "(dynamic quantization; AVX-512 VNNI on this CPU), which the fp32 peak does not bound: above "
                     "100% means faster than fp32 arithmetic could go, not a measuring error. Its vectors differ "
                     "slightly from fp32's (see `connector/encoders/onnx.py`); this benchmark holds them only "
                     "loosely (below).")
    lines.append("- **peak RSS**: `ru_maxrss` of each backend's own fresh subprocess (model load + warm-up + both "
                 "passes); for ONNX a previous subprocess ran the export, so the export is not in the peak.")
    if any(r["backend"] == "reference" for r in ok):
        lines.append(f"- **reference**: FlagEmbedding's `BGEM3FlagModel` (the implementation bge-m3's authors ship; "
                     f"{', '.join(REFERENCE_PACKAGES)}), fp32 on the CPU, `use_fp16=False`, the same max_length and "
                     "batch_size, dense + sparse (ColBERT vectors off), in its own venv `benchmarks/.cache/reference-venv` "
                     "because FlagEmbedding does not import with transformers 5. Every text's vectors against the "
                     "reference's: " + "; ".join(agreement(rows, "reference")) + ".")
    baselines = {
        "transformers": "AutoTokenizer + AutoModel (its default attention), fp32, torch's default BLAS, texts sorted "
                        f"by token count in batches of {BATCH_SIZE} padded to their longest, dense = normalised CLS "
                        "hidden state, sparse = bge-m3's head (`sparse_linear.pt`) on the same hidden states",
        "sentence-transformers": f"`SentenceTransformer(model folder).encode(texts, batch_size={BATCH_SIZE})` with the "
                                 "folder's modules (Transformer, CLS pooling, Normalize; max_seq_length "
                                 f"{MAX_LENGTH}), dense only (it has no sparse head)"}
    ran = [f"`{r['backend']}`: {baselines[r['backend']]}" for r in ok if r["backend"] in baselines]
    if ran:
        lines.append("- **Baselines a user would pick**: " + "; ".join(ran) + ".")
    base = comparison_base(rows)
    if base is None and len(ok) > 1:
        lines.append("- **Vectors not checked**: neither the reference nor torch fp32 ran (see `--backends`).")
    if base is not None and len(ok) > 1:
        lines.append(f"- **Vectors checked** against {'the reference' if base['backend'] == 'reference' else 'torch fp32'}'s, every text, before anything is written: "
                     f"fp32 rows within dense cosine >= {FP32_TOLERANCE['cos_min']}, dense and sparse weight max "
                     f"|diff| <= {FP32_TOLERANCE['dense_max_diff']:.0e} (an id on one side only counts as weight 0), "
                     f"int8 within dense cosine >= {INT8_TOLERANCE['cos_min']}; the script fails (exit 2, nothing "
                     "written) when a row is outside.")
    if any(r["backend"] == "torch" for r in ok) and len(ok) > 1:
        lines.append("- **Agreement with our torch fp32 vectors** (every text): " + "; ".join(
            line for line in agreement(rows, "torch") if not line.startswith("reference")) + ". With random "
            "weights the token weights are small and nearly tied, so int8's top-10 overlap here understates "
            "what it keeps of a trained model's clear-cut lexical weights; the test suite holds the tiny model's "
            "int8 to a dense cosine of at least 0.99 (mean 0.995) and a top-10 overlap of at least 0.6 (mean 0.9) against torch (tests/test_onnx.py).")
    notes = [f"{r['backend']}: load {r['load_s']:.1f} s, encoder `{r['encoder']}`" for r in ok]
    if ok:
        lines.append("- **CPU during the tokens/s pass** (cores busy, from /proc/stat; the backend / everything else "
                     "on the machine): " + "; ".join(
                         f"{r['backend']} {r['own_cores']:.2f} / {r['others_cores']:.2f}" for r in ok)
                     + (". **Another job was using the CPU: these figures are low.**"
                        if max(r["others_cores"] for r in ok) > 0.25 else "."))
    skipped = [f"{r['backend']}: {r.get('skipped') or r.get('error')}" for r in rows if "tokens_s" not in r]
    if notes:
        lines.append("- **Load** (build + first encode, not timed above): " + "; ".join(notes) + ".")
    if skipped:
        lines.append("- **Skipped**: " + "; ".join(skipped) + ".")
    lines.append(f"- **Machine**: {info['cpu']} ({info['isa']}), {info['usable']} usable / {info['online']} online "
                 f"CPUs, {info['physical']} physical cores; {info['threads']} threads per backend; Python "
                 f"{info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}, transformers "
                 f"{info['transformers']}; load average (1 min) at start {info['load'][0]:.2f}, at the end "
                 f"{os.getloadavg()[0]:.2f}.")
    lines.append(f"- **Command** (from the repository root, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                 f"whole run {elapsed:.0f} s): `{command}`")
    lines.append(markers(shape)[1])
    return "\n".join(lines) + "\n"




# ---------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="full",
                        help="full: bge-m3's shape (default); mid: 6 layers x 768; small: 6 layers x 384, for quick runs")
    parser.add_argument("--backends", default="reference,torch,onnx,onnx-int8,transformers,sentence-transformers",
                        help=f"comma-separated, of {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="threads per backend (default: physical cores)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = args.threads or physical_cores()

    if args.worker:
        if args.worker == "peak":
            result = worker_peak(threads)
        else:
            result = worker_encode(args.worker, Path(args.model), args.shape, threads, args.prepare)
        Path(args.out).write_text(json.dumps(result))
        return 0

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        fail(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    started = time.perf_counter()
    info = machine(threads)
    if info["load"][0] > 1.5:
        print(f"warning: load average {info['load'][0]:.2f}: another job is running, figures will be low",
              file=sys.stderr)
    model = ensure_model(args.shape)

    print("fp32 peak (4096x4096 matmul) ...", flush=True)
    peak = run_worker(["peak", "--threads", str(threads)])
    if "error" in peak:
        fail(peak["error"])
    print(f"  {peak['peak_gflops']:.0f} GFLOP/s by {peak['peak_by']} (median {peak['median_gflops']:.0f}; "
          f"others busy {peak['others_cores']:.2f} cores); " +
          ", ".join(f"{k} {v:.0f}" for k, v in peak["rates"].items()), flush=True)

    rows = []
    common = ["--model", str(model), "--shape", args.shape, "--threads", str(threads)]
    for backend in backends:
        print(f"{backend} ...", flush=True)
        if backend == "reference":
            r = run_worker([backend, *common], python=reference_python())
            r.setdefault("backend", backend)
            rows.append(r)
            report_row(r)
            continue
        if BACKENDS[backend] is not None:
            prep = run_worker([backend, *common, "--prepare"])
            if "load_s" not in prep:
                rows.append({"backend": backend, **prep})
                print(f"  skipped: {prep.get('skipped') or prep.get('error')}", flush=True)
                continue
            print(f"  prepared (export/cache) in {prep['load_s']:.0f}s", flush=True)
        r = run_worker([backend, *common])
        r.setdefault("backend", backend)
        rows.append(r)
        report_row(r)

    hashes = {r["texts_sha256"] for r in rows if "texts_sha256" in r}
    if len(hashes) > 1:
        fail(f"backends saw different texts ({hashes}); the figures are not comparable")
    summarise(rows, peak["peak_gflops"])
    disagreeing = check_agreement(rows)
    table = render_table(rows)
    elapsed = time.perf_counter() - started
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    command = shlex.join([display_python(), shown, *sys.argv[1:]])
    section = render_section(table, rows, peak, info, args.shape, command, elapsed)
    print()
    print(section)
    if os.getloadavg()[0] > threads + 1:
        print(f"warning: load average {os.getloadavg()[0]:.2f} at the end, more than this run's {threads} threads: "
              "another job was running, figures will be low", file=sys.stderr)
    if disagreeing:
        fail("vectors disagree, nothing written (a backend computes something else than the reference: "
             "fix it before publishing its speed): " + " | ".join(disagreeing))
    if not args.no_write:
        write_section(RESULTS, *markers(args.shape), section)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
