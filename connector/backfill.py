"""Fitting the projection, and `connector backfill`: legacy vectors from a collection's stored
1024-d vectors, without re-encoding anything."""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from connector.config import SyncConfig
from connector.errors import ConfigError
from connector.lock import StateLock
from connector.app import make_encoder, open_sink, open_state, projection_key
from connector.hashes import stable_hash, vector_identity
from connector.projection import Projection, ProjectionError, fit, load
from connector.records import Point
from connector.statedir import open_private

PAGE = 256


FIT_SOURCES = ("auto", "store", "source")


def fit_projection(config: SyncConfig, k: int, sample: int, source: str = "auto", seed: int = 0) -> Projection:
    """Fit PCA to k dimensions on up to `sample` dense vectors, read from the store ("store") or
    encoded from the source through the embedding cache ("source"); "auto" takes the store when
    the collection holds points, else the source. Saves it in the state dir, under the state
    dir's lock (like a sync). The projection's `fitted_from` says which source was used."""
    if source not in FIT_SOURCES:
        raise ConfigError(f"the projection is fitted from one of {', '.join(FIT_SOURCES)}, not {source!r}")
    with StateLock(config.state_dir):
        encoder = make_encoder(config)
        try:
            identity = stable_hash(vector_identity(encoder))
            if source == "auto":
                source = "store" if _collection_has_points(config) else "source"
            vectors = _store_sample(config, sample, seed) if source == "store" else _source_sample(config, encoder, sample)
            if vectors.shape[1] != encoder.dimension:
                raise ProjectionError(
                    f"the stored vectors have {vectors.shape[1]} dimensions but the model gives {encoder.dimension}: "
                    "they were made by another model"
                )
            projection = fit(vectors, k, identity)
            projection.fitted_from = source
            projection.save(config.state_dir)
        finally:
            encoder.close()  # the Ray engine's actors
    return projection


def _collection_has_points(config: SyncConfig) -> bool:
    with open_sink(config) as sink:
        info = sink.describe()
    return info is not None and info.count > 0


def _store_sample(config: SyncConfig, sample: int, seed: int) -> np.ndarray:
    from connector.schemas_layout import load_layout

    with open_sink(config) as sink:
        sink.layout = load_layout("chunks")  # read the full 'dense' vector, whatever the output mode
        if sink.describe() is None:
            raise ProjectionError(f"collection '{config.sink.collection}' does not exist: sync first, or use --from source")
        ids = sorted(sink.all_ids())
        chosen = random.Random(seed).sample(ids, min(sample, len(ids)))
        rows = [p.dense for start in range(0, len(chosen), PAGE) for p in sink.retrieve(chosen[start : start + PAGE], True)]
    rows = [r for r in rows if r is not None and len(r)]
    if not rows:
        raise ProjectionError(f"collection '{config.sink.collection}' holds no full dense vectors to fit on")
    return np.stack(rows)


def _source_sample(config: SyncConfig, encoder, sample: int) -> np.ndarray:
    from connector.encoders.cache import EmbeddingCache
    from connector.ledger import Ledger
    from connector.preprocess.chunking import chunking_version, make_chunker
    from connector.preprocess.factory import make_preprocessor
    from connector.records import Document
    from connector.sources.factory import make_source

    normalize = make_preprocessor(config)
    ledger = Ledger.open_read_only(config.state_dir)
    try:  # the chunks the sync makes, so that their vectors come from the embedding cache
        version = chunking_version(config.chunking, ledger)
    finally:
        ledger.close()
    chunker = make_chunker(encoder.tokenizer, config.chunking, version)
    texts: dict[str, str] = {}
    for item in make_source(config.source).read():
        if isinstance(item, Document):
            for chunk in chunker.split(item.doc_id, normalize(item.text)):
                texts.setdefault(chunk.sha256, chunk.text)
        if len(texts) >= sample:
            break
    texts = dict(list(texts.items())[:sample])
    cache = EmbeddingCache(config.state_dir, stable_hash(vector_identity(encoder)))
    try:
        found = cache.get_many(texts)
        missing = [sha for sha in texts if sha not in found]
        if missing:
            encoded = dict(zip(missing, encoder.encode([texts[s] for s in missing])))
            cache.put_many(encoded)
            found.update(encoded)
    finally:
        cache.close()
    if not found:
        raise ProjectionError("the source gave no text to fit the projection on")
    return np.stack([found[sha].dense for sha in texts])


