"""Token-aware chunking with the encoder's own tokenizer: chunks as full as greedy packing makes
them, with ends that depend on the text around them (content-defined chunking), so that an edit
changes the chunks near it and seldom more: chunking version 2. Version 1 (chunking_v1.py) stays for
the stores it built, which keep it until their config asks for another (see chunking_version).

- Boundaries are found once per text: paragraph and line ends, and sentence ends (sentence
  punctuation, closing quotes or brackets, whitespace, no lowercase letter next; CJK sentence
  punctuation even without the whitespace; see _ends_sentence).
- The whole text is tokenised once, and a stretch's token count is read from the token offsets;
  each chunk is then tokenised alone to check it (it can make a token or two more alone).
- The chunks take at most `max_tokens - overlap_tokens` tokens each and end at boundaries. Each
  boundary has a score: a hash of the 32 characters around it, spread on a heavy tail
  (_boundary_score), so that a few boundaries score far more than the rest. The chunks are placed
  at the lowest cost, a fixed cost per chunk (_CHUNK_COST) less the scores of their ends: nearly
  always as few chunks as greedy packing makes (so they are as full), ending at the high-scoring
  boundaries wherever the count allows, and a chunk more where a boundary scores very high. Such a
  boundary stays a chunk end whatever is edited elsewhere, and the chunks between two of them do
  not depend on the text outside. A dynamic programme over the boundaries finds the placement in
  linear time.
- A sentence longer than a chunk is cut into chunks of its own (they take nothing of the text
  around it), between words (scored the same way), and a run without whitespace every
  `max_tokens - overlap_tokens` tokens, never before a combining mark.

Why: a chunk filled greedily ends wherever its budget runs out, so a line added at the top of a
document moved every later chunk's end, and every chunk was encoded again. Boundary kinds
(paragraph over sentence) were tried as a preference too and made edits cost more chunks. The chunks
must be nearly as few as fit to be ~90% full, so the slack that could absorb an edit is small: an
edit in the middle of a document still changes more chunks than greedy packing of whole paragraphs
did (which made ~4% more chunks). Figures: benchmarks/RESULTS.md (chunk fill).

Overlap comes on top: every chunk after the first is extended backwards by up to `overlap_tokens`
tokens of the text before it, starting at a word when one starts there, within `max_tokens` in all.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from bisect import bisect_left, bisect_right
from collections import deque

from tokenizers import Tokenizer

from connector.config import CHUNKING_VERSIONS, ChunkingConfig
from connector.errors import ConfigError
from connector.records import Chunk

# The chunkers (CHUNKING_VERSIONS): 1, the pieces semantic-text-splitter gives (chunking_v1.py); 2, this
# module's, as few chunks as fit, ending at content-defined boundaries. A state dir keeps the version
# it was built with (see chunking_version); the version is part of the sync's fingerprint, so that a
# store switched to another version is re-chunked on purpose, and all of it at once.
# The version a new state dir gets: 1. Version 2 fills chunks better (90% against 87% on Python's docs)
# but one line added at the top of a document can re-chunk all of it (every chunk re-encoded), where
# version 1's edits stay near the edit (benchmarks/RESULTS.md, "Chunk fill"; issue 13's review).
NEW_STATE_DIR_CHUNKING_VERSION = 1
# The ledger meta key recording the version a state dir's last sync used.
CHUNKING_VERSION_KEY = "chunking_version"
# Characters each side of a boundary that its score is a hash of.
_HASH_CONTEXT = 16
# Scores are (1 - u) ** -_SCORE_TAIL for u uniform in (0, 1), in units of _SCORE_UNIT: the heavier
# the tail, the more a few boundaries dominate (2 measured best on Python's docs; 1 and 3-6 made an
# edit change more chunks).
_SCORE_TAIL = 2
_SCORE_UNIT = 1 << 40
# What one more chunk costs against the boundary scores: a chunk more is taken only where it lets the
# chunks end at a boundary scoring over about this many units, one in (this ** 1/_SCORE_TAIL) of
# them. Lower: edits change fewer chunks, and the chunks are less full (benchmarks/RESULTS.md).
_CHUNK_COST = _SCORE_UNIT * 3_000_000
# A text this many characters per token of max_tokens is surely too long for one chunk, so it is
# not tokenised as a whole just to find out.
_SURELY_TOO_LONG_CHARS_PER_TOKEN = 64
_WHITESPACE = re.compile(r"\s+")
_CLOSERS = "\"')\\]}»”’」』"
_SENTENCE_END = re.compile(rf"(?:[.!?…]|[。！？．｡])[{_CLOSERS}]*\Z")
_WIDE_SENTENCE_END = re.compile(rf"[。！？．｡][{_CLOSERS}]*\Z")
_WIDE_SENTENCE_END_BEFORE_TEXT = re.compile(rf"[。！？．｡][{_CLOSERS}]*+(?=\S)")  # possessive: never between 。 and 」
_SENTENCE_TAIL = frozenset(".!?…。！？．｡" + _CLOSERS.replace("\\", ""))
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
    whitespace. A simplified form of the Unicode sentence boundaries (UAX #29)."""
    gap = _SPACE.match(text, cut).end()
    if gap == len(text) or "\n" in text[cut:gap]:
        return True
    before = text[max(0, cut - 8) : cut]
    if _WIDE_SENTENCE_END.search(before):
        return True
    return gap > cut and _SENTENCE_END.search(before) is not None and not text[gap].islower()


