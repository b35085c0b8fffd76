"""The Ray engine on a real two-node Ray cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`, as
Ray's own tests do), with the tiny model: the vectors, a sync and its scenarios, and the faults,
on embedded Qdrant and on a `milvus-lite server` process (a network store, as on a real cluster)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from connector import recovery
from connector.config import MilvusSinkConfig, load_config, parse_config
from connector.encoders.base import Encoder
from connector.engines.local import build_local_encoder
from connector.errors import EngineError, ModelLoadError
from connector.encoders import onnx
from connector.engines.ray import (EncoderWorker, RayEncoder, actor_config, connect, model_files, onnx_graph,
                                   wait_started)
from connector.pipeline import make_encoder, run_sync
from connector.sinks.factory import make_sink
from conftest import RAY_ENV
from milvus_server import free_port, milvus_server  # noqa: F401  (session fixture)

CONNECTOR = str(Path(sys.executable).parent / "connector")


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a worker node, one CPU each, on 127.0.0.1; shut down (every process) after the module."""
    from ray.cluster_utils import Cluster

    assert all(os.environ.get(name) == value for name, value in RAY_ENV.items())  # see conftest.py
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:")
        yield cluster
    finally:
        ray.shutdown()  # the driver's connection, made by the engine
        nodes = cluster.list_all_nodes()
        cluster.shutdown()
        assert not any(node.any_processes_alive() for node in nodes)


def write_corpus(root: Path, docs: int = 24) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(docs):
        body = " ".join(f"Item {n}.{k}: the relay {k * n} resets when the fuse number {k} is replaced."
                        for k in range(1 + n % 7))
        (root / f"doc{n:02d}.md").write_text(f"# Note {n}\n\n{body}\n", encoding="utf-8")
    (root / "empty-ish.md").write_text("# Title only\n", encoding="utf-8")
    (root / "zh.md").write_text("# 常见问题\n\n如何重置密码？请点击“忘记密码”。", encoding="utf-8")


@pytest.fixture(params=["qdrant", pytest.param("milvus-server", marks=pytest.mark.server)])
def store(request, tmp_path):
    """store(name) -> the sink config of a store named `name`: embedded Qdrant in tmp_path, or a
    collection of its own on the session's `milvus-lite server` (dropped after the test)."""
    if request.param == "qdrant":
        yield lambda name: qdrant_sink(tmp_path, name)
        return
    uri, made = request.getfixturevalue("milvus_server").uri, []

    def milvus(name: str) -> dict:
        made.append({"type": "milvus", "uri": uri, "collection": f"kb_{name}_{uuid.uuid4().hex[:8]}"})
        return made[-1]

    yield milvus
    for data in made:  # the server lives for the session: leave it clean
        with make_sink(MilvusSinkConfig(**data)) as sink:
            if sink.describe() is not None:
                sink.drop()


def qdrant_sink(tmp_path: Path, name: str) -> dict:
    return {"type": "qdrant", "path": str(tmp_path / name / "qdrant"), "collection": "kb"}


def config_data(tmp_path: Path, model, name: str, engine: dict | None = None, sink: dict | None = None) -> dict:
    data = {
        "source": {"type": "files", "path": str(tmp_path / "docs")},
        "chunking": {"max_tokens": 24, "overlap_tokens": 4},
        # the actors' torch threads are cpus_per_encoder (1): the local engine's too, for bit-equal sums
        "encoder": {"model": str(model), "max_length": 512, "batch_size": 4, "threads": 1},
        "sink": sink or qdrant_sink(tmp_path, name),
        "state_dir": str(tmp_path / name / "state"),
    }
    if engine:
        data["engine"] = engine
    return data


def ray_engine(cluster, encoders: int = 2) -> dict:
    return {"type": "ray", "address": cluster.address, "encoders": encoders, "cpus_per_encoder": 1}


def summary(report) -> dict:
    data = report.to_json() if not isinstance(report, dict) else dict(report)
    data.pop("seconds")
    return data


def same_vectors(a, b) -> bool:
    return (np.array_equal(a.dense, b.dense) and np.array_equal(a.sparse.indices, b.sparse.indices)
            and np.array_equal(a.sparse.values, b.sparse.values))


def stored_points(config) -> dict:
    with make_sink(config.sink) as sink:
        return {p.id: p for p in sink.retrieve(sorted(sink.all_ids()), True)}


def stored_chunks(config) -> dict:
    """The store's points by (doc_id, chunk_index): two collections on one server compare by what
    their points hold, as a point id includes the collection's name."""
    points = stored_points(config).values()
    chunks = {(p.payload["doc_id"], p.payload["chunk_index"]): p for p in points}
    assert len(chunks) == len(points)
    return chunks


