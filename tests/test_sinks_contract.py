"""One contract suite for every sink: the same tests on embedded Qdrant, Milvus Lite and a real
Milvus server process (`-m "not server"` leaves the server out). Synthetic vectors, no model."""

from __future__ import annotations

import dataclasses
import sys
import uuid

import numpy as np
import pytest

from connector.config import MilvusSinkConfig, QdrantSinkConfig, load_config
from connector.errors import MissingExtraError, SchemaMismatchError, StoreError, TerminalError, TransientError
from connector.records import Point, SparseVector, lexical_score, point_id, sha256_text
from connector.schemas_layout import Layout, VectorSpec, load_layout
from connector.sinks.base import Sink
from connector.sinks.factory import make_sink
from milvus_server import free_port, milvus_server  # noqa: F401  (session fixture)

DIM = 16
VOCAB = 300
SECRET = "s3cr3t-VALUE-never-printed"

BACKENDS = [
    "qdrant-edge",
    "qdrant-local",
    "milvus-lite",
    pytest.param("milvus-server", marks=pytest.mark.server),
]


# ---- synthetic data ------------------------------------------------------------------------
def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def random_sparse(rng: np.random.Generator, n: int = 8) -> SparseVector:
    idx = np.sort(rng.choice(VOCAB, size=n, replace=False)).astype(np.int64)
    return SparseVector(idx, rng.uniform(0.05, 1.0, n).astype(np.float32))


def payload_for(doc_id: str, index: int, text: str | None = None) -> dict:
    text = text if text is not None else f"Chunk {index} of {doc_id}: héllo wörld ✓ 日本語 🚀"
    return {
        "text": text,
        "doc_id": doc_id,
        "chunk_index": index,
        "char_start": index * 100,
        "char_end": index * 100 + len(text),
        "content_hash": sha256_text(text),
        "metadata": {"lang": "de", "tags": ["a", "ü"], "nested": {"n": index, "ratio": 0.25, "ok": True}},
    }


def make_points(n: int, seed: int = 0, doc_id: str = "doc-1", collection: str = "contract") -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        Point(
            id=point_id(collection, doc_id, i),
            dense=unit(rng),
            sparse=random_sparse(rng),
            payload=payload_for(doc_id, i),
        )
        for i in range(n)
    ]


def variant(layout: Layout, vectors=None, drop_fields=()) -> Layout:
    """A copy of `layout` with other vectors and/or without some payload fields."""
    return dataclasses.replace(
        layout,
        vectors=tuple(vectors) if vectors is not None else layout.vectors,
        fields=tuple(f for f in layout.fields if f.name not in drop_fields),
    )


# ---- the backend fixture -----------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def new_sink(request, tmp_path):
    """new_sink(layout=None, page_size=None, batch_size=64) -> a sink on this backend.

    Every sink of one test uses the same collection and store (path, .db file or server)."""
    kind = request.param
    server_uri = request.getfixturevalue("milvus_server").uri if kind == "milvus-server" else None
    collection = f"c_{uuid.uuid4().hex[:12]}"
    opened = []

    def make(layout: Layout | None = None, page_size: int | None = None, batch_size: int = 64):
        if kind in ("qdrant-edge", "qdrant-local"):
            engine = {"qdrant-edge": "edge", "qdrant-local": "local-mode"}[kind]
            config = QdrantSinkConfig(path=tmp_path / "qdrant", engine=engine, collection=collection,
                                      batch_size=batch_size)
        elif kind == "milvus-lite":
            config = MilvusSinkConfig(uri=str(tmp_path / "milvus.db"), collection=collection, batch_size=batch_size)
        else:
            config = MilvusSinkConfig(uri=server_uri, collection=collection, batch_size=batch_size)
        sink = make_sink(config, layout)
        if page_size is not None:
            sink.page_size = page_size
        opened.append(sink)
        return sink

    make.kind = kind
    make.collection = collection
    yield make
    for sink in opened:
        sink.close()
    if kind == "milvus-server":  # the server lives for the session: leave it clean
        cleanup = make()
        if cleanup.describe() is not None:
            cleanup.drop()
        cleanup.close()


