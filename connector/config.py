"""Config: pydantic models and the YAML loader.

Relative paths resolve from the folder of the config file. Secrets never live in the
file: the config names an environment variable (`api_key_env`, `token_env`) and the
value is read from the environment when the sink connects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from connector.errors import ConfigError
from connector.locations import check_server_url, is_milvus_server_uri, local_model_path, resolve_unix_uri

DEFAULT_INCLUDE = [
    "**/*.md", "**/*.txt", "**/*.html", "**/*.htm", "**/*.jsonl", "**/*.pdf", "**/*.docx", "**/*.csv",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JsonlFields(Strict):
    """Which fields of a JSONL record hold the id, the text and the metadata."""

    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: Optional[list[str]] = Field(
        default=None, description="Fields copied into metadata; default: every other field."
    )


class CsvColumns(Strict):
    """Which columns of a CSV file (named by its header row) hold the id, the text and the metadata."""

    id_column: str = "id"
    text_column: str = "text"
    metadata_columns: Optional[list[str]] = Field(
        default=None, description="Columns copied into metadata; default: every other column."
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator, e.g. ';' or '\\t'.")


class DocxParts(Strict):
    """Which parts of a .docx are read besides the body (its paragraphs and tables)."""

    footnotes: bool = Field(True, description="Footnotes and endnotes, after the body.")
    headers_footers: bool = Field(
        False, description="Page headers and footers (each distinct one once), after the body and the notes."
    )


class HtmlOptions(Strict):
    """How .html/.htm pages are read."""

    mode: Literal["main", "full"] = Field(
        "main",
        description="main: the page's main content (trafilatura): navigation, menus, 'skip to content' links, "
        "cookie banners and footers left out; a page with less than 250 characters of main content, or nested deeper "
        "than 256 levels, is read in full. full: the whole page's text.",
    )


class FilesSourceConfig(Strict):
    type: Literal["files"] = "files"
    path: Path
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=list)
    jsonl: JsonlFields = Field(default_factory=JsonlFields)
    csv: CsvColumns = Field(default_factory=CsvColumns)
    docx: DocxParts = Field(default_factory=DocxParts)
    html: HtmlOptions = Field(default_factory=HtmlOptions)
    max_file_mb: float = Field(
        100, gt=0,
        description="Files bigger than this many MiB fail as 'too_large'; a .docx also when its parts unpack to "
        "more (.jsonl/.csv are streamed: see max_record_mb).",
    )
    max_record_mb: float = Field(
        10, gt=0,
        description="A .jsonl line or .csv row longer than this many MiB fails alone as 'too_large' (never held "
        "whole in memory); the file's other records still load.",
    )
    follow_symlinks_outside: bool = Field(
        False,
        description="Read files whose symlinks lead outside `path`; by default they fail as 'outside_root'.",
    )
    change_detection: Literal["stat", "content"] = Field(
        "stat",
        description="How a re-sync finds unchanged files. 'stat': a file whose size, modification time (ns) and "
        "inode are those of the last sync is not read again. 'content': every file is read and its text hashed "
        "(slower; also catches an edit that kept the size and restored the modification time).",
    )

    @field_validator("include", "exclude")
    @classmethod
    def _patterns_inside_root(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if re.match(r"\s*([/\\]|[A-Za-z]:[/\\])", pattern):  # /etc/*, \\host\share, C:/x
                raise ValueError(
                    f"{pattern!r} is an absolute path; patterns match paths relative to source.path, "
                    f"e.g. 'guides/**/*.md'"
                )
            if ".." in re.split(r"[/\\]", pattern.strip()):
                raise ValueError(
                    f"{pattern!r} contains '..'; patterns only match files inside source.path "
                    f"(point source.path at the folder that holds them all)"
                )
        return patterns


Scope = Literal["queries", "documents", "both"]


class PreprocessConfig(Strict):
    """The built-in text cleaning. Character cleaning (NFKC, invisible characters, spacing) applies
    to documents and queries alike; each rule applies where its `*_scope` says."""

    normalize_unicode: bool = Field(True, description="Apply Unicode NFKC.")
    abbreviations: dict[str, str] = Field(
        default_factory=dict,
        description="Case-insensitive expansions of words standing alone, e.g. {thx: thanks}.",
    )
    abbreviations_scope: Scope = Field(
        "queries",
        description="Where abbreviations expand: queries (search, embed, similarity), documents, or both. "
        "Chat-style abbreviations belong to queries: in documents 'u' is also `git add -u` or '%u'.",
    )
    drop_symbols: list[str] = Field(default_factory=list, description="Strings removed from the text.")
    drop_symbols_scope: Scope = Field("both", description="Where drop_symbols are removed: queries, documents, or both.")

    def rules_for(self, target: Literal["queries", "documents"]) -> dict:
        """The settings that shape a text of `target` (queries or documents): the rules whose scope
        covers it, the others empty. For documents this is part of what decides whether a
        document changed."""
        return {
            "normalize_unicode": self.normalize_unicode,
            "abbreviations": self.abbreviations if self.abbreviations_scope in (target, "both") else {},
            "drop_symbols": self.drop_symbols if self.drop_symbols_scope in (target, "both") else [],
        }

    @field_validator("abbreviations")
    @classmethod
    def _no_empty_abbreviation(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not str(key).strip():
                raise ValueError("an abbreviation key must not be empty")
        return {str(k): str(v) for k, v in value.items()}


# The chunkers (connector.preprocess.chunking): 1, whole paragraphs, lines or sentences (a new state
# dir's); 2, content-defined chunk ends, fuller chunks.
CHUNKING_VERSIONS = (1, 2)


class ChunkingConfig(Strict):
    max_tokens: int = Field(512, ge=8, description="Tokens per chunk, special tokens excluded.")
    overlap_tokens: int = Field(64, ge=0)
    version: Optional[int] = Field(
        None,
        description="The chunker: 1 (whole paragraphs, lines or sentences; an edit re-encodes the chunks near "
        "it) or 2 (fuller chunks, ~4% fewer, but an edit can re-chunk a whole document). Unset: the version "
        "the state dir was built with (1 for a new one). Changing it re-chunks the store once.",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value):
        if value is not None and (type(value) is not int or value not in CHUNKING_VERSIONS):  # `true` is not 1
            allowed = " or ".join(map(str, CHUNKING_VERSIONS))
            raise ValueError(f"must be {allowed} (or left out: the version the state dir was built with), not {value!r}")
        return value

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
    backend: Literal["torch", "onnx"] = Field(
        "torch",
        description="torch: the model on PyTorch. onnx: the same graph exported once to ONNX (cached in "
        "state_dir/onnx) and run on onnxruntime; needs pip install \"connector[onnx]\".",
    )
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 quantization of the matrix products (backend onnx only; the "
        "sparse head, attention scores, LayerNorm and GELU stay fp32); vectors differ slightly (dense cosine "
        "~0.998 against fp32 at bge-m3's shape)."
    )

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """The config file's folder: a relative model path resolves from here."""
        return self._base_dir

    @model_validator(mode="after")
    def _quantize_needs_onnx(self) -> "EncoderConfig":
        if self.quantize != "none" and self.backend != "onnx":
            raise ValueError(f"quantize: {self.quantize} needs backend: onnx (backend is {self.backend})")
        return self


