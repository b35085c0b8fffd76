"""The whole flow through the CLI, on embedded Qdrant and on Milvus Lite, with the tiny model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from connector.app import open_state
from connector.cli import cli
from connector.config import load_config
from connector.ledger import Ledger
from connector.pipeline import SyncRun, run_sync
from connector.records import Document, FailedDocument, point_id
from connector.sources.base import Source
from connector.sources.files import FilesSource
from connector.sinks.factory import make_sink
from milvus_server import milvus_server  # noqa: F401  (session fixture)

LONG_DOC = "\n\n".join(
    f"Section {n}. The device keeps a log of every connection attempt number {n}. "
    f"When the cable is replaced the counter {n} resets and the status light blinks twice."
    for n in range(1, 13)
)


def write_corpus(root: Path) -> None:
    (root / "guides").mkdir(parents=True)
    (root / "reset.md").write_text("# Reset\n\nOpen the sign-in page and choose Forgot password. Thx u!\n", encoding="utf-8")
    (root / "guides" / "long.txt").write_text(LONG_DOC, encoding="utf-8")
    (root / "guides" / "zh.md").write_text("# 常见问题\n\n如何重置密码？请点击“忘记密码”。链接三十分钟后失效！", encoding="utf-8")
    (root / "page.html").write_text(
        "<html><head><title>Billing</title><script>var x = 1;</script></head>"
        "<body><h1>Billing</h1><p>Invoices are issued monthly.</p></body></html>",
        encoding="utf-8",
    )
    (root / "tickets.jsonl").write_text(
        json.dumps({"id": "t-1", "text": "Cannot log in after a password change.", "lang": "en"}) + "\n"
        + json.dumps({"id": "t-2", "text": "Das Gerät verbindet sich nicht per USB.", "lang": "de"}) + "\n",
        encoding="utf-8",
    )


EXPECTED_DOC_IDS = {
    "reset.md", "guides/long.txt", "guides/zh.md", "page.html", "tickets.jsonl#t-1", "tickets.jsonl#t-2",
}


@pytest.fixture(params=["qdrant", "milvus", pytest.param("milvus-server", marks=pytest.mark.server)])
def project(request, tmp_path, tiny_model_dir):
    """A corpus folder and a config for one backend; returns the config path."""
    write_corpus(tmp_path / "docs")
    sink = {
        "qdrant": lambda: {"type": "qdrant", "path": "./store/qdrant", "collection": "kb"},
        "milvus": lambda: {"type": "milvus", "uri": "./store/milvus.db", "collection": "kb"},
        "milvus-server": lambda: {"type": "milvus", "uri": request.getfixturevalue("milvus_server").uri,
                                  "collection": "kb"},
    }[request.param]()
    config = {
        "source": {"type": "files", "path": "./docs"},
        "preprocess": {"abbreviations": {"u": "you", "thx": "thanks"}, "drop_symbols": ["®", "™"]},
        "chunking": {"max_tokens": 48, "overlap_tokens": 8},
        "encoder": {"model": str(tiny_model_dir), "max_length": 512, "batch_size": 4},
        "sink": sink,
        "state_dir": "./state",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    if request.param == "milvus-server":  # one server for the session: start from an empty collection
        with make_sink(load_config(path).sink) as sink:
            if sink.describe() is not None:
                sink.drop()
    return path


def run(*args: str) -> tuple[int, dict | None, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    data = None
    if "--json" in args and result.stdout.strip():
        data = json.loads(result.stdout)
    return result.exit_code, data, result.stdout + result.stderr


def store_state(config_path: Path) -> tuple[int, list[str]]:
    sink = make_sink(load_config(config_path).sink)
    try:
        return sink.count(), sorted(sink.iter_ids())
    finally:
        sink.close()


def ledger_ids(config_path: Path) -> list[str]:
    ledger = Ledger(load_config(config_path).state_dir)
    try:
        return sorted(ledger.iter_point_ids())
    finally:
        ledger.close()


def chunk_diff(old: str, new: str, config_path: Path) -> tuple[set[str], int, int]:
    """Chunking both texts as the config says: (chunk texts new to the document, number of chunk
    positions whose text or offsets changed, number of chunks of the new text)."""
    from transformers import AutoTokenizer

    from connector.ledger import Ledger
    from connector.preprocess.chunking import chunking_version, make_chunker

    config = load_config(config_path)
    ledger = Ledger.open_read_only(config.state_dir)
    try:  # the chunker the sync used: the state dir's chunking version
        version = chunking_version(config.chunking, ledger)
    finally:
        ledger.close()
    chunker = make_chunker(AutoTokenizer.from_pretrained(config.encoder.model), config.chunking, version)
    before, after = chunker.split("d", old), chunker.split("d", new)
    spans = lambda c: (c.text, c.char_start, c.char_end)  # noqa: E731
    moved = sum(1 for i, c in enumerate(after) if i >= len(before) or spans(before[i]) != spans(c))
    return {c.text for c in after} - {c.text for c in before}, moved, len(after)


def test_sync_lifecycle(project):
    cfg = str(project)

    # first sync: everything new, store == ledger, ids deterministic
    code, first, out = run("sync", "-c", cfg, "--json")
    assert code == 0, out
    assert first["documents"]["new"] == len(EXPECTED_DOC_IDS) and first["documents"]["failed"] == 0
    assert first["chunks"]["encoded"] > len(EXPECTED_DOC_IDS)  # the long doc has several chunks
    count, ids = store_state(project)
    assert ids == ledger_ids(project) and count == len(ids) == first["chunks"]["upserted"]
    assert len(set(ids)) == len(ids)
    assert point_id("kb", "reset.md", 0) in ids and point_id("kb", "tickets.jsonl#t-2", 0) in ids

    # second sync: nothing encoded or written, same ids
    code, second, out = run("sync", "-c", cfg, "--json")
    assert code == 0, out
    assert second["documents"]["unchanged"] == len(EXPECTED_DOC_IDS)
    assert second["chunks"] == {"encoded": 0, "cached": 0, "upserted": 0, "payload_updated": 0, "deleted": 0, "failed": 0}
    assert store_state(project)[1] == ids

    # edit one paragraph near the end of the long doc: only the chunks it touched are encoded
    long_chunks = [i for i in ids if i in {point_id("kb", "guides/long.txt", n) for n in range(100)}]
    assert len(long_chunks) >= 4
    docs = project.parent / "docs"
    edited = LONG_DOC.replace("counter 11 resets", "counter eleven is cleared")
    (docs / "guides" / "long.txt").write_text(edited, encoding="utf-8")
    code, third, out = run("sync", "-c", cfg, "--json")
    assert code == 0, out
    assert third["documents"]["changed"] == 1 and third["documents"]["unchanged"] == len(EXPECTED_DOC_IDS) - 1
    new_texts, moved, long_count = chunk_diff(LONG_DOC, edited, project)
    assert 1 <= len(new_texts) < len(long_chunks) / 4 and moved < len(long_chunks) / 4
    assert third["chunks"]["encoded"] == len(new_texts)  # only new text is encoded...
    # ...and only changed positions are written: new texts with their vectors, moved ones payload only
    assert third["chunks"]["upserted"] == len(new_texts) and third["chunks"]["cached"] == 0
    assert third["chunks"]["upserted"] + third["chunks"]["payload_updated"] == moved
    grown = long_count - len(long_chunks)
    assert third["chunks"]["deleted"] == max(0, -grown)
    count, ids_after_edit = store_state(project)
    assert ids_after_edit == ledger_ids(project) and count == len(ids) + grown
    assert set(ids) < set(ids_after_edit) if grown > 0 else set(ids_after_edit) <= set(ids)
    ids = ids_after_edit

    # dry run of a deletion: reports, writes nothing
    (docs / "page.html").unlink()
    code, dry, out = run("sync", "-c", cfg, "--prune", "--dry-run", "--json")
    assert code == 0, out
    assert dry["dry_run"] is True and dry["documents"]["deleted"] == 1
    assert {"doc_id": "page.html", "action": "delete", "chunks_to_delete": 1} in dry["changes"]
    assert store_state(project)[1] == ids

    # without --prune the points stay
    code, kept, _ = run("sync", "-c", cfg, "--json")
    assert code == 0 and kept["documents"]["deleted"] == 0 and store_state(project)[1] == ids

    # with --prune they go
    code, pruned, out = run("sync", "-c", cfg, "--prune", "--json")
    assert code == 0, out
    assert pruned["documents"]["deleted"] == 1 and pruned["chunks"]["deleted"] == 1
    count, ids_after_prune = store_state(project)
    assert point_id("kb", "page.html", 0) not in ids_after_prune
    assert ids_after_prune == ledger_ids(project) and count == len(ids) - 1

    # verify agrees: every ledger point in the store with its payload, nothing else
    code, verified, out = run("verify", "-c", cfg, "--json")
    assert code == 0 and verified["ok"] and verified["store_points"] == count, out

    # status agrees
    code, status, out = run("status", "-c", cfg, "--json")
    assert code == 0, out
    assert status["ledger"]["documents"] == len(EXPECTED_DOC_IDS) - 1
    assert status["ledger"]["chunks"] == status["store"]["points"] == count


def test_dry_run_first_sync_writes_nothing(project):
    code, dry, out = run("sync", "-c", str(project), "--dry-run", "--json")
    assert code == 0, out
    assert dry["documents"]["new"] == len(EXPECTED_DOC_IDS)
    assert dry["chunks"]["encoded"] == dry["chunks"]["upserted"] > 0
    assert {c["doc_id"] for c in dry["changes"]} == EXPECTED_DOC_IDS
    sink = make_sink(load_config(project).sink)
    try:
        assert sink.describe() is None
    finally:
        sink.close()
    assert ledger_ids(project) == [] and not (project.parent / "state" / "lock").exists()


def test_search_finds_exact_chunk(project):
    cfg = str(project)
    assert run("sync", "-c", cfg)[0] == 0
    query = "Das Gerät verbindet sich nicht per USB."
    for mode in ("dense", "sparse", "hybrid"):
        code, data, out = run("search", "-c", cfg, query, "--mode", mode, "--limit", "3", "--json")
        assert code == 0, out
        hits = data["hits"]
        assert 1 <= len(hits) <= 3
        assert set(hits[0]) == {"id", "doc_id", "chunk_index", "score", "text"}
        assert hits[0]["doc_id"] == "tickets.jsonl#t-2" and hits[0]["text"] == query
    code, data, _ = run("search", "-c", cfg, query, "--mode", "dense", "--json")
    assert data["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_a_symlink_out_of_the_source_is_never_indexed(project, tmp_path):
    secret = tmp_path / "outside" / "passwd"  # stands in for /etc/passwd
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:the outside secret line:/root:/bin/bash\n", encoding="utf-8")
    (project.parent / "docs" / "passwd.txt").symlink_to(secret)
    code, data, out = run("sync", "-c", str(project), "--json")
    assert code == 3, out
    [failure] = data["failures"]
    assert (failure["doc_id"], failure["kind"]) == ("passwd.txt", "outside_root")
    assert str(secret.resolve()) in failure["reason"]
    code, data, out = run("search", "-c", str(project), secret.read_text(), "--mode", "hybrid", "--limit", "20",
                          "--json")
    assert code == 0 and data["hits"], out
    assert not any("secret" in hit["text"] or hit["doc_id"] == "passwd.txt" for hit in data["hits"])


def test_what_was_stored_from_a_file_now_refused_is_deleted(project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0:the outside secret line:/root:/bin/bash\n", encoding="utf-8")
    (outside / "leak.jsonl").write_text(json.dumps({"id": 1, "text": "a leaked record"}) + "\n", encoding="utf-8")
    docs = project.parent / "docs"
    (docs / "passwd.txt").symlink_to(outside / "passwd")
    (docs / "leak.jsonl").symlink_to(outside / "leak.jsonl")
    config = yaml.safe_load(project.read_text(encoding="utf-8"))
    config["source"]["follow_symlinks_outside"] = True  # stored as an older version stored them
    project.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, data, out = run("sync", "-c", str(project), "--json")
    assert code == 0 and {"passwd.txt", "leak.jsonl#1"} <= {p["doc_id"] for p in store_payloads(project).values()}

    del config["source"]["follow_symlinks_outside"]
    project.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, data, out = run("sync", "-c", str(project), "--json")  # no --prune
    assert code == 3, out
    assert {(f["doc_id"], f["kind"]) for f in data["failures"]} == {("passwd.txt", "outside_root"),
                                                                     ("leak.jsonl", "outside_root")}
    assert data["documents"]["deleted"] == 2 and data["chunks"]["deleted"] == 2
    assert {p["doc_id"] for p in store_payloads(project).values()} == EXPECTED_DOC_IDS
    code, verified, out = run("verify", "-c", str(project), "--json")
    assert code == 0 and verified["ok"], out
    code, status, out = run("status", "-c", str(project), "--json")
    assert {f["doc_id"] for f in status["failed_documents"]} == {"passwd.txt", "leak.jsonl"}, out


def test_embed_and_similarity(tiny_model_dir):
    code, data, out = run("embed", "--model", str(tiny_model_dir), "--json", "hello world", "", "密码 password password")
    assert code == 0, out
    rows = data["embeddings"]
    assert len(rows) == 3 and data["dimension"] == len(rows[0]["dense"])
    for row in rows:
        assert np.linalg.norm(row["dense"]) == pytest.approx(1.0, abs=1e-5)
        idx = row["sparse"]["indices"]
        assert idx == sorted(set(idx)) and len(idx) == len(row["sparse"]["values"])
        assert all(v > 0 for v in row["sparse"]["values"])
    assert rows[1]["sparse"] == {"indices": [], "values": []}

    code, sim, out = run("similarity", "--model", str(tiny_model_dir), "--json", "same text", "same text")
    assert code == 0, out
    scores = sim["scores"]
    assert scores["dense"] == pytest.approx(1.0, abs=1e-5) and scores["colbert"] == pytest.approx(1.0, abs=1e-5)
    assert scores["hybrid"] == pytest.approx(scores["dense"] + 0.3 * scores["lexical"]) == sim["score"]
    assert scores["lexical"] > 0
    assert scores["lexical"] == pytest.approx(sum(t["product"] for t in sim["shared_tokens"]))

    code, _, out = run("embed", "--json", "x")  # neither -c nor --model
    assert code == 2 and "--model" in out


def test_query_rules_clean_queries_and_leave_documents_alone(project):
    """The config's abbreviations (scope: queries, the default) expand in search, embed and
    similarity, and never in a stored document."""
    cfg = str(project)
    (project.parent / "docs" / "git.md").write_text("Stage with git add -u, print with printf('%u').", encoding="utf-8")
    assert run("sync", "-c", cfg)[0] == 0
    with make_sink(load_config(project).sink) as sink:
        stored = "\n".join(p.payload["text"] for p in sink.retrieve(sorted(sink.iter_ids())))
    assert "Thx u!" in stored and "git add -u, print with printf('%u')" in stored
    assert "you" not in stored

    chat, plain = "thx u, it works", "thanks you, it works"
    hits = [run("search", "-c", cfg, q, "--mode", "dense", "--json")[1]["hits"] for q in (chat, plain)]
    assert hits[0] == hits[1]  # the same query once cleaned: the same hits, the same scores
    code, sim, out = run("similarity", "-c", cfg, "--json", chat, plain)
    assert code == 0 and sim["scores"]["dense"] == pytest.approx(1.0, abs=1e-5), out
    _, embedded, _ = run("embed", "-c", cfg, "--json", chat, plain)
    assert embedded["embeddings"][0]["dense"] == embedded["embeddings"][1]["dense"]
    assert embedded["embeddings"][0]["text"] == chat  # the output names the text as given
    _, raw, _ = run("similarity", "--model", str(load_config(project).encoder.model), "--json", chat, plain)
    assert raw["scores"]["dense"] < 0.9999  # without a config nothing is rewritten


def test_failed_document_is_recorded_and_exit_3(project):
    (project.parent / "docs" / "broken.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \x80\x81")
    code, data, out = run("sync", "-c", str(project), "--json")
    assert code == 3, out
    assert data["documents"]["failed"] == 1 and data["failures"][0]["doc_id"] == "broken.txt"
    assert data["documents"]["new"] == len(EXPECTED_DOC_IDS)
    code, status, _ = run("status", "-c", str(project), "--json")
    assert [f["doc_id"] for f in status["failed_documents"]] == ["broken.txt"]
    (project.parent / "docs" / "broken.txt").write_text("now readable", encoding="utf-8")
    code, data, out = run("sync", "-c", str(project), "--json")
    assert code == 0 and data["documents"]["new"] == 1, out
    assert run("status", "-c", str(project), "--json")[1]["failed_documents"] == []


def test_point_ids_are_stable_across_releases():
    # A changed namespace or id recipe would duplicate every point of every user's store.
    assert point_id("kb", "guides/reset.md", 0) == "00687a0f-0a1c-5d90-87f2-73c10a8a4403"


def test_bad_config_exit_2_and_nothing_written(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({
            "source": {"type": "files", "path": "./docs", "inlcude": ["*.md"]},
            "chunking": {"max_tokens": 64, "overlap_tokens": 64},
            "sink": {"type": "qdrant", "collection": "kb"},
            "state_dir": "./state",
        })
    )
    code, data, out = run("sync", "-c", str(path), "--json")
    assert code == 2
    assert data["exit_code"] == 2
    assert "source.inlcude" in out and "overlap_tokens" in out and "exactly one of 'path'" in out
    assert not (tmp_path / "state").exists()


def test_patterns_outside_the_source_folder_exit_2(tmp_path):
    for include in (["../*.md"], ["/etc/*"]):
        path = tmp_path / "patterns.yaml"
        path.write_text(yaml.safe_dump({
            "source": {"type": "files", "path": "./docs", "include": include},
            "sink": {"type": "qdrant", "path": "./store", "collection": "kb"},
            "state_dir": "./state",
        }))
        code, data, out = run("sync", "-c", str(path), "--json")
        assert code == 2, out
        assert "source.include" in data["error"] and include[0] in data["error"]
        assert not (tmp_path / "state").exists()


def test_existing_collection_of_wrong_size_is_refused(project, tmp_path):
    config = load_config(project)
    sink = make_sink(config.sink)
    try:
        sink.ensure_collection(7)  # not the model's size
    finally:
        sink.close()
    code, data, out = run("sync", "-c", str(project), "--json")
    assert code == 2, out
    assert "size 7" in data["error"] and "Nothing was written" in data["error"]
    assert store_state(project)[0] == 0
    assert ledger_ids(project) == []


def test_console_script_runs(project):
    exe = Path(sys.executable).parent / "connector"
    assert exe.exists(), "the console script 'connector' is not installed"
    proc = subprocess.run([str(exe), "sync", "-c", str(project), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["documents"]["new"] == len(EXPECTED_DOC_IDS)
    proc = subprocess.run([str(exe), "sync", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Example" in proc.stdout


def test_prune_keeps_records_of_a_file_with_an_unreadable_line(project):
    cfg = str(project)
    assert run("sync", "-c", cfg)[0] == 0
    before = store_state(project)[1]
    tickets = project.parent / "docs" / "tickets.jsonl"
    first_line = tickets.read_text(encoding="utf-8").splitlines()[0]
    tickets.write_text(first_line + "\n" + '{"id": "t-2", "text": broken json\n', encoding="utf-8")
    code, data, out = run("sync", "-c", cfg, "--prune", "--json")
    assert code == 3, out
    assert data["failures"][0]["doc_id"] == "tickets.jsonl:line 2"
    assert data["documents"]["deleted"] == 0
    assert store_state(project)[1] == before  # t-2 may be the broken line: its points stay
    assert run("status", "-c", cfg, "--json")[1]["ledger"]["failed_documents"] == 1
    tickets.write_text(first_line + "\n", encoding="utf-8")  # now really gone
    code, data, out = run("sync", "-c", cfg, "--prune", "--json")
    assert code == 0 and data["documents"]["deleted"] == 1, out
    assert run("status", "-c", cfg, "--json")[1]["failed_documents"] == []
    assert point_id("kb", "tickets.jsonl#t-2", 0) not in store_state(project)[1]


IMPOSTOR = {"id": "reset.md", "text": "Not the reset page: an impostor record."}


def store_payloads(config_path: Path) -> dict[str, dict]:
    """Every point of the store: id -> payload."""
    sink = make_sink(load_config(config_path).sink)
    try:
        return {p.id: p.payload for p in sink.retrieve(sorted(sink.iter_ids()))}
    finally:
        sink.close()


def test_a_record_cannot_take_a_files_doc_id(project):
    docs = project.parent / "docs"
    (docs / "a-tickets.jsonl").write_text(json.dumps(IMPOSTOR) + "\n", encoding="utf-8")  # read before reset.md
    code, data, out = run("sync", "-c", str(project), "--json")
    assert code == 0 and data["failures"] == [], out
    texts = {(p["doc_id"], p["text"]) for p in store_payloads(project).values()}
    assert ("a-tickets.jsonl#reset.md", IMPOSTOR["text"]) in texts
    [file_text] = [t for d, t in texts if d == "reset.md"]
    assert file_text.startswith("# Reset\n\nOpen the sign-in page")


class BareRecordIds(Source):
    """The files source as the code before record ids were namespaced read it: a record's doc_id
    was its bare id, one id space for every file and record, the second holder failing as duplicate."""

    def __init__(self, config):
        self.files = FilesSource(config)

    def read(self):
        seen: dict[str, str] = {}
        for item in self.files.read():
            path = item.metadata.get("path", "") if isinstance(item, Document) else ""
            if path.endswith((".jsonl", ".csv")):
                item = dataclasses.replace(item, doc_id=item.doc_id[len(path) + 1:])
            if isinstance(item, Document) and item.doc_id in seen:
                item = FailedDocument(path, f"duplicate doc_id {item.doc_id!r} (first seen in {seen[item.doc_id]})",
                                      origin=path, kind="duplicate")
            seen.setdefault(item.doc_id, path)
            yield item


class TextsEncoder:
    """The tiny encoder, keeping every text it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.texts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts):
        self.texts += list(texts)
        return self.inner.encode(texts)


