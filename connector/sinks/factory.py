"""Build the Sink a config asks for."""

from __future__ import annotations

from connector.config import MilvusSinkConfig, QdrantSinkConfig
from connector.errors import ConfigError
from connector.schemas_layout import Layout, load_layout
from connector.sinks.base import Sink


def make_sink(sink_config: QdrantSinkConfig | MilvusSinkConfig, layout: Layout | None = None) -> Sink:
    """The sink for `sink_config`, with the 'chunks' layout unless another is given.

    Raises MissingExtraError (naming the `pip install "connector[...]"` to run) when the
    backend's client package is not installed, and ConfigError for an unknown config type.
    No connection is made here: the sink connects on its first call.
    """
    layout = layout or load_layout("chunks")
    if isinstance(sink_config, QdrantSinkConfig):
        from connector.sinks.qdrant import QdrantSink

        return QdrantSink.from_config(sink_config, layout)
    if isinstance(sink_config, MilvusSinkConfig):
        from connector.sinks.milvus import MilvusSink

        return MilvusSink.from_config(sink_config, layout)
    raise ConfigError(f"unknown sink config {type(sink_config).__name__}; sink.type must be 'qdrant' or 'milvus'")