class QdrantSinkConfig(Strict):
    type: Literal["qdrant"] = "qdrant"
    collection: str = "chunks"
    path: Optional[Path] = Field(None, description="Embedded Qdrant folder.")
    engine: Optional[Literal["edge", "local-mode"]] = Field(
        None, description="Embedded engine (with 'path'): 'edge' (Qdrant's own engine, qdrant-edge-py) or 'local-mode' "
        "(qdrant-client's pure-Python store, up to ~20 000 points). Default: the engine of the store already in the "
        "folder, 'edge' for a new folder.",
    )
    url: Optional[str] = Field(None, description="Qdrant server URL, e.g. http://localhost:6333.")
    api_key_env: Optional[str] = Field(None, description="Environment variable holding the API key.")
    batch_size: int = Field(64, ge=1, description="Points per upsert call.")
    timeout: float = Field(30.0, gt=0)
    shared: bool = Field(
        False, description="Let several state dirs (configs) write this collection. Each keeps to its own points "
        "(`verify --repair` never deletes a point its ledger does not know); their doc_ids must not overlap.",
    )

    @field_validator("url")
    @classmethod
    def _server_url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            check_server_url(value, "http://localhost:6333")
        return value

    @model_validator(mode="after")
    def _path_or_url(self) -> "QdrantSinkConfig":
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' (embedded Qdrant) or 'url' (Qdrant server)")
        if self.api_key_env and self.url is None:
            raise ValueError("'api_key_env' only applies with 'url'")
        if self.engine and self.path is None:
            raise ValueError("'engine' only applies with 'path' (an embedded store)")
        return self


