"""Word .docx files through python-docx (the `docx` extra): paragraphs and tables, in order."""

from __future__ import annotations

import io
import re

from connector.sources.reading import Parsed, ReadFailure, one_line, optional_import

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADING_STYLE = re.compile(r"^(Heading ?\d|Title)$", re.IGNORECASE)


def read_docx(data: bytes) -> Parsed:
    """Paragraphs as blocks separated by blank lines, a table as one block of 'cell | cell' rows;
    the title from the core properties, else the first heading (or Title-styled paragraph).

    Raises ReadFailure 'corrupt', 'encrypted', 'empty' or 'missing_extra'."""
    docx = optional_import("docx", "docx", ".docx")
    if data.startswith(_OLE_MAGIC):
        # Password-protected Office files are OLE containers holding an 'EncryptedPackage' stream.
        if "EncryptedPackage".encode("utf-16-le") in data:
            raise ReadFailure("encrypted", "the .docx file is password-protected; save a copy without a password to index it")
        raise ReadFailure("corrupt", "this is an old binary Word file (.doc) named .docx; save it as .docx")
    try:
        document = docx.Document(io.BytesIO(data))
        blocks, heading = _blocks(document)
        title = _core_title(document) or heading
    except Exception as err:  # zipfile, lxml and python-docx raise many kinds of errors on damaged files
        raise ReadFailure("corrupt", f"damaged .docx file: {one_line(err)}") from None
    return Parsed("\n\n".join(blocks), title)


def _blocks(document) -> tuple[list[str], str | None]:
    from docx.table import Table

    blocks: list[str] = []
    heading = None
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = [_row_line(row) for row in item.rows]
            table = "\n".join(row for row in rows if row)
            if table:
                blocks.append(table)
            continue
        text = item.text.strip()
        if not text:
            continue
        blocks.append(text)
        if heading is None and _is_heading(item):
            heading = " ".join(text.split())
    return blocks, heading


def _row_line(row) -> str:
    """'cell | cell' with a merged cell once (python-docx repeats it for every grid column it spans)."""
    cells, previous = [], None
    for cell in row.cells:
        if cell._tc is not previous:
            cells.append(" ".join(cell.text.split()))
        previous = cell._tc
    return " | ".join(cells) if any(cells) else ""


def _is_heading(paragraph) -> bool:
    # The style id ('Heading1') is there even when the file has no styles part to name it.
    names = [paragraph._p.style or ""]
    try:
        names.append(paragraph.style.name if paragraph.style is not None else "")
    except Exception:
        pass
    return any(_HEADING_STYLE.match(name) for name in names if name)


def _core_title(document) -> str | None:
    from docx.opc.constants import RELATIONSHIP_TYPE

    try:  # without a core properties part python-docx would invent one titled 'Word Document'
        document.part.package.part_related_by(RELATIONSHIP_TYPE.CORE_PROPERTIES)
    except KeyError:
        return None
    return " ".join((document.core_properties.title or "").split()) or None
