"""FilesSource formats (encodings, PDF, DOCX, CSV) and hostile input, each failing with its kind."""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import connector.sources.files as files_module
from connector.config import DEFAULT_INCLUDE, CsvColumns, FilesSourceConfig
from connector.records import FAILURE_KINDS, Document, FailedDocument
from connector.sources.files import FilesSource
from connector.sources.reading import ReadFailure
from connector.sources.decoding import decode_text
from connector.testing.hostile import (
    DECLARED_HTML_SAMPLES, ENCODED_SAMPLES, build_hostile_corpus, docx_bomb, lying_docx, minimal_docx, minimal_pdf,
    pdf_bomb,
)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read_all(root: Path, **config) -> dict[str, Document | FailedDocument]:
    items = list(FilesSource(FilesSourceConfig(path=root, **config)).read())
    for item in items:
        if isinstance(item, FailedDocument):
            assert item.kind in FAILURE_KINDS and item.origin and "\n" not in item.reason, item
    return {item.doc_id: item for item in items}


def only(root: Path, **config) -> Document | FailedDocument:
    [item] = read_all(root, **config).values()
    return item


def failed(item, kind: str) -> FailedDocument:
    assert isinstance(item, FailedDocument), item
    assert item.kind == kind, item
    return item


def test_default_include_has_every_format():
    for suffix in ("md", "txt", "html", "htm", "jsonl", "pdf", "docx", "csv"):
        assert f"**/*.{suffix}" in DEFAULT_INCLUDE


# --- text encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENCODED_SAMPLES))
def test_encoding_is_detected_and_decoded_exactly(tmp_path, name):
    encoding, text = ENCODED_SAMPLES[name]
    write(tmp_path / name, text.encode(encoding))
    doc = only(tmp_path)
    assert isinstance(doc, Document), doc
    assert doc.text == text.removeprefix("\ufeff")
    if encoding == "utf-8":
        assert "encoding" not in doc.metadata
    else:
        assert doc.metadata["encoding"]


def test_utf8_bom_and_utf32_bom(tmp_path):
    write(tmp_path / "bom8.txt", "\ufeffwith BOM".encode("utf-8"))
    write(tmp_path / "bom32.txt", "\ufeffUTF-32 中文".encode("utf-32-le"))
    items = read_all(tmp_path)
    assert items["bom8.txt"].text == "with BOM" and "encoding" not in items["bom8.txt"].metadata
    assert items["bom32.txt"].text == "UTF-32 中文"


def test_markdown_title_in_a_legacy_encoding(tmp_path):
    write(tmp_path / "zh.md", "# 数据同步指南\n\n这是一段简体中文文本，用于检查编码识别是否正确。\n".encode("gb18030"))
    assert only(tmp_path).metadata["title"] == "数据同步指南"


def test_a_utf16_byte_order_mark_on_noise_is_not_trusted(tmp_path):
    write(tmp_path / "fake.txt", b"\xff\xfe\xfa not utf-8 \x80\x81")
    write(tmp_path / "fake32.txt", b"\xff\xfe\x00\x00" + bytes(range(0x20, 0xa0)) * 4)
    items = read_all(tmp_path)
    assert "byte order mark" in failed(items["fake.txt"], "encoding").reason
    failed(items["fake32.txt"], "encoding")


