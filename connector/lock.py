"""One writer per state dir: an exclusive lock on `state_dir/lock` holding the owner's pid.

The lock is an OS file lock (flock), so the kernel releases it when its process dies, even
by kill -9: a lock left by a dead process is simply taken over. The lock file is opened without
following symlinks (a link planted at its path fails, it never redirects the pid write).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from connector.errors import ConnectorError
from connector.statedir import private_dir, private_file


class AlreadyRunningError(ConnectorError):
    """Another connector process works on the same state dir."""


class StateLock:
    FILENAME = "lock"

    def __init__(self, state_dir: Path, filename: str | None = None):
        self.path = Path(state_dir) / (filename or self.FILENAME)
        self._fd: int | None = None

    def busy(self, owner: str) -> ConnectorError:
        """The error raised when another process holds the lock (`owner`: its pid)."""
        return AlreadyRunningError(
            f"already running (pid {owner}): another connector process works on state_dir "
            f"{self.path.parent}; wait for it to finish, or stop it"
        )

    def __enter__(self) -> "StateLock":
        private_dir(self.path.parent)
        fd = private_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise self.busy(owner) from None
        pid = str(os.getpid()).encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
