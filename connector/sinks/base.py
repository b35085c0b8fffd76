"""The Sink extension point: one base class for every vector store.

Batching and hybrid fusion live here, once; a backend implements the small `_`-prefixed
primitives and translates its vendor's exceptions into TransientError / TerminalError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

import copy
import dataclasses
import itertools
import logging

from connector.errors import BatchTooLargeError, TerminalError
from connector.records import Hit, Point, SparseVector
from connector.schemas_layout import Layout

if TYPE_CHECKING:
    from connector.retry import RetryPolicy

log = logging.getLogger("connector.sinks")
T = TypeVar("T")

RRF_K = 60
OWNER_KEY = "connector_owner"  # collection metadata: the owner id of the state dir that writes it, or "shared"


@dataclass
class CollectionInfo:
    """What a store says about an existing collection, in layout terms."""

    name: str
    dense_size: int | None  # size of the 'dense' vector, None if missing
    vectors: dict[str, str]  # vector name -> kind ('dense' or 'sparse')
    fields: set[str]  # payload fields the collection declares (empty if schemaless)
    count: int
    dense_distance: str | None = None  # 'cosine', 'dot', 'euclid', ... if the store says
    dense_sizes: dict[str, int] = field(default_factory=dict)  # every dense vector's size
    problems: list[str] = field(default_factory=list)  # backend-specific mismatches (e.g. primary key)


class Sink(ABC):
    """A vector store collection the connector writes points into.

    Plugin contract (entry-point group `connector.sinks`, as the built-ins `qdrant` and `milvus`):
    the entry point's name is the config's `sink.type`, its value a subclass with a classmethod
    `from_config(config, layout) -> Sink` (`make_sink` sets `retry` on the result). A plugin's
    type gets a `connector.config.PluginSinkConfig`: `config.type`, `config.collection` (default
    'chunks'), `config.options` (every other field, as written) and `config.base_dir` (the config
    file's folder). `from_config` must not connect: the sink connects on its first call.
    """

    page_size = 1000  # points per page in iter_ids and iter_payloads
    retry: "RetryPolicy | None" = None  # set by make_sink; None calls the store once

    def __init__(self, collection: str, batch_size: int, layout: Layout, page_size: int | None = None):
        self.collection = collection
        self.batch_size = batch_size
        self.layout = layout
        if page_size is not None:
            self.page_size = page_size

    # ---- primitives each backend implements -------------------------------------------
    @abstractmethod
    def _describe(self) -> CollectionInfo | None:
        """The existing collection, or None if it does not exist."""

    @abstractmethod
    def _create(self, sizes: dict[str, int]) -> None:
        """Create the collection from `self.layout`; `sizes` gives each dense vector's size."""

    @abstractmethod
    def _upsert(self, points: Sequence[Point]) -> None:
        """Write one batch; return only when the store confirmed it."""

    @abstractmethod
    def _delete(self, ids: Sequence[str]) -> None:
        """Delete one batch of ids (ids that do not exist are ignored)."""

    def _set_payloads(self, items: Sequence[tuple[str, dict]]) -> None:
        """Overwrite the payloads of one batch of existing points, their vectors untouched.

        This default reads the points with their vectors and upserts them again with the new
        payloads: correct on every store, but it sends the vectors twice. Backends override it
        with their store's payload-only call. A point that does not exist is an error."""
        payloads = dict(items)
        points = self._retrieve(list(payloads), True)
        missing = sorted(set(payloads) - {p.id for p in points})
        if missing:
            raise TerminalError(
                f"payload update on collection '{self.collection}': {len(missing)} point(s) do not exist "
                f"(e.g. {missing[0]}); run `connector verify --repair` to rewrite them"
            )
        self._upsert([dataclasses.replace(p, payload=payloads[p.id]) for p in points])

    @abstractmethod
    def _search_dense(self, vector, limit: int, using: str = "dense") -> list[Hit]: ...

    @abstractmethod
    def _search_sparse(self, vector: SparseVector, limit: int) -> list[Hit]: ...

    @abstractmethod
    def _retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Point]:
        """Points by id (missing ids are left out). Vectors are only filled if asked."""

    @abstractmethod
    def iter_ids(self) -> Iterator[str]:
        """Every point id in the collection, each exactly once, page by page."""

    def iter_payloads(self) -> Iterator[tuple[str, dict]]:
        """Every point's (id, payload), each point exactly once, in one pass over the collection in the
        store's order, page by page.

        This default pages `iter_ids` and retrieves each page (one more store call per page); the
        built-in backends override it with one scan that returns the payloads."""
        ids = self.iter_ids()
        while page := list(itertools.islice(ids, self.page_size)):
            for point in self._retrieve(page):
                yield point.id, point.payload

    @abstractmethod
    def _count(self) -> int: ...

    @abstractmethod
    def _drop(self) -> None:
        """Delete the whole collection (tests and `schema --recreate`)."""

    def _owner(self) -> str | None:
        """The OWNER_KEY value in the collection's metadata, or None (not recorded, or the store keeps
        no collection metadata). Backends that keep metadata override this and `_set_owner`."""
        return None

    def _set_owner(self, owner: str) -> bool:
        """Record OWNER_KEY in the collection's metadata; False when the store cannot keep it."""
        return False

    def close(self) -> None:
        """Release the client (embedded stores hold a file lock). Safe to call twice."""

    def sibling(self, collection: str, layout: Layout) -> "Sink":
        """Another collection of the same store, on this sink's connection (an embedded store allows
        one client per folder). Only the original's close() releases the connection."""
        self.client  # noqa: B018 - connect first, so that both share one client
        other = copy.copy(self)
        other.collection, other.layout = collection, layout
        if hasattr(other, "_loaded"):
            other._loaded = False  # per collection
        other.close = lambda: None  # the connection belongs to the original
        return other

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- shared behaviour: every store call goes through the retry policy ------------------
    def _call(self, operation: str, fn, *args, **kwargs):
        if self.retry is None:
            return fn(*args, **kwargs)
        return self.retry.call(f"{operation} on collection '{self.collection}'", fn, *args, **kwargs)

    def describe(self) -> CollectionInfo | None:
        """The existing collection, or None if it does not exist. Creates nothing: an embedded
        store whose folder or file does not exist yet is not opened."""
        return self._call("describe", self._describe)

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Point]:
        """Points by id (missing ids are left out). Vectors are only filled if asked."""
        return self._call("retrieve", self._retrieve, list(ids), with_vectors)

    def count(self) -> int:
        return self._call("count", self._count)

    def owner(self) -> str | None:
        """Who writes the collection (see connector.ownership)."""
        return self._call("read owner", self._owner)

    def set_owner(self, owner: str) -> bool:
        return self._call("set owner", self._set_owner, owner)

    def probe(self) -> None:
        """One small request, tried once (no retries): raises TransientError while the store is down."""
        self._count()

    def drop(self) -> None:
        """Delete the whole collection (tests and `schema --recreate`)."""
        self._call("drop", self._drop)

    def all_ids(self) -> set[str]:
        """Every point id, read in one scan (retried from the start if the scan fails)."""
        return self._call("scan ids", lambda: set(self.iter_ids()))

    def scan_payloads(self, consume: Callable[[Iterator[tuple[str, dict]]], T]) -> T:
        """`consume(iter_payloads())`: every point's (id, payload) in one pass, fed to `consume`, whose
        result is returned. If the scan fails, it is retried from the start with a new `consume` call."""
        return self._call("scan points", lambda: consume(self.iter_payloads()))

    def ensure_collection(self, dense_size: int | None, projection_size: int | None = None) -> bool:
        """Create the collection if missing, else check it matches the layout. `dense_size` is the
        model's vector size, `projection_size` the legacy size k (for layouts that hold one).

        Returns True if it was created. Raises SchemaMismatchError, and writes nothing,
        when an existing collection differs (vector size, vector kind, missing field).
        """
        sizes = self.layout.sizes(dense_size, projection_size)
        info = self.describe()
        if info is None:
            self._call("create", self._create, sizes)
            return True
        self.layout.check(info, sizes)
        return False

    def upsert(self, points: Sequence[Point]) -> None:
        """Write points in batches of `batch_size`; returns when the store confirmed every batch.

        Every payload must hold exactly the layout's fields (TerminalError otherwise, before
        anything of that batch is written). A batch the store rejects as too large is split
        in halves, down to single points."""
        points = list(points)
        for point in points:
            self.check_payload(point)
        for start in range(0, len(points), self.batch_size):
            self._upsert_splitting(points[start : start + self.batch_size])

    def _upsert_splitting(self, batch: list[Point]) -> None:
        try:
            self._call("upsert", self._upsert, batch)
        except BatchTooLargeError:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            log.warning("upsert of %d points was too large for the store: splitting it in halves", len(batch))
            self._upsert_splitting(batch[:half])
            self._upsert_splitting(batch[half:])

    def check_payload(self, point: Point) -> None:
        """Raise TerminalError when a payload's keys differ from the layout's fields."""
        expected = {f.name for f in self.layout.fields}
        keys = set(point.payload)
        if keys != expected:
            parts = []
            if expected - keys:
                parts.append(f"missing {sorted(expected - keys)}")
            if keys - expected:
                parts.append(f"unknown {sorted(keys - expected)}")
            raise TerminalError(
                f"upsert into collection '{self.collection}': point {point.id} has a payload that does not "
                f"match the '{self.layout.name}' layout ({'; '.join(parts)}). Put extra data under 'metadata'."
            )

    def set_payloads(self, items: Sequence[tuple[str, dict]]) -> None:
        """Overwrite these points' payloads ((point id, payload) pairs), vectors untouched; returns
        when the store confirmed every batch. The points must exist; each payload must hold exactly
        the layout's fields, as for `upsert`."""
        items = list(items)
        for pid, payload in items:
            self.check_payload(Point(id=pid, dense=None, sparse=None, payload=payload))
        for start in range(0, len(items), self.batch_size):
            self._call("set payload", self._set_payloads, items[start : start + self.batch_size])

    def delete(self, ids: Sequence[str]) -> None:
        ids = list(ids)
        for start in range(0, len(ids), self.batch_size):
            self._call("delete", self._delete, ids[start : start + self.batch_size])

    def search(self, mode: str, dense=None, sparse: SparseVector | None = None, limit: int = 10,
               using: str = "dense") -> list[Hit]:
        """mode 'dense', 'sparse', or 'hybrid' (reciprocal rank fusion of both lists); `using`
        names the dense vector to search (e.g. a legacy 'dense_768')."""
        if mode == "dense":
            return self._call("search", self._search_dense, dense, limit, using)
        if mode == "sparse":
            return self._sparse_or_nothing(sparse, limit)
        if mode == "hybrid":
            depth = max(limit * 4, 20)
            dense_hits = self._call("search", self._search_dense, dense, depth, using)
            return rrf_fuse([dense_hits, self._sparse_or_nothing(sparse, depth)], limit)
        raise ValueError(f"unknown search mode {mode!r}; use dense, sparse or hybrid")


    def _sparse_or_nothing(self, sparse: SparseVector | None, limit: int) -> list[Hit]:
        # An empty query shares no token with any point: every lexical score is 0, so no hits.
        if sparse is None or len(sparse.indices) == 0:
            return []
        return self._call("search", self._search_sparse, sparse, limit)


