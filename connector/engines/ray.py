"""The Ray engine: the encode step in a pool of Ray actors, each loading the model once.

What runs where. The driver (the process running the command) reads the source, chunks it,
plans the encoder batches (it tokenizes each text to sort it by length, as the local encoder
does), and keeps the embedding cache, the projection, the store writes and the ledger. Each
actor runs the local engine's encoder (`build_local_encoder`) on whole batches, so the vectors
are the local engine's.

The model. An actor loads `encoder.model` from the same path as the driver when its node has
the same files there; otherwise, with `engine.ship_model: true`, from a copy the driver put in
Ray's object store once (unpacked into the node's temporary folder, keyed by the model's content
hash); otherwise it reports that the model is missing on its node.

The ONNX backend (encoder.backend: onnx, fp32 or int8). The driver exports the graph once, into
its own state dir's cache (`state_dir/onnx`, as the local engine does), when the pool starts; no
actor ever exports, nor writes into that folder. An actor runs the driver's graph file from the
same path when its node has the same bytes there (checked against the content hash the driver
sends); otherwise, with `engine.ship_model: true`, from a copy shipped through the object store
(unpacked like the model, keyed by the graph's hash); otherwise it reports that the graph is
missing on its node. It needs the model folder too (tokenizer, config), under the rule above.

The pool starts at the first text to encode (`RayEncoder.start`, which the encode step calls
before it encodes): a command with nothing to encode (an unchanged sync, a dry run, `projection
fit --from store`, `backfill`) never connects to the cluster. The sync creates a collection only
once the pool has started and writes no document before its first window's vectors are ready
(connector.pipeline), so a pool that cannot start fails it before the store or the ledger is
touched.

Faults. Ray restarts an actor whose process died (MAX_RESTARTS times) and runs its unfinished
batches again on it (encoding is idempotent). A worker that cannot load the model fails the
command with that worker's node and reason. The cluster unreachable fails the command with how
to fix it, and so does an address where something else answers (within engine.start_timeout).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import weakref
from pathlib import Path
from typing import Sequence

from connector.config import SyncConfig
from connector.encoders.base import Encoder
from connector.engines.base import Engine
from connector.engines.local import build_local_encoder
from connector.errors import ConnectorError, EngineError, MissingExtraError, ModelLoadError
from connector.records import Vectors

#: Times Ray restarts an encoder actor whose process died; its unfinished batches are retried as often.
MAX_RESTARTS = 4
#: A Ray Client server (ray://) starts one server process per session; when that process fails to start
#: (a busy head), the connection is tried this many times, CLIENT_SESSION_WAIT x attempt seconds apart.
CLIENT_SESSION_ATTEMPTS = 3
CLIENT_SESSION_WAIT = 2.0
CLIENT_SESSION_FAILURES = ("Starting Ray client server failed", "Proxy failed to Connect to backend")
#: Seconds to wait for a TCP connection to `engine.address` before `ray.init` (which would retry for long).
CONNECT_TIMEOUT = 10.0
#: HTTP/2's client connection preface and an empty SETTINGS frame: a gRPC server (the GCS of a Ray head,
#: and its Ray Client server) answers with a SETTINGS frame of its own.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4

log = logging.getLogger("connector.engine")

HOW_TO_START = (
    "Start a cluster with `ray start --head` on the head node (other nodes join with `ray start "
    "--address=HEAD:6379`) and set engine.address to auto on the head node, HEAD:6379 elsewhere, or "
    "ray://HEAD:10001 (Ray Client); or run without a cluster: --engine local."
)


def import_ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError("ray", "ray", "engine: ray") from None
    return ray


class RayEngine(Engine):
    """`engine: {type: ray, ...}`: the encoder actors, started at the first text to encode."""

    def make_encoder(self) -> "RayEncoder":
        import_ray()  # a missing extra fails the command now, not at its first text
        local = build_local_encoder(self.config)  # tokenizer, fingerprint, batch plan; its weights stay on disk
        return RayEncoder(local, self.config)


def connect(ray, address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect this process to the Ray cluster at `address`, once; later calls reuse the connection.
    An address where nothing listens, or where something other than a Ray head answers, fails within
    `timeout` seconds (ray.init would retry for minutes)."""
    if ray.is_initialized():
        connected = ray.get_runtime_context().gcs_address
        if address == "auto" or address.startswith("ray://") or address == connected:
            return
        raise EngineError(f"this process is already connected to the Ray cluster at {connected}, "
                          f"not to engine.address {address!r}")
    target = os.environ.get("RAY_ADDRESS") if address == "auto" else address  # auto: what ray.init reads
    if target and target != "auto" and os.environ.get("RAY_USE_TLS", "0") in ("0", ""):
        check_reachable(target, timeout, address)
    for attempt in range(1, CLIENT_SESSION_ATTEMPTS + 1):
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            return
        except Exception as err:  # ConnectionError, RuntimeError, a Ray Client error: the fix is the same
            reason = f"{type(err).__name__}: {without_traceback(err)}"
            if attempt < CLIENT_SESSION_ATTEMPTS and client_session_failed(err):
                log.warning("the Ray Client server at %s could not start this session (%s); trying again (attempt "
                            "%d of %d)", address, reason, attempt + 1, CLIENT_SESSION_ATTEMPTS)
                time.sleep(CLIENT_SESSION_WAIT * attempt)
                continue
            if client_session_failed(err):  # it answered: "cannot reach ... start a cluster" would mislead
                raise EngineError(
                    f"the Ray Client server at engine.address {address!r} answered but could not start this "
                    f"session's server process, {CLIENT_SESSION_ATTEMPTS} times ({reason}). Its log on the head "
                    "node (the file named above, in the Ray temp dir's session_latest/logs) says why; a head short "
                    "of memory or ports 23000-24000 taken are common causes. Or connect by the head's GCS address "
                    "(HOST:6379) from a machine in the cluster, or run without a cluster: --engine local. Nothing "
                    "was written.") from None
            raise EngineError(unreachable(address, reason)) from None


