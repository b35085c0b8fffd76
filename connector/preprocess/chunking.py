"""Token-aware chunking with the encoder's own tokenizer.

The splitting is done by `semantic-text-splitter`: it puts the largest semantic units that fit into
each chunk, trying in turn blank-line paragraphs, single lines, Unicode sentences (UAX #29, which
knows CJK and fullwidth sentence punctuation such as 。！？), words, graphemes and finally single
characters, so a run of text without any boundary is still cut by token count. Offsets are Python
string indices. The library counts a piece's tokens where it lies in the text, so each piece is
tokenised alone once more and split again in the rare case it is then too long (a piece cut inside
a word gets an extra word-start token).

The library alone ends a chunk where the next unit of the level it chose does not fit (after a
paragraph when the next paragraph is too long, however much room is left), which left chunks about
87% full on average. So each chunk is filled up: it takes the library's first piece where the chunk
starts, the next pieces whole while they fit, then the leading sentences (or lines) of the next one
that fit; the next chunk starts where it ends. A chunk ends inside a sentence only where the library
had to cut one longer than a chunk. Figures: benchmarks/RESULTS.md (chunk fill).

Overlap is added here rather than by the library, which only overlaps whole semantic units and so
often adds none at paragraph or sentence boundaries. The chunks are filled up to
`max_tokens - overlap_tokens` tokens; then every chunk after the first is extended backwards by up
to `overlap_tokens` tokens of the text before it, starting at a word when one starts there.

The library slows down quadratically on long runs with no word boundary (a base64 image inlined in
Markdown, CJK without punctuation), so it is shown a window of a few chunks' length from where a
chunk starts; the last piece of a window is dropped and the next window starts where that piece
started, so pieces continue across windows as in one call over the whole text (the library's choice
of boundary can differ in rare spots, with the same guarantees).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator

from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

from connector.config import ChunkingConfig
from connector.errors import ConfigError
from connector.records import Chunk

# Part of the sync's fingerprint: raised whenever the same settings give other chunks, so that a
# store synced by an older version is re-chunked on purpose, and all of it at once. 2: each chunk is
# filled with the leading sentences of the paragraph that no longer fits whole.
CHUNKING_VERSION = 2
# A window holds about this many chunks: its size in characters is first guessed at 4 characters per
# token, then follows the length of the chunks before; it doubles when a window holds fewer than two.
_WINDOW_CHUNKS = 3
_MIN_WINDOW_CHARS = 256
# A text this many characters per token of max_tokens is surely too long for one chunk, so it is
# not tokenised as a whole just to find out.
_SURELY_TOO_LONG_CHARS_PER_TOKEN = 64
_LAST_WHITESPACE = re.compile(r"\s(?=\S*\Z)")
_SENTENCE_END = re.compile(r"(?:[.!?…]|[。！？．｡])[\"')\]}»”’」』]*\Z")
_WIDE_SENTENCE_END = re.compile(r"[。！？．｡][\"')\]}»”’」』]*\Z")
_SPACE = re.compile(r"\s*")


def _strip_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """text[start:end] without surrounding whitespace, or None if nothing is left."""
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return None
    start += len(piece) - len(piece.lstrip())
    return start, start + len(stripped)


def _ends_sentence(text: str, cut: int) -> bool:
    """Whether a chunk may end at `cut` without cutting a sentence: at the end of the text or of a
    line, or after sentence-final punctuation (and closing quotes or brackets) that is followed by
    whitespace and then not by a lowercase letter; after CJK sentence punctuation, even without the
    whitespace. A simplified form of the Unicode sentence boundaries (UAX #29) the library uses."""
    gap = _SPACE.match(text, cut).end()
    if gap == len(text) or "\n" in text[cut:gap]:
        return True
    before = text[max(0, cut - 8) : cut]
    if _WIDE_SENTENCE_END.search(before):
        return True
    return gap > cut and _SENTENCE_END.search(before) is not None and not text[gap].islower()


def backend_tokenizer(tokenizer) -> Tokenizer:
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer (or the object itself)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ConfigError(
            f"the chunker needs a fast tokenizer (a transformers tokenizer backed by the 'tokenizers' "
            f"library, e.g. AutoTokenizer.from_pretrained(folder)); got {type(tokenizer).__name__}. "
            f"Make sure the model folder has a tokenizer.json"
        )
    return backend


class Chunker:
    """Splits a document's cleaned text into chunks of at most `max_tokens` tokens.

    Tokens are counted with the model's tokenizer, without special tokens (the encoder adds <s> and
    </s>). Guarantees of `split(doc_id, text)`:

    - empty or whitespace-only text gives no chunks;
    - a text of at most `max_tokens` tokens gives one chunk: the text without surrounding whitespace
      (unless it averages over 64 characters per token, which only a run of unknown characters does);
    - chunks come in text order (each starts after the previous one starts and ends after it ends)
      and together cover every non-whitespace character of the text;
    - `text[c.char_start:c.char_end] == c.text`, offsets being Python string indices;
    - every chunk tokenises to at most `max_tokens` tokens, unless a single character alone makes
      more (only possible with a tiny `max_tokens` and a character that the tokenizer's normaliser
      expands, such as U+FDFD); that character is then a chunk of its own, which the encoder
      truncates;
    - every chunk after the first starts with up to `overlap_tokens` tokens of the text before it
      (counted as tokenised in place; alone they can make a token or two more), so boundaries keep
      some context; it starts at a word when one starts in that stretch. No chunk starts or ends
      with whitespace;
    - chunks are full: each takes whole paragraphs while they fit, then the next paragraph's leading
      sentences; one ends inside a sentence only if that sentence alone is longer than a chunk.
    """

    def __init__(self, tokenizer, max_tokens: int, overlap_tokens: int = 0):
        if max_tokens < 1:
            raise ConfigError(f"chunking.max_tokens must be at least 1, got {max_tokens}")
        if not 0 <= overlap_tokens < max_tokens:
            raise ConfigError(
                f"chunking.overlap_tokens ({overlap_tokens}) must be at least 0 and smaller than "
                f"max_tokens ({max_tokens})"
            )
        # A private copy: a transformers tokenizer switches truncation and padding on its backend
        # per call, and either would make the token counts wrong.
        self._tokenizer = Tokenizer.from_str(backend_tokenizer(tokenizer).to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self._splitter = TextSplitter.from_huggingface_tokenizer(
            self._tokenizer, max_tokens - overlap_tokens, overlap=0, trim=True
        )
        self._first_window_chars = max(_MIN_WINDOW_CHARS, _WINDOW_CHUNKS * 4 * max_tokens)

    @classmethod
    def from_config(cls, tokenizer, config: ChunkingConfig) -> "Chunker":
        return cls(tokenizer, config.max_tokens, config.overlap_tokens)

    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text`, special tokens excluded."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, doc_id: str, text: str) -> list[Chunk]:
        """Chunks of `text` (see the class docstring for the guarantees)."""
        return [
            Chunk(doc_id=doc_id, index=i, text=text[start:end], char_start=start, char_end=end)
            for i, (start, end) in enumerate(self.spans(text))
        ]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(char_start, char_end) of each chunk of `text`."""
        whole = _strip_span(text, 0, len(text))
        if whole is None:
            return []
        start, end = whole
        if end - start <= _SURELY_TOO_LONG_CHARS_PER_TOKEN * self.max_tokens:
            if self.count_tokens(text[start:end]) <= self.max_tokens:
                return [(start, end)]
        capacity = self.max_tokens - self.overlap_tokens
        spans = list(self._packed(text, capacity))
        if self.overlap_tokens:
            for i in range(1, len(spans)):
                previous_start = spans[i - 1][0]
                spans[i] = (self._overlap_start(text, previous_start, *spans[i]), spans[i][1])
        return spans

    def _split_spans(self, text: str, pos: int, window: int) -> Iterator[tuple[int, int]]:
        """The library's spans of at most max_tokens - overlap_tokens tokens from `pos` on, window by
        window, the first window `window` characters long."""
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

    def _packed(self, text: str, capacity: int) -> Iterator[tuple[int, int]]:
        """Spans of up to `capacity` tokens, each one from where the one before it ends: the library's
        first piece there, then the next pieces whole while they fit, then the leading sentences (or
        lines) of the next one that fit (see _take).

        The library alone ends a chunk where the next unit of the level it chose does not fit: after
        a paragraph, say, when the next paragraph is too long, however much room is left. Each chunk
        asks the library afresh from where the one before ended, so the rest of a paragraph whose
        leading sentences went into the chunk before is split as the start of a text."""
        pos = 0
        window = self._first_window_chars
        while True:
            pieces = (fitted for span in self._split_spans(text, pos, window) for fitted in self._fit(text, *span, capacity))
            current = next(pieces, None)
            if current is None:
                return
            for piece in pieces:
                current, full = self._take(text, current, piece, capacity)
                if full:
                    break
            yield current
            pos = current[1]
            window = max(_MIN_WINDOW_CHARS, _WINDOW_CHUNKS * (current[1] - current[0]))

    def _take(
        self, text: str, current: tuple[int, int], piece: tuple[int, int], capacity: int
    ) -> tuple[tuple[int, int], bool]:
        """The span `current` extended by the whole `piece` if that fits within `capacity` tokens, else
        by the longest run of the piece's leading sentences that fits; and whether it is now full. A
        chunk is never cut inside a sentence here: a piece whose first sentence does not fit the room
        that is left is left for the next chunk."""
        if self.count_tokens(text[current[0] : piece[1]]) <= capacity:
            return (current[0], piece[1]), False
        while piece is not None:
            cut = self._leading_sentences_end(text, current, piece, capacity)
            if cut is None:
                return current, True
            current, piece = (current[0], cut), _strip_span(text, cut, piece[1])
        return current, False

    def _leading_sentences_end(
        self, text: str, current: tuple[int, int], piece: tuple[int, int], capacity: int
    ) -> int | None:
        """Where the chunk `current` ends once it takes the longest run of whole sentences (or lines)
        that begins `piece` and fits within `capacity` tokens (words, if `current` ends inside a
        sentence); None if not even one fits."""
        start, end = current
        piece_start, piece_end = piece
        # A chunk that ends inside a sentence (one longer than a chunk: the library cut it between
        # words) can as well end a few words further into it, between words.
        in_sentence = not _ends_sentence(text, end)
        used = self.count_tokens(text[start:end])
        room = capacity - used
        # The library is shown only the piece's head, about twice as long as `room` tokens of the
        # chunk's text, and longer if all of it fits.
        head = 2 * room * -(-(end - start) // max(used, 1))
        while room > 0:
            head_end = min(piece_end, piece_start + head)
            splitter = TextSplitter.from_callback(self.count_tokens, room)
            first = next(iter(splitter.chunk_indices(text[piece_start:head_end])), None)
            if first is None:
                return None
            cut = piece_start + first[0] + len(first[1])
            if head_end < piece_end and not text[cut:head_end].strip():
                head *= 2
                continue
            if not (_ends_sentence(text, cut) or in_sentence and text[cut : cut + 1].isspace()):
                return None
            excess = self.count_tokens(text[start:cut]) - capacity
            if excess <= 0:
                return cut
            room -= excess  # the joined text tokenises a little longer than its parts
        return None

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

    def _overlap_start(self, text: str, previous_start: int, start: int, end: int) -> int:
        """The new start of the chunk text[start:end]: up to overlap_tokens tokens earlier, after
        previous_start, at a word start if possible, keeping the chunk within max_tokens."""
        # Only the end of the previous text matters; no token is anywhere near this long.
        region_start = max(previous_start + 1, start - 32 * (self.overlap_tokens + 1))
        region = text[region_start:start]
        offsets = self._tokenizer.encode(region, add_special_tokens=False).offsets
        token_starts = sorted({region_start + s for s, _ in offsets[-self.overlap_tokens :]})
        candidates = [s for s in token_starts if not text[s].isspace()]
        word_starts = [s for s in candidates if text[s - 1].isspace()]
        for candidate in word_starts + candidates:
            if self.count_tokens(text[candidate:end]) <= self.max_tokens:
                return candidate
        return start
