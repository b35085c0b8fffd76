"""Qdrant Edge sink: Qdrant's own engine (segments, HNSW, sparse and payload indexes, WAL) embedded
in the process through `qdrant-edge-py`; the default engine of `sink: {type: qdrant, path: ...}`.

A store folder holds one Edge shard per collection, `PATH/edge/<collection>/`, next to
`<collection>.json` (collection metadata, e.g. the owner) and `<collection>.lock`: one process at a
time opens a shard (an OS file lock, released when the process dies, even by kill -9); any other
fails at once. Vectors, payload and indexes are memory-mapped files (`Memory.Cold`: opening a shard
reads none of them; a search reads the pages it touches), so the process does not grow with the
collection; the dense vectors also get an int8 copy (scalar quantization, 1 byte a dimension) that
the HNSW graph is built and searched on, the best candidates rescored with the original vectors.
Every write is flushed before it returns, so what the ledger counts as written survives a kill -9.
The indexes are built every INDEX_EVERY points written and at the end of a sync. qdrant-edge-py is
imported lazily (the `qdrant` extra).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from connector.errors import ConfigError, ConnectorError, MissingExtraError, TerminalError
from connector.lock import StateLock
from connector.records import Hit, Point, SparseVector
from connector.schemas_layout import Layout
from connector.sinks.base import OWNER_KEY, RRF_K, CollectionInfo, Sink
from connector.sinks import qdrant
from connector.sinks.qdrant import _canonical_id, _to_sparse

log = logging.getLogger("connector.sinks")

EDGE, LOCAL_MODE = "edge", "local-mode"
EDGE_DIR = "edge"  # PATH/edge/<collection>: an Edge store; PATH/meta.json: a qdrant-client local-mode store

# the same tables as QdrantSink's; Edge spells the enum members capitalised (Cosine, not COSINE)
DISTANCES = {layout: member.capitalize() for layout, member in qdrant.DISTANCES.items()}
PAYLOAD_INDEX_TYPES = {layout: member.capitalize() for layout, member in qdrant.PAYLOAD_INDEX_TYPES.items()}

# The index settings of a new shard (a shard keeps the ones it was created with; benchmarks/stores.py
# measured them). HNSW_M and HNSW_EF_CONSTRUCT are Qdrant's defaults.
HNSW_M, HNSW_EF_CONSTRUCT, FULL_SCAN_KB = 16, 100, 10_000
QUANTILE = 0.99  # int8 range: the 0.5%..99.5% quantiles of the values, the outliers clipped
OVERSAMPLING = 2.0  # a dense search rescores limit x OVERSAMPLING int8 candidates with the float vectors
INDEXING_THRESHOLD_KB = 10_000  # a segment whose vectors take more gets an HNSW index; a smaller one is scanned
# Points written between two index builds in one process: each build blocks the writes, and indexes
# just those points into a segment of its own (a segment holds at most INDEX_EVERY points' dense
# vectors, so no build merges and indexes again what an earlier build indexed).
INDEX_EVERY = 100_000
# Memory placement (qdrant_edge.Memory member) of the int8 copy, the HNSW graph and the sparse index:
# `Cold` maps the files and reads the pages a search touches; `Cached` reads them all when the shard
# is opened (1 GB per million points for the int8 copy alone), which made every read command as slow
# as reading the collection's indexes from disk (benchmarks/commands_at_scale.py).
QUANTIZED_MEMORY = HNSW_MEMORY = SPARSE_MEMORY = "Cold"


def require_edge():
    """Import qdrant-edge-py, or raise MissingExtraError naming the extra to install."""
    try:
        import qdrant_edge
    except ImportError:
        raise MissingExtraError("qdrant-edge-py", "qdrant", "The Qdrant Edge sink") from None
    return qdrant_edge


def is_local_mode_store(path: Path) -> bool:
    """Does `path` hold a qdrant-client local-mode store (its meta.json / collection folder)?"""
    return (path / "meta.json").is_file() or (path / "collection").is_dir()


def resolve_engine(path: Path, engine: str | None) -> str:
    """The engine of an embedded Qdrant folder: the one asked for, else the one its files show
    (a local-mode folder stays on local mode), else Edge for a new folder. Raises ConfigError when
    the folder holds the other engine's store: a store is never converted silently."""
    local, edge = is_local_mode_store(path), (path / EDGE_DIR).is_dir()
    if engine is None:
        return LOCAL_MODE if local and not edge else EDGE
    if engine == EDGE and local:
        raise ConfigError(
            f"sink.path {path} holds a Qdrant local-mode store, but sink.engine is 'edge'. Keep it with "
            "`engine: local-mode`, or sync into a new folder (sink.path) with Edge and a new state_dir."
        )
    if engine == LOCAL_MODE and edge:
        raise ConfigError(
            f"sink.path {path} holds a Qdrant Edge store, but sink.engine is 'local-mode'. Remove `engine` "
            "(or set it to 'edge'), or point sink.path at another folder."
        )
    return engine


