"""Legacy dimensions: PCA fit and persistence, the three output modes, backfill (with kill and
resume) and search with the projected query, on embedded Qdrant and Milvus Lite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from connector.app import open_sink
from connector.cli import cli
from connector.config import load_config
from connector.encoders.bge_m3 import BGEM3Encoder
from connector.errors import ConfigError
from connector.projection import ProjectionError, fit, load
from connector.schemas_layout import load_layout

K = 24  # the tiny model gives 32-d vectors: 32 -> 24 is bge-m3's 1024 -> 768 ratio


# ---- the projection itself ---------------------------------------------------------------
def test_pca_matches_numpy_svd_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12))
    p = fit(x, 5, "model-a")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    assert np.allclose(np.abs(p.components), np.abs(vt[:5]), atol=1e-4)  # same subspace and order
    assert p.explained_variance == pytest.approx(float((s[:5] ** 2).sum() / (s**2).sum()), rel=1e-5)
    assert np.allclose(p.components @ p.components.T, np.eye(5), atol=1e-5)
    y = p.apply(x)
    assert y.shape == (500, 5) and np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    assert fit(x, 5, "model-a").sha256 == p.sha256  # refitting the same sample gives the same matrix


def test_projection_persists_with_its_metadata_and_hash(tmp_path):
    x = np.random.default_rng(2).standard_normal((100, 8))
    p = fit(x, 3, "model-a")
    p.save(tmp_path)
    q = load(tmp_path)
    assert q.sha256 == p.sha256 and q.describe() == p.describe()
    assert q.describe()["sample_size"] == 100 and q.describe()["source_fingerprint"] == "model-a"
    np.testing.assert_array_equal(q.apply(x), p.apply(x))
    data = dict(np.load(tmp_path / "projection.npz"))
    data["components"] = data["components"] * 1.01  # a damaged artifact is refused
    np.savez(tmp_path / "projection.npz", **data)
    with pytest.raises(ProjectionError, match="damaged"):
        load(tmp_path)


def test_projection_errors():
    x = np.random.default_rng(3).standard_normal((10, 8))
    with pytest.raises(ConfigError, match=r"projection.dim \(9\) must be smaller than the vectors' size \(8\)"):
        fit(x, 9, "m")
    with pytest.raises(ProjectionError, match="only 10 sample vectors for a 12-d projection"):
        fit(np.random.default_rng(3).standard_normal((10, 16)), 12, "m")
    with pytest.raises(ProjectionError, match="takes 8-d vectors, got 16-d"):
        fit(x, 4, "m").apply(np.ones(16))
    with pytest.raises(ProjectionError, match="projection fit"):
        load(Path("/nonexistent"))


# ---- through the CLI -------------------------------------------------------------------------
WORDS = ("router packet cable firmware invoice password account billing screen battery charger printer "
         "network signal update backup restore license server client token window folder camera sensor "
         "keyboard monitor driver kernel memory storage cloud mirror bridge switch filter").split()


def write_corpus(root: Path, docs: int = 30) -> None:
    """Documents of distinct random words, so that even a random-weight model tells chunks apart."""
    import random

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for n in range(docs):
        body = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(1 + n % 3))
        (root / f"doc-{n:02d}.md").write_text(body, encoding="utf-8")


def make_project(tmp_path: Path, model: Path, backend: str, output: str | None, docs: int = 30) -> Path:
    write_corpus(tmp_path / "docs", docs)
    sink = {"qdrant": {"type": "qdrant", "path": "./store/q"}, "milvus": {"type": "milvus", "uri": "./store/m.db"}}
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 24, "overlap_tokens": 4},
        "encoder": {"model": str(model), "max_length": 512},
        "sink": {**sink[backend], "collection": "kb"},
        "state_dir": "./state",
    }
    if output:
        config["projection"] = {"dim": K, "sample": 40, "output": output}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    return result.exit_code, (json.loads(result.stdout) if result.stdout.strip() else {}), result.stdout + result.stderr


def stored_points(config_path: Path, collection: str | None = None, layout=None):
    config = load_config(config_path)
    if collection:
        config.sink.collection = collection
    with open_sink(config) as sink:
        if layout is not None:
            sink.layout = layout
        info = sink.describe()
        return info, sink.retrieve(sorted(sink.iter_ids()), with_vectors=True)


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
@pytest.mark.parametrize("output", ["dense", "dense+legacy", "legacy"])
def test_output_modes(tmp_path, tiny_model_dir, backend, output):
    cfg = make_project(tmp_path, tiny_model_dir, backend, output)
    code, fitted, out = run("projection", "fit", "-c", str(cfg), "--from", "source")
    assert code == 0 and fitted["k"] == K and fitted["source_dim"] == 32 and 0 < fitted["explained_variance"] <= 1, out
    code, shown, _ = run("projection", "show", "-c", str(cfg))
    assert shown == fitted
    code, report, out = run("sync", "-c", str(cfg))
    assert code == 0 and fitted["sample_size"] == 40, out
    info, points = stored_points(cfg)
    chunks = report["chunks"]
    # the fit's sample came from the cache: the model encoded only the other distinct texts
    assert chunks["encoded"] == len({p.payload["text"] for p in points}) - 40
    assert chunks["encoded"] + chunks["cached"] == chunks["upserted"] == len(points)
    expected_vectors = {"dense": {"dense": 32}, "dense+legacy": {"dense": 32, f"dense_{K}": K},
                        "legacy": {f"dense_{K}": K}}[output]
    assert info.dense_sizes == expected_vectors and info.vectors["sparse"] == "sparse"
    projection = load(load_config(cfg).state_dir)
    fresh = BGEM3Encoder(str(tiny_model_dir), max_length=512).encode([p.payload["text"] for p in points])
    for point, v in zip(points, fresh):
        if output != "legacy":
            np.testing.assert_allclose(point.dense, v.dense, atol=1e-5)
        if output != "dense":
            np.testing.assert_allclose(point.extra[f"dense_{K}"], projection.apply(v.dense), atol=1e-5)
        assert point.sparse.indices.tolist() == v.sparse.indices.tolist()

    code, embedded, _ = run("embed", "-c", str(cfg), "hello")
    assert ("dense_legacy" in embedded["embeddings"][0]) == (output != "dense")
    if output != "dense":
        legacy = np.array(embedded["embeddings"][0]["dense_legacy"])
        assert legacy.shape == (K,) and np.linalg.norm(legacy) == pytest.approx(1, abs=1e-5)

    text = points[3].payload["text"]
    for mode in (["dense", "hybrid"] + (["legacy"] if output != "dense" else [])):
        code, found, out = run("search", "-c", str(cfg), text, "--mode", mode, "--limit", "3")
        # random tiny-model weights make near-duplicate texts tie: the exact chunk is in the top 3
        assert code == 0 and text in [h["text"] for h in found["hits"]], out
        if mode in ("dense", "legacy"):
            assert found["hits"][0]["score"] == pytest.approx(1, abs=1e-3)
        assert found["vector"] == ("dense" if output == "dense" or (output == "dense+legacy" and mode != "legacy")
                                   else f"dense_{K}")


def test_search_refuses_a_projection_the_documents_were_not_written_with(tmp_path, tiny_model_dir):
    cfg = make_project(tmp_path, tiny_model_dir, "qdrant", "dense+legacy")
    assert run("projection", "fit", "-c", str(cfg), "--from", "source")[0] == 0
    assert run("sync", "-c", str(cfg))[0] == 0
    code, refit, _ = run("projection", "fit", "-c", str(cfg), "--from", "store", "--sample", "30")
    assert code == 0
    code, data, out = run("search", "-c", str(cfg), "router", "--mode", "legacy")
    assert code == 2 and "was written with projection" in data["error"] and "connector sync" in data["error"], out
    code, report, out = run("sync", "-c", str(cfg))  # the new matrix changes the fingerprint: rewrite
    assert code == 0 and report["documents"]["changed"] == 30 and report["chunks"]["encoded"] == 0, out
    assert run("search", "-c", str(cfg), "router", "--mode", "legacy")[0] == 0


def test_sync_without_a_fitted_projection_says_how_to_fit(tmp_path, tiny_model_dir):
    cfg = make_project(tmp_path, tiny_model_dir, "qdrant", "legacy")
    code, data, out = run("sync", "-c", str(cfg))
    assert code == 2 and "connector projection fit" in data["error"], out
    code, data, out = run("projection", "fit", "-c", str(cfg), "--dim", "64", "--from", "source")
    assert code == 2 and "must be smaller than the vectors' size (32)" in data["error"], out


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
def test_backfill_writes_projected_vectors_and_search_uses_them(tmp_path, tiny_model_dir, backend):
    cfg = make_project(tmp_path, tiny_model_dir, backend, None)
    assert run("sync", "-c", str(cfg))[0] == 0
    code, report, out = run("backfill", "-c", str(cfg), "--dim", str(K), "--page-size", "7")
    assert code == 0, out
    _, source_points = stored_points(cfg)
    assert report["target_collection"] == f"kb_{K}" and report["points"]["written"] == len(source_points)
    assert report["pages"] == -(-len(source_points) // 7)
    projection = load(load_config(cfg).state_dir)
    assert report["projection_sha256"] == projection.sha256 and projection.sample_size == len(source_points)
    info, target_points = stored_points(cfg, f"kb_{K}", load_layout("chunks_legacy", legacy_field=f"dense_{K}"))
    assert info.dense_sizes == {f"dense_{K}": K}
    assert [p.id for p in target_points] == [p.id for p in source_points]
    for s, t in zip(source_points, target_points):
        assert t.payload == s.payload and t.sparse.indices.tolist() == s.sparse.indices.tolist()
        np.testing.assert_allclose(t.extra[f"dense_{K}"], projection.apply(s.dense), atol=1e-5)
    text = source_points[5].payload["text"]
    code, found, out = run("search", "-c", str(cfg), text, "--collection", f"kb_{K}", "--mode", "dense", "--limit", "3")
    assert code == 0 and text in [h["text"] for h in found["hits"]] and found["vector"] == f"dense_{K}", out
    code, again, out = run("backfill", "-c", str(cfg), "--dim", str(K))  # idempotent
    assert code == 0 and again["points"]["written"] == len(source_points)
    assert len(stored_points(cfg, f"kb_{K}", load_layout("chunks_legacy", legacy_field=f"dense_{K}"))[1]) == len(source_points)


def test_backfill_into_a_collection_of_the_wrong_size_writes_nothing(tmp_path, tiny_model_dir):
    cfg = make_project(tmp_path, tiny_model_dir, "qdrant", None)
    assert run("sync", "-c", str(cfg))[0] == 0
    config = load_config(cfg)
    config.sink.collection = "old_768"
    with open_sink(config) as sink:
        sink.layout = load_layout("chunks_legacy", legacy_field=f"dense_{K}")
        sink.ensure_collection(None, K + 1)
    code, data, out = run("backfill", "-c", str(cfg), "--dim", str(K), "--target", "old_768")
    assert code == 2 and f"has size {K + 1}, the config asks for {K}" in data["error"], out
    assert stored_points(cfg, "old_768", load_layout("chunks_legacy", legacy_field=f"dense_{K}"))[0].count == 0


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
def test_backfill_resumes_after_kill_9(tmp_path, tiny_model_dir, backend):
    cfg = make_project(tmp_path, tiny_model_dir, backend, None, docs=120)
    assert run("sync", "-c", str(cfg))[0] == 0
    assert run("projection", "fit", "-c", str(cfg), "--dim", str(K))[0] == 0
    checkpoint = tmp_path / "state" / f"backfill-kb_{K}.json"
    exe = str(Path(sys.executable).parent / "connector")
    proc = subprocess.Popen([exe, "backfill", "-c", str(cfg), "--dim", str(K), "--page-size", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the backfill finished before it could be killed"
    done_before = json.loads(checkpoint.read_text())["last_id"]
    code, report, out = run("backfill", "-c", str(cfg), "--dim", str(K), "--page-size", "4")
    assert code == 0, out
    assert report["points"]["resumed_after"] > 0
    assert report["points"]["resumed_after"] + report["points"]["written"] == report["points"]["source"]
    _, source_points = stored_points(cfg)
    _, target_points = stored_points(cfg, f"kb_{K}", load_layout("chunks_legacy", legacy_field=f"dense_{K}"))
    assert sorted(p.id for p in target_points) == sorted(p.id for p in source_points)
    assert done_before < max(p.id for p in target_points)
    assert not checkpoint.exists()


def test_fit_without_from_uses_the_store_once_it_holds_points_and_says_so(tmp_path, tiny_model_dir):
    cfg = str(make_project(tmp_path, tiny_model_dir, "qdrant", None))
    code, first, out = run("projection", "fit", "-c", cfg, "--dim", str(K))  # no collection yet: the source
    assert code == 0 and first["fitted_from"] == "source", out
    assert not (tmp_path / "store").exists()  # looking for the collection created no store
    assert run("sync", "-c", cfg)[0] == 0
    code, second, out = run("projection", "fit", "-c", cfg, "--dim", str(K))
    assert code == 0 and second["fitted_from"] == "store", out
    assert load(load_config(cfg).state_dir).describe()["fitted_from"] == "store"
    human = CliRunner().invoke(cli, ["projection", "fit", "-c", cfg, "--dim", str(K)], catch_exceptions=False)
    assert human.exit_code == 0 and "of the store's vectors" in human.stdout
    code, forced, out = run("projection", "fit", "-c", cfg, "--dim", str(K), "--from", "source")
    assert code == 0 and forced["fitted_from"] == "source", out


def test_fit_takes_the_state_dir_lock(tmp_path, tiny_model_dir):
    from connector.lock import StateLock

    cfg = str(make_project(tmp_path, tiny_model_dir, "qdrant", None))
    with StateLock(load_config(cfg).state_dir):  # a sync (or another fit) is running
        code, data, out = run("projection", "fit", "-c", cfg, "--dim", str(K), "--from", "source")
    assert code == 1 and "already running" in data["error"], out
    assert not (tmp_path / "state" / "projection.npz").exists()
