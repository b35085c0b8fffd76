"""BAAI/bge-m3 on torch (CPU, fp32): dense and sparse vectors from one forward pass.

Matches FlagEmbedding's BGEM3FlagModel (see design.md, "bge-m3, exactly"):
dense = L2-normalised hidden state of <s> (CLS, not the pooler); lexical weights =
relu(sparse_linear(hidden states)) per token, special tokens dropped, weights > 0 kept,
the max kept for a token id that occurs several times.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from connector.encoders.base import Encoder
from connector.encoders.filehash import file_sha256
from connector.encoders.packed_linear import pack_linears
from connector.errors import ConfigError, ModelLoadError
from connector.locations import local_model_path
from connector.records import SparseVector, TokenDetails, Vectors

#: Weight files, in order of preference; only one of them is downloaded.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

#: Every other file the model needs from the hub (never onnx/, which doubles the download).
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "sparse_linear.pt",
    "colbert_linear.pt",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)

COLBERT_FILE = "colbert_linear.pt"

MAX_PADDING = 0.02  # the largest share of a batch's tokens that may be padding (see length_batches);
# measured on bge-m3's shape: 0.02 encodes ~8% faster than 0.10 (benchmarks/RESULTS.md)


def hub_allow_patterns(weights_file: str = WEIGHT_FILES[0]) -> list[str]:
    """The `allow_patterns` for `snapshot_download`: the model files plus one weight file."""
    if weights_file not in WEIGHT_FILES:
        raise ValueError(f"weights_file must be one of {WEIGHT_FILES}, not {weights_file!r}")
    return [*MODEL_FILES, weights_file]


class BGEM3Encoder(Encoder):
    """BAAI/bge-m3 (or any model folder with its layout) on the CPU in fp32.

    `model` is a local folder or a hub id (downloaded once into the Hugging Face cache; only
    the files in `hub_allow_patterns()`). `max_length` truncates each text, special tokens
    included. Up to `batch_size` texts go through the model at once, sorted by length; a batch
    ends early where more than 2% of its tokens would be padding (`length_batches`).
    `threads` sets torch's intra-op threads for the whole process
    (default: the physical cores available to this process). A relative model path resolves
    from `base_dir` (default: the current folder; a config's encoder: the config file's folder).

    Raises ModelLoadError when the model cannot be fetched or a file is missing or broken.
    """

    def __init__(
        self,
        model: str,
        *,
        max_length: int = 8192,
        batch_size: int = 16,
        revision: str | None = None,
        threads: int | None = None,
        base_dir: Path | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        if max_length < 2:
            raise ConfigError(f"max_length must leave room for the 2 special tokens, not {max_length}")
        self.max_length = max_length
        self.batch_size = batch_size
        torch.set_num_threads(threads or physical_cores())

        local = _local_folder(model, base_dir or Path.cwd())
        if local is not None:
            self.folder, self._revision, model_ref = local, None, str(local)
        else:
            self.folder = _download(model, revision)
            # The hub cache keeps each download in snapshots/<commit hash>/.
            self._revision = self.folder.name if self.folder.parent.name == "snapshots" else revision
            model_ref = model
        weights_file = _check_files(self.folder)
        self._tokenizer, config = _load_tokenizer_and_config(self.folder)
        self._weights: tuple | None = None  # (model, sparse head), loaded on the first encode()
        self._colbert = None  # the ColBERT head, loaded on the first encode(details=True)
        self.max_padding = MAX_PADDING  # see length_batches; a service coalescing short requests may raise it
        self.dimension = int(config.hidden_size)
        self.num_heads = int(config.num_attention_heads)

        usable_positions = config.max_position_embeddings - config.pad_token_id - 1
        if max_length > usable_positions:
            raise ConfigError(
                f"encoder.max_length ({max_length}) is more than the model in {self.folder} supports "
                f"({usable_positions} tokens); lower encoder.max_length"
            )
        tok = self._tokenizer
        self._skip_ids = np.array(
            sorted({tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id} - {None}), dtype=np.int64
        )
        self._fingerprint = {
            "model": model_ref,
            "revision": self._revision,
            "content_sha256": content_hash(self.folder, weights_file),
            "max_length": max_length,
        }

    @classmethod
    def from_config(cls, encoder_config, **extra) -> "BGEM3Encoder":
        """Build from a `connector.config.EncoderConfig`; `extra` goes to a subclass's constructor."""
        return cls(
            encoder_config.model,
            max_length=encoder_config.max_length,
            batch_size=encoder_config.batch_size,
            revision=encoder_config.revision,
            threads=encoder_config.threads,
            base_dir=encoder_config.base_dir,
            **extra,
        )

    @property
    def fingerprint(self) -> dict:
        """model (hub id or resolved folder), revision (hub commit, None for a folder),
        content_sha256 (every byte of the config, sparse head, tokenizer and weight files)
        and max_length."""
        return dict(self._fingerprint)

    @property
    def tokenizer(self):
        """The model's fast tokenizer (`transformers` PreTrainedTokenizerFast / TokenizersBackend)."""
        return self._tokenizer

    def encode(self, texts: Sequence[str], *, details: bool = False) -> list[Vectors]:
        """Encode texts; output order equals input order. An empty text gets a dense vector
        and an empty sparse vector. `details=True` also returns each text's tokens, the weight
        at each position and, when the model has bge-m3's ColBERT head, its ColBERT vectors
        (`Vectors.details`), from the same forward pass."""
        texts = list(texts)
        if not texts:
            return []
        token_ids, batches = self.plan_batches(texts)
        results: list[Vectors | None] = [None] * len(texts)
        with torch.inference_mode():
            for batch in batches:
                for i, vectors in zip(batch, self._encode_batch([token_ids[i] for i in batch], details)):
                    results[i] = vectors
        return results

    def plan_batches(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        """The token ids of `texts` and the batches `encode` runs them in (lists of indices, see
        `length_batches`). `encode` of one batch's texts, in that order, runs them as that same one
        batch: an engine that spreads the batches over workers gets the vectors `encode` gives."""
        # Tokenize once; each batch is then padded only to its own longest text.
        token_ids = self._tokenizer(
            list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True,
            return_attention_mask=False,
        )["input_ids"]
        return token_ids, length_batches([len(ids) for ids in token_ids], self.batch_size, self.max_padding)

    @property
    def colbert_error(self) -> str | None:
        """Why this encoder cannot give ColBERT vectors, or None when it can."""
        if not (self.folder / COLBERT_FILE).is_file():
            return (f"the model folder {self.folder} has no {COLBERT_FILE} (bge-m3's ColBERT head), so there are no "
                    "ColBERT scores; copy that file from the model's hub repository (dense and sparse scores work)")
        return None

    def _loaded(self) -> tuple:
        """The transformer and the sparse head, loaded once. Loading waits for the first text to
        encode, so a sync with nothing to encode never reads the weights."""
        if self._weights is None:
            model, sparse_linear = _load_weights(self.folder, self.dimension)
            pack_linears(model)  # oneDNN with packed weights: ~2x the default BLAS path on AMD CPUs
            self._weights = model, sparse_linear
        return self._weights

    def _colbert_head(self):
        if self._colbert is None:
            error = self.colbert_error
            if error:
                raise ModelLoadError(error)
            self._colbert = _load_head(self.folder / COLBERT_FILE, self.dimension, self.dimension)
        return self._colbert

    def _encode_batch(self, batch_ids: list[list[int]], details: bool = False) -> list[Vectors]:
        padded = self._tokenizer.pad({"input_ids": batch_ids}, padding="longest", return_tensors="np")
        colbert = details and self.colbert_error is None
        dense, token_weights, colbert_vecs = self._forward(
            padded["input_ids"].astype(np.int64, copy=False), padded["attention_mask"].astype(np.int64, copy=False),
            colbert=colbert,
        )
        out = []
        for row, ids in enumerate(batch_ids):
            ids = np.asarray(ids, dtype=np.int64)
            vectors = Vectors(dense=dense[row].astype(np.float32, copy=True),
                              sparse=lexical_weights(ids, token_weights[row, : len(ids)], self._skip_ids))
            if details:
                vectors.details = TokenDetails(
                    token_ids=ids, token_weights=token_weights[row, : len(ids)].astype(np.float32, copy=True),
                    # bge-m3 drops <s>: one vector per later position, padding cut off
                    colbert=None if colbert_vecs is None else colbert_vecs[row, : len(ids) - 1].copy())
            out.append(vectors)
        return out

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 colbert: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One forward pass over a padded batch (int64 [batch, seq]): the L2-normalised dense
        vectors [batch, dim], the token weights [batch, seq] and, with `colbert`, the ColBERT
        vectors [batch, seq - 1, dim] (else None). Backends override this only."""
        model, sparse_linear = self._loaded()
        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        cls, token_weights = bge_m3_heads(hidden, sparse_linear)
        colbert_vecs = colbert_vectors(self._colbert_head(), hidden, mask).numpy() if colbert else None
        return torch.nn.functional.normalize(cls, dim=-1).numpy(), token_weights.numpy(), colbert_vecs


def bge_m3_outputs(model, sparse_linear, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """bge-m3's one forward pass: (CLS hidden state [batch, dim], not yet normalised;
    token weights relu(sparse_linear(h)) [batch, seq])."""
    return bge_m3_heads(model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, sparse_linear)


def bge_m3_heads(hidden: torch.Tensor, sparse_linear):
    """The CLS hidden state and the token weights of a last hidden state [batch, seq, dim]."""
    return hidden[:, 0], torch.relu(sparse_linear(hidden)).squeeze(-1)


def colbert_vectors(colbert_linear, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """bge-m3's multi-vector head (FlagEmbedding's `_colbert_embedding` + normalisation):
    colbert_linear(h) of every position after <s>, padding zeroed, rows L2-normalised."""
    vecs = colbert_linear(hidden[:, 1:]) * attention_mask[:, 1:, None].to(hidden.dtype)
    return torch.nn.functional.normalize(vecs, dim=-1)


def colbert_score(q: np.ndarray, p: np.ndarray) -> float:
    """FlagEmbedding's `colbert_score(q_reps, p_reps)`: for each vector of q the best dot product
    with a vector of p, averaged over q's vectors (asymmetric: q is the query)."""
    if len(q) == 0 or len(p) == 0:
        return 0.0
    return float((q @ p.T).max(axis=1).sum() / len(q))


