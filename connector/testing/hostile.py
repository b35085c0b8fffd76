"""A corpus of real-world and hostile files for FilesSource, with the outcome it must give.

    from connector.testing.hostile import build_hostile_corpus
    expected = build_hostile_corpus(Path("corpus"))          # small and fast (about a second)
    expected = build_hostile_corpus(Path("corpus"), big=True)  # with a 50 MB file and a 5 MB line

`expected["synced"]` is the set of doc_ids that must load, `expected["failed"]` maps every doc_id
that must fail to its kind (records.FAILURE_KINDS), and `expected["texts"]` gives the exact text of
the documents whose decoding is the point of the case. The outcome is for a FilesSource with the
default config (`max_file_mb` and `max_record_mb` given here if yours differ); when the `pdf` or `docx` extra is not
installed, the files of that format are expected to fail as 'missing_extra' (the AES-encrypted PDF
also when `cryptography`, which the `pdf` extra brings, is missing).

No optional package is needed to build the corpus: PDF and DOCX files are written by hand. Among
the hostile cases: HTML nested 20 000 levels deep, a .docx and a PDF that unpack to more than
their limits ("zip bombs"), a .docx whose zip directory lies about a part's size, and a JSONL line
and a CSV row over `max_record_mb`.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

#: Real sample texts and the encoding their file is written in (each must decode back exactly).
ENCODED_SAMPLES: dict[str, tuple[str, str]] = {
    "utf8.txt": ("utf-8", "Plain UTF-8: naïve café, Ελληνικά, русский, 中文, 日本語, 한국어.\n"),
    "utf16-le-bom.txt": ("utf-16-le", "\ufeffUTF-16 with a byte order mark: café, 中文, emoji 😀.\n"),
    "utf16-be-bom.txt": ("utf-16-be", "\ufeffBig-endian UTF-16: Größe, 日本語.\n"),
    "gb18030.txt": ("gb18030", "数据同步工具会把文档写入向量数据库。每个文档都有稳定的编号，修改后只重新编码变化的部分。\n"),
    "gbk.txt": ("gbk", "中文测试：这是一段简体中文文本，用于检查编码识别是否正确。我们的知识库支持多种语言。\n"),
    "big5.txt": ("big5", "資料同步工具會把文件寫入向量資料庫。每個文件都有穩定的編號，修改後只重新編碼變化的部分。\n"),
    "shift-jis.txt": ("shift_jis", "同期ツールは文書をベクトルデータベースに書き込みます。各文書には安定した識別子があります。\n"),
    "latin-1.txt": (
        "latin-1",
        "Le café de la rue était fermé. Nous avons mangé une crème brûlée à côté, "
        "près de la fenêtre où l'été brillait. Grüße aus München!\n",
    ),
    # Each of these was refused or stored garbled before the decoder weighed every signal.
    "ja-shift-jis-iteration-mark.txt": (  # '色々' made charset-normalizer give up
        "shift_jis", "多くの利用者は色々な形式の文書を同期したいと考えています。\n設定ファイルを一つ書けば、変更された文書だけが毎晩更新されます。\n"
    ),
    "ja-euc-jp.txt": (  # read as EUC-KR mojibake
        "euc_jp", "多くの利用者は色々な形式の文書を同期したいと考えています。\n人々の意見は様々でしたが、最後には全員が賛成しました。\n"
    ),
    "ja-iso2022-jp.txt": ("iso2022_jp", "図書館の本は二週間まで借りられます。\n返却が遅れた場合は、窓口にご連絡ください。\n"),
    "ko-cp949-chat.txt": ("cp949", "ㅋㅋㅋ 똠얌꿍 진짜 맛있었어요 ㅠㅠ 또 가고 싶다 ♡\n햏님도 다음에 같이 가요!\n"),
    "ko-johab.txt": ("johab", "어제는 똠얌꿍과 쌀국수를 먹었어요. 뷁!\n다음에 또 가요.\n"),  # read as cp949 mojibake
    "ko-iso2022-kr.txt": ("iso2022_kr", "도서관의 책은 이 주일 동안 빌릴 수 있습니다.\n반납이 늦어지면 창구로 연락해 주세요.\n"),
    "zh-hk-big5hkscs.txt": ("big5hkscs", "佢嘅𨋢壞咗。\n"),  # HKSCS characters; read as cp932 mojibake
    "zh-hz.txt": ("hz", "图书馆的书可以借两个星期。\n如果不能按时归还，请联系服务台。\n"),  # stored with its ~{ ~} escapes
    "utf16-le-no-bom.txt": ("utf-16-le", "No byte order mark: 图书馆的书可以借两个星期。\n"),  # NUL bytes: 'binary'
    "utf16-be-no-bom.txt": ("utf-16-be", "도서관의 책은 이 주일 동안 빌릴 수 있습니다.\n"),
    "utf32-le-no-bom.txt": ("utf-32-le", "UTF-32 without a mark: 多くの利用者 😀\n"),
}

#: HTML pages in the charset they declare: name -> (encoding, markup, the page's exact text).
#: UTF-16/32 without a byte order mark were refused as binary (their NUL bytes) before.
_LIBRARY_PAGE = (
    '<html><head><meta charset="{charset}"><title>図書館</title></head>'
    "<body><p>多くの利用者は色々な形式の文書を同期したいと考えています。</p></body></html>"
)
DECLARED_HTML_SAMPLES: dict[str, tuple[str, str, str]] = {
    "utf16-le-no-bom.html": ("utf-16-le", _LIBRARY_PAGE.format(charset="utf-16"), "多くの利用者は色々な形式の文書を同期したいと考えています。"),
    "utf16-be-no-bom.html": ("utf-16-be", _LIBRARY_PAGE.format(charset="utf-16"), "多くの利用者は色々な形式の文書を同期したいと考えています。"),
    "utf32-le-no-bom.html": ("utf-32-le", _LIBRARY_PAGE.format(charset="utf-32"), "多くの利用者は色々な形式の文書を同期したいと考えています。"),
    "shift-jis-http-equiv.html": (
        "shift_jis",
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS"><title>図書館</title></head>'
        "<body><p>人々の意見は様々でした。</p></body></html>",
        "人々の意見は様々でした。",
    ),
    "euc-kr-xml-declaration.html": (
        "euc_kr",
        '<?xml version="1.0" encoding="EUC-KR"?><html><head><title>도서관</title></head>'
        "<body><p>반납이 늦어지면 창구로 연락해 주세요.</p></body></html>",
        "반납이 늦어지면 창구로 연락해 주세요.",
    ),
    "latin1-declared-euro.html": (  # declared ISO-8859-1, written in windows-1252 ('€' is 0x80): read as browsers do
        "cp1252", '<html><head><meta charset="iso-8859-1"><title>Preis</title></head><body><p>Preis: 5 € – günstig</p></body></html>',
        "Preis: 5 € – günstig",
    ),
    "utf8-declared-shift-jis.html": (  # the declaration is wrong: valid UTF-8 wins, as in browsers' sniffing
        "utf-8", '<html><head><meta charset="shift_jis"><title>UTF-8</title></head><body><p>Grüße, 中文</p></body></html>',
        "Grüße, 中文",
    ),
}

#: A documentation page with the boilerplate of real sites around its main content: a 'skip to
#: content' link, a cookie banner, a navigation menu, a 'Copy' button on a code block, a footer.
#: With `source.html.mode: main` (the default) it gives ARTICLE_TEXT exactly.
ARTICLE_PAGE = """<!doctype html><html><head><title>Install guide - Widget docs</title></head><body>
<a href="#main" class="skip-link">Skip to content</a>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience.
<button>Accept all cookies</button></div>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/docs">Docs</a></li>
<li><a href="/blog">Blog</a></li><li><a href="/pricing">Pricing</a></li></ul></nav></header>
<main id="main"><article>
<h1>Installing the widget</h1>
<p>The widget installs with one command on every supported platform,
   and it needs no root rights at all.</p>
