"""The library API: what the `connector` commands and the `connector serve` service do, as
functions that return the JSON documents both of them show (`--json` output, API responses).

The functions that encode take an `encoder` (anything with `encode(texts, details=)`,
`dimension`, `tokenizer` and `colbert_error`, e.g. `open_encoder(config)`; the service passes
its coalescing batcher) and a `clean` function (the config's query cleaning, `query_cleaner`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from connector.config import SyncConfig
from connector.errors import ConfigError, ConnectorError, InputError
from connector.records import lexical_score

#: bge-m3 authors' hybrid: dense + 0.3 * lexical (design.md)
HYBRID_WEIGHTS = {"dense": 1.0, "lexical": 0.3}
#: FlagEmbedding's `compute_score` default `weights_for_different_modes` (dense, sparse, colbert)
WEIGHTED_WEIGHTS = {"dense": 0.4, "lexical": 0.2, "colbert": 0.4}
SIMILARITY_MODES = ("dense", "sparse", "colbert", "hybrid")
SEARCH_MODES = ("hybrid", "dense", "sparse", "legacy")


def identity(text: str) -> str:
    return text


# ---- encoders -----------------------------------------------------------------------------
def open_encoder(config: SyncConfig | None = None, *, model: str | None = None, max_length: int | None = None):
    """The config's encoder (its backend: torch or onnx, quantization, threads) or, without a
    config, bge-m3 on torch from `model` (a folder or hub id). `max_length` overrides the limit."""
    if (config is None) == (model is None):
        raise ValueError("give exactly one of config or model")
    if config is not None:
        from connector.engines.local import build_local_encoder

        if max_length:
            config = config.model_copy(deep=True)
            config.encoder.max_length = max_length
        return build_local_encoder(config)  # a few texts at a time: in this process, whatever the config's engine
    from connector.encoders.bge_m3 import BGEM3Encoder

    return BGEM3Encoder(model, max_length=max_length or 8192)


def query_cleaner(config: SyncConfig | None) -> Callable[[str], str]:
    """How the config cleans queries (its query-scoped rules); without a config: nothing."""
    if config is None:
        return identity
    from connector.preprocess.factory import make_query_preprocessor

    return make_query_preprocessor(config)


def legacy_projection(config: SyncConfig | None, encoder):
    """The projection the config's collection uses for legacy vectors, or None."""
    if config is None or not config.projection:
        return None
    from connector.app import load_projection_for

    return load_projection_for(config, encoder)


# ---- embed / similarity / tokenize ------------------------------------------------------------
def embed(encoder, texts: list[str], *, clean: Callable[[str], str] = identity, projection=None) -> dict:
    """Dense and sparse vectors of each text (and the projected `dense_legacy` with a projection)."""
    vectors = encoder.encode([clean(t) for t in texts])
    rows = []
    for text, v in zip(texts, vectors):
        row = {"text": text, "dense": v.dense.tolist(), "sparse": v.sparse.to_json()}
        if projection is not None:
            row["dense_legacy"] = np.asarray(projection.apply(v.dense), dtype=np.float32).tolist()
        rows.append(row)
    return {"dimension": encoder.dimension, "embeddings": rows}


def similarity(encoder, a: str, b: str, *, mode: str = "hybrid", clean: Callable[[str], str] = identity) -> dict:
    """Every score of two texts (dense cosine, lexical, ColBERT, bge-m3's hybrid and weighted
    sum) and the values behind them: token counts, norms, the shared tokens and their weights.
    `score` is the score of `mode`. ColBERT treats `a` as the query (it is asymmetric)."""
    _check_mode(mode, SIMILARITY_MODES)
    colbert_error = encoder.colbert_error
    if mode == "colbert" and colbert_error:
        raise InputError(colbert_error)
    texts = [clean(a), clean(b)]
    va, vb = encoder.encode(texts, details=True)
    scores = pair_scores(va, vb)
    shared = _shared_tokens(encoder.tokenizer, va.sparse, vb.sparse)
    return {
        "mode": mode,
        "score": scores["lexical" if mode == "sparse" else mode],
        "scores": scores,
        "weights": {"hybrid": HYBRID_WEIGHTS, "weighted": WEIGHTED_WEIGHTS},
        "a": _side(texts[0], va),
        "b": _side(texts[1], vb),
        "shared_tokens": shared,
        "colbert_error": colbert_error,
    }


