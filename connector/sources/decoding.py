"""Decoding a file's bytes as a careful reader would: exactly, or not at all.

The signals, strongest first: a byte order mark; NUL bytes in the pattern of UTF-16 or UTF-32;
ISO-2022 escape sequences (ESC $ B, ESC $ ) C, ...); UTF-8; HZ's `~{ ... ~}`; the charset the
file declares (HTML <meta>, <?xml encoding?>, passed in by the caller); then detection, where
every plausible codec decodes the bytes strictly and the readings are compared: the one with the
fewest unlikely characters wins, and two different readings that are about as plausible are
refused. A text that no reading fits, or that two fit, fails as 'encoding': it is never stored
as mojibake.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from connector.sources.reading import ReadFailure, binary_reason

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_WIDE_UNICODE = ("utf_32_le", "utf_32_be", "utf_16_le", "utf_16_be")
# An ISO-2022 designation of a double-byte set (ESC $ @, ESC $ B, ESC $ A, ESC $ ( D, ESC $ ) C, ...).
# ESC ( B alone (tput's reset) and ANSI colours (ESC [) are not ISO-2022 text.
_ISO2022_DESIGNATION = re.compile(rb"\x1b\$(?:[@AB]|[()][A-Z])")
_ISO2022_CODECS = ("iso2022_jp", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3", "iso2022_jp_ext", "iso2022_kr")
_HZ_SHIFT = re.compile(rb"~\{([\x21-\x7e]{2})+~\}")
# Multi-byte legacy codecs, each tried on bytes that are not UTF-8 (charset-normalizer often has
# no candidate for them, or calls them by a narrower name). Supersets first: same text, wider net.
_CJK_CODECS = ("cp932", "shift_jis", "euc_jis_2004", "euc_jp", "cp949", "euc_kr", "johab",
               "big5hkscs", "cp950", "big5", "gb18030")
# When charset-normalizer finds several encodings equally likely (common for short texts in a
# single-byte encoding), the first of these that fits wins: the encodings real files are in.
_PREFERRED = (
    "cp1252", "latin_1", "gb18030", "big5", "cp932", "shift_jis", "euc_jp", "euc_kr", "cp949",
    "cp1251", "cp1250", "koi8_r", "iso8859_15",
)
# <?xml ... encoding="..."?>, <meta charset="...">, <meta http-equiv=... content="...; charset=...">
_DECLARATION = re.compile(
    rb"""<\?xml[^>]*?encoding\s*=\s*["']([\w.:-]+)["']"""
    rb"""|<meta[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)""",
    re.IGNORECASE,
)
# Python knows transforms and escapes by these names too: no page is written in them.
_NOT_CHARSETS = {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "utf_7"}
# The WHATWG rule browsers follow: a page declared as ASCII or Latin-1 is read as windows-1252.
_DECLARED_ALIASES = {"ascii": "cp1252", "iso8859_1": "cp1252"}
_LANGUAGE_OF_CODEC = {
    **dict.fromkeys(("cp932", "shift_jis", "shift_jis_2004", "euc_jp", "euc_jis_2004", "iso2022_jp"), "ja"),
    **dict.fromkeys(("cp949", "euc_kr", "johab", "iso2022_kr"), "ko"),
    **dict.fromkeys(("gb18030", "gbk", "gb2312", "hz", "big5", "cp950", "big5hkscs"), "zh"),
}
# The most frequent characters of written Chinese (simplified and traditional, and Cantonese's own):
# in real Chinese text they are a third of all characters; in other bytes read as Chinese, a few.
# (Not the simplest kanji: EUC-JP's kana read as Big5 are Big5's first, fewest-stroke characters.)
_FREQUENT_HAN = frozenset(
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
    "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实"
    "這個們來為國說時會對過發後裡麼經現當沒動還進樣開實從點長間體總與問題關係區電話"
    "嘅咗佢哋唔係喺啲嗰冇乜嘢咁噉嚟睇"
)
# Hiragana that Japanese text hardly uses (small vowels, obsolete kana, p-sounds: loanwords are in
# katakana); EUC-KR's composed syllables read as EUC-JP start with 'ぴ'.
_RARE_HIRAGANA = frozenset("ぁぃぅぇぉゎゐゑゔゕゖぱぴぷぺぽ")
# The most frequent hiragana (particles and endings) and Hangul syllables.
_FREQUENT_HIRAGANA = frozenset("のにるたとはしいをでてがなれからさっりすあもこまうくよきんめおけそつだ")
_FREQUENT_HANGUL = frozenset(
    "이다에의는로하을가고지서한은기으년대사시를리도인스일자수정아어나게요니있해적전부성주상제연과국세보여와"
    "들것만무장실동라내비원소조생경마우계화위진신안오었면문선개구결관트드공습"
)
# Real text has at least this share of its language's frequent characters above.
_MIN_FREQUENT = 0.2
_MAX_HANJA = 0.25
_REPEATED_JAMO = re.compile(r"([\u3131-\u318e])\1")
# One Chinese character inside a Hangul word: hanja words are written whole (文書, 大韓民國).
_LONE_HANJA = re.compile(r"(?<=[\uac00-\ud7a3])[\u4e00-\u9fff](?=[\uac00-\ud7a3])")
# What a reading in another language than its codec's costs: a kanji-only Japanese title alone
# may pass, but it loses to any clean reading in the right language.
_LANGUAGE_MISMATCH = 0.5
# A reading whose unlikeliness (unlikely characters per non-ASCII character, plus
# charset-normalizer's mess ratio) is above this is not text in that encoding.
MAX_UNLIKELINESS = 0.25
# Text behind a UTF-16/32 byte order mark with a higher mess ratio is noise with a mark.
_MAX_BOM_MESS = 0.1
# Two different readings whose unlikeliness differs by less than this are equally plausible.
AMBIGUITY_MARGIN = 0.03
# Ideographs (unified, extensions A to H, compatibility) and the iteration marks 々 〆 〇.
_HAN_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x3134F), (0xF900, 0xFAFF), (0x3005, 0x3007))
_DETECT_BYTES = 1024 * 1024
# Control characters no text holds (tab, line breaks, form feed and escape are text).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_MESS_CHARS = 64 * 1024