def test_binary_behind_a_text_extension(tmp_path):
    write(tmp_path / "nul.txt", b"looks like text\x00\x01\x02 but is not")
    write(tmp_path / "controls.md", bytes(range(1, 9)) * 20 + b"some text")
    write(tmp_path / "image.html", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    items = read_all(tmp_path)
    for name in ("nul.txt", "controls.md", "image.html"):
        assert "binary" in failed(items[name], "binary").reason


def test_damaged_utf8_fails_with_encoding_and_the_offset(tmp_path):
    write(tmp_path / "bad.txt", "Grüße, 中文 ".encode() * 5 + b"\xe2\x82 end")
    reason = failed(only(tmp_path), "encoding").reason
    assert "UTF-8" in reason and "0xe2" in reason and "offset 80" in reason


def test_bytes_no_encoding_fits_fail_with_encoding(tmp_path):
    write(tmp_path / "noise.txt", bytes(range(0x80, 0x100)) * 8)
    failed(only(tmp_path), "encoding")


@pytest.mark.parametrize("name", list(DECLARED_HTML_SAMPLES))
def test_html_is_decoded_with_its_declared_charset(tmp_path, name):
    encoding, markup, text = DECLARED_HTML_SAMPLES[name]
    write(tmp_path / name, markup.encode(encoding))
    doc = only(tmp_path)
    assert isinstance(doc, Document), doc
    assert doc.text == text and doc.metadata["title"] in ("図書館", "도서관", "Preis", "UTF-8")


def test_iso2022_and_hz_signals_do_not_misfire(tmp_path):
    cases = {
        "ansi.txt": b"\x1b(B\x1b[mplain \x1b[31mred\x1b[0m text\n",  # tput's reset and colours: not ISO-2022
        "tilde.md": b"Use ~{ab~} in the template, then ~{cd~}.\n",  # a tilde before braces: not HZ
    }
    for name, data in cases.items():
        write(tmp_path / name, data)
    items = read_all(tmp_path)
    for name, data in cases.items():
        assert items[name].text == data.decode("ascii") and "encoding" not in items[name].metadata


def test_two_equally_plausible_readings_fail_instead_of_storing_mojibake(tmp_path):
    # Korean in cp949; read as Big5-HKSCS it is '巩狼 ⑾ 02-123-4567', which the old detector stored
    write(tmp_path / "phone.txt", "문의 ☎ 02-123-4567\n".encode("cp949"))
    reason = failed(only(tmp_path), "encoding").reason
    assert "cp949" in reason and "big5hkscs" in reason and "UTF-8" in reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_fail_cleanly(data):
    try:
        text, _ = decode_text(data)
    except ReadFailure as failure:
        assert failure.kind in ("binary", "encoding") and "\n" not in failure.reason
    else:
        assert isinstance(text, str)


def test_hostile_text_loads(tmp_path):
    cases = {
        "emoji.txt": "😀🎉👨‍👩‍👧‍👦🇯🇵",
        "symbols.txt": "Acme® Widget™ ©℠ " * 50,
        "rtl.txt": "مرحبا بالعالم \u200fשלום עולם\u200f",
        "zero-width.txt": "zero\u200bwidth\u200djoiner\ufeff and a bell\x07 and \x1b[1mbold\x1b[0m text",
        "mixed.md": "# 标题 Title\n同步 sync 中文 English",
    }
    for name, text in cases.items():
        write(tmp_path / name, text)
    items = read_all(tmp_path)
    for name, text in cases.items():
        assert isinstance(items[name], Document) and items[name].text == text


def test_empty_whitespace_and_invisible_files_are_empty(tmp_path):
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "spaces.md", " \n\t\r\n\u3000 ")
    write(tmp_path / "invisible.txt", "\u200b\u200d\ufeff\u2060")
    write(tmp_path / "scripts.html", "<script>a()</script><style>p{}</style><template>t</template>")
    write(tmp_path / "empty.html", b"")
    items = read_all(tmp_path)
    assert failed(items["empty.txt"], "empty").reason == "the file is empty"
    for name in ("spaces.md", "invisible.txt", "scripts.html", "empty.html"):
        failed(items[name], "empty")


def test_long_single_line_loads(tmp_path):
    line = "x" * (1024 * 1024)
    write(tmp_path / "line.txt", line)
    assert only(tmp_path).text == line


def test_file_over_max_file_mb_is_too_large_and_never_read(tmp_path, monkeypatch):
    write(tmp_path / "big.txt", "x" * 3000)
    write(tmp_path / "small.txt", "x" * 100)
    write(tmp_path / "records.jsonl", json.dumps({"id": "r", "text": "y" * 3000}) + "\n")
    read = []
    real = files_module._read_bytes
    monkeypatch.setattr(files_module, "_read_bytes", lambda stream: read.append(Path(stream.name).name) or real(stream))
    items = read_all(tmp_path, max_file_mb=0.002)
    reason = failed(items["big.txt"], "too_large").reason
    assert "max_file_mb" in reason
    assert isinstance(items["small.txt"], Document)
    assert isinstance(items["records.jsonl#r"], Document)  # record files are streamed: no limit
    assert read == ["small.txt"]


@pytest.mark.parametrize("limit", ["max_file_mb", "max_record_mb"])
def test_size_limits_must_be_positive(tmp_path, limit):
    with pytest.raises(ValueError):
        FilesSourceConfig(path=tmp_path, **{limit: 0})


def test_fifo_is_unreadable_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    assert "not a regular file" in failed(only(tmp_path), "unreadable").reason


def test_unreadable_record_file(tmp_path, monkeypatch):
    write(tmp_path / "a.jsonl", '{"id": 1, "text": "x"}\n')
    write(tmp_path / "b.csv", "id,text\n1,x\n")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files_module, "_open_binary", denied)
    items = read_all(tmp_path)
    for name in ("a.jsonl", "b.csv"):
        assert "Permission denied" in failed(items[name], "unreadable").reason


def test_non_utf8_file_name(tmp_path):
    name = os.fsdecode(b"caf\xe9.txt")
    (tmp_path / name).write_text("text")
    item = failed(only(tmp_path), "encoding")
    assert "file name" in item.reason


