"""PDF files through pypdf (the `pdf` extra): one section per page that has text."""

from __future__ import annotations

import io
import logging
import re

from connector.records import Section
from connector.sources.reading import Parsed, ReadFailure, one_line, optional_import


# pypdf logs a warning for every flaw it repairs; without logging configured, Python would print
# them on stderr. A NullHandler keeps them out of the output, and configured handlers still get them.
logging.getLogger("pypdf").addHandler(logging.NullHandler())
# The first pypdf with limits on every decoded stream (keep in step with pyproject's `pdf` extra).
_BOUNDED_PYPDF = (6, 10, 2)

_NO_AES = (
    "the PDF is AES-encrypted and reading it needs the cryptography package, which the pdf extra "
    'brings; install it with: pip install "connector[pdf]"'
)


def read_pdf(data: bytes) -> Parsed:
    """Pages as sections ({"page": n}, 1-based; pages without text are left out), the text being
    their texts joined by blank lines, the title from the document info.

    An encrypted PDF is opened with the empty user password (encrypted only against editing or
    printing: anyone can read it). Raises ReadFailure 'corrupt', 'encrypted' (a user password is
    set), 'empty' (no text layer) or 'missing_extra' (pypdf, or the cryptography package that
    AES-encrypted PDFs need, is not installed)."""
    pypdf = optional_import("pypdf", "pdf", ".pdf")
    if _release(pypdf.__version__) < _BOUNDED_PYPDF:
        raise ReadFailure(
            "missing_extra",
            f"pypdf {pypdf.__version__} does not bound decompressed streams (a small PDF could take all memory); "
            f'reading .pdf files needs pypdf >= {".".join(map(str, _BOUNDED_PYPDF))}: pip install -U "connector[pdf]"',
        )
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and _decrypt(reader, pypdf) is None:
            raise ReadFailure("encrypted", "the PDF is password-protected; save a copy without a password to index it")
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").strip()
            if text:
                sections.append(Section(text, {"page": number}))
        page_count = len(reader.pages)
        title = _title(reader)
    except ReadFailure:
        raise
    except pypdf.errors.DependencyError as err:  # raised wherever pypdf first decrypts AES data
        raise ReadFailure("missing_extra", _NO_AES + f" ({one_line(err)})") from None
    except pypdf.errors.FileNotDecryptedError:
        raise ReadFailure("encrypted", "the PDF is password-protected; save a copy without a password to index it") from None
    except Exception as err:  # pypdf raises many kinds of errors on damaged files
        raise ReadFailure("corrupt", f"damaged PDF: {one_line(err)}") from None
    if not sections:
        raise ReadFailure("empty", f"no text in the PDF's {page_count} page(s) (a scan without a text layer?); run OCR on it first")
    text = "\n\n".join(section.text for section in sections)
    return Parsed(text, title, tuple(sections), {"page_count": page_count})


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(number) for number in re.findall(r"\d+", version)[:3])


def _decrypt(reader, pypdf):
    """Open a PDF with the empty user password; None if it needs a real one."""
    result = reader.decrypt("")
    return None if result == pypdf.PasswordType.NOT_DECRYPTED else result


def _title(reader) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # a damaged info dictionary costs the title, not the document
        return None
    return " ".join(str(title).split()) or None if title else None
