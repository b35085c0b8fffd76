"""Word .docx files through python-docx (the `docx` extra): paragraphs and tables, in order."""

from __future__ import annotations

import io
import re
import zipfile
from typing import Callable

from connector.sources.reading import Parsed, ReadFailure, one_line, optional_import

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADING_STYLE = re.compile(r"^(Heading ?\d|Title)$", re.IGNORECASE)
_MIB = 1024 * 1024


def read_docx(data: bytes, max_unpacked_bytes: int | None = None, footnotes: bool = True,
              headers_footers: bool = False) -> Parsed:
    """Paragraphs as blocks separated by blank lines, a table as one block of 'cell | cell' rows;
    then, if asked, the footnotes and endnotes (a block each) and the distinct page headers and
    footers; the title from the core properties, else the first heading (or Title-styled paragraph).

    A .docx is a zip: when its parts unpack to more than `max_unpacked_bytes` (None: no limit)
    it fails as 'too_large' before anything is unpacked, and no part is unpacked beyond the size
    the zip declares for it. Time and memory grow linearly with the parts' size.

    Raises ReadFailure 'corrupt', 'encrypted', 'empty', 'too_large' or 'missing_extra'."""
    docx = optional_import("docx", "docx", ".docx")
    if data.startswith(_OLE_MAGIC):
        # Password-protected Office files are OLE containers holding an 'EncryptedPackage' stream.
        if "EncryptedPackage".encode("utf-16-le") in data:
            raise ReadFailure("encrypted", "the .docx file is password-protected; save a copy without a password to index it")
        raise ReadFailure("corrupt", "this is an old binary Word file (.doc) named .docx; save it as .docx")
    try:
        package = io.BytesIO(data) if max_unpacked_bytes is None else _unpacked(data, max_unpacked_bytes)
        document = docx.Document(package)
        del package
        blocks, heading = _blocks(document.iter_inner_content(), _heading_test(document))
        if footnotes:
            blocks += _notes(document)
        if headers_footers:
            blocks += _headers_footers(document)
        title = _core_title(document) or heading
    except ReadFailure:
        raise
    except Exception as err:  # zipfile, lxml and python-docx raise many kinds of errors on damaged files
        raise ReadFailure("corrupt", f"damaged .docx file: {one_line(err)}") from None
    return Parsed("\n\n".join(blocks), title)


