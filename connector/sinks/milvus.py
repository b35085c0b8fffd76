"""Milvus sink: Milvus Lite in a local `.db` path, or a Milvus server (`http://host:19530` + token).

The layout becomes an explicit schema: `id` VARCHAR(64) primary key (UUID strings), `dense`
FLOAT_VECTOR(dim) with a COSINE index, `sparse` SPARSE_FLOAT_VECTOR with a
SPARSE_INVERTED_INDEX (IP), and one scalar column per payload field (text/keyword ->
VARCHAR, int -> INT64, json -> JSON), with an INVERTED index on fields marked `index: true`
(doc_id). pymilvus is imported lazily, so that a missing extra is reported cleanly.

Milvus Lite 3.x quirks this module works around (checked against milvus-lite 3.2.2):
- It refuses a sparse row without a nonzero weight ("sparse vector must contain at least one
  nonzero float32 weight"), while bge-m3 gives an empty sparse vector for an empty text. An
  empty sparse vector is therefore stored as one reserved dimension, EMPTY_SPARSE_DIM
  (2**32 - 2, the largest id Milvus accepts; bge-m3 ids are < 250002), and that dimension is
  removed again on every read. No query ever holds that id, so it never adds to a score;
  an empty *query* returns no hits without asking the store (see Sink.search).
- It accepts the INVERTED scalar index on VARCHAR, so doc_id is indexed on Lite too.
- count(*) with consistency_level="Strong" is exact right after an upsert or delete (no flush
  needed); get_collection_stats is not used because on a server it counts deleted rows until
  compaction.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlparse

import numpy as np

from connector.config import MilvusSinkConfig, secret_from_env
from connector.errors import (
    BatchTooLargeError,
    ConfigError,
    ConnectorError,
    MissingExtraError,
    StoreError,
    TerminalError,
    TransientError,
)
from connector.locations import check_server_url, is_milvus_server_uri
from connector.records import Hit, Point, SparseVector
from connector.schemas_layout import Layout
from connector.sinks.base import (
    OWNER_KEY,
    TRANSIENT_GRPC_CODES,
    CollectionInfo,
    Sink,
    grpc_code_name,
    is_too_large,
    redact,
)

ID_FIELD = "id"
ID_MAX_LENGTH = 64
EMPTY_SPARSE_DIM = 2**32 - 2
EMPTY_SPARSE_WEIGHT = 1e-6
CONSISTENCY = "Strong"  # reads see every write the store confirmed before them
METRICS = {"cosine": "COSINE", "dot": "IP", "ip": "IP", "euclid": "L2", "l2": "L2"}

# pymilvus status codes worth retrying (pymilvus.client.types.Status.CONNECT_FAILED,
# pymilvus.exceptions.ErrorCode.RATE_LIMIT)
_CONNECT_FAILED = 2
_RATE_LIMIT = 8

# Milvus Lite runs in-process, one server per .db path shared by every client of that path;
# the sinks count their users so the last close() releases the path's lock.
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def require_pymilvus(lite: bool = False):
    """Import pymilvus (and milvus-lite for a .db path), or raise MissingExtraError."""
    try:
        import pymilvus
    except ImportError:
        raise MissingExtraError("pymilvus", "milvus", "The Milvus sink") from None
    if lite:
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise MissingExtraError("milvus-lite", "milvus", "The Milvus sink with a local .db file") from None
    return pymilvus


def translate_milvus_error(
    err: BaseException, collection: str, operation: str, secrets: Sequence[str | None] = ()
) -> StoreError:
    """Turn a pymilvus (or grpc) exception into TransientError or TerminalError.

    Transient: connection failures (pymilvus CONNECT_FAILED), rate limiting, errors the server
    marks retriable, gRPC UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED / ABORTED,
    OS-level connection errors and timeouts. Everything else is terminal. The message names
    the collection and the operation and never carries the token.
    """
    if isinstance(err, StoreError):
        return err
    code = getattr(err, "code", None)
    code = code if isinstance(code, int) else None
    reason = getattr(err, "message", None) or str(err)
    type_names = {t.__name__ for t in type(err).__mro__}
    if is_too_large(err):
        message = f"Milvus {operation} on collection '{collection}' was refused as too large: {reason}"
        return BatchTooLargeError(redact(" ".join(message.split())[:700] + ". Lower sink.batch_size.", secrets))
    transient = (
        grpc_code_name(err) in TRANSIENT_GRPC_CODES
        or code in (_CONNECT_FAILED, _RATE_LIMIT)
        or bool(getattr(err, "retriable", False))
        or "MilvusUnavailableException" in type_names
        or isinstance(err, (ConnectionError, TimeoutError))
    )
    if transient:
        hint = "The store may be down, restarting or overloaded; trying again later can succeed."
    elif "open local milvus failed" in reason.lower():
        hint = (
            "Milvus Lite could not open the .db path: another process may be using it (one process per "
            "file), or the path is not writable. Close the other user, or use a Milvus server."
        )
    elif grpc_code_name(err) in ("UNAUTHENTICATED", "PERMISSION_DENIED") or any(
        word in reason.lower() for word in ("auth", "token", "password", "privilege", "permission")
    ):
        hint = "Check the token (the environment variable named by sink.token_env)."
    else:
        hint = "Retrying will not help: fix the request, the config or the collection."
    detail = f"{type(err).__name__}: " + (f"(code={code}) " if code is not None else "") + reason
    detail = " ".join(detail.split())[:600]
    message = redact(f"Milvus {operation} on collection '{collection}' failed: {detail}. {hint}", secrets)
    return (TransientError if transient else TerminalError)(message)


class MilvusSink(Sink):
    """A Milvus collection, in Milvus Lite (`uri` ending in .db) or on a server (`uri` + token)."""

    def __init__(
        self,
        collection: str,
        layout: Layout,
        *,
        uri: str,
        token: str | None = None,
        batch_size: int = 64,
        timeout: float = 30.0,
        page_size: int | None = None,
    ):
        super().__init__(collection, batch_size, layout, page_size)
        self.is_server = is_milvus_server_uri(uri)
        if self.is_server:
            try:
                check_server_url(uri, "http://localhost:19530")
            except ValueError as err:
                raise ConfigError(f"sink.uri: {err}") from None
        else:
            if not uri.endswith(".db"):
                raise ConfigError(
                    f"sink.uri {uri!r}: a Milvus Lite path must end in .db (e.g. ./milvus.db); "
                    "a server URI starts with http://, https://, tcp:// or unix:"
                )
            uri = str(Path(uri).expanduser().resolve())
        self._pymilvus = require_pymilvus(lite=not self.is_server)
        # pymilvus logs every failed call with a traceback, and harmless iterator warnings; the
        # connector reports the (translated, secret-free) error itself.
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        self.uri = uri
        self._token = token
        self.timeout = timeout
        self._client = None
        self._loaded = False
        self._partial_updates = True  # payload-only updates by partial upsert (Milvus 2.6+, Lite 3)

    @classmethod
    def from_config(cls, config: MilvusSinkConfig, layout: Layout) -> "MilvusSink":
        token = secret_from_env(config.token_env, "Milvus sink (sink.token_env)")
        return cls(
            config.collection,
            layout,
            uri=config.uri,
            token=token,
            batch_size=config.batch_size,
            timeout=config.timeout,
        )

    # ---- plumbing --------------------------------------------------------------------
    def _secrets(self) -> list[str | None]:
        secrets = [self._token]
        if self.is_server and "://" in self.uri:
            parsed = urlparse(self.uri)
            secrets += [parsed.password, f"{parsed.username}:{parsed.password}" if parsed.password else None]
        return secrets

    @contextmanager
    def _op(self, operation: str):
        """Run a vendor call; translate its exceptions into the connector's error tree."""
        try:
            yield
        except ConnectorError:
            raise
        except Exception as err:  # noqa: BLE001 - translation is the point
            error = translate_milvus_error(err, self.collection, operation, self._secrets())
            if isinstance(error, TransientError):
                # pymilvus may leave the connection closed after a failed reconnect: start afresh
                # on the next call, so a retry reaches a server that came back.
                self._discard_client()
            raise error from err

    def _discard_client(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the connection is already broken
            self._client = None

    @property
    def client(self):
        """The MilvusClient, created on first use (for Lite this starts the in-process server)."""
        if self._client is None:
            with self._op("connect"):
                if not self.is_server:
                    Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
                # dedicated: this sink's own channel, closed by close(). A shared one (the default)
                # outlives its clients and stays broken once the server went away.
                self._client = self._pymilvus.MilvusClient(
                    uri=self.uri, token=self._token or "", timeout=self.timeout, dedicated=True
                )
            if not self.is_server:
                with _lite_lock:
                    _lite_users[self.uri] = _lite_users.get(self.uri, 0) + 1
        return self._client

    def _ensure_loaded(self, operation: str) -> None:
        # A server only searches and queries a loaded collection; load it once per sink.
        if self._loaded:
            return
        with self._op(operation):
            state = self.client.get_load_state(self.collection, timeout=self.timeout).get("state")
            if getattr(state, "name", str(state)) != "Loaded":
                self.client.load_collection(self.collection, timeout=self.timeout)
        self._loaded = True

    def _payload_names(self) -> list[str]:
        return [f.name for f in self.layout.fields]

    def _metric(self, name: str = "dense") -> str:
        spec = next((v for v in self.layout.vectors if v.name == name), None)
        return METRICS[((spec.distance if spec else None) or "cosine").lower()]

    # ---- primitives --------------------------------------------------------------------
    def _describe(self) -> CollectionInfo | None:
        if not self.is_server and self._client is None and not Path(self.uri).exists():
            return None  # opening Milvus Lite would create the file
        DataType = self._pymilvus.DataType
        with self._op("describe"):
            if not self.client.has_collection(self.collection, timeout=self.timeout):
                return None
            desc = self.client.describe_collection(self.collection, timeout=self.timeout)
        vectors: dict[str, str] = {}
        fields: set[str] = set()
        problems: list[str] = []
        dense_size = None
        dense_sizes: dict[str, int] = {}
        primary = None
        for f in desc["fields"]:
            dtype = f["type"]
            if dtype == DataType.FLOAT_VECTOR:
                vectors[f["name"]] = "dense"
                dense_sizes[f["name"]] = int(f.get("params", {}).get("dim", 0))
                if f["name"] == "dense":
                    dense_size = int(f.get("params", {}).get("dim", 0)) or None
            elif dtype == DataType.SPARSE_FLOAT_VECTOR:
                vectors[f["name"]] = "sparse"
            elif "VECTOR" in getattr(dtype, "name", ""):
                vectors[f["name"]] = dtype.name.lower()  # e.g. float16_vector: neither dense nor sparse
            else:
                fields.add(f["name"])
            if f.get("is_primary"):
                primary = f
        if primary is None or primary["name"] != ID_FIELD or primary["type"] != DataType.VARCHAR:
            got = f"'{primary['name']}' {getattr(primary['type'], 'name', primary['type'])}" if primary else "none"
            problems.append(f"primary key is {got}, expected '{ID_FIELD}' VARCHAR")
        dense_distance = None
        if vectors.get("dense") == "dense":
            with self._op("describe index"):
                names = self.client.list_indexes(self.collection, field_name="dense", timeout=self.timeout)
                if names:
                    index = self.client.describe_index(self.collection, names[0], timeout=self.timeout)
                    metric = str(index.get("metric_type", "")).upper()
                    dense_distance = {"COSINE": "cosine", "IP": "dot", "L2": "euclid"}.get(metric, metric.lower())
        self._ensure_loaded("describe")
        return CollectionInfo(
            name=self.collection,
            dense_size=dense_size,
            vectors=vectors,
            fields=fields,
            count=self._count(),
            dense_distance=dense_distance,
            dense_sizes=dense_sizes,
            problems=problems,
        )

    def _create(self, sizes: dict[str, int]) -> None:
        DataType = self._pymilvus.DataType
        schema = self._pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        index = self._pymilvus.MilvusClient.prepare_index_params()
        for spec in self.layout.vectors:
            if spec.kind == "dense":
                schema.add_field(spec.name, DataType.FLOAT_VECTOR, dim=sizes[spec.name])
                metric = METRICS[(spec.distance or "cosine").lower()]
                index.add_index(field_name=spec.name, index_type="AUTOINDEX", metric_type=metric)
            elif spec.kind == "sparse":
                schema.add_field(spec.name, DataType.SPARSE_FLOAT_VECTOR)
                index.add_index(field_name=spec.name, index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
            else:
                raise TerminalError(f"layout '{self.layout.name}': unknown vector kind {spec.kind!r}")
        for field in self.layout.fields:
            if field.type in ("text", "keyword"):
                schema.add_field(field.name, DataType.VARCHAR, max_length=field.max_length or 65535)
            elif field.type == "int":
                schema.add_field(field.name, DataType.INT64)
            elif field.type == "json":
                schema.add_field(field.name, DataType.JSON)
            else:
                raise TerminalError(f"layout '{self.layout.name}': unknown field type {field.type!r}")
            if field.index and field.type != "json":  # a JSON index needs a path; none is declared
                index.add_index(field_name=field.name, index_type="INVERTED")
        with self._op("create"):
            self.client.create_collection(
                self.collection, schema=schema, consistency_level=CONSISTENCY, timeout=self.timeout
            )
            try:
                # sync=False: the server still validates each index request, but pymilvus does not
                # poll the build state (it sleeps 0.5 s per index first), and an empty collection
                # has nothing to build. Then load, which waits until the collection is loaded.
                self.client.create_index(self.collection, index, timeout=self.timeout, sync=False)
                self.client.load_collection(self.collection, timeout=self.timeout)
            except Exception:
                # An empty collection without its indexes is of no use: remove it, then report.
                try:
                    self.client.drop_collection(self.collection, timeout=self.timeout)
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
                raise
        self._loaded = True

    def _row(self, p: Point) -> dict:
        sparse = {int(i): float(v) for i, v in zip(p.sparse.indices, p.sparse.values)}
        if any(i >= EMPTY_SPARSE_DIM for i in sparse):
            raise TerminalError(
                f"Milvus upsert on collection '{self.collection}': point {p.id} has a sparse index >= "
                f"{EMPTY_SPARSE_DIM}, which Milvus reserves"
            )
        names = {v.name for v in self.layout.vectors}
        row = {name: _plain(p.payload[name]) for name in self._payload_names()}
        row[ID_FIELD] = str(p.id)
        for name in self.layout.dense_names:
            row[name] = np.asarray(p.dense if name == "dense" else p.extra[name], dtype=np.float32).tolist()
        if "sparse" in names:
            row["sparse"] = sparse or {EMPTY_SPARSE_DIM: EMPTY_SPARSE_WEIGHT}
        return row

    def _upsert(self, points: Sequence[Point]) -> None:
        rows = [self._row(p) for p in points]
        with self._op("upsert"):
            result = self.client.upsert(self.collection, rows, timeout=self.timeout)
        written = result.get("upsert_count") if isinstance(result, dict) else None
        if written is not None and written != len(rows):
            raise TransientError(
                f"Milvus upsert on collection '{self.collection}': the store confirmed {written} of "
                f"{len(rows)} rows; write the batch again"
            )

    def _set_payloads(self, items: Sequence[tuple[str, dict]]) -> None:
        if not self._partial_updates:
            super()._set_payloads(items)
            return
        rows = [{ID_FIELD: str(pid), **{name: _plain(payload[name]) for name in self._payload_names()}}
                for pid, payload in items]
        try:
            with self._op("set payload"):
                result = self.client.upsert(self.collection, rows, timeout=self.timeout, partial_update=True)
        except TerminalError:
            # A server without partial updates (before Milvus 2.6) takes the rows as whole rows and
            # refuses them for their missing vectors. The default (vectors read and written again)
            # works there; if it does, this server has no partial updates (else a point was missing).
            super()._set_payloads(items)
            self._partial_updates = False
            return
        written = result.get("upsert_count") if isinstance(result, dict) else None
        if written is not None and written != len(rows):
            raise TransientError(
                f"Milvus payload update on collection '{self.collection}': the store confirmed {written} of "
                f"{len(rows)} rows; write the batch again"
            )

    def _delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._op("delete"):
            self.client.delete(self.collection, ids=[str(i) for i in ids], timeout=self.timeout)

    def _search(self, operation: str, field: str, data, metric: str, limit: int) -> list[Hit]:
        self._ensure_loaded(operation)
        with self._op(operation):
            result = self.client.search(
                self.collection,
                data=[data],
                anns_field=field,
                limit=limit,
                output_fields=self._payload_names(),
                search_params={"metric_type": metric},
                consistency_level=CONSISTENCY,
                timeout=self.timeout,
            )
        return [Hit(id=str(h["id"]), score=float(h["distance"]), payload=dict(h["entity"])) for h in result[0]]

    def _search_dense(self, vector, limit: int, using: str = "dense") -> list[Hit]:
        query = np.asarray(vector, dtype=np.float32).tolist()
        return self._search("dense search", using, query, self._metric(using), limit)

    def _search_sparse(self, vector: SparseVector, limit: int) -> list[Hit]:
        query = {int(i): float(v) for i, v in zip(vector.indices, vector.values)}
        return self._search("sparse search", "sparse", query, "IP", limit)

    def _retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Point]:
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if not wanted:
            return []
        self._ensure_loaded("retrieve")
        vector_names = [v.name for v in self.layout.vectors]
        fields = [ID_FIELD, *self._payload_names()] + (vector_names if with_vectors else [])
        with self._op("retrieve"):
            rows = self.client.get(
                self.collection, ids=wanted, output_fields=fields, consistency_level=CONSISTENCY, timeout=self.timeout
            )
        by_id = {str(r[ID_FIELD]): r for r in rows}
        points = []
        for pid in wanted:
            row = by_id.get(pid)
            if row is None:
                continue
            dense = np.zeros(0, dtype=np.float32)
            sparse = SparseVector.empty()
            if with_vectors and row.get("dense") is not None:
                dense = np.asarray(row["dense"], dtype=np.float32)
            if with_vectors and row.get("sparse") is not None:
                sparse = _from_milvus_sparse(row["sparse"])
            extra = {n: np.asarray(row[n], dtype=np.float32) for n in self.layout.dense_names
                     if with_vectors and n != "dense" and row.get(n) is not None}
            payload = {name: row.get(name) for name in self._payload_names()}
            points.append(Point(id=pid, dense=dense, sparse=sparse, payload=payload, extra=extra))
        return points

    def iter_ids(self) -> Iterator[str]:
        self._ensure_loaded("iterate ids")
        with self._op("iterate ids"):
            iterator = self.client.query_iterator(
                self.collection,
                batch_size=self.page_size,
                filter="",
                output_fields=[ID_FIELD],
                consistency_level=CONSISTENCY,
                timeout=self.timeout,
            )
        try:
            while True:
                with self._op("iterate ids"):
                    page = iterator.next()
                if not page:
                    return
                for row in page:
                    yield str(row[ID_FIELD])
        finally:
            iterator.close()

    def _count(self) -> int:
        self._ensure_loaded("count")
        with self._op("count"):
            rows = self.client.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level=CONSISTENCY,
                timeout=self.timeout,
            )
        return int(rows[0]["count(*)"])

    def _drop(self) -> None:
        with self._op("drop"):
            self.client.drop_collection(self.collection, timeout=self.timeout)
        self._loaded = False

    def _owner(self) -> str | None:
        with self._op("read owner"):
            properties = self.client.describe_collection(self.collection, timeout=self.timeout).get("properties")
        return (properties or {}).get(OWNER_KEY)

    def _set_owner(self, owner: str) -> bool:
        with self._op("set owner"):
            self.client.alter_collection_properties(self.collection, properties={OWNER_KEY: owner},
                                                    timeout=self.timeout)
        return True

    def close(self) -> None:
        client, self._client = self._client, None
        self._loaded = False
        if client is None:
            return
        with self._op("close"):
            client.close()
        if not self.is_server:
            with _lite_lock:
                left = _lite_users.get(self.uri, 1) - 1
                if left > 0:
                    _lite_users[self.uri] = left
                    return
                _lite_users.pop(self.uri, None)
            from milvus_lite.server_manager import server_manager_instance

            with self._op("close"):
                server_manager_instance.release_server(self.uri)


def _plain(value):
    """numpy scalars -> Python scalars (pymilvus serialises only plain types)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_milvus_sparse(value) -> SparseVector:
    # pymilvus returns a sparse row as {index: weight}; drop the empty-row marker (see module doc).
    items = sorted((int(i), float(w)) for i, w in dict(value).items() if int(i) != EMPTY_SPARSE_DIM)
    if not items:
        return SparseVector.empty()
    idx, val = zip(*items)
    return SparseVector(np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=np.float32))