def decode_text(data: bytes, declared: str | None = None) -> tuple[str, str | None]:
    """(text, encoding) of a text file's bytes; the encoding is None for UTF-8 (with or without BOM).

    `declared` is the charset the file names itself (HTML/XML), if any. Raises ReadFailure
    'binary' or 'encoding'."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return _decode_with_bom(data, codec)
    if b"\x00" in data:
        return _wide_unicode(data)
    if _ISO2022_DESIGNATION.search(data) and data.isascii():
        return _iso2022(data)
    reason = binary_reason(data)
    if reason:
        raise ReadFailure("binary", reason)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        first = f"byte 0x{data[err.start]:02x} at offset {err.start}"
    else:
        return (text, None) if not _HZ_SHIFT.search(data) else _hz_or_ascii(data, text)
    _refuse_damaged_utf8(data, first)
    return _legacy(data, declared, first)


def declared_charset(data: bytes) -> str | None:
    """The codec an HTML or XML file declares in its first 4 KB (<meta charset>, <meta
    http-equiv="Content-Type" content="...; charset=...">, <?xml ... encoding="..."?>), read as
    ASCII; None if it declares none, or one Python does not know."""
    head = data[:4096].replace(b"\x00", b"")  # UTF-16/32 markup without a BOM reads as ASCII too
    match = _DECLARATION.search(head)
    if not match:
        return None
    label = (match.group(1) or match.group(2)).decode("ascii", "replace")
    try:
        info = codecs.lookup(label)
    except LookupError:
        return None
    name = info.name.replace("-", "_")
    return None if not info._is_text_encoding or name in _NOT_CHARSETS else name



def _decode_with_bom(data: bytes, codec: str) -> tuple[str, str | None]:
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as err:
        raise ReadFailure("encoding", f"not valid {codec.upper()} despite its byte order mark: {err.reason} at byte {err.start}") from None
    if codec != "utf-8-sig" and mess(text) > _MAX_BOM_MESS:
        # Any even number of bytes decodes as UTF-16: a mark at the start is not proof.
        raise ReadFailure(
            "encoding", f"starts with a {codec.upper()} byte order mark but is not {codec.upper()} text; save the file as UTF-8"
        )
    return text.removeprefix("\ufeff"), None if codec == "utf-8-sig" else codec


def _wide_unicode(data: bytes) -> tuple[str, str | None]:
    """UTF-16 or UTF-32 without a byte order mark (their NUL bytes are the sign), else binary.
    The start of the file picks the codec (binary files are big); then the whole must decode."""
    head = data[:_DETECT_BYTES]
    readings = []
    for codec in _WIDE_UNICODE:
        try:
            text = codecs.getincrementaldecoder(codec)().decode(head, final=len(head) == len(data))
        except UnicodeDecodeError:
            continue
        if not _CONTROL_CHARACTERS.search(text):
            readings.append(_Reading(codec, text, unlikeliness(text)))
    best = _best(readings)
    if best is None or best.unlikeliness > MAX_UNLIKELINESS:
        raise ReadFailure("binary", binary_reason(data) or "binary content, not text")
    try:
        return data.decode(best.codec), best.codec
    except UnicodeDecodeError as err:
        raise ReadFailure("encoding", f"starts as {best.codec.upper()} text but is not valid {best.codec.upper()} at byte {err.start}; save the file as UTF-8") from None


def _iso2022(data: bytes) -> tuple[str, str]:
    korean = b"\x1b$)C" in data  # ISO-2022-KR's one designation; the Japanese codecs would misread it
    readings = _readings(data, ("iso2022_kr",) if korean else _ISO2022_CODECS[:-1])
    if not readings:
        raise ReadFailure(
            "encoding", "has ISO-2022 escape sequences but is not valid ISO-2022-JP or ISO-2022-KR; save the file as UTF-8"
        )
    return readings[0].text, readings[0].codec  # the codecs are supersets of each other: the first is exact


def _hz_or_ascii(data: bytes, ascii_text: str) -> tuple[str, str | None]:
    """ASCII with `~{ ... ~}` shifts: HZ-encoded Chinese if the shifted parts read as Chinese."""
    readings = _readings(data, ("hz",))
    if readings and readings[0].unlikeliness <= MAX_UNLIKELINESS and _has_han(readings[0].text):
        return readings[0].text, "hz"
    return ascii_text, None


def _refuse_damaged_utf8(data: bytes, first: str) -> None:
    """Mostly valid multi-byte UTF-8 with a few bad bytes: a damaged UTF-8 file, not another encoding."""
    replaced = data.decode("utf-8", "replace")
    bad = replaced.count("\ufffd")
    valid_non_ascii = len(replaced) - len(replaced.encode("ascii", "ignore")) - bad
    if valid_non_ascii >= 3 * bad:
        raise ReadFailure(
            "encoding",
            f"damaged UTF-8: {bad} invalid byte sequence(s), the first is {first}; repair the file or save it again as UTF-8",
        )


def _legacy(data: bytes, declared: str | None, first: str) -> tuple[str, str]:
    """A legacy (non-Unicode) encoding: the declared one if it reads well, else the best reading."""
    declared = _DECLARED_ALIASES.get(declared, declared)
    if declared and not declared.startswith(("utf_16", "utf_32", "utf_8")):  # bytes without NULs are not UTF-16
        try:
            text = data.decode(declared)
        except (UnicodeDecodeError, LookupError):
            pass
        else:  # the file's own word: only noise overrules it
            if unlikeliness(text) <= MAX_UNLIKELINESS:
                return text, declared
    readings = _readings(data, _CJK_CODECS + _charset_normalizer_guess(data))
    best = _best(readings)
    if best is None or best.unlikeliness > MAX_UNLIKELINESS:
        raise ReadFailure("encoding", f"not valid UTF-8 ({first}) and no other encoding fits; save the file as UTF-8")
    rival = _best([r for r in readings if r.text != best.text])
    # the fewer characters, the weaker the evidence: a short text needs a clearer lead
    margin = AMBIGUITY_MARGIN + 0.5 / max(1, sum(ord(c) > 0x7F for c in best.text[:_MESS_CHARS]))
    if rival is not None and rival.unlikeliness - best.unlikeliness < margin:
        raise ReadFailure(
            "encoding",
            f"not valid UTF-8 ({first}); it reads as {best.codec} or as {rival.codec}, with different text; "
            f"save the file as UTF-8",
        )
    return best.text, best.codec


@dataclass(frozen=True)
class _Reading:
    codec: str
    text: str
    unlikeliness: float


def _readings(data: bytes, codecs_: tuple[str, ...]) -> list[_Reading]:
    """The strict decodings of the data, one per codec that decodes it, in the order given."""
    out: list[_Reading] = []
    for codec in dict.fromkeys(codecs_):
        try:
            text = data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        out.append(_Reading(codec, text, unlikeliness(text, _LANGUAGE_OF_CODEC.get(codecs.lookup(codec).name))))
    return out


def _best(readings: list[_Reading]) -> _Reading | None:
    """The most plausible reading; among equals the earliest (min keeps the first)."""
    return min(readings, key=lambda r: round(r.unlikeliness, 3), default=None)


def _charset_normalizer_guess(data: bytes) -> tuple[str, ...]:
    """charset-normalizer's best guess, as a tuple of at most one codec (single-byte encodings are its
    strength: it weighs letter frequencies per language)."""
    from charset_normalizer import from_bytes

    if len(data) > _DETECT_BYTES:  # the guess is made on the first lines; the whole file must decode
        cut = data.rfind(b"\n", 0, _DETECT_BYTES)
        data = data[: cut + 1 if cut > 0 else _DETECT_BYTES]
    matches = list(from_bytes(data))
    if not matches:
        return ()
    best = matches[0]
    tied = [m for m in matches if m.chaos <= best.chaos + 0.01 and m.coherence >= best.coherence - 0.05]
    for preferred in _PREFERRED:
        for match in tied:
            if preferred in match.could_be_from_charset:
                return (preferred,)
    return (best.encoding,)


def mess(text: str) -> float:
    """charset-normalizer's mess ratio of the start of a text: 0 for real text, over 1 for noise."""
    from charset_normalizer.md import mess_ratio

    return mess_ratio(text[:_MESS_CHARS], maximum_threshold=1.0)


