"""Record files, streamed: .jsonl (one JSON object per line) and .csv (one record per row).

A record's doc_id is its file's path and its id: `record_doc_id("data/kb.jsonl", "7")` is
`data/kb.jsonl#7`, so a record can never take the doc_id of a file or of another file's record.
Each reader yields (Document or FailedDocument, where) pairs; `where` is `path:line N`. A record
whose id is known fails under its doc_id (so the sync keeps what it stored for it); one without a
usable id fails under `where`. Failures that concern the whole file fail under its path."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from typing import Any, BinaryIO, Iterator

from connector.config import CsvColumns, JsonlFields
from connector.records import Document, FailedDocument
from connector.sources.reading import SNIFF_BYTES, binary_reason, has_visible_text, one_line

Item = tuple["Document | FailedDocument", str]
_MIB = 1024 * 1024
_PIECE = _MIB  # what skipping the rest of an overlong line reads at a time


def record_doc_id(rel: str, record_id: str | int) -> str:
    """The doc_id of a record: its file's relative POSIX path, '#', the record's id."""
    return f"{rel}#{record_id}"


def _sniff(rel: str, stream: BinaryIO, allow_utf16: bool) -> tuple[str | None, FailedDocument | None]:
    """(encoding, None) for a record file that looks like text, else (None, failure); rewinds."""
    head = stream.read(SNIFF_BYTES)
    stream.seek(0)
    if not head.strip():
        if not any(piece.strip() for piece in iter(lambda: stream.read(_PIECE), b"")):  # blank beyond the first bytes too
            return None, FailedDocument(rel, "the file has no records (it is empty)", kind="empty")
        stream.seek(0)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        if allow_utf16:
            return "utf-16", None
        return None, FailedDocument(rel, "the file is UTF-16; JSONL must be UTF-8, save it as UTF-8", kind="encoding")
    reason = binary_reason(head)
    if reason:
        return None, FailedDocument(rel, reason, kind="binary")
    return "utf-8-sig", None


def jsonl_records(
    rel: str, stream: BinaryIO, fields: JsonlFields, file_metadata: dict[str, Any], max_record_bytes: int
) -> Iterator[Item]:
    """Documents of a .jsonl file, line by line; a bad line fails alone, and so does a line longer
    than `max_record_bytes` ('too_large'), which is never held whole in memory."""
    with stream:
        try:
            _, failure = _sniff(rel, stream, allow_utf16=False)
            if failure:
                yield failure, rel
                return
            number = 0
            while raw := stream.readline(max_record_bytes + 1):
                number += 1
                if len(raw) > max_record_bytes and not raw.endswith(b"\n"):
                    _skip_line(stream, raw)
                    where = f"{rel}:line {number}"
                    yield FailedDocument(where, _too_long("line", max_record_bytes), kind="too_large"), where
                    continue
                yield from _jsonl_record(rel, number, raw, fields, file_metadata)
        except OSError as err:
            yield FailedDocument(rel, f"cannot read the file: {one_line(err)}", kind="unreadable"), rel


def _skip_line(stream: BinaryIO, piece: bytes) -> None:
    """Read on to the end of the line that `piece` began, in bounded pieces."""
    while piece and not piece.endswith(b"\n"):
        piece = stream.readline(_PIECE)


def _too_long(what: str, limit: int) -> str:
    return (
        f"the {what} is longer than source.max_record_mb ({limit / _MIB:g} MiB); split the record, "
        f"raise the limit or exclude the file"
    )


