"""Text cleaning applied to every document before chunking, and to every query before encoding.

Steps 2-5 (character cleaning) apply to both; the rules (`drop_symbols`, `abbreviations`) apply
only to the texts their scope names (`drop_symbols_scope`, `abbreviations_scope`: queries,
documents or both). The steps, in order:

1. remove the configured `drop_symbols` (before NFKC, which would turn '™' into 'TM');
2. normalise line endings (\\r\\n, \\r, NEL, U+2028 to \\n; U+2029 to a blank line; form feed and
   vertical tab to \\n);
3. remove control characters (category Cc, except \\n and \\t), format characters (Cf: zero-width
   space/joiners, U+2060, BOM, soft hyphen, bidi marks, ...) and lone surrogates (Cs, which
   cannot be written as UTF-8);
4. Unicode NFKC (if `normalize_unicode`); steps 1-4 repeat while a drop symbol reappears
   (NFKC or a removed zero-width character can form one);
5. fold runs of spaces and tabs into one space, strip spaces at both ends of every line, fold
   three or more newlines into one blank line (paragraph breaks survive), strip the ends;
6. expand abbreviations: words standing alone only (after the start, a space or an opening
   bracket or quote; before the end, a space, a closing bracket or quote, or . , ; : ! ?), so
   that 'u' expands in "thank u!" but not in `git add -u`, '%u' or 'u_id'; case-insensitive,
   longest key first; then step 5 again, to tidy what an empty expansion leaves behind.

Invisible characters go before NFKC on purpose: removing a zero-width space between 'e' and a
combining accent after NFKC would leave a string that NFKC changes again, so the result would
not be idempotent. Removing joiners (U+200C/U+200D) splits emoji ZWJ sequences and changes the
spelling of some Persian and Indic words; that is accepted for search text.

`Normalizer` is idempotent (`n(n(x)) == n(x)`) as long as no abbreviation value contains an
abbreviation key as a whole word (e.g. {u: 'u you'} expands again on every pass), forms a
drop symbol together with its neighbours, or is empty and so joins words into a new key.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import Literal

from connector.config import PreprocessConfig
from connector.preprocess.base import Preprocessor

_LINE_ENDINGS = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
_LINE_ENDING_REPLACEMENT = {"\u2029": "\n\n"}
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _char_class(categories: tuple[str, ...], keep: str = "") -> str:
    """A regex character class of every code point in the given Unicode categories."""
    ranges: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch in keep or unicodedata.category(ch) not in categories:
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    parts = []
    for lo, hi in ranges:
        part = re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        parts.append(part)
    return "[" + "".join(parts) + "]"


@functools.lru_cache(maxsize=None)
def _invisible_pattern() -> re.Pattern[str]:
    # Built once per process (scans every code point, ~0.3 s).
    return re.compile(_char_class(("Cc", "Cf", "Cs"), keep="\n\t") + "+")


# What may stand right before and right after an abbreviation (besides the start and end of the
# text): anything else ('-u', '%u', 'u_id', 'u' + a combining mark) makes it part of something longer.
_OPENERS = "\\s([{\"'«“‘"
_CLOSERS = "\\s.,;:!?)\\]}\"'»”’"


# Long texts are cleaned in blocks of about this many characters: re.sub over a 50 MB text with
# millions of matches would hold millions of small strings at once (about 1 GB).
BLOCK_CHARS = 1 << 20
# A quiet place to cut: a newline after a visible character and before an ASCII letter or digit;
# every rule gives the same result on both sides of such a cut as on the whole text.
_QUIET_CUT = re.compile(r"(?<=\S)\n(?=[A-Za-z0-9])")


def _clean_space(text: str, strip: bool = True) -> str:
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip() if strip else text


def _blocks(text: str, size: int):
    """`text` in pieces of about `size` characters, cut only at quiet newlines (kept in the piece)."""
    start = 0
    while len(text) - start > size:
        cut = _QUIET_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.end()]
        start = cut.end()
    yield text[start:]


class Normalizer(Preprocessor):
    """Cleans text as configured by `PreprocessConfig`; call it: `clean = Normalizer(cfg)(text)`.
    Registered as the preprocessor `normalize`, for extra passes with other options."""

    def __init__(self, config: PreprocessConfig | None = None, target: Literal["queries", "documents"] = "documents"):
        """`target`: clean documents (the default, and what a `preprocessors` step does) or queries;
        each rule applies only if its scope covers `target`."""
        rules = (config or PreprocessConfig()).rules_for(target)
        self.normalize_unicode = rules["normalize_unicode"]
        symbols = sorted({s for s in rules["drop_symbols"] if s}, key=len, reverse=True)
        self._drop = re.compile("|".join(map(re.escape, symbols))) if symbols else None
        self._invisible = _invisible_pattern()

        # Keys and values go through the character cleaning too, so keys match cleaned text and
        # values do not bring back what cleaning removed. A later key that differs only in
        # case replaces an earlier one.
        self._expansions: dict[str, str] = {}
        for key, value in rules["abbreviations"].items():
            key = _clean_space(self._clean_chars(key))
            if key:
                self._expansions[key.lower()] = _clean_space(self._clean_chars(value))
        self._abbreviations = None
        if self._expansions:
            keys = sorted(self._expansions, key=len, reverse=True)
            alternatives = "|".join(map(re.escape, keys))
            self._abbreviations = re.compile(
                rf"(?<![^{_OPENERS}])(?:{alternatives})(?![^{_CLOSERS}])", re.IGNORECASE
            )

    def __call__(self, text: str) -> str:
        if len(text) <= BLOCK_CHARS:
            return self._clean_block(text).strip()
        return "".join(self._clean_block(block) for block in _blocks(text, BLOCK_CHARS)).strip()

    def _clean_block(self, text: str) -> str:
        text = _clean_space(self._clean_chars(text), strip=False)
        if self._abbreviations is not None:
            # Expanding after the space cleanup lets a key like 'a b' match 'a  b'; cleaning again
            # tidies what an empty expansion leaves behind.
            text = _clean_space(self._abbreviations.sub(self._expand, text), strip=False)
        return text

    def _clean_chars(self, text: str) -> str:
        while True:
            if self._drop is not None:
                text = self._drop.sub("", text)
            text = _LINE_ENDINGS.sub(lambda m: _LINE_ENDING_REPLACEMENT.get(m.group(0), "\n"), text)
            text = self._invisible.sub("", text)
            if self.normalize_unicode:
                text = unicodedata.normalize("NFKC", text)
            # Removing a symbol shortens the text, so this loop ends.
            if self._drop is None or not self._drop.search(text):
                return text

    def _expand(self, match: re.Match[str]) -> str:
        found = match.group(0)
        value = self._expansions.get(found.lower())
        if value is None:  # case folding that str.lower() does not mirror (rare scripts)
            value = next(v for k, v in self._expansions.items() if re.fullmatch(re.escape(k), found, re.I))
        return value
