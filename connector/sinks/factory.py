"""Build the Sink a config asks for."""

from __future__ import annotations

from connector.config import MilvusSinkConfig, QdrantSinkConfig
from connector.errors import ConfigError
from connector.schemas_layout import Layout, load_layout
from connector.retry import RetryPolicy
from connector.sinks.base import Sink


def make_sink(
    sink_config: QdrantSinkConfig | MilvusSinkConfig, layout: Layout | None = None, retry: RetryPolicy | None = None
) -> Sink:
    """The sink for `sink_config`, with the 'chunks' layout unless another is given.

    Raises MissingExtraError (naming the `pip install "connector[...]"` to run) when the
    backend's client package is not installed, and ConfigError for an unknown config type.
    No connection is made here: the sink connects on its first call. With `retry`, every store
    call is retried on TransientError as that policy says.
    """
    layout = layout or load_layout("chunks")
    if isinstance(sink_config, QdrantSinkConfig):
        from connector.sinks.qdrant import QdrantSink

        sink = QdrantSink.from_config(sink_config, layout)
    elif isinstance(sink_config, MilvusSinkConfig):
        from connector.sinks.milvus import MilvusSink

        sink = MilvusSink.from_config(sink_config, layout)
    else:
        raise ConfigError(f"unknown sink config {type(sink_config).__name__}; sink.type must be 'qdrant' or 'milvus'")
    sink.retry = retry
    return sink