def assert_same_store(expected, got) -> None:
    """The two configs' stores hold the same chunks: payloads equal, vectors bit-equal."""
    expected_chunks, got_chunks = stored_chunks(expected), stored_chunks(got)
    assert expected_chunks.keys() == got_chunks.keys()
    for key, point in expected_chunks.items():
        assert got_chunks[key].payload == point.payload, key
        assert same_vectors(got_chunks[key], point), key


def wait_for_free_cpus(cluster, cpus: float = 2, timeout: float = 60) -> None:
    """Until the cluster has `cpus` CPUs free (ray.kill is asynchronous); assert it gets there."""
    connect(ray, cluster.address)  # this process may have let only CLI runs connect so far
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == cpus


#: Texts of many lengths, and runs of texts of one length that the encoder batches together (as it
#: does a sync's chunks): vectors depend on which texts share a batch, so these show a batch plan
#: other than the local encoder's.
TEXTS = ["", "short", "a little longer text about fuses and relays", "中文文本，测试。", "x " * 300,
         *[f"text number {n} " * (n % 9 + 1) for n in range(23)],
         *[f"{'relay fuse ' * 40}{'x ' * (n % 3)}{n}" for n in range(30)]]  # 204-208 tokens: padded batches


@pytest.mark.slow
def test_two_actors_on_two_nodes_give_the_local_engines_vectors(ray_cluster, tmp_path, tiny_model_dir):
    config = parse_config(config_data(tmp_path, tiny_model_dir, "a", ray_engine(ray_cluster)), tmp_path)
    encoder = make_encoder(config)
    try:
        assert isinstance(encoder, RayEncoder)
        encoder.start()  # else at the first text to encode
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        assert len({w["node_id"] for w in encoder.workers}) == 2  # one actor per node (SPREAD)
        assert {w["node"] for w in encoder.workers} == {"127.0.0.1"}
        assert {w["model_from"] for w in encoder.workers} == {"path"}
        local = build_local_encoder(parse_config(config_data(tmp_path, tiny_model_dir, "b"), tmp_path))
        assert encoder.fingerprint == local.fingerprint
        assert encoder.dimension == local.dimension
        remote_vectors, local_vectors = encoder.encode(TEXTS), local.encode(TEXTS)
        assert len(remote_vectors) == len(TEXTS)
        assert all(same_vectors(r, v) for r, v in zip(remote_vectors, local_vectors))
        assert encoder.encode([]) == []
    finally:
        encoder.close()
    wait_for_free_cpus(ray_cluster)


def local_and_ray_configs(tmp_path: Path, model, cluster, store) -> tuple:
    """The same sync on the local engine and on the cluster, each with its own state dir and store."""
    local = parse_config(config_data(tmp_path, model, "local", sink=store("local")), tmp_path)
    remote = parse_config(config_data(tmp_path, model, "ray", ray_engine(cluster), store("ray")), tmp_path)
    return local, remote


@pytest.mark.slow
def test_sync_with_the_ray_engine_equals_the_local_engine_first_unchanged_edit_prune(
        ray_cluster, tmp_path, tiny_model_dir, store):
    write_corpus(tmp_path / "docs")
    local, remote = local_and_ray_configs(tmp_path, tiny_model_dir, ray_cluster, store)
    encoder = make_encoder(remote)

    def both(prune: bool = False) -> dict:
        expected = run_sync(local, prune=prune)
        got = run_sync(remote, prune=prune, encoder=encoder)
        assert summary(got) == summary(expected)
        assert recovery.verify(local).ok and recovery.verify(remote).ok
        return summary(got)

    try:
        first = both()
        assert first["documents"]["new"] == 26 and first["chunks"]["encoded"] > 32  # more than one encode call
        assert both()["documents"]["unchanged"] == 26
        (tmp_path / "docs" / "doc03.md").write_text("# Note 3\n\nThe relay was replaced by a breaker.\n")
        (tmp_path / "docs" / "doc04.md").unlink()
        (tmp_path / "docs" / "new.md").write_text("# New\n\nA new note about the breaker panel.\n")
        edited = both(prune=True)
        assert (edited["documents"]["changed"], edited["documents"]["deleted"], edited["documents"]["new"]) == (1, 1, 1)
    finally:
        encoder.close()
    assert_same_store(local, remote)
    wait_for_free_cpus(ray_cluster)


