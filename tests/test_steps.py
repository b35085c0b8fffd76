"""The sync's steps, each called alone (connector.steps): plan from a folder and a ledger with the
tokenizer only, encode a window with a fake Encoder, write a part into an embedded store; and the
orchestrator's setup, which never loads the model's weights for an unchanged corpus."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from connector.app import collection_layout, open_sink, sink_target
from connector.config import parse_config
from connector.encoders.base import Encoder
from connector.encoders.bge_m3 import BGEM3Encoder
from connector.encoders.cache import EmbeddingCache
from connector.errors import TerminalError
from connector.ledger import Ledger
from connector.pipeline import run_sync
from connector.preprocess.chunking import CHUNKING_VERSION_KEY, chunking_version
from connector.preprocess.factory import document_text_settings, make_preprocessor
from connector.records import Chunk, Document, SparseVector, Vectors, point_id
from connector.sources.factory import make_source
from connector.steps.deferred import DeferredPlans
from connector.steps.encode import EncodeStep
from connector.steps.plan import DocPlan, Planner, Window, chunk_payload
from connector.steps.report import SyncReport
from connector.steps.setup import prepare_sync
from connector.steps.write import Writer

DOCS = {
    "a.md": "The pump reports pressure in bar.",
    "b.md": "Reset the valve before the pump starts.\n\nThen check the seal.",
    "c.md": "Contact support for help.",
}


def make_config(tmp_path: Path, model: Path | str):
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    return parse_config({
        "source": {"type": "files", "path": str(docs)},
        "chunking": {"max_tokens": 16, "overlap_tokens": 2},
        "encoder": {"model": str(model)},
        "sink": {"type": "qdrant", "path": str(tmp_path / "qdrant"), "collection": "kb", "batch_size": 2},
        "retry": {"attempts": 1},
        "state_dir": str(tmp_path / "state"),
    }, tmp_path, origin="test")


def make_planner(config, encoder: Encoder, ledger: Ledger, window_chunks: int = 1024) -> Planner:
    layout = collection_layout(config)
    setup = prepare_sync(config, encoder, layout.name, chunking_version(config.chunking, ledger))
    return Planner(chunker=setup.chunker, fingerprint=setup.fingerprint, normalize=make_preprocessor(config),
                   text_settings=document_text_settings(config), layout=layout, collection=config.sink.collection,
                   window_chunks=window_chunks)


# ---- plan -----------------------------------------------------------------------------------
def test_plan_gives_the_doc_plans_of_a_folder_with_the_tokenizer_alone(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    encoder = BGEM3Encoder(str(tiny_model_dir), max_length=512)  # its own: no test has loaded its weights
    ledger = Ledger(config.state_dir)
    planner = make_planner(config, encoder, ledger)
    report = SyncReport()

    windows = list(planner.windows(make_source(config.source).read(), ledger, report))

    assert encoder._weights is None  # planning needs the tokenizer, never the weights
    assert len(windows) == 1 and windows[0].failed == []
    plans = {plan.doc.doc_id: plan for plan in windows[0].plans}
    assert sorted(plans) == sorted(DOCS) and planner.seen == set(DOCS)
    assert report.documents == {"seen": 3, "new": 3, "changed": 0, "unchanged": 0, "deleted": 0, "failed": 0}
    for doc_id, plan in plans.items():
        assert plan.action == "new" and plan.fingerprint == planner.fingerprint
        assert plan.chunks and plan.write == list(range(len(plan.chunks))) and plan.stale_ids == []
        assert plan.ids == [point_id("kb", doc_id, i) for i in range(len(plan.chunks))]
        assert [p["text"] for p in plan.payloads] == [c.text for c in plan.chunks]
    for doc_id, plan in plans.items():  # the chunks cover the document's text, in order
        assert plan.chunks[0].char_start == 0 and plan.chunks[-1].char_end == len(DOCS[doc_id])
        assert all(c.text == DOCS[doc_id][c.char_start:c.char_end] for c in plan.chunks)
    assert windows[0].chunks == sum(len(plan.chunks) for plan in plans.values())

    # what the ledger holds is not planned again; an edited document is planned as changed
    ledger.set_meta(CHUNKING_VERSION_KEY, str(chunking_version(config.chunking, ledger)))  # as a sync records it
    ledger.commit_documents([plans["a.md"].commit(), plans["b.md"].commit()])
    (tmp_path / "docs" / "b.md").write_text(DOCS["b.md"] + "\n\nA new last line.", encoding="utf-8")
    again, report = make_planner(config, encoder, ledger, window_chunks=1), SyncReport()
    windows = list(again.windows(make_source(config.source).read(), ledger, report))
    assert [[plan.doc.doc_id for plan in w.plans] for w in windows] == [["b.md"], ["c.md"]]  # a window per document
    changed = windows[0].plans[0]
    assert changed.action == "changed" and changed.write and changed.stale_ids == []
    assert set(changed.ids) >= {c.point_id for c in ledger.chunks("b.md")}  # kept its points
    assert report.documents["unchanged"] == 1 and report.documents["changed"] == 1 and report.documents["new"] == 1
    assert encoder._weights is None
    ledger.close()


# ---- encode ---------------------------------------------------------------------------------
class FakeEncoder(Encoder):
    """Vectors from the text alone (its length and first letter), recording every encode() call."""

    dimension = 4
    max_length = 512

    def __init__(self):
        self.calls: list[list[str]] = []

    @property
    def fingerprint(self) -> dict:
        return {"content_sha256": "fake", "revision": None}

    @property
    def tokenizer(self):
        raise AssertionError("not needed for fewer texts than one encode slice")

    def encode(self, texts):
        self.calls.append(list(texts))
        return [self.vectors(t) for t in texts]

    @staticmethod
    def vectors(text: str) -> Vectors:
        dense = np.array([len(text), ord(text[0]), 1.0, 2.0], dtype=np.float32)
        return Vectors(dense=dense / np.linalg.norm(dense),
                       sparse=SparseVector(np.array([len(text)], dtype=np.int64), np.array([0.5], dtype=np.float32)))


def hand_plan(doc_id: str, texts: list[str], collection: str = "kb") -> DocPlan:
    """A new document's plan, its chunks `texts`, every point to write."""
    chunks, start = [], 0
    for i, text in enumerate(texts):
        chunks.append(Chunk(doc_id, i, text, start, start + len(text)))
        start += len(text) + 1
    payloads = [chunk_payload(c, {"path": doc_id}) for c in chunks]
    return DocPlan(Document(doc_id, " ".join(texts), {"path": doc_id}), "new", f"hash-{doc_id}", "fp", chunks,
                   payloads, [f"key-{doc_id}-{i}" for i in range(len(texts))],
                   [point_id(collection, doc_id, i) for i in range(len(texts))], list(range(len(texts))), [])


