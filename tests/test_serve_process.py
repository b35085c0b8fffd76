"""A real `connector serve` process: it answers on 127.0.0.1, and on SIGTERM it stops taking
connections but finishes the requests in flight, then exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from milvus_server import free_port

pytestmark = pytest.mark.slow


def connector_binary() -> str:
    return str(Path(sys.executable).parent / "connector")


def start_serve(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([connector_binary(), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"connector serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise AssertionError("connector serve did not become healthy in 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sigterm_lets_in_flight_requests_finish(tiny_model_dir):
    # a batch waits 1.5 s for more requests: the request is surely in flight when SIGTERM comes
    proc, url = start_serve("--model", str(tiny_model_dir), "--max-length", "512", "--batch-wait-ms", "1500")
    try:
        answer = {}

        def request():
            answer["response"] = httpx.post(f"{url}/v1/embed", json={"texts": ["in flight"]}, timeout=60)

        client = threading.Thread(target=request)
        client.start()
        time.sleep(0.5)
        assert "response" not in answer  # still waiting for its batch
        os.kill(proc.pid, signal.SIGTERM)
        client.join(60)
        r = answer["response"]
        assert r.status_code == 200 and r.json()["embeddings"][0]["text"] == "in flight"
        # uvicorn re-raises the SIGTERM once it has shut down cleanly: "terminated by SIGTERM" is
        # the conventional clean stop (systemd and Docker count it as one)
        assert proc.wait(30) in (0, -signal.SIGTERM)
        output = proc.stdout.read()
        assert "Traceback" not in output and "Application shutdown complete" in output
        with pytest.raises(httpx.TransportError):  # nothing listens any more
            httpx.get(f"{url}/health", timeout=2)
    finally:
        stop(proc)
