"""Build the text cleaning a config asks for: the built-in normalizer, then `preprocessors`."""

from __future__ import annotations

from typing import Callable

from connector import plugins
from connector.config import NormalizeStepConfig, SyncConfig
from connector.preprocess.normalize import Normalizer


def make_preprocessor(config: SyncConfig) -> Callable[[str], str]:
    """The cleaning of a document's text: `Normalizer(config.preprocess)` with the rules whose
    scope covers documents, then each step of `config.preprocessors` in order, each the
    `connector.preprocessors` entry point its `type` names, built with `cls(step_config)`.
    Raises ConfigError for a type no plugin provides."""
    steps = [Normalizer(config.preprocess)]
    steps += [plugins.load(plugins.PREPROCESSORS, step.type)(step) for step in config.preprocessors]
    return _chain(steps)


def make_query_preprocessor(config: SyncConfig) -> Callable[[str], str]:
    """The cleaning of a query (search, embed, similarity): `Normalizer(config.preprocess)` with
    the rules whose scope covers queries, then the `normalize` steps of `config.preprocessors`
    the same way. Other plugin steps clean documents only."""
    steps = [Normalizer(config.preprocess, target="queries")]
    steps += [Normalizer(step, target="queries") for step in config.preprocessors
              if isinstance(step, NormalizeStepConfig)]
    return _chain(steps)


def document_text_settings(config: SyncConfig) -> dict:
    """Everything that shapes a document's cleaned text: the preprocess rules that apply to
    documents and the `preprocessors` steps (only when set, so that configs without them keep
    their value). Rules scoped to queries only are not part of it."""
    settings: dict = {"preprocess": config.preprocess.rules_for("documents")}
    if config.preprocessors:
        settings["preprocessors"] = [
            {"type": step.type, **step.rules_for("documents")} if isinstance(step, NormalizeStepConfig)
            else step.model_dump()
            for step in config.preprocessors
        ]
    return settings


def _chain(steps: list[Callable[[str], str]]) -> Callable[[str], str]:
    if len(steps) == 1:
        return steps[0]

    def preprocess(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return preprocess