def _boundaries(text: str) -> list[int]:
    """Where a chunk may end without cutting a sentence: just after a paragraph, line or sentence,
    in text order."""
    found = [
        gap.start()
        for gap in _WHITESPACE.finditer(text)
        if gap.start() > 0 and ("\n" in gap.group() or text[gap.start() - 1] in _SENTENCE_TAIL and _ends_sentence(text, gap.start()))
    ]
    found += [m.end() for m in _WIDE_SENTENCE_END_BEFORE_TEXT.finditer(text)]
    return sorted(found)


def _joins_previous(char: str) -> bool:
    """Whether a cut before `char` would split a character from its marks (combining marks, joiners,
    variation selectors)."""
    return unicodedata.combining(char) != 0 or unicodedata.category(char) in ("Mn", "Me") or char in "\u200d\ufe0f"


class _TokenOffsets:
    """Token counts of stretches of one text, read from a single tokenisation of the whole text."""

    def __init__(self, tokenizer: Tokenizer, text: str):
        self._ends = []
        last = 0
        for _, end in tokenizer.encode(text, add_special_tokens=False).offsets:
            last = max(last, end)
            self._ends.append(last)
        self._text_length = len(text)

    def count_to(self, pos: int) -> int:
        """Tokens that end at or before `pos`."""
        return bisect_right(self._ends, pos)

    def reach(self, pos: int, n_tokens: int) -> int:
        """Where the first `n_tokens` tokens after `pos` end (the end of the text if fewer are left)."""
        at = bisect_right(self._ends, pos) + max(n_tokens, 1) - 1
        return self._ends[at] if at < len(self._ends) else self._text_length


def _boundary_score(text: str, at: int) -> int:
    """What a chunk end at `at` is worth: a hash of the text around it, spread on a heavy tail (see
    _SCORE_TAIL), so that the choice depends on the text only and a few boundaries stand out."""
    context = text[max(0, at - _HASH_CONTEXT) : at + _HASH_CONTEXT]
    u = (zlib.crc32(context.encode("utf-8", "surrogatepass")) + 1) / (2**32 + 1)
    return int(_SCORE_UNIT * (1 - u) ** -_SCORE_TAIL)


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