# --- PDF -------------------------------------------------------------------------------------------


def pypdf_writer(data: bytes):
    pypdf = importlib.import_module("pypdf")
    return pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))


def test_pdf_pages_become_sections(tmp_path):
    importlib.import_module("pypdf")
    write(tmp_path / "r.pdf", minimal_pdf(["Hello page 1", "", "Page (three) \\ end"], title="Annual  report"))
    doc = only(tmp_path)
    assert isinstance(doc, Document), doc
    assert [(s.text, s.metadata) for s in doc.sections] == [
        ("Hello page 1", {"page": 1}),
        ("Page (three) \\ end", {"page": 3}),  # a page without text gives no section
    ]
    assert doc.text == "Hello page 1\n\nPage (three) \\ end" == "\n\n".join(s.text for s in doc.sections)
    assert doc.metadata["title"] == "Annual report" and doc.metadata["page_count"] == 3


@pytest.mark.parametrize(
    "data",
    [b"", b"%PDF-1.4\n garbage", b"not a pdf", minimal_pdf(["Hello"])[:60]],
    ids=["empty", "garbage", "no-header", "truncated"],
)
def test_corrupt_pdf(tmp_path, data):
    importlib.import_module("pypdf")
    write(tmp_path / "bad.pdf", data)
    assert "damaged PDF" in failed(only(tmp_path), "corrupt").reason


PDF_ALGORITHMS = ["RC4-40", "RC4-128", "AES-128", "AES-256-R5", "AES-256"]


def encrypted_pdf(text: str, user_password: str, algorithm: str = "RC4-128") -> bytes:
    """A one-page PDF encrypted with an owner password and `user_password` ("" opens without one)."""
    writer = pypdf_writer(minimal_pdf([text]))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("algorithm", PDF_ALGORITHMS)
def test_pdf_with_a_user_password_is_encrypted(tmp_path, algorithm):
    write(tmp_path / "locked.pdf", encrypted_pdf("secret", user_password="secret", algorithm=algorithm))
    write(tmp_path / "stub.pdf", minimal_pdf(["secret"], encrypt_stub=True))
    items = read_all(tmp_path)
    assert "password" in failed(items["locked.pdf"], "encrypted").reason
    failed(items["stub.pdf"], "encrypted")


@pytest.mark.parametrize("algorithm", PDF_ALGORITHMS)
def test_pdf_with_only_an_owner_password_is_read(tmp_path, algorithm):
    write(tmp_path / "owner.pdf", encrypted_pdf("open to all", user_password="", algorithm=algorithm))
    assert only(tmp_path).text == "open to all"


def test_the_pdf_extra_brings_what_aes_needs():
    from importlib.metadata import requires

    pdf_requirements = [r for r in requires("connector") if 'extra == "pdf"' in r]
    assert any(r.startswith("pypdf[crypto]") for r in pdf_requirements), pdf_requirements


def test_aes_pdf_without_cryptography_is_missing_extra_not_corrupt(tmp_path, monkeypatch):
    """pypdf picks its AES implementation when it is imported: with `import cryptography` failing
    (and no pycryptodome) it falls back to one that raises DependencyError on first use."""
    write(tmp_path / "aes128.pdf", encrypted_pdf("open to all", user_password="", algorithm="AES-128"))
    write(tmp_path / "aes256.pdf", encrypted_pdf("open to all", user_password="", algorithm="AES-256"))
    write(tmp_path / "rc4.pdf", encrypted_pdf("open to all", user_password="", algorithm="RC4-128"))
    for name in [n for n in sys.modules if n == "pypdf" or n.startswith("pypdf.")]:
        monkeypatch.delitem(sys.modules, name)  # the next `import pypdf` runs afresh; restored afterwards
    monkeypatch.setitem(sys.modules, "cryptography", None)
    monkeypatch.setitem(sys.modules, "Crypto", None)
    items = read_all(tmp_path)
    assert sys.modules["pypdf"]._crypt_providers.crypt_provider[0] == "local_crypt_fallback"
    for name in ("aes128.pdf", "aes256.pdf"):
        assert 'pip install "connector[pdf]"' in failed(items[name], "missing_extra").reason
    assert items["rc4.pdf"].text == "open to all"  # RC4 needs no extra package


def test_pdf_without_text_is_empty(tmp_path):
    importlib.import_module("pypdf")
    write(tmp_path / "scan.pdf", minimal_pdf(["", ""]))
    assert "OCR" in failed(only(tmp_path), "empty").reason


