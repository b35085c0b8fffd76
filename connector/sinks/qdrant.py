"""Qdrant sink: embedded Qdrant in a folder (`path`, local mode) or a Qdrant server (`url`).

The layout becomes named vectors (`dense`: size from the model, cosine) and a named sparse
vector (`sparse`); payload is schemaless, so the layout's fields only drive payload indexes.
qdrant-client is imported lazily, so that a missing extra is reported cleanly.
"""

from __future__ import annotations

import logging
import math
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from connector.config import QdrantSinkConfig, secret_from_env
from connector.errors import (
    BatchTooLargeError,
    ConnectorError,
    MissingExtraError,
    StoreError,
    TerminalError,
    TransientError,
)
from connector.records import Hit, Point, SparseVector
from connector.schemas_layout import Layout
from connector.sinks.base import (
    OWNER_KEY,
    TRANSIENT_GRPC_CODES,
    TRANSIENT_HTTP_STATUS,
    CollectionInfo,
    Sink,
    grpc_code_name,
    is_too_large,
    redact,
)

log = logging.getLogger("connector.sinks")

# Embedded Qdrant keeps every point in memory and searches them one by one: beyond this many
# points (qdrant-client's own LARGE_DATA_THRESHOLD) a server is the better home. qdrant-client
# says so with a warning on every open and upsert; the sink says it once, in its own words.
LOCAL_MODE_POINTS = 20_000
warnings.filterwarnings("ignore", message="Local mode is not recommended", category=UserWarning)

# layout distance -> qdrant models.Distance member
DISTANCES = {"cosine": "COSINE", "dot": "DOT", "euclid": "EUCLID", "l2": "EUCLID", "manhattan": "MANHATTAN"}
# layout field type -> qdrant models.PayloadSchemaType member
PAYLOAD_INDEX_TYPES = {"keyword": "KEYWORD", "text": "TEXT", "int": "INTEGER"}


def require_qdrant():
    """Import qdrant-client, or raise MissingExtraError naming the extra to install."""
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        raise MissingExtraError("qdrant-client", "qdrant", "The Qdrant sink") from None
    return QdrantClient, models


def translate_qdrant_error(
    err: BaseException, collection: str, operation: str, secrets: Sequence[str | None] = ()
) -> StoreError:
    """Turn a qdrant-client (or httpx / grpc / local-mode) exception into TransientError or TerminalError.

    Transient: connection refused/reset, timeouts, HTTP 408/429/502/503/504, gRPC UNAVAILABLE,
    DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED. Everything else is terminal. The message
    names the collection and the operation and never carries a secret.
    """
    if isinstance(err, StoreError):
        return err
    transient = False
    hint = "Retrying will not help: fix the request, the config or the collection."
    detail = f"{type(err).__name__}: {err}"

    status = getattr(err, "status_code", None)  # qdrant_client.http.exceptions.UnexpectedResponse
    source = getattr(err, "source", None)  # ResponseHandlingException wraps the httpx error
    if is_too_large(err, status if isinstance(status, int) else None):
        message = f"Qdrant {operation} on collection '{collection}' was refused as too large: {detail}"
        return BatchTooLargeError(redact(" ".join(message.split())[:700] + ". Lower sink.batch_size.", secrets))
    type_names = {t.__name__ for t in type(err).__mro__}
    if "ResourceExhaustedResponse" in type_names:
        transient = True
    elif isinstance(status, int):
        transient = status in TRANSIENT_HTTP_STATUS
        if status in (401, 403):
            hint = "Check the API key (the environment variable named by sink.api_key_env)."
    elif source is not None and "ResponseHandlingException" in type_names:
        detail = f"{type(source).__name__}: {source}"
        transient = _is_network_error(source)
    elif grpc_code_name(err) is not None:
        code = grpc_code_name(err)
        transient = code in TRANSIENT_GRPC_CODES
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            hint = "Check the API key (the environment variable named by sink.api_key_env)."
    elif _is_network_error(err):
        transient = True
    elif isinstance(err, RuntimeError) and "already accessed by another instance" in str(err):
        hint = (
            "The embedded Qdrant folder is open in another process or by another sink; close that one "
            "first, or use a Qdrant server (sink.url) for concurrent access."
        )
    if transient:
        hint = "The store may be down, restarting or overloaded; trying again later can succeed."
    detail = " ".join(detail.split())[:600]
    message = redact(f"Qdrant {operation} on collection '{collection}' failed: {detail}. {hint}", secrets)
    return (TransientError if transient else TerminalError)(message)


