"""Only what changed is written: a chunk whose text is unchanged but whose position moved (or whose
file was touched) gets a payload-only update, its vectors stay; through real embedded stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from connector.app import open_sink
from connector.config import parse_config
from connector.ledger import Ledger
from connector.pipeline import run_sync
from connector.recovery import verify
from connector.sinks.milvus import MilvusSink
from connector.sinks.qdrant import QdrantSink
from connector.sinks.qdrant_edge import QdrantEdgeSink

PARAGRAPHS = [f"Part {k}: the pump with serial {k * 17} reports a pressure of {k * 3} bar." for k in range(8)]


def make_config(tmp_path: Path, model: Path, backend: str):
    sink = {"qdrant": {"type": "qdrant", "path": str(tmp_path / "qdrant")},  # the default engine: Edge
            "qdrant-local-mode": {"type": "qdrant", "path": str(tmp_path / "qdrant"), "engine": "local-mode"},
            "milvus": {"type": "milvus", "uri": str(tmp_path / "milvus.db")}}[backend]
    return parse_config({
        "source": {"type": "files", "path": str(tmp_path / "docs")},
        "chunking": {"max_tokens": 24, "overlap_tokens": 0},
        "encoder": {"model": str(model), "batch_size": 4},
        "sink": {**sink, "collection": "kb", "batch_size": 4},
        "retry": {"attempts": 1},
        "state_dir": str(tmp_path / "state"),
    }, tmp_path, origin="test")


def write_doc(tmp_path: Path, first: str) -> Path:
    path = tmp_path / "docs" / "manual.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n\n".join([first, *PARAGRAPHS]), encoding="utf-8")
    return path


def store_points(config) -> dict:
    sink = open_sink(config)
    try:
        points = sink.retrieve(sorted(sink.all_ids()), with_vectors=True)
        return {p.payload["chunk_index"]: p for p in points}
    finally:
        sink.close()


@pytest.fixture
def upserted_ids(monkeypatch):
    """The ids of every point written with its vectors."""
    written: list[str] = []
    for cls in (QdrantSink, QdrantEdgeSink, MilvusSink):
        real = cls._upsert
        monkeypatch.setattr(cls, "_upsert", lambda self, points, real=real: (written.extend(p.id for p in points),
                                                                             real(self, points))[1])
    return written


@pytest.mark.parametrize("backend", ["qdrant", "qdrant-local-mode", "milvus"])
def test_a_position_only_change_updates_payloads_and_keeps_vectors(tmp_path, tiny_model_dir, tiny_encoder, backend,
                                                                    upserted_ids):
    config = make_config(tmp_path, tiny_model_dir, backend)
    write_doc(tmp_path, "Intro.")
    first = run_sync(config, encoder=tiny_encoder)
    before = store_points(config)
    assert first.exit_code == 0 and len(before) > 3

    write_doc(tmp_path, "Intro, now a little longer.")  # chunk 0's text changes; every later chunk moves
    upserted_ids.clear()
    report = run_sync(config, encoder=tiny_encoder)
    after = store_points(config)

    assert report.exit_code == 0 and report.documents["changed"] == 1
    assert report.chunks["upserted"] == 1 and report.chunks["encoded"] == 1
    assert report.chunks["payload_updated"] == len(before) - 1
    assert upserted_ids == [before[0].id]  # no vectors sent for the moved chunks
    assert after.keys() == before.keys()
    shift = len("Intro, now a little longer.") - len("Intro.")
    for index in range(1, len(before)):
        old, new = before[index], after[index]
        assert new.id == old.id and new.payload["text"] == old.payload["text"]
        assert new.payload["char_start"] == old.payload["char_start"] + shift  # the position moved in the store
        np.testing.assert_array_equal(new.dense, old.dense)
        np.testing.assert_array_equal(new.sparse.indices, old.sparse.indices)
        np.testing.assert_array_equal(new.sparse.values, old.sparse.values)
    assert verify(config).ok
    again = run_sync(config, encoder=tiny_encoder)
    assert again.chunks["upserted"] == again.chunks["payload_updated"] == 0


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
def test_a_touched_file_refreshes_modified_without_vectors(tmp_path, tiny_model_dir, tiny_encoder, backend,
                                                           upserted_ids):
    config = make_config(tmp_path, tiny_model_dir, backend)
    path = write_doc(tmp_path, "Intro.")
    os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    run_sync(config, encoder=tiny_encoder)
    before = store_points(config)
    os.utime(path, ns=(1_750_000_000 * 10**9, 1_750_000_000 * 10**9))  # touched: same text, newer mtime
    upserted_ids.clear()
    report = run_sync(config, encoder=tiny_encoder)
    after = store_points(config)
    assert report.documents["unchanged"] == 1 and report.chunks["encoded"] == 0
    assert report.chunks["payload_updated"] == len(before) and upserted_ids == []
    for index, point in after.items():
        assert point.payload["metadata"]["modified"].startswith("2025-06-15")
        assert before[index].payload["metadata"]["modified"].startswith("2023-11-14")
        np.testing.assert_array_equal(point.dense, before[index].dense)
    assert verify(config).ok
    assert run_sync(config, encoder=tiny_encoder).chunks["payload_updated"] == 0


def test_a_crash_between_the_payload_update_and_the_ledger_converges(tmp_path, tiny_model_dir, tiny_encoder,
                                                                      monkeypatch, upserted_ids):
    config = make_config(tmp_path, tiny_model_dir, "qdrant")
    write_doc(tmp_path, "Intro.")
    run_sync(config, encoder=tiny_encoder)
    write_doc(tmp_path, "Intro, now a little longer.")
    real_commit = Ledger.commit_documents

    def crash(self, commits):
        raise KeyboardInterrupt("killed after the store confirmed, before the ledger moved")

    monkeypatch.setattr(Ledger, "commit_documents", crash)
    with pytest.raises(KeyboardInterrupt):
        run_sync(config, encoder=tiny_encoder)
    monkeypatch.setattr(Ledger, "commit_documents", real_commit)
    assert not verify(config).ok  # the ledger does not vouch for what the store holds
    upserted_ids.clear()
    report = run_sync(config, encoder=tiny_encoder)
    assert report.exit_code == 0 and verify(config).ok
    points = store_points(config)
    source = (tmp_path / "docs" / "manual.md").read_text(encoding="utf-8")
    assert points[0].payload["text"].startswith("Intro, now")
    assert all(source[p.payload["char_start"] : p.payload["char_end"]] == p.payload["text"] for p in points.values())
    # the moved chunks still need no vectors; the one whose text changed is written again with its own
    assert set(upserted_ids) <= {points[0].id}


def test_a_text_reverted_after_a_crash_mid_write_gets_its_vectors_back(tmp_path, tiny_model_dir, tiny_encoder,
                                                                       monkeypatch):
    """The store took a new text's vectors, then the sync died before the ledger moved; the text is
    reverted before the next sync. The ledger's old text hash must not be trusted then: the point
    holds the other text's vectors, so it is written again with its vectors, not just its payload."""
    config = make_config(tmp_path, tiny_model_dir, "qdrant")
    write_doc(tmp_path, "Intro.")
    run_sync(config, encoder=tiny_encoder)
    original = store_points(config)[0]
    write_doc(tmp_path, "A completely different opening paragraph.")
    monkeypatch.setattr(Ledger, "commit_documents", lambda self, commits: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_sync(config, encoder=tiny_encoder)
    monkeypatch.undo()
    assert store_points(config)[0].payload["text"].startswith("A completely")
    write_doc(tmp_path, "Intro.")  # reverted
    report = run_sync(config, encoder=tiny_encoder)
    restored = store_points(config)[0]
    assert report.exit_code == 0 and report.chunks["upserted"] >= 1
    assert {**restored.payload, "metadata": None} == {**original.payload, "metadata": None}  # `modified` moved
    np.testing.assert_allclose(restored.dense, original.dense, rtol=1e-5, atol=1e-6)
    assert verify(config).ok


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
def test_a_chunk_inserted_above_moves_the_others_to_new_indexes_without_their_vectors(tmp_path, tiny_model_dir,
                                                                                     tiny_encoder, backend,
                                                                                     upserted_ids):
    """Text inserted at the top makes one chunk more: every later chunk moves to the next index. Each
    keeps its point (and vectors); only the new chunk is written with vectors. Removing the text
    again moves them back, still without vectors."""
    config = make_config(tmp_path, tiny_model_dir, backend)
    write_doc(tmp_path, "Intro.")
    run_sync(config, encoder=tiny_encoder)
    before = store_points(config)
    by_text: dict[str, dict[str, object]] = {}  # text -> {point id: point} (short texts repeat, as "bar.")
    for point in before.values():
        by_text.setdefault(point.payload["text"], {})[point.id] = point

    write_doc(tmp_path, "A new first paragraph, long enough to be a chunk of its own here.\n\nIntro.")
    upserted_ids.clear()
    report = run_sync(config, encoder=tiny_encoder)
    after = store_points(config)
    assert len(after) > len(before) and report.exit_code == 0
    new_texts = [p for p in after.values() if p.payload["text"] not in by_text]
    kept = [p for p in after.values() if p.payload["text"] in by_text]
    assert len(kept) >= len(before) - 1
    assert report.chunks["encoded"] == report.chunks["upserted"] == len(new_texts) == len(upserted_ids)
    assert report.chunks["payload_updated"] == len(kept)
    assert len({p.id for p in kept}) == len(kept)
    for point in kept:
        old = by_text[point.payload["text"]].get(point.id)
        assert old is not None  # kept a point that held its text, and so its vectors
        assert point.payload["chunk_index"] != old.payload["chunk_index"]  # at another index
        np.testing.assert_array_equal(point.dense, old.dense)
    assert verify(config).ok

    write_doc(tmp_path, "Intro.")  # back
    upserted_ids.clear()
    back = run_sync(config, encoder=tiny_encoder)
    assert back.chunks["encoded"] == 0 and back.chunks["payload_updated"] == len(kept)
    assert len(upserted_ids) == len(before) - len(kept)  # the chunk whose text came back: vectors from the cache
    restored = store_points(config)
    assert {i: p.payload["text"] for i, p in restored.items()} == {i: p.payload["text"] for i, p in before.items()}
    assert verify(config).ok