def test_missing_pypdf_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # makes `import pypdf` fail
    write(tmp_path / "r.pdf", minimal_pdf(["Hello"]))
    write(tmp_path / "ok.txt", "fine")
    items = read_all(tmp_path)
    assert 'pip install "connector[pdf]"' in failed(items["r.pdf"], "missing_extra").reason
    assert isinstance(items["ok.txt"], Document)


# --- DOCX ------------------------------------------------------------------------------------------


def test_docx_paragraphs_tables_and_title(tmp_path):
    docx = importlib.import_module("docx")
    document = docx.Document()
    document.core_properties.title = "Core title"
    document.add_heading("Quarterly report", 1)
    document.add_paragraph("First paragraph.")
    document.add_paragraph("")
    table = document.add_table(rows=2, cols=3)
    for i, text in enumerate(["name", "qty", "note"]):
        table.cell(0, i).text = text
    table.cell(1, 0).merge(table.cell(1, 1)).text = "merged"
    table.cell(1, 2).text = "z"
    document.add_paragraph("After the table.")
    document.save(tmp_path / "report.docx")
    doc = only(tmp_path)
    assert doc.text == "Quarterly report\n\nFirst paragraph.\n\nname | qty | note\nmerged | z\n\nAfter the table."
    assert doc.metadata["title"] == "Core title"


def test_docx_nested_tables_and_cells_merged_down(tmp_path):
    docx = importlib.import_module("docx")
    document = docx.Document()
    table = document.add_table(rows=3, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "part", "details"
    table.cell(1, 0).merge(table.cell(2, 0)).text = "pump"  # merged down two rows
    table.cell(1, 1).text = "sizes:"
    inner = table.cell(1, 1).add_table(rows=2, cols=2)
    inner.cell(0, 0).text, inner.cell(0, 1).text = "small", "10 l"
    inner.cell(1, 0).text = "large"
    inner.cell(1, 1).add_table(rows=1, cols=1).cell(0, 0).text = "20 l, nested twice"
    table.cell(2, 1).text = "steel"
    document.save(tmp_path / "nested.docx")
    assert only(tmp_path).text == ("part | details\npump | sizes:\nsmall | 10 l\nlarge | \n20 l, nested twice\n"
                                   " | steel")


def test_docx_footnotes_by_default_headers_and_footers_when_asked(tmp_path):
    docx = importlib.import_module("docx")
    write(tmp_path / "notes.docx", minimal_docx(["The pump is rated for 10 bar."], footnotes=["Tested in 2024."]))
    document = docx.Document()
    document.add_paragraph("Body of the manual.")
    document.sections[0].header.paragraphs[0].text = "ACME confidential"
    document.sections[0].footer.paragraphs[0].text = "Manual v2"
    second = document.add_section()  # linked to the first: its header and footer are read once
    document.add_paragraph("Second section.")
    assert second.header.is_linked_to_previous
    document.save(tmp_path / "manual.docx")

    items = read_all(tmp_path)
    assert items["notes.docx"].text == "The pump is rated for 10 bar.\n\nTested in 2024."
    assert items["manual.docx"].text == "Body of the manual.\n\nSecond section."
    items = read_all(tmp_path, docx={"footnotes": False, "headers_footers": True})
    assert items["notes.docx"].text == "The pump is rated for 10 bar."
    assert items["manual.docx"].text == "Body of the manual.\n\nSecond section.\n\nACME confidential\n\nManual v2"


def test_docx_title_falls_back_to_the_first_heading(tmp_path):
    docx = importlib.import_module("docx")
    document = docx.Document()  # its core properties have an empty title
    document.add_paragraph("Intro line.")
    document.add_heading("The heading", 2)
    document.save(tmp_path / "a.docx")
    # a file without a core properties part, and without a styles part to name 'Heading1'
    write(tmp_path / "b.docx", minimal_docx(["Body first", ("Heading1", "Hand made")]))
    items = read_all(tmp_path)
    assert items["a.docx"].metadata["title"] == "The heading"
    assert items["b.docx"].metadata["title"] == "Hand made"
    assert items["b.docx"].text == "Body first\n\nHand made"


def test_corrupt_encrypted_old_and_empty_docx(tmp_path):
    importlib.import_module("docx")
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    write(tmp_path / "garbage.docx", b"PK\x03\x04 not really a zip")
    write(tmp_path / "truncated.docx", minimal_docx(["Hello"])[:100])
    write(tmp_path / "not-word.docx", minimal_docx(["x"]).replace(b"word/document.xml", b"word/other___.xml"))
    write(tmp_path / "locked.docx", ole + b"\x00" * 100 + "EncryptedPackage".encode("utf-16-le"))
    write(tmp_path / "old.docx", ole + b"\x00" * 100 + "WordDocument".encode("utf-16-le"))
    write(tmp_path / "blank.docx", minimal_docx(["", "  "]))
    items = read_all(tmp_path)
    for name in ("garbage.docx", "truncated.docx", "not-word.docx"):
        assert "damaged .docx" in failed(items[name], "corrupt").reason
    failed(items["locked.docx"], "encrypted")
    assert ".doc" in failed(items["old.docx"], "corrupt").reason
    failed(items["blank.docx"], "empty")


def test_missing_python_docx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "docx", None)
    write(tmp_path / "a.docx", minimal_docx(["Hello"]))
    assert 'pip install "connector[docx]"' in failed(only(tmp_path), "missing_extra").reason


