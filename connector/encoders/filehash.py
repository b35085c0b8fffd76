"""Whole-file sha256 of model files, remembered across runs.

A model's identity is the hash of every byte of its files (a fine-tuned model of the same shape
differs only in the middle of its weights). Hashing bge-m3's 2.2 GB costs seconds, so each
result is remembered in a small JSON file in the user's cache folder, keyed by the file's
resolved path and checked against its size, mtime_ns, ctime_ns and inode: any write, copy or
replacement of the file changes one of them, and the file is hashed again.

The cache is only ever a shortcut: a missing, unreadable or corrupt cache file means hashing
again, never an error. Writers replace the file atomically (a temporary file, then rename), so
two processes never leave a half-written file; if they race, one entry is lost and is simply
computed again next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("connector.encoders")

#: Environment variable naming the connector's cache folder (default: $XDG_CACHE_HOME/connector,
#: else ~/.cache/connector).
CACHE_DIR_ENV = "CONNECTOR_CACHE_DIR"
CACHE_FILE = "file-hashes.json"
_READ_SIZE = 1 << 20

#: Number of files this process hashed in full (tests check that the cache is used).
files_hashed = 0


def cache_dir() -> Path:
    """The connector's per-user cache folder."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "connector"


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of every byte of `path`, from the cache when the file did not change."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    cache_file = cache_dir() / CACHE_FILE
    entry = _read(cache_file).get(str(path))
    if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and _is_sha256(entry.get("sha256")):
        return entry["sha256"]
    sha = _hash_file(path)
    _remember(cache_file, str(path), {**stamp, "sha256": sha})
    return sha


def _hash_file(path: Path) -> str:
    global files_hashed
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_SIZE):
            digest.update(block)
    files_hashed += 1
    return digest.hexdigest()


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable or corrupt: start afresh
        return {}
    return data if isinstance(data, dict) else {}


def _remember(cache_file: Path, key: str, entry: dict) -> None:
    """Add one entry to the cache file (read again just before, to keep other processes' entries)."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        data = _read(cache_file)
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=cache_file.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, cache_file)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:  # a read-only home costs a hash per run, nothing else
        log.debug("could not write the file hash cache %s: %s", cache_file, err)
