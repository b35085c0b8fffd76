from pathlib import Path

import pytest
import yaml

from connector.config import QdrantSinkConfig, load_config, secret_from_env
from connector.errors import ConfigError


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "sub" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


BASE = {
    "source": {"type": "files", "path": "./docs"},
    "encoder": {"model": "./models/m"},
    "sink": {"type": "milvus", "uri": "./store/m.db", "collection": "kb"},
    "state_dir": "../state",
}


def test_relative_paths_resolve_from_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = load_config(write(tmp_path, BASE))
    base = (tmp_path / "sub").resolve()
    assert config.source.path == base / "docs"
    assert config.state_dir == tmp_path.resolve() / "state"
    assert config.sink.uri == str(base / "store" / "m.db")
    assert config.encoder.model == str(base / "models" / "m")


def test_hub_id_and_server_uri_are_left_alone(tmp_path):
    data = dict(BASE, encoder={"model": "BAAI/bge-m3"}, sink={"type": "milvus", "uri": "http://127.0.0.1:19530"})
    config = load_config(write(tmp_path, data))
    assert config.encoder.model == "BAAI/bge-m3"
    assert config.sink.uri == "http://127.0.0.1:19530"


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, {"source": {"path": "d"}, "sink": {"type": "qdrant", "path": "q"}}))
    assert config.chunking.max_tokens == 512 and config.chunking.overlap_tokens == 64
    assert config.chunking.version is None  # the state dir's version (see chunking_version)
    assert config.encoder.model == "BAAI/bge-m3" and config.encoder.max_length == 8192
    assert "**/*.md" in config.source.include
    assert isinstance(config.sink, QdrantSinkConfig)