def _jsonl_record(rel: str, number: int, raw: bytes, fields: JsonlFields, file_metadata: dict[str, Any]) -> Iterator[Item]:
    where = f"{rel}:line {number}"
    if not raw.strip():
        return
    try:
        record = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
    except UnicodeDecodeError as err:
        yield FailedDocument(where, f"not valid UTF-8 at byte {err.start} of the line; save the file as UTF-8", kind="encoding"), where
        return
    except json.JSONDecodeError as err:
        yield FailedDocument(where, f"not valid JSON: {err.msg} at column {err.colno}", kind="malformed"), where
        return
    except (ValueError, RecursionError) as err:
        yield FailedDocument(where, f"not usable JSON: {one_line(err)}", kind="malformed"), where
        return
    if not isinstance(record, dict):
        yield FailedDocument(where, f"expected a JSON object, got {type(record).__name__}", kind="malformed"), where
        return
    doc_id = record.get(fields.id_field)
    text = record.get(fields.text_field)
    reason = None
    if doc_id is None:
        reason = f"the record has no {fields.id_field!r} field; set source.jsonl.id_field to the field that holds the id"
    elif isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
        reason = f"the record's {fields.id_field!r} must be a non-empty string or an integer, got {doc_id!r:.40}"
    if reason:
        yield FailedDocument(where, reason, kind="malformed"), where
        return
    kind = "malformed"
    if text is None:
        reason = f"the record has no {fields.text_field!r} field; set source.jsonl.text_field to the field that holds the text"
    elif not isinstance(text, str):
        reason = f"the record's {fields.text_field!r} must be a string, got {type(text).__name__}"
    elif not has_visible_text(text):
        reason, kind = f"the record's {fields.text_field!r} is empty", "empty"
    if reason:
        yield FailedDocument(record_doc_id(rel, doc_id), f"{where}: {reason}", kind=kind), where
        return
    if fields.metadata_fields is None:
        own = {k: v for k, v in record.items() if k not in (fields.id_field, fields.text_field)}
    else:
        own = {k: record[k] for k in fields.metadata_fields if k in record}
    yield Document(record_doc_id(rel, doc_id), text, {**own, **file_metadata}), where


def csv_records(
    rel: str, stream: BinaryIO, columns: CsvColumns, file_metadata: dict[str, Any], max_record_chars: int
) -> Iterator[Item]:
    """Documents of a .csv file (UTF-8, or UTF-16 with a byte order mark), row by row; the first
    row names the columns. A file without the id or text column fails as a whole; a bad row alone,
    and so does a row longer than `max_record_chars` ('too_large'), never held whole in memory."""
    # The csv module refuses fields over 128 KiB by default; a text cell may be as big as a row.
    if csv.field_size_limit() < max_record_chars:
        csv.field_size_limit(max_record_chars)
    with stream:
        try:
            encoding, failure = _sniff(rel, stream, allow_utf16=True)
            if failure:
                yield failure, rel
                return
            text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="")
            lines = _CsvLines(text, max_record_chars, columns.delimiter)
            yield from _csv_rows(rel, csv.reader(lines, delimiter=columns.delimiter), lines, columns, file_metadata)
        except OSError as err:
            yield FailedDocument(rel, f"cannot read the file: {one_line(err)}", kind="unreadable"), rel


class _RowTooLong(Exception):
    """Raised through csv.reader when a row is over the limit; the rest of the row has been skipped."""


class _CsvLines:
    """The lines of a CSV file for csv.reader, read with a bound: when the lines of one row add
    up to more than `limit` characters, the rest of the row is skipped in bounded pieces and
    _RowTooLong raised. Call next_row() before each row is read (csv.reader reads no further
    than the end of the row it returns)."""

    def __init__(self, text: io.TextIOWrapper, limit: int, delimiter: str):
        self.text, self.limit = text, limit
        self.line_number = 0  # lines read so far
        self.row: list[str] = []  # the lines of the current row
        self.row_chars = 0
        self._field_end = re.compile(f"[{re.escape(delimiter)}\r\n]")

    def next_row(self) -> None:
        self.row, self.row_chars = [], 0

    def __iter__(self) -> "_CsvLines":
        return self

    def __next__(self) -> str:
        line = self.text.readline(self.limit - self.row_chars + 1)
        if not line:
            raise StopIteration
        self.line_number += 1
        if self.row_chars + len(line) > self.limit:
            self._skip_row(line)
            raise _RowTooLong()
        self.row.append(line)
        self.row_chars += len(line)
        return line

    def _skip_row(self, piece: str) -> None:
        """Read on to the end of the row that the row's lines and `piece` begin: the end of a line
        read outside quotes, found as csv.reader would (its default dialect: '"' quotes, doubled
        inside a quoted field)."""
        state = _START_FIELD
        for text in (*self.row, piece):
            state = self._parse(state, text)
        self.next_row()
        while True:
            while not piece.endswith(("\n", "\r")):  # the rest of this line
                piece = self.text.readline(_PIECE)
                if not piece:
                    return
                state = self._parse(state, piece)
            if piece.endswith("\r"):  # a bounded read may stop inside a \r\n
                position = self.text.tell()
                if self.text.read(1) != "\n":
                    self.text.seek(position)
            if state != _QUOTED:
                return
            piece = self.text.readline(_PIECE)  # the row goes on in a quoted field
            if not piece:
                return
            self.line_number += 1
            state = self._parse(state, piece)

    def _parse(self, state: int, text: str) -> int:
        """The csv parser's quoting state after `text`, in steps from quote to quote and field to field."""
        position = 0
        while position < len(text):
            if state == _QUOTED:
                position = text.find('"', position) + 1
                if position == 0:
                    return _QUOTED
                state = _QUOTE_IN_QUOTED
            elif state == _QUOTE_IN_QUOTED and text[position] == '"':  # a doubled quote
                state, position = _QUOTED, position + 1
            elif state == _QUOTE_IN_QUOTED:  # the quoted part's end; the field goes on to a delimiter
                state = _IN_FIELD
            elif state == _START_FIELD and text[position] == '"':
                state, position = _QUOTED, position + 1
            else:  # unquoted: a quote here is a character like any other
                end = self._field_end.search(text, position)
                if end is None:
                    return _IN_FIELD
                state, position = _START_FIELD, end.end()
        return state


