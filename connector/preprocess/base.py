"""The Preprocessor extension point: a text -> text step applied before chunking."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Preprocessor(ABC):
    """One cleaning step, applied to the text of every document before it is chunked.

    Plugin contract (entry-point group `connector.preprocessors`): the entry point names a
    subclass; the sync builds it once with its config, `cls(config)`, and then calls the instance
    on each document's text. `config` is the step's entry of the config file's `preprocessors:`
    list, a `connector.config.PluginConfig`: `config.type` is the entry point's name and
    `config.options` holds every other field, as written. Raise `ConfigError` from `__init__` for
    bad options. The result must depend on the text and the options only (it is part of what
    decides whether a document changed), and should be idempotent.

    The built-in normalizer (`Normalizer`, the config's `preprocess:` section) always runs first;
    the `preprocessors` steps follow in the order listed. Plugin steps clean documents only;
    queries get the built-in normalizer's query-scoped rules (and those of `normalize` steps).
    """

    def __init__(self, config):
        self.config = config

    @abstractmethod
    def __call__(self, text: str) -> str:
        """The cleaned text."""
