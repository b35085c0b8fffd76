"""Config: pydantic models and the YAML loader.

Relative paths resolve from the folder of the config file. Secrets never live in the
file: the config names an environment variable (`api_key_env`, `token_env`) and the
value is read from the environment when the sink connects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connector.errors import ConfigError

DEFAULT_INCLUDE = ["**/*.md", "**/*.txt", "**/*.html", "**/*.htm", "**/*.jsonl"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JsonlFields(Strict):
    """Which fields of a JSONL record hold the id, the text and the metadata."""

    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: Optional[list[str]] = Field(
        default=None, description="Fields copied into metadata; default: every other field."
    )


class FilesSourceConfig(Strict):
    type: Literal["files"] = "files"
    path: Path
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=list)
    jsonl: JsonlFields = Field(default_factory=JsonlFields)


class PreprocessConfig(Strict):
    normalize_unicode: bool = Field(True, description="Apply Unicode NFKC.")
    abbreviations: dict[str, str] = Field(
        default_factory=dict, description="Whole-word, case-insensitive expansions, e.g. {thx: thanks}."
    )
    drop_symbols: list[str] = Field(default_factory=list, description="Strings removed from the text.")

    @field_validator("abbreviations")
    @classmethod
    def _no_empty_abbreviation(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not str(key).strip():
                raise ValueError("an abbreviation key must not be empty")
        return {str(k): str(v) for k, v in value.items()}


class ChunkingConfig(Strict):
    max_tokens: int = Field(512, ge=8, description="Tokens per chunk, special tokens excluded.")
    overlap_tokens: int = Field(64, ge=0)

    @model_validator(mode="after")
    def _overlap_below_max(self) -> "ChunkingConfig":
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than max_tokens ({self.max_tokens})"
            )
        return self


class EncoderConfig(Strict):
    model: str = Field("BAAI/bge-m3", description="Hub id or local folder.")
    revision: Optional[str] = None
    max_length: int = Field(8192, ge=8, le=8192)
    batch_size: int = Field(16, ge=1)
    threads: Optional[int] = Field(None, ge=1, description="Intra-op threads; default: physical cores.")


class QdrantSinkConfig(Strict):
    type: Literal["qdrant"] = "qdrant"
    collection: str = "chunks"
    path: Optional[Path] = Field(None, description="Embedded Qdrant folder (local mode).")
    url: Optional[str] = Field(None, description="Qdrant server URL, e.g. http://localhost:6333.")
    api_key_env: Optional[str] = Field(None, description="Environment variable holding the API key.")
    batch_size: int = Field(64, ge=1, description="Points per upsert call.")
    timeout: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _path_or_url(self) -> "QdrantSinkConfig":
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' (embedded Qdrant) or 'url' (Qdrant server)")
        if self.api_key_env and self.url is None:
            raise ValueError("'api_key_env' only applies with 'url'")
        return self


class MilvusSinkConfig(Strict):
    type: Literal["milvus"] = "milvus"
    collection: str = "chunks"
    uri: str = Field(..., description="Milvus Lite file (./milvus.db) or server URI (http://host:19530).")
    token_env: Optional[str] = Field(None, description="Environment variable holding the token.")
    batch_size: int = Field(64, ge=1, description="Points per upsert call.")
    timeout: float = Field(30.0, gt=0)

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://", "tcp://", "grpc://"))


class ProjectionConfig(Strict):
    """Legacy vectors: the dense vector projected to `dim` dimensions (PCA, see `connector projection`)."""

    dim: int = Field(768, ge=2, description="Size k of the legacy vector.")
    sample: int = Field(20000, ge=2, description="Dense vectors the PCA is fitted on.")
    output: Literal["dense", "dense+legacy", "legacy"] = Field(
        "dense+legacy",
        description="dense: full vector only; dense+legacy: both, as two named vectors; legacy: only the k-d one.",
    )
    field: Optional[str] = Field(None, description="Name of the legacy vector; default dense_<dim>.")

    @model_validator(mode="after")
    def _default_field(self) -> "ProjectionConfig":
        if self.field is None:
            self.field = f"dense_{self.dim}"
        if self.field in ("dense", "sparse", "id"):
            raise ValueError(f"projection.field must not be '{self.field}' (that name is taken)")
        if self.sample < self.dim:
            raise ValueError(f"projection.sample ({self.sample}) must be at least projection.dim ({self.dim})")
        return self


class RetryConfig(Strict):
    """How store calls are retried (transient errors only)."""

    attempts: int = Field(5, ge=1, description="Tries per call, the first included.")
    initial_wait: float = Field(0.5, ge=0, description="Seconds before the first retry.")
    multiplier: float = Field(2.0, ge=1, description="Each wait is this many times the previous one.")
    max_wait: float = Field(30.0, ge=0, description="Longest single wait, in seconds.")
    jitter: float = Field(0.5, ge=0, description="Up to this many seconds added at random to each wait.")
    max_total_seconds: float = Field(120.0, gt=0, description="Give up once this much time has passed.")


SinkConfig = Annotated[Union[QdrantSinkConfig, MilvusSinkConfig], Field(discriminator="type")]


class SyncConfig(Strict):
    """The whole config file."""

    source: FilesSourceConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    sink: SinkConfig
    projection: Optional[ProjectionConfig] = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    on_error: Literal["continue", "stop"] = Field(
        "continue", description="After a batch failed for good: go on with the others, or stop the sync."
    )
    ignore_failures: list[str] = Field(
        default_factory=list,
        description="Kinds of unreadable document that do not make the exit code 3 (still reported), e.g. [empty].",
    )

    @field_validator("ignore_failures")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        from connector.records import FAILURE_KINDS

        unknown = [k for k in value if k not in FAILURE_KINDS]
        if unknown:
            raise ValueError(f"unknown failure kind(s) {unknown}; known: {', '.join(FAILURE_KINDS)}")
        return value
    state_dir: Path = Path(".connector")

    @model_validator(mode="after")
    def _chunk_fits_model(self) -> "SyncConfig":
        if self.chunking.max_tokens + 2 > self.encoder.max_length:
            raise ValueError(
                f"chunking.max_tokens ({self.chunking.max_tokens}) plus the 2 special tokens must fit "
                f"encoder.max_length ({self.encoder.max_length}); lower max_tokens or raise max_length"
            )
        return self

    def resolve_paths(self, base: Path) -> "SyncConfig":
        """Make every relative path absolute, relative to `base` (the config file's folder)."""

        def fix(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else (base / p).resolve()

        self.source.path = fix(self.source.path)
        self.state_dir = fix(self.state_dir)
        if isinstance(self.sink, QdrantSinkConfig) and self.sink.path is not None:
            self.sink.path = fix(self.sink.path)
        if isinstance(self.sink, MilvusSinkConfig) and not self.sink.is_server:
            self.sink.uri = str(fix(Path(self.sink.uri)))
        self.encoder.model = resolve_model_ref(self.encoder.model, base)
        return self


def resolve_model_ref(model: str, base: Path) -> str:
    """A model given as a path ('./m', '../m', '/m', '~/m', or an existing folder) becomes absolute;
    anything else is a hub id and is left alone."""
    if model.startswith((".", "/", "~")) or (base / model).is_dir():
        p = Path(model).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    return model


def secret_from_env(var: Optional[str], what: str) -> Optional[str]:
    """Read a secret from the environment variable the config names; never log the value."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"{what}: environment variable {var} is not set; export it before running")
    return value


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {len(err.errors())} problem(s) in the config:"]
    for e in err.errors():
        loc = ".".join(str(part) for part in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see README 'Config reference')"
        elif e["type"] == "union_tag_invalid":
            msg = "sink.type must be 'qdrant' or 'milvus'"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, base: Path, origin: str = "config") -> SyncConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the config must be a YAML mapping (key: value), not {type(data).__name__}")
    try:
        config = SyncConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
    return config.resolve_paths(base)


def load_config(path: str | os.PathLike) -> SyncConfig:
    """Load and validate a YAML config; raises ConfigError (exit code 2) with one line per problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, path.resolve().parent, origin=str(path))
