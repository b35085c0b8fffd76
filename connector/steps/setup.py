"""What a sync derives from its encoder, built once per run (SyncRun.prepare) before any step
runs: the chunker (the model's tokenizer), the fitted projection (checked against the model),
the pipeline fingerprint and the embedding cache. None of it loads the model's weights: a run
that finds nothing to encode never loads them."""

from __future__ import annotations

from dataclasses import dataclass

from connector.app import load_projection_for
from connector.config import SyncConfig
from connector.encoders.base import Encoder
from connector.encoders.cache import EmbeddingCache
from connector.hashes import DEFAULT_TEXT_SETTINGS, stable_hash, vector_identity
from connector.preprocess.chunking import BaseChunker, fingerprint_settings, make_chunker
from connector.projection import Projection


@dataclass
class SyncSetup:
    encoder: Encoder
    chunker: BaseChunker
    projection: Projection | None  # None: the collection has no legacy vectors
    fingerprint: str  # the ledger's record of what made the points (see connector.hashes.chunk_key)
    cache: EmbeddingCache  # vectors by chunk text, for this model's vectors

    def close(self) -> None:
        self.cache.close()


def prepare_sync(config: SyncConfig, encoder: Encoder, layout_name: str, chunking_version: int) -> SyncSetup:
    """The setup of a sync of `config` with `encoder` into a collection of layout `layout_name`.
    Raises ProjectionError when the collection needs a projection that is missing or does not fit."""
    chunker = make_chunker(encoder.tokenizer, config.chunking, chunking_version)
    vectors_id = vector_identity(encoder)
    projection = load_projection_for(config, encoder)
    fingerprint = stable_hash(
        {
            "vectors": vectors_id,
            "chunking": fingerprint_settings(config.chunking, chunking_version),
            **DEFAULT_TEXT_SETTINGS,  # see connector.hashes.content_hash_for
            "layout": layout_name,
            "projection": projection.sha256 if projection else None,
        }
    )
    cache = EmbeddingCache(config.state_dir, stable_hash(vectors_id))
    return SyncSetup(encoder, chunker, projection, fingerprint, cache)
