"""`connector serve`'s API through the real app (FastAPI's TestClient runs it in-process) with
the tiny model: every endpoint, every error case, auth, the bounded queue, coalescing, the
cache, metrics and the offline /docs page. Search runs on embedded Qdrant and Milvus Lite."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from connector import api
from connector.cli import cli
from connector.config import load_config
from connector.serve.app import ServeSettings, create_app
from connector.serve.batcher import EncodeBatcher, QueueFull

KEY = "s3cret-key-for-tests"
DOCS = {
    "reset.md": "# Reset\n\nOpen the sign-in page and choose Forgot password to reset your password.\n",
    "billing.md": "# Billing\n\nInvoices are issued monthly and sent by email.\n",
    "usb.txt": "The device does not connect over USB. Replace the cable and restart it.\n",
}


def wait_healthy(client: TestClient) -> dict:
    for _ in range(600):
        r = client.get("/health")
        if r.status_code == 200:
            return r.json()
        assert r.json()["status"] == "loading", r.text
        time.sleep(0.05)
    raise AssertionError("the model did not load")


def same_document(got, expected) -> bool:
    """Equal JSON documents, floats within 1e-5: the service pads texts into other batches than
    the command line, which moves the last bits of a float."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            same_document(got[k], expected[k]) for k in expected)
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(same_document, got, expected))
    if isinstance(expected, float):
        return got == pytest.approx(expected, abs=1e-5)
    return got == expected


def cli_json(*args) -> dict:
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def make_config(tmp_path, tiny_model_dir, sink: str):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    sinks = {"qdrant": {"type": "qdrant", "path": "./store/qdrant", "collection": "kb"},
             "milvus": {"type": "milvus", "uri": "./store/milvus.db", "collection": "kb"}}
    config = {"source": {"type": "files", "path": "./docs"},
              "preprocess": {"abbreviations": {"pw": "password"}},
              "chunking": {"max_tokens": 48, "overlap_tokens": 8},
              "encoder": {"model": str(tiny_model_dir), "max_length": 512, "batch_size": 4},
              "sink": sinks[sink], "state_dir": "./state"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_client(tiny_model_dir):
    """An embedding-only service (--model), loaded."""
    with TestClient(create_app(ServeSettings(model=str(tiny_model_dir), max_length=512, max_texts=8,
                                             max_chars=2000))) as client:
        wait_healthy(client)
        yield client


def test_health_says_loading_until_the_model_is_ready(tiny_model_dir):
    app = create_app(ServeSettings(model=str(tiny_model_dir)))
    client = TestClient(app)  # not entered: the lifespan (which loads the model) has not run
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "loading"} and r.headers["retry-after"]
    r = client.post("/v1/embed", json={"texts": ["x"]})
    assert r.status_code == 503 and r.json()["kind"] == "unavailable" and "loading" in r.json()["error"]
    with client:
        health = wait_healthy(client)
    assert health["status"] == "healthy" and health["device"] == "cpu" and health["backend"] == "torch"
    assert health["dimension"] == 32 and health["colbert"] is True and health["store"] is None
    assert health["quantize"] == "none" and health["projection"] is None and health["auth"] is False


def test_a_model_that_cannot_load_is_reported_not_hidden(tmp_path):
    with TestClient(create_app(ServeSettings(model=str(tmp_path / "nowhere")))) as client:
        for _ in range(200):
            r = client.get("/health")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "failed" and "model folder not found" in r.json()["error"]
        r = client.post("/v1/similarity", json={"a": "x", "b": "y"})
        assert r.status_code == 503 and "could not be loaded" in r.json()["error"]


def test_embed_is_the_cli_document(model_client, tiny_model_dir):
    texts = ["hello world", "", "密码 password password"]
    r = model_client.post("/v1/embed", json={"texts": texts})
    assert r.status_code == 200
    assert same_document(r.json(), cli_json("embed", "--model", str(tiny_model_dir), "--max-length", "512", *texts))
    r = model_client.post("/v1/embed", json={"texts": ["x"], "legacy": True})
    assert r.status_code == 422 and "projection" in r.json()["error"]


