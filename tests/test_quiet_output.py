"""Library warnings do not reach the user as they are: what matters is said once, in the
connector's words. Run as real processes, since pytest itself records warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

# An XHTML page whose <html> tag comes after a long comment (a licence header, as generated
# documentation often has): bs4 takes it for XML and warns.
XHTML = (
    '<?xml version="1.0" encoding="utf-8"?>\n<!-- ' + "Licensed under the terms of the licence. " * 15 + "-->\n"
    '<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Pump</title></head>'
    "<body><p>The pump reports its pressure every minute.</p></body></html>"
)


def project(tmp_path: Path, model: Path, batch_size: int = 64, engine: str = "edge") -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.xhtml.html").write_text(XHTML, encoding="utf-8")
    for n in range(6):
        (docs / f"note-{n}.md").write_text(f"Note {n}: the valve {n} was replaced.", encoding="utf-8")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "chunking": {"max_tokens": 32, "overlap_tokens": 4},
        "encoder": {"model": str(model), "max_length": 512, "batch_size": 4},
        "sink": {"type": "qdrant", "path": "./store", "engine": engine, "collection": "kb", "batch_size": batch_size},
        "state_dir": "./state",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_a_sync_of_an_xml_declared_page_prints_no_library_warning(tmp_path, tiny_model_dir):
    config = project(tmp_path, tiny_model_dir)
    exe = Path(sys.executable).parent / "connector"
    proc = subprocess.run([str(exe), "sync", "-c", str(config), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["documents"]["new"] == 7
    assert "Warning" not in proc.stderr and "lxml" not in proc.stderr and "XML" not in proc.stderr, proc.stderr


def test_a_large_embedded_collection_is_reported_once_in_the_connectors_words(tmp_path, tiny_model_dir):
    config = project(tmp_path, tiny_model_dir, batch_size=1, engine="local-mode")  # many upserts past the limit
    # The limit lowered to 3 points, for qdrant-client and for the connector alike; two syncs,
    # the second opening a collection already past it.
    code = f"""
import sys
from qdrant_client.local.local_collection import LocalCollection
from qdrant_client.local.qdrant_local import QdrantLocal
import connector.sinks.qdrant as sink
from connector.cli import cli
LocalCollection.LARGE_DATA_THRESHOLD = QdrantLocal.LARGE_DATA_THRESHOLD = sink.LOCAL_MODE_POINTS = 3
cli(["sync", "-c", {str(config)!r}], standalone_mode=False)
open({str(tmp_path / "docs" / "new.md")!r}, "w").write("One more note about the valve.")
cli(["sync", "-c", {str(config)!r}], standalone_mode=False)
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "Local mode is not recommended" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("embedded Qdrant in")]
    assert len(said) == 2, proc.stderr  # once per sync, however many upserts
    assert "points in collection 'kb'" in said[0] and "run a Qdrant server" in said[0]
