from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

import connector.sources.files as files_module
from connector.config import FilesSourceConfig, JsonlFields
from connector.errors import SourceError
from connector.records import Document, FailedDocument
from connector.sources.base import Source
from connector.sources.files import FilesSource, glob_to_regex
from connector.sources.htmlfile import html_text
from connector.testing.hostile import ARTICLE_PAGE, ARTICLE_TEXT

PAGE = """<!doctype html>
<html><head><title> Reset  your password </title>
<style>p { color: red }</style><script>var secret = "SCRIPT";</script></head>
<body>
<noscript>NOSCRIPT</noscript><template><p>TEMPLATE</p></template>
<h1>Account help</h1>
<p>Open the settings
   and choose <b>Forgot password</b>.</p>
<div>First line<br>second line</div>
<ul><li>one</li><li>two</li></ul>
<!-- COMMENT -->
<script>alert("SCRIPT2")</script>
</body></html>
"""


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def read_all(root: Path, **config) -> list[Document | FailedDocument]:
    return list(FilesSource(FilesSourceConfig(path=root, **config)).read())


def by_id(items) -> dict[str, Document | FailedDocument]:
    return {item.doc_id: item for item in items}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    write(root / "a.md", "# Getting started\n\nInstall the tool.\n")
    write(root / "guides" / "setup.md", "```bash\n# not a title\n```\n\nIntro\n\n# Setup guide #\n\nText.")
    write(root / "guides" / "deep" / "notes.txt", "plain text notes\n")
    write(root / "page.html", PAGE)
    write(root / "ignored.rst", "not included by default")
    return root


# --- formats ----------------------------------------------------------------------------------------


def test_reads_every_format_in_sorted_path_order(corpus):
    items = read_all(corpus)
    assert [i.doc_id for i in items] == ["a.md", "guides/deep/notes.txt", "guides/setup.md", "page.html"]
    assert all(isinstance(i, Document) for i in items)


def test_read_is_a_stream(corpus):
    stream = FilesSource(FilesSourceConfig(path=corpus)).read()
    assert isinstance(stream, Iterator) and not isinstance(stream, (list, tuple))
    assert isinstance(next(stream), Document)


def test_text_and_markdown(corpus):
    docs = by_id(read_all(corpus))
    assert docs["a.md"].text == "# Getting started\n\nInstall the tool.\n"
    assert docs["a.md"].metadata["title"] == "Getting started"
    # a '# ' line inside a code fence is not the title; a closing '#' sequence is not part of it
    assert docs["guides/setup.md"].metadata["title"] == "Setup guide"
    assert docs["guides/deep/notes.txt"].text == "plain text notes\n"
    assert "title" not in docs["guides/deep/notes.txt"].metadata


def test_markdown_with_bom_and_without_heading(tmp_path):
    write(tmp_path / "bom.md", "\ufeff# Title\ntext".encode("utf-8"))
    write(tmp_path / "none.md", "## Only a subheading\n#hashtag")
    docs = by_id(read_all(tmp_path))
    assert docs["bom.md"].text == "# Title\ntext"
    assert docs["bom.md"].metadata["title"] == "Title"
    assert "title" not in docs["none.md"].metadata


def test_html_drops_scripts_and_keeps_paragraphs(corpus):
    doc = by_id(read_all(corpus))["page.html"]
    assert doc.metadata["title"] == "Reset your password"
    for hidden in ("SCRIPT", "secret", "color", "NOSCRIPT", "TEMPLATE", "COMMENT"):
        assert hidden not in doc.text
    assert doc.text == (
        "Account help\n\nOpen the settings and choose Forgot password.\n\n"
        "First line\nsecond line\n\none\ntwo"
    )


def test_html_main_content_leaves_boilerplate_out_and_keeps_code_and_tables(tmp_path):
    write(tmp_path / "install.html", ARTICLE_PAGE)
    doc = by_id(read_all(tmp_path))["install.html"]
    assert doc.text == ARTICLE_TEXT
    for boilerplate in ("Skip to content", "cookies", "Home", "Pricing", "Copy", "All rights reserved", "Privacy"):
        assert boilerplate not in doc.text
    assert doc.metadata["title"] == "Install guide - Widget docs"


def test_html_text_after_a_code_block_inside_a_paragraph_comes_once(tmp_path):
    paragraph = "<p>" + "A paragraph long enough to make this page's main content. " * 5 + "</p>"
    page = f"<html><body><article>{paragraph}<p>Run <code>make\nmake install</code> then restart.</p>{paragraph}</article></body></html>"
    write(tmp_path / "run.html", page)
    text = by_id(read_all(tmp_path))["run.html"].text
    assert "\n\nRun\n\nmake\nmake install\n\nthen restart.\n\nA paragraph" in text
    assert text.count("then restart.") == 1


