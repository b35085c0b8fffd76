"""Engines: where the encode step runs (README "Engines").

`make_engine_encoder(config)` is what `connector.app.make_encoder` calls: the config's
encoder on the config's engine. `with_engine` applies a command's `--engine` override.
"""

from __future__ import annotations

from connector.config import LocalEngineConfig, RayEngineConfig, SyncConfig
from connector.encoders.base import Encoder
from connector.engines.base import Engine


def make_engine(config: SyncConfig) -> Engine:
    """The engine `config.engine` names."""
    if config.engine.type == "ray":
        from connector.engines.ray import RayEngine

        return RayEngine(config)
    from connector.engines.local import LocalEngine

    return LocalEngine(config)


def make_engine_encoder(config: SyncConfig, engine_override: str | None = None) -> Encoder:
    """The config's encoder, run by the config's engine (or by `engine_override`: local or ray)."""
    return make_engine(with_engine(config, engine_override)).make_encoder()


def with_engine(config: SyncConfig, engine: str | None) -> SyncConfig:
    """`config` with its engine replaced by `engine` (local or ray; None: unchanged). An engine of
    the type the config already has keeps the config's settings; `ray` otherwise takes the
    defaults (address auto, one encoder per cluster CPU)."""
    if engine is None or engine == config.engine.type:
        return config
    settings = {"local": LocalEngineConfig, "ray": RayEngineConfig}[engine]()
    return config.model_copy(update={"engine": settings})
