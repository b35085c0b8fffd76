"""Plain text and Markdown: the encoding is detected (decoding.py), binary content is refused."""

from __future__ import annotations

import re

from connector.sources.decoding import decode_text
from connector.sources.reading import Parsed

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_H1 = re.compile(r"^\s{0,3}# +(.*?)(?:\s+#+)?\s*$")


def read_text(data: bytes) -> Parsed:
    text, encoding = decode_text(data)
    return Parsed(text, metadata=None if encoding is None else {"encoding": encoding})


def read_markdown(data: bytes) -> Parsed:
    text, encoding = decode_text(data)
    return Parsed(text, markdown_title(text), metadata=None if encoding is None else {"encoding": encoding})


def markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading ('# Title') outside fenced code blocks."""
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            match = _H1.match(line)
            if match and match.group(1).strip():
                return match.group(1).strip()
    return None