def test_html_mode_full_reads_the_whole_page_as_before(tmp_path):
    write(tmp_path / "install.html", ARTICLE_PAGE)
    doc = by_id(read_all(tmp_path, html={"mode": "full"}))["install.html"]
    assert doc.text == html_text(ARTICLE_PAGE)[0]
    assert doc.text.startswith("Skip to content\n\nWe use cookies") and "Privacy policy" in doc.text
    assert doc.metadata["title"] == "Install guide - Widget docs"


def test_html_without_main_content_is_read_in_full(tmp_path):
    write(tmp_path / "fragment.html", "<ul><li><a href='/a'>Home</a></li></ul><p>Short note.</p>")
    assert by_id(read_all(tmp_path))["fragment.html"].text == "Home\n\nShort note."


def test_html_nested_deeper_than_the_parser_goes_is_read_in_full(tmp_path):
    # libxml2 stops at 256 levels: main-content extraction would lose what is deeper
    article = "<p>" + "An introduction long enough to be the main content of this page. " * 6 + "</p>"
    write(tmp_path / "deep.html", "<html><body>" + article + "<div>" * 300 + "deep text" + "</div>" * 300 + "</body></html>")
    text = by_id(read_all(tmp_path))["deep.html"].text
    assert text.startswith("An introduction") and text.endswith("deep text")


def test_html_mode_must_be_main_or_full(tmp_path):
    with pytest.raises(ValidationError, match="'main' or 'full'"):
        FilesSourceConfig(path=tmp_path, html={"mode": "article"})


def test_html_declared_charset_is_used(tmp_path):
    page = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head><body><p>Cr\xe8me br\xfbl\xe9e</p></body></html>'
    write(tmp_path / "latin.html", page.encode("latin-1"))
    doc = by_id(read_all(tmp_path))["latin.html"]
    assert (doc.text, doc.metadata["title"]) == ("Crème brûlée", "Café")


def test_html_pre_keeps_its_line_breaks(tmp_path):
    write(tmp_path / "code.htm", "<p>Run:</p><pre>make\nmake install</pre>")
    assert by_id(read_all(tmp_path))["code.htm"].text == "Run:\n\nmake\nmake install"


def test_non_utf8_text_is_detected_and_damaged_utf8_fails_with_a_reason(tmp_path):
    write(tmp_path / "latin1.txt", "café crème".encode("latin-1"))
    write(tmp_path / "damaged.txt", "naïve café, 中文 and ü — ".encode() * 3 + b"then caf\xe9 \xff end")
    write(tmp_path / "ok.txt", "fine")
    items = by_id(read_all(tmp_path))
    assert items["latin1.txt"].text == "café crème"
    assert items["latin1.txt"].metadata["encoding"] in ("cp1252", "latin_1")
    failed = items["damaged.txt"]
    assert isinstance(failed, FailedDocument) and failed.kind == "encoding"
    assert "UTF-8" in failed.reason and "0xe9" in failed.reason and "\n" not in failed.reason
    assert isinstance(items["ok.txt"], Document) and "encoding" not in items["ok.txt"].metadata


# --- jsonl ------------------------------------------------------------------------------------------


def jsonl(*lines) -> str:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"