@pytest.fixture
def layout() -> Layout:
    return load_layout("chunks")


def assert_same_point(got: Point, want: Point, with_vectors: bool = True) -> None:
    assert got.id == want.id
    assert got.payload == want.payload
    if with_vectors:
        np.testing.assert_allclose(got.dense, want.dense, atol=1e-6)
        np.testing.assert_array_equal(got.sparse.indices, want.sparse.indices)
        np.testing.assert_allclose(got.sparse.values, want.sparse.values, atol=1e-6)
        assert got.sparse.indices.dtype == np.int64 and got.sparse.values.dtype == np.float32


# ---- collection lifecycle ------------------------------------------------------------------
def test_create_then_reensure_is_noop_and_survives_reopen(new_sink, layout):
    sink = new_sink()
    assert sink.describe() is None
    assert sink.ensure_collection(DIM) is True
    assert sink.ensure_collection(DIM) is False
    points = make_points(3)
    sink.upsert(points)
    info = sink.describe()
    assert info.dense_size == DIM
    assert info.vectors == {"dense": "dense", "sparse": "sparse"}
    assert info.dense_distance == "cosine"
    assert info.count == 3
    if new_sink.kind.startswith("qdrant"):
        assert info.fields == set()  # schemaless payload
    else:
        assert {f.name for f in layout.fields} <= info.fields
    sink.close()
    sink.close()  # closing twice is fine

    again = new_sink()  # embedded stores: the first sink released its lock
    assert again.ensure_collection(DIM) is False
    assert again.count() == 3
    assert_same_point(again.retrieve([points[0].id], with_vectors=True)[0], points[0])


