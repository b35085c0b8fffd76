"""The ledger: what the connector knows it has written, in SQLite under state_dir.

Per document: its content hash, the pipeline fingerprint it was processed with, and per chunk
the point id, a key (hash of the point's text and payload) and the hash of the text whose vectors
the point holds. Per source file: the stamp it had when the last finished sync read it (`files`).
The ledger only moves after the store confirmed a write. Stale point ids go into `pending_deletes` in the same transaction that
moves the document, and leave it only after the store confirmed the delete, so a crash at any
moment leaves a state the next run converges from.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import asdict, astuple, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from connector.errors import ConfigError
from connector.statedir import private_dir, private_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    origin TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    doc_id TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    point_id TEXT NOT NULL,
    chunk_key TEXT NOT NULL,
    PRIMARY KEY (doc_id, chunk_index)
);
-- mark_in_flight looks chunks up by point id, once per point written: without this index each
-- lookup scanned the table, and a 20 000-document sync took 30x the time of a 2 000-document one
CREATE INDEX IF NOT EXISTS chunks_by_point_id ON chunks(point_id);
-- per source file, its stamp (size, mtime, inode, reading settings) when the last sync that
-- finished read everything from it without a failure: a file that still has it is not read again
CREATE TABLE IF NOT EXISTS files (origin TEXT PRIMARY KEY, stamp TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_deletes (point_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    error TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter_docs (
    letter_id INTEGER NOT NULL REFERENCES dead_letters(id),
    doc_id TEXT NOT NULL,
    commit_json TEXT NOT NULL,
    points BLOB NOT NULL,
    point_count INTEGER NOT NULL,
    PRIMARY KEY (letter_id, doc_id)
);
CREATE INDEX IF NOT EXISTS dead_letter_docs_by_doc_id ON dead_letter_docs(doc_id);
CREATE TABLE IF NOT EXISTS failed_documents (
    doc_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
"""


# Columns added after the first release: (table, column, declaration). A ledger written by an older
# version gets them on open, with their default (which means "unknown": nothing is skipped for it).
ADDED_COLUMNS = (
    # sha256 of the chunk text whose vectors the point holds; '' while unknown or in flight
    ("chunks", "content_hash", "TEXT NOT NULL DEFAULT ''"),
    # hash of the volatile metadata (file mtime) the document's points were written with; '' = unknown
    ("documents", "volatile_hash", "TEXT NOT NULL DEFAULT ''"),
)


def migrate(db: sqlite3.Connection) -> None:
    """Add the ADDED_COLUMNS a ledger does not have yet."""
    for table, column, declaration in ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LedgerDoc:
    doc_id: str
    content_hash: str
    fingerprint: str
    volatile_hash: str = ""


@dataclass(frozen=True)
class LedgerChunk:
    chunk_index: int
    point_id: str
    chunk_key: str
    content_hash: str = ""  # sha256 of the text whose vectors the point holds ('' = unknown)


@dataclass
class DocCommit:
    """What the ledger records for a document once the store confirmed all its points."""

    doc_id: str
    content_hash: str
    fingerprint: str
    chunks: list[LedgerChunk]
    stale_point_ids: list[str]
    origin: str | None = None
    volatile_hash: str = ""  # see LedgerDoc

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "chunks": [astuple(c) for c in self.chunks]})

    @classmethod
    def from_json(cls, text: str) -> "DocCommit":
        data = json.loads(text)
        data["chunks"] = [LedgerChunk(*c) for c in data["chunks"]]
        return cls(**data)


@dataclass
class DeadLetter:
    """A write the store refused after every retry, kept with its points for `connector retry`."""

    id: int
    error: str
    error_kind: str  # 'transient' or 'terminal'
    attempts: int
    created_at: str
    updated_at: str
    doc_ids: list[str]
    point_count: int