def pair_scores(va, vb) -> dict:
    """dense, lexical, colbert (None without ColBERT vectors), hybrid and weighted of two texts."""
    from connector.encoders.bge_m3 import colbert_score

    dense = float(np.dot(va.dense, vb.dense))
    lexical = float(lexical_score(va.sparse, vb.sparse))
    colbert = None
    if va.details is not None and va.details.colbert is not None and vb.details.colbert is not None:
        colbert = colbert_score(va.details.colbert, vb.details.colbert)
    hybrid = HYBRID_WEIGHTS["dense"] * dense + HYBRID_WEIGHTS["lexical"] * lexical
    weighted = None if colbert is None else (
        WEIGHTED_WEIGHTS["dense"] * dense + WEIGHTED_WEIGHTS["lexical"] * lexical + WEIGHTED_WEIGHTS["colbert"] * colbert
    ) / sum(WEIGHTED_WEIGHTS.values())
    return {"dense": dense, "lexical": lexical, "colbert": colbert, "hybrid": hybrid, "weighted": weighted}


def _side(text: str, v) -> dict:
    return {"text": text, "tokens": int(len(v.details.token_ids)), "dense_norm": float(np.linalg.norm(v.dense)),
            "sparse_norm": float(np.linalg.norm(v.sparse.values)), "sparse_tokens": int(len(v.sparse.indices))}


def _shared_tokens(tokenizer, a, b) -> list[dict]:
    shared, ia, ib = np.intersect1d(a.indices, b.indices, assume_unique=True, return_indices=True)
    names = tokenizer.convert_ids_to_tokens([int(i) for i in shared])
    rows = [{"id": int(i), "token": name, "weight_a": float(a.values[x]), "weight_b": float(b.values[y]),
             "product": float(a.values[x]) * float(b.values[y])} for i, name, x, y in zip(shared, names, ia, ib)]
    return sorted(rows, key=lambda r: -r["product"])