def test_jsonl_records_and_bad_lines(tmp_path):
    write(
        tmp_path / "data" / "kb.jsonl",
        jsonl(
            {"id": "kb-1", "text": "First answer", "lang": "en", "tags": ["a"]},
            "{not json",
            {"text": "no id"},
            {"id": "kb-3"},
            "",
            {"id": 7, "text": "integer id"},
            [1, 2],
            {"id": ["x"], "text": "list id"},
            {"id": "kb-1", "text": "again"},
        ),
    )
    items = read_all(tmp_path)
    docs = [i for i in items if isinstance(i, Document)]
    failed = {i.doc_id: i.reason for i in items if isinstance(i, FailedDocument)}
    assert [d.doc_id for d in docs] == ["data/kb.jsonl#kb-1", "data/kb.jsonl#7"]
    assert docs[0].text == "First answer"
    assert docs[0].metadata["lang"] == "en" and docs[0].metadata["tags"] == ["a"]
    assert docs[0].metadata["path"] == "data/kb.jsonl"
    assert "id" not in docs[0].metadata and "text" not in docs[0].metadata
    assert set(failed) == {f"data/kb.jsonl:line {n}" for n in (2, 3, 7, 8, 9)} | {"data/kb.jsonl#kb-3"}
    assert "not valid JSON" in failed["data/kb.jsonl:line 2"]
    assert "no 'id' field" in failed["data/kb.jsonl:line 3"] and "id_field" in failed["data/kb.jsonl:line 3"]
    # the id is known, so the failure carries it (the sync then keeps what it stored for kb-3)
    assert failed["data/kb.jsonl#kb-3"].startswith("data/kb.jsonl:line 4: the record has no 'text' field")
    assert "JSON object" in failed["data/kb.jsonl:line 7"]
    assert "'id' must be" in failed["data/kb.jsonl:line 8"]
    # the id repeated within its file: that record fails alone, the first is kept
    assert failed["data/kb.jsonl:line 9"] == "duplicate doc_id 'data/kb.jsonl#kb-1' (first seen in data/kb.jsonl:line 1)"
    assert all("\n" not in reason for reason in failed.values())
    kinds = {i.doc_id: i.kind for i in items if isinstance(i, FailedDocument)}
    assert kinds == {**dict.fromkeys(failed, "malformed"), "data/kb.jsonl:line 9": "duplicate"}
    assert all(i.origin == "data/kb.jsonl" for i in items if isinstance(i, FailedDocument))


def test_jsonl_configured_fields(tmp_path):
    write(tmp_path / "r.jsonl", jsonl({"uid": 1, "body": "hello", "lang": "en", "path": "mine", "skip": 1}))
    fields = JsonlFields(id_field="uid", text_field="body", metadata_fields=["lang", "path", "absent"])
    [doc] = read_all(tmp_path, jsonl=fields)
    assert (doc.doc_id, doc.text) == ("r.jsonl#1", "hello")
    # the source's own keys win over a record field of the same name
    assert set(doc.metadata) == {"lang", "path", "modified"}
    assert doc.metadata["path"] == "r.jsonl"


def test_jsonl_bad_utf8_line_does_not_stop_the_file(tmp_path):
    good = json.dumps({"id": "b", "text": "ok"}).encode()
    write(tmp_path / "mixed.jsonl", b'{"id": "a", "text": "caf\xe9"}\n' + good + b"\n")
    items = read_all(tmp_path)
    assert isinstance(items[0], FailedDocument) and "UTF-8" in items[0].reason and items[0].kind == "encoding"
    assert items[0].doc_id == "mixed.jsonl:line 1"
    assert isinstance(items[1], Document) and items[1].doc_id == "mixed.jsonl#b"


def test_the_same_record_id_in_two_files_is_two_documents(tmp_path):
    write(tmp_path / "a.jsonl", jsonl({"id": "x", "text": "one"}))
    write(tmp_path / "sub" / "b.jsonl", jsonl({"id": "x", "text": "two"}))
    assert [(d.doc_id, d.text) for d in read_all(tmp_path)] == [("a.jsonl#x", "one"), ("sub/b.jsonl#x", "two")]


def test_a_record_cannot_take_a_files_doc_id(tmp_path):
    # read first ('a-' sorts before 'reset.md'), a record whose id is a file's path used to take it over
    write(tmp_path / "a-tickets.jsonl", jsonl({"id": "reset.md", "text": "impostor"}, {"id": 5, "text": "five"}))
    write(tmp_path / "reset.md", "# Reset\n\nthe real page")
    write(tmp_path / "tickets.csv", "id,text\nreset.md,csv impostor\n")
    items = by_id(read_all(tmp_path))
    assert all(isinstance(i, Document) for i in items.values()), items
    assert items["reset.md"].text == "# Reset\n\nthe real page"
    assert items["a-tickets.jsonl#reset.md"].text == "impostor" and items["a-tickets.jsonl#5"].text == "five"
    assert items["tickets.csv#reset.md"].text == "csv impostor"


# --- globs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, path, matches",
    [
        ("**/*.md", "a.md", True),
        ("**/*.md", "x/y/a.md", True),
        ("**/*.md", "a.mdx", False),
        ("*.md", "a.md", True),
        ("*.md", "x/a.md", False),
        ("docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/x/a.md", False),
        ("docs/**", "docs/x/a.md", True),
        ("docs/**", "other/a.md", False),
        ("**/drafts/**", "a/drafts/b/c.txt", True),
        ("**/drafts/**", "drafts/c.txt", True),
        ("a?.txt", "ab.txt", True),
        ("a?.txt", "a/.txt", False),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "b.txt", False),
        ("[!ab].txt", "c.txt", True),
        ("a+b (1).md", "a+b (1).md", True),
        ("a+b (1).md", "aab (1).md", False),
        ("./notes/*.txt", "notes/n.txt", True),
    ],
)
def test_glob_matching(pattern, path, matches):
    assert bool(glob_to_regex(pattern).match(path)) is matches