def unlikeliness(text: str, language: str | None = None) -> float:
    """How unlike real text a decoding is: 0 for clean text. The share of its non-ASCII characters
    that real text rarely holds (see `_unlikely_characters`), plus, for Chinese, Japanese and
    Korean, a penalty if the text is not in the `language` its codec is made for (EUC-KR bytes read as
    GB2312 give pure Chinese characters, EUC-JP bytes read as GB2312 keep their kana), and for
    other text charset-normalizer's mess ratio."""
    sample = text[:_MESS_CHARS]
    non_ascii = [c for c in sample if ord(c) > 0x7F]
    if not non_ascii:
        return mess(sample)
    share = _unlikely_characters(non_ascii, sample) / len(non_ascii)
    if not _is_cjk(non_ascii):
        return share + mess(sample)
    # charset-normalizer's mess detector flags real Japanese ('色々な') and Korean: not used here
    found = _cjk_language(non_ascii)
    if language and found != language:
        return share + _LANGUAGE_MISMATCH
    han = [c for c in non_ascii if _script(c) == "han"]
    # real text is largely made of its language's most frequent characters; a misreading is not
    if found == "zh":
        share += _infrequency(han, _FREQUENT_HAN)
    elif found == "ja":
        share += _infrequency([c for c in non_ascii if "\u3041" <= c <= "\u309f"], _FREQUENT_HIRAGANA)
    else:  # Korean is written in Hangul, with a few words in Chinese characters (hanja)
        share += _infrequency([c for c in non_ascii if _script(c) == "hangul"], _FREQUENT_HANGUL)
        share += max(0.0, len(han) / len(non_ascii) - _MAX_HANJA) * 2
        share += len(_LONE_HANJA.findall(sample)) / len(non_ascii)
    rare = sum(1 for c in han if c not in _FREQUENT_HAN and not _common_ideograph(c, found))
    return share + 0.5 * rare / len(non_ascii)