def hand_window(*plans: DocPlan) -> Window:
    return Window(plans=list(plans), chunks=sum(len(p.write) for p in plans))


def work_of(window: Window) -> list[tuple[int, int]]:
    return [(n, i) for n, plan in enumerate(window.plans) for i in plan.write]


def test_encode_gives_each_point_its_vectors_encoding_each_text_once(tmp_path):
    encoder = FakeEncoder()
    cache = EmbeddingCache(tmp_path, "fake")
    step = EncodeStep(encoder=encoder, cache=cache, projection=None, projection_config=None, window_chunks=1024)
    window = hand_window(hand_plan("x", ["alpha text", "shared footer"]), hand_plan("y", ["shared footer"]))

    part = step.encode_part(window, work_of(window))

    assert encoder.calls == [["alpha text", "shared footer"]]  # the shared text once
    assert [(n, p.id) for n, p in part.points] == [(0, point_id("kb", "x", 0)), (0, point_id("kb", "x", 1)),
                                                    (1, point_id("kb", "y", 0))]
    for (n, point), text in zip(part.points, ["alpha text", "shared footer", "shared footer"]):
        np.testing.assert_array_equal(point.dense, FakeEncoder.vectors(text).dense)
        assert point.payload["text"] == text
    assert (part.encoded, part.cached, part.cache_hits) == (2, 1, 0)

    # the same texts again come from the embedding cache
    again = hand_window(hand_plan("z", ["shared footer", "alpha text"]))
    part = step.encode_part(again, work_of(again))
    assert len(encoder.calls) == 1 and (part.encoded, part.cached, part.cache_hits) == (0, 2, 2)
    np.testing.assert_array_equal(part.points[1][1].dense, FakeEncoder.vectors("alpha text").dense)
    cache.close()


