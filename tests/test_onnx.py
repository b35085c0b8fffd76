"""OnnxEncoder: the exported graph gives torch's vectors (fp32) or close ones (int8), is exported
once per model and cache folder, and runs a sync through the CLI."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import onnxruntime  # noqa: E402,F401 - the onnx extra is part of dev: a missing one must fail, not skip

from connector.app import make_encoder  # noqa: E402
from connector.config import EncoderConfig, parse_config  # noqa: E402
from connector.encoders import onnx as onnx_backend  # noqa: E402
from connector.encoders.onnx import OnnxEncoder  # noqa: E402
from connector.errors import ConfigError, MissingExtraError  # noqa: E402
from connector.hashes import vector_identity  # noqa: E402

from test_encoder import TEXTS  # mixed lengths and scripts, an empty text, a truncated one

# Floors for int8 on the tiny random-weight model, set well below the measured figures
# (per-channel QInt8: min dense cosine 0.9996, mean 0.9998; top-10 sparse overlap min 0.83, mean 0.98).
INT8_MIN_COSINE, INT8_MEAN_COSINE = 0.99, 0.995
INT8_MIN_TOP10, INT8_MEAN_TOP10 = 0.6, 0.9


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def fp32_encoder(tiny_model_dir, cache_dir):
    return OnnxEncoder(str(tiny_model_dir), cache_dir=cache_dir, max_length=512, batch_size=4)


@pytest.fixture(scope="module")
def int8_encoder(tiny_model_dir, cache_dir):
    return OnnxEncoder(str(tiny_model_dir), cache_dir=cache_dir, quantize="int8", max_length=512, batch_size=4)


@pytest.fixture(scope="module")
def torch_vectors(tiny_encoder):
    return tiny_encoder.encode(TEXTS)


def top_ids(sparse, k: int = 10) -> set[int]:
    return set(sparse.indices[np.argsort(-sparse.values, kind="stable")[:k]].tolist())


def test_fp32_matches_torch(fp32_encoder, torch_vectors, plain_batches):
    lengths = [len(fp32_encoder.tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in TEXTS]
    assert max(lengths) == 512 and min(lengths) == 2 and len(set(lengths)) == len(TEXTS)

    got = fp32_encoder.encode(TEXTS)

    assert len(got) == len(TEXTS)
    for text, ref, vec in zip(TEXTS, torch_vectors, got):
        assert vec.dense.dtype == np.float32 and vec.dense.shape == ref.dense.shape
        assert float(vec.dense @ ref.dense) >= 0.9999, text[:40]
        assert abs(float(np.linalg.norm(vec.dense)) - 1.0) < 1e-5
        assert vec.sparse.indices.tolist() == ref.sparse.indices.tolist(), text[:40]
        np.testing.assert_allclose(vec.sparse.values, ref.sparse.values, atol=1e-4, err_msg=text[:40])
    assert got[1].sparse.indices.size == 0  # the empty text


def test_single_shortest_text_runs(fp32_encoder, tiny_encoder):
    # batch 1, sequence 2 (<s></s>): the dynamic axes go below the export's example shape
    [vec] = fp32_encoder.encode([""])
    [ref] = tiny_encoder.encode([""])
    assert float(vec.dense @ ref.dense) >= 0.9999


def test_int8_is_close_to_torch(int8_encoder, fp32_encoder, torch_vectors, plain_batches):
    got = int8_encoder.encode(TEXTS)

    cosines = np.array([float(v.dense @ r.dense) for v, r in zip(got, torch_vectors)])
    overlaps = np.array(
        [
            len(top_ids(v.sparse) & top_ids(r.sparse)) / len(top_ids(r.sparse)) if r.sparse.indices.size
            else float(v.sparse.indices.size == 0)
            for v, r in zip(got, torch_vectors)
        ]
    )
    print(
        f"\nint8 vs torch on the tiny model: dense cosine min {cosines.min():.5f} mean {cosines.mean():.5f}; "
        f"sparse top-10 overlap min {overlaps.min():.3f} mean {overlaps.mean():.3f}"
    )
    assert cosines.min() >= INT8_MIN_COSINE and cosines.mean() >= INT8_MEAN_COSINE
    assert overlaps.min() >= INT8_MIN_TOP10 and overlaps.mean() >= INT8_MEAN_TOP10
    # really quantized: int8 vectors are not the fp32 ones
    assert not np.allclose(got[0].dense, fp32_encoder.encode(TEXTS[:1])[0].dense, atol=1e-6)


def test_export_is_cached_per_model_content(tiny_model_dir, cache_dir, fp32_encoder, int8_encoder):
    fp32_encoder.prepare(), int8_encoder.prepare()
    key = f"{fp32_encoder.fingerprint['content_sha256'][:16]}-g{onnx_backend.GRAPH_VERSION}"
    assert fp32_encoder.export_dir == int8_encoder.export_dir == cache_dir / key
    assert fp32_encoder.model_path == cache_dir / key / "model.onnx"
    assert int8_encoder.model_path == cache_dir / key / "model.int8.onnx"
    names = sorted(p.name for p in (cache_dir / key).iterdir())
    assert names == ["model.int8.onnx", "model.int8.onnx.data", "model.onnx", "model.onnx.data"]  # no temp leftovers
    mtimes = {p: p.stat().st_mtime_ns for p in (cache_dir / key).iterdir()}
    exports = onnx_backend.export_count

    for quantize in ("none", "int8"):
        again = OnnxEncoder(str(tiny_model_dir), cache_dir=cache_dir, quantize=quantize, max_length=512, batch_size=4)
        again.encode(["Hello world"])

    assert onnx_backend.export_count == exports
    assert {p: p.stat().st_mtime_ns for p in (cache_dir / key).iterdir()} == mtimes


def test_an_encoder_given_an_exported_graph_runs_it_without_exporting_or_writing(
        tiny_model_dir, tmp_path, int8_encoder):
    """What the Ray engine's actors do with the driver's export (a copy elsewhere: the shipped one)."""
    import shutil

    from connector.errors import ModelLoadError

    source = int8_encoder.export()
    copy = tmp_path / "shipped" / source.name
    copy.parent.mkdir()
    for path in onnx_backend.graph_files(source):
        shutil.copy(path, copy.parent / path.name)
    assert [p.name for p in onnx_backend.graph_files(copy)] == ["model.int8.onnx", "model.int8.onnx.data"]
    assert onnx_backend.graph_sha256(copy) == onnx_backend.graph_sha256(source)
    exports = onnx_backend.export_count
    encoder = OnnxEncoder(str(tiny_model_dir), graph=copy, quantize="int8", max_length=512, batch_size=4)
    assert encoder.model_path == encoder.export() == copy and encoder.fingerprint == int8_encoder.fingerprint
    got, expected = encoder.encode(TEXTS), int8_encoder.encode(TEXTS)
    assert all(np.array_equal(a.dense, b.dense) and np.array_equal(a.sparse.values, b.sparse.values)
               for a, b in zip(got, expected))
    assert onnx_backend.export_count == exports and sorted(p.name for p in tmp_path.rglob("*")) == [
        "model.int8.onnx", "model.int8.onnx.data", "shipped"]
    missing = OnnxEncoder(str(tiny_model_dir), graph=tmp_path / "none" / "model.onnx", max_length=512)
    with pytest.raises(ModelLoadError, match="the exported ONNX graph .* is missing"):
        missing.encode(["text"])
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="either cache_dir"):
        OnnxEncoder(str(tiny_model_dir), cache_dir=tmp_path, graph=copy)


def test_fingerprints_and_vector_identity(tiny_encoder, fp32_encoder, int8_encoder):
    assert fp32_encoder.fingerprint == {**tiny_encoder.fingerprint, "backend": "onnx", "quantize": "none",
                                        "graph": onnx_backend.GRAPH_VERSION}
    assert int8_encoder.fingerprint["quantize"] == "int8"
    # torch keeps its identity (stored vectors stay valid); onnx and int8 get their own
    torch_id = vector_identity(tiny_encoder)
    assert set(torch_id) == {"content_sha256", "revision"}
    graph = onnx_backend.GRAPH_VERSION
    assert vector_identity(fp32_encoder) == {**torch_id, "backend": "onnx"}
    assert vector_identity(int8_encoder) == {**torch_id, "backend": "onnx", "quantize": "int8", "graph": graph}


def test_the_cached_graphs_are_fused(fp32_encoder, int8_encoder, tiny_model_dir):
    import json
    from collections import Counter

    import onnx

    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    for encoder, attention in ((fp32_encoder, "Attention"), (int8_encoder, "QAttention")):
        encoder.prepare()
        ops = Counter(n.op_type for n in onnx.load(str(encoder.model_path), load_external_data=False).graph.node)
        assert ops[attention] == layers, ops  # every attention block is one fused node
        assert ops["Softmax"] == 0 and ops["BiasGelu"] == layers, ops
        # residual + LayerNorm stay two ops: onnxruntime's SkipLayerNormalization is 2.5x slower on the CPU
        assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 * layers + 1, ops


def test_int8_keeps_the_sparse_head_in_fp32(int8_encoder, tiny_model_dir):
    """int8 does not pay for a product with one output column (quantizing every token's hidden state
    costs as much as the product): the sparse head stays a float MatMul, every other MatMul is int8."""
    import onnx

    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    int8_encoder.prepare()
    graph = onnx.load(str(int8_encoder.model_path), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    assert [shapes.get(n.input[1]) for n in graph.node if n.op_type == "MatMul"] == [[hidden, 1]]
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) > 0


def test_the_session_keeps_layernorm_unfused(tmp_path, tiny_model_dir, monkeypatch):
    """onnxruntime's own optimiser (ORT_ENABLE_ALL) would fuse Add + LayerNormalization back into
    the slower SkipLayerNormalization: the session the encoder opens must not."""
    from collections import Counter

    import onnx

    optimized = tmp_path / "optimized.onnx"

    class DumpingOptions(onnxruntime.SessionOptions):
        def __init__(self):
            super().__init__()
            self.optimized_model_filepath = str(optimized)  # the graph the session runs, after its optimisations

    encoder = OnnxEncoder(str(tiny_model_dir), cache_dir=tmp_path / "cache", quantize="int8", max_length=512)
    encoder.prepare()  # export and quantize with the real options
    encoder._session = None
    monkeypatch.setattr(onnxruntime, "SessionOptions", DumpingOptions)
    encoder.prepare()

    ops = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] > 0, ops


def test_the_export_writes_no_model_copy_to_the_system_temp_folder(tmp_path, tiny_model_dir, monkeypatch):
    """bge-m3's graph is 2.2 GB: a copy in the system temp folder (often a small tmpfs) made the fusion fail
    there, and the slow unfused graph was cached for good. Every copy onnxruntime writes goes into the cache."""
    written = []
    real_session = onnxruntime.InferenceSession

    def recording_session(path_or_bytes, sess_options=None, *args, **kwargs):
        if sess_options is not None and sess_options.optimized_model_filepath:
            written.append(sess_options.optimized_model_filepath)
        return real_session(path_or_bytes, sess_options, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    cache = tmp_path / "cache"
    OnnxEncoder(str(tiny_model_dir), cache_dir=cache, max_length=512).prepare()

    assert written, "the fusion runs onnxruntime's basic optimisation into a file"
    assert all(Path(path).resolve().is_relative_to(cache.resolve()) for path in written), written


def test_quantize_needs_the_onnx_backend(tmp_path):
    base = {"source": {"type": "files", "path": "./docs"}, "sink": {"type": "qdrant", "path": "./q"}}
    with pytest.raises(ConfigError, match="quantize"):
        parse_config({**base, "encoder": {"quantize": "int8"}}, tmp_path)
    with pytest.raises(ConfigError, match="backend"):
        parse_config({**base, "encoder": {"backend": "tensorrt"}}, tmp_path)
    config = parse_config({**base, "encoder": {"backend": "onnx", "quantize": "int8"}}, tmp_path)
    assert (config.encoder.backend, config.encoder.quantize) == ("onnx", "int8")
    assert EncoderConfig().backend == "torch" and EncoderConfig().quantize == "none"

    bypass = config.model_copy(deep=True)  # model_copy does not validate: make_encoder checks again
    bypass.encoder.backend = "torch"
    with pytest.raises(ConfigError, match="quantize"):
        make_encoder(bypass)


def test_missing_onnxruntime_names_the_extra(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "connector\[onnx\]"'):
        OnnxEncoder(str(tiny_model_dir), cache_dir=tmp_path)


def test_sync_through_the_cli_with_onnx_int8(tmp_path, tiny_model_dir):
    from connector.cli import cli
    from connector.sinks.factory import make_sink

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reset.md").write_text("# Reset\n\nOpen the sign-in page and choose Forgot password.\n", encoding="utf-8")
    (docs / "zh.md").write_text("# 常见问题\n\n如何重置密码？请点击“忘记密码”。", encoding="utf-8")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 48, "overlap_tokens": 8},
        "encoder": {"model": str(tiny_model_dir), "max_length": 512, "batch_size": 4,
                    "backend": "onnx", "quantize": "int8"},
        "sink": {"type": "qdrant", "path": "./store/qdrant", "collection": "kb"},
        "state_dir": "./state",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    def sync() -> dict:
        result = CliRunner().invoke(cli, ["sync", "-c", str(path), "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.stdout + result.stderr
        return json.loads(result.stdout)  # the exporter's chatter must not reach stdout

    first = sync()
    assert first["documents"]["new"] == 2 and first["documents"]["failed"] == 0
    assert first["chunks"]["encoded"] >= 2
    assert list((tmp_path / "state" / "onnx").glob("*/model.int8.onnx"))
    assert stat.S_IMODE((tmp_path / "state" / "onnx").stat().st_mode) == 0o700  # the state dir is private
    with make_sink(parse_config(config, tmp_path).sink) as sink:
        assert sink.count() == first["chunks"]["upserted"]
    assert sync()["documents"]["unchanged"] == 2

    # embed and similarity use the config's backend too (they built a torch encoder of their own before)
    result = CliRunner().invoke(cli, ["embed", "-c", str(path), "--json", "Forgot password"])
    assert result.exit_code == 0, result.output
    embedded = json.loads(result.stdout)["embeddings"][0]["dense"]
    int8 = OnnxEncoder.from_config(parse_config(config, tmp_path).encoder, cache_dir=tmp_path / "state" / "onnx")
    np.testing.assert_allclose(embedded, int8.encode(["Forgot password"])[0].dense, atol=1e-6)
    from connector.encoders.bge_m3 import BGEM3Encoder

    torch_dense = BGEM3Encoder(str(tiny_model_dir), max_length=512).encode(["Forgot password"])[0].dense
    assert not np.allclose(embedded, torch_dense, atol=1e-6)  # int8, not torch's fp32
    result = CliRunner().invoke(cli, ["similarity", "-c", str(path), "--json", "a", "b", "--mode", "colbert"])
    assert result.exit_code == 2 and "onnx backend" in result.output


@pytest.mark.parametrize("failure", ["raises", "wrong outputs"])
def test_a_fusion_that_fails_or_changes_the_outputs_keeps_the_unfused_graph(tmp_path, tiny_model_dir, tiny_encoder,
                                                                            monkeypatch, failure):
    from collections import Counter

    import onnx

    from connector.encoders import onnx_fusion

    real_fuse = onnx_fusion.fuse_graph

    def broken_fuse(source, target, num_heads, hidden_size):
        if failure == "raises":
            raise onnx_fusion.FusionError("fused 0 attention blocks of 2")
        stats = real_fuse(source, target, num_heads, hidden_size)
        model = onnx.load(str(target))  # corrupt it: scale the attention so outputs change
        for node in model.graph.node:
            if node.op_type == "Attention":
                next(a for a in node.attribute if a.name == "scale").f *= 3
        onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=target.name + ".data")
        return stats

    monkeypatch.setattr(onnx_fusion, "fuse_graph", broken_fuse)
    encoder = OnnxEncoder(str(tiny_model_dir), cache_dir=tmp_path, max_length=512, batch_size=4)
    [vec] = encoder.encode(["Das Gerät startet nicht."])
    [ref] = tiny_encoder.encode(["Das Gerät startet nicht."])
    assert float(vec.dense @ ref.dense) >= 0.9999
    ops = Counter(n.op_type for n in onnx.load(str(encoder.model_path), load_external_data=False).graph.node)
    assert ops["Attention"] == 0 and ops["Softmax"] > 0, ops


def test_a_fusion_that_fails_for_another_reason_caches_nothing_and_the_next_run_fuses(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    """A full disk during the fusion (ONNX Runtime's optimizer cannot write its copy) must not make
    the unfused, slower graph the cached one for good: the load fails saying what to check, and the
    next load fuses."""
    from collections import Counter

    import onnx

    from connector.encoders import onnx_fusion
    from connector.errors import ModelLoadError

    real_fuse = onnx_fusion.fuse_graph

    def disk_full(source, target, num_heads, hidden_size):
        raise RuntimeError("Failed to write external initializers to file: /tmp/x/model_o1_cpu.onnx.data")

    monkeypatch.setattr(onnx_fusion, "fuse_graph", disk_full)
    with pytest.raises(ModelLoadError, match="nothing was cached.*free space"):
        OnnxEncoder(str(tiny_model_dir), cache_dir=tmp_path, max_length=512, batch_size=4).encode(["a"])
    assert not list(tmp_path.rglob("*.onnx")), list(tmp_path.rglob("*"))
    monkeypatch.setattr(onnx_fusion, "fuse_graph", real_fuse)
    encoder = OnnxEncoder(str(tiny_model_dir), cache_dir=tmp_path, max_length=512, batch_size=4)
    encoder.encode(["a"])
    ops = Counter(n.op_type for n in onnx.load(str(encoder.model_path), load_external_data=False).graph.node)
    assert ops["Attention"] > 0, ops
