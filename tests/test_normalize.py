from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import PreprocessConfig
from connector.preprocess.normalize import Normalizer


def norm(text: str, target: str = "queries", **config) -> str:
    return Normalizer(PreprocessConfig(**config), target=target)(text)


# --- abbreviations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("thx u", "thanks you"),
        ("U", "you"),
        ("see u.", "see you."),
        ("(u)", "(you)"),
        ("build", "build"),
        ("USB", "USB"),
        ("menu", "menu"),
        ("u2", "u2"),
        ("ü", "ü"),
        ("über u", "über you"),
        ("_u", "_u"),
        ("u\u0331", "u\u0331"),  # u with a combining macron below is another letter
        ("THX", "thanks"),
        ("thank u!", "thank you!"),
        ('"u", u; u?', '"you", you; you?'),
        # part of an option, a format or a path, not a word a user typed
        ("git add -u", "git add -u"),
        ("printf('%u', n)", "printf('%u', n)"),
        ("/u/bin u/2", "/u/bin u/2"),
        ("u-turn", "u-turn"),
    ],
)
def test_abbreviations_whole_words_case_insensitive(text, expected):
    assert norm(text, abbreviations={"u": "you", "thx": "thanks"}) == expected


def test_abbreviation_keys_with_regex_metacharacters_are_literal():
    config = {"abbreviations": {"c++": "C plus plus", "e.g.": "for example", "a|b": "either"}}
    assert norm("c++ and e.g. a|b", **config) == "C plus plus and for example either"
    # '.' must not match any character, '|' must not split the key into alternatives
    assert norm("exgx a b ab", **config) == "exgx a b ab"


def test_longest_abbreviation_wins():
    config = {"abbreviations": {"w": "with", "w/o": "without"}}
    assert norm("coffee w/o sugar, w milk", **config) == "coffee without sugar, with milk"


def test_abbreviation_key_with_space_matches_folded_spaces():
    assert norm("see  a.s.a.p  please", abbreviations={"a.s.a.p": "soon"}) == "see soon please"
    assert norm("in\tthe  meantime", abbreviations={"in the meantime": "meanwhile"}) == "meanwhile"


def test_empty_expansion_leaves_no_double_space():
    assert norm("so um yes", abbreviations={"um": ""}) == "so yes"


# --- symbols and Unicode -----------------------------------------------------------------


def test_drop_symbols_before_nfkc():
    # NFKC would turn ™ into 'TM' (and ® stays), so dropping must come first.
    assert unicodedata.normalize("NFKC", "™") == "TM"
    assert norm("Acme™ Widget® rocks", drop_symbols=["™", "®"]) == "Acme Widget rocks"


def test_drop_symbols_joined_by_removed_zero_width_character():
    assert norm("a*\u200b*b", drop_symbols=["**"]) == "ab"


def test_nfkc_applied_when_enabled():
    assert norm("ｆｕｌｌｗｉｄｔｈ ① ﬁ") == "fullwidth 1 fi"
    assert norm("ｆｕｌｌ", normalize_unicode=False) == "ｆｕｌｌ"


def test_zero_width_format_and_control_characters_removed():
    text = "a\u200bb\u200cc\u200dd\u2060e\ufefff\u00adg\u202eh\x00i\x07j\x1bk\x7fl"
    assert norm(text) == "abcdefghijkl"


def test_lone_surrogates_removed():
    assert norm("a\udcffb") == "ab"


def test_zero_width_space_between_letter_and_accent_is_idempotent():
    once = norm("e\u200b\u0301")
    assert once == "\u00e9"
    assert norm(once) == once


# --- whitespace ------------------------------------------------------------------------------


def test_line_endings_normalised():
    assert norm("a\r\nb\rc\x85d\u2028e") == "a\nb\nc\nd\ne"
    assert norm("a\u2029b") == "a\n\nb"


def test_whitespace_folding_keeps_paragraphs():
    text = "  Title \t here  \r\n\r\n\r\n\r\n  first   line \n second\tline  \n \n\t\n third  "
    assert norm(text) == "Title here\n\nfirst line\nsecond line\n\nthird"


def test_tabs_kept_until_folded_and_non_breaking_space_folded():
    assert norm("a\t\tb\u00a0\u00a0c") == "a b c"
    assert norm("a\u3000b") == "a b"


def test_empty_and_whitespace_only():
    assert norm("") == ""
    assert norm(" \n\t\u200b \r\n ") == ""


# --- idempotence -----------------------------------------------------------------------------

_PROPERTY_CONFIG = PreprocessConfig(
    abbreviations={"u": "you", "thx": "thanks", "e.g.": "for example", "w/o": "without", "a b": "ab"},
    drop_symbols=["™", "®", "**"],
)
_normalizer = Normalizer(_PROPERTY_CONFIG, target="queries")

_interesting = st.sampled_from(
    ["u", "U", "thx", "e.g.", "w/o", "a", "b", " ", "  ", "\t", "\n", "\r\n", "\u2029", "\u200b", "\u00ad",
     "\ufeff", "™", "®", "*", "\u0301", "e", "ü", "ｕ", "ﬁ", "①", "\u00a0", "\u3000", "\x85", "\x0c", "数据。"]
)
_texts = st.lists(st.one_of(st.text(max_size=8), _interesting), max_size=30).map("".join)


@settings(max_examples=100, deadline=None)
@given(_texts)
def test_idempotent(text):
    once = _normalizer(text)
    assert _normalizer(once) == once


@settings(max_examples=100, deadline=None)
@given(_texts)
def test_output_has_clean_whitespace(text):
    out = _normalizer(text)
    assert out == out.strip()
    assert "\n\n\n" not in out and "  " not in out and "\t" not in out and "\r" not in out
    assert all(line == line.strip(" ") for line in out.split("\n"))
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in out if ch != "\n")


def test_a_long_text_is_cleaned_in_blocks_exactly_as_in_one_piece(monkeypatch):
    import random

    from connector.preprocess import normalize as module

    rng = random.Random(5)
    pieces = ["word", "thx", "u", "Ünïcode", "™", " ", "  ", "\n", "\n\n\n", "\t", "\u200b", "ﬁ", "x\ny", "12"]
    text = "".join(rng.choice(pieces) for _ in range(20000))
    config = PreprocessConfig(abbreviations={"u": "you", "thx": "thanks"}, drop_symbols=["™"],
                              abbreviations_scope="both")
    whole = Normalizer(config)(text)
    monkeypatch.setattr(module, "BLOCK_CHARS", 500)  # many cuts
    assert len(list(module._blocks(text, 500))) > 20
    assert Normalizer(config)(text) == whole


# --- scopes ----------------------------------------------------------------------------------


def test_abbreviations_expand_in_queries_only_by_default():
    config = PreprocessConfig(abbreviations={"u": "you"})
    assert Normalizer(config, target="queries")("thank u") == "thank you"
    assert Normalizer(config, target="documents")("thank u") == "thank u"
    assert Normalizer(config)("thank u") == "thank u"  # documents, as a `preprocessors` step does


@pytest.mark.parametrize("scope, in_queries, in_documents", [
    ("queries", "a b", "a® b"), ("documents", "a® b", "a b"), ("both", "a b", "a b"),
])
def test_each_rule_applies_where_its_scope_says(scope, in_queries, in_documents):
    config = PreprocessConfig(drop_symbols=["®"], drop_symbols_scope=scope)
    assert Normalizer(config, target="queries")("a® b") == in_queries
    assert Normalizer(config, target="documents")("a® b") == in_documents