def lexical_weights(token_ids: np.ndarray, token_weights: np.ndarray, skip_ids: np.ndarray) -> SparseVector:
    """bge-m3's lexical weights of one text: drop `skip_ids` (special tokens), keep weights > 0,
    keep the max weight of a repeated id; ids sorted ascending."""
    keep = (token_weights > 0) & ~np.isin(token_ids, skip_ids)
    ids, weights = token_ids[keep], token_weights[keep]
    if ids.size == 0:
        return SparseVector.empty()
    order = np.argsort(ids, kind="stable")
    ids, weights = ids[order], weights[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return SparseVector(ids[starts].astype(np.int64), np.maximum.reduceat(weights, starts).astype(np.float32))


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices of the texts in batches, longest first. A batch holds at most `batch_size` texts,
    and ends early where padding its texts to its longest one would make more than `max_padding`
    of its tokens padding: ten 500-token chunks and six 80-token passages go in two batches, not
    one that computes 2 600 padding tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        if current:
            padded = lengths[current[0]] * (len(current) + 1)
            if len(current) == batch_size or padded - real - lengths[i] > max_padding * padded:
                batches.append(current)
                current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads of one core count once).

    Reads the Linux CPU topology; elsewhere falls back to the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return len(cpus)
    return max(1, len(cores))


