"""The Engine extension point: where the encode step of a sync runs."""

from __future__ import annotations

from abc import ABC, abstractmethod

from connector.config import SyncConfig
from connector.encoders.base import Encoder


class Engine(ABC):
    """Builds the encoder a command uses for a config.

    An engine changes where the encoding runs, never what is committed when: the driver (this
    process) keeps reading, chunking, the embedding cache, the projection, store writes and the
    ledger. The encoder it returns keeps the `Encoder` contract: same fingerprint, tokenizer and
    vectors as the local engine's for the same config.
    """

    def __init__(self, config: SyncConfig):
        self.config = config

    @abstractmethod
    def make_encoder(self) -> Encoder:
        """The config's encoder. A remote engine's workers start at its `start()` (the first text to
        encode), which raises a ConnectorError that says how to fix the problem when they cannot."""