def sync_with_bare_record_ids(config_path: Path, encoder) -> None:
    """A ledger and a store as the code before namespaced record ids wrote them (it kept no file stamps)."""
    config = load_config(config_path)
    with open_state(config) as (ledger, sink):
        run_ = SyncRun(config, BareRecordIds(config.source), sink, ledger, lambda: encoder)
        try:
            run_.run()
        finally:
            run_.close()
        ledger.replace_stamps({})


def test_records_stored_under_bare_ids_move_to_the_new_ids_without_encoding(project, tiny_encoder):
    sync_with_bare_record_ids(project, tiny_encoder)
    old = store_payloads(project)
    assert point_id("kb", "t-1", 0) in old and old[point_id("kb", "t-1", 0)]["doc_id"] == "t-1"

    encoder = TextsEncoder(tiny_encoder)
    report = run_sync(load_config(project), encoder=encoder)
    assert report.exit_code == 0, report.to_json()
    assert encoder.texts == [] and report.chunks["encoded"] == 0  # every vector from the embedding cache
    assert report.documents["changed"] == 2 and report.documents["unchanged"] == len(EXPECTED_DOC_IDS) - 2
    assert report.chunks["upserted"] == report.chunks["deleted"] == 2
    assert "renamed by the source" in report.warnings[0]
    new = store_payloads(project)
    assert sorted(new) == ledger_ids(project) and len(new) == len(old)  # the old points are gone
    assert {p["doc_id"] for p in new.values()} == EXPECTED_DOC_IDS
    assert point_id("kb", "tickets.jsonl#t-1", 0) in new and point_id("kb", "t-1", 0) not in new
    code, verified, out = run("verify", "-c", str(project), "--json")
    assert code == 0 and verified["ok"], out
    code, again, out = run("sync", "-c", str(project), "--json")
    assert code == 0 and again["documents"]["unchanged"] == len(EXPECTED_DOC_IDS), out
    assert again["chunks"]["upserted"] == again["chunks"]["deleted"] == 0