<p>Run the installer from a terminal. It downloads the package, checks its signature and puts it in your home folder.</p>
<div class="highlight"><button class="copy-button">Copy</button><pre><code>pip install widget
widget --version

    indented line</code></pre></div>
<p>In the Python shell:</p>
<pre><span class="gp">&gt;&gt;&gt; </span><span class="n">widget</span>.<span class="n">check</span>()
True</pre>
<p>The supported platforms and their minimum versions are listed in the table below; older versions may work.</p>
<table><tr><th>Platform</th><th>Minimum</th></tr><tr><td>Linux</td><td>glibc <b>2.28</b></td></tr>
<tr><td>macOS</td><td>12</td></tr></table>
<p>After installing, run the self-test to check that everything is in place before you continue with the setup guide.</p>
</article></main>
<footer><p>&copy; 2024 Widget Inc. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
</body></html>
"""
ARTICLE_TEXT = (
    "Installing the widget\n\n"
    "The widget installs with one command on every supported platform, and it needs no root rights at all.\n\n"
    "Run the installer from a terminal. It downloads the package, checks its signature and puts it in your home folder.\n\n"
    "pip install widget\nwidget --version\n\n    indented line\n\n"
    "In the Python shell:\n\n"
    ">>> widget.check()\nTrue\n\n"
    "The supported platforms and their minimum versions are listed in the table below; older versions may work.\n\n"
    "Platform | Minimum\nLinux | glibc 2.28\nmacOS | 12\n\n"
    "After installing, run the self-test to check that everything is in place before you continue with the setup guide."
)

_MIB = 1024 * 1024
_LOREM = (
    "The connector keeps a vector store in sync with a body of documents. "
    "Every chunk is encoded once; unchanged documents cost nothing.\n"
)


def minimal_pdf(pages: list[str], title: str | None = None, encrypt_stub: bool = False) -> bytes:
    """A small valid PDF with one line of Helvetica text per page (latin-1 text; '' gives a page
    without text, like a scan). `encrypt_stub` adds a standard security handler whose passwords
    match nothing, so readers see a password-protected file."""
    n = len(pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
        stream = b"BT /F1 12 Tf 72 712 Td (" + escaped + b") Tj ET" if text else b""
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    trailer = b""
    if title is not None:
        objects.append(b"<< /Title (" + title.encode("latin-1") + b") >>")
        trailer += b" /Info %d 0 R" % len(objects)
    if encrypt_stub:
        objects.append(b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -4 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> >>")
        trailer += b" /Encrypt %d 0 R /ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>]" % len(objects)
    return _assemble_pdf(objects, trailer)


def pdf_bomb(inflated_mib: int = 80) -> bytes:
    """A one-page PDF whose FlateDecode content stream inflates to `inflated_mib` MiB (of spaces,
    then one line of text) from about 1/1000 of that: more than pypdf's 75 MB output limit by default."""
    return _pdf_bomb(inflated_mib)