class BaseChunker:
    """Splits a document's cleaned text into chunks of at most `max_tokens` tokens; what every
    chunking version shares. A subclass places the chunks (`_core_spans`).

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
      with whitespace.
    """

    version: int  # the chunking version (CHUNKING_VERSIONS) this class implements

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

    @classmethod
    def from_config(cls, tokenizer, config: ChunkingConfig) -> "BaseChunker":
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
        spans = self._core_spans(text, start, end)
        if self.overlap_tokens:
            for i in range(1, len(spans)):
                previous_start = spans[i - 1][0]
                spans[i] = (self._overlap_start(text, previous_start, *spans[i]), spans[i][1])
        return spans

    def _core_spans(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """The chunks of text[start:end] (stripped, over max_tokens) before overlap: consecutive
        spans of at most max_tokens - overlap_tokens tokens each, tokenised alone."""
        raise NotImplementedError

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


class Chunker(BaseChunker):
    """Chunking version 2 (see the module doc). Besides BaseChunker's guarantees:

    - a chunk ends at a paragraph, line or sentence end whenever one lies within its budget
      (`max_tokens - overlap_tokens` tokens): inside a sentence only if that sentence alone is
      longer than the budget;
    - chunks are full: nearly always as few as fit within that budget ending at such boundaries
      (what greedy packing gives), a chunk more only where a boundary scores very high;
    - chunks are local: where they end depends on the text around each end (see the module doc),
      so an edit usually changes only the chunks around it.
    """

    version = 2

    def _core_spans(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """Consecutive spans of text[start:end] of up to max_tokens - overlap_tokens tokens each, as few
        as fit, ending at the boundaries that _cuts chooses. Each span is checked by tokenising it
        alone (which can make a token or two more than in place); if one is over, all are chosen
        again with a budget cut by the excess."""
        tokens = _TokenOffsets(self._tokenizer, text)
        breaks = _boundaries(text)
        limit = self.max_tokens - self.overlap_tokens
        budget = limit
        while True:
            spans, previous = [], start
            for cut in self._cuts(text, start, end, budget, tokens, breaks):
                spans.append((previous, cut))
                previous = _SPACE.match(text, cut).end()
            excess = max(self.count_tokens(text[a:b]) - limit for a, b in spans)
            if excess <= 0 or budget == 1:
                return [piece for span in spans for piece in self._halved(text, *span, limit)]
            budget = max(1, budget - excess)

    def _cuts(self, text, start, end, budget, tokens, breaks) -> list[int]:
        """Where the chunks of text[start:end] end: chunks of at most `budget` tokens (as counted in
        place) ending at the places _nodes gives, at the lowest cost: _CHUNK_COST per chunk less the
        _boundary_score of each end. Nearly always as few chunks as fit; of those, the ones ending
        at the highest-scoring boundaries. This optimum over the whole text moves an end only where
        an edit makes it no longer the best: a high-scoring end stays one, and the chunks between two
        such ends depend on the text between them only."""
        nodes, fixed = self._nodes(text, start, end, budget, tokens, breaks)
        counts = [tokens.count_to(at) for at in nodes]
        # best[j]: the lowest cost (chunks times _CHUNK_COST less the scores of their ends) of chunks
        # up to node j, the last one ending there;
        # came_from[j]: where that last chunk starts. The nodes that a chunk ending at j can start
        # from form a sliding window; a monotone deque keeps the best of them in front.
        best = [0] * len(nodes)
        came_from = [0] * len(nodes)
        window: deque[int] = deque([0])
        for j in range(1, len(nodes)):
            while len(window) > 1 and counts[j] - counts[window[0]] > budget:
                window.popleft()
            i = came_from[j] = window[0]
            score = _boundary_score(text, nodes[j]) if j < len(nodes) - 1 else 0
            best[j] = best[i] + _CHUNK_COST - score
            while window and (j in fixed or best[window[-1]] >= best[j]):
                window.pop()  # (every chunk after a fixed end starts there)
            window.append(j)
        cuts, j = [], len(nodes) - 1
        while j:
            cuts.append(nodes[j])
            j = came_from[j]
        return cuts[::-1]

    @staticmethod
    def _nodes(text, start, end, budget, tokens, breaks) -> tuple[list[int], set[int]]:
        """The places a chunk of text[start:end] may end, in order, from `start` (where none ends) to
        `end`: the boundaries; inside a stretch between two of them that is over `budget` tokens (one
        sentence longer than a chunk), every word end too; inside a run without whitespace that is
        still over, a cut every `budget` tokens (never before a combining mark). And the indexes of
        the boundaries around such a stretch, where a chunk must end: a chunk cut inside a sentence
        holds nothing of the text around that sentence, so the cuts inside it depend on it alone."""
        nodes, fixed = [start], set()
        for stop in breaks[bisect_right(breaks, start) : bisect_left(breaks, end)] + [end]:
            if tokens.count_to(stop) - tokens.count_to(nodes[-1]) > budget:
                fixed.add(len(nodes) - 1)
                words = [m.start() for m in _WHITESPACE.finditer(text, nodes[-1] + 1, stop)]
                for word_end in [w for w in words if not text[w - 1].isspace()] + [stop]:
                    while tokens.count_to(word_end) - tokens.count_to(nodes[-1]) > budget:
                        cut = tokens.reach(nodes[-1], budget)
                        while cut - nodes[-1] > 1 and cut < len(text) and _joins_previous(text[cut]):
                            cut -= 1
                        if cut >= word_end or text[cut - 1].isspace():
                            break  # the word ends first: a cut there will do
                        nodes.append(cut)
                    if word_end != stop:
                        nodes.append(word_end)
                fixed.add(len(nodes))
            nodes.append(stop)
        return nodes, fixed

    def _halved(self, text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
        """text[start:end], or halves of it (and so on) if it is over `limit` tokens alone: only for
        a tokenizer that makes many more tokens of a stretch alone than in place."""
        if end - start == 1 or self.count_tokens(text[start:end]) <= limit:
            return [(start, end)]
        middle = start + (end - start) // 2
        while middle - start > 1 and _joins_previous(text[middle]):
            middle -= 1
        halves = [_strip_span(text, start, middle), _strip_span(text, middle, end)]
        return [piece for half in halves if half for piece in self._halved(text, *half, limit)]


def make_chunker(tokenizer, config: ChunkingConfig, version: int) -> BaseChunker:
    """The chunker of chunking `version` (one of CHUNKING_VERSIONS) with the config's sizes."""
    if version == 1:
        from connector.preprocess.chunking_v1 import ChunkerV1  # imports semantic-text-splitter

        return ChunkerV1.from_config(tokenizer, config)
    if version == 2:
        return Chunker.from_config(tokenizer, config)
    raise ConfigError(f"chunking.version must be one of {', '.join(map(str, CHUNKING_VERSIONS))}, not {version!r}")


def chunking_version(config: ChunkingConfig, ledger) -> int:
    """The chunking version a sync of `ledger`'s state dir uses: the config's `chunking.version` if
    set; else the one the ledger records (the version its last sync used); else 1 if the ledger holds
    documents (built before versions were recorded, by version 1); else (a new state dir)
    NEW_STATE_DIR_CHUNKING_VERSION.
    So upgrading the connector never re-chunks a store: only setting `chunking.version` does."""
    if config.version is not None:
        return config.version
    recorded = ledger.get_meta(CHUNKING_VERSION_KEY)
    if recorded is None:
        return 1 if ledger.has_documents() else NEW_STATE_DIR_CHUNKING_VERSION
    if recorded not in [str(v) for v in CHUNKING_VERSIONS]:
        raise ConfigError(
            f"the ledger in {ledger.path.parent} records chunking version {recorded!r}, which this connector "
            f"does not know (it knows {', '.join(map(str, CHUNKING_VERSIONS))}): upgrade the connector, or set "
            "chunking.version in the config to re-chunk the store with a version it knows"
        )
    return int(recorded)


def fingerprint_settings(config: ChunkingConfig, version: int) -> dict:
    """The chunking part of the sync's fingerprint: the sizes, and the version unless it is 1 (a
    store built before versions existed has version 1's fingerprint, so it is not re-chunked)."""
    settings = config.model_dump(exclude={"version"})
    return settings if version == 1 else {**settings, "version": version}
