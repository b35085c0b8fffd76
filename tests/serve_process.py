"""Start and stop a real `connector serve` child process on 127.0.0.1 for tests (like
milvus_server.py): `start_server` returns once /health answers 200; `stop_server` sends SIGTERM
to the server's own pid and waits for the graceful shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from milvus_server import free_port

CONNECTOR = str(Path(sys.executable).parent / "connector")


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]


def call(url: str, path: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict]:
    """GET (body None) or POST JSON to the server; (status, JSON answer), error statuses included."""
    request = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None) -> Server:
    """`connector serve ARGS` on a free port of 127.0.0.1, returned once /health answers 200."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen([CONNECTOR, "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, f"connector serve exited with {process.returncode}:\n{server.log_tail()}"
        try:
            if call(server.url, "/health")[0] == 200:
                return server
        except (OSError, ValueError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            stop_server(server)
            pytest.fail(f"connector serve was not healthy after 180 s:\n{server.log_tail()}")
        time.sleep(0.3)


def stop_server(server: Server) -> None:
    """SIGTERM to the server's own pid (graceful shutdown), SIGKILL only if it does not exit."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail(f"connector serve ignored SIGTERM:\n{server.log_tail()}")
