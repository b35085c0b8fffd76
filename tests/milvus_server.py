"""Start and stop a real `milvus-lite server` child process on 127.0.0.1 for tests.

Use the session fixture (import it into a test module: `from milvus_server import milvus_server`)
or, for fault tests that kill and restart the server, `MilvusServer` directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def milvus_lite_binary() -> str:
    """The `milvus-lite` script next to the running interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / "milvus-lite"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("milvus-lite")
    if not found:
        pytest.fail("milvus-lite is not installed (pip install 'connector[milvus]'): the server tests need it")
    return found


class MilvusServer:
    """One `milvus-lite server` process bound to 127.0.0.1:port with its own data dir."""

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"milvus-lite-{self.port}.log"

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> "MilvusServer":
        """Start the process and wait until its port accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        cmd = [milvus_lite_binary(), "server", "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"milvus-lite server did not listen on {self.uri} within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL if it does not exit)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> "MilvusServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A running milvus-lite server for the whole session; yields the MilvusServer (use `.uri`)."""
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server") / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()