def test_drop_removes_the_collection(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    sink.upsert(make_points(2))
    sink.drop()
    assert sink.describe() is None
    assert sink.ensure_collection(DIM) is True
    assert sink.count() == 0


# ---- writes and reads ----------------------------------------------------------------------
def test_upsert_then_count_and_retrieve_round_trip(new_sink):
    sink = new_sink(batch_size=4)  # several batches
    sink.ensure_collection(DIM)
    points = make_points(10)
    sink.upsert(points)
    assert sink.count() == 10

    wanted = [points[7].id, points[2].id, str(uuid.uuid4()), points[0].id]  # one unknown id
    got = sink.retrieve(wanted, with_vectors=True)
    assert [p.id for p in got] == [points[7].id, points[2].id, points[0].id]
    for p, want in zip(got, [points[7], points[2], points[0]]):
        assert_same_point(p, want)

    plain = sink.retrieve([points[5].id])
    assert_same_point(plain[0], points[5], with_vectors=False)
    assert sink.retrieve([]) == []


def test_upsert_same_ids_twice_overwrites_without_duplicates(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    points = make_points(6)
    sink.upsert(points)
    changed = [dataclasses.replace(p, payload=payload_for("doc-1", i, text=f"new text {i}")) for i, p in enumerate(points)]
    sink.upsert(changed)
    assert sink.count() == 6
    assert sorted(sink.iter_ids()) == sorted(p.id for p in points)
    assert sink.retrieve([points[3].id])[0].payload["text"] == "new text 3"


@pytest.mark.parametrize("how", ["store", "default"])
def test_set_payloads_overwrites_payloads_and_keeps_vectors(new_sink, how, monkeypatch):
    """`set_payloads` rewrites only the payload: through the store's own payload-only call (no
    vectors sent: `_upsert` is not called), and through the base class's default (retrieve with
    vectors + upsert), which every backend must also get right."""
    layout = load_layout("chunks_dense_legacy", legacy_field="dense_8")
    sink = new_sink(layout=layout, batch_size=3)
    sink.ensure_collection(DIM, 8)
    rng = np.random.default_rng(5)
    points = [dataclasses.replace(p, extra={"dense_8": unit(rng, 8)}) for p in make_points(7)]
    sink.upsert(points)
    moved = {p.id: {**payload_for("doc-1", i + 1), "metadata": {"modified": "2026-01-01T00:00:00+00:00"}}
             for i, p in enumerate(points[:5])}
    upserts = []
    if how == "default":
        monkeypatch.setattr(sink, "_set_payloads", lambda items: Sink._set_payloads(sink, items))
    else:
        real_upsert = sink._upsert
        monkeypatch.setattr(sink, "_upsert", lambda batch: (upserts.append(len(batch)), real_upsert(batch)))
    sink.set_payloads(list(moved.items()))
    assert upserts == []
    assert sink.count() == 7
    for got, want in zip(sink.retrieve([p.id for p in points], with_vectors=True), points):
        assert_same_point(got, dataclasses.replace(want, payload=moved.get(want.id, want.payload)))
        np.testing.assert_allclose(got.extra["dense_8"], want.extra["dense_8"], rtol=1e-6)


def test_set_payloads_of_a_missing_point_is_a_terminal_error(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    points = make_points(2)
    sink.upsert(points)
    with pytest.raises(TerminalError):
        sink.set_payloads([(str(uuid.uuid4()), payload_for("doc-1", 5))])
    with pytest.raises(TerminalError, match="unknown"):  # checked against the layout like an upsert
        sink.set_payloads([(points[0].id, {**payload_for("doc-1", 0), "extra": 1})])
    assert sink.retrieve([points[0].id])[0].payload == points[0].payload


def test_milvus_without_partial_updates_falls_back_to_the_default(tmp_path, monkeypatch):
    """A Milvus server before 2.6 takes a partial upsert as whole rows and refuses them for their
    missing vectors: the sink then reads the vectors and writes them back, from then on directly."""
    from pymilvus import MilvusException

    sink = make_sink(MilvusSinkConfig(uri=str(tmp_path / "milvus.db"), collection="c_old"), load_layout("chunks"))
    sink.ensure_collection(DIM)
    points = make_points(3)
    sink.upsert(points)
    real_upsert, partial_calls = sink.client.upsert, []

    def old_server_upsert(collection, rows, **kwargs):
        if kwargs.pop("partial_update", False):
            partial_calls.append(len(rows))
            raise MilvusException(code=6, message="vector field 'dense' missing or None")
        return real_upsert(collection, rows, **kwargs)

    monkeypatch.setattr(sink.client, "upsert", old_server_upsert)
    for text in ("moved once", "moved twice"):
        sink.set_payloads([(points[1].id, payload_for("doc-1", 1, text=text))])
    got = sink.retrieve([points[1].id], with_vectors=True)[0]
    assert got.payload["text"] == "moved twice" and partial_calls == [1]  # tried once, then the default
    np.testing.assert_allclose(got.dense, points[1].dense, rtol=1e-6)
    sink.close()


def test_delete_and_delete_of_unknown_ids(new_sink):
    sink = new_sink(batch_size=2)
    sink.ensure_collection(DIM)
    points = make_points(5)
    sink.upsert(points)
    sink.delete([points[0].id, points[3].id, points[4].id])
    assert sink.count() == 2
    assert {p.id for p in sink.retrieve([p.id for p in points])} == {points[1].id, points[2].id}
    sink.delete([str(uuid.uuid4()), str(uuid.uuid4())])  # unknown ids: fine
    sink.delete([points[0].id])  # already deleted: fine
    sink.delete([])
    assert sink.count() == 2


def test_iter_ids_returns_every_id_once_across_pages(new_sink):
    sink = new_sink(page_size=7, batch_size=16)
    sink.ensure_collection(DIM)
    points = make_points(40)
    sink.upsert(points)
    ids = list(sink.iter_ids())
    assert len(ids) == 40
    assert set(ids) == {p.id for p in points}


def test_empty_sparse_vector_round_trips(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    points = make_points(4)
    empty = dataclasses.replace(points[1], sparse=SparseVector.empty(), payload=payload_for("doc-1", 1, text=""))
    points[1] = empty
    sink.upsert(points)
    assert sink.count() == 4
    got = sink.retrieve([empty.id], with_vectors=True)[0]
    assert got.sparse.indices.size == 0 and got.sparse.values.size == 0
    assert_same_point(got, empty)
    # it never matches lexically, and an empty query matches nothing
    for p in points:
        assert empty.id not in [h.id for h in sink.search("sparse", sparse=p.sparse, limit=10)]
    assert sink.search("sparse", sparse=SparseVector.empty(), limit=10) == []
    hits = sink.search("hybrid", dense=empty.dense, sparse=SparseVector.empty(), limit=3)
    assert hits[0].id == empty.id


# ---- search --------------------------------------------------------------------------------
def test_dense_search_returns_the_exact_vector_first(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    points = make_points(20, seed=3)
    sink.upsert(points)
    for target in (points[0], points[11]):
        hits = sink.search("dense", dense=target.dense, limit=5)
        assert len(hits) == 5
        assert hits[0].id == target.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].payload == target.payload
        assert all(a.score >= b.score - 1e-6 for a, b in zip(hits, hits[1:]))


def test_sparse_search_ranks_by_dot_product(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    points = make_points(30, seed=5)
    sink.upsert(points)
    query = random_sparse(np.random.default_rng(99), n=40)
    expected = sorted(((lexical_score(query, p.sparse), p.id) for p in points), reverse=True)
    expected = [(s, i) for s, i in expected if s > 0][:10]
    assert len(expected) >= 5  # the data is built so that several points share tokens with the query
    hits = sink.search("sparse", sparse=query, limit=len(expected))
    assert [h.id for h in hits] == [i for _, i in expected]
    for hit, (score, _) in zip(hits, expected):
        assert hit.score == pytest.approx(score, rel=1e-4)
    assert hits[0].payload["doc_id"] == "doc-1"


def test_hybrid_search_fuses_dense_and_sparse(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    points = make_points(25, seed=7)
    sink.upsert(points)
    target = points[13]
    hits = sink.search("hybrid", dense=target.dense, sparse=target.sparse, limit=5)
    assert hits[0].id == target.id
    assert len({h.id for h in hits}) == len(hits) == 5
    assert hits[0].payload == target.payload
    with pytest.raises(ValueError):
        sink.search("nearest", dense=target.dense)


# ---- schema mismatch -----------------------------------------------------------------------
def _mismatch_cases():
    base = load_layout("chunks")
    dense = base.vector("dense")
    return {
        # case: (layout that creates the collection, dense size it is created with, write points?)
        "dense-size": (base, DIM * 2, True),
        "sparse-missing": (variant(base, vectors=[dense]), DIM, True),
        "dense-is-sparse": (variant(base, vectors=[VectorSpec("dense", "sparse"), base.vector("sparse")]), DIM, False),
        "dense-distance": (variant(base, vectors=[dataclasses.replace(dense, distance="dot"), base.vector("sparse")]), DIM, True),
        "field-missing": (variant(base, drop_fields=["metadata", "char_end"]), DIM, True),
    }


@pytest.mark.parametrize("case", list(_mismatch_cases()))
def test_schema_mismatch_raises_and_writes_nothing(new_sink, layout, case):
    creator_layout, created_size, write = _mismatch_cases()[case]
    creator = new_sink(layout=creator_layout)
    assert creator.ensure_collection(created_size) is True
    if write:
        rng = np.random.default_rng(1)
        names = {f.name for f in creator_layout.fields}
        creator.upsert(
            [
                Point(
                    id=point_id("mismatch", "doc", i),
                    dense=unit(rng, created_size),
                    sparse=random_sparse(rng),
                    payload={k: v for k, v in payload_for("doc", i).items() if k in names},
                )
                for i in range(4)
            ]
        )
    before = creator.describe()
    creator.close()  # embedded Qdrant: one open client per folder

    sink = new_sink()  # the real 'chunks' layout
    if case == "field-missing" and new_sink.kind.startswith("qdrant"):
        assert sink.ensure_collection(DIM) is False  # schemaless payload: nothing to compare
        return
    with pytest.raises(SchemaMismatchError) as info:
        sink.ensure_collection(DIM)
    message = str(info.value)
    assert new_sink.collection in message and "Nothing was written" in message
    after = sink.describe()
    assert after.count == before.count == (4 if write else 0)
    assert after.vectors == before.vectors and after.dense_size == before.dense_size


def test_mismatch_message_names_every_difference(new_sink):
    creator = new_sink(layout=variant(load_layout("chunks"), vectors=[load_layout("chunks").vector("dense")]))
    creator.ensure_collection(DIM * 2)
    creator.close()
    with pytest.raises(SchemaMismatchError) as err:
        new_sink().ensure_collection(DIM)
    assert "vector 'sparse' (sparse) is missing" in str(err.value)
    assert "vector 'dense' has size 32, the model gives 16" in str(err.value)


# ---- error translation ---------------------------------------------------------------------
def test_wrong_size_dense_vector_is_a_terminal_error(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    good = make_points(3)
    sink.upsert(good)
    bad = Point(id=point_id("contract", "bad", 0), dense=unit(np.random.default_rng(0), DIM + 3),
                sparse=random_sparse(np.random.default_rng(0)), payload=payload_for("bad", 0))
    with pytest.raises(TerminalError) as info:
        sink.upsert([bad])
    assert type(info.value) is TerminalError
    assert new_sink.collection in str(info.value) and "upsert" in str(info.value)
    assert sink.count() == 3
    with pytest.raises(TerminalError, match="dense search"):
        sink.search("dense", dense=unit(np.random.default_rng(1), DIM - 1))


def test_payload_outside_the_layout_is_refused_before_writing(new_sink):
    sink = new_sink()
    sink.ensure_collection(DIM)
    point = make_points(1)[0]
    extra = dataclasses.replace(point, payload={**point.payload, "title": "x"})
    missing = dataclasses.replace(point, payload={k: v for k, v in point.payload.items() if k != "doc_id"})
    with pytest.raises(TerminalError, match=r"unknown \['title'\]"):
        sink.upsert([extra])
    with pytest.raises(TerminalError, match=r"missing \['doc_id'\]"):
        sink.upsert([missing])
    assert sink.count() == 0


def test_calls_on_a_missing_collection_are_terminal(new_sink):
    sink = new_sink()
    with pytest.raises(TerminalError, match="count"):
        sink.count()
    with pytest.raises(TerminalError, match="upsert"):
        sink.upsert(make_points(1))


@pytest.mark.parametrize("engine, busy", [("edge", "is open in another process"),
                                          ("local-mode", "another process or by another sink")])
def test_embedded_qdrant_lock_is_released_by_close(tmp_path, engine, busy):
    config = QdrantSinkConfig(path=tmp_path / "q", engine=engine, collection="locked")
    first = make_sink(config)
    first.ensure_collection(DIM)
    second = make_sink(config)
    with pytest.raises(TerminalError, match=busy):
        second.count()
    first.close()
    assert second.count() == 0
    second.close()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_connection_refused_is_transient_and_hides_the_secret(backend, monkeypatch):
    monkeypatch.setenv("CONNECTOR_TEST_SECRET", SECRET)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if backend == "milvus":
        config = MilvusSinkConfig(uri=url, token_env="CONNECTOR_TEST_SECRET", collection="dead", timeout=3)
    else:
        config = QdrantSinkConfig(url=url, api_key_env="CONNECTOR_TEST_SECRET", collection="dead", timeout=3)
    sink = make_sink(config)  # connects lazily: no error yet
    with pytest.raises(TransientError) as info:
        sink.ensure_collection(DIM)
    message = str(info.value)
    assert "'dead'" in message and SECRET not in message
    sink.close()


@pytest.mark.parametrize(
    "module, config, extra",
    [
        ("qdrant_client", QdrantSinkConfig(path="/nonexistent/q", engine="local-mode"), "qdrant"),
        ("qdrant_edge", QdrantSinkConfig(path="/nonexistent/q"), "qdrant"),
        ("pymilvus", MilvusSinkConfig(uri="/nonexistent/m.db"), "milvus"),
        ("pymilvus", MilvusSinkConfig(uri="http://127.0.0.1:1"), "milvus"),
        ("milvus_lite", MilvusSinkConfig(uri="/nonexistent/m.db"), "milvus"),
    ],
)
def test_missing_extra_names_the_pip_install(monkeypatch, module, config, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(MissingExtraError) as info:
        make_sink(config)
    assert f'pip install "connector[{extra}]"' in str(info.value)


def test_milvus_server_needs_no_lite_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "milvus_lite", None)
    sink = make_sink(MilvusSinkConfig(uri="http://127.0.0.1:1"))
    sink.close()


# ---- the translation functions on their own ----------------------------------------------
class FakeRpcError(Exception):
    def __init__(self, code_name: str):
        import grpc

        self._code = getattr(grpc.StatusCode, code_name)

    def code(self):
        return self._code


@pytest.mark.parametrize(
    "status, transient", [(429, True), (502, True), (503, True), (504, True), (400, False), (401, False), (403, False), (404, False), (500, False)]
)
def test_qdrant_http_status_translation(status, transient):
    from httpx import Headers
    from qdrant_client.http.exceptions import UnexpectedResponse

    from connector.sinks.qdrant import translate_qdrant_error

    err = UnexpectedResponse(status, "x", f"bad request key={SECRET}".encode(), Headers())
    out = translate_qdrant_error(err, "coll", "upsert", [SECRET])
    assert isinstance(out, TransientError if transient else TerminalError)
    assert "coll" in str(out) and "upsert" in str(out) and SECRET not in str(out)
    if status in (401, 403):
        assert "API key" in str(out)


def test_qdrant_network_and_grpc_translation():
    import httpx
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
    from qdrant_client.http.exceptions import ResponseHandlingException

    from connector.sinks.qdrant import translate_qdrant_error

    cases = [
        (ResponseHandlingException(httpx.ConnectError("refused")), TransientError),
        (ResponseHandlingException(httpx.ReadTimeout("slow")), TransientError),
        (ResponseHandlingException(ValueError("cannot parse")), TerminalError),
        (ResourceExhaustedResponse("slow down", 3), TransientError),
        (ConnectionResetError("reset"), TransientError),
        (FakeRpcError("UNAVAILABLE"), TransientError),
        (FakeRpcError("DEADLINE_EXCEEDED"), TransientError),
        (FakeRpcError("RESOURCE_EXHAUSTED"), TransientError),
        (FakeRpcError("INVALID_ARGUMENT"), TerminalError),
        (ValueError("Wrong input: Vector dimension error"), TerminalError),
    ]
    for err, expected in cases:
        assert type(translate_qdrant_error(err, "c", "op")) is expected, err


def test_milvus_translation():
    from pymilvus.exceptions import MilvusException, ParamError

    from connector.sinks.milvus import translate_milvus_error

    wrapped = MilvusException(code=2, message="Fail connecting to server")
    try:
        raise wrapped from FakeRpcError("UNAVAILABLE")
    except MilvusException as err:
        wrapped = err
    import grpc

    cases = [
        (MilvusException(code=2, message="Fail connecting"), TransientError),
        (wrapped, TransientError),
        (MilvusException(code=grpc.StatusCode.DEADLINE_EXCEEDED, message="Retry timeout: 3s"), TransientError),
        (MilvusException(code=8, message="rate limit exceeded"), TransientError),
        (MilvusException(code=65535, message="busy", retriable=True), TransientError),
        (FakeRpcError("RESOURCE_EXHAUSTED"), TransientError),
        (TimeoutError("timed out"), TransientError),
        (MilvusException(code=6, message="vector field 'dense' expected dim 16, got 19"), TerminalError),
        (MilvusException(code=100, message="collection not found"), TerminalError),
        (ParamError(message="invalid input"), TerminalError),
        (FakeRpcError("UNAUTHENTICATED"), TerminalError),
    ]
    for err, expected in cases:
        assert type(translate_milvus_error(err, "c", "op")) is expected, err
    out = translate_milvus_error(MilvusException(code=1800, message=f"auth failed for token {SECRET}"), "c", "count", [SECRET])
    assert type(out) is TerminalError and SECRET not in str(out) and "token" in str(out)


def test_store_errors_pass_through_unchanged():
    from connector.sinks.milvus import translate_milvus_error
    from connector.sinks.qdrant import translate_qdrant_error

    err = TransientError("already translated")
    assert translate_milvus_error(err, "c", "op") is err
    assert translate_qdrant_error(err, "c", "op") is err
    assert issubclass(SchemaMismatchError, StoreError)


def test_milvus_lite_close_releases_the_file_for_another_process(tmp_path):
    import subprocess

    uri = str(tmp_path / "shared.db")
    script = (
        "import sys\n"
        "from connector.config import MilvusSinkConfig\n"
        "from connector.errors import StoreError\n"
        "from connector.sinks.factory import make_sink\n"
        f"sink = make_sink(MilvusSinkConfig(uri={uri!r}, collection='shared'))\n"
        "try:\n"
        "    print(sink.count())\n"
        "except StoreError as err:\n"
        "    print('ERROR', err)\n"
        "sink.close()\n"
    )

    def other_process() -> str:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        return done.stdout.strip()

    sink = make_sink(MilvusSinkConfig(uri=uri, collection="shared"))
    sink.ensure_collection(DIM)
    sink.upsert(make_points(2))
    blocked = other_process()
    assert blocked.startswith("ERROR") and "another process" in blocked
    sink.close()
    assert other_process() == "2"


@pytest.mark.server
def test_milvus_server_going_away_is_transient_and_coming_back_works(tmp_path):
    from milvus_server import MilvusServer

    server = MilvusServer(tmp_path / "data").start()
    try:
        sink = make_sink(MilvusSinkConfig(uri=server.uri, collection="restart", timeout=3))
        sink.ensure_collection(DIM)
        sink.upsert(make_points(5))
        server.stop()
        with pytest.raises(TransientError, match="count"):
            sink.count()
        server.start()  # same port, same data dir
        assert sink.count() == 5  # the same sink reconnects
        sink.close()
        again = make_sink(MilvusSinkConfig(uri=server.uri, collection="restart", timeout=3))
        assert again.ensure_collection(DIM) is False
        assert again.count() == 5
        assert len(again.search("dense", dense=make_points(5)[2].dense, limit=1)) == 1
        again.close()
    finally:
        server.stop()


@pytest.mark.server
def test_milvus_server_through_a_unix_socket(tmp_path, milvus_server):  # noqa: F811
    """`uri: unix:/path/milvus.sock` reaches a server as pymilvus does (gRPC over a Unix socket);
    the socket here forwards to the test server's TCP port."""
    import socket
    import threading

    socket_path = tmp_path / "milvus.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen()
    connections = []

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            upstream = socket.create_connection(("127.0.0.1", milvus_server.port))
            connections.extend([client, upstream])
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    config = tmp_path / "config.yaml"  # a relative socket path resolves from the config's folder
    config.write_text("source: {path: ./docs}\nsink: {type: milvus, uri: 'unix:./milvus.sock', "
                      "collection: over_unix_socket, timeout: 10}\n", encoding="utf-8")
    sink = make_sink(load_config(config).sink)
    try:
        assert sink.is_server
        if sink.describe() is not None:
            sink.drop()
        sink.ensure_collection(DIM)
        sink.upsert(make_points(5, collection="over_unix_socket"))
        assert sink.count() == 5 and connections  # it really went through the socket
        sink.drop()
    finally:
        sink.close()
        listener.close()
        for s in connections:
            s.close()