class Ledger:
    """SQLite state of one target collection (WAL mode, one transaction per commit)."""

    FILENAME = "ledger.sqlite"

    def __init__(self, state_dir: Path):
        self.path = private_sqlite(private_dir(state_dir) / self.FILENAME)
        self.exists = True
        self.db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions only
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        migrate(self.db)

    def close(self) -> None:
        self.db.close()

    @classmethod
    def open_read_only(cls, state_dir: Path) -> "Ledger":
        """The ledger in `state_dir` for reading only (`status`, `failed`): creates no folder and
        no file. Without a ledger there (nothing synced yet) an empty in-memory one stands in,
        and `exists` is False."""
        path = Path(state_dir) / cls.FILENAME
        if path.is_file():
            return cls._read_only(path, check_same_thread=True)
        empty = object.__new__(cls)
        empty.path, empty.exists = path, False
        empty.db = sqlite3.connect(":memory:", isolation_level=None)
        empty.db.executescript(SCHEMA)
        migrate(empty.db)
        return empty

    def reader(self) -> "Ledger":
        """Another connection to the same ledger, for reads from another thread (the sync's plan
        stage): it sees what the writer has committed. Close it when done."""
        return self._read_only(self.path, check_same_thread=False)

    @classmethod
    def _read_only(cls, path: Path, check_same_thread: bool) -> "Ledger":
        other = object.__new__(cls)
        other.path, other.exists = path, True
        other.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=check_same_thread)
        return other

    # ---- target binding -----------------------------------------------------------------
    def bind_target(self, target: str, write: bool = True) -> None:
        """Tie this state dir to one store + collection; refuse to mix two targets.
        With write=False (dry runs, status) only check."""
        row = self.db.execute("SELECT value FROM meta WHERE key='target'").fetchone()
        if row is None:
            if write:
                self.db.execute("INSERT INTO meta(key, value) VALUES ('target', ?)", (target,))
        elif row[0] != target:
            raise ConfigError(
                f"state_dir {self.path.parent} belongs to {row[0]}, but the config now targets {target}. "
                "Give each target collection its own state_dir (or delete the old state_dir to start over). If the "
                "collection itself moved there (a copied store folder, a snapshot restored on a server), run "
                "`connector rebind -c CONFIG` to bind this state dir to it."
            )

    def owner_id(self) -> str:
        """This state dir's id, recorded in the collections it writes (see connector.ownership)."""
        owner = self.get_meta("owner")
        if owner is None:
            owner = str(uuid.uuid4())
            self.db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('owner', ?)", (owner,))
            owner = self.get_meta("owner")
        return owner

    # ---- reads ------------------------------------------------------------------------------
    def document(self, doc_id: str) -> LedgerDoc | None:
        row = self.db.execute(
            "SELECT doc_id, content_hash, fingerprint, volatile_hash FROM documents WHERE doc_id=?", (doc_id,)
        ).fetchone()
        return LedgerDoc(*row) if row else None

    def chunks(self, doc_id: str) -> list[LedgerChunk]:
        rows = self.db.execute(
            "SELECT chunk_index, point_id, chunk_key, content_hash FROM chunks WHERE doc_id=? ORDER BY chunk_index",
            (doc_id,),
        )
        return [LedgerChunk(*r) for r in rows]

    def has_documents(self) -> bool:
        return self.db.execute("SELECT 1 FROM documents LIMIT 1").fetchone() is not None

    def doc_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT doc_id FROM documents ORDER BY doc_id")]

    def doc_origins(self) -> dict[str, str | None]:
        """doc_id -> the source file it came from."""
        return dict(self.db.execute("SELECT doc_id, origin FROM documents ORDER BY doc_id"))

    def documents_from(self, origin: str) -> list[str]:
        """The doc_ids that came from one source file (the file itself, or its records)."""
        return [r[0] for r in self.db.execute("SELECT doc_id FROM documents WHERE origin=? ORDER BY doc_id", (origin,))]

    def stamps(self) -> dict[str, str]:
        """origin -> the stamp the file had when the last finished sync read it, for the files none
        of whose documents is dirty (in flight, invalidated by `verify --repair`, renamed)."""
        rows = self.db.execute(
            "SELECT origin, stamp FROM files WHERE origin NOT IN"
            " (SELECT origin FROM documents WHERE content_hash='' AND origin IS NOT NULL)"
        )
        return dict(rows)

    def replace_stamps(self, stamps: dict[str, str]) -> None:
        """After a sync that finished: the files it read, or found unchanged, without a failure."""
        with self._transaction():
            self.db.execute("DELETE FROM files")
            self.db.executemany("INSERT INTO files(origin, stamp) VALUES (?, ?)", stamps.items())

    def iter_point_ids(self) -> Iterator[str]:
        for (pid,) in self.db.execute("SELECT point_id FROM chunks"):
            yield pid

    def point_index(self) -> dict[str, tuple[str, str, str]]:
        """point_id -> (doc_id, chunk_key, document fingerprint), for verify."""
        rows = self.db.execute(
            "SELECT c.point_id, c.doc_id, c.chunk_key, d.fingerprint FROM chunks c JOIN documents d USING (doc_id)"
        )
        one = {}  # one str object per doc_id and fingerprint, not one per point: 500 000 points take ~40% less
        return {pid: (one.setdefault(doc_id, doc_id), key, one.setdefault(fp, fp)) for pid, doc_id, key, fp in rows}

    def invalidate(self, point_ids: Iterable[str]) -> None:
        """Make the next sync rewrite these points (and re-plan their documents)."""
        point_ids = list(point_ids)
        with self._transaction():
            for pid in point_ids:
                self.db.execute("UPDATE chunks SET chunk_key='', content_hash='' WHERE point_id=?", (pid,))
                self.db.execute(
                    "UPDATE documents SET content_hash='' WHERE doc_id IN (SELECT doc_id FROM chunks WHERE point_id=?)",
                    (pid,),
                )

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def pending_deletes(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT point_id FROM pending_deletes ORDER BY point_id")]

    def failed_documents(self) -> list[dict]:
        rows = self.db.execute("SELECT doc_id, reason, failed_at FROM failed_documents ORDER BY doc_id")
        return [{"doc_id": d, "reason": r, "failed_at": t} for d, r, t in rows]

    def counts(self) -> dict[str, int]:
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "documents": one("SELECT COUNT(*) FROM documents"),
            "chunks": one("SELECT COUNT(*) FROM chunks"),
            "failed_documents": one("SELECT COUNT(*) FROM failed_documents"),
            "pending_deletes": one("SELECT COUNT(*) FROM pending_deletes"),
            "dead_letters": one("SELECT COUNT(*) FROM dead_letters"),
        }

    # ---- writes (each one transaction) -------------------------------------------------
    def commit_documents(self, commits: Iterable[DocCommit]) -> None:
        """Record documents whose points the store has confirmed, in one transaction; queue
        their stale points for deletion. A dead letter of an older version of one of these
        documents is dropped: replaying it would write old content over new."""
        with self._transaction():
            for c in commits:
                self._commit(c)

    def commit_document(self, commit: DocCommit) -> None:
        self.commit_documents([commit])

    def _commit(self, c: DocCommit) -> None:
        self.db.execute("DELETE FROM chunks WHERE doc_id=?", (c.doc_id,))
        self.db.executemany(
            "INSERT INTO chunks(doc_id, chunk_index, point_id, chunk_key, content_hash) VALUES (?, ?, ?, ?, ?)",
            [(c.doc_id, ch.chunk_index, ch.point_id, ch.chunk_key, ch.content_hash) for ch in c.chunks],
        )
        self.db.execute(
            "INSERT OR REPLACE INTO documents(doc_id, content_hash, fingerprint, chunk_count, origin, updated_at,"
            " volatile_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (c.doc_id, c.content_hash, c.fingerprint, len(c.chunks), c.origin, now_iso(), c.volatile_hash),
        )
        # A point just written must never be deleted by an older queued delete.
        self.db.executemany("DELETE FROM pending_deletes WHERE point_id=?", [(ch.point_id,) for ch in c.chunks])
        self._queue_deletes(c.doc_id, c.stale_point_ids)
        self.db.execute("DELETE FROM failed_documents WHERE doc_id=?", (c.doc_id,))
        self._drop_from_dead_letters(c.doc_id)

    # ---- dead letters ------------------------------------------------------------------
    def add_dead_letter(
        self, error: str, error_kind: str, attempts: int, docs: list[tuple[DocCommit, bytes, int]]
    ) -> int:
        """Keep a failed write: per document its commit record and its encoded points."""
        with self._transaction():
            for commit, _, _ in docs:
                self._drop_from_dead_letters(commit.doc_id)
            now = now_iso()
            cursor = self.db.execute(
                "INSERT INTO dead_letters(error, error_kind, attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (error, error_kind, attempts, now, now),
            )
            letter_id = cursor.lastrowid
            self.db.executemany(
                "INSERT INTO dead_letter_docs(letter_id, doc_id, commit_json, points, point_count) VALUES (?, ?, ?, ?, ?)",
                [(letter_id, c.doc_id, c.to_json(), blob, n) for c, blob, n in docs],
            )
        return letter_id

    def dead_letters(self, ids: Iterable[int] | None = None, limit: int | None = None) -> list[DeadLetter]:
        rows = self.db.execute(
            "SELECT l.id, l.error, l.error_kind, l.attempts, l.created_at, l.updated_at,"
            " group_concat(d.doc_id, char(31)), SUM(d.point_count)"
            " FROM dead_letters l JOIN dead_letter_docs d ON d.letter_id = l.id GROUP BY l.id ORDER BY l.id"
        ).fetchall()
        letters = [DeadLetter(*r[:6], doc_ids=sorted(r[6].split("\x1f")), point_count=int(r[7])) for r in rows]
        if ids is not None:
            wanted = set(ids)
            letters = [letter for letter in letters if letter.id in wanted]
        return letters[:limit] if limit is not None else letters

    def dead_letter_contents(self, letter_id: int) -> list[tuple[DocCommit, bytes]]:
        rows = self.db.execute(
            "SELECT commit_json, points FROM dead_letter_docs WHERE letter_id=? ORDER BY doc_id", (letter_id,)
        )
        return [(DocCommit.from_json(c), blob) for c, blob in rows]

    def resolve_dead_letter(self, letter_id: int) -> list[DocCommit]:
        """The store took the letter's points: commit its documents and drop it, in one transaction."""
        commits = [c for c, _ in self.dead_letter_contents(letter_id)]
        with self._transaction():
            for c in commits:
                self._commit(c)
            self.db.execute("DELETE FROM dead_letters WHERE id=?", (letter_id,))
        return commits

    def dead_letter_failed_again(self, letter_id: int, error: str, error_kind: str, attempts: int) -> None:
        self.db.execute(
            "UPDATE dead_letters SET error=?, error_kind=?, attempts=attempts+?, updated_at=? WHERE id=?",
            (error, error_kind, attempts, now_iso(), letter_id),
        )

    def _drop_from_dead_letters(self, doc_id: str) -> None:
        self.db.execute("DELETE FROM dead_letter_docs WHERE doc_id=?", (doc_id,))
        self.db.execute("DELETE FROM dead_letters WHERE id NOT IN (SELECT letter_id FROM dead_letter_docs)")

    def forget_document(self, doc_id: str) -> list[str]:
        """Drop a document (gone from the source); its point ids move to pending_deletes."""
        with self._transaction():
            return self._forget(doc_id)

    def _forget(self, doc_id: str) -> list[str]:
        # its file is read again if it comes back, even with the same stamp (moved away and back)
        self.db.execute("DELETE FROM files WHERE origin IN (SELECT origin FROM documents WHERE doc_id=?)", (doc_id,))
        ids = [r[0] for r in self.db.execute("SELECT point_id FROM chunks WHERE doc_id=?", (doc_id,))]
        self.db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
        self.db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        self.db.execute("DELETE FROM failed_documents WHERE doc_id=?", (doc_id,))
        self._drop_from_dead_letters(doc_id)  # a retry must not bring a deleted document back
        self._queue_deletes(doc_id, ids)
        return ids

    def rename_documents(self, renames: dict[str, str]) -> list[str]:
        """Move documents to new doc_ids ({old: new}; their source changed how it names them), in
        one transaction. Each keeps its chunks, and so its old point ids, and is marked changed: the
        next sync writes its points under the new ids and deletes the old ones as stale. Its failure
        record and dead letters go (the sync rewrites it from the source). A document the ledger
        already has under its new id is forgotten under the old one: returns the point ids that
        queued for deletion."""
        queued: list[str] = []
        with self._transaction():
            for old, new in renames.items():
                if self.document(new) is not None:
                    queued += self._forget(old)
                    continue
                self.db.execute("UPDATE documents SET doc_id=?, content_hash='' WHERE doc_id=?", (new, old))
                # content_hash '': its points are not taken over by the new doc_id (their ids derive from the old)
                self.db.execute("UPDATE chunks SET doc_id=?, content_hash='' WHERE doc_id=?", (new, old))
                self.db.execute("DELETE FROM failed_documents WHERE doc_id=?", (old,))
                self._drop_from_dead_letters(old)
        return queued

    def mark_in_flight(self, points: Iterable[tuple[str, str]], replaying_dead_letter: bool = False,
                       vectors: bool = True) -> None:
        """Before an upsert of (doc_id, point_id) pairs: make the ledger safe for a crash that
        lands after the store took the points but before the documents are committed. A point
        the ledger does not know yet is queued for deletion (commit takes it off the queue); a
        point it knows, and its document, are marked dirty so the next run rewrites them; when
        the write replaces its vectors (`vectors`; not for a payload-only update), the text its
        vectors stand for becomes unknown too. A sync's write also makes the documents' dead
        letters obsolete; a replay keeps its own letter."""
        points = list(points)
        dirty = "chunk_key='', content_hash=''" if vectors else "chunk_key=''"
        with self._transaction():
            for doc_id, pid in points:
                known = self.db.execute(f"UPDATE chunks SET {dirty} WHERE point_id=?", (pid,)).rowcount
                if not known:
                    self.db.execute(
                        "INSERT OR IGNORE INTO pending_deletes(point_id, doc_id) VALUES (?, ?)", (pid, doc_id)
                    )
            for doc_id in {d for d, _ in points}:
                self.db.execute("UPDATE documents SET content_hash='' WHERE doc_id=?", (doc_id,))
                if not replaying_dead_letter:
                    # A newer write of this document makes its older dead letter obsolete:
                    # replaying it later would put old content over new.
                    self._drop_from_dead_letters(doc_id)

    def reset(self) -> None:
        """Forget every document, chunk, queued delete and dead letter (the store was emptied)."""
        with self._transaction():
            for table in ("chunks", "documents", "files", "pending_deletes", "dead_letter_docs", "dead_letters",
                          "failed_documents"):
                self.db.execute(f"DELETE FROM {table}")

    def deletes_done(self, point_ids: Iterable[str]) -> None:
        with self._transaction():
            self.db.executemany("DELETE FROM pending_deletes WHERE point_id=?", [(p,) for p in point_ids])

    def record_failure(self, doc_id: str, reason: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO failed_documents(doc_id, reason, failed_at) VALUES (?, ?, ?)",
            (doc_id, reason, now_iso()),
        )

    def keep_failures(self, doc_ids: Iterable[str]) -> None:
        """Forget every recorded failure but these (the ones the last full read still had)."""
        keep = set(doc_ids)
        stale = [(d,) for (d,) in self.db.execute("SELECT doc_id FROM failed_documents") if d not in keep]
        self.db.executemany("DELETE FROM failed_documents WHERE doc_id=?", stale)

    def _queue_deletes(self, doc_id: str, point_ids: Iterable[str]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO pending_deletes(point_id, doc_id) VALUES (?, ?)",
            [(p, doc_id) for p in point_ids],
        )

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