def test_a_record_that_had_taken_a_files_doc_id_gives_it_back(project, tiny_encoder):
    (project.parent / "docs" / "a-tickets.jsonl").write_text(json.dumps(IMPOSTOR) + "\n", encoding="utf-8")
    sync_with_bare_record_ids(project, tiny_encoder)  # the record took 'reset.md', the file failed
    assert {p["text"] for p in store_payloads(project).values() if p["doc_id"] == "reset.md"} == {IMPOSTOR["text"]}

    encoder = TextsEncoder(tiny_encoder)
    report = run_sync(load_config(project), encoder=encoder, prune=True)
    assert report.exit_code == 0, report.to_json()
    payloads = store_payloads(project)
    file_texts = {p["text"] for p in payloads.values() if p["doc_id"] == "reset.md"}
    assert set(encoder.texts) == file_texts and IMPOSTOR["text"] not in file_texts  # only the file was new
    assert {(p["doc_id"], p["text"]) for p in payloads.values() if p["text"] == IMPOSTOR["text"]} == {
        ("a-tickets.jsonl#reset.md", IMPOSTOR["text"])}
    assert sorted(payloads) == ledger_ids(project)
    assert {p["doc_id"] for p in payloads.values()} == EXPECTED_DOC_IDS | {"a-tickets.jsonl#reset.md"}
    code, verified, out = run("verify", "-c", str(project), "--json")
    assert code == 0 and verified["ok"], out