@pytest.mark.parametrize(
    "data, expected",
    [
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("source: [unclosed", "not valid YAML"),
        ({"source": {"path": "d"}, "sink": {"type": "pinecone"}}, "unknown sink type 'pinecone'; available: milvus, qdrant"),
        ({"source": {"path": "d"}, "sink": {"type": "qdrant", "path": "a", "url": "http://x"}}, "exactly one of"),
        ({"source": {"path": "d"}, "sink": {"type": "qdrant", "path": "a"}, "encoder": {"max_length": 100}},
         "must fit encoder.max_length"),
        ({"sink": {"type": "qdrant", "path": "a"}}, "source: Field required"),
        ({"source": {"path": "d"}, "sink": {"type": "qdrant", "path": "a"}, "chunking": {"max_tokens": "many"}},
         "chunking.max_tokens"),
        ({"source": {"path": "d", "include": ["../private/*.md"]}, "sink": {"type": "qdrant", "path": "a"}},
         "source.include: Value error, '../private/*.md' contains '..'"),
        ({"source": {"path": "d", "include": ["docs/../../*.txt"]}, "sink": {"type": "qdrant", "path": "a"}},
         "source.include: Value error, 'docs/../../*.txt' contains '..'"),
        ({"source": {"path": "d", "exclude": ["/etc/**"]}, "sink": {"type": "qdrant", "path": "a"}},
         "source.exclude: Value error, '/etc/**' is an absolute path"),
        ({"source": {"path": "d", "include": ["C:\\docs\\*.md"]}, "sink": {"type": "qdrant", "path": "a"}},
         "is an absolute path"),
    ],
)
def test_bad_config_is_a_clear_config_error(tmp_path, data, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert expected in str(err.value)
    assert err.value.exit_code == 2


def test_every_problem_is_listed(tmp_path):
    data = {"source": {"path": "d", "typo": 1}, "sink": {"type": "qdrant", "path": "a"}, "chunking": {"max_tokens": 0}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    text = str(err.value)
    assert "2 problem(s)" in text and "source.typo" in text and "chunking.max_tokens" in text


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_secret_comes_from_environment_and_is_never_in_the_message(monkeypatch):
    monkeypatch.setenv("MY_KEY", "s3cr3t-value")
    assert secret_from_env("MY_KEY", "qdrant") == "s3cr3t-value"
    assert secret_from_env(None, "qdrant") is None
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        secret_from_env("MY_KEY", "qdrant")


def test_every_example_config_loads():
    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        load_config(path)


def test_patterns_that_only_look_like_paths_out_are_fine(tmp_path):
    data = {"source": {"path": "d", "include": ["**/v1..2.md", "./notes/*.txt", "~$*.docx", "a:b.md"]},
            "sink": {"type": "qdrant", "path": "a"}}
    assert load_config(write(tmp_path, data)).source.include == data["source"]["include"]


@pytest.mark.parametrize("sink", [
    {"type": "qdrant", "url": "http://127.0.0.1:99999"},
    {"type": "qdrant", "url": "http://127.0.0.1:abc"},
    {"type": "qdrant", "url": "myhost:70000"},
    {"type": "milvus", "uri": "http://127.0.0.1:99999"},
    {"type": "milvus", "uri": "https://127.0.0.1:abc"},
    {"type": "milvus", "uri": "grpc://127.0.0.1:19530"},  # pymilvus's MilvusClient refuses grpc://
])
def test_a_bad_server_url_is_a_config_error(tmp_path, sink):
    from click.testing import CliRunner

    from connector.cli import cli

    path = write(tmp_path, dict(BASE, sink={**sink, "collection": "kb"}))
    with pytest.raises(ConfigError, match="sink"):
        load_config(path)
    result = CliRunner().invoke(cli, ["status", "-c", str(path)], catch_exceptions=False)
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize("uri, expected", [
    ("unix:/run/milvus/milvus.sock", "unix:/run/milvus/milvus.sock"),
    ("unix:///run/milvus/milvus.sock", "unix:///run/milvus/milvus.sock"),
    ("unix:./milvus.sock", "unix:{base}/milvus.sock"),  # relative, like every path: from the config's folder
])
def test_a_unix_socket_uri_is_a_milvus_server(tmp_path, uri, expected):
    from connector.schemas_layout import load_layout
    from connector.app import sink_target
    from connector.sinks.milvus import MilvusSink

    config = load_config(write(tmp_path, dict(BASE, sink={"type": "milvus", "uri": uri, "collection": "kb"})))
    expected = expected.format(base=(tmp_path / "sub").resolve())
    assert config.sink.is_server and config.sink.uri == expected
    assert sink_target(config) == f"milvus:{expected}#kb"
    sink = MilvusSink.from_config(config.sink, load_layout("chunks"))  # no .db refusal, no Milvus Lite needed
    assert sink.is_server and sink.uri == expected


def test_a_relative_model_path_resolves_from_the_config_folder_only(tmp_path, tiny_model_dir, monkeypatch):
    # "models/m" does not exist next to the config: it is a hub id, even if the current folder has
    # a models/m (the encoder must not decide otherwise than the config).
    import shutil

    from connector.errors import ModelLoadError
    from connector.app import make_encoder

    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "models" / "m")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(write(tmp_path, dict(BASE, encoder={"model": "models/m"})))
    assert config.encoder.model == "models/m"
    with pytest.raises(ModelLoadError, match="Hugging Face hub"):
        make_encoder(config)
    (tmp_path / "sub" / "models").mkdir()
    shutil.copytree(tiny_model_dir, tmp_path / "sub" / "models" / "m")  # now it is a folder next to the config
    config = load_config(write(tmp_path, dict(BASE, encoder={"model": "models/m"})))
    assert config.encoder.model == str((tmp_path / "sub" / "models" / "m").resolve())
    assert make_encoder(config).folder == (tmp_path / "sub" / "models" / "m").resolve()


@pytest.mark.parametrize("version", [1, 2])
def test_chunking_version(tmp_path, version):
    data = {"source": {"path": "d"}, "sink": {"type": "qdrant", "path": "q"}, "chunking": {"version": version}}
    assert load_config(write(tmp_path, data)).chunking.version == version


@pytest.mark.parametrize("version", [0, 3, "2", True, 2.5, "latest"])
def test_a_bad_chunking_version_names_the_allowed_ones(tmp_path, version):
    data = {"source": {"path": "d"}, "sink": {"type": "qdrant", "path": "q"}, "chunking": {"version": version}}
    with pytest.raises(ConfigError, match=r"chunking\.version: Value error, must be 1 or 2 "):
        load_config(write(tmp_path, data))


# ---- engine ---------------------------------------------------------------------------------
def test_the_engine_is_local_by_default(tmp_path):
    assert load_config(write(tmp_path, BASE)).engine.type == "local"


@pytest.mark.parametrize("engine", ["ray", {"type": "ray"}])
def test_a_ray_engine_takes_its_defaults(tmp_path, engine):
    settings = load_config(write(tmp_path, dict(BASE, engine=engine))).engine
    assert (settings.type, settings.address, settings.encoders, settings.cpus_per_encoder, settings.ship_model) == (
        "ray", "auto", None, 1, False)


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "head.example.internal:6379", "ray://10.0.0.5:10001"])
def test_ray_addresses(tmp_path, address):
    config = load_config(write(tmp_path, dict(BASE, engine={"type": "ray", "address": address, "encoders": 8,
                                                            "cpus_per_encoder": 4})))
    assert (config.engine.address, config.engine.encoders, config.engine.cpus_per_encoder) == (address, 8, 4)


