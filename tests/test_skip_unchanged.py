"""An unchanged re-sync does not read files: a file whose (size, mtime_ns, inode) is the one the last
sync recorded is skipped before it is opened (`source.change_detection: stat`, the default);
`content` reads and hashes every file. Through embedded Qdrant and the tiny model."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

import connector.sources.files as files_module
from connector.app import open_sink
from connector.config import parse_config
from connector.ledger import Ledger
from connector.pipeline import run_sync
from connector.recovery import verify


def make_config(tmp_path: Path, model: Path, **source):
    return parse_config({
        "source": {"type": "files", "path": str(tmp_path / "docs"), **source},
        "chunking": {"max_tokens": 32, "overlap_tokens": 0},
        "encoder": {"model": str(model), "batch_size": 4},
        "sink": {"type": "qdrant", "path": str(tmp_path / "qdrant"), "collection": "kb", "batch_size": 8},
        "retry": {"attempts": 1},
        "state_dir": str(tmp_path / "state"),
    }, tmp_path, origin="test")


def write_corpus(docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    for n in range(6):
        (docs / f"doc-{n}.md").write_text(f"Document {n}: the pump with serial {n * 11} reports {n} bar.",
                                          encoding="utf-8")
    records = [{"id": f"t-{k}", "text": f"Ticket {k}: the valve {k} leaks."} for k in range(3)]
    (docs / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def reads(monkeypatch):
    """The .md files the source parsed (the reader is wrapped; a skipped file is never parsed)."""
    parsed: list[str] = []
    real = files_module.DOCUMENT_READERS[".md"]

    def counting(data: bytes):
        parsed.append(data.decode("utf-8").split(":")[0])
        return real(data)

    monkeypatch.setitem(files_module.DOCUMENT_READERS, ".md", counting)
    return parsed


def store_texts(config) -> dict[str, str]:
    sink = open_sink(config)
    try:
        return {p.payload["doc_id"]: p.payload["text"] for p in sink.retrieve(sorted(sink.all_ids()))}
    finally:
        sink.close()


def test_an_unchanged_resync_reads_no_file_and_prunes_nothing(tmp_path, tiny_model_dir, tiny_encoder, reads):
    write_corpus(tmp_path / "docs")
    config = make_config(tmp_path, tiny_model_dir)
    first = run_sync(config, encoder=tiny_encoder)
    assert first.exit_code == 0 and first.documents["new"] == 9 and len(reads) == 6
    reads.clear()
    again = run_sync(config, encoder=tiny_encoder, prune=True)
    assert reads == []  # nothing parsed
    assert again.exit_code == 0
    assert again.documents == {"seen": 9, "new": 0, "changed": 0, "unchanged": 9, "deleted": 0, "failed": 0}
    assert again.chunks["upserted"] == again.chunks["deleted"] == again.chunks["payload_updated"] == 0
    assert len(store_texts(config)) == 9 and verify(config).ok


def test_content_mode_reads_every_file(tmp_path, tiny_model_dir, tiny_encoder, reads):
    write_corpus(tmp_path / "docs")
    config = make_config(tmp_path, tiny_model_dir, change_detection="content")
    run_sync(config, encoder=tiny_encoder)
    reads.clear()
    again = run_sync(config, encoder=tiny_encoder)
    assert sorted(reads) == [f"Document {n}" for n in range(6)] and again.documents["unchanged"] == 9


def test_an_edit_that_keeps_size_and_mtime_is_seen_only_by_content_mode(tmp_path, tiny_model_dir, tiny_encoder):
    """The skeptic's case: same size, mtime put back (`touch -d`), same inode, other text. `stat`
    cannot see it (documented); `content` does."""
    write_corpus(tmp_path / "docs")
    config = make_config(tmp_path, tiny_model_dir)
    run_sync(config, encoder=tiny_encoder)
    path = tmp_path / "docs" / "doc-3.md"
    before = os.stat(path)
    path.write_text(path.read_text(encoding="utf-8").replace("pump", "PUMP"), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)

    assert run_sync(config, encoder=tiny_encoder).documents["changed"] == 0
    assert "pump" in store_texts(config)["doc-3.md"]
    content = run_sync(make_config(tmp_path, tiny_model_dir, change_detection="content"), encoder=tiny_encoder)
    assert content.documents["changed"] == 1 and "PUMP" in store_texts(config)["doc-3.md"]


def test_changed_removed_renamed_and_replaced_files(tmp_path, tiny_model_dir, tiny_encoder, reads):
    docs = tmp_path / "docs"
    write_corpus(docs)
    config = make_config(tmp_path, tiny_model_dir)
    run_sync(config, encoder=tiny_encoder)
    (docs / "doc-0.md").write_text("Document 0: now about a compressor.", encoding="utf-8")  # edited
    (docs / "doc-1.md").unlink()  # removed
    os.rename(docs / "doc-2.md", docs / "moved-2.md")  # renamed: same inode, size and mtime
    replacement = docs / "doc-4.md.tmp"  # replaced by a copy (an editor's save): same text, new inode
    replacement.write_bytes((docs / "doc-4.md").read_bytes())
    stat = os.stat(docs / "doc-4.md")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, docs / "doc-4.md")
    reads.clear()

    report = run_sync(config, encoder=tiny_encoder, prune=True)
    assert sorted(reads) == ["Document 0", "Document 2", "Document 4"]
    assert report.documents["new"] == 1 and report.documents["changed"] == 1 and report.documents["deleted"] == 2
    assert report.chunks["upserted"] == 2 and report.chunks["payload_updated"] == 0  # doc-4: read, not rewritten
    texts = store_texts(config)
    assert "compressor" in texts["doc-0.md"] and "moved-2.md" in texts
    assert "doc-1.md" not in texts and "doc-2.md" not in texts
    assert verify(config).ok
    reads.clear()
    run_sync(config, encoder=tiny_encoder, prune=True)
    assert reads == []  # the new stamps were recorded


def test_a_records_file_is_skipped_whole_and_read_again_when_it_changes(tmp_path, tiny_model_dir, tiny_encoder,
                                                                        monkeypatch):
    docs = tmp_path / "docs"
    write_corpus(docs)
    config = make_config(tmp_path, tiny_model_dir)
    run_sync(config, encoder=tiny_encoder)
    opened: list[str] = []
    real = files_module.jsonl_records
    monkeypatch.setattr(files_module, "jsonl_records", lambda rel, *args: (opened.append(rel), real(rel, *args))[1])
    skipped = run_sync(config, encoder=tiny_encoder, prune=True)
    assert opened == [] and skipped.documents["unchanged"] == 9  # all three records, not read
    assert skipped.documents["deleted"] == 0 and len(store_texts(config)) == 9
    with (docs / "tickets.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "t-9", "text": "Ticket 9: the gauge is stuck."}) + "\n")
    grown = run_sync(config, encoder=tiny_encoder, prune=True)
    assert opened == ["tickets.jsonl"]
    assert grown.documents["new"] == 1 and grown.documents["unchanged"] == 9 and grown.documents["deleted"] == 0
    assert "tickets.jsonl#t-9" in store_texts(config)


def test_a_file_with_a_failure_is_read_again_every_time(tmp_path, tiny_model_dir, tiny_encoder):
    docs = tmp_path / "docs"
    write_corpus(docs)
    with (docs / "tickets.jsonl").open("a", encoding="utf-8") as f:
        f.write("{not json\n")
    config = make_config(tmp_path, tiny_model_dir)
    assert run_sync(config, encoder=tiny_encoder).exit_code == 3
    again = run_sync(config, encoder=tiny_encoder, prune=True)
    assert again.exit_code == 3 and [f["kind"] for f in again.failures] == ["malformed"]  # still reported
    assert again.documents["deleted"] == 0


def test_a_changed_setting_reads_every_file_again(tmp_path, tiny_model_dir, tiny_encoder, reads):
    write_corpus(tmp_path / "docs")
    run_sync(make_config(tmp_path, tiny_model_dir), encoder=tiny_encoder)
    reads.clear()
    run_sync(make_config(tmp_path, tiny_model_dir, exclude=["nothing/**"]), encoder=tiny_encoder)
    assert len(reads) == 6  # a source setting
    reads.clear()
    config = make_config(tmp_path, tiny_model_dir, exclude=["nothing/**"])
    run_sync(config.model_copy(update={"preprocess": config.preprocess.model_validate({"drop_symbols": ["®"]})}),
             encoder=tiny_encoder)
    assert len(reads) == 6  # a text setting


def test_a_ledger_from_before_the_stamps_is_migrated(tmp_path, tiny_model_dir, tiny_encoder, reads):
    """An older ledger (no `files` table, no text hash per chunk, no volatile hash) opens, and the
    first sync after the upgrade reads every file once, rewrites nothing, and records the stamps."""
    write_corpus(tmp_path / "docs")
    config = make_config(tmp_path, tiny_model_dir)
    run_sync(config, encoder=tiny_encoder)
    db = sqlite3.connect(config.state_dir / "ledger.sqlite")
    db.execute("DROP TABLE files")
    db.execute("ALTER TABLE chunks DROP COLUMN content_hash")
    db.execute("ALTER TABLE documents DROP COLUMN volatile_hash")
    db.commit()
    db.close()
    reads.clear()
    upgraded = run_sync(config, encoder=tiny_encoder)
    assert len(reads) == 6 and upgraded.documents["unchanged"] == 9
    assert upgraded.chunks["upserted"] == upgraded.chunks["payload_updated"] == 0
    reads.clear()
    run_sync(config, encoder=tiny_encoder)
    assert reads == []
    ledger = Ledger(config.state_dir)
    try:
        assert len(ledger.stamps()) == 7
    finally:
        ledger.close()
