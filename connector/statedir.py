"""The state dir is private: the ledger, the dead letters and the embedding cache hold document text.

Folders the connector creates for its state are mode 0700 and its files 0600, whatever the
umask. A state dir that already exists with looser modes is tightened to 0700 (with a warning
on stderr); one that cannot be tightened (another owner) is warned about. Files are created
without following symlinks, so a link planted in the state dir cannot redirect a write.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from connector.errors import ConnectorError

log = logging.getLogger("connector.state")

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class UnsafeStateError(ConnectorError):
    """A path in the state dir is a symlink (or otherwise cannot be opened safely)."""


def private_dir(path: Path) -> Path:
    """Create `path` (and its missing parents) with mode 0700, or tighten an existing one."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass
        os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
    if not missing:
        _tighten(path, DIR_MODE, "folder")
    return path


def private_file(path: Path, flags: int = os.O_RDWR) -> int:
    """Open `path` (created with mode 0600 if missing; an existing one is tightened to 0600)
    without following a symlink; returns the file descriptor."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as err:
        if os.path.islink(path):
            raise UnsafeStateError(
                f"{path} is a symbolic link (to {os.readlink(path)}); the connector does not write through "
                "links in its state dir. Remove the link (and check who planted it)"
            ) from None
        raise
    if stat.S_IMODE(os.fstat(fd).st_mode) & ~FILE_MODE:
        os.fchmod(fd, FILE_MODE)
    return fd


def private_sqlite(path: Path) -> Path:
    """Prepare an SQLite database path: the file is created 0600 before SQLite opens it (SQLite
    gives its -wal / -shm files the database's mode), and existing side files are tightened."""
    os.close(private_file(path))
    for suffix in SQLITE_SIDE_FILES:
        side = Path(f"{path}{suffix}")
        if side.is_file() and not side.is_symlink():
            _tighten(side, FILE_MODE, "file")
    return path


def open_private(path: Path, mode: str = "wb"):
    """A new file object on `path` (truncated; mode 0600; never through a symlink)."""
    fd = private_file(path, os.O_WRONLY | os.O_TRUNC)
    return os.fdopen(fd, mode)


def _tighten(path: Path, mode: int, what: str) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if not current & ~mode:
        return
    try:
        os.chmod(path, mode)
    except OSError as err:
        log.warning("the state %s %s is readable by others (mode %o) and could not be made private (%s); "
                    "it holds document text: chmod %o it, or choose another state_dir", what, path, current, err, mode)
        return
    log.warning("made the state %s %s private (mode %o, was %o): it holds document text", what, path, mode, current)