def similarity_matrix(encoder, texts: list[str], *, mode: str = "dense",
                      clean: Callable[[str], str] = identity) -> dict:
    """The N x N matrix of one score (`mode`) between every pair of texts, for a heatmap.
    Row i, column j scores text i against text j (ColBERT: text i as the query)."""
    _check_mode(mode, SIMILARITY_MODES)
    if mode == "colbert" and encoder.colbert_error:
        raise InputError(encoder.colbert_error)
    vectors = encoder.encode([clean(t) for t in texts], details=mode == "colbert")
    key = "lexical" if mode == "sparse" else mode
    if mode == "dense":  # one matrix product instead of N^2 calls
        dense = np.stack([v.dense for v in vectors]) if vectors else np.zeros((0, encoder.dimension))
        matrix = (dense @ dense.T).astype(float).tolist()
    else:
        matrix = [[pair_scores(va, vb)[key] for vb in vectors] for va in vectors]
    return {"mode": mode, "texts": list(texts), "matrix": matrix}


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def split_conversation(text: str) -> list[str]:
    """A pasted conversation or passage as a list of texts: its non-empty lines when it has more
    than one, else its sentences."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return lines
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def tokenize(encoder, text: str, *, clean: Callable[[str], str] = identity) -> dict:
    """The model's tokens of `text` (as cleaned), with ids, character offsets into the cleaned
    text and the sparse weight bge-m3 gives each position (special tokens: `special: true`)."""
    cleaned = clean(text)
    tokenizer = encoder.tokenizer
    encoding = tokenizer(cleaned, truncation=True, max_length=encoder.max_length, add_special_tokens=True,
                         return_offsets_mapping=True)
    (vectors,) = encoder.encode([cleaned], details=True)
    ids = [int(i) for i in encoding["input_ids"]]
    if ids != [int(i) for i in vectors.details.token_ids]:  # the encoder and this call must agree
        raise ConnectorError("internal error: the tokenizer gave two different tokenizations of one text")
    special = set(tokenizer.all_special_ids)
    tokens = [{"id": i, "token": name, "start": int(start), "end": int(end), "special": i in special,
               "weight": float(weight)}
              for i, name, (start, end), weight in zip(ids, tokenizer.convert_ids_to_tokens(ids),
                                                      encoding["offset_mapping"], vectors.details.token_weights)]
    # cut short: the last real token ends before the text does (one tokenizer call, with the same
    # settings as the encoder's, so a shared tokenizer never has to change them between calls)
    last_end = max((t["end"] for t in tokens if not t["special"]), default=0)
    truncated = len(ids) >= encoder.max_length and bool(cleaned[last_end:].strip())
    return {"text": cleaned, "count": len(ids), "truncated": truncated, "tokens": tokens}


def _check_mode(mode: str, modes: tuple) -> None:
    if mode not in modes:
        raise InputError(f"mode must be one of {', '.join(modes)}, not {mode!r}")


# ---- search -----------------------------------------------------------------------------------
def search(config: SyncConfig, query: str, *, encoder, mode: str = "hybrid", limit: int = 10,
           collection: str | None = None, clean: Callable[[str], str] | None = None, open_sink=None) -> dict:
    """Search the collection (or `collection`, e.g. a backfill target) with the query encoded and
    cleaned like the documents' queries, projected when the collection holds legacy vectors.
    `open_sink(config) -> Sink` lets a caller reuse open sinks (it then owns closing them)."""
    from connector.search import plan_search

    _check_mode(mode, SEARCH_MODES)
    if not 1 <= limit <= 1000:
        raise InputError(f"limit must be between 1 and 1000, not {limit}")
    clean = clean or query_cleaner(config)
    (vectors,) = encoder.encode([clean(query)])
    plan = plan_search(config, mode, collection, encoder, open_sink=open_sink)
    sink = plan.sink
    try:
        hits = sink.search(plan.mode, dense=plan.project(vectors.dense), sparse=vectors.sparse, limit=limit,
                           using=plan.using)
    finally:
        if open_sink is None:
            sink.close()
    rows = [{"id": h.id, "doc_id": h.payload.get("doc_id"), "chunk_index": h.payload.get("chunk_index"),
             "score": h.score, "text": h.payload.get("text")} for h in hits]
    return {"query": query, "mode": mode, "collection": sink.collection, "vector": plan.using, "hits": rows}


# ---- state: status, dead letters, verify, schema ----------------------------------------------
def status(config: SyncConfig) -> dict:
    """Ledger counts, failed documents, the chunking version the next sync uses (see
    chunking_version) and the store's point count; reads only. `store.error` is set when the store
    does not answer."""
    from connector.ledger import Ledger
    from connector.app import open_sink, sink_target
    from connector.preprocess.chunking import chunking_version

    ledger = Ledger.open_read_only(config.state_dir)
    try:
        ledger.bind_target(sink_target(config), write=False)
        data = {"target": sink_target(config), "state_dir": str(config.state_dir), "ledger_exists": ledger.exists,
                "ledger": ledger.counts(), "failed_documents": ledger.failed_documents(),
                "chunking_version": chunking_version(config.chunking, ledger)}
    finally:
        ledger.close()
    sink = open_sink(config)
    try:
        info = sink.describe()
        data["store"] = {"collection": config.sink.collection, "exists": info is not None,
                         "points": info.count if info else 0}
    except ConnectorError as err:
        data["store"] = {"collection": config.sink.collection, "error": str(err)}
    finally:
        sink.close()
    return data


def export_snapshot(config: SyncConfig, out: Path) -> dict:
    """Write the config's collection, held in an embedded Qdrant Edge store, as a snapshot a Qdrant
    server restores (see QdrantEdgeSink.export_snapshot). ConfigError for any other store."""
    from connector.app import open_sink
    from connector.sinks.qdrant_edge import QdrantEdgeSink

    sink = open_sink(config)
    try:
        if not isinstance(sink, QdrantEdgeSink):
            raise ConfigError(
                "export-snapshot reads an embedded Qdrant Edge store (sink: {type: qdrant, path: ...}, engine edge); "
                "a Qdrant server makes its own snapshots (POST /collections/NAME/snapshots), and a local-mode or "
                "Milvus store moves by a sync into the new store."
            )
        if sink.describe() is None:
            raise ConfigError(f"collection '{sink.collection}' does not exist in {sink.path}: run `connector sync` first")
        return sink.export_snapshot(Path(out))
    finally:
        sink.close()


def rebind(config: SyncConfig) -> dict:
    """Bind the config's state dir to the store the config now names, after the collection moved
    there whole (a copied or moved store folder, a snapshot restored on a Qdrant server), so the
    next sync goes on from the ledger instead of encoding everything again.

    Under the state dir's lock: the collection must exist there with the layout's vectors and
    fields, and `verify` against it must find every ledger point with its payload and nothing
    else; only then is the ledger's target rewritten. Otherwise ConfigError, and the state dir
    stays bound to the old store."""
    from connector import recovery
    from connector.ledger import Ledger
    from connector.lock import StateLock
    from connector.app import open_sink, shared_collection, sink_target

    new = sink_target(config)
    if not (Path(config.state_dir) / Ledger.FILENAME).is_file():
        raise ConfigError(f"state_dir {config.state_dir} holds no ledger: there is nothing to rebind. Point the config's "
                          "state_dir at the state dir that synced the collection, or run `connector sync`.")
    with StateLock(config.state_dir):
        ledger = Ledger(config.state_dir)
        sink = open_sink(config)
        try:
            old = ledger.get_meta("target")
            if old is None:
                raise ConfigError(f"state_dir {config.state_dir} was never bound to a store: run `connector sync`.")
            if old == new:
                return {"target": new, "previous_target": old, "changed": False}
            _check_moved_collection(config, sink)
            # compared before the binding is rewritten: a rebind killed at any point leaves it on the old store
            report = recovery.compare_store(ledger, sink, shared_collection(config))
            if not report.ok:
                raise ConfigError(_not_moved_whole(report, new, old))
            ledger.set_meta("target", new)
        finally:
            sink.close()
            ledger.close()
    return {"target": new, "previous_target": old, "changed": True, "points": report.ledger_points}


def _not_moved_whole(report, new: str, old: str) -> str:
    found = report.to_json()
    if found["dead_letters"] or found["pending_deletes"]:
        return (f"the ledger has {found['dead_letters']} dead letters and {found['pending_deletes']} deletes waiting for "
                f"the store: run `connector retry` and `connector sync` with the config of {old} first, so that the "
                f"collection holds everything, move it again, then rebind; the state dir stays bound to {old}.")
    return (f"{new} does not hold what the ledger lists (ledger points {found['ledger_points']}, store points "
            f"{found['store_points']}, missing {len(found['missing'])}, unknown {len(found['orphans'])}, stale "
            f"payloads {len(found['mismatched'])}); the state dir stays bound to {old}. Move or restore the whole "
            "collection (export-snapshot after the last sync), or sync into the new store with a new state_dir.")


def _check_moved_collection(config: SyncConfig, sink) -> None:
    """The collection exists in the new store with the layout's vectors and payload fields."""
    info = sink.describe()
    if info is None:
        raise ConfigError(f"collection '{config.sink.collection}' does not exist in the store the config names: "
                          "copy the store folder or restore the snapshot there first (README: Moving to a server).")
    k = config.projection.dim if config.projection and config.projection.output != "dense" else None
    sink.layout.check(info, sink.layout.sizes(info.dense_size, k))