def test_schema_show_create_and_recreate(project):
    cfg = str(project)
    code, data, out = run("schema", "-c", cfg, "--json")
    assert code == 0, out
    assert data["exists"] is False and data["layout"]["vectors"]["dense"]["distance"] == "cosine"
    assert data["layout"]["payload"]["doc_id"]["index"] is True
    code, data, out = run("schema", "-c", cfg, "--create", "--json")
    assert code == 0 and data["action"] == "created", out
    model_size = data["store"]["dense_size"]
    model_config = json.loads((Path(load_config(project).encoder.model) / "config.json").read_text())
    assert model_size == model_config["hidden_size"]
    code, data, _ = run("schema", "-c", cfg, "--create", "--json")
    assert data["action"].startswith("exists")
    assert run("sync", "-c", cfg)[0] == 0
    assert store_state(project)[0] > 0
    code, data, out = run("schema", "-c", cfg, "--recreate", "--yes", "--json")
    assert code == 0 and data["store"]["points"] == 0, out
    assert ledger_ids(project) == []  # the ledger follows the store
    code, data, out = run("sync", "-c", cfg, "--json")
    assert data["documents"]["new"] == len(EXPECTED_DOC_IDS) and data["chunks"]["encoded"] == 0  # cache
    assert store_state(project)[1] == ledger_ids(project)


