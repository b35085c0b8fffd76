"""The Encoder extension point: texts in, dense + sparse vectors out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from connector.records import Vectors


class Encoder(ABC):
    """Turns texts into `Vectors` (L2-normalised dense + sparse lexical weights).

    Implementations load their model in `__init__` and must be deterministic for a given
    model: the sync relies on `fingerprint` to know when stored vectors are still valid.
    """

    #: Size of the dense vector, read from the model (1024 for bge-m3).
    dimension: int
    #: Largest number of tokens per text, special tokens included.
    max_length: int
    #: How many texts a sync hands to one `encode()` call: enough to keep the encoder busy (an encoder
    #: that fans batches out to several workers asks for more), few enough that a sync told to stop,
    #: or its write step waiting to read the embedding cache, waits little.
    texts_per_call: int = 32

    @property
    @abstractmethod
    def fingerprint(self) -> dict:
        """What identifies the vectors this encoder produces (model id/revision, weights hash,
        max_length). Two encoders with equal fingerprints give equal vectors."""

    def start(self) -> None:
        """Get ready to encode; idempotent. Nothing to do here; an engine whose workers run elsewhere
        starts them (and may then ask for other `texts_per_call`). The sync calls it once it has texts
        to encode, so that a run with nothing to encode never starts them; `encode` calls it too."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> list[Vectors]:
        """Encode texts in one forward pass per batch; output order equals input order."""

    @property
    @abstractmethod
    def tokenizer(self):
        """The model's own tokenizer (a `transformers` fast tokenizer), used by the chunker."""

    def close(self) -> None:
        """Release what the encoder holds outside this process (the Ray engine's actors). The caller
        that built an encoder closes it; an encoder handed to a function stays open. Idempotent."""