def test_include_and_exclude(tmp_path):
    for rel in ["a.md", "b.txt", "drafts/c.md", "x/drafts/d.md", "x/e.md", "x/secret.md"]:
        write(tmp_path / rel, "text")
    ids = [i.doc_id for i in read_all(tmp_path, include=["**/*.md"], exclude=["**/drafts/**", "**/secret.md"])]
    assert ids == ["a.md", "x/e.md"]


def test_unsupported_type_included_explicitly_fails_clearly(corpus):
    items = by_id(read_all(corpus, include=["*.rst"]))
    assert "unsupported file type '.rst'" in items["ignored.rst"].reason
    assert items["ignored.rst"].kind == "unsupported"


def test_excluded_folder_is_not_listed(corpus, monkeypatch):
    listed = []
    real_scandir = os.scandir

    def spy(path):
        listed.append(Path(path).name)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    ids = [i.doc_id for i in read_all(corpus, exclude=["guides/**"])]
    assert ids == ["a.md", "page.html"]
    assert listed and "guides" not in listed and "deep" not in listed


# --- errors and file system corner cases --------------------------------------------------------------


def test_missing_root_is_an_error_not_an_empty_source(tmp_path):
    source = FilesSource(FilesSourceConfig(path=tmp_path / "nope"))
    with pytest.raises(SourceError, match="does not exist.*source.path"):
        source.read()  # raised on the call, before anything is iterated


def test_root_that_is_a_file_is_an_error(tmp_path):
    write(tmp_path / "file.md", "x")
    with pytest.raises(SourceError, match="not a folder"):
        FilesSource(FilesSourceConfig(path=tmp_path / "file.md")).read()


def test_unlistable_subfolder_is_an_error(corpus, monkeypatch):
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "deep":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SourceError, match="cannot list folder .*deep.*source.exclude"):
        read_all(corpus)


def test_unreadable_file_is_a_failed_document(corpus, monkeypatch):
    real = files_module._read_bytes

    def read_bytes(stream):
        if Path(stream.name).name == "a.md":
            raise PermissionError(13, "Permission denied", stream.name)
        return real(stream)

    monkeypatch.setattr(files_module, "_read_bytes", read_bytes)
    items = by_id(read_all(corpus))
    assert isinstance(items["a.md"], FailedDocument)
    assert "Permission denied" in items["a.md"].reason and items["a.md"].kind == "unreadable"
    assert isinstance(items["page.html"], Document)


def test_symlink_loop_is_not_followed(corpus):
    os.symlink(corpus, corpus / "guides" / "loop", target_is_directory=True)
    os.symlink(corpus / "guides", corpus / "guides" / "deep" / "up", target_is_directory=True)
    ids = [i.doc_id for i in read_all(corpus)]
    assert ids == ["a.md", "guides/deep/notes.txt", "guides/setup.md", "page.html"]


def test_symlinked_file_is_read_and_broken_link_fails(tmp_path):
    write(tmp_path / "real.txt", "content")
    os.symlink(tmp_path / "real.txt", tmp_path / "link.txt")
    os.symlink(tmp_path / "gone.txt", tmp_path / "broken.txt")
    items = by_id(read_all(tmp_path))
    assert items["link.txt"].text == "content"
    assert isinstance(items["broken.txt"], FailedDocument) and "cannot read" in items["broken.txt"].reason
    assert items["broken.txt"].kind == "unreadable"


# --- metadata ---------------------------------------------------------------------------------------


def test_metadata_path_and_modified_in_utc(corpus):
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    os.utime(corpus / "guides" / "setup.md", (when, when))
    doc = by_id(read_all(corpus))["guides/setup.md"]
    assert doc.metadata == {"path": "guides/setup.md", "modified": "2024-01-02T03:04:05+00:00", "title": "Setup guide"}


def test_files_source_is_a_source(corpus):
    assert isinstance(FilesSource(FilesSourceConfig(path=corpus)), Source)


