"""Token-aware chunking with the encoder's own tokenizer.

The splitting itself is done by `semantic-text-splitter`: it puts the largest semantic units that
fit into each chunk, trying in turn blank-line paragraphs, single lines, Unicode sentences (UAX #29,
which knows CJK and fullwidth sentence punctuation such as 。！？), words, graphemes and finally
single characters, so a run of text without any boundary is still cut by token count.

The library slows down quadratically on long runs that have no word boundary (a base64 image inlined
in Markdown, CJK without punctuation), so a long text is fed to it in windows of a few chunks each;
the last chunk of a window is dropped and the next window starts where it started, so chunking and
overlap carry on across windows as if the text were split in one go.
"""

from __future__ import annotations

import re
import unicodedata

from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

from connector.config import ChunkingConfig
from connector.errors import ConfigError
from connector.records import Chunk

# A window holds about this many chunks: its size in characters is first guessed at 4 characters per
# token, then follows the chunk length seen in the previous window; it doubles when a window holds
# fewer than two chunks.
_WINDOW_CHUNKS = 16
_MIN_WINDOW_CHARS = 1_024
_LAST_WHITESPACE = re.compile(r"\s(?=\S*\Z)")


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
    </s>). Contract of `split(doc_id, text)`:

    - empty or whitespace-only text gives no chunks;
    - a text that fits gives one chunk: the text without surrounding whitespace;
    - chunks come in text order, each starts after the previous one starts, and together they cover
      every non-whitespace character of the text;
    - `text[c.char_start:c.char_end] == c.text` (offsets are Python string indices);
    - every chunk tokenises to at most `max_tokens` tokens, except when a single character alone
      is longer (only possible with a tiny `max_tokens` and a character that the tokenizer's own
      normaliser expands, such as U+FDFD); such a character becomes its own chunk;
    - consecutive chunks share up to `overlap_tokens` tokens of text.
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
            self._tokenizer, max_tokens, overlap=overlap_tokens, trim=True
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
        spans = list(self._spans(text))
        return [
            Chunk(doc_id=doc_id, index=i, text=text[start:end], char_start=start, char_end=end)
            for i, (start, end) in enumerate(spans)
        ]

    def _spans(self, text: str):
        """(start, end) offsets of the chunks, window by window."""
        pos = 0
        window = self._first_window_chars
        while pos < len(text):
            end = self._window_end(text, pos, window)
            pieces = self._splitter.chunk_indices(text[pos:end])
            if end < len(text) and len(pieces) < 2 and pieces:
                window *= 2  # the window holds a single chunk: it may be cut short, so widen it
                continue
            if end == len(text) or not pieces:
                keep, next_pos = pieces, end
            else:
                keep, next_pos = pieces[:-1], pos + pieces[-1][0]
                window = max(_MIN_WINDOW_CHARS, _WINDOW_CHUNKS * (next_pos - pos) // len(keep))
            for offset, piece in keep:
                yield pos + offset, pos + offset + len(piece)
            pos = next_pos

    @staticmethod
    def _window_end(text: str, pos: int, window: int) -> int:
        """Where a window starting at `pos` ends: at the last paragraph break, line break or
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