def failed(config: SyncConfig) -> dict:
    """The dead letters grouped by error: ids, documents, points, attempts, first and last failure."""
    from connector.ledger import Ledger

    ledger = Ledger.open_read_only(config.state_dir)
    try:
        letters = ledger.dead_letters()
    finally:
        ledger.close()
    groups: dict[str, dict] = {}
    for letter in letters:
        g = groups.setdefault(letter.error, {"error": letter.error, "kind": letter.error_kind, "dead_letters": [],
                                             "documents": [], "points": 0, "attempts": 0,
                                             "first_failed": letter.created_at, "last_failed": letter.updated_at})
        g["dead_letters"].append(letter.id)
        g["documents"] += letter.doc_ids
        g["points"] += letter.point_count
        g["attempts"] += letter.attempts
        g["last_failed"] = max(g["last_failed"], letter.updated_at)
    return {"dead_letters": len(letters), "documents": sum(len(g["documents"]) for g in groups.values()),
            "points": sum(g["points"] for g in groups.values()), "groups": list(groups.values()),
            "ledger_exists": ledger.exists}


def verify(config: SyncConfig, *, repair: bool = False) -> tuple[dict, bool]:
    """Compare ledger and store (and with `repair`, fix what differs and compare again).
    Returns the report (`before`, and `after` a repair) and whether they match in the end."""
    from connector import recovery

    report = recovery.verify(config)
    data = {"before": report.to_json()}
    if repair and not report.ok:
        repaired = recovery.repair(config, report)
        report = recovery.verify(config)
        report.repaired = repaired
        data["after"] = report.to_json()
    return {**report.to_json(), **data}, report.ok


def schema(config: SyncConfig, *, create: bool = False, recreate: bool = False, encoder=None) -> dict:
    """The collection's layout and state; `create` makes it when missing, `recreate` drops it
    (every point) and makes it again, resetting the ledger first under the state dir's lock."""
    from connector.app import open_sink
    from connector.engines.local import build_local_encoder

    sink = open_sink(config)
    try:
        action = "shown"
        if recreate:
            _drop_collection(config, sink)
        if create or recreate:
            k = config.projection.dim if config.projection and config.projection.output != "dense" else None
            created = sink.ensure_collection((encoder or build_local_encoder(config)).dimension, k)
            action = "created" if created else "exists (checked against the layout)"
        info = sink.describe()
    finally:
        sink.close()
    layout = sink.layout
    return {
        "collection": config.sink.collection,
        "action": action,
        "layout": {
            "name": layout.name,
            "vectors": {v.name: {"kind": v.kind, "distance": v.distance, "size": v.size} for v in layout.vectors},
            "payload": {f.name: {"type": f.type, "index": f.index} for f in layout.fields},
        },
        "exists": info is not None,
        "store": None if info is None else {"dense_size": info.dense_size, "vectors": info.vectors, "points": info.count},
    }


def _drop_collection(config: SyncConfig, sink) -> None:
    from connector.ledger import Ledger
    from connector.lock import StateLock
    from connector.app import sink_target

    # Ledger first: a crash between the two steps then leaves an empty ledger over a full
    # collection (the next sync rewrites it), never a full ledger over an empty one.
    with StateLock(config.state_dir):
        ledger = Ledger(config.state_dir)
        try:
            ledger.bind_target(sink_target(config))
            ledger.reset()
        finally:
            ledger.close()
        sink.drop()
