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