def test_similarity_gives_every_score_and_why(model_client, tiny_model_dir):
    a, b = "reset my password", "How to reset your password"
    docs = {mode: model_client.post("/v1/similarity", json={"a": a, "b": b, "mode": mode}).json()
            for mode in ("dense", "sparse", "colbert", "hybrid")}
    d = docs["hybrid"]
    s = d["scores"]
    assert docs["dense"]["score"] == s["dense"] and docs["sparse"]["score"] == s["lexical"]
    assert docs["colbert"]["score"] == s["colbert"] and d["score"] == s["hybrid"]
    assert s["hybrid"] == pytest.approx(s["dense"] + 0.3 * s["lexical"])
    assert s["weighted"] == pytest.approx(0.4 * s["dense"] + 0.2 * s["lexical"] + 0.4 * s["colbert"])
    assert d["shared_tokens"] and s["lexical"] == pytest.approx(sum(t["product"] for t in d["shared_tokens"]))
    assert "▁password" in {t["token"] for t in d["shared_tokens"]}
    products = [t["product"] for t in d["shared_tokens"]]
    assert products == sorted(products, reverse=True)
    assert d["a"]["tokens"] > 2 and d["a"]["dense_norm"] == pytest.approx(1.0, abs=1e-5)
    # the same numbers as the command line (one function builds both)
    assert same_document(d, cli_json("similarity", "--model", str(tiny_model_dir), "--max-length", "512", a, b))
    r = model_client.post("/v1/similarity", json={"a": a, "b": b, "mode": "cosine"})
    assert r.status_code == 422 and "dense, sparse, colbert, hybrid" in r.json()["error"]


