"""The local engine (the default): the encoder runs in this process."""

from __future__ import annotations

from pathlib import Path

from connector.config import SyncConfig
from connector.encoders.base import Encoder
from connector.engines.base import Engine
from connector.errors import ConfigError


class LocalEngine(Engine):
    """`engine: {type: local}`: the config's encoder in this process."""

    def make_encoder(self) -> Encoder:
        return build_local_encoder(self.config)


def build_local_encoder(config: SyncConfig, onnx_graph: Path | None = None) -> Encoder:
    """The encoder `config.encoder` describes (torch or onnx), built in this process. The Ray
    engine's workers build theirs with this function too, so both engines run the same code.
    The onnx backend exports into the state dir's cache (`state_dir/onnx`), or runs `onnx_graph`,
    an exported graph file, as it is (the Ray engine's actors: no export, nothing written)."""
    if config.encoder.backend == "onnx":
        from connector.encoders.onnx import OnnxEncoder

        if onnx_graph is not None:
            return OnnxEncoder.from_config(config.encoder, graph=onnx_graph)
        return OnnxEncoder.from_config(config.encoder, cache_dir=config.state_dir / "onnx")
    if config.encoder.quantize != "none":  # the config validates this too; a model_copy() skips that
        raise ConfigError(f"encoder.quantize: {config.encoder.quantize} needs encoder.backend: onnx")
    from connector.encoders.bge_m3 import BGEM3Encoder

    return BGEM3Encoder.from_config(config.encoder)
