"""BAAI/bge-m3 on onnxruntime (CPU): the same model, exported once to ONNX, optionally int8.

Everything but the forward pass is BGEM3Encoder's (tokenizer, loading and checks, length-sorted
batches, lexical weights). The forward pass is ONE exported graph:

    inputs   input_ids, attention_mask       int64 [batch, sequence]   (both axes dynamic)
    outputs  cls            float32 [batch, hidden]    last_hidden_state[:, 0], NOT normalised
             token_weights  float32 [batch, sequence]  relu(sparse_linear(last_hidden_state))

The dense vector is L2-normalised after the graph, in numpy.

The export is cached: `cache_dir/<content_sha256[:16]>-g<GRAPH_VERSION>/model.onnx` (+ `model.onnx.data`, the
weights in ONNX's external data format, so bge-m3's 2.2 GB export loads too) and, for
`quantize="int8"`, `model.int8.onnx` (+ `model.int8.onnx.data`) next to it. The key is the
model's content hash from the fingerprint, so another model or new weights get their own
folder. Files are written in a temporary folder and renamed into place (the .onnx file last),
so a crash never leaves a half-written export that a later run would load.

The exported graph is fused before it is cached (`onnx_fusion.py`: attention, bias + GELU,
residual + LayerNorm), and kept only if it gives the export's outputs; otherwise the unfused
export is cached, with a warning.

int8 is onnxruntime's dynamic quantization (`quantize_dynamic`) of the fused graph: weights of
MatMul, Gather (the embeddings) and the fused Attention's Q/K/V as signed int8, per output channel
(`per_channel=True`, better quality than per tensor at the same speed), activations quantized per
batch at run time (uint8). The sparse head (a MatMul with one output column) stays fp32: int8
saves nothing there (`single_column_matmuls`). The attention's softmax(QK^T)V, LayerNorm and GELU
run in fp32 in both graphs.
`reduce_range` stays off. int8 vectors differ a little from fp32 ones, so the fingerprint
(and the sync's vector identity) carries `backend` and `quantize`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from connector.encoders.bge_m3 import BGEM3Encoder, _load_weights, bge_m3_outputs, physical_cores
from connector.encoders.onnx_fusion import DISABLED_OPTIMIZERS
from connector.errors import ConfigError, MissingExtraError, ModelLoadError
from connector.statedir import private_dir

log = logging.getLogger("connector.onnx")

#: Opset of the exported graph.
OPSET = 18

#: Arguments of onnxruntime.quantization.quantize_dynamic for quantize="int8". "Attention" makes the
#: fused attention's Q/K/V GEMM int8 too (QAttention); MatMulConstBOnly keeps activation x
#: activation products (an unfused graph's attention scores) in fp32.
INT8_SETTINGS = {"per_channel": True, "reduce_range": False,
                 "op_types_to_quantize": ["MatMul", "Gather", "Attention"], "extra_options": {"MatMulConstBOnly": True}}

#: Version of the graph recipe (2: attention, bias + GELU and residual + LayerNorm fused; 3: residual + LayerNorm
#: left as Add + LayerNormalization, onnx_fusion.py). Part of
#: the export folder's name and of the fingerprint: another recipe gives (slightly) other vectors.
GRAPH_VERSION = 3

#: Number of exports this process ran (tests check that the cache is used).
export_count = 0


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx", "The ONNX encoder backend (encoder.backend: onnx)") from None
    return onnxruntime


class OnnxEncoder(BGEM3Encoder):
    """bge-m3 on onnxruntime's CPU provider; same vectors as BGEM3Encoder (fp32: dense cosine
    above 0.9999) or slightly different ones with `quantize="int8"`.

    `cache_dir` holds the exported graphs (see the module docstring); the export runs on the
    first `encode()` (or `export()`) that finds no cached graph, with torch (a few seconds for a
    small model, minutes and ~3x the weights in RAM for bge-m3). `graph` instead names an exported
    graph file to run as it is (the Ray engine's actors run the driver's export): this encoder then
    never exports and writes nothing. `threads` sets onnxruntime's intra-op threads (default: the
    physical cores available to this process). The other arguments are BGEM3Encoder's.

    Raises MissingExtraError when onnxruntime is not installed (pip install "connector[onnx]").
    """

    def __init__(
        self,
        model: str,
        *,
        cache_dir: Path | None = None,
        graph: Path | None = None,
        quantize: Literal["none", "int8"] = "none",
        max_length: int = 8192,
        batch_size: int = 16,
        revision: str | None = None,
        threads: int | None = None,
        base_dir: Path | None = None,
    ):
        _import_onnxruntime()
        if quantize not in ("none", "int8"):
            raise ConfigError(f"quantize must be 'none' or 'int8', not {quantize!r}")
        if (cache_dir is None) == (graph is None):
            raise ValueError("OnnxEncoder needs either cache_dir (where it exports) or graph (an exported graph)")
        super().__init__(model, max_length=max_length, batch_size=batch_size, revision=revision, threads=threads,
                         base_dir=base_dir)
        self.quantize = quantize
        self.threads = threads or physical_cores()
        self._graph = None if graph is None else Path(graph)
        self.export_dir = (self._graph.parent if self._graph is not None
                           else Path(cache_dir) / f"{self._fingerprint['content_sha256'][:16]}-g{GRAPH_VERSION}")
        self._fingerprint.update(backend="onnx", quantize=quantize, graph=GRAPH_VERSION)
        self._session = None

    @classmethod
    def from_config(cls, encoder_config, cache_dir: Path | None = None,  # type: ignore[override]
                    graph: Path | None = None) -> "OnnxEncoder":
        """Build from a `connector.config.EncoderConfig`; `cache_dir` holds the exports (or `graph` is one)."""
        return super().from_config(encoder_config, cache_dir=cache_dir, graph=graph, quantize=encoder_config.quantize)

    @property
    def fingerprint(self) -> dict:
        """BGEM3Encoder's fingerprint plus backend ("onnx") and quantize ("none" or "int8")."""
        return dict(self._fingerprint)

    @property
    def model_path(self) -> Path:
        """The ONNX file this encoder runs (it may not exist before the first encode() or export())."""
        if self._graph is not None:
            return self._graph
        return self.export_dir / ("model.int8.onnx" if self.quantize == "int8" else "model.onnx")

    def export(self) -> Path:
        """Export (and quantize) into the cache unless the graph is there, without loading it;
        returns `model_path`. An encoder given a `graph` only checks that the file is there."""
        if self._graph is not None:
            if not self._graph.is_file():
                raise ModelLoadError(f"the exported ONNX graph {self._graph} is missing")
            return self._graph
        fp32 = self.export_dir / "model.onnx"
        private_dir(self.export_dir.parent)
        if not fp32.is_file():
            export_fused(self.folder, self.dimension, self.num_heads, fp32)
        if self.quantize == "int8" and not self.model_path.is_file():
            quantize_int8(fp32, self.model_path)
        return self.model_path

    def prepare(self) -> Path:
        """Export (and quantize) unless cached, and open the session; returns `model_path`."""
        self._loaded_session()
        return self.model_path

    def _loaded_session(self):
        if self._session is None:
            self._session = _open_session(self.export(), self.threads)
        return self._session

    @property
    def colbert_error(self) -> str | None:
        return ("the onnx backend does not export bge-m3's ColBERT head; use encoder.backend: torch for ColBERT "
                "scores (dense and sparse scores work)")

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 colbert: bool = False) -> tuple[np.ndarray, np.ndarray, None]:
        cls, token_weights = self._loaded_session().run(
            ["cls", "token_weights"], {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        norms = np.linalg.norm(cls, axis=-1, keepdims=True)
        return cls / np.maximum(norms, 1e-12), token_weights, None  # as torch.nn.functional.normalize


def graph_files(model_path: Path) -> list[Path]:
    """The files of the exported graph `model_path`: itself and its external weights (`.data`), if any."""
    data = model_path.with_name(model_path.name + ".data")
    return [model_path, *([data] if data.is_file() else [])]


def graph_sha256(model_path: Path) -> str:
    """The content hash of the exported graph `model_path`: the sha256 of every byte of its files
    (each file's hash is remembered by `filehash.file_sha256`, so a large graph is read once)."""
    import hashlib

    from connector.encoders.filehash import file_sha256

    digest = hashlib.sha256()
    for path in graph_files(model_path):
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _graph_module(folder: Path, hidden_size: int):
    import torch

    model, sparse_linear = _load_weights(folder, hidden_size)

    class BGEM3Graph(torch.nn.Module):
        """The exported graph: (input_ids, attention_mask) -> (cls, token_weights)."""

        def __init__(self):
            super().__init__()
            self.model, self.sparse_linear = model, sparse_linear

        def forward(self, input_ids, attention_mask):
            return bge_m3_outputs(self.model, self.sparse_linear, input_ids, attention_mask)

    return BGEM3Graph().eval()


def export_fused(folder: Path, hidden_size: int, num_heads: int, target: Path) -> Path:
    """Export the model (`export_onnx`), then fuse the graph (`onnx_fusion.fuse_graph`) into
    `target` (+ `target`.data), atomically. When the export does not have the expected pattern
    (FusionError, or fused outputs that differ), the unfused graph is kept (same vectors, slower)
    and a warning says so. Any other failure (a full disk, ONNX Runtime's optimizer failing) is a
    ModelLoadError and caches nothing: a transient fault must not make the slow graph permanent."""
    from connector.encoders.onnx_fusion import FusionError, fuse_graph

    with _staging(target) as tmp:
        raw = export_onnx(folder, hidden_size, tmp / "unfused" / target.name)
        fused = tmp / target.name
        try:
            stats = fuse_graph(raw, fused, num_heads, hidden_size)
            difference = _largest_difference(raw, fused)
            if difference > 1e-3:
                raise FusionError(f"the fused graph's outputs differ from the export's by {difference:.1e}")
            log.info("fused the ONNX graph: %s (outputs within %.1e of the export's)", stats, difference)
        except FusionError as err:
            log.warning("the ONNX graph stays unfused (slower, same vectors): %s", err)
            for path in tmp.iterdir():
                if path.is_file():
                    path.unlink()
            for path in raw.parent.iterdir():
                os.replace(path, tmp / path.name)
        except Exception as err:
            size_gb = sum(p.stat().st_size for p in raw.parent.iterdir()) / 1e9
            raise ModelLoadError(
                f"could not fuse the ONNX graph of {folder} ({type(err).__name__}: {err}); nothing was cached, "
                f"the next run tries again. The fusion writes up to two more copies of the model ({size_gb:.1f} GB "
                f"each) into {target.parent}: check the free space there") from err
        shutil.rmtree(raw.parent, ignore_errors=True)
    return target


def _largest_difference(a: Path, b: Path) -> float:
    """The largest |difference| of two graphs' outputs on a padded batch (real tokens only)."""
    ids = np.array([[0, 5, 6, 7, 8, 9, 10, 11, 2], [0, 12, 13, 2, 1, 1, 1, 1, 1]], dtype=np.int64)
    mask = (ids != 1).astype(np.int64)
    outputs = [_open_session(path, 1).run(["cls", "token_weights"], {"input_ids": ids, "attention_mask": mask})
               for path in (a, b)]
    (cls_a, weights_a), (cls_b, weights_b) = outputs
    return float(max(np.abs(cls_a - cls_b).max(), np.abs((weights_a - weights_b) * mask).max()))


def export_onnx(folder: Path, hidden_size: int, target: Path) -> Path:
    """Export the bge-m3 model in `folder` to `target` (+ `target`.data, external weights), atomically."""
    global export_count
    import torch

    graph = _graph_module(folder, hidden_size)
    # An example batch of 2 texts of 7 tokens, one of them padded; both axes are dynamic.
    input_ids = torch.tensor([[0, 5, 6, 7, 8, 9, 2], [0, 10, 11, 2, 1, 1, 1]], dtype=torch.int64)
    attention_mask = (input_ids != 1).to(torch.int64)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _staging(target) as tmp:
        try:
            # the exporter prints progress on stdout (which carries the CLI's --json output), warns
            # about tracing details and logs skipped torchvision ops: none of it is the user's concern
            with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), \
                    warnings.catch_warnings(), _quiet_logger("torch.onnx"):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    graph,
                    (input_ids, attention_mask),
                    str(tmp / target.name),
                    input_names=["input_ids", "attention_mask"],
                    output_names=["cls", "token_weights"],
                    dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
                    opset_version=OPSET,
                    dynamo=True,
                    external_data=True,
                    verbose=False,
                )
        except Exception as err:
            raise ModelLoadError(f"could not export the model in {folder} to ONNX ({type(err).__name__}: {err})") from err
    export_count += 1
    return target


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantization of `source` into `target` (+ `target`.data), atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:  # quantize_dynamic logs an advice to pre-process on the root logger: not the user's concern
        with _quiet_logger(""), _staging(target) as tmp:
            quantize_dynamic(
                source,
                tmp / target.name,
                weight_type=QuantType.QInt8,
                use_external_data_format=True,  # works for any size; bge-m3's int8 stays far below 2 GB anyway
                nodes_to_exclude=single_column_matmuls(source),
                **INT8_SETTINGS,
            )
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"could not quantize {source} to int8 ({type(err).__name__}: {err})") from err
    return target


def single_column_matmuls(path: Path) -> list[str]:
    """The MatMul nodes of the graph in `path` whose weight has one output column: bge-m3's sparse
    head, Linear(hidden, 1). int8 does not pay there: quantizing its input, every token's hidden
    state, costs as much as the fp32 product itself, and every token weight would lose precision."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    columns = {t.name for t in graph.initializer if len(t.dims) == 2 and t.dims[1] == 1}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in columns]


class _staging:
    """A temporary folder next to `target`; on success its files are renamed into target's
    folder, the .onnx file last (its presence means the export is complete)."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                files = sorted(p for p in self.tmp.iterdir() if p.is_file())
                if not any(p.name == self.target.name for p in files):
                    raise ModelLoadError(f"the ONNX export wrote no {self.target.name}")
                for path in sorted(files, key=lambda p: p.name == self.target.name):
                    os.replace(path, self.target.parent / path.name)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def _open_session(path: Path, threads: int):
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=DISABLED_OPTIMIZERS)
    except Exception as err:
        raise ModelLoadError(
            f"could not load the ONNX model {path} ({type(err).__name__}: {err}); delete the folder "
            f"{path.parent} to export it again"
        ) from err
