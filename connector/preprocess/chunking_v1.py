"""Chunking version 1: the connector's chunker before content-defined chunk ends (version 2,
chunking.py), kept for the stores it built: a state dir keeps its version until its config sets
`chunking.version` (see chunking.chunking_version).

The splitting is done by `semantic-text-splitter`: it puts the largest semantic units that fit into
each chunk, trying in turn blank-line paragraphs, single lines, Unicode sentences (UAX #29, which
knows CJK and fullwidth sentence punctuation such as 。！？), words, graphemes and finally single
characters, so a run of text without any boundary is still cut by token count. Offsets are Python
string indices. The library counts a piece's tokens where it lies in the text, so each piece is
tokenised alone once more and split again in the rare case it is then too long (a piece cut inside
a word gets an extra word-start token).

Overlap is added by BaseChunker rather than by the library, which only overlaps whole semantic
units and so often adds none at paragraph or sentence boundaries. The splitter fills each chunk up
to `max_tokens - overlap_tokens` tokens; then every chunk after the first is extended backwards by
up to `overlap_tokens` tokens of the text before it, starting at a word when one starts there.

The library slows down quadratically on long runs with no word boundary (a base64 image inlined in
Markdown, CJK without punctuation), so a long text is fed to it in windows of a few chunks each; the
last chunk of a window is dropped and the next window starts where that chunk started, so chunks
continue across windows as in one call over the whole text (the library's choice of boundary can
differ in rare spots, with the same guarantees).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator

from semantic_text_splitter import TextSplitter

from connector.preprocess.chunking import BaseChunker, _strip_span

# A window holds about this many chunks: its size in characters is first guessed at 4 characters per
# token, then follows the chunk length seen in the previous window; it doubles when a window holds
# fewer than two chunks.
_WINDOW_CHUNKS = 16
_MIN_WINDOW_CHARS = 1_024
_LAST_WHITESPACE = re.compile(r"\s(?=\S*\Z)")


class ChunkerV1(BaseChunker):
    """Chunking version 1 (see the module doc), with BaseChunker's guarantees."""

    version = 1

    def __init__(self, tokenizer, max_tokens: int, overlap_tokens: int = 0):
        super().__init__(tokenizer, max_tokens, overlap_tokens)
        self._splitter = TextSplitter.from_huggingface_tokenizer(
            self._tokenizer, max_tokens - overlap_tokens, overlap=0, trim=True
        )
        self._first_window_chars = max(_MIN_WINDOW_CHARS, _WINDOW_CHUNKS * 4 * max_tokens)

    def _core_spans(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        # The windows start at the beginning of the text; the pieces are trimmed, so they lie
        # within [start, end) all the same.
        capacity = self.max_tokens - self.overlap_tokens
        return [fitted for span in self._split_spans(text) for fitted in self._fit(text, *span, capacity)]

    def _split_spans(self, text: str) -> Iterator[tuple[int, int]]:
        """Spans of at most max_tokens - overlap_tokens tokens, window by window."""
        pos = 0
        window = self._first_window_chars
        while pos < len(text):
            end = self._window_end(text, pos, window)
            pieces = self._splitter.chunk_indices(text[pos:end])
            if end < len(text) and len(pieces) == 1:
                window *= 2  # one chunk in the window: it may be cut short, so widen the window
                continue
            if end == len(text) or not pieces:
                keep, next_pos = pieces, end
            else:
                keep, next_pos = pieces[:-1], pos + pieces[-1][0]
                window = max(_MIN_WINDOW_CHARS, _WINDOW_CHUNKS * (next_pos - pos) // len(keep))
            for offset, piece in keep:
                # Trimmed already, but Python and Rust disagree on U+001C..U+001F being whitespace.
                stripped = _strip_span(text, pos + offset, pos + offset + len(piece))
                if stripped:
                    yield stripped
            pos = next_pos

    def _fit(self, text: str, start: int, end: int, capacity: int) -> Iterator[tuple[int, int]]:
        """Split text[start:end] again if it is over max_tokens when tokenised alone.

        The library counts a piece's tokens as they fall inside the whole text; a piece cut in the
        middle of a word can make more alone (the tokenizer prefixes it with a word-start token)."""
        n_tokens = self.count_tokens(text[start:end])
        if n_tokens <= self.max_tokens or end - start == 1:
            yield start, end
            return
        capacity = max(1, min(capacity, self.max_tokens) - (n_tokens - self.max_tokens))
        splitter = TextSplitter.from_huggingface_tokenizer(self._tokenizer, capacity, trim=True)
        pieces = [
            (start + offset, start + offset + len(piece))
            for offset, piece in splitter.chunk_indices(text[start:end])
        ]
        if len(pieces) < 2:  # no progress: halve it (the pieces get shorter, so this ends)
            middle = start + (end - start) // 2
            pieces = [(start, middle), (middle, end)]
        for piece in pieces:
            stripped = _strip_span(text, *piece)
            if stripped:
                yield from self._fit(text, *stripped, capacity)

    @staticmethod
    def _window_end(text: str, pos: int, window: int) -> int:
        """Where a window starting at `pos` ends: after the last paragraph break, line break or
        whitespace in its second half, else `window` characters on (never before a combining mark)."""
        hard_end = pos + window
        if hard_end >= len(text):
            return len(text)
        low = pos + window // 2
        for separator in ("\n\n", "\n"):
            found = text.rfind(separator, low, hard_end)
            if found != -1:
                return found + len(separator)
        match = _LAST_WHITESPACE.search(text, low, hard_end)
        if match:
            return match.end()
        end = hard_end
        while end > low and unicodedata.combining(text[end]):
            end -= 1
        return end
