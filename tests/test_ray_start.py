"""The Ray engine on a cluster of real `ray start` processes on 127.0.0.1 (a head node and a second
node, one CPU each), driven by the CLI as a user would: `engine.address` the head's address
(host:port), then a Ray Client address (ray://host:port). The test stops the processes by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray

from connector import recovery
from connector.config import load_config, parse_config
from connector.pipeline import run_sync
from conftest import RAY_ENV
from milvus_server import free_port
from test_ray_engine import (assert_same_store, config_data, run_cli, summary, wait_for_free_cpus, write_config,
                             write_corpus)

RAY = str(Path(sys.executable).parent / "ray")
#: Every process the `ray start`s start inherits this variable, set to the cluster's temp dir: how the test finds them.
MARKER = "CONNECTOR_TEST_RAY_CLUSTER"


class RayStartCluster:
    """A head node and a second node from `ray start`, on 127.0.0.1, with free ports and a temp dir
    of their own (nothing shared with other Ray users of this machine).

    The second node starts through `ray_start_loopback.py` (Ray's `ray start`, which on its own
    would not join it on 127.0.0.1: see there). `ray start` returns once its node runs; its
    processes (gcs_server, raylet, agents, workers...) are then nobody's children. `processes()`
    finds them and `stop()` ends them by pid: never `ray stop`, which ends every Ray process of the user."""

    def __init__(self):
        # short: Ray's socket paths under the temp dir must fit in 107 characters
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.port, self.client_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **RAY_ENV, MARKER: str(self.temp_dir)}

    def start(self) -> None:
        node = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
                f"--object-store-memory={150 * 1024 * 1024}", "--min-worker-port=0", "--max-worker-port=0",
                f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
        self.run([RAY, "start", "--head", f"--port={self.port}", f"--ray-client-server-port={self.client_port}",
                  "--include-dashboard=false", f"--dashboard-port={free_port()}", *node])
        self.run([sys.executable, str(Path(__file__).with_name("ray_start_loopback.py")), "start",
                  f"--address={self.address}", *node])

    def run(self, command: list[str]) -> None:
        proc = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"{' '.join(command)}:\n{proc.stdout}\n{proc.stderr}"

    def log_tails(self, pattern: str, chars: int = 3000) -> str:
        """The end of each of the nodes' log files named like `pattern`, to say why a test failed."""
        return "".join(f"\n--- {path.name}:\n{path.read_text(errors='replace')[-chars:]}"
                       for path in sorted(self.temp_dir.glob(f"session_*/logs/{pattern}")))

    def processes(self) -> set[tuple[int, int]]:
        """The live processes of this cluster, as (pid, start time): those whose environment has MARKER
        (every process the `ray start`s started inherits it) or whose command line names the temp dir,
        and their descendants (Ray's agents overwrite both with their process title)."""
        table = process_table()
        ours = {pid for pid in table if self.marked(pid)}
        while children := {pid for pid, (ppid, _) in table.items() if ppid in ours and pid not in ours}:
            ours |= children
        return {(pid, table[pid][1]) for pid in ours}

    def marked(self, pid: int) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours
            return False
        return f"{MARKER}={self.temp_dir}".encode() in environ or str(self.temp_dir) in command_line(pid)

    def stop(self, grace: float = 5, timeout: float = 60) -> set[tuple[int, int]]:
        """SIGTERM every process of the cluster, SIGKILL those left after `grace` seconds (and any
        started meanwhile); returns the processes still alive after `timeout` seconds (none, normally)."""
        started = time.monotonic()
        known = self.processes()
        send(known, signal.SIGTERM)
        while known := {p for p in known if alive(p)} | self.processes():
            if time.monotonic() - started > timeout:
                break
            if time.monotonic() - started > grace:
                send(known, signal.SIGKILL)
            time.sleep(0.2)
        return known


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process (zombies left out)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := process_stat(int(entry.name))) and stat[0] != "Z":
            table[int(entry.name)] = stat[1:]
    return table


def process_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from /proc/PID/stat; None when the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def alive(process: tuple[int, int]) -> bool:
    stat = process_stat(process[0])
    return stat is not None and stat[0] != "Z" and stat[2] == process[1]


def send(processes: set[tuple[int, int]], sig: int) -> None:
    for process in processes:
        if alive(process):  # not a new process that got the pid of one that ended
            try:
                os.kill(process[0], sig)
            except ProcessLookupError:
                pass


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def ray_start_cluster():
    """The running RayStartCluster; after the module, every one of its processes is stopped by pid
    and the test fails if one is left."""
    cluster = RayStartCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        ray.shutdown()  # this process's connection (wait_for_free_cpus)
        left = cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        assert not left, [command_line(pid) for pid, _ in left]
        assert not any(listening(port) for port in (cluster.port, cluster.client_port))  # the GCS and Ray Client


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_ray_start_processes_form_a_two_node_cluster_on_127_0_0_1(ray_start_cluster):
    lines = [command_line(pid) for pid, _ in ray_start_cluster.processes()]
    assert sum("gcs_server" in line for line in lines) == 1 and sum("raylet" in line for line in lines) == 2
    wait_for_free_cpus(ray_start_cluster)  # connects this process to the cluster
    nodes = [node for node in ray.nodes() if node["Alive"]]
    assert len(nodes) == 2
    assert {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}


@pytest.mark.slow
@pytest.mark.parametrize("address", ["head", "ray-client"])
def test_cli_sync_on_a_ray_start_cluster_gives_the_local_engines_summary(
        ray_start_cluster, tmp_path, tiny_model_dir, address):
    write_corpus(tmp_path / "docs", docs=8)
    engine = {"type": "ray", "encoders": 2, "cpus_per_encoder": 1, "address": {
        "head": ray_start_cluster.address, "ray-client": f"ray://127.0.0.1:{ray_start_cluster.client_port}"}[address]}
    config = write_config(tmp_path, config_data(tmp_path, tiny_model_dir, "ray", engine), "ray")
    wait_for_free_cpus(ray_start_cluster)  # connects this process, to see the run's actors
    before = encoder_actors()
    proc = run_cli("sync", "-c", str(config), "--json")
    assert proc.returncode == 0, proc.stderr + ray_start_cluster.log_tails("ray_client_server*")
    got = json.loads(proc.stdout)
    assert got["documents"]["new"] == 10
    assert recovery.verify(load_config(config)).ok
    local = parse_config(config_data(tmp_path, tiny_model_dir, "local"), tmp_path)
    assert summary(got) == summary(run_sync(local))
    assert_same_store(local, load_config(config))
    wait_for_free_cpus(ray_start_cluster)  # the CLI's actors ended with its run
    ran = [actor for key, actor in encoder_actors().items() if key not in before]
    assert len(ran) == 2 and len({actor["Address"]["NodeID"] for actor in ran}) == 2  # one on each node
    assert {actor["Address"]["IPAddress"] for actor in ran} == {"127.0.0.1"}


def encoder_actors() -> dict[str, dict]:
    """The encoder actors the cluster has run (alive or not), by id: the GCS's actor table (Ray's state
    API needs the dashboard, which these nodes run without)."""
    from ray._private.state import actors

    return {key: actor for key, actor in actors().items() if actor["ActorClassName"] == "EncoderWorker"}