class SlicingFakeEncoder(FakeEncoder):
    """A FakeEncoder with a tokenizer (one token per word), which the encode step uses to sort texts
    by length before it hands them over `texts_per_call` at a time."""

    def __init__(self, texts_per_call: int):
        super().__init__()
        self.texts_per_call = texts_per_call

    @property
    def tokenizer(self):
        return lambda texts, **kwargs: {"input_ids": [[0] * len(t.split()) for t in texts]}


def test_encode_hands_the_encoder_as_many_texts_per_call_as_it_asks_for(tmp_path):
    texts = [" ".join(["word"] * n) + f" {n}" for n in range(1, 13)]  # 12 distinct texts, 2 to 13 words
    calls = {}
    for per_call in (32, 5):  # the default, and an encoder that feeds several workers would ask for more
        encoder = SlicingFakeEncoder(per_call)
        cache = EmbeddingCache(tmp_path / str(per_call), "fake")
        step = EncodeStep(encoder=encoder, cache=cache, projection=None, projection_config=None, window_chunks=1024)
        window = hand_window(hand_plan("x", texts))
        part = step.encode_part(window, work_of(window))
        assert part.encoded == 12 and len(part.points) == 12
        calls[per_call] = encoder.calls
        cache.close()
    assert [len(c) for c in calls[32]] == [12]
    assert [len(c) for c in calls[5]] == [5, 5, 2]
    assert calls[5][0][0] == texts[-1]  # longest first, so that each call's batches are as full as one call's


def test_encode_splits_a_window_into_parts_and_stops_when_told(tmp_path):
    encoder = FakeEncoder()
    cache = EmbeddingCache(tmp_path, "fake")
    step = EncodeStep(encoder=encoder, cache=cache, projection=None, projection_config=None, window_chunks=2)
    window = hand_window(hand_plan("x", ["one", "two", "three"]), hand_plan("y", ["four", "five"]))
    empty = Window()  # a window with nothing to encode still gets a part: the write step sees every window

    parts = list(step.parts((w for w in [window, empty]), SyncReport()))

    assert [len(p.points) for p in parts] == [2, 2, 1, 0] and parts[3].window is empty
    assert encoder.calls == [["one", "two"], ["three", "four"], ["five"]]  # one encode() per part

    stop = threading.Event()
    stop.set()
    assert list(step.parts((w for w in [hand_window(hand_plan("z", ["six"]))]), SyncReport(), stop)) == []
    assert step.encode_part(hand_window(hand_plan("z", ["six"])), [(0, 0)], stop) is None
    assert len(encoder.calls) == 3  # nothing encoded once stopped
    cache.close()


