"""FilesSource: documents from a folder tree (.txt, .md, .html/.htm, .jsonl)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from bs4 import BeautifulSoup, NavigableString, UnicodeDammit

from connector.config import FilesSourceConfig, JsonlFields
from connector.errors import SourceError
from connector.records import Document, FailedDocument
from connector.sources.base import Source

SUPPORTED_SUFFIXES = (".txt", ".md", ".html", ".htm", ".jsonl")

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
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_H1 = re.compile(r"^\s{0,3}# +(.*?)(?:\s+#+)?\s*$")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob for POSIX paths relative to the root.

    `*` and `?` match within one path segment, `[abc]` / `[!abc]` match one character of a set,
    and a `**` segment matches any number of folders, none included: `**/*.md` matches `a.md`
    and `x/y/a.md`; `drafts/**` matches everything under `drafts/`. Matching is case-sensitive.
    """
    segments = pattern.strip().lstrip("/").removeprefix("./").split("/")
    parts: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_to_regex(segment) + ("" if last else "/"))
    return re.compile("".join(parts) + r"\Z")


def _segment_to_regex(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and "]" in segment[i + 2 :]:
            close = segment.index("]", i + 2)
            body = segment[i + 1 : close]
            negate = body.startswith("!")
            body = (body[1:] if negate else body).replace("\\", "\\\\")
            if body.startswith("^"):
                body = "\\" + body  # a literal '^', as in fnmatch
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = close
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _modified(stat: os.stat_result) -> str:
    return datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).isoformat(timespec="seconds")


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
    return " ".join(text.split())


