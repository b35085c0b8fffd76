"""Plain text and Markdown: the encoding is detected, binary content is refused."""

from __future__ import annotations

import codecs
import re

from connector.sources.reading import Parsed, ReadFailure, binary_reason

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# When charset-normalizer finds several encodings equally likely (common for short texts in a
# single-byte encoding), the first of these that fits wins: the encodings real files are in.
_PREFERRED = (
    "cp1252", "latin_1", "gb18030", "big5", "cp932", "shift_jis", "euc_jp", "euc_kr", "cp949",
    "cp1251", "cp1250", "koi8_r", "iso8859_15",
)
# charset-normalizer's mess ratio (0 = clean text) above which a guess is too poor to index.
MAX_CHAOS = 0.1
_DETECT_BYTES = 1024 * 1024
_MESS_CHARS = 64 * 1024
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_H1 = re.compile(r"^\s{0,3}# +(.*?)(?:\s+#+)?\s*$")


def read_text(data: bytes) -> Parsed:
    text, encoding = decode_text(data)
    return Parsed(text, metadata=None if encoding is None else {"encoding": encoding})


def read_markdown(data: bytes) -> Parsed:
    text, encoding = decode_text(data)
    return Parsed(text, markdown_title(text), metadata=None if encoding is None else {"encoding": encoding})


def decode_text(data: bytes) -> tuple[str, str | None]:
    """(text, encoding) of a text file's bytes; the encoding is None for UTF-8 (with or without BOM).

    A byte order mark decides; then UTF-8; then charset-normalizer's best guess, if it is a good
    one. Raises ReadFailure 'binary' or 'encoding'."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as err:
                raise ReadFailure("encoding", f"not valid {codec.upper()} despite its byte order mark: {err.reason} at byte {err.start}") from None
            if codec != "utf-8-sig" and _mess(text) > MAX_CHAOS:
                # Any even number of bytes decodes as UTF-16: a mark at the start is not proof.
                raise ReadFailure(
                    "encoding", f"starts with a {codec.upper()} byte order mark but is not {codec.upper()} text; save the file as UTF-8"
                )
            return text.removeprefix("\ufeff"), None if codec == "utf-8-sig" else codec
    reason = binary_reason(data)
    if reason:
        raise ReadFailure("binary", reason)
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as err:
        first = f"byte 0x{data[err.start]:02x} at offset {err.start}"
    # Mostly valid multi-byte UTF-8 with a few bad bytes: a damaged UTF-8 file, not another encoding.
    replaced = data.decode("utf-8", "replace")
    bad = replaced.count("\ufffd")
    valid_non_ascii = len(replaced) - len(replaced.encode("ascii", "ignore")) - bad
    if valid_non_ascii >= 3 * bad:
        raise ReadFailure(
            "encoding",
            f"damaged UTF-8: {bad} invalid byte sequence(s), the first is {first}; repair the file or save it again as UTF-8",
        )
    encoding = _guess_encoding(data)
    if encoding is None:
        raise ReadFailure("encoding", f"not valid UTF-8 ({first}) and no other encoding fits; save the file as UTF-8")
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as err:
        raise ReadFailure(
            "encoding", f"not valid UTF-8 ({first}) nor {encoding} (byte {err.start}); save the file as UTF-8"
        ) from None


def _guess_encoding(data: bytes) -> str | None:
    from charset_normalizer import from_bytes

    if len(data) > _DETECT_BYTES:  # the guess is made on the first lines; the whole file must decode
        cut = data.rfind(b"\n", 0, _DETECT_BYTES)
        data = data[: cut + 1 if cut > 0 else _DETECT_BYTES]
    matches = list(from_bytes(data))
    if not matches:
        return None
    best = matches[0]
    if best.chaos > MAX_CHAOS:
        return None
    tied = [m for m in matches if m.chaos <= best.chaos + 0.01 and m.coherence >= best.coherence - 0.05]
    for preferred in _PREFERRED:
        for match in tied:
            if preferred in match.could_be_from_charset:
                return preferred
    return best.encoding


def _mess(text: str) -> float:
    """charset-normalizer's mess ratio of the start of a text: 0 for real text, over 1 for noise."""
    from charset_normalizer.md import mess_ratio

    return mess_ratio(text[:_MESS_CHARS], maximum_threshold=1.0)


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