# ---- write ----------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, tiny_model_dir):
    """An embedded Qdrant collection for 4-d vectors, its ledger, and an encode step with the fake encoder."""
    config = make_config(tmp_path, tiny_model_dir)
    sink = open_sink(config)
    sink.ensure_collection(FakeEncoder.dimension)
    ledger = Ledger(config.state_dir)
    ledger.bind_target(sink_target(config))
    encoder = FakeEncoder()
    cache = EmbeddingCache(config.state_dir, "fake")
    step = EncodeStep(encoder=encoder, cache=cache, projection=None, projection_config=None, window_chunks=1024)
    deferred = DeferredPlans(config.state_dir)
    writer = Writer(config=config, sink=sink, ledger=ledger, encoding=step, deferred=deferred, window_chunks=1024)
    yield config, sink, ledger, step, writer
    deferred.close()
    cache.close()
    ledger.close()
    sink.close()


def test_write_puts_a_part_in_the_store_and_commits_its_documents(store):
    config, sink, ledger, step, writer = store
    window = hand_window(hand_plan("x", ["alpha", "beta", "gamma"]), hand_plan("y", ["delta"]))
    part = step.encode_part(window, work_of(window))
    report = SyncReport()
    assert ledger.document("x") is None

    writer.write(part, report)

    plans = window.plans
    assert sink.all_ids() == set(plans[0].ids) | set(plans[1].ids)
    for plan in plans:
        committed = ledger.document(plan.doc.doc_id)
        assert committed.content_hash == plan.content_hash and committed.fingerprint == "fp"
        assert [c.point_id for c in ledger.chunks(plan.doc.doc_id)] == plan.ids
    assert report.chunks["upserted"] == 4 and report.chunks["encoded"] == 4
    stored = {p.id: p for p in sink.retrieve(plans[1].ids, with_vectors=True)}
    np.testing.assert_allclose(stored[plans[1].ids[0]].dense, FakeEncoder.vectors("delta").dense, rtol=1e-6)

    # a changed document: its new point is written, then its stale point deleted
    changed = hand_plan("y", ["epsilon"])
    changed.ids, changed.stale_ids = [point_id("kb", "y", 0, 1)], plans[1].ids
    window = hand_window(changed)
    writer.write(step.encode_part(window, work_of(window)), report)
    assert sink.all_ids() == set(plans[0].ids) | set(changed.ids)
    assert [c.point_id for c in ledger.chunks("y")] == changed.ids and ledger.pending_deletes() == []
    assert report.chunks["deleted"] == 1


def test_write_keeps_a_refused_document_as_a_dead_letter_without_encoding_again(store, monkeypatch):
    config, sink, ledger, step, writer = store
    window = hand_window(hand_plan("x", ["alpha", "beta"]))
    part = step.encode_part(window, work_of(window))

    def refuse(points):
        raise TerminalError("the store refuses this batch")

    monkeypatch.setattr(sink, "upsert", refuse)
    report = SyncReport()
    writer.write(part, report)

    assert ledger.document("x") is None and sink.all_ids() == set()
    letters = ledger.dead_letters()
    assert [(letter.doc_ids, letter.point_count, letter.error_kind) for letter in letters] == [(["x"], 2, "terminal")]
    assert report.failures[0]["doc_id"] == "x" and report.failures[0]["dead_letter"] == letters[0].id
    assert report.chunks["failed"] == 2 and len(step.encoder.calls) == 1  # its vectors came from the cache
    assert writer.unsettled == {"x"}  # its file is read again next time


# ---- the orchestrator ----------------------------------------------------------------------
def test_a_sync_of_an_unchanged_corpus_never_loads_the_model_weights(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    first = run_sync(config, encoder=BGEM3Encoder(str(tiny_model_dir), max_length=512))
    assert first.exit_code == 0 and first.documents["new"] == 3

    fresh = BGEM3Encoder(str(tiny_model_dir), max_length=512)
    again = run_sync(config, encoder=fresh)
    assert again.exit_code == 0 and again.documents["unchanged"] == 3
    assert fresh._weights is None

    (tmp_path / "docs" / "c.md").write_text("Contact support for help, or call us.", encoding="utf-8")
    changed = run_sync(config, encoder=fresh)
    assert changed.documents["changed"] == 1 and fresh._weights is not None
