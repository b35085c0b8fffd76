"""A real `connector serve` process: it answers on 127.0.0.1, and on SIGTERM it stops taking
connections but finishes the requests in flight, then exits."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from serve_process import start_server, stop_server

pytestmark = pytest.mark.slow


def test_sigterm_lets_in_flight_requests_finish(tiny_model_dir, tmp_path):
    # a batch waits 1.5 s for more requests: the request is surely in flight when SIGTERM comes
    server = start_server(["--model", str(tiny_model_dir), "--max-length", "512", "--batch-wait-ms", "1500"],
                          tmp_path / "serve.log")
    try:
        answer = {}

        def request():
            answer["response"] = httpx.post(f"{server.url}/v1/embed", json={"texts": ["in flight"]}, timeout=60)

        client = threading.Thread(target=request)
        client.start()
        time.sleep(0.5)
        assert "response" not in answer  # still waiting for its batch
        os.kill(server.process.pid, signal.SIGTERM)
        client.join(60)
        r = answer["response"]
        assert r.status_code == 200 and r.json()["embeddings"][0]["text"] == "in flight"
        # uvicorn re-raises the SIGTERM once it has shut down cleanly: "terminated by SIGTERM" is
        # the conventional clean stop (systemd and Docker count it as one)
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        output = server.log_tail()
        assert "Traceback" not in output and "Application shutdown complete" in output
        with pytest.raises(httpx.TransportError):  # nothing listens any more
            httpx.get(f"{server.url}/health", timeout=2)
    finally:
        stop_server(server)