#: Files whose content decides the vectors, besides the weight file.
HASHED_FILES = ("config.json", "sparse_linear.pt", "tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model")


def content_hash(folder: Path, weights_file: str) -> str:
    """The content hash of a model folder: the sha256 of every byte of config.json,
    sparse_linear.pt, the tokenizer files and the weight file. Each file's hash is cached by
    `filehash.file_sha256`, so bge-m3's 2.2 GB are read once, not on every run."""
    digest = hashlib.sha256()
    for name in (*HASHED_FILES, weights_file):
        path = folder / name
        if path.is_file():
            digest.update(f"{name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _local_folder(model: str, base: Path) -> Path | None:
    """The model's folder if `model` is a path (relative to `base`); None if it is a hub id."""
    folder = local_model_path(model, base)
    if folder is not None and not folder.is_dir():
        raise ModelLoadError(
            f"model folder not found: {folder}. Set encoder.model to a folder holding BAAI/bge-m3's files "
            "(config.json, model.safetensors, tokenizer.json, sparse_linear.pt, ...) or to a hub id such as BAAI/bge-m3"
        )
    return folder


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it if it was set later.
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=hub_allow_patterns(WEIGHT_FILES[0]), local_files_only=offline
            )
        )
        if not (folder / WEIGHT_FILES[0]).is_file():  # an older repo with pytorch_model.bin only
            folder = Path(
                snapshot_download(
                    repo_id, revision=revision, allow_patterns=hub_allow_patterns(WEIGHT_FILES[1]), local_files_only=offline
                )
            )
    except Exception as err:  # offline, hub unreachable, unknown repo, no access: the fix is the same
        at = f" at revision {revision}" if revision else ""
        raise ModelLoadError(
            f"could not fetch the model '{repo_id}'{at} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "If this machine cannot reach the hub, download the model on a machine with network, e.g. "
            f"`huggingface-cli download {repo_id} --local-dir ./bge-m3 --exclude 'onnx/*'`, copy that folder here "
            "and point the config at it: `encoder: {model: ./bge-m3}` (a path relative to the config file works)."
        ) from err
    return folder