_START_FIELD, _IN_FIELD, _QUOTED, _QUOTE_IN_QUOTED = range(4)


def _csv_rows(rel: str, reader, lines: _CsvLines, columns: CsvColumns, file_metadata: dict[str, Any]) -> Iterator[Item]:
    try:
        header = [name.strip() for name in next(reader)]
    except _RowTooLong:
        yield FailedDocument(rel, _too_long("header row", lines.limit), kind="too_large"), rel
        return
    except (StopIteration, csv.Error) as err:
        reason = "no header row" if isinstance(err, StopIteration) else f"unreadable header row: {one_line(err)}"
        yield FailedDocument(rel, reason, kind="malformed"), rel
        return
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        index.setdefault(name, i)
    for column, setting in ((columns.id_column, "id_column"), (columns.text_column, "text_column")):
        if column not in index:
            names = ", ".join(repr(_printable(n)) for n in header) or "(none)"
            reason = f"no {column!r} column; the columns are {names}; set source.csv.{setting}"
            yield FailedDocument(rel, reason, kind="malformed"), rel
            return
    if columns.metadata_columns is None:
        meta_columns = [n for n in index if n not in (columns.id_column, columns.text_column) and n]
    else:
        meta_columns = [n for n in columns.metadata_columns if n in index]
    while True:
        where = f"{rel}:line {lines.line_number + 1}"
        lines.next_row()
        try:
            row = next(reader)
        except StopIteration:
            return
        except _RowTooLong:
            yield FailedDocument(where, _too_long("row", lines.limit), kind="too_large"), where
            continue
        except csv.Error as err:
            yield FailedDocument(where, f"not a valid CSV row: {one_line(err)}", kind="malformed"), where
            continue
        if not any(cell.strip() for cell in row):
            continue
        yield _csv_record(rel, where, row, header, index, meta_columns, columns, file_metadata), where


def _csv_record(rel, where, row, header, index, meta_columns, columns: CsvColumns,
                file_metadata) -> Document | FailedDocument:
    if len(row) != len(header):
        return FailedDocument(where, f"the row has {len(row)} fields, the header {len(header)}", kind="malformed")
    doc_id = row[index[columns.id_column]].strip()
    if not doc_id:
        return FailedDocument(where, f"the row's {columns.id_column!r} column is empty", kind="malformed")
    if not _is_utf8(doc_id):
        return FailedDocument(where, "not valid UTF-8 in the row's id; save the file as UTF-8", kind="encoding")
    doc_id = record_doc_id(rel, doc_id)
    if not all(_is_utf8(cell) for cell in row):
        return FailedDocument(doc_id, f"{where}: not valid UTF-8 in the row; save the file as UTF-8", kind="encoding")
    text = row[index[columns.text_column]]
    if not has_visible_text(text):
        return FailedDocument(doc_id, f"{where}: the row's {columns.text_column!r} column is empty", kind="empty")
    metadata = {name: row[index[name]] for name in meta_columns}
    return Document(doc_id, text, {**metadata, **file_metadata})


def _is_utf8(cell: str) -> bool:
    try:
        cell.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as lone surrogates by 'surrogateescape'
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", "replace").decode("utf-8")[:60]