class MilvusSinkConfig(Strict):
    type: Literal["milvus"] = "milvus"
    collection: str = "chunks"
    uri: str = Field(
        ..., description="Milvus Lite file (./milvus.db) or server URI (http://host:19530, unix:/path/milvus.sock)."
    )
    token_env: Optional[str] = Field(None, description="Environment variable holding the token.")
    batch_size: int = Field(64, ge=1, description="Points per upsert call.")
    timeout: float = Field(30.0, gt=0)
    shared: bool = Field(
        False, description="Let several state dirs (configs) write this collection. Each keeps to its own points "
        "(`verify --repair` never deletes a point its ledger does not know); their doc_ids must not overlap.",
    )

    @field_validator("uri")
    @classmethod
    def _lite_file_or_server(cls, value: str) -> str:
        if is_milvus_server_uri(value):
            check_server_url(value, "http://localhost:19530")
        elif not value.endswith(".db"):
            raise ValueError(
                f"{value!r} is neither a Milvus Lite file (a path ending in .db, e.g. ./milvus.db) nor a server "
                "URI (http://, https:// or tcp://host:port, or unix:/path/to/milvus.sock)"
            )
        return value

    @property
    def is_server(self) -> bool:
        return is_milvus_server_uri(self.uri)


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
    open_after_failures: int = Field(
        3, ge=1, description="A sync treats the store as down after this many calls in a row failed every retry: "
        "writes pause (encoding goes on) and the store is probed until it answers.",
    )
    outage_budget_seconds: float = Field(
        300.0, gt=0, description="A sync whose store stays down this long stops (exit 3); what it encoded is "
        "cached, and the next sync writes it without encoding it again.",
    )


ENGINE_TYPES = ("local", "ray")

#: `engine.address`: "auto", a head node's GCS address (host:port) or a Ray Client address (ray://host:port).
RAY_ADDRESS = re.compile(r"(ray://)?[^\s:/]+:(\d{1,5})")


class LocalEngineConfig(Strict):
    """`engine: {type: local}` (the default): every stage runs in this process."""

    type: Literal["local"] = "local"


class RayEngineConfig(Strict):
    """`engine: {type: ray, ...}`: the encode step runs in a pool of Ray actors (see README "Engines")."""

    type: Literal["ray"] = "ray"
    address: str = Field(
        "auto",
        description="auto (the cluster `ray start` started on this machine, or RAY_ADDRESS), a head node's "
        "host:port (e.g. 10.0.0.5:6379) or a Ray Client address ray://host:10001.",
    )
    encoders: Optional[int] = Field(
        None, ge=1, description="Encoder actors, each loading the model once; default: the cluster's CPUs // "
        "cpus_per_encoder.",
    )
    cpus_per_encoder: float = Field(
        1, ge=0.0001, description="CPUs Ray reserves for each actor, and its torch threads (one for a fraction: 0.5 "
        "puts two actors on each CPU; Ray's finest fraction is 0.0001).",
    )
    ship_model: bool = Field(
        False,
        description="Send the model's files through Ray's object store to nodes that do not have encoder.model "
        "(the same files at the same path); default: every node must have them.",
    )
    start_timeout: float = Field(
        300, gt=0, description="Seconds to wait for the cluster to answer at `address`, then for every actor to be "
        "placed and to load the model.",
    )

    @field_validator("address")
    @classmethod
    def _known_address_form(cls, value: str) -> str:
        match = RAY_ADDRESS.fullmatch(value)
        if value != "auto" and (match is None or not 1 <= int(match.group(2)) <= 65535):
            raise ValueError(
                f"{value!r} is not a Ray address: use auto (a cluster started on this machine with `ray start "
                "--head`), the head node's host:port (e.g. 10.0.0.5:6379) or ray://host:10001 (Ray Client)"
            )
        return value


class NormalizeStepConfig(PreprocessConfig):
    """`preprocessors: [{type: normalize, ...}]`: one more pass of the built-in normalizer, own options."""

    type: Literal["normalize"] = "normalize"


class PluginConfig(BaseModel):
    """The config of a source, sink or preprocessor whose `type` a plugin provides (not a built-in):
    `type` plus any other fields, passed to the plugin unchecked (the plugin checks them)."""

    model_config = ConfigDict(extra="allow")
    type: str
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def options(self) -> dict[str, Any]:
        """Every field but `type`, as written in the config."""
        return dict(self.model_extra or {})

    @property
    def base_dir(self) -> Path:
        """The config file's folder: resolve relative paths in `options` from here."""
        return self._base_dir


class PluginSinkConfig(PluginConfig):
    """A plugin sink's config; `collection` is read by the sync, status and search commands."""

    collection: str = "chunks"


PLUGIN_TAG = "type=<plugin>"


def _by_type(builtins: tuple[str, ...], default: str | None = None) -> Discriminator:
    """Pick a config section's model by its `type`: a built-in's strict model, else the plugin model.
    The tags ('type=files') show up in pydantic's error locations; format_validation_error drops them."""

    def tag(value: Any) -> str | None:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        if kind is None:
            return None
        return f"type={kind}" if kind in builtins else PLUGIN_TAG

    return Discriminator(tag)