class FilesSource(Source):
    """Documents from the files under `config.path` that match `include` and not `exclude`.

    - doc_id: the path relative to the root in POSIX form (`guides/setup.md`); for .jsonl the
      record's id as a string (records of every file share one id space).
    - Order: sorted by relative path (records in line order).
    - .txt/.md: UTF-8; the title of a .md file is its first `# ` heading.
    - .html/.htm: the declared charset (else UTF-8); script/style/noscript/template are dropped,
      block elements become line breaks, the title comes from <title>.
    - .jsonl: one JSON object per line, fields from `config.jsonl`; the other lines still load
      when one is bad. A line without a usable id fails as `path:line N`; a record with an id but
      no usable text fails under its id (so the sync keeps what it stored for that id).
    - A doc_id seen twice in one read: the second is a FailedDocument named after where it is
      ('duplicate doc_id ... (first seen in ...)').
    - metadata: `path` (relative), `modified` (file mtime, ISO 8601 UTC), `title` when known; for
      records also the record's metadata fields (`path` and `modified` win over record fields
      of the same name). No line number: a record that moves within its file is not a change.
    - Symlinked folders are not followed (no loops); symlinked files are read.
    """

    def __init__(self, config: FilesSourceConfig):
        self.config = config
        self.root = Path(config.path)
        self._include = [glob_to_regex(p) for p in config.include]
        self._exclude = [glob_to_regex(p) for p in config.exclude]
        # 'drafts/**' excludes the folder itself: it is not even listed.
        self._excluded_dirs = [
            glob_to_regex(p.strip()[: -len("/**")]) for p in config.exclude if p.strip().endswith("/**")
        ]

    def read(self) -> Iterator[Document | FailedDocument]:
        """Yield the documents (see the class docstring); raises SourceError right away if the root
        is missing or not a folder, and while reading if a sub-folder cannot be listed."""
        if not self.root.exists():
            raise SourceError(
                f"source folder {self.root} does not exist; check source.path in the config "
                f"(relative paths resolve from the config file's folder)"
            )
        if not self.root.is_dir():
            raise SourceError(
                f"source.path {self.root} is not a folder; point it at the folder that holds the documents"
            )
        return self._documents()

    def matches(self, rel: str) -> bool:
        """Whether a relative POSIX path is included and not excluded."""
        return any(p.match(rel) for p in self._include) and not any(p.match(rel) for p in self._exclude)

    def paths(self) -> list[str]:
        """Relative POSIX paths of the matching files, sorted."""
        found: list[str] = []

        def fail(err: OSError) -> None:
            raise SourceError(
                f"cannot list folder {err.filename}: {_one_line(err)}; fix its permissions or exclude "
                f"it with a pattern like 'folder/**' in source.exclude"
            ) from err

        for folder, dirnames, filenames in os.walk(self.root, onerror=fail, followlinks=False):
            rel_folder = Path(folder).relative_to(self.root).as_posix()
            prefix = "" if rel_folder == "." else rel_folder + "/"
            dirnames[:] = [d for d in dirnames if not any(p.match(prefix + d) for p in self._excluded_dirs)]
            found.extend(prefix + name for name in filenames if self.matches(prefix + name))
        return sorted(found)

    def _documents(self) -> Iterator[Document | FailedDocument]:
        seen: dict[str, str] = {}  # doc_id -> where it was first seen
        for rel in self.paths():
            for item, where in self._read_file(rel):
                first = seen.get(item.doc_id)
                if first is not None:
                    item = FailedDocument(where, f"duplicate doc_id {item.doc_id!r} (first seen in {first})")
                else:
                    seen[item.doc_id] = where
                if isinstance(item, FailedDocument):
                    item = dataclasses.replace(item, origin=rel)
                yield item

    def _read_file(self, rel: str) -> Iterator[tuple[Document | FailedDocument, str]]:
        """(document or failure, where it is) for one file; a .jsonl file gives one per record."""
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            name = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            yield FailedDocument(name, "the file name is not valid UTF-8; rename the file"), name
            return
        suffix = Path(rel).suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            reason = f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
            yield FailedDocument(rel, reason), rel
            return
        path = self.root / rel
        try:
            metadata: dict[str, Any] = {"path": rel, "modified": _modified(path.stat())}
            if suffix == ".jsonl":
                yield from self._records(rel, _open_binary(path), metadata)
                return
            data = _read_bytes(path)
        except OSError as err:
            yield FailedDocument(rel, f"cannot read the file: {_one_line(err)}"), rel
            return
        if suffix in (".html", ".htm"):
            parsed = _html_text(data)
            if parsed is None:
                yield FailedDocument(rel, "cannot detect the HTML file's encoding; declare <meta charset>"), rel
                return
            text, title = parsed
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as err:
                reason = (
                    f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); "
                    f"save the file as UTF-8"
                )
                yield FailedDocument(rel, reason), rel
                return
            title = _markdown_title(text) if suffix == ".md" else None
        if title:
            metadata["title"] = title
        yield Document(rel, text, metadata), rel

    def _records(self, rel: str, lines: BinaryIO, file_metadata: dict[str, Any]):
        """Documents of a .jsonl file, streamed line by line."""
        fields = self.config.jsonl
        with lines:
            for number, raw in enumerate(lines, start=1):
                yield from self._record(rel, number, raw, fields, file_metadata)

    def _record(self, rel: str, number: int, raw: bytes, fields: JsonlFields, file_metadata: dict[str, Any]):
        where = f"{rel}:line {number}"
        if not raw.strip():
            return
        try:
            record = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as err:
            yield FailedDocument(where, f"not valid UTF-8 at byte {err.start} of the line; save the file as UTF-8"), where
            return
        except json.JSONDecodeError as err:
            yield FailedDocument(where, f"not valid JSON: {err.msg} at column {err.colno}"), where
            return
        except (ValueError, RecursionError) as err:
            yield FailedDocument(where, f"not usable JSON: {_one_line(err)}"), where
            return
        if not isinstance(record, dict):
            yield FailedDocument(where, f"expected a JSON object, got {type(record).__name__}"), where
            return
        doc_id = record.get(fields.id_field)
        text = record.get(fields.text_field)
        reason = None
        if doc_id is None:
            reason = f"the record has no {fields.id_field!r} field; set source.jsonl.id_field to the field that holds the id"
        elif isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
            reason = f"the record's {fields.id_field!r} must be a non-empty string or an integer, got {doc_id!r:.40}"
        if reason:
            yield FailedDocument(where, reason), where
            return
        # From here the id is known: a failure carries it, so the sync keeps what it stored for it.
        if text is None:
            reason = f"the record has no {fields.text_field!r} field; set source.jsonl.text_field to the field that holds the text"
        elif not isinstance(text, str):
            reason = f"the record's {fields.text_field!r} must be a string, got {type(text).__name__}"
        if reason:
            yield FailedDocument(str(doc_id), f"{where}: {reason}"), where
            return
        if fields.metadata_fields is None:
            own = {k: v for k, v in record.items() if k not in (fields.id_field, fields.text_field)}
        else:
            own = {k: record[k] for k in fields.metadata_fields if k in record}
        metadata = {**own, **file_metadata}
        yield Document(str(doc_id), text, metadata), where


def _markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading ('# Title') outside fenced code blocks."""
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            match = _H1.match(line)
            if match and match.group(1).strip():
                return match.group(1).strip()
    return None


def _html_text(data: bytes) -> tuple[str, str | None] | None:
    """(text, title) of an HTML page, or None when its encoding cannot be made out."""
    markup = UnicodeDammit(data, ["utf-8"], is_html=True).unicode_markup
    if markup is None:
        return None
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
