"""Build the Source a config asks for."""

from __future__ import annotations

from connector import plugins
from connector.config import FilesSourceConfig, PluginConfig
from connector.sources.base import Source


def make_source(source_config: FilesSourceConfig | PluginConfig) -> Source:
    """The source for `source_config`: the class registered under its `type` in the
    `connector.sources` entry points (built-ins included), built with `cls(source_config)`.
    Raises ConfigError for a type no installed plugin provides."""
    return plugins.load(plugins.SOURCES, source_config.type)(source_config)
