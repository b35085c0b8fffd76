"""A real-world and hostile corpus syncs through the CLI on both backends: exactly the expected
documents in the store, exactly the expected failures (with kinds) in the report and in status."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from connector.app import open_sink
from connector.cli import cli
from connector.config import load_config
from connector.testing.hostile import build_hostile_corpus


def run(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout), result.stdout + result.stderr


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
def test_hostile_corpus_syncs_exactly_what_is_readable(tmp_path, tiny_model_dir, backend):
    expected = build_hostile_corpus(tmp_path / "docs")
    sink = {"qdrant": {"type": "qdrant", "path": "./store/q"}, "milvus": {"type": "milvus", "uri": "./store/m.db"}}
    config = {
        "source": {"type": "files", "path": "./docs", "include": ["**/*"]},
        "preprocess": {"drop_symbols": ["®", "™"]},
        "chunking": {"max_tokens": 256, "overlap_tokens": 16},
        "encoder": {"model": str(tiny_model_dir), "max_length": 512, "batch_size": 16},
        "sink": {**sink[backend], "collection": "kb"},
        "state_dir": "./state",
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")

    code, report, out = run("sync", "-c", str(cfg))
    assert code == 3, out
    assert {f["doc_id"]: f["kind"] for f in report["failures"]} == expected["failed"]
    assert all(f["reason"] and "\n" not in f["reason"] for f in report["failures"])
    assert report["documents"]["failed"] == len(expected["failed"])
    assert report["documents"]["new"] == len(expected["synced"])

    with open_sink(load_config(cfg)) as store:
        points = store.retrieve(sorted(store.iter_ids()))
    assert {p.payload["doc_id"] for p in points} == expected["synced"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for point in points:  # every chunk fits max_tokens, so the model never truncates it
        assert 0 < len(tokenizer(point.payload["text"], add_special_tokens=False)["input_ids"]) <= 256
    pdf_pages = [p.payload["metadata"].get("pages") for p in points if p.payload["doc_id"].endswith(".pdf")]
    assert pdf_pages  # the pdf extra is installed with dev
    assert all(pages and all(isinstance(n, int) and n >= 1 for n in pages) for pages in pdf_pages)

    code, status, out = run("status", "-c", str(cfg))
    assert code == 0, out
    assert {f["doc_id"] for f in status["failed_documents"]} == set(expected["failed"])
    assert all(f["reason"].startswith(f"[{expected['failed'][f['doc_id']]}]") for f in status["failed_documents"])
    assert status["ledger"]["documents"] == len(expected["synced"]) and status["store"]["points"] == len(points)

    # human output shows control characters in file names escaped: no forged line, no colour
    for command in ("sync", "status"):
        human = CliRunner().invoke(cli, [command, "-c", str(cfg)], catch_exceptions=False).output
        assert "\x1b" not in human and "FAILED hostile/binary\\n  FAILED forged\\x1b[0m.txt: " in human
        assert not any(line.lstrip().startswith("FAILED forged") for line in human.splitlines())

    # a second sync changes nothing; ignoring every kind that failed makes the exit code 0
    config["ignore_failures"] = sorted(set(expected["failed"].values()))
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, again, out = run("sync", "-c", str(cfg))
    assert code == 0 and again["chunks"]["encoded"] == again["chunks"]["upserted"] == 0, out
    assert all(f["ignored"] for f in again["failures"]) and len(again["failures"]) == len(expected["failed"])