class ShardLock(StateLock):
    """One process at a time opens a shard (Edge itself refuses a second opener of its WAL)."""

    def busy(self, owner: str) -> ConnectorError:
        return TerminalError(
            f"the Qdrant Edge store {self.path.parent} is open in another process (pid {owner}): a sync, "
            "`connector serve` or another command is using it. Wait for it to finish (or stop it), then run "
            "this command again; for reads during syncs use a Qdrant server (sink.url)."
        )


class QdrantEdgeSink(Sink):
    """A collection in an embedded Qdrant Edge store (`path`); see the module docstring."""

    def __init__(self, collection: str, layout: Layout, *, path: str | Path, batch_size: int = 64,
                 page_size: int | None = None):
        super().__init__(collection, batch_size, layout, page_size)
        self.edge = require_edge()
        self.path = Path(path)
        self.folder = self.path / EDGE_DIR
        self.shard_dir = self.folder / collection
        self._shard = None
        self._lock: ShardLock | None = None
        self._wrote = False  # the indexes are built when a sink that wrote closes (the end of a sync)
        self._unindexed = 0  # points written since the last index build
        self.index_every = INDEX_EVERY
        self._bounded_segments: bool | None = None  # read from the shard's config when first needed

    # ---- plumbing --------------------------------------------------------------------
    @contextmanager
    def _op(self, operation: str):
        """Run an Edge call; its exceptions become TerminalError (nothing in an embedded store is
        worth retrying) with the operation and collection named."""
        try:
            yield
        except ConnectorError:
            raise
        except Exception as err:  # noqa: BLE001 - translation is the point
            detail = " ".join(f"{type(err).__name__}: {err}".split())[:600]
            raise TerminalError(
                f"Qdrant Edge {operation} on collection '{self.collection}' failed: {detail}. Retrying will not "
                "help: fix the request, the config or the collection."
            ) from err

    @property
    def client(self):
        """The open shard (taking the collection's lock first)."""
        return self._open("open")

    def _open(self, operation: str, create_config=None):
        if self._shard is not None:
            return self._shard
        if create_config is None and not self.shard_dir.is_dir():
            raise TerminalError(
                f"Qdrant Edge {operation} on collection '{self.collection}' failed: the collection does not exist "
                f"in {self.path}. Run `connector sync` (or `connector schema`) to create it."
            )
        lock = ShardLock(self.folder, f"{self.collection}.lock")
        lock.__enter__()
        try:
            with self._op(operation):
                if create_config is not None:
                    self._shard = self.edge.EdgeShard.create(str(self.shard_dir), create_config)
                else:
                    self._shard = self.edge.EdgeShard.load(str(self.shard_dir))
        except BaseException:
            lock.__exit__()
            raise
        self._lock = lock
        return self._shard

    # ---- primitives --------------------------------------------------------------------
    def _describe(self) -> CollectionInfo | None:
        if not self.shard_dir.is_dir():
            return None
        shard = self._open("describe")
        with self._op("describe"):
            config = json.loads((self.shard_dir / "edge_config.json").read_text(encoding="utf-8"))
            count = shard.count(self.edge.CountRequest(exact=True))
        vectors = {name: "dense" for name in config.get("vectors") or {}}
        vectors.update({name: "sparse" for name in config.get("sparse_vectors") or {}})
        dense_sizes = {name: spec["size"] for name, spec in (config.get("vectors") or {}).items()}
        dense = (config.get("vectors") or {}).get("dense")
        return CollectionInfo(
            name=self.collection,
            dense_size=dense["size"] if dense else None,
            vectors=vectors,
            fields=set(),  # Qdrant payload is schemaless
            count=count,
            dense_distance=dense["distance"].lower() if dense else None,
            dense_sizes=dense_sizes,
        )

    def _create(self, sizes: dict[str, int]) -> None:
        e = self.edge
        dense, sparse = {}, {}
        for spec in self.layout.vectors:
            if spec.kind == "dense":
                distance = getattr(e.Distance, DISTANCES[(spec.distance or "cosine").lower()])
                int8 = e.ScalarQuantizationConfig(type=e.ScalarType.Int8, quantile=QUANTILE,
                                                   memory=getattr(e.Memory, QUANTIZED_MEMORY))
                dense[spec.name] = e.EdgeVectorParams(size=sizes[spec.name], distance=distance, memory=e.Memory.Cold,
                                                      quantization_config=int8)
            elif spec.kind == "sparse":
                sparse[spec.name] = e.EdgeSparseVectorParams(memory=getattr(e.Memory, SPARSE_MEMORY))
            else:
                raise TerminalError(f"layout '{self.layout.name}': unknown vector kind {spec.kind!r}")
        config = e.EdgeConfig(
            vectors=dense, sparse_vectors=sparse, payload_memory=e.Memory.Cold,
            hnsw_config=e.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_KB,
                                          memory=getattr(e.Memory, HNSW_MEMORY)),
            optimizers=e.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB,
                                              max_segment_size=self._segment_kb(sizes)),
        )
        shard = self._open("create", create_config=config)
        self._bounded_segments = True
        with self._op("create"):
            for field in self.layout.fields:
                if field.index and field.type in PAYLOAD_INDEX_TYPES:
                    schema = getattr(e.PayloadSchemaType, PAYLOAD_INDEX_TYPES[field.type])
                    shard.update(e.UpdateOperation.create_field_index(field.name, schema))
            shard.flush()

    def _segment_kb(self, sizes: dict[str, int]) -> int:
        """The dense vectors of `index_every` points, in KB: Edge's bound on a segment's size."""
        dense = [sizes[spec.name] for spec in self.layout.vectors if spec.kind == "dense"]
        return max(1, self.index_every * max(dense, default=1) * 4 // 1024)

    def _builds_as_it_writes(self) -> bool:
        """Was the shard created with bounded segments? (A shard created before keeps one build at
        the end of a sync: there each build would merge and index the whole collection again.)"""
        if self._bounded_segments is None:
            config = json.loads((self.shard_dir / "edge_config.json").read_text(encoding="utf-8"))
            self._bounded_segments = bool((config.get("optimizers") or {}).get("max_segment_size"))
        return self._bounded_segments

    def _upsert(self, points: Sequence[Point]) -> None:
        e = self.edge
        names = {v.name for v in self.layout.vectors}

        def vectors(p: Point) -> dict:
            out = {name: np.asarray(p.dense if name == "dense" else p.extra[name], dtype=np.float32).tolist()
                   for name in self.layout.dense_names}
            if "sparse" in names:
                out["sparse"] = e.SparseVector(indices=[int(i) for i in p.sparse.indices],
                                               values=[float(v) for v in p.sparse.values])
            return out

        structs = [e.Point(id=_canonical_id(p.id), vector=vectors(p), payload=p.payload) for p in points]
        self._update("upsert", e.UpdateOperation.upsert_points(structs))
        self._unindexed += len(points)
        if self._unindexed >= self.index_every and self._builds_as_it_writes():
            self._build_or_warn("a build during the writes")

    def _update(self, operation: str, update) -> None:
        shard = self._open(operation)
        with self._op(operation):
            shard.update(update)
            shard.flush()  # durable before the ledger records it
        self._wrote = True

    def _set_payloads(self, items: Sequence[tuple[str, dict]]) -> None:
        """Overwrite these points' payloads, vectors untouched; one flush for the batch."""
        shard = self._open("set payload")
        with self._op("set payload"):
            for pid, payload in items:
                shard.update(self.edge.UpdateOperation.overwrite_payload([_canonical_id(pid)], payload))
            shard.flush()  # durable before the ledger records it
        self._wrote = True

    def build_indexes(self) -> None:
        """Build the HNSW, int8 and sparse indexes of the points written since the last build. Called
        every `index_every` points upserted (so no single build blocks the writes for long) and by
        close() when this sink wrote (the end of a sync leaves the collection indexed)."""
        if self._shard is None:
            return
        with self._op("optimize"):
            self._shard.optimize()
            self._shard.flush()
        self._wrote = False
        self._unindexed = 0

    def _delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._update("delete", self.edge.UpdateOperation.delete_points([_canonical_id(i) for i in ids]))

    def _query(self, operation: str, request) -> list[Hit]:
        shard = self._open(operation)
        with self._op(operation):
            points = shard.query(request)
        return [Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in points]

    def _dense_params(self):
        """Search the int8 copy, rescore limit x OVERSAMPLING candidates with the float vectors
        (a shard created without quantization searches its float vectors; the parameters are moot)."""
        e = self.edge
        return e.SearchParams(quantization=e.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))

    def _search_dense(self, vector, limit: int, using: str = "dense") -> list[Hit]:
        query = self.edge.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=using)
        request = self.edge.QueryRequest(limit=limit, query=query, with_payload=True, params=self._dense_params())
        return self._query("dense search", request)

    def _sparse_query(self, vector: SparseVector):
        sparse = self.edge.SparseVector(indices=[int(i) for i in vector.indices], values=[float(v) for v in vector.values])
        return self.edge.Query.Nearest(sparse, using="sparse")

    def _search_sparse(self, vector: SparseVector, limit: int) -> list[Hit]:
        request = self.edge.QueryRequest(limit=limit, query=self._sparse_query(vector), with_payload=True)
        return self._query("sparse search", request)

    def search(self, mode: str, dense=None, sparse: SparseVector | None = None, limit: int = 10,
               using: str = "dense") -> list[Hit]:
        """As Sink.search; hybrid is one Edge query: dense and sparse prefetches fused by Edge's RRF,
        with the scores of `rrf_fuse` (Edge ranks from 0, so its k is RRF_K + 1)."""
        if mode != "hybrid":
            return super().search(mode, dense, sparse, limit, using)
        e = self.edge
        depth = max(limit * 4, 20)
        prefetches = [e.Prefetch(limit=depth, query=e.Query.Nearest(np.asarray(dense, dtype=np.float32).tolist(),
                                                                      using=using), params=self._dense_params())]
        if sparse is not None and len(sparse.indices):
            prefetches.append(e.Prefetch(limit=depth, query=self._sparse_query(sparse)))
        request = e.QueryRequest(limit=limit, prefetches=prefetches, query=e.Fusion.Rrf(k=RRF_K + 1), with_payload=True)
        return self._call("search", self._query, "hybrid search", request)

    def _retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Point]:
        wanted = list(dict.fromkeys(_canonical_id(i) for i in ids))
        if not wanted:
            return []
        shard = self._open("retrieve")
        with self._op("retrieve"):
            records = shard.retrieve(wanted, with_payload=True,
                                     with_vector=[v.name for v in self.layout.vectors] if with_vectors else False)
        by_id = {str(r.id): r for r in records}
        points = []
        for pid in wanted:
            record = by_id.get(pid)
            if record is None:
                continue
            dense, sparse, extra = np.zeros(0, dtype=np.float32), SparseVector.empty(), {}
            if with_vectors:
                vectors = record.vector or {}
                if vectors.get("dense") is not None:
                    dense = np.asarray(vectors["dense"], dtype=np.float32)
                extra = {n: np.asarray(vectors[n], dtype=np.float32) for n in self.layout.dense_names
                         if n != "dense" and vectors.get(n) is not None}
                if vectors.get("sparse") is not None:
                    sparse = _to_sparse(vectors["sparse"].indices, vectors["sparse"].values)
            points.append(Point(id=pid, dense=dense, sparse=sparse, payload=record.payload or {}, extra=extra))
        return points

    def iter_ids(self) -> Iterator[str]:
        for record in self._scroll(with_payload=False):
            yield str(record.id)

    def iter_payloads(self) -> Iterator[tuple[str, dict]]:
        self._open("scroll")
        self._read_ahead("payload_storage")
        for record in self._scroll(with_payload=True):
            yield str(record.id), record.payload or {}

    def _read_ahead(self, part: str) -> None:
        """Read the segments' `part` files once, front to back, into the page cache, before a scan that
        needs all of them. Edge evicts them when it opens a shard (`Memory.Cold`) and maps them for random
        access: without this, a scan of 500 000 payloads waited on ~80 000 single-page reads."""
        buffer = bytearray(1 << 20)
        for path in sorted(self.shard_dir.glob(f"segments/*/{part}/*")):
            with contextlib.suppress(OSError), open(path, "rb", buffering=0) as file:
                while file.readinto(buffer):
                    pass

    def _scroll(self, with_payload: bool):
        """Every record (no vectors), page by page: each page continues from the last one's offset."""
        shard = self._open("scroll")
        offset = None
        while True:
            with self._op("scroll"):
                records, offset = shard.scroll(self.edge.ScrollRequest(
                    offset=offset, limit=self.page_size, with_payload=with_payload, with_vector=False))
            yield from records
            if offset is None:
                return

    def _count(self) -> int:
        shard = self._open("count")
        with self._op("count"):
            return shard.count(self.edge.CountRequest(exact=True))

    def _drop(self) -> None:
        if not self.shard_dir.is_dir():
            return
        self._open("drop")  # holds the lock: no other process has the shard open
        shard, self._shard = self._shard, None
        try:
            with self._op("drop"):
                shard.close()
                shutil.rmtree(self.shard_dir)
                self._metadata_path.unlink(missing_ok=True)
        finally:
            self.close()  # releases the lock

    def export_snapshot(self, out: Path) -> dict:
        """Write the collection as a Qdrant shard snapshot (a tar of the shard folder: `segments/`,
        `wal/`, `edge_config.json`) to `out`, under the shard's lock, after a flush. A Qdrant server
        restores it into shard 0 of a collection with the same vectors (README: Moving to a server)."""
        shard = self._open("export snapshot")
        with self._op("export snapshot"):
            shard.flush()
            points = shard.count(self.edge.CountRequest(exact=True))
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            with tarfile.open(partial, "w") as archive:
                for entry in sorted(self.shard_dir.iterdir()):
                    archive.add(entry, arcname=entry.name)
            os.replace(partial, out)
        return {"collection": self.collection, "points": points, "snapshot": str(out), "bytes": out.stat().st_size}

    # ---- collection metadata: a small JSON file next to the shard ----------------------------
    @property
    def _metadata_path(self) -> Path:
        return self.folder / f"{self.collection}.json"

    def _owner(self) -> str | None:
        self._open("read owner")
        if not self._metadata_path.exists():
            return None
        return json.loads(self._metadata_path.read_text(encoding="utf-8")).get(OWNER_KEY)

    def _set_owner(self, owner: str) -> bool:
        self._open("set owner")
        tmp = self._metadata_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({OWNER_KEY: owner}), encoding="utf-8")
        os.replace(tmp, self._metadata_path)
        return True

    def sibling(self, collection: str, layout: Layout) -> "Sink":
        """Another collection of the same store: its own shard and lock, released by its own close()."""
        other = QdrantEdgeSink(collection, layout, path=self.path, batch_size=self.batch_size, page_size=self.page_size)
        other.retry = self.retry
        return other

    def _build_or_warn(self, when: str) -> None:
        """build_indexes(), where its failure must not fail what called it: the points are written and
        flushed, a search scans the ones not indexed, and the next build (at close, or the next sync
        that writes) indexes them."""
        try:
            self.build_indexes()
        except TerminalError as err:
            log.warning("Qdrant Edge: %s did not build the indexes of %d points (%s); searches scan them until "
                        "the next build (at the end of this sync, or the next sync that writes)",
                        when, self._unindexed, err)

    def close(self) -> None:
        """Build the indexes of what this sink wrote (the end of a sync), close the shard, release
        its lock (even when the build fails: see _build_or_warn). Safe to call twice."""
        if self._wrote:
            self._build_or_warn("the end of the writes")
        shard, self._shard = self._shard, None
        lock, self._lock = self._lock, None
        try:
            if shard is not None:
                with self._op("close"):
                    shard.close()
        finally:
            if lock is not None:
                lock.__exit__()