# --- CSV -------------------------------------------------------------------------------------------


def test_csv_records_with_configured_columns(tmp_path):
    write(
        tmp_path / "kb.csv",
        "\ufeffuid;body;lang;path;skip\n"
        'a-1;"Hello; world";en;mine;1\n'
        '\n'
        'a-2;"two\nlines";de;x;2\n',
    )
    columns = CsvColumns(id_column="uid", text_column="body", metadata_columns=["lang", "path", "absent"], delimiter=";")
    items = read_all(tmp_path, csv=columns)
    assert [(d.doc_id, d.text) for d in items.values()] == [("kb.csv#a-1", "Hello; world"), ("kb.csv#a-2", "two\nlines")]
    assert set(items["kb.csv#a-1"].metadata) == {"lang", "path", "modified"}
    assert items["kb.csv#a-1"].metadata["lang"] == "en" and items["kb.csv#a-1"].metadata["path"] == "kb.csv"


def test_csv_default_metadata_is_every_other_column(tmp_path):
    write(tmp_path / "t.csv", "id,text,lang,tags\n1,hello,en,a b\n")
    assert only(tmp_path).metadata == {
        "lang": "en", "tags": "a b", "path": "t.csv", "modified": only(tmp_path).metadata["modified"]
    }


def test_csv_without_its_text_column_fails_once_naming_the_columns(tmp_path):
    write(tmp_path / "t.csv", "id,body,lang\n1,hello,en\n2,again,de\n")
    item = failed(only(tmp_path), "malformed")
    assert item.doc_id == "t.csv"
    assert "'text'" in item.reason and "'id', 'body', 'lang'" in item.reason and "source.csv.text_column" in item.reason


def test_csv_without_its_id_column_or_header(tmp_path):
    write(tmp_path / "a.csv", "key,text\n1,hello\n")
    write(tmp_path / "b.csv", "\n\n")
    items = read_all(tmp_path)
    assert "source.csv.id_column" in failed(items["a.csv"], "malformed").reason
    failed(items["b.csv"], "empty")


def test_csv_bad_rows_fail_alone(tmp_path):
    write(
        tmp_path / "t.csv",
        b"id,text\n"
        b"ok-1,fine\n"  # line 2
        b"extra,too,many\n"  # line 3
        b",no id\n"  # line 4
        b"blank-text,   \n"  # line 5
        b"latin,caf\xe9\n"  # line 6
        b'ok-2,"multi\nline"\n'  # lines 7-8
        b"short\n"  # line 9
        b"ok-3,last\n",
    )
    items = read_all(tmp_path)
    assert [i for i, d in items.items() if isinstance(d, Document)] == ["t.csv#ok-1", "t.csv#ok-2", "t.csv#ok-3"]
    assert "3 fields" in failed(items["t.csv:line 3"], "malformed").reason
    assert "'id' column is empty" in failed(items["t.csv:line 4"], "malformed").reason
    assert failed(items["t.csv#blank-text"], "empty").reason.startswith("t.csv:line 5:")
    assert "UTF-8" in failed(items["t.csv#latin"], "encoding").reason
    failed(items["t.csv:line 9"], "malformed")
    assert items["t.csv#ok-2"].text == "multi\nline"


def test_csv_excel_utf16_and_big_fields(tmp_path):
    write(tmp_path / "excel.csv", "\ufeffid\ttext\nx-1\tcafé 中文\n".encode("utf-16-le"))
    write(tmp_path / "big.csv", "id,text\nbig," + "y" * 300_000 + "\n")
    items = read_all(tmp_path, csv=CsvColumns(delimiter="\t"))
    assert items["excel.csv#x-1"].text == "café 中文"
    failed(items["big.csv"], "malformed")  # tab-separated config: 'id,text' is one column
    items = read_all(tmp_path, include=["big.csv"])
    assert len(items["big.csv#big"].text) == 300_000


