"""Entry-point plugins: third-party packages, really installed with pip, next to the built-ins."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from connector import plugins
from connector.app import sink_target
from connector.cli import cli
from connector.config import load_config
from connector.records import point_id
from connector.sinks.factory import make_sink

FIXTURES = Path(__file__).parent / "fixtures"
ITEMS = [
    {"id": "a", "text": "[internal] The status light blinks twice after a reset.", "lang": "en"},
    {"id": "b", "text": "Invoices are issued monthly. [internal]", "lang": "en"},
    {"id": "c", "text": "Das Gerät verbindet sich nicht per USB.", "lang": "de"},
]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """tests/fixtures/plugin_pkg and broken_plugin_pkg installed with pip (no network) into a folder."""
    work = tmp_path_factory.mktemp("plugins")
    sources = []
    for name in ("plugin_pkg", "broken_plugin_pkg"):
        shutil.copytree(FIXTURES / name, work / name)  # pip builds in the source folder: keep tests/ clean
        sources.append(str(work / name))
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), *sources],
        check=True, capture_output=True, timeout=300,
    )
    return target


@pytest.fixture
def installed(plugin_site, monkeypatch):
    """The plugin folder on sys.path (as if pip had installed there), fresh registry state."""
    monkeypatch.syspath_prepend(str(plugin_site))  # also invalidates importlib's caches
    monkeypatch.setattr(plugins, "_loaded", {})
    yield plugin_site
    for module in ("connector_example", "connector_broken"):
        sys.modules.pop(module, None)


def write_config(tmp_path: Path, model_dir, **sections) -> Path:
    config = {
        "source": {"type": "static", "items": ITEMS},
        "chunking": {"max_tokens": 64, "overlap_tokens": 8},
        "encoder": {"model": str(model_dir), "max_length": 512},
        "sink": {"type": "qdrant", "path": "./store", "collection": "kb"},
        "state_dir": "./state",
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def listed(groups: dict, group: str) -> dict:
    return {row["name"]: row for row in groups[group]}


def test_pip_installed_entry_points_are_visible(installed):
    names = {ep.name: ep.dist.name for ep in entry_points(group="connector.sources")}
    assert names["static"] == "connector-example-source"
    assert names["files"] == "connector"  # the built-in, through connector's own entry point


def test_sync_from_a_plugin_source_through_a_plugin_preprocessor(installed, tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, preprocessors=[{"type": "strip_marker", "marker": "[internal]"}])

    result = invoke("sync", "-c", str(config), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["documents"]["new"] == 3 and report["chunks"]["upserted"] == 3

    with make_sink(load_config(config).sink) as sink:
        points = sink.retrieve([point_id("kb", item["id"], 0) for item in ITEMS])
        assert sink.count() == 3
    by_doc = {p.payload["doc_id"]: p.payload for p in points}
    assert set(by_doc) == {"a", "b", "c"}
    assert by_doc["c"]["metadata"] == {"lang": "de"}
    assert not any("[internal]" in p["text"] for p in by_doc.values())
    assert by_doc["b"]["text"] == "Invoices are issued monthly."

    again = json.loads(invoke("sync", "-c", str(config), "--json").stdout)
    assert again["documents"]["unchanged"] == 3 and again["chunks"]["upserted"] == 0


def test_plugins_command_lists_builtins_plugins_and_the_broken_one(installed):
    with pytest.warns(RuntimeWarning, match=r"'broken' .*connector-broken-plugin.*No module named 'connector_no_such"):
        result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)["groups"]

    sources = listed(groups, "connector.sources")
    assert sources["files"] == {"group": "connector.sources", "name": "files", "distribution": "connector",
                                "module": "connector.sources.files:FilesSource", "version": "0.1.0",
                                "status": "ok", "error": None}
    assert sources["static"]["status"] == "ok"
    assert (sources["static"]["distribution"], sources["static"]["version"]) == ("connector-example-source", "0.3.0")
    assert sources["broken"]["status"] == "failed"
    assert "ModuleNotFoundError" in sources["broken"]["error"]
    assert set(listed(groups, "connector.sinks")) == {"qdrant", "milvus", "example_qdrant"}
    assert set(listed(groups, "connector.preprocessors")) == {"normalize", "strip_marker"}

    human = invoke("plugins").stdout
    assert "static" in human and "FAILED: ModuleNotFoundError" in human


def test_a_broken_plugin_does_not_stop_a_sync(installed, tmp_path, tiny_model_dir):
    with pytest.warns(RuntimeWarning, match="'broken'"):
        plugins.available("connector.sources")  # imports the broken one too
    config = write_config(tmp_path, tiny_model_dir, source={"type": "static", "items": ITEMS[:1]})
    result = invoke("sync", "-c", str(config), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"]["new"] == 1


def test_using_the_broken_plugin_is_a_config_error(installed, tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, source={"type": "broken"})
    with pytest.warns(RuntimeWarning):
        result = invoke("sync", "-c", str(config))
    assert result.exit_code == 2
    assert "source.type: source type 'broken' comes from the plugin" in result.stderr
    assert "No module named 'connector_no_such_dependency'" in result.stderr


def test_unknown_type_exits_2_listing_the_available_types(installed, tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, source={"type": "webcrawl", "url": "http://x"})
    with pytest.warns(RuntimeWarning, match="'broken'"):  # listing the types imports every plugin
        result = invoke("sync", "-c", str(config), "--json")
    assert result.exit_code == 2
    assert "unknown source type 'webcrawl'; available: files, static" in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["exit_code"] == 2

    config = write_config(tmp_path, tiny_model_dir, preprocessors=[{"type": "upper"}])
    result = invoke("sync", "-c", str(config))
    assert result.exit_code == 2
    assert "preprocessors.0.type: unknown preprocessor type 'upper'; available: normalize, strip_marker" in result.stderr


def test_unknown_type_without_any_plugin_installed(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, source={"path": "./docs"}, sink={"type": "pinecone", "index": "kb"})
    result = invoke("sync", "-c", str(config))
    assert result.exit_code == 2
    assert "sink.type: unknown sink type 'pinecone'; available: milvus, qdrant" in result.stderr


def test_plugin_sink_gets_a_generic_config_and_the_config_folder(installed, tmp_path, tiny_model_dir):
    config_path = write_config(tmp_path, tiny_model_dir, sink={"type": "example_qdrant", "folder": "out", "collection": "kb"})
    config = load_config(config_path)
    assert config.sink.options == {"folder": "out"} and config.sink.base_dir == tmp_path.resolve()
    with make_sink(config.sink) as sink:
        assert type(sink).__name__ == "ExampleQdrantSink"
        assert sink.path == tmp_path.resolve() / "out" and sink.collection == "kb"
    assert sink_target(config) == "example_qdrant:#kb"

    result = invoke("sync", "-c", str(config_path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chunks"]["upserted"] == 3
    assert (tmp_path / "out").is_dir()
