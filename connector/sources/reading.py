"""What the format readers of FilesSource share: the failure they raise and a few byte checks."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType

from connector.records import FAILURE_KINDS, Section

# Bytes that no text file holds in numbers: C0 controls other than tab, line feed, vertical tab,
# form feed, carriage return and escape (ANSI colours in logs are text).
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27)) + b"\x7f"
# A text with nothing but these is empty: whitespace, C0/C1 controls, soft hyphen, zero-width
# and direction marks, word joiners, BOM.
_VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
SNIFF_BYTES = 8192


class ReadFailure(Exception):
    """A file (or record) that cannot be read: `kind` is one of FAILURE_KINDS, `reason` one line."""

    def __init__(self, kind: str, reason: str):
        assert kind in FAILURE_KINDS, kind
        super().__init__(reason)
        self.kind = kind
        self.reason = " ".join(reason.split())


@dataclass(frozen=True)
class Parsed:
    """What a format reader makes of one file."""

    text: str
    title: str | None = None
    sections: tuple[Section, ...] = ()
    metadata: dict | None = None  # format-specific extras, e.g. {"page_count": 3}


def optional_import(module: str, extra: str, suffix: str) -> ModuleType:
    """Import an optional dependency, or fail the file with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ReadFailure(
            "missing_extra",
            f"reading {suffix} files needs the {module} package; install it with: pip install \"connector[{extra}]\"",
        ) from None


def one_line(err: BaseException) -> str:
    detail = getattr(err, "strerror", None) or str(err)
    text = f"{type(err).__name__}: {detail}" if detail else type(err).__name__  # MemoryError() has no message
    return " ".join(text.split())[:300]


def has_visible_text(text: str) -> bool:
    """Whether the text has anything besides whitespace, control and zero-width characters."""
    return _VISIBLE.search(text) is not None


def binary_reason(data: bytes) -> str | None:
    """Why the bytes look binary rather than text (a NUL byte, or many control bytes at the start), else None.

    Call it only on data without a UTF-16/UTF-32 byte order mark: those encodings hold NUL bytes."""
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"binary content (a NUL byte at offset {nul}), not text"
    sample = data[:SNIFF_BYTES]
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if sample and controls / len(sample) > 0.1:
        return f"binary content ({controls} control bytes in the first {len(sample)}), not text"
    return None