def test_binary_and_empty_record_files(tmp_path):
    write(tmp_path / "bin.csv", b"id,text\x00\x01\x02")
    write(tmp_path / "bin.jsonl", b"\x00\x01\x02\x03")
    write(tmp_path / "empty.jsonl", b"\n  \n")
    write(tmp_path / "empty.csv", b"")
    write(tmp_path / "utf16.jsonl", '{"id": 1}'.encode("utf-16"))
    items = read_all(tmp_path)
    failed(items["bin.csv"], "binary")
    failed(items["bin.jsonl"], "binary")
    failed(items["empty.jsonl"], "empty")
    failed(items["empty.csv"], "empty")
    failed(items["utf16.jsonl"], "encoding")


def test_jsonl_record_with_empty_text_is_empty(tmp_path):
    write(tmp_path / "r.jsonl", '{"id": "a", "text": "  "}\n{"id": "b", "text": "ok"}\n')
    items = read_all(tmp_path)
    assert failed(items["r.jsonl#a"], "empty").reason.startswith("r.jsonl:line 1:")
    assert isinstance(items["r.jsonl#b"], Document)


def test_the_same_id_in_csv_and_jsonl_files_is_two_documents(tmp_path):
    write(tmp_path / "a.csv", "id,text\nx,one\n")
    write(tmp_path / "b.jsonl", '{"id": "x", "text": "two"}\n')
    items = read_all(tmp_path)
    assert (items["a.csv#x"].text, items["b.jsonl#x"].text) == ("one", "two")


def test_a_csv_id_repeated_in_its_file_fails_that_row_alone(tmp_path):
    write(tmp_path / "t.csv", "id,text\nx,first\ny,other\nx,second\nz,last\n")
    items = read_all(tmp_path)
    assert [i for i, d in items.items() if isinstance(d, Document)] == ["t.csv#x", "t.csv#y", "t.csv#z"]
    assert items["t.csv#x"].text == "first"
    assert failed(items["t.csv:line 4"], "duplicate").reason == "duplicate doc_id 't.csv#x' (first seen in t.csv:line 2)"


# --- bounded work per document ------------------------------------------------------------------------

MIB = 1024 * 1024


def calls(function, *args) -> int:
    """How many Python and C functions `function(*args)` calls: a measure of work that does not
    depend on the machine's speed or load."""
    count = 0

    def counter(frame, event, arg):
        nonlocal count
        count += event in ("call", "c_call")

    sys.setprofile(counter)
    try:
        function(*args)
    finally:
        sys.setprofile(None)
    return count