def test_colbert_without_its_head_fails_for_that_mode_only(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-colbert"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "colbert_linear.pt").unlink()
    with TestClient(create_app(ServeSettings(model=str(folder), max_length=512))) as client:
        assert wait_healthy(client)["colbert"] is False
        r = client.post("/v1/similarity", json={"a": "a b", "b": "a c", "mode": "colbert"})
        assert r.status_code == 422 and "colbert_linear.pt" in r.json()["error"]
        r = client.post("/v1/similarity", json={"a": "a b", "b": "a c", "mode": "hybrid"})
        assert r.status_code == 200 and r.json()["scores"]["colbert"] is None
        assert "colbert_linear.pt" in r.json()["colbert_error"]


def test_similarity_matrix_of_texts_and_of_a_pasted_conversation(model_client):
    texts = ["reset my password", "how do I reset the password", "invoices are monthly"]
    m = model_client.post("/v1/similarity/matrix", json={"texts": texts}).json()
    matrix = np.array(m["matrix"])
    assert m["texts"] == texts and matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    pair = model_client.post("/v1/similarity", json={"a": texts[0], "b": texts[2]}).json()
    assert matrix[0, 2] == pytest.approx(pair["scores"]["dense"], abs=1e-6)
    chat = model_client.post("/v1/similarity/matrix", json={"text": "user: hi\n\nagent: hello\nuser: bye", "mode": "sparse"})
    assert chat.json()["texts"] == ["user: hi", "agent: hello", "user: bye"]
    sentences = model_client.post("/v1/similarity/matrix", json={"text": "One here. Two there! Three?"}).json()
    assert sentences["texts"] == ["One here.", "Two there!", "Three?"]
    for body in ({}, {"texts": ["a"], "text": "b"}, {"text": "   "}):
        r = model_client.post("/v1/similarity/matrix", json=body)
        assert r.status_code == 422, body


def test_tokenize_gives_offsets_and_the_weights_behind_the_sparse_vector(model_client):
    text = "Reset your password, reset it now"
    t = model_client.post("/v1/tokenize", json={"text": text}).json()
    assert t["count"] == len(t["tokens"]) and not t["truncated"]
    assert t["tokens"][0]["special"] and t["tokens"][-1]["special"]
    covered = {i for tok in t["tokens"] if not tok["special"] for i in range(tok["start"], tok["end"])}
    assert covered == {i for i, c in enumerate(text) if c != " "}  # the offsets point into the text
    assert [tok for tok in t["tokens"] if tok["token"] == "▁password"][0]["start"] == text.index("password")
    by_id: dict[int, float] = {}
    for tok in t["tokens"]:
        if not tok["special"] and tok["weight"] > 0:
            by_id[tok["id"]] = max(tok["weight"], by_id.get(tok["id"], 0.0))
    sparse = model_client.post("/v1/embed", json={"texts": [text]}).json()["embeddings"][0]["sparse"]
    assert dict(zip(sparse["indices"], sparse["values"])) == pytest.approx(by_id)
    long = model_client.post("/v1/tokenize", json={"text": "a b " * 499}).json()  # ~1000 tokens
    assert long["truncated"] and long["count"] == 512


@pytest.mark.parametrize("sink", ["qdrant", "milvus"])
def test_search_is_the_cli_document_on_both_stores(sink, tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, sink)
    assert CliRunner().invoke(cli, ["sync", "-c", str(cfg)]).exit_code == 0
    for step in (["projection", "fit", "-c", str(cfg), "--dim", "2", "--from", "store"],
                 ["backfill", "-c", str(cfg), "--dim", "2"]):  # a second collection: kb_2
        assert CliRunner().invoke(cli, step).exit_code == 0
    expected = {mode: cli_json("search", "-c", str(cfg), "reset pw", "--mode", mode, "--limit", "3")
                for mode in ("hybrid", "dense", "sparse")}
    backfilled = cli_json("search", "-c", str(cfg), "reset pw", "--collection", "kb_2")
    with TestClient(create_app(ServeSettings(config=load_config(cfg)))) as client:
        health = wait_healthy(client)
        assert health["collection"] == "kb" and health["store"] == {"reachable": True}
        for mode, doc in expected.items():
            r = client.post("/v1/search", json={"query": "reset pw", "mode": mode, "limit": 3})
            assert r.status_code == 200 and same_document(r.json(), doc)
        assert expected["dense"]["hits"][0]["doc_id"] in DOCS
        r = client.post("/v1/search", json={"query": "x", "mode": "legacy"})
        assert r.status_code == 422 and "projection" in r.json()["error"]
        for _ in range(2):  # an embedded store is open once per process: the service switches collections
            r = client.post("/v1/search", json={"query": "reset pw", "collection": "kb_2"})
            assert r.status_code == 200 and same_document(r.json(), backfilled) and r.json()["vector"] == "dense_2"
            r = client.post("/v1/search", json={"query": "reset pw", "mode": "dense", "limit": 3})
            assert r.status_code == 200 and same_document(r.json(), expected["dense"])
        r = client.post("/v1/search", json={"query": "x", "collection": "kb_768"})
        assert r.status_code == 400 and "does not exist" in r.json()["error"]
        # the query is cleaned like the CLI's (the config's abbreviations): pw -> password
        sim = client.post("/v1/similarity", json={"a": "pw", "b": "password"}).json()
        assert sim["a"]["text"] == "password" and sim["scores"]["dense"] == pytest.approx(1.0, abs=1e-5)


def test_search_without_a_store_says_how_to_get_one(model_client):
    r = model_client.post("/v1/search", json={"query": "x"})
    assert r.status_code == 400 and r.json()["kind"] == "no_store" and "-c CONFIG" in r.json()["error"]


def test_bad_requests_get_clear_json_errors_never_a_traceback(model_client):
    cases = [
        (model_client.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (model_client.post("/v1/embed", content=b'{"texts": ["x"]}'), 422),  # no Content-Type: JSON
        (model_client.post("/v1/embed", json={"texts": "not a list"}), 422),
        (model_client.post("/v1/embed", json={"texts": []}), 422),
        (model_client.post("/v1/embed", json={"texts": ["x"], "unknown": 1}), 422),
        (model_client.post("/v1/embed", json={"texts": ["x"] * 9}), 413),  # max_texts 8
        (model_client.post("/v1/similarity", json={"a": "x" * 2001, "b": "y"}), 413),  # max_chars 2000
        (model_client.post("/v1/embed", content=b"x" * 200_000, headers={"content-type": "application/json"}), 413),
        (model_client.post("/v1/similarity", json={"a": " ", "b": "y"}), 422),  # nothing to compare
        (model_client.post("/v1/tokenize", json={"text": ""}), 422),
        (model_client.get("/v1/embed"), 405),
        (model_client.get("/nowhere"), 404),
    ]
    for r, status in cases:
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"error", "kind"} and body["error"], body
        assert "Traceback" not in r.text and 'File "' not in r.text
    assert "Content-Type: application/json" in cases[1][0].json()["error"]
    assert "--max-texts" in cases[5][0].json()["error"] and "--max-chars" in cases[6][0].json()["error"]
    assert "text a is empty" in cases[8][0].json()["error"]


def test_an_unexpected_error_is_a_500_without_details(model_client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal state /etc/passwd")

    monkeypatch.setattr(api, "tokenize", broken)
    client = TestClient(model_client.app, raise_server_exceptions=False)  # answer as a real server does
    r = client.post("/v1/tokenize", json={"text": "x"})
    assert r.status_code == 500 and r.json() == {"error": "internal error (the server log has the details)",
                                                 "kind": "internal"}


def test_api_key_guards_the_api_and_never_leaks(tiny_model_dir):
    with TestClient(create_app(ServeSettings(model=str(tiny_model_dir), max_length=512, api_key=KEY))) as client:
        assert wait_healthy(client)["auth"] is True
        body = {"a": "x", "b": "y"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
            r = client.post("/v1/similarity", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and KEY not in r.text
        r = client.post("/v1/similarity", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and KEY not in r.text
        # the key is checked first: without it, a bad or huge body is not even looked at
        r = client.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 401
        r = client.post("/v1/embed", content=b"x" * 10_000_000, headers={"content-type": "application/json"})
        assert r.status_code == 401
        metrics = client.get("/metrics").text
        assert 'connector_http_requests_total{endpoint="/v1/embed",method="POST",status="401"} 2.0' in metrics
        for path in ("/health", "/metrics", "/docs", "/openapi.json"):
            r = client.get(path)
            assert r.status_code == 200 and KEY not in r.text, path


def test_a_full_queue_answers_503_with_retry_after(model_client):
    service = model_client.app.state.service
    batcher = service.batcher
    release = threading.Event()
    real = batcher.encoder.encode

    def slow(texts, details=False):
        release.wait(30)
        return real(texts, details=details)

    batcher.encoder.encode = slow
    try:
        waiting = [threading.Thread(target=batcher.encode, args=([f"queued {n}"],)) for n in range(batcher.max_queue)]
        for t in waiting:
            t.start()
        for _ in range(400):
            if batcher._pending == batcher.max_queue:
                break
            time.sleep(0.01)
        assert batcher._pending == batcher.max_queue
        r = model_client.post("/v1/embed", json={"texts": ["one more"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]
    finally:
        release.set()
        batcher.encoder.encode = real
        for t in waiting:
            t.join()
    assert model_client.post("/v1/embed", json={"texts": ["one more"]}).status_code == 200


class CountingEncoder:
    """The real encoder, counting its calls (what a forward pass batch is)."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, []
        self.dimension, self.tokenizer, self.max_length = encoder.dimension, encoder.tokenizer, encoder.max_length
        self.fingerprint, self.colbert_error = encoder.fingerprint, encoder.colbert_error

    def encode(self, texts, details=False):
        self.calls.append(list(texts))
        return self.encoder.encode(texts, details=details)


@pytest.mark.parametrize("coalesce", [True, False])
def test_concurrent_requests_share_one_encoder_call(tiny_encoder, coalesce):
    counting = CountingEncoder(tiny_encoder)
    batcher = EncodeBatcher(counting, max_batch=64, max_wait=0.5, coalesce=coalesce).start()
    start = threading.Barrier(10)
    results = {}

    def client(n):
        start.wait()
        results[n] = batcher.encode([f"client {n} asks about passwords"])[0]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.stop()
    expected = tiny_encoder.encode([f"client {n} asks about passwords" for n in range(10)])
    for n in range(10):
        np.testing.assert_allclose(results[n].dense, expected[n].dense, atol=1e-5)
    if coalesce:
        assert len(counting.calls) < 10 and sum(map(len, counting.calls)) == 10
    else:
        assert len(counting.calls) == 10


def test_the_cache_answers_a_repeated_text_and_stays_bounded(tiny_encoder):
    counting = CountingEncoder(tiny_encoder)
    batcher = EncodeBatcher(counting, cache_mb=0.01).start()  # ~10 KB: a few entries
    first = batcher.encode(["same text"])[0]
    again = batcher.encode(["same text", "same text"])
    assert len(counting.calls) == 1 and all(np.array_equal(v.dense, first.dense) for v in again)
    batcher.encode(["same text"], details=True)  # details were not cached: encoded once more
    assert len(counting.calls) == 2
    batcher.encode([f"filler {n}" for n in range(60)])
    assert batcher.cache.size_bytes <= batcher.cache.max_bytes
    batcher.stop()
    with pytest.raises(QueueFull):
        batcher.encode(["after stop"])


def test_metrics_after_traffic(model_client):
    for _ in range(3):
        model_client.post("/v1/similarity", json={"a": "metrics a", "b": "metrics b", "mode": "dense"})
    model_client.post("/v1/embed", json={"texts": ["x"] * 9})  # a 413
    text = model_client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family, sample_name, **labels):
        return sum(s.value for s in families[family].samples
                   if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("connector_http_requests", "connector_http_requests_total", endpoint="/v1/similarity",
                 status="200") >= 3
    assert value("connector_http_requests", "connector_http_requests_total", endpoint="/v1/embed", status="413") >= 1
    assert value("connector_similarity_score", "connector_similarity_score_count", mode="dense") >= 3
    assert value("bge_m3_vectorize_duration_seconds", "bge_m3_vectorize_duration_seconds_count") >= 1
    buckets = {s.labels["le"] for s in families["bge_m3_vectorize_duration_seconds"].samples if "le" in s.labels}
    assert {"0.005", "10.0", "+Inf"} <= buckets
    assert value("connector_embedding_cache_hits", "connector_embedding_cache_hits_total") >= 2  # repeats hit
    assert value("connector_embedding_cache_misses", "connector_embedding_cache_misses_total") >= 2
    assert value("connector_encoder_batch_size", "connector_encoder_batch_size_count") >= 1
    assert "connector_encoder_queue_depth" in families and "process_resident_memory_bytes" in text
    info = [s for s in families["connector_model_info"].samples][0].labels
    assert info["backend"] == "torch" and info["dimension"] == "32"


def test_docs_work_offline(model_client):
    import re

    page = model_client.get("/docs")
    assert page.status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/") for ref in refs), refs  # nothing from a CDN
    for ref in refs:
        assert model_client.get(ref).status_code == 200, ref
    paths = model_client.get("/openapi.json").json()["paths"]
    assert {"/v1/embed", "/v1/similarity", "/v1/similarity/matrix", "/v1/tokenize", "/v1/search"} <= set(paths)


def test_serve_command_checks_its_options(monkeypatch, tiny_model_dir):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(kw, app=app))
    runner = CliRunner()
    r = runner.invoke(cli, ["serve", "--model", str(tiny_model_dir), "--api-key-env", "CONNECTOR_TEST_NO_SUCH_VAR"])
    assert r.exit_code == 2 and "CONNECTOR_TEST_NO_SUCH_VAR" in r.output and not started
    r = runner.invoke(cli, ["serve"])
    assert r.exit_code == 2 and "exactly one of -c CONFIG or --model" in r.output
    r = runner.invoke(cli, ["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code == 0 and "without an API key" in r.output and started["host"] == "0.0.0.0"
    started.clear()
    monkeypatch.setenv("CONNECTOR_TEST_KEY", KEY)
    r = runner.invoke(cli, ["serve", "--model", str(tiny_model_dir), "--api-key-env", "CONNECTOR_TEST_KEY"])
    assert r.exit_code == 0 and "warning" not in r.output and KEY not in r.output
    assert started["host"] == "127.0.0.1" and started["app"].state.service.settings.api_key == KEY
