"""Build the text cleaning a config asks for: the built-in normalizer, then `preprocessors`."""

from __future__ import annotations

from typing import Callable

from connector import plugins
from connector.config import SyncConfig
from connector.preprocess.normalize import Normalizer


def make_preprocessor(config: SyncConfig) -> Callable[[str], str]:
    """One text -> text function: `Normalizer(config.preprocess)`, then each step of
    `config.preprocessors` in order, each the `connector.preprocessors` entry point its `type`
    names, built with `cls(step_config)`. Raises ConfigError for a type no plugin provides."""
    steps = [Normalizer(config.preprocess)]
    steps += [plugins.load(plugins.PREPROCESSORS, step.type)(step) for step in config.preprocessors]
    if len(steps) == 1:
        return steps[0]

    def preprocess(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return preprocess