def peak_memory(function, *args) -> int:
    """The most bytes Python held at once while `function(*args)` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def nested_divs(depth: int) -> str:
    return "<html><body>" + "<div>x " * depth + "</div>" * depth + "</body></html>"


def test_deeply_nested_html_costs_linear_work():
    from connector.sources.htmlfile import html_text

    assert html_text(nested_divs(3)) == ("x\n\nx\n\nx", None)
    small, large = calls(html_text, nested_divs(500)), calls(html_text, nested_divs(2000))
    assert large < 5 * small  # four times the depth: 16 times the work if quadratic


def test_docx_paragraphs_cost_linear_work_however_many_styles():
    docx = importlib.import_module("docx")
    from docx.enum.style import WD_STYLE_TYPE

    from connector.sources.docxfile import read_docx

    def document(n: int) -> bytes:
        document = docx.Document()
        for i in range(n):
            document.styles.add_style(f"Custom {i}", WD_STYLE_TYPE.PARAGRAPH)
            document.add_paragraph(f"paragraph {i}")
        out = io.BytesIO()
        document.save(out)
        return out.getvalue()

    small, large = document(100), document(400)
    assert read_docx(small).text.endswith("paragraph 99")
    assert calls(read_docx, large) < 5 * calls(read_docx, small)  # 4x styles and paragraphs: 16x if quadratic


def test_docx_unpacking_over_max_file_mb_is_too_large(tmp_path):
    importlib.import_module("docx")
    write(tmp_path / "bomb.docx", docx_bomb(2))  # well under 1 MiB zipped
    assert (tmp_path / "bomb.docx").stat().st_size < MIB
    reason = failed(only(tmp_path, max_file_mb=2), "too_large").reason
    assert "word/document.xml alone 3.0 MiB" in reason and "source.max_file_mb (2)" in reason
    assert isinstance(only(tmp_path, max_file_mb=4), Document)


def test_docx_whose_zip_directory_lies_is_corrupt_in_bounded_memory(tmp_path):
    """zipfile reads no more than the declared size and fails the CRC check; the size check relies on it."""
    importlib.import_module("docx")
    write(tmp_path / "liar.docx", lying_docx(actual_bytes=20 * MIB, declared_bytes=1000))
    items = {}
    assert peak_memory(lambda: items.update(read_all(tmp_path))) < 4 * MIB
    assert "CRC" in failed(items["liar.docx"], "corrupt").reason


def test_pdf_bomb_fails_as_corrupt_in_bounded_memory(tmp_path):
    """pypdf (>= 6.10.2, pyproject's `pdf` extra) stops inflating a stream at 75 MB by default."""
    importlib.import_module("pypdf")
    write(tmp_path / "bomb.pdf", pdf_bomb(300))  # 300 MiB from about 300 KB
    items = {}
    assert peak_memory(lambda: items.update(read_all(tmp_path))) < 200 * MIB
    assert "LimitReachedError" in failed(items["bomb.pdf"], "corrupt").reason


def test_a_pypdf_that_does_not_bound_streams_is_refused(tmp_path, monkeypatch):
    pypdf = importlib.import_module("pypdf")
    monkeypatch.setattr(pypdf, "__version__", "5.9.0")  # before 6.0.0 nothing bounded FlateDecode output
    write(tmp_path / "a.pdf", minimal_pdf(["Hello"]))
    reason = failed(only(tmp_path), "missing_extra").reason
    assert "pypdf 5.9.0" in reason and 'pip install -U "connector[pdf]"' in reason


def test_overlong_jsonl_line_fails_alone_and_is_never_held_whole(tmp_path):
    huge = json.dumps({"id": "huge", "text": "word " * (4 * MIB)})  # 20 MiB on one line
    write(tmp_path / "r.jsonl", '{"id": "a", "text": "first"}\n' + huge + '\n{"id": "b", "text": "last"}\n')
    del huge
    items = {}
    assert peak_memory(lambda: items.update(read_all(tmp_path, max_record_mb=1))) < 8 * MIB
    assert [doc_id for doc_id, item in items.items() if isinstance(item, Document)] == ["r.jsonl#a", "r.jsonl#b"]
    assert "source.max_record_mb (1 MiB)" in failed(items["r.jsonl:line 2"], "too_large").reason


def test_overlong_csv_rows_fail_alone_and_are_never_held_whole(tmp_path):
    one_line = "z" * (20 * MIB)
    many_lines = '"' + ('he said ""hi"", twice\n' + "y" * 1000 + "\n") * 2000 + '"'  # 2 MiB in 4000 lines
    write(tmp_path / "t.csv", f'id,text\nc-1,first\nlong-1,{one_line}\nc-2,"two\nlines"\nlong-2,{many_lines}\nc-3,last\n')
    del one_line, many_lines
    items = {}
    assert peak_memory(lambda: items.update(read_all(tmp_path, max_record_mb=1))) < 8 * MIB
    assert [doc_id for doc_id, item in items.items() if isinstance(item, Document)] == ["t.csv#c-1", "t.csv#c-2", "t.csv#c-3"]
    failed(items["t.csv:line 3"], "too_large")
    assert "source.max_record_mb (1 MiB)" in failed(items["t.csv:line 6"], "too_large").reason
    assert items["t.csv#c-2"].text == "two\nlines"
    write(tmp_path / "t.csv", 'id,text\nc-1,"just under, ""quoted""\n' + "y" * (MIB - 100) + '"\n')
    assert len(only(tmp_path, max_record_mb=1).text) > MIB - 100
    write(tmp_path / "t.csv", "id,text," + "h" * (2 * MIB) + "\nc-1,x,y\n")
    assert "header row" in failed(only(tmp_path, max_record_mb=1), "too_large").reason


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.text(alphabet='ab ,"\r\n', max_size=30)), min_size=1, max_size=8), st.integers(12, 40))
def test_csv_rows_around_overlong_ones_read_as_the_csv_module_reads_them(tmp_path_factory, rows, limit):
    """Quoted fields with doubled quotes and line breaks, unquoted ones with stray quotes: a row
    over the limit fails at its line, and every other row comes back exactly."""
    folder = tmp_path_factory.mktemp("csv")
    out, line, expected = io.StringIO(), 1, {}  # line: the lines written
    out.write("id,text\n")
    for i, (quoted, text) in enumerate(rows):
        text = "t" + text
        if not quoted:  # a quote inside an unquoted field, as csv.writer would never write it
            text = text.replace(",", "").replace("\r", "").replace("\n", "")
        row = _csv_line(f"r{i}", text) if quoted else f"r{i},{text}\n"
        out.write(row)
        fits = len(row) <= limit
        expected[f"t.csv#r{i}" if fits else f"t.csv:line {line + 1}"] = text if fits else None
        line += len(row.splitlines())
    write(folder / "t.csv", out.getvalue())
    items = read_all(folder, max_record_mb=limit / MIB)
    assert set(items) == set(expected)
    for doc_id, text in expected.items():
        if text is None:
            failed(items[doc_id], "too_large")
        else:
            assert items[doc_id].text == text


