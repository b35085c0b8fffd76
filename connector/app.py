"""What every command opens for a config: the sink, the ledger under the state dir's lock, the
encoder and the fitted projection. The commands (sync, retry, verify, search, status, backfill,
projection, ...) and the service import these from here; the sync engine (connector.pipeline and
its steps in connector.steps) is one of their users, not their home."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from connector.config import QdrantSinkConfig, SyncConfig
from connector.encoders.base import Encoder
from connector.hashes import stable_hash, vector_identity
from connector.ledger import Ledger
from connector.locations import public_url
from connector.sinks.base import Sink


def sink_target(config: SyncConfig) -> str:
    """A secret-free description of the store + collection a config writes to."""
    s = config.sink
    where = s.path if getattr(s, "path", None) is not None else getattr(s, "url", None) or getattr(s, "uri", "")
    kind = s.type
    if isinstance(s, QdrantSinkConfig) and s.path is not None:
        from connector.sinks.qdrant_edge import EDGE, resolve_engine

        if resolve_engine(s.path, s.engine) == EDGE:
            kind = "qdrant-edge"  # a ledger bound to one embedded engine never switches to the other
    return f"{kind}:{public_url(str(where))}#{s.collection}"  # no user:password@ or ?api-key=...


def shared_collection(config: SyncConfig) -> bool:
    """Does the config let several state dirs write its collection (`sink.shared`)?"""
    return bool(getattr(config.sink, "shared", False))


def collection_layout(config: SyncConfig):
    """The layout of the config's collection: with a legacy vector when projection.output asks for one."""
    from connector.schemas_layout import load_layout

    p = config.projection
    if p is None or p.output == "dense":
        return load_layout("chunks")
    return load_layout("chunks_dense_legacy" if p.output == "dense+legacy" else "chunks_legacy", legacy_field=p.field)


def projection_key(collection: str) -> str:
    return f"projection:{collection}"


def load_projection_for(config: SyncConfig, encoder: Encoder):
    """The fitted projection the config's collection needs (None without legacy vectors); it must
    have the configured size and have been fitted on this model's vectors."""
    from connector.projection import ProjectionError, load

    p = config.projection
    if p is None or p.output == "dense":
        return None
    projection = load(config.state_dir)
    if projection.k != p.dim:
        raise ProjectionError(
            f"the fitted projection has k={projection.k} but projection.dim is {p.dim}; "
            "run `connector projection fit -c CONFIG` again"
        )
    if projection.source_fingerprint != stable_hash(vector_identity(encoder)):
        raise ProjectionError(
            "the fitted projection was fitted on another model's vectors; run `connector projection fit -c CONFIG` again"
        )
    return projection


def with_collection(config: SyncConfig, collection: str) -> SyncConfig:
    """A copy of the config that targets another collection of the same store."""
    copy = config.model_copy(deep=True)
    copy.sink.collection = collection
    return copy


def open_sink(config: SyncConfig, sleep=None) -> Sink:
    """The config's sink, with its layout and the retry policy."""
    from connector.retry import RetryPolicy
    from connector.sinks.factory import make_sink

    policy = RetryPolicy(config.retry) if sleep is None else RetryPolicy(config.retry, sleep=sleep)
    return make_sink(config.sink, layout=collection_layout(config), retry=policy)


def store_lost(sink: Sink, ledger: Ledger) -> str | None:
    """Why the store no longer holds what the ledger lists (dropped or emptied collection), or None."""
    chunks = ledger.counts()["chunks"]
    if not chunks:
        return None
    info = sink.describe()
    if info is None:
        return f"collection '{sink.collection}' does not exist but the ledger lists {chunks} points"
    if info.count == 0:
        return f"collection '{sink.collection}' is empty but the ledger lists {chunks} points"
    return None


def make_encoder(config: SyncConfig) -> Encoder:
    """The config's encoder, run by the config's engine (local or ray: see connector.engines); the one
    place the sync, backfill and projection fit get theirs. Commands that encode a few texts (search,
    embed, similarity, schema, the service) build a local one (connector.engines.local)."""
    from connector.engines import make_engine_encoder

    return make_engine_encoder(config)


@contextmanager
def open_state(config: SyncConfig, *, sleep=None, dry_run: bool = False):
    """The sink (with the retry policy) and the ledger bound to the config's target, under the
    state dir's lock (not for a dry run, which writes nothing); closed on exit."""
    from connector.lock import StateLock

    with ExitStack() as stack:
        sink = open_sink(config, sleep=sleep)  # reads the secrets: a missing one fails before any write
        stack.callback(sink.close)
        if not dry_run:
            stack.enter_context(StateLock(config.state_dir))
        ledger = Ledger(config.state_dir)
        stack.callback(ledger.close)
        ledger.bind_target(sink_target(config), write=not dry_run)
        yield ledger, sink
