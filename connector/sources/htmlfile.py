"""HTML pages: the main content (trafilatura) or the whole page's text, with paragraphs, table
rows and code blocks kept."""

from __future__ import annotations

import re
from typing import Iterator

import lxml.html
from bs4 import BeautifulSoup, NavigableString, PageElement, Tag
from lxml import etree

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
# Main content shorter than this is not trusted (trafilatura's own MIN_EXTRACTED_SIZE): the
# page is read in full.
MIN_MAIN_CHARS = 250


def read_html(data: bytes, mode: str = "main") -> Parsed:
    """The page's text and its <title>; the bytes are decoded as decoding.decode_text says, with
    the charset the page declares (<meta charset>, http-equiv, <?xml encoding?>) as one signal.

    mode "main": the main content only (see main_text); "full": the whole page's text (html_text)."""
    markup, _ = decode_text(data, declared_charset(data))
    if mode == "main":
        tree = _parse(markup)
        if tree is not None:
            title = " ".join((tree.findtext(".//title") or "").split())
            main = main_text(tree)
            if main:
                return Parsed(main, title or None)
    text, title = html_text(markup)
    return Parsed(text, title)


def _parse(markup: str) -> lxml.html.HtmlElement | None:
    """The page as an lxml tree, or None if it is empty or nested deeper than libxml2 parses
    (256 levels: deeper elements would be cut off silently)."""
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        tree = lxml.html.document_fromstring(markup.encode("utf-8", "surrogatepass"), parser=parser)
    except (etree.ParserError, ValueError):
        return None
    too_deep = any("Excessive depth" in entry.message for entry in parser.error_log)
    return None if too_deep else tree


def main_text(tree: lxml.html.HtmlElement) -> str | None:
    """The page's main content as trafilatura finds it, rendered as text; changes the tree.

    Navigation, menus, 'skip to content' links, cookie banners, footers, buttons and what
    html_text drops are left out. Headings and paragraphs are blocks separated by blank lines,
    list items one per line, a table one block of 'cell | cell' rows, a code block verbatim.
    None if trafilatura finds no main content, or less than MIN_MAIN_CHARS (tiny pages,
    fragments: trafilatura then falls back to a flat dump of the page): read_html then gives the
    whole page's text."""
    import trafilatura

    etree.strip_elements(tree, *(_DROPPED_TAGS - {"head"}), with_tail=False)
    _pre_as_code(tree)
    extracted = trafilatura.bare_extraction(
        tree, with_metadata=False, include_tables=True, include_comments=False, include_images=False,
        include_links=False, include_formatting=False, deduplicate=False,
    )
    if extracted is None or extracted.body is None:
        return None
    text = _render(extracted.body)
    return text if len(text) >= MIN_MAIN_CHARS else None


def _pre_as_code(tree: lxml.html.HtmlElement) -> None:
    """Give every <pre> its text as a single <code> child: trafilatura then keeps it verbatim as
    code (a <pre> without code-like signs, such as Python's `>>>` examples, would else become a
    quote with its whitespace collapsed, and markup inside it would be reflowed)."""
    for pre in tree.iter("pre"):
        text = pre.text_content()
        for child in list(pre):
            pre.remove(child)
        pre.text = None
        etree.SubElement(pre, "code").text = text


# trafilatura's output elements (its XML format) that start a block, and those that start a line.
_BLOCKS = {"p", "head", "quote", "list", "table", "div", "ab"}
_LINES = {"item", "row", "lb"}
_BLANK_LINES_AT_START = re.compile(r"\A(?:[ \t\r\f\v]*\n)+")


class _TextBuilder:
    """Blocks of lines of inline pieces; whitespace in a line collapses to single spaces."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.lines: list[str] = []
        self.pieces: list[str] = []

    def add(self, text: str | None) -> None:
        if text:
            self.pieces.append(text)

    def end_line(self) -> None:
        line = " ".join("".join(self.pieces).split())
        self.pieces = []
        if line:
            self.lines.append(line)

    def end_block(self) -> None:
        self.end_line()
        if self.lines:
            self.blocks.append("\n".join(self.lines))
            self.lines = []

    def add_block(self, text: str) -> None:
        self.end_block()
        self.blocks.append(text)

    def text(self) -> str:
        self.end_block()
        return "\n\n".join(self.blocks)


def _render(body: etree._Element) -> str:
    """trafilatura's body element as text, in one walk (linear in its size)."""
    out = _TextBuilder()
    in_cell = 0  # inside a table cell, a block or line boundary is only a space
    walker = etree.iterwalk(body, events=("start", "end"))
    for event, element in walker:
        tag = element.tag
        if event == "start" and tag == "code" and _is_code_block(element):
            walker.skip_subtree()  # its "end" event still comes, and adds the tail
            if in_cell:
                out.add(_code_text(element))
            else:
                out.add_block(_code_text(element))
            continue
        if tag == "cell":
            if event == "start" and element.getprevious() is not None:
                out.add(" | ")
            in_cell += 1 if event == "start" else -1
        elif tag in _BLOCKS or tag in _LINES:
            if in_cell:
                out.add(" ")
            elif tag in _BLOCKS:
                out.end_block()
            else:
                out.end_line()
        if event == "start":
            out.add(element.text)
        elif element is not body:
            out.add(element.tail)
    return out.text()


def _is_code_block(code: etree._Element) -> bool:
    """A <code> with a line break in it is a block (trafilatura's own rule), else inline code."""
    return code.find(".//lb") is not None or any("\n" in piece for piece in code.itertext())


def _code_text(code: etree._Element) -> str:
    """A code block's text exactly (its <lb> elements as line breaks), without the blank lines
    around it."""
    for linebreak in code.iter("lb"):
        linebreak.tail = "\n" + (linebreak.tail or "")
    return _BLANK_LINES_AT_START.sub("", "".join(code.itertext())).rstrip()


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