def _is_network_error(err: BaseException) -> bool:
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    # httpx.TransportError covers ConnectError, ReadError, timeouts, RemoteProtocolError ...
    return any(t.__name__ in ("TransportError", "TimeoutException") for t in type(err).__mro__)


def _canonical_id(point_id: str) -> str:
    # Qdrant answers with the canonical (lower-case, hyphenated) form of a UUID id.
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        return str(point_id)


class QdrantSink(Sink):
    """A Qdrant collection; embedded (`path`) or on a server (`url` + optional API key)."""

    def __init__(
        self,
        collection: str,
        layout: Layout,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        batch_size: int = 64,
        timeout: float = 30.0,
        page_size: int | None = None,
    ):
        super().__init__(collection, batch_size, layout, page_size)
        if (path is None) == (url is None):
            raise ValueError("QdrantSink needs exactly one of path (embedded) or url (server)")
        self._client_cls, self.models = require_qdrant()
        self.path = Path(path) if path is not None else None
        self.url = url
        self._api_key = api_key
        self.timeout = timeout
        self._client = None
        self._points_bound: int | None = None  # embedded: at least the collection's points (see _say_if_large)
        self._said_large = False

    @classmethod
    def from_config(cls, config: QdrantSinkConfig, layout: Layout) -> "Sink":
        """A server or local-mode QdrantSink, or for an embedded Edge store (the default for a new
        folder, see qdrant_edge.resolve_engine) a QdrantEdgeSink."""
        if config.path is not None:
            from connector.sinks.qdrant_edge import EDGE, QdrantEdgeSink, resolve_engine

            engine = resolve_engine(config.path, config.engine)
            if engine == EDGE:
                return QdrantEdgeSink(config.collection, layout, path=config.path, batch_size=config.batch_size)
            if config.engine is None:
                _note_local_mode(config.path)
        api_key = secret_from_env(config.api_key_env, "Qdrant sink (sink.api_key_env)")
        return cls(
            config.collection,
            layout,
            path=config.path,
            url=config.url,
            api_key=api_key,
            batch_size=config.batch_size,
            timeout=config.timeout,
        )

    @property
    def is_local(self) -> bool:
        return self.path is not None

    # ---- plumbing --------------------------------------------------------------------
    @contextmanager
    def _op(self, operation: str):
        """Run a vendor call; translate its exceptions into the connector's error tree."""
        try:
            yield
        except ConnectorError:
            raise
        except Exception as err:  # noqa: BLE001 - translation is the point
            raise translate_qdrant_error(err, self.collection, operation, [self._api_key]) from err

    @property
    def client(self):
        """The qdrant-client, created on first use (embedded mode takes the folder's lock here)."""
        if self._client is None:
            with self._op("connect"):
                if self.is_local:
                    self.path.mkdir(parents=True, exist_ok=True)
                    self._client = self._client_cls(path=str(self.path))
                else:
                    self._client = self._client_cls(
                        url=self.url,
                        api_key=self._api_key,
                        timeout=max(1, math.ceil(self.timeout)),
                        check_compatibility=False,  # no network call in the constructor
                    )
        return self._client

    # ---- primitives --------------------------------------------------------------------
    def _describe(self) -> CollectionInfo | None:
        if self.is_local and self._client is None and not self.path.exists():
            return None  # opening embedded Qdrant would create the folder
        with self._op("describe"):
            if not self.client.collection_exists(self.collection):
                return None
            params = self.client.get_collection(self.collection).config.params
            count = self.client.count(self.collection, exact=True).count
        vectors: dict[str, str] = {}
        dense_sizes: dict[str, int] = {}
        dense_size = None
        dense_distance = None
        problems = []
        if isinstance(params.vectors, dict):
            for name, spec in params.vectors.items():
                vectors[name] = "dense"
                dense_sizes[name] = spec.size
                if name == "dense":
                    dense_size = spec.size
                    dense_distance = _distance_name(spec.distance)
        elif params.vectors is not None:
            problems.append("the collection has one unnamed vector; the layout needs named vectors")
        for name in params.sparse_vectors or {}:
            vectors[name] = "sparse"
        return CollectionInfo(
            name=self.collection,
            dense_size=dense_size,
            vectors=vectors,
            fields=set(),  # Qdrant payload is schemaless
            count=count,
            dense_distance=dense_distance,
            dense_sizes=dense_sizes,
            problems=problems,
        )

    def _create(self, sizes: dict[str, int]) -> None:
        m = self.models
        dense, sparse = {}, {}
        for spec in self.layout.vectors:
            if spec.kind == "dense":
                distance = getattr(m.Distance, DISTANCES[(spec.distance or "cosine").lower()])
                dense[spec.name] = m.VectorParams(size=sizes[spec.name], distance=distance)
            elif spec.kind == "sparse":
                sparse[spec.name] = m.SparseVectorParams()
            else:
                raise TerminalError(f"layout '{self.layout.name}': unknown vector kind {spec.kind!r}")
        with self._op("create"):
            self.client.create_collection(self.collection, vectors_config=dense, sparse_vectors_config=sparse)
            for field in self.layout.fields:
                if field.index and field.type in PAYLOAD_INDEX_TYPES:
                    schema = getattr(m.PayloadSchemaType, PAYLOAD_INDEX_TYPES[field.type])
                    with warnings.catch_warnings():
                        # Local mode warns that payload indexes have no effect there; harmless.
                        warnings.simplefilter("ignore", UserWarning)
                        self.client.create_payload_index(self.collection, field.name, field_schema=schema, wait=True)

    def _upsert(self, points: Sequence[Point]) -> None:
        m = self.models
        names = {v.name for v in self.layout.vectors}
        dense_names = self.layout.dense_names

        def vectors(p: Point) -> dict:
            out = {}
            for name in dense_names:
                out[name] = np.asarray(p.dense if name == "dense" else p.extra[name], dtype=np.float32).tolist()
            if "sparse" in names:
                out["sparse"] = m.SparseVector(
                    indices=[int(i) for i in p.sparse.indices], values=[float(v) for v in p.sparse.values]
                )
            return out

        structs = [m.PointStruct(id=_canonical_id(p.id), vector=vectors(p), payload=p.payload) for p in points]
        with self._op("upsert"):
            result = self.client.upsert(self.collection, points=structs, wait=True)
        if result.status != m.UpdateStatus.COMPLETED:
            raise TransientError(
                f"Qdrant upsert on collection '{self.collection}' was not confirmed (status {result.status}); "
                "write it again."
            )
        if self.is_local:
            self._say_if_large(len(structs))

    def _set_payloads(self, items: Sequence[tuple[str, dict]]) -> None:
        # one request: an overwrite-payload operation per point (each point its own payload)
        m = self.models
        operations = [m.OverwritePayloadOperation(overwrite_payload=m.SetPayload(payload=payload,
                                                                                 points=[_canonical_id(pid)]))
                      for pid, payload in items]
        with self._op("set payload"):
            result = self.client.batch_update_points(self.collection, update_operations=operations, wait=True)
        if any(r.status != m.UpdateStatus.COMPLETED for r in result):
            raise TransientError(
                f"Qdrant payload update on collection '{self.collection}' was not confirmed; write it again."
            )

    def _say_if_large(self, written: int) -> None:
        """Log once when the embedded collection holds more than LOCAL_MODE_POINTS points. The
        count is taken after the first upsert and again whenever it may have crossed the limit
        (count + points written since, an upper bound as upserts may overwrite)."""
        if self._said_large:
            return
        if self._points_bound is not None and self._points_bound + written <= LOCAL_MODE_POINTS:
            self._points_bound += written
            return
        with self._op("count"):
            self._points_bound = self.client.count(self.collection, exact=True).count
        if self._points_bound > LOCAL_MODE_POINTS:
            self._said_large = True
            log.warning(
                "embedded Qdrant in %s holds %d points in collection '%s'; beyond %d local mode keeps slowing down "
                "(every point in memory, searched one by one). For a collection this size sync into Qdrant Edge "
                "(a new sink.path, no engine: local-mode) or run a Qdrant server and point sink.url at it "
                "(README: Servers and stores).",
                self.path, self._points_bound, self.collection, LOCAL_MODE_POINTS,
            )

    def _delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._op("delete"):
            self.client.delete(
                self.collection,
                points_selector=self.models.PointIdsList(points=[_canonical_id(i) for i in ids]),
                wait=True,
            )

    def _search_dense(self, vector, limit: int, using: str = "dense") -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).tolist()
        with self._op("dense search"):
            result = self.client.query_points(
                self.collection, query=query, using=using, limit=limit, with_payload=True
            )
        return [Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in result.points]

    def _search_sparse(self, vector: SparseVector, limit: int) -> list[Hit]:
        query = self.models.SparseVector(
            indices=[int(i) for i in vector.indices], values=[float(v) for v in vector.values]
        )
        with self._op("sparse search"):
            result = self.client.query_points(
                self.collection, query=query, using="sparse", limit=limit, with_payload=True
            )
        return [Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in result.points]

    def _retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Point]:
        wanted = list(dict.fromkeys(_canonical_id(i) for i in ids))
        if not wanted:
            return []
        with self._op("retrieve"):
            records = self.client.retrieve(
                self.collection,
                ids=wanted,
                with_payload=True,
                with_vectors=[v.name for v in self.layout.vectors] if with_vectors else False,
            )
        by_id = {str(r.id): r for r in records}
        points = []
        for pid in wanted:
            record = by_id.get(pid)
            if record is None:
                continue
            dense = np.zeros(0, dtype=np.float32)
            sparse = SparseVector.empty()
            extra = {}
            if with_vectors:
                vectors = record.vector or {}
                if vectors.get("dense") is not None:
                    dense = np.asarray(vectors["dense"], dtype=np.float32)
                extra = {n: np.asarray(vectors[n], dtype=np.float32) for n in self.layout.dense_names
                         if n != "dense" and vectors.get(n) is not None}
                if vectors.get("sparse") is not None:  # a server may leave out an empty sparse vector
                    sparse = _to_sparse(vectors["sparse"].indices, vectors["sparse"].values)
            points.append(Point(id=pid, dense=dense, sparse=sparse, payload=record.payload or {}, extra=extra))
        return points

    def iter_ids(self) -> Iterator[str]:
        offset = None
        while True:
            with self._op("scroll"):
                records, offset = self.client.scroll(
                    self.collection, limit=self.page_size, offset=offset, with_payload=False, with_vectors=False
                )
            for record in records:
                yield str(record.id)
            if offset is None:
                return

    def _count(self) -> int:
        with self._op("count"):
            return self.client.count(self.collection, exact=True).count

    def _drop(self) -> None:
        with self._op("drop"):
            self.client.delete_collection(self.collection)

    def _owner(self) -> str | None:
        with self._op("read owner"):
            metadata = self.client.get_collection(self.collection).config.metadata
        return (metadata or {}).get(OWNER_KEY)

    def _set_owner(self, owner: str) -> bool:
        with self._op("set owner"):
            self.client.update_collection(self.collection, metadata={OWNER_KEY: owner})
        return True

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with self._op("close"):
                client.close()  # releases the embedded folder's lock


_noted: set[Path] = set()


def _note_local_mode(path: Path) -> None:
    if path not in _noted:
        _noted.add(path)
        log.warning("sink.path %s holds a Qdrant local-mode store: kept on local mode (`engine: local-mode` says so "
                    "and silences this); a new folder gets Qdrant Edge, much faster beyond ~20 000 points "
                    "(README: Servers and stores).", path)


def _distance_name(distance) -> str:
    value = getattr(distance, "value", distance)
    return {"Cosine": "cosine", "Dot": "dot", "Euclid": "euclid", "Manhattan": "manhattan"}.get(value, str(value).lower())


def _to_sparse(indices, values) -> SparseVector:
    idx = np.asarray(indices, dtype=np.int64)
    val = np.asarray(values, dtype=np.float32)
    order = np.argsort(idx, kind="stable")
    return SparseVector(idx[order], val[order])