def client_session_failed(err: Exception) -> bool:
    """Whether a Ray Client server answered but failed to start the session's own server process
    (which a busy head does now and then; another session usually starts)."""
    return any(sign in str(err) for sign in CLIENT_SESSION_FAILURES)


def check_reachable(target: str, timeout: float, address: str) -> None:
    """Fail, with how to fix it, when nothing listens at `target` (host:port or ray://host:port, what
    engine.`address` resolves to), or when what listens does not answer as a gRPC server (a Ray head's
    GCS and Ray Client ports both do) within `timeout` seconds."""
    host, port = target.removeprefix("ray://").rsplit(":", 1)  # the config checked the form (RAY_ADDRESS)
    deadline = time.monotonic() + timeout
    try:
        conn = socket.create_connection((host, int(port)), timeout=min(CONNECT_TIMEOUT, timeout))
    except (OSError, ValueError) as err:
        raise EngineError(unreachable(address, getattr(err, "strerror", None) or str(err))) from None
    with conn:
        try:
            conn.sendall(HTTP2_PREFACE)
            header = receive(conn, 9, deadline)  # the first frame's header: length (3), type, flags, stream (4)
        except TimeoutError:
            header, reason = None, f"it accepted the connection but said nothing for {timeout:g} s (engine.start_timeout)"
        except OSError as err:
            header, reason = None, f"it closed the connection ({err.strerror or err})"
    if header is not None and len(header) < 9:
        reason = "it closed the connection"
    elif header is not None and header[3] != HTTP2_SETTINGS:
        reason = f"it answered {header[:9]!r}, not as a gRPC server"
    elif header is not None:
        return
    raise EngineError(
        f"engine.address {address!r} ({target}) is not a Ray cluster: {reason}. Check that "
        "it is the head node's GCS address (HOST:6379 by default: the address `ray start --head` prints, and "
        "`ray status` on the head shows) or ray://HOST:10001 for Ray Client, not another service's port; or run "
        "without a cluster: --engine local. Nothing was written."
    )