@functools.lru_cache(maxsize=2)
def _pdf_bomb(inflated_mib: int) -> bytes:
    compressor = zlib.compressobj(6)
    spaces = b" " * _MIB
    stream = b"".join([compressor.compress(spaces) for _ in range(inflated_mib)])
    stream += compressor.compress(b"BT /F1 12 Tf 72 712 Td (bomb) Tj ET") + compressor.flush()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    return _assemble_pdf(objects, b"")


def _assemble_pdf(objects: list[bytes], trailer: bytes) -> bytes:
    """A PDF file of numbered objects (the first is the catalog) with its cross-reference table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


#: A one-page PDF encrypted with AES-256 (revision 6) and an empty user password, as pypdf writes it
#: (zlib + base64): anyone may open it, but reading it needs AES (the `cryptography` package).
#: Such PDFs failed as 'corrupt' when only pypdf was installed.
_AES_PDF = """
eNqNVM2LHEUcPemhFBHvYkFYNAfT9avvgmHCZndGjYZddjSCErE+dyfsdC89vWFjzobkkoMg+g/kEj/w4ikQPe4GRJb1kKPGg0hA
EC+CB63u/cjgeHBmDlWvf/Xe483rWlhdHr4MZxhaePjz9wcIMMGVu4x6PVS8eXUr4mLJNnazWkfFql2PU0zzwBrq91EsQztI5w50
c6h4fRym+F3M2nl8CRVL1XbZYJg5yv7zaCtUxzx6qFRciGFsz1U7mYvkrwSKlaEt41qcVtu1z6ZahmGVz3QLwPzYZP5l4bLJfFMs
/mWdz+m3HKgYbbum27YgoOKcncaOvXg1bl6JzdhbVAxKX4VxuY6Lt8flYjkdHwMzAmJG4I1Yrjcb2Mj2+bSpo50g+tnk1qmtn0Yf
3um/v//XD09/tLu4/+iT3aeu3bt/sFHc/fT0b3t/fvPO/h/3d564GfdunH3vq49f+fb5MwfPXH/uy717X//+3a8vfH731C+3nz1/
+hHfXbr8xeTh7evX7my89ODFv5/c//FB6+NI6siRnHF0EYucIZYn3qjI61XMqeFGKmpoznK82cQaF6PGlsHWARUruKcl1y4E6ljk
EJ2wVpMYjBTGG2JTkMoFyjWlKpMoThIFSEpaZYnmnkvKgWolhITAglYkGWkCyQBIaahy+T97K6ukRInnXFBPIzPAwHOWhGaKS0fy
0kRKKJGEsmSdEUSFmAihjhsBAaxKBJy0nBLHg05G0axsiBfS6aBpapsx7AozasLRanG72RhcactXLFd+ZSuW7dAFXCwORhfZSVCM
Hndr1EyG+JCg3dSPNysD3LM+p2MAaBLAowzc6yiV8lqEkCOSxOb8EvFWceaj5oqC5MZCspKDMLENItOAl9YkbY2IPFAiuI9MeKGE
lIyLxLkTyhuXo1UQNHGJAaEQCfXGQzAm06zGepJfE2k9s0RGpr2CFESAYI0MhFsFJLjUnynvTh0TIlghcvLBUggmcMInGOSKd0/K
x5jkcxhQNodRAXMY43oO42aGr6nteDPWXX9H4w9itlesVVW+Vw4vi9eW8zXRYypCzC3I/WG5mjI6CDxp7U1uZi5C//+MXOre8frq
VoPl8cUxbWzddMFA9oUWFgYrQ/QPsmh9BA==
"""
AES_PDF_TEXT = "Readable by anyone: AES-256, empty user password"


def aes_pdf() -> bytes:
    """The bytes of the AES-encrypted PDF above."""
    return zlib.decompress(base64.b64decode("".join(_AES_PDF.split())))


_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
    '<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-package.core-properties+xml"/>'
    "</Types>"
)


def minimal_docx(blocks: list[Any], title: str | None = None, footnotes: list[str] = ()) -> bytes:
    """A small valid .docx: `blocks` are paragraphs (str, or ("Heading1", text) for a styled one)
    and tables (a list of rows, each a list of cell texts); `title` goes in the core properties;
    `footnotes` in a footnotes part (after the separator Word writes first)."""
    from xml.sax.saxutils import escape

    def paragraph(text: str, style: str | None = None) -> str:
        props = f'<w:pPr><w:pStyle w:val="{style}"/></w:pPr>' if style else ""
        return f'<w:p>{props}<w:r><w:t xml:space="preserve">{escape(text)}</w:t></w:r></w:p>'

    body = []
    for block in blocks:
        if isinstance(block, str):
            body.append(paragraph(block))
        elif isinstance(block, tuple):
            body.append(paragraph(block[1], block[0]))
        else:
            rows = "".join("<w:tr>" + "".join(f"<w:tc>{paragraph(c)}</w:tc>" for c in row) + "</w:tr>" for row in block)
            body.append(f"<w:tbl>{rows}</w:tbl>")
    document = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="{_W}"><w:body>'
        + "".join(body) + "</w:body></w:document>"
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="word/document.xml"/>'
        + (
            '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties" '
            'Target="docProps/core.xml"/>' if title is not None else ""
        )
        + "</Relationships>"
    )
    core = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" '
        f'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>{escape(title or "")}</dc:title></cp:coreProperties>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CONTENT_TYPES)
        z.writestr("_rels/.rels", rels)
        z.writestr("word/document.xml", document)
        if title is not None:
            z.writestr("docProps/core.xml", core)
        if footnotes:
            notes = [f'<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:footnote>']
            notes += [f'<w:footnote w:id="{n}">{paragraph(text)}</w:footnote>' for n, text in enumerate(footnotes, 1)]
            z.writestr("word/footnotes.xml", f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                       f'<w:footnotes xmlns:w="{_W}">{"".join(notes)}</w:footnotes>')
            z.writestr("word/_rels/document.xml.rels", (
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
                'footnotes" Target="footnotes.xml"/></Relationships>'))
    return out.getvalue()


def docx_bomb(unpacked_mib: float) -> bytes:
    """A .docx whose word/document.xml unpacks to more than `unpacked_mib` MiB, from about a
    hundredth of that (one paragraph repeated)."""
    return _docx_bomb(unpacked_mib)


@functools.lru_cache(maxsize=2)
def _docx_bomb(unpacked_mib: float) -> bytes:
    paragraph = b'<w:p><w:r><w:t xml:space="preserve">lorem ipsum</w:t></w:r></w:p>' * 16384  # 1 MiB
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(minimal_docx(["x"]))) as skeleton, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name in skeleton.namelist():
            if name != "word/document.xml":
                z.writestr(name, skeleton.read(name))
        with z.open("word/document.xml", "w", force_zip64=True) as document:
            document.write(f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{_W}"><w:body>'.encode())
            for _ in range(int(unpacked_mib) + 1):
                document.write(paragraph)
            document.write(b"</w:body></w:document>")
    return out.getvalue()


def lying_docx(actual_bytes: int = 2 * 10**6, declared_bytes: int = 1000) -> bytes:
    """A .docx whose zip directory says word/document.xml is `declared_bytes` long while it
    inflates to `actual_bytes`."""
    data = bytearray(minimal_docx(["lorem ipsum " * (actual_bytes // 12)]))
    name = b"word/document.xml"
    entry = data.index(b"PK\x01\x02")  # the zip directory's first entry
    while data[entry + 46 : entry + 46 + len(name)] != name:  # the fixed part of a directory entry is 46 bytes
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 24 : entry + 28] = declared_bytes.to_bytes(4, "little")  # its uncompressed size
    return bytes(data)


def build_hostile_corpus(root: Path, big: bool = False, max_file_mb: float = 100, max_record_mb: float = 10) -> dict[str, Any]:
    """Write every real-world and hostile case into `root`; return the outcome FilesSource must give.

    `big=True` makes the big file 50 MB, the long line 5 MB and the nested HTML 100 000 levels deep
    (default: 2 MB, 256 KB and 20 000). `max_file_mb` and `max_record_mb` are the source's limits:
    a sparse file one byte over the first and a .docx unpacking to more test 'too_large', and so do
    a JSONL line and a CSV row over the second."""
    root = Path(root).resolve()  # symlinks in the corpus point at absolute paths
    root.mkdir(parents=True, exist_ok=True)
    synced: set[str] = set()
    failed: dict[str, str] = {}
    texts: dict[str, str] = {}
    has = {extra: _installed(module) for extra, module in (("pdf", "pypdf"), ("docx", "docx"))}
    has["pdf-aes"] = has["pdf"] and (_installed("cryptography") or _installed("Crypto"))  # what pypdf's AES needs

    def put(rel: str, content: bytes | str, kind: str | None = None, text: str | None = None, extra: str | None = None,
            records: dict[str, str | None] | None = None):
        """Write a file and what it must give: a failure `kind`, else a document (with its exact
        `text` if given); a record file gives `records` instead ({doc_id or path:line N: kind or None})."""
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        if extra and not has[extra]:
            kind, text = "missing_extra", None
        for doc_id, record_kind in (records or {rel: kind}).items():
            if record_kind:
                failed[doc_id] = record_kind
            else:
                synced.add(doc_id)
        if text is not None:
            texts[rel] = text

    # --- formats that must load -------------------------------------------------------------------
    for name, (encoding, text) in ENCODED_SAMPLES.items():
        put(f"formats/{name}", text.encode(encoding), text=text.removeprefix("\ufeff"))
    for name, (encoding, markup, text) in DECLARED_HTML_SAMPLES.items():
        put(f"formats/{name}", markup.encode(encoding), text=text)
    put("formats/guide.md", "# Setup guide\n\nInstall it, then run `connector sync`.\n",
        text="# Setup guide\n\nInstall it, then run `connector sync`.\n")
    put("formats/page.html", "<html><head><title>Help</title><script>x()</script></head><body><p>Open settings.</p></body></html>",
        text="Open settings.")
    put("formats/article.html", ARTICLE_PAGE, text=ARTICLE_TEXT)
    put("formats/report.pdf", minimal_pdf(["Hello page 1", "Second page (two)"], title="Report"), extra="pdf")
    put("formats/aes-empty-password.pdf", aes_pdf(), text=AES_PDF_TEXT, extra="pdf-aes")
    put("formats/letter.docx", minimal_docx(
        [("Heading1", "Quarterly letter"), "Dear team,", [["item", "amount"], ["coffee", "12"]], "Thanks."],
        title="Q3 letter"), extra="docx", text="Quarterly letter\n\nDear team,\n\nitem | amount\ncoffee | 12\n\nThanks.")
    put("formats/notes.docx", minimal_docx(["See the note."], footnotes=["The note, read by default."]), extra="docx",
        text="See the note.\n\nThe note, read by default.")
    kb = [{"id": "kb-1", "text": "First answer", "lang": "en"}, {"id": "kb-2", "text": "Zweite Antwort", "lang": "de"}]
    put("formats/kb.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kb), records={"formats/kb.jsonl#kb-1": None, "formats/kb.jsonl#kb-2": None})
    put("formats/table.csv", 'id,title,text\ncsv-1,One,"Plain row"\ncsv-2,Two,"A text, with a comma\nand a line break"\n',
        records={"formats/table.csv#csv-1": None, "formats/table.csv#csv-2": None})
    texts["formats/table.csv#csv-2"] = "A text, with a comma\nand a line break"

    # --- hostile text that must still load ------------------------------------------------------
    big_size, line_size = (50 * 10**6, 5 * 10**6) if big else (2 * 10**6, 256 * 1024)
    _write_big(root / "hostile/big.txt", big_size)
    if big_size > max_file_mb * 1024 * 1024:
        failed["hostile/big.txt"] = "too_large"
    else:
        synced.add("hostile/big.txt")
    put("hostile/long-line.txt", ("word " * (line_size // 5)).encode("ascii"))
    for rel, text in {
        "hostile/emoji.txt": "😀🎉🚀👍🏽👨‍👩‍👧‍👦🇯🇵❤️",
        "hostile/trademarks.txt": "Acme® Widget™ and Acme® Gadget™ © 2024 ℠ " * 20,
        "hostile/zero-width-and-controls.txt": (
            "zero\u200bwidth\u200cnon\u200djoiner \u2060word\ufeffjoiner \u00adsoft; bell\x07 "
            "\x1b[31mred\x1b[0m form\x0cfeed back\x08space, plain text around them all.\n" * 4
        ),
        "hostile/rtl.txt": "English then العربية من اليمين إلى اليسار and עברית גם כן \u200fמימין לשמאל\u200f.\n",
        "hostile/mixed-zh-en.md": "# 混合 Mixed\n\n同步 sync 工具把 documents 写入 Qdrant 和 Milvus。\n",
    }.items():
        put(rel, text, text=text)
    # an <?xml ?> declaration, then a long comment before <html>: bs4 takes it for XML (and used to
    # print its warning on every sync); it is read as the HTML it is
    put("hostile/xml-declared.html", '<?xml version="1.0" encoding="utf-8"?>\n<!-- ' + "Licence header. " * 40
        + '-->\n<html xmlns="http://www.w3.org/1999/xhtml"><body><p>Declared as XML, read as HTML.</p></body></html>',
        text="Declared as XML, read as HTML.")
    # control characters in file names: doc_ids stay exact; human output shows them escaped
    put("hostile/name\n  FAILED forged.md: a line break and \x1b[31mcolour.txt", "A file with a hostile name.")

    # --- hostile input that must fail, each with its kind ---------------------------------------
    put("hostile/binary\n  FAILED forged\x1b[0m.txt", b"\x00\x01 binary behind a hostile name", "binary")
    put("hostile/binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, "binary")
    put("hostile/invalid-utf8.txt", "naïve café, 中文, Grüße — ".encode() * 4 + b"broken \xc3\x28 \xe2\x82 \xff\xfe end\n", "encoding")
    put("hostile/empty.txt", b"", "empty")
    put("hostile/whitespace-only.md", " \t\n\r\n\u3000\u00a0  \n\n", "empty")
    put("hostile/zero-width-only.txt", "\u200b\u200c\u200d\u2060\n", "empty")
    put("hostile/scripts-only.html", "<html><head><style>p{}</style></head><body><script>var a = 1;</script>"
        "<noscript>enable JS</noscript>\n</body></html>", "empty")
    put("hostile/corrupt.pdf", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n" + b"\x8f\x00garbage" * 50, "corrupt", extra="pdf")
    put("hostile/encrypted.pdf", minimal_pdf(["secret text"], encrypt_stub=True), "encrypted", extra="pdf")
    put("hostile/scanned.pdf", minimal_pdf(["", ""]), "empty", extra="pdf")
    put("hostile/corrupt.docx", b"PK\x03\x04" + b"\x14\x00garbage" * 40, "corrupt", extra="docx")
    put("hostile/bad-line.jsonl", '{"id": "jsonl-1", "text": "ok"}\n{"id": "jsonl-2", "text": \n{"id": "jsonl-3", "text": "ok too"}\n',
        records={"hostile/bad-line.jsonl#jsonl-1": None, "hostile/bad-line.jsonl:line 2": "malformed",
                 "hostile/bad-line.jsonl#jsonl-3": None})
    # records whose ids are a file's doc_id and another record's id: read before formats/guide.md,
    # they take nothing from it; the id repeated within the file fails alone, the first is kept
    impostors = [{"id": "formats/guide.md", "text": "Not the setup guide"}, {"id": "same", "text": "first"},
                 {"id": "same", "text": "second"}, {"id": "formats/kb.jsonl#kb-1", "text": "not kb-1"}]
    put("early/impostors.jsonl", "".join(json.dumps(r) + "\n" for r in impostors), records={
        "early/impostors.jsonl#formats/guide.md": None, "early/impostors.jsonl#same": None,
        "early/impostors.jsonl:line 3": "duplicate", "early/impostors.jsonl#formats/kb.jsonl#kb-1": None})
    texts["early/impostors.jsonl#same"] = "first"
    put("hostile/no-text-column.csv", "id,body\nx-1,hello\n", "malformed")
    put("hostile/bad-row.csv", "id,text\nrow-1,fine\nrow-2,too,many,fields\nrow-3,fine too\n",
        records={"hostile/bad-row.csv#row-1": None, "hostile/bad-row.csv:line 3": "malformed",
                 "hostile/bad-row.csv#row-3": None})
    # --- bounded work per document: linear time, limited memory, one failure per bad record ------
    depth = 100_000 if big else 20_000
    put("hostile/deeply-nested.html", "<html><body>" + "<div>" * depth + "deep text" + "</div>" * depth + "</body></html>",
        text="deep text")
    put("hostile/docx-bomb.docx", docx_bomb(max_file_mb), "too_large", extra="docx")
    put("hostile/docx-lying-size.docx", lying_docx(), "corrupt", extra="docx")
    put("hostile/pdf-bomb.pdf", pdf_bomb(), "corrupt", extra="pdf")
    over = int(max_record_mb * _MIB) + 1024
    put("hostile/long-record.jsonl", '{"id": "long-jsonl-1", "text": "before"}\n'
        + json.dumps({"id": "long-jsonl-2", "text": "x" * over}) + '\n{"id": "long-jsonl-3", "text": "after"}\n',
        records={"hostile/long-record.jsonl#long-jsonl-1": None, "hostile/long-record.jsonl:line 2": "too_large",
                 "hostile/long-record.jsonl#long-jsonl-3": None})
    quoted = '"' + ('he said ""hi""\n' + "y" * 1000 + "\n") * (over // 1000) + '"'  # one row of many lines
    put("hostile/long-row.csv", f"id,text\nlong-csv-1,before\nlong-csv-2,{quoted}\nlong-csv-3,after\n",
        records={"hostile/long-row.csv#long-csv-1": None, "hostile/long-row.csv:line 3": "too_large",
                 "hostile/long-row.csv#long-csv-3": None})
    too_large = root / "hostile/too-large.txt"
    with open(too_large, "wb") as f:  # sparse: takes no disk space, and the source never reads it
        f.write(b"too large\n")
        f.truncate(int(max_file_mb * 1024 * 1024) + 1)
    failed["hostile/too-large.txt"] = "too_large"
    _symlink(root / "hostile/does-not-exist.txt", root / "hostile/broken-link.txt")
    failed["hostile/broken-link.txt"] = "unreadable"
    _symlink(root / "hostile/self-link.txt", root / "hostile/self-link.txt")  # ELOOP on open
    failed["hostile/self-link.txt"] = "unreadable"
    put("hostile/loop/inside.txt", "a folder with a symlink back to its parent")
    _symlink(root / "hostile", root / "hostile/loop/parent", directory=True)  # not followed: no loop
    # symlinks out of the corpus: never opened, whether or not their targets exist here
    for rel, target in {
        "hostile/outside/passwd.txt": Path("/etc/passwd"),
        "hostile/outside/proc-status.txt": Path("/proc/self/status"),
        "hostile/outside/ssh-key.txt": Path.home() / ".ssh" / "id_ed25519",
        "hostile/outside/link-to-link.txt": root / "hostile/outside/passwd.txt",  # resolved to the end
        "hostile/outside/relative.txt": Path("../" * (len(root.parts) + 1) + "etc/hostname"),
    }.items():
        _symlink(target, root / rel)
        failed[rel] = "outside_root"
    _symlink(Path("/etc"), root / "hostile/outside/etc", directory=True)  # a folder: not followed, not listed
    return {"synced": synced, "failed": failed, "texts": texts}


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _write_big(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = (_LOREM * (1024 * 1024 // len(_LOREM) + 1)).encode("ascii")[: 1024 * 1024]
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])


def _symlink(target: Path, link: Path, directory: bool = False) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    os.symlink(target, link, target_is_directory=directory)