def _check_files(folder: Path) -> str:
    """Fail fast, naming the missing file; return the weight file's name."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a model folder: config.json is missing")
    if not (folder / "sparse_linear.pt").is_file():
        raise ModelLoadError(
            f"{folder} has no sparse_linear.pt, bge-m3's sparse head: without it there are no lexical weights. "
            "Copy the complete model folder (sparse_linear.pt is part of BAAI/bge-m3 on the hub)"
        )
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return name
    raise ModelLoadError(f"{folder} has no model weights: expected {' or '.join(WEIGHT_FILES)}")


def _load_tokenizer_and_config(folder: Path):
    """The fast tokenizer and the model config (cheap: no weights are read)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... for broken folders
        raise ModelLoadError(f"could not load the model in {folder} ({type(err).__name__}: {err})") from err
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{folder}: no fast tokenizer could be built; add tokenizer.json to the folder")
    return tokenizer, config


def _load_weights(folder: Path, hidden_size: int):
    """The transformer (fp32, eval mode) and the sparse head (fp32)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the connector reports its own progress
    try:
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    except Exception as err:
        raise ModelLoadError(f"could not load the model weights in {folder} ({type(err).__name__}: {err})") from err
    return model, _load_head(folder / "sparse_linear.pt", hidden_size, 1)


def _load_head(path: Path, inputs: int, outputs: int) -> torch.nn.Linear:
    """A Linear(inputs, outputs) head from its (fp16) state dict, in fp32, eval mode."""
    head = torch.nn.Linear(inputs, outputs)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        head.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    except Exception as err:
        raise ModelLoadError(
            f"{path} is not a Linear({inputs}, {outputs}) state dict "
            f"({type(err).__name__}: {err}); copy the file again from the model's hub repository"
        ) from err
    return head.eval()
