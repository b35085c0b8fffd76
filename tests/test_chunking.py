from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from semantic_text_splitter import TextSplitter
from transformers import AutoTokenizer

from connector.config import ChunkingConfig
from connector.errors import ConfigError
from connector.ledger import Ledger
from connector.hashes import stable_hash
from connector.preprocess.chunking import Chunker, chunking_version, fingerprint_settings, make_chunker
from connector.preprocess.chunking_v1 import ChunkerV1
from connector.testing.tiny_model import SENTENCES

LATIN_SENTENCES = [
    line for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip() and line.isascii()
]
ALL_SENTENCES = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
CJK_SENTENCES = [
    "数据库连接失败。",
    "请检查网络设置！",
    "为什么会这样？",
    "修改配置文件后请重新启动服务器。",
    "パスワードをリセットしてください。",
    "本当にですか？",
    "新しいバージョンでは長い文書の検索品質が向上しました！",
]


# What every chunking version guarantees is tested on each (ChunkerV1 is what a new state dir gets;
# the version 2 chunker, Chunker, fills chunks better and is chosen with chunking.version: 2).
CHUNKERS = [pytest.param(ChunkerV1, id="v1"), pytest.param(Chunker, id="v2")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


PROSE_SENTENCES = [s for s in LATIN_SENTENCES if s.endswith((".", "!", "?"))]


def sentence_bounds(text: str) -> tuple[set[int], set[int]]:
    """Where the sentences of PROSE_SENTENCES begin and end in `text`, a join of them."""
    starts, ends = set(), set()
    for sentence in set(PROSE_SENTENCES):
        at = text.find(sentence)
        while at != -1:
            starts.add(at)
            ends.add(at + len(sentence))
            at = text.find(sentence, at + 1)
    return starts, ends


def paragraphs_text(seed: int, n_paragraphs: int, sentences=ALL_SENTENCES) -> str:
    rng = random.Random(seed)
    paragraphs = [" ".join(rng.choice(sentences) for _ in range(rng.randint(1, 5))) for _ in range(n_paragraphs)]
    return "\n\n".join(paragraphs)


def check_contract(tokenizer, chunker: Chunker, text: str, chunks) -> None:
    """The guarantees every split must keep."""
    assert [c.index for c in chunks] == list(range(len(chunks)))
    covered = bytearray(len(text))
    for c in chunks:
        assert text[c.char_start : c.char_end] == c.text
        assert c.text and c.text == c.text.strip()
        assert n_tokens(tokenizer, c.text) <= chunker.max_tokens or len(c.text) == 1
        covered[c.char_start : c.char_end] = b"\x01" * (c.char_end - c.char_start)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev.char_start < nxt.char_start and prev.char_end < nxt.char_end
    missing = [i for i, ch in enumerate(text) if not covered[i] and not ch.isspace()]
    assert not missing, f"characters not in any chunk: {text[missing[0]:missing[0] + 20]!r}"


# --- basic contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunker_class", CHUNKERS)
@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n"])
def test_empty_text_gives_no_chunks(chunker_class, tokenizer, text):
    assert chunker_class(tokenizer, 32, 8).split("d", text) == []


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_short_document_is_one_chunk_equal_to_the_text(chunker_class, tokenizer):
    text = "To reset your password, open the account settings.\n\nThen choose a new one."
    [chunk] = chunker_class(tokenizer, 64, 16).split("doc-1", text)
    assert (chunk.doc_id, chunk.index, chunk.text, chunk.char_start, chunk.char_end) == ("doc-1", 0, text, 0, len(text))


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_text_that_fits_max_tokens_is_not_split_for_the_overlap_budget(chunker_class, tokenizer):
    text = paragraphs_text(1, 20, LATIN_SENTENCES)
    words = text.split(" ")
    while n_tokens(tokenizer, " ".join(words)) > 60:
        words.pop()
    text = " ".join(words)
    assert n_tokens(tokenizer, text) > 60 - 20  # longer than the room left by the overlap
    assert [c.text for c in chunker_class(tokenizer, 60, 20).split("d", text)] == [text]


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_surrounding_whitespace_is_not_part_of_a_chunk(chunker_class, tokenizer):
    [chunk] = chunker_class(tokenizer, 64, 0).split("d", "\n  Hello world.  \n")
    assert (chunk.text, chunk.char_start, chunk.char_end) == ("Hello world.", 3, 15)


@pytest.mark.parametrize("chunker_class", CHUNKERS)
@pytest.mark.parametrize("max_tokens, overlap", [(16, 0), (24, 6), (64, 16), (200, 40)])
def test_long_text_contract_and_overlap(chunker_class, tokenizer, max_tokens, overlap):
    text = paragraphs_text(2, 120) + "\n\nEmoji 😀😀 and ümlauts before the end. " * 3
    chunker = chunker_class(tokenizer, max_tokens, overlap)
    chunks = chunker.split("d", text)
    assert len(chunks) > 5
    check_contract(tokenizer, chunker, text, chunks)
    for prev, nxt in zip(chunks, chunks[1:]):
        if overlap:
            assert nxt.char_start < prev.char_end, "consecutive chunks must overlap"
            assert n_tokens(tokenizer, text[nxt.char_start : prev.char_end]) <= overlap + 2
        else:
            assert nxt.char_start >= prev.char_end


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_offsets_are_characters_not_bytes(chunker_class, tokenizer):
    text = ("ü😀数 " * 50 + "\n\n") * 10
    chunker = chunker_class(tokenizer, 20, 0)
    chunks = chunker.split("d", text)
    check_contract(tokenizer, chunker, text, chunks)
    assert chunks[-1].char_end == len(text.rstrip()) < len(text.encode("utf-8"))


# --- where the splits go ----------------------------------------------------------------------------


def greedy_chunk_count(tokenizer, text: str, ends: set[int], budget: int) -> int:
    """How many chunks packing whole sentences greedily makes: the fewest that fit `budget` tokens."""
    count, start = 0, 0
    while start < len(text):
        fitting = [e for e in sorted(ends) if e > start and n_tokens(tokenizer, text[start:e]) <= budget]
        end = fitting[-1] if fitting else len(text)
        count += 1
        start = end + len(text[end:]) - len(text[end:].lstrip())
    return count


def test_chunks_are_about_as_few_as_greedy_packing_makes(tokenizer):
    # As full as greedy packing (the fewest chunks of whole sentences), though the ends are placed
    # by the text around them: a chunk more only where a boundary scores very high.
    chunker = Chunker(tokenizer, 96, 0)
    made, fewest = 0, 0
    for seed in range(6):
        rng = random.Random(seed)
        text = "\n\n".join(" ".join(rng.choices(PROSE_SENTENCES, k=rng.randint(1, 6))) for _ in range(25))
        chunks = chunker.split("d", text)
        check_contract(tokenizer, chunker, text, chunks)
        _, ends = sentence_bounds(text)
        assert all(c.char_end in ends for c in chunks)
        made += len(chunks)
        fewest += greedy_chunk_count(tokenizer, text, ends, 96)
    assert fewest <= made <= 1.02 * fewest


def manual_text(seed: int) -> str:
    """A synthetic manual page: paragraphs of prose between blocks of short lines (like code or lists)."""
    rng = random.Random(seed)
    parts = []
    for _ in range(60):
        if rng.random() < 0.5:
            parts.append(" ".join(rng.choices(PROSE_SENTENCES, k=rng.randint(1, 4))))
        else:
            lines = [" ".join(rng.choice(LATIN_SENTENCES).split()[: rng.randint(2, 5)]) for _ in range(rng.randint(2, 8))]
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def test_a_line_added_at_the_top_changes_few_chunks(tokenizer):
    # A chunk's end depends on the text around it, not on where the chunk starts: after a line is
    # added at the top, the later chunks end where they did (greedy packing moved them all).
    chunker = Chunker(tokenizer, 256, 32)
    changed = []
    for seed in range(12):
        text = manual_text(seed)
        before = {c.text for c in chunker.split("d", text)}
        assert len(before) > 10
        after = chunker.split("d", "Updated for this release: see the changelog.\n\n" + text)
        changed.append(sum(c.text not in before for c in after))
    assert sum(changed) / len(changed) <= 3


def test_fill_on_a_multi_paragraph_corpus(tokenizer):
    # Documents of paragraphs of one to eight sentences, as in a manual or a knowledge base: the
    # chunks hold at least 90% of max_tokens on average, counting each document's short last chunk.
    chunker = Chunker(tokenizer, 256, 32)
    fills = []
    for seed in range(12):
        rng = random.Random(seed)
        paragraphs = [" ".join(rng.choices(PROSE_SENTENCES, k=rng.randint(1, 8))) for _ in range(60)]
        text = "\n\n".join(paragraphs)
        chunks = chunker.split(f"doc-{seed}", text)
        check_contract(tokenizer, chunker, text, chunks)
        fills += [n_tokens(tokenizer, c.text) / chunker.max_tokens for c in chunks]
    assert sum(fills) / len(fills) >= 0.9


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_sentences_when_a_paragraph_is_too_long(chunker_class, tokenizer):
    sentences = LATIN_SENTENCES[:40]
    text = " ".join(sentences)
    max_tokens = max(n_tokens(tokenizer, s) for s in sentences) + 10
    chunks = chunker_class(tokenizer, max_tokens, 0).split("d", text)
    assert len(chunks) > 3
    starts = {text.index(s) for s in sentences}
    for chunk in chunks:
        assert chunk.char_start in starts, f"chunk does not start at a sentence: {chunk.text[:40]!r}"
        assert chunk.text[-1] in ".!?\"", f"chunk does not end a sentence: {chunk.text[-40:]!r}"


def test_a_sentence_longer_than_a_chunk_is_cut_apart_from_the_text_around_it(tokenizer):
    # Every paragraph is one sentence longer than a chunk: it is cut between words, and no chunk
    # takes text across a paragraph break, so an edit of the first paragraph changes its chunks only.
    paragraphs = [f"Part {k}: the pump with serial {k * 17} reports a pressure of {k * 3} bar." for k in range(8)]
    chunker = Chunker(tokenizer, 24, 0)
    assert all(n_tokens(tokenizer, p) > 24 for p in paragraphs)
    before = chunker.split("d", "\n\n".join(["Intro.", *paragraphs]))
    assert all("\n" not in c.text for c in before)
    after = chunker.split("d", "\n\n".join(["Intro, now a little longer.", *paragraphs]))
    assert [c.text for c in after[1:]] == [c.text for c in before[1:]]


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_cjk_sentence_punctuation_is_a_boundary(chunker_class, tokenizer):
    rng = random.Random(4)
    sentences = [rng.choice(CJK_SENTENCES) for _ in range(60)]
    text = "".join(sentences)  # no spaces at all
    max_tokens = max(n_tokens(tokenizer, s) for s in CJK_SENTENCES) + 8
    chunker = chunker_class(tokenizer, max_tokens, 0)
    chunks = chunker.split("d", text)
    check_contract(tokenizer, chunker, text, chunks)
    assert len(chunks) > 3
    boundaries = {0}
    for s in sentences:
        boundaries.add(max(boundaries) + len(s))
    for chunk in chunks:
        assert chunk.char_start in boundaries and chunk.char_end in boundaries, chunk.text
        assert chunk.text[-1] in "。！？"


@pytest.mark.parametrize("chunker_class", CHUNKERS)
@pytest.mark.parametrize("text", ["abcdefghij" * 400, "数据库连接网络设置" * 300, "x" * 5000])
def test_hard_token_split_without_any_boundary(chunker_class, tokenizer, text):
    chunker = chunker_class(tokenizer, 16, 0)
    chunks = chunker.split("d", text)
    check_contract(tokenizer, chunker, text, chunks)
    assert len(chunks) > 5
    assert "".join(c.text for c in chunks) == text


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_long_text_with_a_long_run_without_boundaries(chunker_class, tokenizer):
    text = paragraphs_text(5, 150) + "\n\n" + "y" * 3000 + " " + paragraphs_text(6, 50)
    assert len(text) > 30_000
    chunker = chunker_class(tokenizer, 16, 4)
    check_contract(tokenizer, chunker, text, chunker.split("d", text))


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_truncation_left_on_the_tokenizer_does_not_change_counts(chunker_class, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.backend_tokenizer.enable_truncation(8)  # what a call with truncation=True leaves behind
    text = paragraphs_text(7, 30, LATIN_SENTENCES)
    chunks = chunker_class(tokenizer, 40, 0).split("d", text)
    tokenizer.backend_tokenizer.no_truncation()
    sizes = [n_tokens(tokenizer, c.text) for c in chunks]
    assert max(sizes) <= 40 and max(sizes) > 8


# --- version 1 (the stores it built keep it) ------------------------------------------------------


def test_v1_puts_whole_paragraphs_in_a_chunk_when_they_fit(tokenizer):
    rng = random.Random(3)
    # One long paragraph, then three short ones, and again: the short ones can share a chunk.
    paragraphs = [" ".join(rng.sample(LATIN_SENTENCES, 4 if i % 4 == 0 else 1)) for i in range(32)]
    text = "\n\n".join(paragraphs)
    max_tokens = max(n_tokens(tokenizer, p) for p in paragraphs) + 5
    chunks = ChunkerV1(tokenizer, max_tokens, 0).split("d", text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert all(part in paragraphs for part in chunk.text.split("\n\n")), chunk.text
    assert len(chunks) < len(paragraphs)  # short paragraphs share a chunk


def test_v1_long_text_across_many_windows(tokenizer):
    # max_tokens 16 starts with 1,024-character windows: this text spans dozens of them,
    # including boundary-free runs that force hard cuts inside a window.
    text = paragraphs_text(5, 150) + "\n\n" + "y" * 3000 + " " + paragraphs_text(6, 50)
    chunker = ChunkerV1(tokenizer, 16, 4)
    chunks = chunker.split("d", text)
    check_contract(tokenizer, chunker, text, chunks)
    # The windows do not change where chunks end, compared with one call over the whole text
    # (the library may pick another boundary in rare spots).
    whole = TextSplitter.from_huggingface_tokenizer(tokenizer.backend_tokenizer, 12)
    expected_ends = {offset + len(piece) for offset, piece in whole.chunk_indices(text)}
    ends = [c.char_end for c in chunks]
    assert sum(end in expected_ends for end in ends) >= 0.95 * len(ends)


GOLDEN_V1 = json.loads((Path(__file__).parent / "fixtures" / "chunking_v1_golden.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", GOLDEN_V1["cases"], ids=lambda c: f"{c['max_tokens']}-{c['overlap_tokens']}")
def test_v1_makes_the_chunks_of_the_chunker_before_versions(tokenizer, case):
    # Recorded from commit 4e04f3c's Chunker (tests/fixtures/make_chunking_v1_golden.py): a store built
    # before chunking versions existed keeps version 1, so version 1 must make exactly those chunks.
    chunker = ChunkerV1(tokenizer, case["max_tokens"], case["overlap_tokens"])
    assert [[list(span) for span in chunker.spans(text)] for text in GOLDEN_V1["texts"]] == case["spans"]


def test_v1_fingerprint_is_that_of_the_chunker_before_versions():
    # The chunking part of the sync's fingerprint as commit 4e04f3c computed it: if it differed, every
    # document of a store built then would count as changed and be chunked again.
    for recorded in GOLDEN_V1["fingerprint_settings"]:
        for version in (None, 1):
            config = ChunkingConfig(max_tokens=recorded["max_tokens"], overlap_tokens=recorded["overlap_tokens"], version=version)
            settings = fingerprint_settings(config, 1)
            assert settings == recorded["chunking"]
            assert stable_hash({"chunking": settings}) == recorded["sha256"]


def test_make_chunker_gives_the_version_asked_for(tokenizer):
    config = ChunkingConfig(max_tokens=40, overlap_tokens=4)
    text = paragraphs_text(8, 40, LATIN_SENTENCES)
    for version, chunker_class in [(1, ChunkerV1), (2, Chunker)]:
        chunker = make_chunker(tokenizer, config, version)
        assert type(chunker) is chunker_class and chunker.version == version
        assert (chunker.max_tokens, chunker.overlap_tokens) == (40, 4)
        assert chunker.split("d", text) == chunker_class(tokenizer, 40, 4).split("d", text)
    assert make_chunker(tokenizer, config, 1).split("d", text) != make_chunker(tokenizer, config, 2).split("d", text)


def test_the_chunking_version_of_a_state_dir(tmp_path):
    # (a ledger that holds documents but records no version: tests/test_pipeline.py)
    ledger = Ledger(tmp_path)
    try:
        unset, one, two = (ChunkingConfig(version=v) for v in (None, 1, 2))
        assert [chunking_version(c, ledger) for c in (unset, one, two)] == [1, 1, 2]  # a new state dir: 1
        ledger.set_meta("chunking_version", "1")
        assert [chunking_version(c, ledger) for c in (unset, one, two)] == [1, 1, 2]  # the config's wins
        ledger.set_meta("chunking_version", "7")  # written by a newer connector
        with pytest.raises(ConfigError, match="records chunking version '7'.*set chunking.version"):
            chunking_version(unset, ledger)
        assert chunking_version(two, ledger) == 2
    finally:
        ledger.close()


# --- construction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_overlap_must_be_smaller_than_max_tokens(chunker_class, tokenizer):
    with pytest.raises(ConfigError, match="overlap_tokens"):
        chunker_class(tokenizer, 16, 16)


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_slow_tokenizer_is_refused_with_a_hint(chunker_class):
    with pytest.raises(ConfigError, match="fast tokenizer"):
        chunker_class(object(), 16, 0)


@pytest.mark.parametrize("chunker_class", CHUNKERS)
def test_from_config(chunker_class, tokenizer):
    chunker = chunker_class.from_config(tokenizer, ChunkingConfig(max_tokens=100, overlap_tokens=10))
    assert (chunker.max_tokens, chunker.overlap_tokens) == (100, 10)


def test_count_tokens_excludes_special_tokens(tokenizer):
    chunker = Chunker(tokenizer, 16, 0)
    assert chunker.count_tokens("hello world") == n_tokens(tokenizer, "hello world")
    assert chunker.count_tokens("") == 0


# --- property test ----------------------------------------------------------------------------------

_pieces = st.one_of(
    st.sampled_from(ALL_SENTENCES + CJK_SENTENCES),
    st.sampled_from([" ", "\n", "\n\n", "\n\n\n", "\t", "。", "！", "？", ".", "😀", "ü", "\u0301", "﷽"]),
    st.text(max_size=12),
    st.text(alphabet="abcxyz数据", min_size=20, max_size=200),
)
_texts = st.lists(_pieces, max_size=60).map("".join)


@pytest.mark.parametrize("chunker_class", CHUNKERS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_texts, max_tokens=st.integers(8, 48), overlap_share=st.floats(0, 0.5))
@example(text="The quick brown fox jumps over the lazy dog.000\u00bc", max_tokens=8, overlap_share=0.0)  # a cut at the
# text's end inside a run without whitespace (version 2 indexed past the end: found by Hypothesis in CI)
def test_any_text_keeps_the_contract(chunker_class, tokenizer, text, max_tokens, overlap_share):
    chunker = chunker_class(tokenizer, max_tokens, int(max_tokens * overlap_share))
    chunks = chunker.split("d", text)
    check_contract(tokenizer, chunker, text, chunks)
    if not text.strip():
        assert chunks == []
    elif n_tokens(tokenizer, text.strip()) <= max_tokens:
        assert [c.text for c in chunks] == [text.strip()]


_prose = st.lists(
    st.tuples(st.sampled_from(PROSE_SENTENCES + CJK_SENTENCES), st.sampled_from([" ", " ", "\n", "\n\n"])),
    min_size=1,
    max_size=80,
).map(lambda parts: "".join(sentence + gap for sentence, gap in parts))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_prose, extra=st.integers(0, 60), overlap_share=st.floats(0, 0.5))
def test_chunks_end_between_sentences_when_every_sentence_fits(tokenizer, text, extra, overlap_share):
    longest = max(n_tokens(tokenizer, s) for s in PROSE_SENTENCES + CJK_SENTENCES)
    overlap = int((longest + extra) * overlap_share)
    chunker = Chunker(tokenizer, longest + extra + overlap, overlap)
    chunks = chunker.split("d", text)
    check_contract(tokenizer, chunker, text, chunks)
    _, ends = sentence_bounds(text)
    ends |= cjk_sentence_ends(text)
    for chunk in chunks:
        assert chunk.char_end in ends, chunk.text[-40:]
    for before, after in zip(chunks, chunks[1:]):
        if not overlap:
            assert after.char_start >= before.char_end
        elif after.char_start >= before.char_end:  # no overlap only where the chunk is full without it
            assert n_tokens(tokenizer, after.text) > chunker.max_tokens - 4, after.text


def cjk_sentence_ends(text: str) -> set[int]:
    ends = set()
    for sentence in CJK_SENTENCES:
        at = text.find(sentence)
        while at != -1:
            ends.add(at + len(sentence))
            at = text.find(sentence, at + 1)
    return ends


def test_a_closing_bracket_stays_with_its_cjk_sentence(tokenizer):
    # 「...。」 then whitespace: the sentence ends after the closing bracket, never between 。 and 」.
    quoted = ["「数据库连接失败。」", "「请检查网络设置！」", "「为什么会这样？」", "「本当にですか？」"]
    text = " ".join(quoted[i % len(quoted)] for i in range(40))
    chunker = Chunker(tokenizer, max(n_tokens(tokenizer, q) for q in quoted) + 2, 0)
    chunks = chunker.split("d", text)
    check_contract(tokenizer, chunker, text, chunks)
    assert len(chunks) >= 20
    assert all(c.text[0] == "「" and c.text[-1] == "」" for c in chunks), [c.text for c in chunks]
