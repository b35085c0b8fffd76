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

Faults. Ray restarts an actor whose process died (MAX_RESTARTS times) and runs its unfinished
batches again on it (encoding is idempotent). A worker that cannot load the model fails the
command with that worker's node and reason. The cluster unreachable at start fails the command
before the store is touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
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
#: Seconds to wait for a TCP connection to `engine.address` before `ray.init` (which would retry for long).
CONNECT_TIMEOUT = 10.0

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
    """`engine: {type: ray, ...}`: connects to the cluster and starts the encoder actors."""

    def make_encoder(self) -> "RayEncoder":
        ray = import_ray()
        connect(ray, self.config.engine.address)
        local = build_local_encoder(self.config)  # tokenizer, fingerprint, batch plan; its weights stay on disk
        return RayEncoder.start(ray, local, self.config)


def connect(ray, address: str) -> None:
    """Connect this process to the Ray cluster at `address`, once; later calls reuse the connection."""
    if ray.is_initialized():
        connected = ray.get_runtime_context().gcs_address
        if address == "auto" or address.startswith("ray://") or address == connected:
            return
        raise EngineError(f"this process is already connected to the Ray cluster at {connected}, "
                          f"not to engine.address {address!r}")
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as err:  # ConnectionError, RuntimeError, a Ray Client error: the fix is the same
        raise EngineError(unreachable(address, f"{type(err).__name__}: {without_traceback(err)}")) from None


def check_reachable(address: str) -> None:
    """Fail at once, with how to fix it, when nothing listens at `address` (host:port or ray://host:port)."""
    host, port = address.removeprefix("ray://").rsplit(":", 1)  # the config checked the form (RAY_ADDRESS)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise EngineError(unreachable(address, err.strerror or str(err))) from None


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
    weights are never loaded in the driver). `encode` sends each batch of `local.plan_batches` to
    an actor, round robin, and returns the vectors in input order. `close()` stops the actors;
    they also stop when this object is collected or the driver exits.
    """

    def __init__(self, ray, local, actors: list, workers: list[dict], shipped: list | None):
        self._ray = ray
        self._local = local
        self._actors = actors
        self.workers = workers  # what each actor said when it started: node, node_id, pid, model_from
        self._shipped = shipped  # keeps the shipped model in the object store for actors that restart
        self.dimension = local.dimension
        self.max_length = local.max_length
        # two batches per actor in each call, so that every actor works while the driver waits
        self.texts_per_call = max(Encoder.texts_per_call, 2 * local.batch_size * len(actors))
        self._next = 0
        self._close = weakref.finalize(self, _kill, actors)

    @classmethod
    def start(cls, ray, local, config: SyncConfig) -> "RayEncoder":
        """Start `engine.encoders` actors (default: one per `cpus_per_encoder` CPUs of the cluster)
        and wait until each has loaded the model."""
        engine = config.engine
        count = engine.encoders or max(1, int(ray.cluster_resources().get("CPU", 0)) // engine.cpus_per_encoder)
        worker_config = actor_config(config, local.folder)
        sha = local.fingerprint["content_sha256"]
        shipped = [ray.put(model_files(local.folder))] if engine.ship_model else None  # in a list: not resolved
        actor = ray.remote(EncoderWorker).options(
            num_cpus=engine.cpus_per_encoder, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
            scheduling_strategy="SPREAD",
        )
        actors = [actor.remote(worker_config, sha, shipped) for _ in range(count)]
        try:
            workers = wait_started(ray, actors, config)
        except BaseException:
            _kill(actors)
            raise
        return cls(ray, local, actors, workers, shipped)

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
        """Each actor's node, node_id, pid and model source, asked now (a restarted actor has a new pid)."""
        return [result(self._ray, actor.describe.remote()) for actor in self._actors]

    def close(self) -> None:
        """Stop the actors (idempotent)."""
        self._close()


def actor_config(config: SyncConfig, folder: Path) -> SyncConfig:
    """The config an actor builds its encoder from: the model folder the driver loaded (a hub model's
    snapshot folder: the actors never download), and torch threads matching the actor's CPUs."""
    encoder = config.encoder.model_copy(
        update={"model": str(folder), "revision": None, "threads": config.engine.cpus_per_encoder})
    return config.model_copy(update={"encoder": encoder})


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
            f"{engine.cpus_per_encoder} CPUs: lower engine.encoders or engine.cpus_per_encoder, or add nodes."
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

    def __init__(self, config: SyncConfig, content_sha256: str, shipped: list | None):
        import ray

        self.info = {"node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                     "pid": os.getpid(), "model_from": None, "error": None}
        self._encoder = None
        try:
            self._encoder, self.info["model_from"] = load_worker_encoder(config, content_sha256, shipped)
        except Exception as err:  # noqa: BLE001 - reported to the driver with its reason
            self.info["error"] = str(err) if isinstance(err, ConnectorError) else f"{type(err).__name__}: {err}"

    def describe(self) -> dict:
        return dict(self.info)

    def encode(self, texts: list[str]) -> list[Vectors]:
        if self._encoder is None:
            raise ModelLoadError(f"the encoder actor on node {self.info['node']} could not load the model: "
                                 f"{self.info['error']}")
        return self._encoder.encode(texts)


def load_worker_encoder(config: SyncConfig, content_sha256: str, shipped: list | None) -> tuple[Encoder, str]:
    """The encoder of `config` (whose model is the driver's model folder) and where its model came
    from: "path" (this node has the same files there) or "object store" (the driver's copy)."""
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
    encoder = build_local_encoder(config.model_copy(update={"encoder": config.encoder.model_copy(
        update={"model": str(folder)})}))
    if encoder.fingerprint["content_sha256"] != content_sha256:
        raise ModelLoadError(f"the model in {folder} is not the driver's (its files changed meanwhile?)")
    encoder.encode([""])  # loads the weights now: a broken model fails the start, not the first batch
    return encoder, source


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
    """The shipped model as a folder in this node's temporary folder, written once per model and
    node (actors on the same node, or restarted, reuse it)."""
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