SourceConfig = Annotated[
    Union[Annotated[FilesSourceConfig, Tag("type=files")], Annotated[PluginConfig, Tag(PLUGIN_TAG)]],
    _by_type(("files",), default="files"),
]
SinkConfig = Annotated[
    Union[
        Annotated[QdrantSinkConfig, Tag("type=qdrant")],
        Annotated[MilvusSinkConfig, Tag("type=milvus")],
        Annotated[PluginSinkConfig, Tag(PLUGIN_TAG)],
    ],
    _by_type(("qdrant", "milvus")),
]
PreprocessorConfig = Annotated[
    Union[Annotated[NormalizeStepConfig, Tag("type=normalize")], Annotated[PluginConfig, Tag(PLUGIN_TAG)]],
    _by_type(("normalize",)),
]

EngineConfig = Annotated[
    Union[Annotated[LocalEngineConfig, Tag("type=local")], Annotated[RayEngineConfig, Tag("type=ray")]],
    _by_type(ENGINE_TYPES, default="local"),  # an unknown type never gets here: see SyncConfig._engine_type
]


class SyncConfig(Strict):
    """The whole config file."""

    source: SourceConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    preprocessors: list[PreprocessorConfig] = Field(
        default_factory=list, description="Steps applied after `preprocess`, in order: [{type: NAME, ...options}]."
    )
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    sink: SinkConfig
    projection: Optional[ProjectionConfig] = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    engine: EngineConfig = Field(
        default_factory=LocalEngineConfig, description="Where the encode step runs: {type: local} or {type: ray, ...}."
    )
    on_error: Literal["continue", "stop"] = Field(
        "continue", description="After a batch failed for good: go on with the others, or stop the sync."
    )
    ignore_failures: list[str] = Field(
        default_factory=list,
        description="Kinds of unreadable document that do not make the exit code 3 (still reported), e.g. [empty].",
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_type(cls, value):
        if isinstance(value, str):  # `engine: ray` is short for `engine: {type: ray}`
            value = {"type": value}
        if isinstance(value, dict):
            value = {"type": "local", **value}
            if value["type"] not in ENGINE_TYPES:
                raise ValueError(f"type must be one of {', '.join(ENGINE_TYPES)}, not {value['type']!r}")
        elif not isinstance(value, (LocalEngineConfig, RayEngineConfig)):
            raise ValueError(f"must be local, ray or a mapping such as {{type: ray, address: auto}}, not {value!r}")
        return value

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

        if isinstance(self.source, FilesSourceConfig):
            self.source.path = fix(self.source.path)
        for section in (self.source, self.sink, *self.preprocessors):
            if isinstance(section, PluginConfig):
                section._base_dir = base
        self.state_dir = fix(self.state_dir)
        if isinstance(self.sink, QdrantSinkConfig) and self.sink.path is not None:
            self.sink.path = fix(self.sink.path)
        if isinstance(self.sink, MilvusSinkConfig):
            uri = self.sink.uri
            self.sink.uri = resolve_unix_uri(uri, base) if self.sink.is_server else str(fix(Path(uri)))
        self.encoder.model = resolve_model_ref(self.encoder.model, base)
        self.encoder._base_dir = base
        return self


def resolve_model_ref(model: str, base: Path) -> str:
    """A model given as a path (see `connector.locations.local_model_path`) becomes absolute, resolved
    from `base`; a hub id is left alone."""
    folder = local_model_path(model, base)
    return model if folder is None else str(folder)


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
        parts = [str(part) for part in e["loc"] if not str(part).startswith("type=")]  # union tags, see _by_type
        loc = ".".join(parts) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see README 'Config reference')"
        elif e["type"] == "union_tag_not_found":
            msg = "'type' is missing (a built-in type, or one a plugin provides: see `connector plugins`)"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, base: Path, origin: str = "config") -> SyncConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the config must be a YAML mapping (key: value), not {type(data).__name__}")
    try:
        config = SyncConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
    check_plugin_types(config, origin)
    return config.resolve_paths(base)


def check_plugin_types(config: SyncConfig, origin: str = "config") -> None:
    """Every type that is not a built-in must come from an installed plugin that loads; else a
    ConfigError that lists the types available."""
    from connector import plugins

    sections = [("source", plugins.SOURCES, config.source), ("sink", plugins.SINKS, config.sink)]
    sections += [(f"preprocessors.{i}", plugins.PREPROCESSORS, step) for i, step in enumerate(config.preprocessors)]
    for where, group, section in sections:
        if isinstance(section, PluginConfig):
            try:
                plugins.load(group, section.type)
            except ConfigError as err:
                raise ConfigError(f"{origin}: {where}.type: {err}") from None


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
