"""HTML pages: the main text, without scripts and styles, with paragraphs kept."""

from __future__ import annotations

import re
from typing import Iterator

from bs4 import BeautifulSoup, NavigableString, PageElement, Tag

from connector.sources.decoding import declared_charset, decode_text
from connector.sources.reading import Parsed

# HTML elements whose text is not content.
_DROPPED_TAGS = {"script", "style", "noscript", "template", "head"}
# Block elements, and whether they end a paragraph or a line, so paragraphs survive. They are
# marked with two control characters (removed from the page first), so nested blocks give one
# break, not one per level.
_LINE, _PARAGRAPH = "\x00", "\x01"
_BLOCK_BREAKS = {
    **dict.fromkeys(
        "p div h1 h2 h3 h4 h5 h6 section article header footer nav aside main blockquote pre "
        "table ul ol dl figure figcaption form fieldset address details summary hr".split(),
        _PARAGRAPH,
    ),
    **dict.fromkeys("li tr dt dd caption br td th".split(), _LINE),
}
# Every maximal run of whitespace and markers (found in one linear scan; a pattern that must
# end in a marker would rescan long whitespace runs inside <pre> from every position).
_RUNS = re.compile(r"[\s\x00\x01]+")
_SPACES = re.compile(r"\s+")
_PRESERVE_WHITESPACE = {"pre", "textarea"}
_XML_DECLARATION = re.compile(r"<\?xml[^>]*>")  # up to the first ">", as an HTML parser reads it


def read_html(data: bytes) -> Parsed:
    """The page's text and its <title>; the bytes are decoded as decoding.decode_text says, with
    the charset the page declares (<meta charset>, http-equiv, <?xml encoding?>) as one signal."""
    markup, _ = decode_text(data, declared_charset(data))
    text, title = html_text(markup)
    return Parsed(text, title)


def html_text(markup: str) -> tuple[str, str | None]:
    """(text, title) of an HTML page, in one walk of the tree: time and memory grow linearly
    with the page, however deeply its elements nest."""
    declaration = _XML_DECLARATION.match(markup)
    if declaration:  # XHTML: read as the HTML it is, without bs4's "XML parsed as HTML" warning
        markup = markup[declaration.end() :]  # (its encoding is already applied)
    soup = BeautifulSoup(markup.replace(_LINE, "").replace(_PARAGRAPH, ""), "lxml")
    title = " ".join(soup.title.get_text().split()) if soup.title else None
    text = _RUNS.sub(_break, "".join(_pieces(soup)))
    return text.strip(), title or None


def _pieces(soup: BeautifulSoup) -> Iterator[str]:
    """The page's strings in document order, with a break marker before and after each block
    element; dropped elements are skipped, and whitespace runs become one space outside <pre>.

    An explicit stack instead of recursion (no depth limit), and no change to the tree (bs4's
    insert_after walks the subtree of the element, and a walk up to the root for every string
    costs the depth: both are quadratic on deeply nested pages)."""
    kept = soup.interesting_string_types  # the strings get_text() returns: no comments, doctypes, ...
    preserving = 0  # how many <pre>/<textarea> enclose the current element
    stack: list[tuple[Tag | None, Iterator[PageElement]]] = [(None, iter(soup.contents))]
    while stack:
        tag, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if tag is not None:
                preserving -= tag.name in _PRESERVE_WHITESPACE
                yield _BLOCK_BREAKS.get(tag.name, "")
        elif isinstance(child, Tag):
            if child.name not in _DROPPED_TAGS:
                yield _BLOCK_BREAKS.get(child.name, "")
                preserving += child.name in _PRESERVE_WHITESPACE
                stack.append((child, iter(child.contents)))
        elif type(child) in kept:
            yield child if preserving or type(child) is not NavigableString else _SPACES.sub(" ", child)


def _break(run: re.Match[str]) -> str:
    """A run of whitespace and markers: a blank line if it holds a paragraph marker, a line
    break if it holds a line marker, else unchanged."""
    if _PARAGRAPH in run.group(0):
        return "\n\n"
    return "\n" if _LINE in run.group(0) else run.group(0)