def _unpacked(data: bytes, limit: int) -> io.BytesIO:
    """The package with every part unpacked (stored), for python-docx to read.

    Fails as 'too_large' when the sizes in the zip's directory add up to more than `limit`. Each
    part is unpacked in pieces and never beyond its declared size, so a directory that lies costs
    nothing (python-docx alone would inflate a whole part at once, then cut it to that size)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as package, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as copy:
        entries = [entry for entry in package.infolist() if not entry.is_dir()]
        total = sum(entry.file_size for entry in entries)
        if total > limit:
            biggest = max(entries, key=lambda entry: entry.file_size)
            raise ReadFailure(
                "too_large",
                f"the .docx unpacks to {total / _MIB:.1f} MiB ({biggest.filename} alone "
                f"{biggest.file_size / _MIB:.1f} MiB), over source.max_file_mb ({limit / _MIB:g}); "
                f"raise the limit or exclude the file",
            )
        for entry in entries:
            big = entry.file_size >= zipfile.ZIP64_LIMIT
            with package.open(entry) as part, copy.open(entry.filename, "w", force_zip64=big) as target:
                while piece := part.read(_MIB):  # zipfile stops at the declared size and checks the CRC there
                    target.write(piece)
    out.seek(0)
    return out


def _blocks(content, is_heading: Callable[[object], bool]) -> tuple[list[str], str | None]:
    """The blocks of `content` (paragraphs and tables, as iter_inner_content gives them), and the
    text of the first heading among them."""
    from docx.table import Table

    blocks: list[str] = []
    heading = None
    for item in content:
        if isinstance(item, Table):
            table = "\n".join(row for row in _row_lines(item) if row)
            if table:
                blocks.append(table)
            continue
        text = item.text.strip()
        if not text:
            continue
        blocks.append(text)
        if heading is None and is_heading(item):
            heading = " ".join(text.split())
    return blocks, heading


def _row_lines(table) -> list[str]:
    """'cell | cell' per row, a cell merged across columns once; a cell merged down several rows
    shows its text in the first of them only, so the text stays as long as the file's (python-docx
    repeats it in every row, finding the cell above by a recursive search: quadratic, and a
    RecursionError for a cell merged down about a thousand rows). A table nested in a cell gives
    its own rows, right after the row that holds it (python-docx's cell text leaves it out);
    tables nested however deep are walked with an explicit stack, not recursion."""
    from docx.table import _Cell

    lines = []
    rows = [iter(table._tbl.tr_lst)]  # the rows still to read, of each table being read
    while rows:
        tr = next(rows[-1], None)
        if tr is None:
            rows.pop()
            continue
        live = [tc for tc in tr.tc_lst if tc.vMerge != "continue"]
        cells = ["" if tc.vMerge == "continue" else " ".join(_Cell(tc, table).text.split()) for tc in tr.tc_lst]
        lines.append(" | ".join(cells) if any(cells) else "")
        nested = [tbl for tc in live for tbl in tc.tbl_lst]
        rows.extend(iter(tbl.tr_lst) for tbl in reversed(nested))
    return lines


_NOTE_PARTS = ("footnotes", "endnotes")
_NOT_NOTES = {"separator", "continuationSeparator", "continuationNotice"}  # the rule above the notes, ...


def _notes(document) -> list[str]:
    """Footnotes, then endnotes, a block each (python-docx does not read them)."""
    from docx.opc.constants import RELATIONSHIP_TYPE
    from docx.oxml.ns import qn
    from docx.oxml.parser import parse_xml

    blocks = []
    for name in _NOTE_PARTS:
        try:
            part = document.part.part_related_by(getattr(RELATIONSHIP_TYPE, name.upper()))
        except KeyError:
            continue
        for note in parse_xml(part.blob).iterchildren(qn(f"w:{name[:-1]}")):
            if note.get(qn("w:type")) in _NOT_NOTES:
                continue
            paragraphs = ("".join(t.text or "" for t in p.iter(qn("w:t"))) for p in note.iter(qn("w:p")))
            text = "\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
            if text:
                blocks.append(text)
    return blocks


def _headers_footers(document) -> list[str]:
    """The blocks of every page header and footer (first-page and even-page ones too), each
    distinct block once: sections usually repeat them."""
    seen: dict[str, None] = {}
    for section in document.sections:
        for part in (section.first_page_header, section.header, section.even_page_header,
                     section.first_page_footer, section.footer, section.even_page_footer):
            if part.is_linked_to_previous:  # no part of its own: the previous section's, already read
                continue
            for block in _blocks(part.iter_inner_content(), lambda paragraph: False)[0]:
                seen.setdefault(block)
    return list(seen)


def _heading_test(document) -> Callable[[object], bool]:
    """Whether a paragraph is a heading: its style id or its style's name is 'Heading N' or 'Title'.

    The styles are indexed once (python-docx searches every style for every paragraph). As in
    python-docx, an unknown id, or one of a style that is not a paragraph style, means the
    default paragraph style; the id alone counts when the file has no styles part to name it."""
    from docx.enum.style import WD_STYLE_TYPE
    from docx.styles import BabelFish

    names: dict[str, str | None] = {}  # style id -> name, for paragraph styles
    default = ""
    try:
        seen = set()
        for style in document.styles.element.style_lst:
            if style.styleId in seen:
                continue  # the first style with an id wins
            seen.add(style.styleId)
            if style.type == WD_STYLE_TYPE.PARAGRAPH:
                names[style.styleId] = BabelFish.internal2ui(style.name_val) if style.name_val is not None else None
        default_style = document.styles.default(WD_STYLE_TYPE.PARAGRAPH)
        default = (default_style.name or "") if default_style is not None else ""
    except Exception:  # a damaged styles part costs the style names, not the document
        names, default = {}, ""

    def is_heading(paragraph) -> bool:
        style_id = paragraph._p.style
        name = names.get(style_id, default) if style_id else default
        return any(_HEADING_STYLE.match(candidate) for candidate in (style_id, name) if candidate)

    return is_heading


def _core_title(document) -> str | None:
    from docx.opc.constants import RELATIONSHIP_TYPE

    try:  # without a core properties part python-docx would invent one titled 'Word Document'
        document.part.package.part_related_by(RELATIONSHIP_TYPE.CORE_PROPERTIES)
    except KeyError:
        return None
    return " ".join((document.core_properties.title or "").split()) or None