def rrf_fuse(rankings: list[list[Hit]], limit: int, k: int = RRF_K) -> list[Hit]:
    """Reciprocal rank fusion: score = sum over lists of 1 / (k + rank), rank from 1."""
    scores: dict[str, float] = {}
    payloads: dict[str, dict] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank)
            payloads.setdefault(hit.id, hit.payload)
    best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [Hit(id=i, score=s, payload=payloads[i]) for i, s in best]


# ---- helpers for the backends' error translation ------------------------------------------
# gRPC status names (grpc.StatusCode.X.name) worth retrying; compared by name so that this
# module does not import grpc.
TRANSIENT_GRPC_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 502, 503, 504})


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """`text` with every secret replaced by '***' (messages must never carry a key or token)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def grpc_code_name(err: BaseException) -> str | None:
    """The gRPC status name of `err` or of an error it wraps (via __cause__/__context__), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        code = getattr(err, "code", None)
        if callable(code):
            try:
                code = code()
            except Exception:  # noqa: BLE001 - not a grpc error after all
                code = None
        if type(code).__name__ == "StatusCode":  # grpc.StatusCode
            return code.name
        err = err.__cause__ or err.__context__
    return None


def is_too_large(err: BaseException, status: int | None = None) -> bool:
    """Does the store say the request was too large (HTTP 413, gRPC 'message larger than max')?"""
    text = str(err).lower()
    return status == 413 or "larger than max" in text or "payload too large" in text
