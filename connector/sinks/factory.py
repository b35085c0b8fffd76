"""Build the Sink a config asks for."""

from __future__ import annotations

from connector import plugins
from connector.config import MilvusSinkConfig, PluginSinkConfig, QdrantSinkConfig
from connector.schemas_layout import Layout, load_layout
from connector.retry import RetryPolicy
from connector.sinks.base import Sink


def make_sink(
    sink_config: QdrantSinkConfig | MilvusSinkConfig | PluginSinkConfig,
    layout: Layout | None = None,
    retry: RetryPolicy | None = None,
) -> Sink:
    """The sink for `sink_config`, with the 'chunks' layout unless another is given.

    The class is the one registered under `sink_config.type` in the `connector.sinks` entry points
    (built-ins included), built with `cls.from_config(sink_config, layout)`. Raises
    MissingExtraError (naming the `pip install "connector[...]"` to run) when the backend's client
    package is not installed, and ConfigError for a type no installed plugin provides.
    No connection is made here: the sink connects on its first call. With `retry`, every store
    call is retried on TransientError as that policy says.
    """
    layout = layout or load_layout("chunks")
    sink = plugins.load(plugins.SINKS, sink_config.type).from_config(sink_config, layout)
    sink.retry = retry
    return sink