# --- nothing outside the root -------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the source folder, with a file standing in for /etc/passwd."""
    write(tmp_path / "outside" / "passwd", "root:x:0:0:SECRET-OUTSIDE:/root:/bin/bash\n")
    write(tmp_path / "outside" / "keys" / "id.md", "SECRET-KEY-FOLDER\n")
    return tmp_path / "outside"


def only_inside(items) -> None:
    """No document carries text from outside the root."""
    assert not any("SECRET" in i.text for i in items if isinstance(i, Document))


def test_symlink_to_a_file_outside_the_root_fails_as_outside_root(tmp_path, outside):
    root = tmp_path / "docs"
    write(root / "real.txt", "inside")
    os.symlink(outside / "passwd", root / "passwd.txt")
    os.symlink(root / "passwd.txt", root / "chain.txt")  # a link to the link: resolved to the end
    os.symlink("../outside/passwd", root / "relative.txt")
    os.symlink(root / "real.txt", root / "inside-link.txt")  # a link within the root is read
    os.symlink("/proc/self/status", root / "status.txt")
    items = by_id(read_all(root))
    only_inside(items.values())
    assert items["inside-link.txt"].text == "inside"
    real_target = os.path.realpath(outside / "passwd")
    for name in ("passwd.txt", "chain.txt", "relative.txt", "status.txt"):
        failed = items[name]
        assert isinstance(failed, FailedDocument) and failed.kind == "outside_root", name
        assert failed.reason.startswith(f"{name} -> ") and "follow_symlinks_outside" in failed.reason
    assert real_target in items["passwd.txt"].reason and real_target in items["chain.txt"].reason


def test_symlinked_folder_outside_the_root_is_not_followed(tmp_path, outside):
    root = tmp_path / "docs"
    write(root / "a.md", "inside")
    os.symlink(outside / "keys", root / "keys", target_is_directory=True)
    assert [i.doc_id for i in read_all(root, include=["**/*"])] == ["a.md"]


def test_source_path_that_is_a_symlink_is_resolved_once(tmp_path, outside):
    real_root = tmp_path / "real-docs"
    write(real_root / "a.md", "inside")
    os.symlink(real_root / "a.md", real_root / "link.md")
    os.symlink(outside / "passwd", real_root / "passwd.txt")
    os.symlink(real_root, tmp_path / "docs", target_is_directory=True)
    items = by_id(read_all(tmp_path / "docs"))
    assert items["a.md"].text == items["link.md"].text == "inside"
    assert items["passwd.txt"].kind == "outside_root"
    assert f"outside source.path ({real_root.resolve()})" in items["passwd.txt"].reason


def test_follow_symlinks_outside_opts_in(tmp_path, outside):
    root = tmp_path / "docs"
    write(root / "a.md", "inside")
    os.symlink(outside / "passwd", root / "passwd.txt")
    items = by_id(read_all(root, follow_symlinks_outside=True))
    assert "SECRET-OUTSIDE" in items["passwd.txt"].text
    assert items["passwd.txt"].metadata["path"] == "passwd.txt"


def _no_proc(monkeypatch) -> None:
    """Hide /proc/self/fd, as on systems without it (the fallback: resolved path + same inode)."""
    real_readlink = os.readlink

    def readlink(path, *args, **kwargs):
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", readlink)


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
@pytest.mark.parametrize("swap", ["file-link", "folder-on-the-way"])
def test_a_path_swapped_after_the_check_is_caught_on_the_opened_file(tmp_path, outside, monkeypatch, proc, swap):
    root = tmp_path / "docs"
    write(root / "real.txt", "inside")
    write(root / "sub" / "id.md", "inside too")
    os.symlink(root / "real.txt", root / "note.txt")
    target = {"file-link": root / "note.txt", "folder-on-the-way": root / "sub" / "id.md"}[swap]
    opened = {"file-link": outside / "passwd", "folder-on-the-way": outside / "keys" / "id.md"}[swap]
    real_open = files_module._open_binary

    def swap_then_open(path):  # the race: between the check of the path and the open
        if Path(path) == target:
            if swap == "file-link":
                os.unlink(target)
                os.symlink(outside / "passwd", target)
            else:
                os.rename(root / "sub", root / "sub-was")
                os.symlink(outside / "keys", root / "sub", target_is_directory=True)
        return real_open(path)

    monkeypatch.setattr(files_module, "_open_binary", swap_then_open)
    if not proc:
        _no_proc(monkeypatch)
    items = by_id(read_all(root))
    only_inside(items.values())
    rel = target.relative_to(root).as_posix()
    assert items[rel].kind == "outside_root"
    assert os.path.realpath(opened) in items[rel].reason
