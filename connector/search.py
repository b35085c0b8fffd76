"""Which vector a search uses, and how the query is projected to match the documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from connector.config import SyncConfig
from connector.errors import ConfigError, ConnectorError
from connector.projection import ProjectionError
from connector.sinks.base import Sink


@dataclass
class SearchPlan:
    sink: Sink
    mode: str  # dense, sparse or hybrid (what the sink runs)
    using: str  # the dense vector's name
    project: Callable  # query dense vector -> the vector to search with


def plan_search(config: SyncConfig, mode: str, collection: str | None, encoder, open_sink=None) -> SearchPlan:
    """`legacy` mode, a legacy-only collection, or a backfill target (`collection`) search the
    projected vector; the query is projected with the artifact whose hash the collection recorded.
    `open_sink(config)` gives the sink (default: a new one, which the caller closes)."""
    from connector.ledger import Ledger
    from connector.app import load_projection_for, projection_key, with_collection
    from connector.app import open_sink as new_sink
    from connector.projection import load
    from connector.schemas_layout import load_layout

    p = config.projection
    target = collection or config.sink.collection
    backfilled = collection is not None and collection != config.sink.collection
    legacy_only = backfilled or (p is not None and p.output == "legacy")
    if mode == "legacy" and not (legacy_only or (p is not None and p.output == "dense+legacy")):
        raise ConfigError("--mode legacy needs projection.output dense+legacy or legacy in the config, "
                          "or --collection naming a backfilled collection")
    sink = (open_sink or new_sink)(with_collection(config, target))
    if sink.describe() is None:
        if open_sink is None:
            sink.close()
        hint = "run `connector sync` first" if target == config.sink.collection else "check the name (a backfill " \
            "target is `<collection>_<dim>` unless --target named it)"
        raise ConnectorError(f"collection '{target}' does not exist yet; {hint}")
    uses_legacy = legacy_only or mode == "legacy"
    if not uses_legacy:
        return SearchPlan(sink, mode, "dense", lambda v: v)
    if backfilled:
        projection = load(config.state_dir)
        field = p.field if p and p.dim == projection.k else f"dense_{projection.k}"
        sink.layout = load_layout("chunks_legacy", legacy_field=field)
    else:
        projection = load_projection_for(config, encoder)
        field = p.field
    ledger = Ledger(config.state_dir)
    try:
        recorded = ledger.get_meta(projection_key(target))
    finally:
        ledger.close()
    if recorded != projection.sha256:
        if open_sink is None:
            sink.close()
        raise ProjectionError(
            f"collection '{target}' was written with projection {str(recorded)[:12]}, but the fitted projection "
            f"is {projection.sha256[:12]}: queries must use the documents' matrix. Re-run "
            f"{'`connector backfill`' if backfilled else '`connector sync`'} to rewrite it with the current one"
        )
    return SearchPlan(sink, "dense" if mode == "legacy" else mode, field, projection.apply)
