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
from typing import Any, BinaryIO, Iterator

from connector.config import CsvColumns, JsonlFields
from connector.records import Document, FailedDocument
from connector.sources.reading import SNIFF_BYTES, binary_reason, has_visible_text, one_line

Item = tuple["Document | FailedDocument", str]


def record_doc_id(rel: str, record_id: str | int) -> str:
    """The doc_id of a record: its file's relative POSIX path, '#', the record's id."""
    return f"{rel}#{record_id}"


def _sniff(rel: str, stream: BinaryIO, allow_utf16: bool) -> tuple[str | None, FailedDocument | None]:
    """(encoding, None) for a record file that looks like text, else (None, failure); rewinds."""
    head = stream.read(SNIFF_BYTES)
    stream.seek(0)
    if not head.strip():
        if not stream.read().strip():  # blank beyond the first bytes too
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


def jsonl_records(rel: str, stream: BinaryIO, fields: JsonlFields, file_metadata: dict[str, Any]) -> Iterator[Item]:
    """Documents of a .jsonl file, line by line; a bad line fails alone."""
    with stream:
        try:
            _, failure = _sniff(rel, stream, allow_utf16=False)
            if failure:
                yield failure, rel
                return
            for number, raw in enumerate(stream, start=1):
                yield from _jsonl_record(rel, number, raw, fields, file_metadata)
        except OSError as err:
            yield FailedDocument(rel, f"cannot read the file: {one_line(err)}", kind="unreadable"), rel


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
    rel: str, stream: BinaryIO, columns: CsvColumns, file_metadata: dict[str, Any], max_field_chars: int
) -> Iterator[Item]:
    """Documents of a .csv file (UTF-8, or UTF-16 with a byte order mark), row by row; the first
    row names the columns. A file without the id or text column fails as a whole; a bad row alone."""
    # The csv module refuses fields over 128 KiB by default; a text cell may be as big as a file.
    if csv.field_size_limit() < max_field_chars:
        csv.field_size_limit(max_field_chars)
    with stream:
        try:
            encoding, failure = _sniff(rel, stream, allow_utf16=True)
            if failure:
                yield failure, rel
                return
            text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="")
            yield from _csv_rows(rel, csv.reader(text, delimiter=columns.delimiter), columns, file_metadata)
        except OSError as err:
            yield FailedDocument(rel, f"cannot read the file: {one_line(err)}", kind="unreadable"), rel


def _csv_rows(rel: str, reader, columns: CsvColumns, file_metadata: dict[str, Any]) -> Iterator[Item]:
    try:
        header = [name.strip() for name in next(reader)]
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
        where = f"{rel}:line {reader.line_num + 1}"
        try:
            row = next(reader)
        except StopIteration:
            return
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
