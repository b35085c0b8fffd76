"""Chunk-level embedding cache: vectors keyed by encoder fingerprint + chunk text sha256.

A changed document re-encodes only the chunks whose text is new; every other chunk's
vectors come from here. Stored in its own SQLite file next to the ledger.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from connector.records import SparseVector, Vectors
from connector.statedir import private_dir, private_sqlite


class EmbeddingCache:
    FILENAME = "embeddings.sqlite"

    def __init__(self, state_dir: Path, fingerprint: str):
        self.fingerprint = fingerprint
        path = private_sqlite(private_dir(state_dir) / self.FILENAME)
        # used by the sync's encode and write stages (threads), one at a time (the sync holds a lock)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (fingerprint TEXT NOT NULL, sha256 TEXT NOT NULL,"
            " dense BLOB NOT NULL, sparse_ids BLOB NOT NULL, sparse_values BLOB NOT NULL,"
            " PRIMARY KEY (fingerprint, sha256))"
        )

    def close(self) -> None:
        self.db.close()

    def get_many(self, shas: Iterable[str]) -> dict[str, Vectors]:
        found: dict[str, Vectors] = {}
        shas = list(dict.fromkeys(shas))
        for start in range(0, len(shas), 500):
            part = shas[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT sha256, dense, sparse_ids, sparse_values FROM embeddings"
                f" WHERE fingerprint=? AND sha256 IN ({marks})",
                [self.fingerprint, *part],
            )
            for sha, dense, ids, values in rows:
                found[sha] = Vectors(
                    dense=np.frombuffer(dense, dtype=np.float32).copy(),
                    sparse=SparseVector(
                        np.frombuffer(ids, dtype=np.int64).copy(), np.frombuffer(values, dtype=np.float32).copy()
                    ),
                )
        return found

    def put_many(self, items: dict[str, Vectors]) -> None:
        self.db.execute("BEGIN")
        try:
            self._insert(items)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _insert(self, items: dict[str, Vectors]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)",
            [
                (
                    self.fingerprint,
                    sha,
                    np.asarray(v.dense, dtype=np.float32).tobytes(),
                    np.asarray(v.sparse.indices, dtype=np.int64).tobytes(),
                    np.asarray(v.sparse.values, dtype=np.float32).tobytes(),
                )
                for sha, v in items.items()
            ],
        )
