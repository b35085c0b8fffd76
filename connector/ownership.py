"""Who writes a collection: one state dir, or several that share it.

Two state dirs writing one collection without knowing of each other destroy each other's points
(`verify --repair` of one deletes the other's as unknown). So a sync records its state dir's
owner id in the collection's metadata (Qdrant collection metadata, Milvus collection properties)
and refuses a collection that another state dir owns. With `sink.shared: true` in every config,
the collection is marked "shared" instead, and each state dir keeps to the points its own
ledger knows.
"""

from __future__ import annotations

import logging

from connector.errors import ConfigError, TerminalError
from connector.ledger import Ledger
from connector.sinks.base import Sink

log = logging.getLogger("connector.ownership")

SHARED = "shared"


class OwnershipError(ConfigError):
    """The collection belongs to another state dir (or is shared while this config says it is not)."""


def claim(sink: Sink, ledger: Ledger, shared: bool, take_over: bool = False) -> None:
    """Before writing: make sure this state dir may write the collection, and record it there.

    An unmarked collection (new, or written by an older connector) is claimed. `take_over` claims
    a collection another state dir owns (that state dir must no longer write it)."""
    mine = ledger.owner_id()
    wanted = SHARED if shared else mine
    current = sink.owner()
    where = f"collection '{sink.collection}'"
    if current not in (None, wanted, mine) and not take_over:
        if current == SHARED:
            raise OwnershipError(
                f"{where} is shared by several state dirs (sink.shared: true in their configs), but this config "
                "writes it alone: its `verify --repair` would delete the others' points. Set `shared: true` in this "
                "config's sink section too, or take the collection over with `connector sync --take-over` once "
                "no other config writes it."
            )
        raise OwnershipError(
            f"{where} belongs to another state dir (owner {current}; this state dir, {ledger.path.parent}, is "
            f"{mine}). Two state dirs writing one collection delete each other's points. Use the config (and "
            "state_dir) that owns it; or, if that state dir is gone for good, take the collection over with "
            "`connector sync --take-over`; or let several configs write it with `shared: true` in the sink "
            "section of every one of them (their doc_ids must not overlap)."
        )
    if current == wanted:
        return
    try:
        recorded = sink.set_owner(wanted)
    except TerminalError as err:  # e.g. a Qdrant server too old to keep collection metadata
        recorded = False
        log.debug("could not record the owner: %s", err)
    if recorded and sink.owner() != wanted:  # another state dir claimed it at the same moment
        raise OwnershipError(f"{where} was claimed by another state dir at the same moment; run the sync again "
                             "to see which one owns it")
    if not recorded:
        log.info("the store keeps no collection metadata: nothing stops another state dir from writing %s", where)
    elif current is not None:
        log.warning("%s: owner changed from %s to %s", where, current, wanted)