@dataclass
class BackfillReport:
    source_collection: str
    target_collection: str
    field: str
    k: int
    projection_sha256: str
    points: dict = field(default_factory=lambda: dict.fromkeys(["source", "written", "resumed_after"], 0))
    pages: int = 0

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def backfill(config: SyncConfig, k: int, target: str | None = None, progress: bool = False,
             fit_if_missing: bool = True, page_size: int = PAGE) -> BackfillReport:
    """Write the legacy (k-d) vector of every point of the config's collection, with the same id and
    payload, into `target` (default '<collection>_<k>'), created from the legacy layout if missing.

    Resumable: a checkpoint in the state dir records the last id written (ids go in sorted order),
    so a run after a kill continues there. Idempotent: the same ids get the same vectors."""
    from connector.schemas_layout import load_layout

    field_name = config.projection.field if config.projection and config.projection.dim == k else f"dense_{k}"
    target = target or f"{config.sink.collection}_{k}"
    if target == config.sink.collection:
        raise ConfigError("--target must differ from the source collection (backfill writes a new collection)")
    try:
        projection = load(config.state_dir)
    except ProjectionError:
        if not fit_if_missing:
            raise
        sample = config.projection.sample if config.projection else 20000
        projection = fit_projection(config, k, sample, source="store")
    if projection.k != k:
        raise ProjectionError(
            f"the fitted projection has k={projection.k}, not {k}: run `connector projection fit -c CONFIG --dim {k}`"
        )
    report = BackfillReport(config.sink.collection, target, field_name, k, projection.sha256)
    checkpoint = Path(config.state_dir) / f"backfill-{target}.json"
    with open_state(config) as (ledger, source):
        source.layout = load_layout("chunks")
        if source.describe() is None:
            raise ConfigError(f"collection '{config.sink.collection}' does not exist: nothing to backfill")
        target_sink = source.sibling(target, load_layout("chunks_legacy", legacy_field=field_name))
        try:
            target_sink.ensure_collection(None, k)  # wrong size: SchemaMismatchError, nothing written
            done = _read_checkpoint(checkpoint, projection.sha256)  # None: start from the first id
            ids = sorted(source.all_ids())
            report.points["source"] = len(ids)
            if done is not None:
                report.points["resumed_after"] = sum(1 for i in ids if i <= done)
                ids = [i for i in ids if i > done]
            ledger.set_meta(projection_key(target), projection.sha256)
            bar = _bar(len(ids), progress)
            for start in range(0, len(ids), page_size):
                page = source.retrieve(ids[start : start + page_size], with_vectors=True)
                legacy = projection.apply(np.stack([p.dense for p in page])) if page else []
                target_sink.upsert([
                    Point(id=p.id, dense=None, sparse=p.sparse, payload=p.payload, extra={field_name: v})
                    for p, v in zip(page, legacy)
                ])
                _write_checkpoint(checkpoint, projection.sha256, ids[min(start + page_size, len(ids)) - 1])
                report.points["written"] += len(page)
                report.pages += 1
                bar.update(len(page))
            bar.close()
        finally:
            target_sink.close()
    checkpoint.unlink(missing_ok=True)  # done: a later run starts over (and writes the same vectors)
    return report


def _read_checkpoint(path: Path, sha: str) -> str | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data["last_id"] if data.get("projection_sha256") == sha else None


def _write_checkpoint(path: Path, sha: str, last_id: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open_private(tmp, "w") as f:
        json.dump({"projection_sha256": sha, "last_id": last_id}, f)
    os.replace(tmp, path)


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="backfill", unit="point", file=sys.stderr, disable=not enabled)
