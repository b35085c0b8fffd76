"""The state dir holds document text: it is private (0700, files 0600), and nothing in it is
written through a planted symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from connector.cli import cli
from connector.ledger import Ledger
from connector.lock import StateLock
from connector.projection import Projection
from connector.statedir import UnsafeStateError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def write_project(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nThe secret plan is in this document.", encoding="utf-8")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "encoder": {"model": str(model), "max_length": 128},
        "chunking": {"max_tokens": 32, "overlap_tokens": 4},
        "sink": {"type": "qdrant", "path": "./store", "collection": "kb"},
        "state_dir": "./state/inner",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_sync_creates_a_private_state_dir(tmp_path, tiny_model_dir, loose_umask):
    config = write_project(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(cli, ["sync", "-c", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    state = tmp_path / "state" / "inner"
    assert mode(state) == mode(state.parent) == 0o700  # a missing parent is made private too
    files = [p for p in state.iterdir() if p.is_file()]
    assert {"ledger.sqlite", "embeddings.sqlite", "lock"} <= {p.name for p in files}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_an_existing_loose_state_dir_is_tightened(tmp_path, loose_umask, caplog):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):
        (state / name).touch()
        os.chmod(state / name, 0o644)
    Ledger(state).close()
    assert mode(state) == 0o700
    assert mode(state / "ledger.sqlite") == 0o600
    if (state / "ledger.sqlite-wal").exists():  # SQLite may have removed it on close
        assert mode(state / "ledger.sqlite-wal") == 0o600
    assert "made the state folder" in caplog.text and "private" in caplog.text


def test_projection_artifact_is_private(tmp_path, loose_umask):
    rng = np.random.default_rng(0)
    path = Projection(rng.random(8, dtype=np.float32), rng.random((2, 8), dtype=np.float32), "fp", 10, 0.5).save(
        tmp_path / "state")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_at_the_lock_path_is_refused(tmp_path, target_exists):
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim.txt"
    if target_exists:
        victim.write_text("precious", encoding="utf-8")
    (state / "lock").symlink_to(victim)
    with pytest.raises(UnsafeStateError, match="symbolic link"):
        with StateLock(state):
            pass
    if target_exists:
        assert victim.read_text(encoding="utf-8") == "precious"
    else:
        assert not victim.exists()


def test_a_symlink_at_the_ledger_path_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "ledger.sqlite").symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(UnsafeStateError):
        Ledger(state)
    assert not (tmp_path / "elsewhere.sqlite").exists()
