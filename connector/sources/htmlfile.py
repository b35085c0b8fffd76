"""HTML pages: the main text, without scripts and styles, with paragraphs kept."""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString

from connector.sources.decoding import declared_charset, decode_text
from connector.sources.reading import Parsed

# HTML elements whose text is not content.
_DROPPED_TAGS = ["script", "style", "noscript", "template", "head"]
# Block elements, and whether they end a paragraph or a line, so paragraphs survive get_text().
# They are marked with two control characters (removed from the page first), so nested blocks
# give one break, not one per level.
_LINE, _PARAGRAPH = "\x00", "\x01"
_BLOCK_BREAKS = {
    **dict.fromkeys(
        "p div h1 h2 h3 h4 h5 h6 section article header footer nav aside main blockquote pre "
        "table ul ol dl figure figcaption form fieldset address details summary hr".split(),
        _PARAGRAPH,
    ),
    **dict.fromkeys("li tr dt dd caption br td th".split(), _LINE),
}
_BREAKS = re.compile(r"\s*[\x00\x01][\s\x00\x01]*")
_PRESERVE_WHITESPACE = {"pre", "textarea"}


def read_html(data: bytes) -> Parsed:
    """The page's text and its <title>; the bytes are decoded as decoding.decode_text says, with
    the charset the page declares (<meta charset>, http-equiv, <?xml encoding?>) as one signal."""
    markup, _ = decode_text(data, declared_charset(data))
    text, title = html_text(markup)
    return Parsed(text, title)


def html_text(markup: str) -> tuple[str, str | None]:
    """(text, title) of an HTML page."""
    soup = BeautifulSoup(markup.replace(_LINE, "").replace(_PARAGRAPH, ""), "lxml")
    title = " ".join(soup.title.get_text().split()) if soup.title else None
    for tag in soup.find_all(_DROPPED_TAGS):
        tag.decompose()
    # HTML whitespace: any run is one space, except inside <pre>.
    for string in soup.find_all(string=True):
        if type(string) is NavigableString and not any(p.name in _PRESERVE_WHITESPACE for p in string.parents):
            string.replace_with(re.sub(r"\s+", " ", string))
    for tag in soup.find_all(list(_BLOCK_BREAKS)):
        tag.insert_before(_BLOCK_BREAKS[tag.name])
        tag.insert_after(_BLOCK_BREAKS[tag.name])
    text = _BREAKS.sub(lambda m: "\n\n" if _PARAGRAPH in m.group(0) else "\n", soup.get_text())
    return text.strip(), title or None
