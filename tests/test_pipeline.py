"""The staged sync (plan | encode | write in threads with bounded queues) on embedded Qdrant:
same result as the stages run one after the other, encoding overlaps writing, reading stays a
bounded distance ahead of the store, and an error in a stage ends the sync with nothing lost."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import connector.pipeline as pipeline
from connector import api
from connector.app import open_sink
from connector.config import parse_config
from connector.errors import ConnectorError
from connector.ledger import Ledger
from connector.pipeline import run_sync
from connector.recovery import verify
from connector.sinks.qdrant_edge import QdrantEdgeSink  # the engine of a new sink.path
from connector.sources.base import Source
from connector.testing.tiny_model import SENTENCES

DOCS = 120


@pytest.fixture
def small_windows(monkeypatch):
    monkeypatch.setattr(pipeline, "WINDOW_CHUNKS", 8)  # many windows from a small corpus


def write_corpus(root: Path, docs: int = DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(docs):
        paragraphs = [f"Document {n}, part {k}: the pump with serial {n * 10 + k} reports pressure {k * 3} bar."
                      for k in range(1 + n % 3)]
        (root / f"doc-{n:03d}.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    return root


def make_config(tmp_path: Path, model: Path, name: str, docs: Path):
    return parse_config({
        "source": {"type": "files", "path": str(docs)},
        "chunking": {"max_tokens": 16, "overlap_tokens": 2},
        "encoder": {"model": str(model), "batch_size": 4},
        "sink": {"type": "qdrant", "path": str(tmp_path / name / "qdrant"), "collection": "kb", "batch_size": 4},
        "retry": {"attempts": 1},
        "state_dir": str(tmp_path / name / "state"),
    }, tmp_path, origin="test")


def store_contents(config) -> dict:
    sink = open_sink(config)
    try:
        ids = sorted(sink.all_ids())
        return {p.id: (p.payload, np.asarray(p.dense), p.sparse) for p in sink.retrieve(ids, with_vectors=True)}
    finally:
        sink.close()


def ledger_contents(config) -> dict:
    ledger = Ledger(config.state_dir)
    try:
        return {d: (ledger.document(d), ledger.chunks(d)) for d in ledger.doc_ids()}
    finally:
        ledger.close()


def test_pipelined_and_one_after_the_other_give_the_same_store_and_ledger(tmp_path, tiny_model_dir, tiny_encoder,
                                                                          small_windows):
    docs = write_corpus(tmp_path / "docs")
    staged, inline = (make_config(tmp_path, tiny_model_dir, name, docs) for name in ("staged", "inline"))
    a = run_sync(staged, encoder=tiny_encoder, pipelined=True)
    b = run_sync(inline, encoder=tiny_encoder, pipelined=False)
    assert a.exit_code == b.exit_code == 0
    assert a.documents == b.documents and a.documents["new"] == DOCS
    assert a.chunks == b.chunks and a.chunks["upserted"] > 8 * 10  # more than ten windows
    store_a, store_b = store_contents(staged), store_contents(inline)
    assert store_a.keys() == store_b.keys() and len(store_a) == a.chunks["upserted"]
    for pid, (payload, dense, sparse) in store_a.items():
        assert payload == store_b[pid][0]
        np.testing.assert_array_equal(dense, store_b[pid][1])
        np.testing.assert_array_equal(sparse.indices, store_b[pid][2].indices)
    assert ledger_contents(staged) == ledger_contents(inline)
    assert verify(staged).ok


class CountingEncoder:
    """The real tiny encoder, counting its encode() calls."""

    def __init__(self, encoder):
        self.inner = encoder
        self.calls = 0
        self.second_call = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts):
        self.calls += 1
        if self.calls >= 2:
            self.second_call.set()
        return self.inner.encode(texts)


def test_the_encoder_works_on_the_next_window_while_the_store_takes_the_first(tmp_path, tiny_model_dir, tiny_encoder,
                                                                               small_windows, monkeypatch):
    encoder = CountingEncoder(tiny_encoder)
    overlapped = []
    real_upsert = QdrantEdgeSink.upsert

    def upsert(self, points):
        if not overlapped:  # the first batch of the first window: is the second window being encoded?
            overlapped.append(encoder.second_call.wait(timeout=30))
        return real_upsert(self, points)

    monkeypatch.setattr(QdrantEdgeSink, "upsert", upsert)
    config = make_config(tmp_path, tiny_model_dir, "run", write_corpus(tmp_path / "docs"))
    report = run_sync(config, encoder=encoder)  # type: ignore[arg-type]
    assert overlapped == [True]
    assert report.exit_code == 0 and report.documents["new"] == DOCS
    assert verify(config).ok


def test_reading_stays_a_bounded_distance_ahead_of_a_slow_store(tmp_path, tiny_model_dir, tiny_encoder, small_windows,
                                                                monkeypatch):
    from connector.sources import factory

    read: list[str] = []
    real_make_source = factory.make_source

    class CountingSource(Source):
        def __init__(self, inner):
            self.inner = inner

        def read(self):
            for item in self.inner.read():
                read.append(item.doc_id)
                yield item

    monkeypatch.setattr(factory, "make_source", lambda cfg: CountingSource(real_make_source(cfg)))
    when_blocked = []
    real_upsert = QdrantEdgeSink.upsert

    def upsert(self, points):
        if not when_blocked:  # the store is stuck on the first batch: how far does reading get?
            last = -1
            while len(read) != last:
                last = len(read)
                time.sleep(0.5)
            when_blocked.append(last)
        return real_upsert(self, points)

    monkeypatch.setattr(QdrantEdgeSink, "upsert", upsert)
    config = make_config(tmp_path, tiny_model_dir, "run", write_corpus(tmp_path / "docs", docs=400))
    report = run_sync(config, encoder=tiny_encoder)
    # windows in flight: 1 written, 2 queued + 1 encoded, 2 queued + 1 being planned; each window
    # is at most 8 chunks plus one document's (every document has at least one chunk)
    assert 0 < when_blocked[0] <= 7 * (8 + 3)
    assert report.documents["new"] == 400 and len(read) == 400
    assert verify(config).ok


def test_an_error_in_the_read_stage_ends_the_sync_and_what_was_committed_is_in_the_store(
        tmp_path, tiny_model_dir, tiny_encoder, small_windows, monkeypatch):
    from connector.sources import factory

    real_make_source = factory.make_source

    class BreakingSource(Source):
        def __init__(self, inner):
            self.inner = inner

        def read(self):
            for n, item in enumerate(self.inner.read()):
                if n == 50:
                    raise ConnectorError("the source went away at document 50")
                yield item

    monkeypatch.setattr(factory, "make_source", lambda cfg: BreakingSource(real_make_source(cfg)))
    config = make_config(tmp_path, tiny_model_dir, "run", write_corpus(tmp_path / "docs"))
    with pytest.raises(ConnectorError, match="document 50"):
        run_sync(config, encoder=tiny_encoder)
    assert not any(t.name.startswith("connector-") and t.is_alive() for t in threading.enumerate())
    committed = ledger_contents(config)
    assert 0 < len(committed) <= 50
    assert verify(config).ok  # every committed point is in the store, nothing else is
    monkeypatch.setattr(factory, "make_source", real_make_source)
    report = run_sync(config, encoder=tiny_encoder)
    assert report.documents["unchanged"] == len(committed) and report.documents["new"] == DOCS - len(committed)
    assert verify(config).ok


def test_a_stopped_sync_stops_encoding_too(tmp_path, tiny_model_dir, tiny_encoder, small_windows, monkeypatch):
    from connector.errors import TerminalError

    encoder = CountingEncoder(tiny_encoder)

    def refuse(self, points):
        raise TerminalError("the store refuses every write")

    monkeypatch.setattr(QdrantEdgeSink, "upsert", refuse)
    config = make_config(tmp_path, tiny_model_dir, "run", write_corpus(tmp_path / "docs", docs=400))
    config.on_error = "stop"
    report = run_sync(config, encoder=encoder)  # type: ignore[arg-type]
    assert report.stopped and report.exit_code == 3
    # 400 documents make ~100 windows; after the stop only the parts already under way are encoded
    assert encoder.calls <= 8, encoder.calls
    assert not any(t.name.startswith("connector-") and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("before, after", [
    # the rule moves to queries: documents keep their text, queries still expand 'u'
    ({"abbreviations": {"u": "you"}, "abbreviations_scope": "both"}, {"abbreviations": {"u": "you"}}),
    ({"drop_symbols": ["®"]}, {}),
])
def test_a_changed_rule_rewrites_only_the_documents_whose_text_changes(tmp_path, tiny_model_dir, tiny_encoder,
                                                                      before, after):
    docs = write_corpus(tmp_path / "docs", docs=20)
    (docs / "chat.md").write_text("Thank u for the Acme® pump, it works.", encoding="utf-8")
    config = make_config(tmp_path, tiny_model_dir, "s", docs)
    first = run_sync(config.model_copy(update={"preprocess": config.preprocess.model_validate(before)}),
                     encoder=tiny_encoder)
    assert first.exit_code == 0 and first.documents["new"] == 21

    again = run_sync(config.model_copy(update={"preprocess": config.preprocess.model_validate(after)}),
                     encoder=tiny_encoder)
    chat_chunks = len(ledger_contents(config)["chat.md"][1])
    assert again.exit_code == 0
    assert again.documents["changed"] == 21  # every document is read again with the new rules ...
    # ... and only the one whose text changed is rewritten (its chunks whose text only moved: payload
    # only; a chunk before the change, same text at the same place, not at all)
    assert 1 <= again.chunks["upserted"] + again.chunks["payload_updated"] <= chat_chunks
    assert again.chunks["upserted"] >= 1
    assert 1 <= again.chunks["encoded"] <= chat_chunks and again.chunks["deleted"] == 0
    first_chunk = [payload["text"] for payload, _, _ in store_contents(config).values()
                   if payload["doc_id"] == "chat.md" and payload["chunk_index"] == 0]
    assert first_chunk[0].startswith("Thank u for")
    assert verify(config).ok

    third = run_sync(config.model_copy(update={"preprocess": config.preprocess.model_validate(after)}),
                     encoder=tiny_encoder)
    assert third.documents["unchanged"] == 21 and third.chunks["upserted"] == 0


PROSE = [line for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.isascii() and line.endswith(".")]
PROSE_DOCS = 8


def prose_config(tmp_path: Path, model: Path, name: str, version: int | None = None):
    """Documents of paragraphs of sentences, several chunks each: chunking versions 1 and 2 chunk some
    of them differently. `version`: chunking.version (None: unset)."""
    docs = tmp_path / "prose"
    if not docs.exists():
        docs.mkdir()
        rng = random.Random(7)
        for n in range(PROSE_DOCS):
            text = "\n\n".join(" ".join(rng.choices(PROSE, k=rng.randint(1, 4))) for _ in range(6))
            (docs / f"doc-{n}.md").write_text(text, encoding="utf-8")
    config = make_config(tmp_path, model, name, docs)
    return config.model_copy(update={"chunking": config.chunking.model_copy(update={"max_tokens": 32, "version": version})})


def pinned(config, version: int | None):
    return config.model_copy(update={"chunking": config.chunking.model_copy(update={"version": version})})


def recorded_chunking_version(config) -> str | None:
    ledger = Ledger(config.state_dir)
    try:
        return ledger.get_meta("chunking_version")
    finally:
        ledger.close()


def chunk_texts(config) -> set[str]:
    return {payload["text"] for payload, _, _ in store_contents(config).values()}


def assert_no_op(report):
    assert report.exit_code == 0 and report.documents["unchanged"] == PROSE_DOCS
    assert report.chunks["upserted"] == report.chunks["encoded"] == report.chunks["payload_updated"] == 0


def test_a_new_state_dir_chunks_with_version_1(tmp_path, tiny_model_dir, tiny_encoder):
    config = prose_config(tmp_path, tiny_model_dir, "new")
    assert api.status(config)["chunking_version"] == 1  # before the first sync too
    assert run_sync(config, encoder=tiny_encoder).documents["new"] == PROSE_DOCS
    assert recorded_chunking_version(config) == "1"
    assert api.status(config)["chunking_version"] == 1
    v1 = prose_config(tmp_path, tiny_model_dir, "v1", version=1)
    v2 = prose_config(tmp_path, tiny_model_dir, "v2", version=2)
    run_sync(v1, encoder=tiny_encoder), run_sync(v2, encoder=tiny_encoder)
    assert chunk_texts(config) == chunk_texts(v1) != chunk_texts(v2)


def test_an_existing_store_keeps_chunking_version_1_and_re_encodes_nothing(tmp_path, tiny_model_dir, tiny_encoder):
    config = prose_config(tmp_path, tiny_model_dir, "old")
    assert run_sync(pinned(config, 1), encoder=tiny_encoder).documents["new"] == PROSE_DOCS
    assert recorded_chunking_version(config) == "1"
    texts = chunk_texts(config)

    assert_no_op(run_sync(config, encoder=tiny_encoder))  # the pin removed: the ledger's version
    assert recorded_chunking_version(config) == "1" and api.status(config)["chunking_version"] == 1

    # A ledger from before versions were recorded (it holds documents, records no version): built by 1.
    ledger = Ledger(config.state_dir)
    ledger.db.execute("DELETE FROM meta WHERE key='chunking_version'")
    ledger.close()
    assert api.status(config)["chunking_version"] == 1
    assert_no_op(run_sync(config, encoder=tiny_encoder))
    assert recorded_chunking_version(config) == "1" and chunk_texts(config) == texts


def test_setting_a_chunking_version_re_chunks_the_store_once(tmp_path, tiny_model_dir, tiny_encoder):
    config = prose_config(tmp_path, tiny_model_dir, "switch")
    run_sync(pinned(config, 1), encoder=tiny_encoder)
    v1_texts = chunk_texts(config)

    dry = run_sync(pinned(config, 2), encoder=tiny_encoder, dry_run=True)  # what the switch would cost
    assert dry.documents["changed"] == PROSE_DOCS and recorded_chunking_version(config) == "1"
    up = run_sync(pinned(config, 2), encoder=tiny_encoder)
    assert up.exit_code == 0 and up.documents["changed"] == PROSE_DOCS  # every document chunked again
    assert up.chunks["encoded"] == dry.chunks["encoded"] > 0  # the chunks whose text changed
    assert recorded_chunking_version(config) == "2"
    fresh = prose_config(tmp_path, tiny_model_dir, "fresh", version=2)
    run_sync(fresh, encoder=tiny_encoder)
    assert chunk_texts(config) == chunk_texts(fresh) != v1_texts
    assert verify(config).ok
    assert_no_op(run_sync(pinned(config, 2), encoder=tiny_encoder))
    assert_no_op(run_sync(config, encoder=tiny_encoder))  # the pin removed: the ledger says 2

    down = run_sync(pinned(config, 1), encoder=tiny_encoder)  # and back, the same way
    assert down.documents["changed"] == PROSE_DOCS and down.chunks["encoded"] == 0  # the cache has them
    assert recorded_chunking_version(config) == "1" and chunk_texts(config) == v1_texts
    assert_no_op(run_sync(config, encoder=tiny_encoder))


def test_chunk_counts_add_up_with_texts_shared_across_documents(tmp_path, tiny_model_dir, tiny_encoder,
                                                              small_windows):
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(12):  # the same footer in twelve documents, across several windows
        (docs / f"page-{n:02d}.md").write_text("Contact support for help.", encoding="utf-8")
    for n in range(6):
        (docs / f"own-{n}.md").write_text(f"Page {n} explains valve {n}.", encoding="utf-8")
    config = make_config(tmp_path, tiny_model_dir, "s", docs)

    planned = run_sync(config, encoder=tiny_encoder, dry_run=True)
    report = run_sync(config, encoder=tiny_encoder)
    for r in (planned, report):
        assert r.chunks["upserted"] == 18  # points: one per document
        assert r.chunks["encoded"] == 7  # distinct texts: the footer once, and six others
        assert r.chunks["encoded"] + r.chunks["cached"] == r.chunks["upserted"]
    assert len(store_contents(config)) == 18
    from connector.cli import _sync_text

    assert "chunks: 18 upserted (7 encoded, 11 with a reused vector), 0 deleted" in _sync_text(report)


def test_run_sync_closes_the_encoder_it_built_and_leaves_a_given_one_open(tmp_path, tiny_model_dir, monkeypatch):
    """The Ray engine's encoder holds actors (CPUs of the cluster) until closed: a sync that built
    its encoder must close it, or the next sync in the same process (the service, a test) waits for
    CPUs that nobody frees. A caller's encoder is the caller's to close."""
    config = make_config(tmp_path, tiny_model_dir, "a", write_corpus(tmp_path / "docs", docs=3))
    closed = []
    real = pipeline.make_encoder

    def counting(cfg):
        encoder = real(cfg)
        encoder.close = lambda: closed.append(encoder)
        return encoder

    monkeypatch.setattr(pipeline, "make_encoder", counting)
    run_sync(config)
    assert len(closed) == 1
    given = counting(config)
    (tmp_path / "docs" / "doc-extra.md").write_text("A new note about relays.", encoding="utf-8")
    run_sync(config, encoder=given)
    assert len(closed) == 1
