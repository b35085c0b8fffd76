"""Two state dirs on one collection (issue 10, item 5): a collection records the state dir that
writes it, a second one is refused, and with `shared: true` several write it side by side while
`verify --repair` never deletes points it does not own. On embedded Qdrant and Milvus Lite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from connector.cli import cli

SINKS = {"qdrant": {"type": "qdrant", "path": "../store"}, "milvus-lite": {"type": "milvus", "uri": "../milvus.db"}}


def project(root: Path, name: str, model: Path, sink: dict, shared: bool = False) -> Path:
    """A config in root/name with its own docs and state dir, writing the shared store's 'kb'."""
    folder = root / name
    (folder / "docs").mkdir(parents=True)
    for n in range(3):
        (folder / "docs" / f"{name}-{n}.md").write_text(f"{name} document {n}: the fan of unit {n} is loud.")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 64, "overlap_tokens": 2},
        "encoder": {"model": str(model), "max_length": 512},
        "sink": {**sink, "collection": "kb", **({"shared": True} if shared else {})},
        "state_dir": "./state",
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    return result.exit_code, (json.loads(result.stdout) if result.stdout.strip() else {})


@pytest.mark.parametrize("sink", SINKS.values(), ids=SINKS.keys())
def test_a_second_state_dir_is_refused_and_can_take_over(tmp_path, tiny_model_dir, sink):
    a = project(tmp_path, "a", tiny_model_dir, sink)
    b = project(tmp_path, "b", tiny_model_dir, sink)
    code, report = run("sync", "-c", str(a))
    assert code == 0 and report["chunks"]["upserted"] == 3
    code, data = run("sync", "-c", str(b))
    assert code == 2 and "belongs to another state dir" in data["error"] and "--take-over" in data["error"]
    code, verified = run("verify", "-c", str(a))
    assert code == 0 and verified["store_points"] == 3  # nothing of b's got in

    code, report = run("sync", "-c", str(b), "--take-over")  # a's state dir is gone for good, say
    assert code == 0, report
    code, data = run("sync", "-c", str(a))
    assert code == 2 and "belongs to another state dir" in data["error"]


@pytest.mark.parametrize("sink", SINKS.values(), ids=SINKS.keys())
def test_shared_collection_repair_never_deletes_points_it_does_not_own(tmp_path, tiny_model_dir, sink):
    a = project(tmp_path, "a", tiny_model_dir, sink, shared=True)
    b = project(tmp_path, "b", tiny_model_dir, sink, shared=True)
    assert run("sync", "-c", str(a))[0] == 0
    assert run("sync", "-c", str(b))[0] == 0
    for config in (a, b):
        code, verified = run("verify", "-c", str(config))
        assert code == 0 and verified["ok"] and verified["foreign_points"] == 3 and verified["store_points"] == 6
    (tmp_path / "a" / "docs" / "a-0.md").unlink()
    code, report = run("sync", "-c", str(a), "--prune")
    assert code == 0 and report["chunks"]["deleted"] == 1
    code, repaired = run("verify", "-c", str(a), "--repair")
    assert code == 0 and repaired["store_points"] == 5  # b's three points are still there
    code, verified = run("verify", "-c", str(b))
    assert code == 0 and verified["ok"] and verified["ledger_points"] == 3

    exclusive = project(tmp_path, "c", tiny_model_dir, sink)  # a config that forgot `shared: true`
    code, data = run("sync", "-c", str(exclusive))
    assert code == 2 and "is shared by several state dirs" in data["error"]