def test_an_encoder_actor_may_take_a_fraction_of_a_cpu_and_then_runs_one_torch_thread(tmp_path):
    from connector.engines.ray import actor_config

    config = load_config(write(tmp_path, dict(BASE, engine={"type": "ray", "encoders": 4, "cpus_per_encoder": 0.5})))
    assert config.engine.cpus_per_encoder == 0.5
    assert actor_config(config, tmp_path).encoder.threads == 1


@pytest.mark.parametrize("engine, expected", [
    ({"type": "spark"}, "engine: Value error, type must be one of local, ray, not 'spark'"),
    ("dask", "engine: Value error, type must be one of local, ray, not 'dask'"),
    (None, "engine: Value error, must be local, ray or a mapping such as {type: ray, address: auto}, not None"),
    ({"type": "ray", "adress": "auto"}, "engine.adress: unknown field"),
    ({"type": "local", "encoders": 2}, "engine.encoders: unknown field"),
    ({"type": "ray", "address": "http://head:6379"}, "'http://head:6379' is not a Ray address: use auto"),
    ({"type": "ray", "address": "head"}, "'head' is not a Ray address"),
    ({"type": "ray", "address": "head:70000"}, "'head:70000' is not a Ray address"),
    ({"type": "ray", "encoders": 0}, "engine.encoders: Input should be greater than or equal to 1"),
    ({"type": "ray", "cpus_per_encoder": 0}, "engine.cpus_per_encoder: Input should be greater than or equal to 0.0001"),
    ({"type": "ray", "start_timeout": 0}, "engine.start_timeout: Input should be greater than 0"),
])
def test_a_bad_engine_is_a_config_error(tmp_path, engine, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, dict(BASE, engine=engine)))
    assert expected in str(err.value)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_the_ray_engine_runs_the_onnx_backend_too(tmp_path, quantize):
    encoder = {"model": "./m", "backend": "onnx", "quantize": quantize}
    config = load_config(write(tmp_path, dict(BASE, engine="ray", encoder=encoder)))
    assert (config.engine.type, config.encoder.backend, config.encoder.quantize) == ("ray", "onnx", quantize)


def test_the_engine_override(tmp_path):
    from connector.engines import with_engine

    on_ray = load_config(write(tmp_path, dict(BASE, engine={"type": "ray", "address": "10.0.0.5:6379", "encoders": 3})))
    assert with_engine(on_ray, None) is on_ray and with_engine(on_ray, "ray") is on_ray  # the config's settings
    assert with_engine(on_ray, "local").engine.type == "local"
    assert on_ray.engine.type == "ray"  # the loaded config is left alone
    local = load_config(write(tmp_path, BASE))
    assert (with_engine(local, "ray").engine.address, with_engine(local, "ray").engine.encoders) == ("auto", None)
    onnx = load_config(write(tmp_path, dict(BASE, encoder={"model": "./m", "backend": "onnx"})))
    assert (with_engine(onnx, "ray").engine.type, with_engine(onnx, "ray").encoder.backend) == ("ray", "onnx")