def _infrequency(chars: list[str], frequent: frozenset[str]) -> float:
    """How far the share of frequent characters falls short of what real text has (0 to 0.4),
    weighted by how many characters there are to judge (a few say little)."""
    if not chars:
        return 0.0
    found = sum(c in frequent for c in chars) / len(chars)
    return max(0.0, _MIN_FREQUENT - found) * 2 * min(1.0, len(chars) / 10)


def _cjk_language(chars: list[str]) -> str:
    """'ko' for text mostly in Hangul, 'ja' for text with kana, else 'zh'."""
    scripts = [_script(c) for c in chars]
    cjk = sum(s in ("han", "kana", "hangul") for s in scripts)
    if scripts.count("hangul") * 2 > cjk:
        return "ko"
    return "ja" if scripts.count("kana") * 5 >= cjk else "zh"


def _unlikely_characters(non_ascii: list[str], sample: str) -> float:
    """Weighted count of characters that a wrong decoding produces and real text rarely holds:
    controls, private-use and unassigned code points; lone Hangul jamo and half-width forms
    (what Korean or Japanese bytes read with the wrong codec turn into); Hangul syllables outside
    the 2 350 of KS X 1001 (rare ideographs are counted by `unlikeliness`); rare hiragana; letters of
    a second script beside the text's main one (kana in Korean); and accented Latin letters
    strung together with no ASCII letter between them (CJK bytes read as a single-byte code)."""
    scripts = [_script(c) for c in non_ascii]
    counts = {s: scripts.count(s) for s in set(scripts) if s not in ("han", "other")}
    main = max(counts, key=counts.get, default=None)
    repeated_jamo = set(_REPEATED_JAMO.findall(sample))
    unlikely = 0.0
    for char, script in zip(non_ascii, scripts):
        category = unicodedata.category(char)
        if category in ("Cc", "Co", "Cn", "Cs") or "\uff61" <= char <= "\uffdc":
            unlikely += 1
        elif "\u3131" <= char <= "\u318e":  # a lone jamo; repeated ones are chat ('ㅋㅋ', 'ㅠㅠ')
            unlikely += 0 if char in repeated_jamo else 1
        elif script == "hangul" and not _common_hangul(char):
            unlikely += 0.5
        elif char in _RARE_HIRAGANA:
            unlikely += 1
        elif script not in ("han", "other", main) and not (script == "latin" and main is None):
            unlikely += 1
    if main == "latin":
        unlikely += sum(1 for a, b in zip(sample, sample[1:]) if _accented(a) and _accented(b))
    return unlikely