def _csv_line(*fields: str) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(fields)
    return out.getvalue()


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), MemoryError(), KeyError("bug")])
def test_any_reader_error_fails_the_document_as_corrupt(tmp_path, monkeypatch, error):
    def crash(data, **options):
        raise error

    monkeypatch.setitem(files_module.DOCUMENT_READERS, ".html", crash)
    write(tmp_path / "a.html", "<p>page</p>")
    write(tmp_path / "b.txt", "fine")
    items = read_all(tmp_path)
    reason = failed(items["a.html"], "corrupt").reason
    assert f"failed: {type(error).__name__}" in reason and ":;" not in reason
    assert isinstance(items["b.txt"], Document)


def test_a_package_a_reader_needs_missing_is_missing_extra_not_corrupt(tmp_path, monkeypatch):
    """Found by a plain install: trafilatura imports lxml.html.clean, which lxml no longer ships."""
    def crash(data, **options):
        raise ImportError("lxml.html.clean module is now a separate project lxml_html_clean")

    monkeypatch.setitem(files_module.DOCUMENT_READERS, ".html", crash)
    write(tmp_path / "a.html", "<p>page</p>")
    reason = failed(read_all(tmp_path)["a.html"], "missing_extra").reason
    assert "lxml_html_clean" in reason and "reinstall connector" in reason


def test_a_record_reader_error_fails_the_file_and_keeps_the_records_read(tmp_path, monkeypatch):
    read_records = files_module.jsonl_records

    def crash_after_one(*args):
        records = read_records(*args)
        yield next(records)
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(files_module, "jsonl_records", crash_after_one)
    write(tmp_path / "r.jsonl", '{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n')
    write(tmp_path / "s.txt", "fine")
    items = read_all(tmp_path)
    assert "RecursionError" in failed(items["r.jsonl"], "corrupt").reason
    assert isinstance(items["r.jsonl#a"], Document) and isinstance(items["s.txt"], Document)
    assert "r.jsonl#b" not in items


# --- the hostile corpus -------------------------------------------------------------------------------


def outcome(root: Path, **config) -> tuple[set[str], dict[str, str], dict[str, Document | FailedDocument]]:
    items = read_all(root, **config)
    synced = {i for i, d in items.items() if isinstance(d, Document)}
    failures = {i: d.kind for i, d in items.items() if isinstance(d, FailedDocument)}
    return synced, failures, items


def test_hostile_corpus_gives_exactly_the_expected_outcome(tmp_path):
    expected = build_hostile_corpus(tmp_path / "corpus")
    synced, failures, items = outcome(tmp_path / "corpus")
    assert synced == expected["synced"]
    assert failures == expected["failed"]
    for doc_id, text in expected["texts"].items():
        assert items[doc_id].text == text, doc_id
    # every kind a file can fail with is in the corpus
    assert set(failures.values()) >= {
        "binary", "encoding", "empty", "corrupt", "encrypted", "malformed", "too_large", "unreadable", "duplicate",
        "outside_root",
    }


def test_hostile_corpus_pdf_sections(tmp_path):
    importlib.import_module("pypdf")
    build_hostile_corpus(tmp_path)
    doc = read_all(tmp_path)["formats/report.pdf"]
    assert [s.metadata for s in doc.sections] == [{"page": 1}, {"page": 2}]
    assert doc.text == "Hello page 1\n\nSecond page (two)"


def test_hostile_corpus_without_the_optional_packages(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)
    monkeypatch.setitem(sys.modules, "docx", None)
    expected = build_hostile_corpus(tmp_path)
    assert expected["failed"]["formats/report.pdf"] == "missing_extra"
    synced, failures, _ = outcome(tmp_path)
    assert (synced, failures) == (expected["synced"], expected["failed"])


def test_hostile_corpus_with_a_lower_size_limit(tmp_path):
    expected = build_hostile_corpus(tmp_path, max_file_mb=1)
    assert expected["failed"]["hostile/big.txt"] == "too_large"
    synced, failures, _ = outcome(tmp_path, max_file_mb=1)
    assert (synced, failures) == (expected["synced"], expected["failed"])


def test_hostile_corpus_can_be_built_twice(tmp_path):
    build_hostile_corpus(tmp_path)
    expected = build_hostile_corpus(tmp_path)
    synced, failures, _ = outcome(tmp_path)
    assert (synced, failures) == (expected["synced"], expected["failed"])


def test_big_hostile_corpus(tmp_path):
    """The 50 MB file and the 5 MB line, read for real (about a second)."""
    expected = build_hostile_corpus(tmp_path, big=True)
    synced, failures, items = outcome(tmp_path)
    assert (synced, failures) == (expected["synced"], expected["failed"])
    assert len(items["hostile/big.txt"].text) == 50 * 10**6