@pytest.mark.slow
def test_dead_letters_retry_and_the_embedding_cache_count_the_same_on_both_engines(
        ray_cluster, tmp_path, tiny_model_dir, monkeypatch):
    """The store refuses writes after 3 good calls (a real qdrant-client error, raised in the
    driver, which writes on both engines): the same dead letters, `failed`, `verify` and `retry`
    outcomes on both engines, then an edit whose unchanged chunks come from the embedding cache."""
    from test_faults import QdrantFault, bad_request, make_config, run

    outcomes, configs = {}, {}
    for name, engine in (("local", None), ("ray", ray_engine(ray_cluster))):
        root = tmp_path / name
        root.mkdir()
        cfg = make_config(root, tiny_model_dir, {"type": "qdrant", "path": "./store", "engine": "local-mode"},
                          **({"engine": engine} if engine else {}))
        configs[name] = cfg
        fault = QdrantFault(monkeypatch, bad_request(), after=3)
        steps = {}
        code, report, out = run("sync", "-c", str(cfg))
        assert code == 3 and report["chunks"]["failed"] > 0, out
        report.pop("seconds")
        steps["sync"] = report
        steps["failed"] = run("failed", "-c", str(cfg))[1]
        for group in steps["failed"]["groups"]:  # when, not what
            group.pop("first_failed"), group.pop("last_failed")
        code, verified, _ = run("verify", "-c", str(cfg))
        steps["verify"] = (code, verified["ok"])
        fault.active = False
        steps["retry"] = run("retry", "-c", str(cfg))[1]
        code, verified, _ = run("verify", "-c", str(cfg))
        steps["verify after retry"] = (code, verified["ok"])
        docs = root / "docs"
        (docs / "doc-02.md").write_text((docs / "doc-02.md").read_text() + "\n\nA new paragraph about fuses.")
        (docs / "copy-of-doc-05.md").write_text((docs / "doc-05.md").read_text())  # its vectors: the cache's
        code, edited, out = run("sync", "-c", str(cfg))
        assert code == 0, out
        edited.pop("seconds")
        steps["edit"] = edited
        outcomes[name] = steps
    for step in outcomes["local"]:
        assert outcomes["ray"][step] == outcomes["local"][step], step
    assert outcomes["ray"]["verify"] == (3, False) and outcomes["ray"]["verify after retry"] == (0, True)
    assert outcomes["ray"]["failed"]["dead_letters"] == outcomes["ray"]["sync"]["documents"]["failed"] > 0
    edit = outcomes["ray"]["edit"]
    assert edit["documents"]["new"] == edit["documents"]["changed"] == 1 and edit["chunks"]["encoded"] == 1, edit
    assert edit["chunks"]["cached"] >= 1 and edit["embedding_cache_hits"] >= 1, edit
    local_points, remote_points = (stored_points(load_config(configs[n])) for n in ("local", "ray"))
    assert local_points.keys() == remote_points.keys()
    for i, point in local_points.items():  # the local engine's torch uses 2 threads, an actor 1
        np.testing.assert_allclose(remote_points[i].dense, point.dense, atol=1e-5)
        assert remote_points[i].sparse.indices.tolist() == point.sparse.indices.tolist()


@pytest.mark.slow
def test_projection_fit_from_the_source_on_the_ray_engine_equals_the_local_fit(ray_cluster, tmp_path, tiny_model_dir):
    from connector.backfill import fit_projection

    write_corpus(tmp_path / "docs", docs=10)
    local = parse_config(config_data(tmp_path, tiny_model_dir, "local"), tmp_path)
    remote = parse_config(config_data(tmp_path, tiny_model_dir, "ray", ray_engine(ray_cluster)), tmp_path)
    expected = fit_projection(local, 4, 20, source="source")
    assert fit_projection(remote, 4, 20, source="source").sha256 == expected.sha256
    wait_for_free_cpus(ray_cluster)  # the command's actors stopped when it dropped its encoder


class KillActorOnSecondCall(Encoder):
    """A RayEncoder whose first actor's worker process is SIGKILLed just before the second encode call."""

    def __init__(self, inner: RayEncoder):
        self.inner, self.calls, self.killed = inner, 0, None
        self.dimension, self.max_length = inner.dimension, inner.max_length

    @property
    def fingerprint(self):
        return self.inner.fingerprint

    @property
    def tokenizer(self):
        return self.inner.tokenizer

    def encode(self, texts):
        self.calls += 1
        if self.calls == 2:
            self.killed = self.inner.describe_workers()[0]["pid"]
            os.kill(self.killed, signal.SIGKILL)
        return self.inner.encode(texts)


@pytest.mark.slow
def test_an_actor_killed_mid_sync_is_restarted_and_the_sync_completes(ray_cluster, tmp_path, tiny_model_dir, store):
    write_corpus(tmp_path / "docs")
    local, remote = local_and_ray_configs(tmp_path, tiny_model_dir, ray_cluster, store)
    encoder = KillActorOnSecondCall(make_encoder(remote))
    try:
        got = run_sync(remote, encoder=encoder)
        assert encoder.killed is not None and encoder.calls >= 3  # killed mid-sync, with calls after it
        restarted = encoder.inner.describe_workers()[0]
        assert restarted["pid"] != encoder.killed and restarted["error"] is None
    finally:
        encoder.inner.close()
    assert summary(got) == summary(run_sync(local))
    assert got.exit_code == 0 and recovery.verify(remote).ok
    assert_same_store(local, remote)
    wait_for_free_cpus(ray_cluster)