def _script(char: str) -> str:
    code = ord(char)
    if 0x3040 <= code <= 0x30FF:
        return "kana"
    if 0xAC00 <= code <= 0xD7A3:
        return "hangul"
    if any(low <= code <= high for low, high in _HAN_RANGES):
        return "han"
    if not unicodedata.category(char).startswith("L"):
        return "other"
    name = unicodedata.name(char, "")
    for script in ("LATIN", "CYRILLIC", "GREEK", "HEBREW", "ARABIC", "THAI", "DEVANAGARI"):
        if name.startswith(script):
            return script.lower()
    return "other-letter"


def _accented(char: str) -> bool:
    return ord(char) > 0x7F and unicodedata.category(char).startswith("L") and unicodedata.name(char, "").startswith("LATIN")


@lru_cache(maxsize=65536)
def _common_ideograph(char: str, language: str) -> bool:
    """In the set of frequently used ideographs of the language's national standards: GB2312's
    and Big5's first levels (Chinese), JIS X 0208's first level (Japanese), KS X 1001's hanja."""
    if language == "ja":
        return 0xB0 <= _first_byte(char, "euc_jp") <= 0xCF
    if language == "ko":
        return 0xCA <= _first_byte(char, "euc_kr") <= 0xFD
    return 0xB0 <= _first_byte(char, "gb2312") <= 0xD7 or 0xA440 <= int.from_bytes(_encoded(char, "cp950"), "big") <= 0xC67E


@lru_cache(maxsize=16384)
def _common_hangul(char: str) -> bool:
    """One of the 2 350 Hangul syllables of KS X 1001 (what Korean text is mostly made of)."""
    return _encodes_in_two_bytes(char, "euc_kr")


def _encodes_in_two_bytes(char: str, codec: str) -> bool:
    return len(_encoded(char, codec)) == 2


def _first_byte(char: str, codec: str) -> int:
    encoded = _encoded(char, codec)
    return encoded[0] if len(encoded) == 2 else 0


def _encoded(char: str, codec: str) -> bytes:
    try:
        return char.encode(codec)
    except UnicodeEncodeError:
        return b""


def _is_cjk(chars: list[str]) -> bool:
    """Whether most of these characters are ideographs, kana or Hangul."""
    return sum(_script(c) in ("han", "kana", "hangul") for c in chars) * 2 > len(chars)


def _has_han(text: str) -> bool:
    return any(_script(c) == "han" for c in text)