def receive(conn: socket.socket, size: int, deadline: float) -> bytes:
    """Up to `size` bytes from `conn` (fewer if it closes); TimeoutError once `deadline` passes."""
    data = b""
    while len(data) < size:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def without_traceback(err: Exception) -> str:
    """The error's message on one line; a Ray Client server's traceback in it (the server failed the
    session) is cut to its first line and the server's own error, its last line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines:
        lines = [lines[0], lines[-1]]
    return " ".join(lines)


def unreachable(address: str, reason: str) -> str:
    return f"cannot reach the Ray cluster at engine.address {address!r} ({reason}). {HOW_TO_START} Nothing was written."


class RayEncoder(Encoder):
    """The config's encoder, its batches encoded by a pool of Ray actors.

    `local` is the driver's copy of the encoder: its tokenizer, fingerprint and batch plan (its
    weights are never loaded in the driver). The pool starts at `start()` (connect, start the
    actors, wait until each has loaded the model); `encode` starts it if need be, sends each batch
    of `local.plan_batches` to an actor, round robin, and returns the vectors in input order.
    `close()` stops the actors; they also stop when this object is collected or the driver exits.
    """

    def __init__(self, local, config: SyncConfig):
        self._local = local
        self._config = config
        self._ray = None
        self._actors: list = []
        self._workers: list[dict] = []
        self._shipped: list | None = None  # keeps what was shipped in the object store for actors that restart
        self._next = 0
        self._close = None
        self.dimension = local.dimension
        self.max_length = local.max_length

    def start(self) -> None:
        """Connect to the cluster and start `engine.encoders` actors (default: one per
        `cpus_per_encoder` CPUs of the cluster); return once each has loaded the model. Once only."""
        if self._actors:
            return
        ray, engine = import_ray(), self._config.engine
        connect(ray, engine.address, engine.start_timeout)
        count = engine.encoders or max(1, int(ray.cluster_resources().get("CPU", 0) / engine.cpus_per_encoder))
        worker_config = actor_config(self._config, self._local.folder)
        sha = self._local.fingerprint["content_sha256"]
        shipped = [ray.put(model_files(self._local.folder))] if engine.ship_model else None  # in a list: not resolved
        graph = onnx_graph(ray, self._local, engine.ship_model)
        actor = ray.remote(EncoderWorker).options(
            num_cpus=engine.cpus_per_encoder, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
            scheduling_strategy="SPREAD",
        )
        actors = [actor.remote(worker_config, sha, shipped, graph) for _ in range(count)]
        try:
            self._workers = wait_started(ray, actors, self._config)
        except BaseException:
            _kill(actors)
            raise
        self._ray, self._actors, self._shipped = ray, actors, [shipped, graph]
        self._close = weakref.finalize(self, _kill, actors)

    @property
    def texts_per_call(self) -> int:
        """Two batches per actor in each call, so that every actor works while the driver waits (the
        base's count until the pool has started)."""
        return max(Encoder.texts_per_call, 2 * self._local.batch_size * len(self._actors))

    @property
    def workers(self) -> list[dict]:
        """What each actor said when it started: node, node_id, pid, model_from, graph_from (starts the pool)."""
        self.start()
        return self._workers

    @property
    def fingerprint(self) -> dict:
        return self._local.fingerprint

    @property
    def tokenizer(self):
        return self._local.tokenizer

    def encode(self, texts: Sequence[str]) -> list[Vectors]:
        texts = list(texts)
        if not texts:
            return []
        self.start()
        _token_ids, batches = self._local.plan_batches(texts)
        refs = []
        for batch in batches:
            actor = self._actors[self._next % len(self._actors)]
            self._next += 1
            refs.append(actor.encode.remote([texts[i] for i in batch]))
        results: list[Vectors | None] = [None] * len(texts)
        for batch, ref in zip(batches, refs):
            for i, vectors in zip(batch, result(self._ray, ref)):
                results[i] = vectors
        return results

    def describe_workers(self) -> list[dict]:
        """Each actor's node, node_id, pid and model source, asked now (a restarted actor has a new pid;
        starts the pool)."""
        self.start()
        return [result(self._ray, actor.describe.remote()) for actor in self._actors]

    def close(self) -> None:
        """Stop the actors, if they started (idempotent)."""
        if self._close is not None:
            self._close()


def actor_config(config: SyncConfig, folder: Path) -> SyncConfig:
    """The config an actor builds its encoder from: the model folder the driver loaded (a hub model's
    snapshot folder: the actors never download), and threads (torch's or onnxruntime's) matching the
    actor's CPUs (one for a fraction of a CPU)."""
    encoder = config.encoder.model_copy(
        update={"model": str(folder), "revision": None, "threads": max(1, int(config.engine.cpus_per_encoder))})
    return config.model_copy(update={"encoder": encoder})


def onnx_graph(ray, local: Encoder, ship: bool) -> dict | None:
    """For the onnx backend, the driver's exported graph as the actors get it: exported now unless the
    driver's state dir has it (`OnnxEncoder.export`), its `path`, the `sha256` of its files and, with
    `ship`, its files in the object store (`shipped`, in a list: not resolved). None for torch."""
    from connector.encoders.onnx import OnnxEncoder, graph_files, graph_sha256

    if not isinstance(local, OnnxEncoder):
        return None
    path = local.export()
    shipped = [ray.put({f.name: f.read_bytes() for f in graph_files(path)})] if ship else None
    return {"path": str(path), "sha256": graph_sha256(path), "shipped": shipped}


def wait_started(ray, actors: list, config: SyncConfig) -> list[dict]:
    """What each actor reports once it has loaded the model; an EngineError if some were not placed
    within `engine.start_timeout`, a ModelLoadError naming the node and the reason if one failed."""
    engine = config.engine
    refs = [a.describe.remote() for a in actors]
    _done, pending = ray.wait(refs, num_returns=len(refs), timeout=engine.start_timeout)
    if pending:
        cpus = ray.cluster_resources().get("CPU", 0)
        raise EngineError(
            f"{len(pending)} of {len(actors)} encoder actors did not start within {engine.start_timeout:g} s "
            f"(engine.start_timeout). The cluster has {cpus:g} CPUs and the engine asks for {len(actors)} encoders x "
            f"{engine.cpus_per_encoder:g} CPUs: lower engine.encoders or engine.cpus_per_encoder, or add nodes."
        )
    workers = [result(ray, ref) for ref in refs]
    failed = [w for w in workers if w["error"]]
    if failed:
        others = f" (and {len(failed) - 1} more actors)" if len(failed) > 1 else ""
        raise ModelLoadError(
            f"the encoder actor on node {failed[0]['node']}{others} could not load the model: {failed[0]['error']}"
        )
    return workers


def result(ray, ref):
    """`ray.get(ref)`, Ray's errors turned into the connector's: a ConnectorError raised in an actor
    as itself, anything else as an EngineError with the actor's reason."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, ConnectorError):
            raise cause from None
        raise EngineError(f"an encoder actor failed: {type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayActorError as err:
        raise EngineError(
            f"an encoder actor died and was not restarted (at most {MAX_RESTARTS} restarts): {first_line(err)}. "
            "The logs of its node (/tmp/ray/session_latest/logs) say why; what it did not encode was not committed: "
            "run the command again."
        ) from None


def first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")


def _kill(actors: list) -> None:
    try:
        import ray

        if not ray.is_initialized():
            return  # the driver is gone, and with it its actors
        for actor in actors:
            ray.kill(actor, no_restart=True)
    except Exception:  # closing must not hide the error that made a caller close  # noqa: BLE001
        pass


# ---- in the actors ---------------------------------------------------------------------------
class EncoderWorker:
    """One encoder actor: the config's encoder, loaded when the actor starts (and again when Ray
    restarts it). A model that cannot be loaded is reported by `describe` rather than raised, so
    that the driver can say which node failed and why."""

    def __init__(self, config: SyncConfig, content_sha256: str, shipped: list | None, graph: dict | None = None):
        import ray

        self.info = {"node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                     "pid": os.getpid(), "model_from": None, "graph_from": None, "error": None}
        self._encoder = None
        try:
            self._encoder, self.info["model_from"], self.info["graph_from"] = load_worker_encoder(
                config, content_sha256, shipped, graph)
        except Exception as err:  # noqa: BLE001 - reported to the driver with its reason
            self.info["error"] = str(err) if isinstance(err, ConnectorError) else f"{type(err).__name__}: {err}"

    def describe(self) -> dict:
        return dict(self.info)

    def encode(self, texts: list[str]) -> list[Vectors]:
        if self._encoder is None:
            raise ModelLoadError(f"the encoder actor on node {self.info['node']} could not load the model: "
                                 f"{self.info['error']}")
        return self._encoder.encode(texts)


def load_worker_encoder(config: SyncConfig, content_sha256: str, shipped: list | None,
                        graph: dict | None = None) -> tuple[Encoder, str, str | None]:
    """The encoder of `config` (whose model is the driver's model folder), where its model came from
    and where its ONNX graph (`graph`, see `onnx_graph`; None for torch) came from: "path" (this node
    has the same files there) or "object store" (the driver's copy); None for no graph."""
    folder = Path(config.encoder.model)
    if model_on_node(folder, content_sha256):
        source = "path"
    elif shipped:
        import ray

        folder, source = unpack_model(ray.get(shipped[0]), content_sha256), "object store"
    else:
        raise ModelLoadError(
            f"the model folder {folder} is missing on this node, or holds other files than the driver's: copy the "
            "folder to the same path on every node, or set engine.ship_model: true to send it through Ray's object store"
        )
    graph_path, graph_source = graph_on_node(graph)
    encoder = build_local_encoder(config.model_copy(update={"encoder": config.encoder.model_copy(
        update={"model": str(folder)})}), onnx_graph=graph_path)
    if encoder.fingerprint["content_sha256"] != content_sha256:
        raise ModelLoadError(f"the model in {folder} is not the driver's (its files changed meanwhile?)")
    encoder.encode([""])  # loads the weights now: a broken model fails the start, not the first batch
    return encoder, source, graph_source


def graph_on_node(graph: dict | None) -> tuple[Path | None, str | None]:
    """The driver's exported ONNX graph (see `onnx_graph`) on this node, and where it came from:
    "path" (the same bytes at the driver's path) or "object store"; (None, None) without a graph."""
    from connector.encoders.onnx import graph_sha256

    if graph is None:
        return None, None
    path = Path(graph["path"])
    if path.is_file() and graph_sha256(path) == graph["sha256"]:
        return path, "path"
    if graph["shipped"]:
        import ray

        return unpack_model(ray.get(graph["shipped"][0]), graph["sha256"]) / path.name, "object store"
    raise ModelLoadError(
        f"the ONNX graph {path} that the driver exported is missing on this node, or holds other bytes than the "
        "driver's: set engine.ship_model: true to send it through Ray's object store, or put state_dir on storage "
        "that every node mounts at the same path"
    )


def model_on_node(folder: Path, content_sha256: str) -> bool:
    """Whether `folder` holds the model whose content hash is `content_sha256`."""
    from connector.encoders.bge_m3 import WEIGHT_FILES, content_hash

    weights = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    return weights is not None and content_hash(folder, weights) == content_sha256


def model_files(folder: Path) -> dict[str, bytes]:
    """The model's files (those the encoder reads) by their path in `folder`, to ship to the actors."""
    from connector.encoders.bge_m3 import MODEL_FILES, WEIGHT_FILES

    return {name: (folder / name).read_bytes() for name in (*MODEL_FILES, *WEIGHT_FILES) if (folder / name).is_file()}


def unpack_model(files: dict[str, bytes], content_sha256: str) -> Path:
    """The shipped files (a model folder's, or an ONNX graph's) as a folder in this node's temporary
    folder named by their content hash, written once per node (actors on the same node, or
    restarted, reuse it)."""
    target = Path(tempfile.gettempdir()) / "connector-models" / content_sha256
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    try:
        staging.rename(target)
    except OSError:  # another actor on this node unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
    return target