@pytest.mark.slow
def test_a_model_the_workers_cannot_load_fails_the_sync_with_their_reason(ray_cluster, tmp_path, tiny_model_dir):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = next(p for p in broken.iterdir() if p.name in ("model.safetensors", "pytorch_model.bin"))
    weights.write_bytes(b"not a weight file" * 100)  # the driver never reads the weights: only the workers fail
    write_corpus(tmp_path / "docs")
    config = parse_config(config_data(tmp_path, broken, "ray", ray_engine(ray_cluster)), tmp_path)
    with pytest.raises(ModelLoadError) as failed:
        run_sync(config)
    message = str(failed.value)
    assert "encoder actor on node 127.0.0.1" in message and "could not load the model" in message
    assert weights.name in message or "weights" in message, message  # the worker's own reason
    assert "Traceback" not in message and "RayTaskError" not in message and "ActorDiedError" not in message
    with make_sink(config.sink) as sink:
        assert sink.describe() is None  # nothing written: the collection was not even created
    wait_for_free_cpus(ray_cluster)  # the actors of the failed start were stopped


@pytest.mark.slow
def test_an_actor_whose_node_lacks_the_model_loads_the_copy_shipped_through_the_object_store(
        ray_cluster, tmp_path, tiny_model_dir):
    folder = tmp_path / "driver-only-model"
    shutil.copytree(tiny_model_dir, folder)
    config = parse_config(config_data(tmp_path, folder, "a", ray_engine(ray_cluster)), tmp_path)
    local = build_local_encoder(config)  # the driver's copy: tokenizer and fingerprint loaded, weights not
    connect(ray, config.engine.address)
    shipped = [ray.put(model_files(folder))]
    shutil.rmtree(folder)  # from here on only the object store has the model
    sha = local.fingerprint["content_sha256"]
    actor = ray.remote(EncoderWorker).options(num_cpus=1)
    with_copy, without = actor.remote(actor_config(config, folder), sha, shipped), None
    try:
        info = ray.get(with_copy.describe.remote())
        assert (info["model_from"], info["error"]) == ("object store", None)
        expected = build_local_encoder(parse_config(config_data(tmp_path, tiny_model_dir, "b"), tmp_path)).encode(TEXTS)
        assert all(same_vectors(a, b) for a, b in zip(ray.get(with_copy.encode.remote(TEXTS)), expected))
        ray.kill(with_copy)
        without = actor.remote(actor_config(config, folder), sha, None)
        error = ray.get(without.describe.remote())["error"]
        assert str(folder) in error and "missing on this node" in error and "ship_model: true" in error
    finally:
        for handle in (with_copy, without):
            if handle is not None:
                ray.kill(handle)
        shutil.rmtree(Path(tempfile.gettempdir()) / "connector-models" / sha, ignore_errors=True)
    wait_for_free_cpus(ray_cluster)


# ---- the ONNX backend (fp32 and int8) ----------------------------------------------------------
def onnx_config_data(tmp_path: Path, model, name: str, quantize: str, engine: dict | None = None) -> dict:
    data = config_data(tmp_path, model, name, engine)
    data["encoder"].update(backend="onnx", quantize=quantize)  # threads 1 = cpus_per_encoder: onnxruntime's too
    return data


