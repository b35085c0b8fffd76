"""The records that flow between stages: Document -> Chunk -> Vectors -> Point."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Namespace for deterministic point ids; never change it, or every store gets new ids.
POINT_NAMESPACE = uuid.UUID("6f1c7e4a-2b8e-4f4e-9a57-2f0b8c1d9e10")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def point_id(collection: str, doc_id: str, chunk_index: int, variant: int = 0) -> str:
    """Deterministic point id: UUIDv5 of collection, doc_id and chunk index (and `variant`, when
    the sync needs another id for that index: a moved chunk that kept its point holds the first)."""
    name = f"{collection}\x1f{doc_id}\x1f{chunk_index}" + (f"\x1f{variant}" if variant else "")
    return str(uuid.uuid5(POINT_NAMESPACE, name))


@dataclass(frozen=True)
class Section:
    """A part of a document with its own metadata, e.g. one PDF page ({"page": 3})."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """One source item. `doc_id` is stable across runs for the same item.

    A source may give `sections` (e.g. PDF pages) instead of one text: `text` is then their texts
    joined by blank lines, and every chunk gets the metadata of the sections it overlaps
    (for pages: `pages: [first, ..., last]`).

    `stamp`: what the source can tell about the item's file without reading it (see
    `Source.skip_unchanged`), or None."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    sections: tuple[Section, ...] = ()
    stamp: str | None = None


@dataclass(frozen=True)
class UnchangedFile:
    """A source file the source did not read because its stamp is the one the last sync recorded:
    every document the ledger has from `origin` is unchanged (see `Source.skip_unchanged`)."""

    origin: str


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's cleaned text; offsets index into that cleaned text."""

    doc_id: str
    index: int
    text: str
    char_start: int
    char_end: int

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)


@dataclass
class SparseVector:
    """Lexical weights: unique token ids sorted ascending, float32 weights > 0."""

    indices: np.ndarray  # int64
    values: np.ndarray  # float32

    @classmethod
    def empty(cls) -> "SparseVector":
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))

    def as_dict(self) -> dict[int, float]:
        return {int(i): float(v) for i, v in zip(self.indices, self.values)}

    def to_json(self) -> dict[str, list]:
        return {"indices": [int(i) for i in self.indices], "values": [float(v) for v in self.values]}


@dataclass
class TokenDetails:
    """What a person debugging a score wants to see of one encoded text (`encode(..., details=True)`)."""

    token_ids: np.ndarray  # int64, every position of the truncated text, special tokens included
    token_weights: np.ndarray  # float32, relu(sparse_linear(h)) at each position
    colbert: np.ndarray | None  # float32 [positions - 1, dim], L2-normalised rows; None without the head


@dataclass
class Vectors:
    """The encoder's output for one text."""

    dense: np.ndarray  # float32, L2-normalised
    sparse: SparseVector
    details: TokenDetails | None = None  # only when asked for: encode(texts, details=True)


@dataclass
class Point:
    """What a sink writes: id, vectors and payload."""

    id: str
    dense: np.ndarray | None  # None in a collection that holds only a legacy vector
    sparse: SparseVector
    payload: dict[str, Any]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other named dense vectors, e.g. dense_768


@dataclass
class Hit:
    """One search result."""

    id: str
    score: float
    payload: dict[str, Any]


def lexical_score(a: SparseVector, b: SparseVector) -> float:
    """Sum over shared token ids of w1 * w2 (bge-m3's unnormalised lexical matching score)."""
    shared, ia, ib = np.intersect1d(a.indices, b.indices, assume_unique=True, return_indices=True)
    if shared.size == 0:
        return 0.0
    return float(np.dot(a.values[ia].astype(np.float64), b.values[ib].astype(np.float64)))


#: Kinds of per-document failure; `ignore_failures:` in the config can name some of them.
FAILURE_KINDS = (
    "unreadable",  # permission denied, I/O error, broken symlink
    "unsupported",  # a file type no source reads
    "binary",  # binary content behind a text extension
    "encoding",  # text in an encoding that cannot be detected or decoded
    "empty",  # no text at all (empty, whitespace only, HTML with only scripts)
    "corrupt",  # a damaged PDF / DOCX / ...
    "encrypted",  # a password-protected file
    "malformed",  # a bad JSONL line or CSV row, a record without id or text
    "duplicate",  # a doc_id already seen in this read
    "too_large",  # over the source's size limit
    "missing_extra",  # the format needs an optional package that is not installed
    "outside_root",  # a symlink that leads outside the source folder
)
#: Kinds of failure where the source refuses the file itself (not merely cannot read it this time):
#: whatever was stored from that file is deleted.
REFUSED_KINDS = ("outside_root",)


@dataclass(frozen=True)
class FailedDocument:
    """A source item that could not be read; the sync records it and goes on."""

    doc_id: str
    reason: str  # one line, says what is wrong
    origin: str | None = None  # the file it came from; documents stored from that file are never pruned
    kind: str = "unreadable"  # one of FAILURE_KINDS


def points_to_bytes(points: list[Point]) -> bytes:
    """Serialise points exactly (vectors as raw float32 / int64, base64 in JSON) for the dead-letter store."""
    import base64
    import json

    def b64(array, dtype) -> str:
        return base64.b64encode(np.asarray(array, dtype=dtype).tobytes()).decode("ascii")

    rows = [
        {
            "id": p.id,
            "dense": None if p.dense is None else b64(p.dense, np.float32),
            "sparse_indices": b64(p.sparse.indices, np.int64),
            "sparse_values": b64(p.sparse.values, np.float32),
            "payload": p.payload,
            "extra": {name: b64(v, np.float32) for name, v in p.extra.items()},
        }
        for p in points
    ]
    return json.dumps(rows, ensure_ascii=False).encode("utf-8")


def points_from_bytes(blob: bytes) -> list[Point]:
    import base64
    import json

    def array(text: str, dtype) -> np.ndarray:
        return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()

    return [
        Point(
            id=row["id"],
            dense=None if row["dense"] is None else array(row["dense"], np.float32),
            sparse=SparseVector(array(row["sparse_indices"], np.int64), array(row["sparse_values"], np.float32)),
            payload=row["payload"],
            extra={name: array(v, np.float32) for name, v in row.get("extra", {}).items()},
        )
        for row in json.loads(blob.decode("utf-8"))
    ]
