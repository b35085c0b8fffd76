"""FilesSource: documents from a folder tree (.txt, .md, .html/.htm, .pdf, .docx, .jsonl, .csv)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat as stat_module
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from connector import __version__
from connector.config import FilesSourceConfig
from connector.errors import SourceError
from connector.records import Document, FailedDocument, UnchangedFile
from connector.sources.base import Source
from connector.sources.docxfile import read_docx
from connector.sources.htmlfile import read_html
from connector.sources.pdffile import read_pdf
from connector.sources.reading import Parsed, ReadFailure, has_visible_text, one_line
from connector.sources.recordfiles import csv_records, jsonl_records, record_doc_id
from connector.sources.textfile import read_markdown, read_text

# Formats read whole into one Document, and record formats streamed into many.
DOCUMENT_READERS: dict[str, Callable[[bytes], Parsed]] = {
    ".txt": read_text,
    ".md": read_markdown,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".docx": read_docx,
}
RECORD_SUFFIXES = (".jsonl", ".csv")
SUPPORTED_SUFFIXES = (*DOCUMENT_READERS, *RECORD_SUFFIXES)
_MIB = 1024 * 1024


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


def _read_bytes(stream: BinaryIO) -> bytes:
    return stream.read()


def _open_binary(path: str) -> BinaryIO:
    """Open a file for reading; a FIFO put in its place after the listing does not block the open."""
    return open(path, "rb", opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NONBLOCK", 0)))


def opened_path(stream: BinaryIO, path: str) -> str:
    """The real path of the file `stream` has open. On Linux the kernel's own name for it
    (/proc/self/fd/N): exactly the file that will be read, whatever happened to `path` since.
    Elsewhere the resolved `path`, provided it still names the opened file (same device and inode);
    if it does not, the file was swapped while being opened: ReadFailure 'unreadable'."""
    fd = stream.fileno()
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    real = os.path.realpath(path)
    if not os.path.samestat(os.fstat(fd), os.stat(real)):
        raise ReadFailure("unreadable", "the file was replaced while it was being opened; run the sync again")
    return real


def _check_regular(stat: os.stat_result) -> None:
    if not stat_module.S_ISREG(stat.st_mode):  # a FIFO or device would block or never end
        raise ReadFailure("unreadable", "not a regular file (a pipe, socket or device)")


class FilesSource(Source):
    """Documents from the files under `config.path` that match `include` and not `exclude`.

    - doc_id: the path relative to the root in POSIX form (`guides/setup.md`); for a record of a
      .jsonl or .csv file that path, '#' and the record's id (`data/tickets.jsonl#T-7`), so a record
      cannot take the doc_id of a file or of another file's record.
    - Order: sorted by relative path (records in file order).
    - .txt/.md: the encoding is detected (decoding.decode_text: a byte order mark, UTF-16/32 NUL
      patterns, ISO-2022 escapes, UTF-8, HZ, then the most plausible strict reading, refused when
      two differ and are equally plausible; `metadata.encoding` names any encoding but UTF-8);
      bytes that no text holds fail as 'binary', undecidable ones as 'encoding'. The title of a
      .md file is its first `# ` heading.
    - .html/.htm: decoded the same way, with the charset the page declares (<meta>, <?xml?>) as a
      signal; `config.html.mode` "main" (the default) keeps the main content (trafilatura; a page
      where it finds little or none is read in full), "full" the whole page (script/style/noscript/
      template dropped, block elements become line breaks); the title comes from <title>.
    - .pdf (extra `pdf`): one section per page with text, metadata {"page": n}; the text is the
      pages' texts joined by blank lines; `metadata.page_count`; the title from the document info.
      Encrypted PDFs are opened with the empty user password.
    - .docx (extra `docx`): paragraphs and tables ('cell | cell' rows; a cell merged down several
      rows shows in the first) in document order; the title from the core properties, else the
      first heading.
    - .jsonl: one JSON object per line, fields from `config.jsonl`; .csv: a header row, then one
      record per row, columns from `config.csv`. A bad line or row fails alone; one without a
      usable id fails as `path:line N`, one with an id but no usable text fails under its id (so
      the sync keeps what it stored for that id). A CSV without its id or text column fails as a
      whole, under its path. A line or row over `config.max_record_mb` fails alone as 'too_large'
      under `path:line N` (it is never held whole in memory).
    - Every failure has a `kind` (records.FAILURE_KINDS) and its file as `origin`: files with no
      visible text fail as 'empty', files over `config.max_file_mb` as 'too_large' (a .docx also
      when its parts unpack to more; record files are streamed: see max_record_mb), damaged ones,
      and any unexpected error of a reader (RecursionError, MemoryError, ...), as 'corrupt',
      password-protected ones as 'encrypted', and a format whose optional package is missing as
      'missing_extra'.
    - Work per file is linear in its size (deeply nested HTML included).
    - A doc_id seen twice in one read (a record id repeated within its file): the second is a
      FailedDocument 'duplicate' named after where it is ('duplicate doc_id ... (first seen in
      ...)'); the first is kept.
    - metadata: `path` (relative), `modified` (file mtime, ISO 8601 UTC), `title` when known; for
      records also the record's metadata fields (`path` and `modified` win over record fields
      of the same name). No line number: a record that moves within its file is not a change.
    - Change detection (`config.change_detection`, default 'stat'): every document carries its file's
      stamp (size, mtime in ns, inode, and a hash of this config); a file whose stamp is the one
      the sync passed to `skip_unchanged` is not opened: `UnchangedFile(path)` stands for all its
      documents. With 'content' every file is read.
    - Nothing outside the root is read: the root is resolved once (it may itself be a symlink), and
      a file whose real path is outside it (a symlink to /etc/passwd, or through other symlinks)
      fails as 'outside_root' unless `config.follow_symlinks_outside`. Symlinked folders are never
      followed (no loops, nothing outside); symlinked files inside the root are read; a broken or
      looping file link fails as 'unreadable'.
    """

    def __init__(self, config: FilesSourceConfig):
        self.config = config
        self.root = Path(config.path)
        self.root_real = Path(os.path.realpath(self.root))  # resolved again by read()
        self._include = [glob_to_regex(p) for p in config.include]
        self._exclude = [glob_to_regex(p) for p in config.exclude]
        # A .docx is a zip: its parts count against the size limit unpacked.
        max_docx = int(config.max_file_mb * _MIB)
        self._readers = {**DOCUMENT_READERS, ".docx": partial(
            read_docx, max_unpacked_bytes=max_docx, footnotes=config.docx.footnotes,
            headers_footers=config.docx.headers_footers)}
        for suffix in (".html", ".htm"):
            self._readers[suffix] = partial(DOCUMENT_READERS[suffix], mode=config.html.mode)
        # 'drafts/**' excludes the folder itself: it is not even listed.
        self._excluded_dirs = [
            glob_to_regex(p.strip()[: -len("/**")]) for p in config.exclude if p.strip().endswith("/**")
        ]
        # how files are read (the settings, and the readers' version): when it changes every stamp
        # differs, so every file is read again
        how = {"config": config.model_dump(mode="json"), "version": __version__}
        self._settings = hashlib.sha256(json.dumps(how, sort_keys=True).encode()).hexdigest()[:16]
        self._known: dict[str, str] = {}

    def skip_unchanged(self, stamps: dict[str, str]) -> None:
        if self.config.change_detection == "stat":
            self._known = stamps

    def _stamp(self, stat: os.stat_result) -> str:
        return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{self._settings}"

    def _unchanged(self, rel: str) -> bool:
        """Does the file still have the stamp the sync knows (checked without opening it)?"""
        known = self._known.get(rel)
        if known is None:
            return False
        path = os.path.join(self.root_real, rel)
        try:
            self._check_inside(rel, os.path.realpath(path))
            stat = os.stat(path)
        except (ReadFailure, OSError):
            return False  # read as usual, which reports the problem
        return stat_module.S_ISREG(stat.st_mode) and self._stamp(stat) == known

    def read(self) -> Iterator[Document | FailedDocument]:
        """Yield the documents (see the class docstring); raises SourceError right away if the root
        is missing or not a folder, and while reading if a sub-folder cannot be listed."""
        self.root_real = Path(os.path.realpath(self.root))  # once: every file is compared against it
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
                f"cannot list folder {err.filename}: {one_line(err)}; fix its permissions or exclude "
                f"it with a pattern like 'folder/**' in source.exclude"
            ) from err

        for folder, dirnames, filenames in os.walk(self.root_real, onerror=fail, followlinks=False):
            rel_folder = Path(folder).relative_to(self.root_real).as_posix()
            prefix = "" if rel_folder == "." else rel_folder + "/"
            dirnames[:] = [d for d in dirnames if not any(p.match(prefix + d) for p in self._excluded_dirs)]
            found.extend(prefix + name for name in filenames if self.matches(prefix + name))
        return sorted(found)

    def renamed_doc_ids(self, known: dict[str, str | None]) -> dict[str, str]:
        """Records that older versions stored under their bare id (`T-7`, origin
        `data/tickets.jsonl`) are now `data/tickets.jsonl#T-7`. A bare id that is the path of one of
        the source's files is not renamed: that file takes its doc_id back (the record had taken it)."""
        bare = {doc_id: origin for doc_id, origin in known.items()
                if origin and origin.lower().endswith(RECORD_SUFFIXES) and not doc_id.startswith(origin + "#")}
        if not bare:
            return {}
        files = set(self.paths())
        return {doc_id: record_doc_id(origin, doc_id) for doc_id, origin in bare.items() if doc_id not in files}

    def _documents(self) -> Iterator[Document | FailedDocument | UnchangedFile]:
        seen: dict[str, str] = {}  # doc_id -> where it was first seen
        for rel in self.paths():
            if self._unchanged(rel):
                yield UnchangedFile(rel)
                continue
            for item, where in self._read_file(rel):
                first = seen.get(item.doc_id)
                if first is not None:
                    item = FailedDocument(
                        where, f"duplicate doc_id {item.doc_id!r} (first seen in {first})", kind="duplicate"
                    )
                else:
                    seen[item.doc_id] = where
                if isinstance(item, FailedDocument):
                    item = dataclasses.replace(item, origin=rel)
                yield item

    def _read_file(self, rel: str) -> Iterator[tuple[Document | FailedDocument, str]]:
        """(document or failure, where it is) for one file; a record file gives one per record."""
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            name = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            yield FailedDocument(name, "the file name is not valid UTF-8; rename the file", kind="encoding"), name
            return
        suffix = Path(rel).suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            reason = f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
            yield FailedDocument(rel, reason, kind="unsupported"), rel
            return
        try:
            stream, stat = self._open(rel)
        except ReadFailure as failure:
            yield FailedDocument(rel, failure.reason, kind=failure.kind), rel
            return
        except OSError as err:
            yield FailedDocument(rel, f"cannot read the file: {one_line(err)}", kind="unreadable"), rel
            return
        metadata: dict[str, Any] = {"path": rel, "modified": _modified(stat)}
        stamp = self._stamp(stat)  # taken before reading: a write meanwhile gives the file a newer one
        if suffix in RECORD_SUFFIXES:
            for item, where in self._records(rel, stream, suffix, metadata):
                yield (dataclasses.replace(item, stamp=stamp) if isinstance(item, Document) else item), where
            return
        if stat.st_size > self.config.max_file_mb * _MIB:
            stream.close()
            reason = (
                f"the file is {stat.st_size / _MIB:.1f} MiB, over source.max_file_mb "
                f"({self.config.max_file_mb:g}); raise the limit or exclude the file"
            )
            yield FailedDocument(rel, reason, kind="too_large"), rel
            return
        try:
            with stream:
                data = _read_bytes(stream)
        except OSError as err:
            yield FailedDocument(rel, f"cannot read the file: {one_line(err)}", kind="unreadable"), rel
            return
        try:
            parsed = self._readers[suffix](data)
            if not has_visible_text(parsed.text):
                raise ReadFailure("empty", "the file has no text" if data.strip() else "the file is empty")
        except ReadFailure as failure:
            yield FailedDocument(rel, failure.reason, kind=failure.kind), rel
            return
        except Exception as err:  # RecursionError, MemoryError, a reader's bug: the file fails, the sync goes on
            del data
            yield _crash(rel, suffix, err), rel
            return
        del data
        metadata.update(parsed.metadata or {})
        if parsed.title:
            metadata["title"] = parsed.title
        yield Document(rel, parsed.text, metadata, parsed.sections, stamp), rel

    def _open(self, rel: str) -> tuple[BinaryIO, os.stat_result]:
        """Open a listed file: a regular file whose real path is inside the root (unless
        `follow_symlinks_outside`). Raises ReadFailure or OSError.

        Checked twice: on the resolved path before the open, so that nothing outside the root is
        even opened, and on the file actually opened (`opened_path`), so that a symlink swapped in
        between the check and the open, or a folder on the way replaced by one, cannot slip through."""
        path = os.path.join(self.root_real, rel)
        self._check_inside(rel, os.path.realpath(path))
        _check_regular(os.stat(path))
        stream = _open_binary(path)
        try:
            if not self.config.follow_symlinks_outside:
                self._check_inside(rel, opened_path(stream, path))
            stat = os.fstat(stream.fileno())
            _check_regular(stat)
        except BaseException:
            stream.close()
            raise
        return stream, stat

    def _check_inside(self, rel: str, real: str) -> None:
        if self.config.follow_symlinks_outside or Path(real).is_relative_to(self.root_real):
            return
        raise ReadFailure(
            "outside_root",
            f"{rel} -> {real} is outside source.path ({self.root_real}); move the file into the folder, "
            f"or set source.follow_symlinks_outside: true to read files that symlinks lead to",
        )

    def _records(
        self, rel: str, stream: BinaryIO, suffix: str, metadata: dict[str, Any]
    ) -> Iterator[tuple[Document | FailedDocument, str]]:
        """The records of a .jsonl or .csv file. An unexpected error ends the file with a 'corrupt'
        failure under its path: the records read before it stay, and the sync never prunes
        documents that came from a file that failed."""
        max_record = int(self.config.max_record_mb * _MIB)
        if suffix == ".jsonl":
            records = jsonl_records(rel, stream, self.config.jsonl, metadata, max_record)
        else:
            records = csv_records(rel, stream, self.config.csv, metadata, max_record)
        try:
            yield from records
        except Exception as err:  # RecursionError, MemoryError, a reader's bug
            yield _crash(rel, suffix, err), rel


def _crash(rel: str, suffix: str, err: Exception) -> FailedDocument:
    """The failure of a reader that raised an unexpected error: a package it needs that is missing
    (the installation is broken, not the file), else a damaged or hostile file."""
    if isinstance(err, ImportError):
        return FailedDocument(rel, f"reading the {suffix} file needs a package that is not installed: "
                                   f"{one_line(err)}; reinstall connector with its dependencies", kind="missing_extra")
    return FailedDocument(rel, f"reading the {suffix} file failed: {one_line(err)}; the file is damaged or built "
                               "to exhaust readers: repair or re-save it, or exclude it", kind="corrupt")