def cached_files(state_dir: Path) -> list[str]:
    """The files in the state dir's ONNX cache, by their path in it."""
    return sorted(str(p.relative_to(state_dir / "onnx")) for p in (state_dir / "onnx").rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_onnx_on_the_ray_engine_is_exported_once_by_the_driver_and_gives_the_local_engines_vectors(
        ray_cluster, tmp_path, tiny_model_dir, quantize):
    data = onnx_config_data(tmp_path, tiny_model_dir, "a", quantize, ray_engine(ray_cluster))
    config = parse_config(data, tmp_path)
    exports = onnx.export_count
    encoder = make_encoder(config)
    try:
        assert not (config.state_dir / "onnx").exists()  # nothing is exported before the pool starts
        encoder.start()
        assert onnx.export_count == exports + 1  # the driver exported, once
        # the local engine's encoder on the same state dir: it runs the same graph file, without exporting again
        local = build_local_encoder(parse_config({**data, "engine": {"type": "local"}}, tmp_path))
        graph = local.model_path
        assert graph.is_file() and graph.parent.parent == config.state_dir / "onnx"
        exported = cached_files(config.state_dir)
        names = {"none": ["model.onnx", "model.onnx.data"],
                 "int8": ["model.int8.onnx", "model.int8.onnx.data", "model.onnx", "model.onnx.data"]}[quantize]
        assert exported == [f"{graph.parent.name}/{name}" for name in names]
        assert len({w["node_id"] for w in encoder.workers}) == 2
        assert {(w["model_from"], w["graph_from"]) for w in encoder.workers} == {("path", "path")}
        # each actor runs the driver's file and exported nothing itself
        ran = ray.get([a.__ray_call__.remote(lambda w: (str(w._encoder.model_path), onnx.export_count))
                       for a in encoder._actors])
        assert ran == [(str(graph), 0)] * 2
        assert encoder.fingerprint == local.fingerprint and encoder.fingerprint["quantize"] == quantize
        remote_vectors, local_vectors = encoder.encode(TEXTS), local.encode(TEXTS)
        assert len(remote_vectors) == len(TEXTS)
        assert all(same_vectors(r, v) for r, v in zip(remote_vectors, local_vectors))  # np.array_equal
        assert onnx.export_count == exports + 1 and cached_files(config.state_dir) == exported
    finally:
        encoder.close()
    wait_for_free_cpus(ray_cluster)


@pytest.mark.slow
def test_an_int8_onnx_sync_on_the_ray_engine_equals_the_local_engines(ray_cluster, tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "docs")
    local = parse_config(onnx_config_data(tmp_path, tiny_model_dir, "local", "int8"), tmp_path)
    remote = parse_config(onnx_config_data(tmp_path, tiny_model_dir, "ray", "int8", ray_engine(ray_cluster)), tmp_path)
    encoder = make_encoder(remote)

    def both(prune: bool = False) -> dict:
        expected = run_sync(local, prune=prune)
        got = run_sync(remote, prune=prune, encoder=encoder)
        assert summary(got) == summary(expected) and got.exit_code == 0
        assert recovery.verify(local).ok and recovery.verify(remote).ok
        return summary(got)

    try:
        first = both()
        assert first["documents"]["new"] == 26 and first["chunks"]["encoded"] > 32  # more than one encode call
        (tmp_path / "docs" / "doc03.md").write_text("# Note 3\n\nThe relay was replaced by a breaker.\n")
        (tmp_path / "docs" / "doc04.md").unlink()
        edited = both(prune=True)
        assert (edited["documents"]["changed"], edited["documents"]["deleted"]) == (1, 1)
    finally:
        encoder.close()
    # each state dir has its own export of the same model (the same weights; the graph files differ in a few
    # bytes of their layout), and the vectors are equal
    local_points, remote_points = stored_points(local), stored_points(remote)
    assert local_points.keys() == remote_points.keys() and len(local_points) > 32
    assert all(same_vectors(local_points[i], remote_points[i]) for i in local_points)  # np.array_equal
    wait_for_free_cpus(ray_cluster)


@pytest.mark.slow
def test_an_actor_whose_node_lacks_the_onnx_graph_runs_the_copy_shipped_through_the_object_store(
        ray_cluster, tmp_path, tiny_model_dir):
    config = parse_config(onnx_config_data(tmp_path, tiny_model_dir, "a", "int8", ray_engine(ray_cluster)), tmp_path)
    local = build_local_encoder(config)
    connect(ray, config.engine.address)
    graph = onnx_graph(ray, local, ship=True)  # the driver exports and ships
    expected = local.encode(TEXTS)
    shutil.rmtree(config.state_dir / "onnx")  # from here on only the object store has the graph
    sha = local.fingerprint["content_sha256"]
    actor = ray.remote(EncoderWorker).options(num_cpus=1)
    with_copy, without = actor.remote(actor_config(config, local.folder), sha, None, graph), None
    try:
        info = ray.get(with_copy.describe.remote())
        assert (info["model_from"], info["graph_from"], info["error"]) == ("path", "object store", None)
        assert all(same_vectors(a, b) for a, b in zip(ray.get(with_copy.encode.remote(TEXTS)), expected))
        assert not (config.state_dir / "onnx").exists()  # the actor wrote nothing into the driver's state dir
        ray.kill(with_copy)
        # without the shipped copy, a file of other bytes at the driver's path is not run
        Path(graph["path"]).parent.mkdir(parents=True)
        Path(graph["path"]).write_bytes(b"another graph")
        without = actor.remote(actor_config(config, local.folder), sha, None, {**graph, "shipped": None})
        with pytest.raises(ModelLoadError) as failed:
            wait_started(ray, [without], config)
        message = str(failed.value)
        assert "the encoder actor on node 127.0.0.1 could not load the model" in message
        assert f"the ONNX graph {graph['path']} that the driver exported is missing on this node, or holds other " \
               "bytes" in message and "engine.ship_model: true" in message
    finally:
        for handle in (with_copy, without):
            if handle is not None:
                ray.kill(handle)
        shutil.rmtree(Path(tempfile.gettempdir()) / "connector-models" / graph["sha256"], ignore_errors=True)
    wait_for_free_cpus(ray_cluster)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CONNECTOR, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def write_config(tmp_path: Path, data: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.slow
def test_cli_sync_on_the_ray_engine_and_with_engine_overrides_gives_the_same_summary(
        ray_cluster, tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "docs", docs=8)
    on_ray = config_data(tmp_path, tiny_model_dir, "ray", ray_engine(ray_cluster))
    runs = {  # config file, --engine, environment
        "ray": (write_config(tmp_path, on_ray, "ray"), [], {}),
        # a local config on the cluster: address auto, which finds it through RAY_ADDRESS
        "local config, --engine ray": (write_config(tmp_path, config_data(tmp_path, tiny_model_dir, "auto"), "auto"),
                                       ["--engine", "ray"], {"RAY_ADDRESS": ray_cluster.address}),
        "ray config, --engine local": (write_config(tmp_path, {**on_ray, **config_data(tmp_path, tiny_model_dir, "local")},
                                                    "local"), ["--engine", "local"], {}),
    }
    summaries = {}
    for name, (config, override, env) in runs.items():
        proc = run_cli("sync", "-c", str(config), "--json", *override, env=env)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        summaries[name] = summary(json.loads(proc.stdout))
        assert recovery.verify(load_config(config)).ok, name
    assert summaries["ray"]["documents"]["new"] == 10
    assert summaries["ray"] == summaries["local config, --engine ray"] == summaries["ray config, --engine local"]
    assert load_config(runs["ray config, --engine local"][0]).engine.type == "ray"  # the override is per run
    wait_for_free_cpus(ray_cluster)  # the CLI's actors ended with its process


def test_an_unreachable_cluster_fails_the_sync_before_anything_is_written(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "docs", docs=3)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(tmp_path, config_data(tmp_path, tiny_model_dir, "ray", {"type": "ray", "address": address}),
                          "ray")
    proc = run_cli("sync", "-c", str(config))
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach the Ray cluster at engine.address '{address}'" in proc.stderr
    assert "ray start --head" in proc.stderr and "--engine local" in proc.stderr
    assert "Traceback" not in proc.stderr
    with make_sink(load_config(config).sink) as sink:
        assert sink.describe() is None


#: What Ray Client's ray.init raised when the head's Ray Client server could not start the session (seen
#: once in ~8 runs of test_ray_start.py on a loaded machine): the server's traceback inside the message.
RAY_CLIENT_SESSION_FAILED = (
    "Initialization failure from server:\nTraceback (most recent call last):\n  File \"/venv/lib/python3.11/"
    "site-packages/ray/util/client/server/proxier.py\", line 772, in Datapath\n    raise RuntimeError(\n"
    "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.\n")


class FakeRay:
    """`ray` as `connect` uses it: `init` raises each of `failures` in turn, then succeeds; counts its calls."""

    def __init__(self, *failures: Exception):
        self.failures, self.inits = list(failures), 0

    def is_initialized(self):
        return False

    def init(self, address, **options):
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)


@pytest.fixture
def client_server_answers(monkeypatch):
    """The Ray Client port answers (no reachability check), and retries do not wait."""
    import connector.engines.ray as ray_engine_module

    monkeypatch.setattr(ray_engine_module, "check_reachable", lambda *args: None)
    monkeypatch.setattr(ray_engine_module, "CLIENT_SESSION_WAIT", 0.01)
    return ray_engine_module


def test_a_ray_client_server_that_fails_the_session_is_reported_with_its_reason_and_no_traceback(
        client_server_answers):
    fake = FakeRay(*(ConnectionAbortedError(RAY_CLIENT_SESSION_FAILED) for _ in range(5)))
    with pytest.raises(EngineError) as failed:
        connect(fake, "ray://127.0.0.1:10001")
    message = str(failed.value)
    assert ("(ConnectionAbortedError: Initialization failure from server: RuntimeError: Starting Ray client server "
            "failed. See ray_client_server_23000.err for detailed logs.)") in message
    assert "Traceback" not in message and "\n" not in message
    assert "answered but could not start this session's server process, 3 times" in message
    assert "cannot reach" not in message and "Nothing was written" in message
    assert fake.inits == client_server_answers.CLIENT_SESSION_ATTEMPTS == 3


def test_a_ray_client_session_that_fails_to_start_once_is_tried_again(client_server_answers):
    """A busy head's Ray Client server sometimes fails to start a session's server process; the
    next session usually starts: the engine tries again rather than failing the command."""
    fake = FakeRay(ConnectionAbortedError(RAY_CLIENT_SESSION_FAILED))
    connect(fake, "ray://127.0.0.1:10001")
    assert fake.inits == 2
    refused = FakeRay(ConnectionError("connection refused"))  # any other failure is not tried again
    with pytest.raises(EngineError, match="connection refused"):
        connect(refused, "ray://127.0.0.1:10001")
    assert refused.inits == 1


def committed_documents(state_dir: Path) -> int:
    """Documents the ledger has committed; 0 while the sync is still creating it."""
    import sqlite3

    from connector.ledger import Ledger

    try:
        ledger = Ledger.open_read_only(state_dir)
    except sqlite3.OperationalError:
        return 0
    try:
        return ledger.counts()["documents"] if ledger.exists else 0
    except sqlite3.OperationalError:  # its tables are not there yet
        return 0
    finally:
        ledger.close()


@pytest.mark.slow
def test_a_driver_killed_mid_sync_converges_on_the_next_run(ray_cluster, tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "docs", docs=160)
    data = config_data(tmp_path, tiny_model_dir, "ray", ray_engine(ray_cluster))
    data["chunking"] = {"max_tokens": 12, "overlap_tokens": 2}  # many small chunks: the sync lasts a while
    config = write_config(tmp_path, data, "ray")
    state_dir = Path(data["state_dir"])
    driver = subprocess.Popen([CONNECTOR, "sync", "-c", str(config), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while committed_documents(state_dir) == 0 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, "the sync ended before the test could kill it: make it longer"
        killed_at = committed_documents(state_dir)
        os.kill(driver.pid, signal.SIGKILL)  # the driver, with the ledger and the store open
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == -signal.SIGKILL and 0 < killed_at < 162
    wait_for_free_cpus(ray_cluster)  # its actors died with it (Ray ends an owner's actors)

    proc = run_cli("sync", "-c", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert second["documents"]["seen"] == 162 and second["documents"]["failed"] == 0
    assert second["documents"]["new"] + second["documents"]["unchanged"] + second["documents"]["changed"] == 162
    assert second["documents"]["unchanged"] >= killed_at  # what the ledger had committed is not encoded again
    assert recovery.verify(load_config(config)).ok
    # the same store as one uninterrupted sync on the local engine
    local = parse_config({**data, "engine": {"type": "local"}, "state_dir": str(tmp_path / "local" / "state"),
                          "sink": {**data["sink"], "path": str(tmp_path / "local" / "qdrant")}}, tmp_path)
    assert run_sync(local).exit_code == 0
    ours, theirs = stored_points(load_config(config)), stored_points(local)
    assert ours.keys() == theirs.keys()
    for pid in ours:  # equal up to float rounding: the run after the kill batched its texts otherwise
        a, b = ours[pid], theirs[pid]
        np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)
        assert np.array_equal(a.sparse.indices, b.sparse.indices)
        np.testing.assert_allclose(a.sparse.values, b.sparse.values, atol=1e-5)
        assert a.payload == b.payload
    wait_for_free_cpus(ray_cluster)


# ---- the pool starts at the first text to encode; backfill; an address that is no Ray head ----------
def ledger_dump(state_dir: Path) -> list[str]:
    """Every row of the ledger, as SQL."""
    import sqlite3

    from connector.ledger import Ledger

    db = sqlite3.connect(f"{(state_dir / Ledger.FILENAME).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def store_contents(config) -> dict:
    """Each point's id, payload and vectors, comparable with ==."""
    return {pid: (json.dumps(p.payload, sort_keys=True), p.dense.tolist(), p.sparse.indices.tolist(),
                  p.sparse.values.tolist()) for pid, p in stored_points(config).items()}


def test_with_nothing_to_encode_the_ray_engine_needs_no_cluster_and_with_texts_it_writes_nothing(
        tmp_path, tiny_model_dir):
    """An unchanged sync, a dry run, `projection fit --from store` and `backfill` never start the pool:
    they exit 0 with nothing listening at engine.address. A sync with a text to encode fails (exit 1)
    with the store and the ledger as they were, and `projection fit --from source` encodes on the
    pool: it fails the same way."""
    write_corpus(tmp_path / "docs", docs=4)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(tmp_path, config_data(tmp_path, tiny_model_dir, "ray", {"type": "ray", "address": address}),
                          "ray")
    loaded = load_config(config)
    first = run_cli("sync", "-c", str(config), "--engine", "local", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["documents"]["new"] == 6

    unchanged = run_cli("sync", "-c", str(config), "--json")
    assert unchanged.returncode == 0, unchanged.stderr
    assert json.loads(unchanged.stdout)["documents"]["unchanged"] == 6
    fitted = run_cli("projection", "fit", "-c", str(config), "--dim", "4", "--from", "store", "--json")
    assert fitted.returncode == 0, fitted.stderr
    backfilled = run_cli("backfill", "-c", str(config), "--dim", "4", "--json")
    assert backfilled.returncode == 0, backfilled.stderr
    assert json.loads(backfilled.stdout)["points"]["written"] > 0

    (tmp_path / "docs" / "doc01.md").write_text("# Note 1\n\nThe fuse box moved to the basement.\n", encoding="utf-8")
    dry = run_cli("sync", "-c", str(config), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["chunks"]["encoded"] > 0  # it would encode, but a dry run never does

    store, ledger = store_contents(loaded), ledger_dump(loaded.state_dir)
    changed = run_cli("sync", "-c", str(config))
    assert changed.returncode == 1, changed.stderr
    assert f"cannot reach the Ray cluster at engine.address '{address}'" in changed.stderr
    assert "Traceback" not in changed.stderr
    assert store_contents(loaded) == store and ledger_dump(loaded.state_dir) == ledger

    projection = loaded.state_dir / "projection.npz"
    saved = projection.read_bytes() if projection.exists() else None
    from_source = run_cli("projection", "fit", "-c", str(config), "--dim", "4", "--from", "source", "--sample", "1000")
    assert from_source.returncode == 1, from_source.stderr  # the edited note's chunk is not in the embedding cache
    assert f"cannot reach the Ray cluster at engine.address '{address}'" in from_source.stderr
    assert (projection.read_bytes() if projection.exists() else None) == saved


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and then says nothing (or `answer`, once)."""

    def __init__(self, answer: bytes = b""):
        import socket
        import threading

        self.answer, self.connections = answer, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections.append(conn)  # kept open: the client waits for an answer that never comes
            if self.answer:
                conn.sendall(self.answer)

    def close(self):
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.mark.parametrize("answer, expected", [
    (b"", "it accepted the connection but said nothing for 2 s (engine.start_timeout)"),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "it answered b'HTTP/1.1 ', not as a gRPC server"),
], ids=["silent", "http"])
def test_an_address_where_something_else_answers_fails_within_the_start_timeout(
        tmp_path, tiny_model_dir, answer, expected):
    write_corpus(tmp_path / "docs", docs=2)
    server = SilentServer(answer)
    try:
        engine = {"type": "ray", "address": server.address, "start_timeout": 2}
        config = write_config(tmp_path, config_data(tmp_path, tiny_model_dir, "ray", engine), "ray")
        # the timeout only keeps a hang (ray.init retrying for minutes) from stalling the suite
        proc = subprocess.run([CONNECTOR, "sync", "-c", str(config)], capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert proc.returncode == 1, proc.stderr
    assert f"engine.address '{server.address}' ({server.address}) is not a Ray cluster: {expected}" in proc.stderr
    assert "HOST:6379" in proc.stderr and "ray://HOST:10001" in proc.stderr and "--engine local" in proc.stderr
    assert "Traceback" not in proc.stderr
    with make_sink(load_config(config).sink) as sink:
        assert sink.describe() is None  # nothing written


@pytest.mark.slow
def test_a_backfill_on_the_ray_engine_gives_the_local_engines_collection(ray_cluster, tmp_path, tiny_model_dir):
    from connector.schemas_layout import load_layout

    write_corpus(tmp_path / "docs", docs=6)
    configs = {
        "local": write_config(tmp_path, config_data(tmp_path, tiny_model_dir, "local"), "local"),
        "ray": write_config(tmp_path, config_data(tmp_path, tiny_model_dir, "ray", ray_engine(ray_cluster)), "ray"),
    }
    targets = {}
    for engine, config in configs.items():
        synced = run_cli("sync", "-c", str(config), "--engine", engine)
        assert synced.returncode == 0, synced.stderr
        proc = run_cli("backfill", "-c", str(config), "--dim", "4", "--target", "kb_4", "--engine", engine, "--json")
        assert proc.returncode == 0, f"{engine}: {proc.stderr}"
        assert json.loads(proc.stdout)["points"]["written"] > 0
        sink = load_config(config).sink.model_copy(update={"collection": "kb_4"})
        with make_sink(sink, layout=load_layout("chunks_legacy", legacy_field="dense_4")) as store:
            targets[engine] = {p.id: p for p in store.retrieve(sorted(store.all_ids()), True)}
    local, remote = targets["local"], targets["ray"]
    assert local.keys() == remote.keys()
    for pid in local:
        assert local[pid].payload == remote[pid].payload
        np.testing.assert_allclose(local[pid].extra["dense_4"], remote[pid].extra["dense_4"], atol=1e-5)
        assert np.array_equal(local[pid].sparse.indices, remote[pid].sparse.indices)
        np.testing.assert_allclose(local[pid].sparse.values, remote[pid].sparse.values, atol=1e-6)
    wait_for_free_cpus(ray_cluster)