def test_search_before_any_sync_says_what_to_do(project):
    code, data, out = run("search", "-c", str(project), "anything", "--json")
    assert code == 1 and "run `connector sync` first" in data["error"]


def test_secrets_never_appear_in_output(tmp_path, tiny_model_dir, monkeypatch):
    from milvus_server import free_port

    secret = "tok-9f8e7d6c5b4a"
    monkeypatch.setenv("MILVUS_TOKEN", secret)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("hello", encoding="utf-8")
    config = {
        "source": {"type": "files", "path": "./docs"},
        "encoder": {"model": str(tiny_model_dir), "max_length": 512},
        "chunking": {"max_tokens": 64, "overlap_tokens": 8},
        "sink": {"type": "milvus", "uri": f"http://127.0.0.1:{free_port()}", "token_env": "MILVUS_TOKEN",
                 "collection": "kb", "timeout": 2},
        "retry": {"attempts": 2, "initial_wait": 0.01, "max_wait": 0.02, "jitter": 0},
        "state_dir": "./state",
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    for args in (["sync", "-c", str(path), "--json"], ["status", "-c", str(path), "--json"],
                 ["search", "-c", str(path), "q", "--json"]):
        code, data, out = run(*args)
        assert code != 0 or args[0] == "status", out
        assert secret not in out
    for file in (tmp_path / "state").rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes()


def test_control_characters_in_file_names_are_escaped_in_human_output(tmp_path, tiny_model_dir):
    forged = "evil\n  FAILED forged.md: looks real\x1b[31m.txt"  # fails (binary), would forge a line
    red = "red\x1b[31m\u202etxt.md"  # readable: shows up in a dry run's change list
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / forged).write_bytes(b"\x00\x01\x02 binary \x00")
    (docs / red).write_text("A readable document.", encoding="utf-8")
    config = {"source": {"type": "files", "path": "./docs"},
              "encoder": {"model": str(tiny_model_dir), "max_length": 128},
              "chunking": {"max_tokens": 32, "overlap_tokens": 4},
              "sink": {"type": "qdrant", "path": "./store", "collection": "kb"}, "state_dir": "./state"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    cfg = str(path)

    def check(out: str) -> None:
        assert "\x1b" not in out and "\u202e" not in out
        assert not any(line.startswith("  FAILED forged") for line in out.splitlines())
        assert "FAILED evil\\n  FAILED forged.md: looks real\\x1b[31m.txt: " in out

    code, _, out = run("sync", "-c", cfg, "--dry-run")
    assert code == 3
    check(out)
    assert "red\\x1b[31m\\u202etxt.md" in out
    code, _, out = run("sync", "-c", cfg)
    assert code == 3
    check(out)
    code, _, out = run("status", "-c", cfg)
    check(out)
    code, data, _ = run("status", "-c", cfg, "--json")  # JSON stays exact
    assert [f["doc_id"] for f in data["failed_documents"]] == [forged]


def test_status_and_failed_before_any_sync_create_nothing(project):
    cfg = str(project)
    before = sorted(project.parent.rglob("*"))
    results = [run(command, "-c", cfg, *json) for command in ("status", "failed") for json in ([], ["--json"])]
    assert sorted(project.parent.rglob("*")) == before  # no state dir, no ledger, no store file
    for code, data, out in results:
        assert code == 0, out
        assert data["ledger_exists"] is False if data else "nothing was synced with this config" in out
    code, status, _ = run("status", "-c", cfg, "--json")
    assert status["ledger"]["documents"] == 0 and status["store"]["exists"] is False
    assert run("sync", "-c", cfg)[0] == 0
    code, status, out = run("status", "-c", cfg, "--json")
    assert code == 0 and status["ledger_exists"] is True and status["ledger"]["documents"] == len(EXPECTED_DOC_IDS)
