"""The ledger: what the connector knows it has written, in SQLite under state_dir.

Per document: its content hash, the pipeline fingerprint it was processed with, and per chunk
the point id and a key (hash of the point's text and payload). The ledger only moves after the
store confirmed a write. Stale point ids go into `pending_deletes` in the same transaction that
moves the document, and leave it only after the store confirmed the delete, so a crash at any
moment leaves a state the next run converges from.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from connector.errors import ConfigError

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
CREATE TABLE IF NOT EXISTS pending_deletes (point_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failed_documents (
    doc_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LedgerDoc:
    doc_id: str
    content_hash: str
    fingerprint: str
    chunk_count: int


@dataclass(frozen=True)
class LedgerChunk:
    chunk_index: int
    point_id: str
    chunk_key: str


class Ledger:
    """SQLite state of one target collection (WAL mode, one transaction per commit)."""

    FILENAME = "ledger.sqlite"

    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / self.FILENAME
        self.db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions only
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ---- target binding -----------------------------------------------------------------
    def bind_target(self, target: str) -> None:
        """Tie this state dir to one store + collection; refuse to mix two targets."""
        row = self.db.execute("SELECT value FROM meta WHERE key='target'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta(key, value) VALUES ('target', ?)", (target,))
        elif row[0] != target:
            raise ConfigError(
                f"state_dir {self.path.parent} belongs to {row[0]}, but the config now targets {target}. "
                "Give each target collection its own state_dir (or delete the old state_dir to start over)."
            )

    def target(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key='target'").fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    # ---- reads ------------------------------------------------------------------------------
    def document(self, doc_id: str) -> LedgerDoc | None:
        row = self.db.execute(
            "SELECT doc_id, content_hash, fingerprint, chunk_count FROM documents WHERE doc_id=?", (doc_id,)
        ).fetchone()
        return LedgerDoc(*row) if row else None

    def chunks(self, doc_id: str) -> list[LedgerChunk]:
        rows = self.db.execute(
            "SELECT chunk_index, point_id, chunk_key FROM chunks WHERE doc_id=? ORDER BY chunk_index", (doc_id,)
        )
        return [LedgerChunk(*r) for r in rows]

    def doc_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT doc_id FROM documents ORDER BY doc_id")]

    def doc_origins(self) -> dict[str, str | None]:
        """doc_id -> the source file it came from."""
        return dict(self.db.execute("SELECT doc_id, origin FROM documents ORDER BY doc_id"))

    def iter_point_ids(self) -> Iterator[str]:
        for (pid,) in self.db.execute("SELECT point_id FROM chunks"):
            yield pid

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
        }

    # ---- writes (each one transaction) -------------------------------------------------
    def commit_document(
        self,
        doc_id: str,
        content_hash: str,
        fingerprint: str,
        chunks: Iterable[LedgerChunk],
        stale_point_ids: Iterable[str],
        origin: str | None = None,
    ) -> None:
        """Record a document whose points the store has confirmed; queue its stale points."""
        chunks = list(chunks)
        with self._transaction():
            self.db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
            self.db.executemany(
                "INSERT INTO chunks(doc_id, chunk_index, point_id, chunk_key) VALUES (?, ?, ?, ?)",
                [(doc_id, c.chunk_index, c.point_id, c.chunk_key) for c in chunks],
            )
            self.db.execute(
                "INSERT OR REPLACE INTO documents(doc_id, content_hash, fingerprint, chunk_count, origin, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (doc_id, content_hash, fingerprint, len(chunks), origin, now_iso()),
            )
            # A point just written must never be deleted by an older queued delete.
            self.db.executemany("DELETE FROM pending_deletes WHERE point_id=?", [(c.point_id,) for c in chunks])
            self._queue_deletes(doc_id, stale_point_ids)
            self.db.execute("DELETE FROM failed_documents WHERE doc_id=?", (doc_id,))

    def forget_document(self, doc_id: str) -> list[str]:
        """Drop a document (gone from the source); its point ids move to pending_deletes."""
        with self._transaction():
            ids = [r[0] for r in self.db.execute("SELECT point_id FROM chunks WHERE doc_id=?", (doc_id,))]
            self.db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
            self.db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
            self.db.execute("DELETE FROM failed_documents WHERE doc_id=?", (doc_id,))
            self._queue_deletes(doc_id, ids)
        return ids

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
