"""The FastAPI app behind `connector serve`: the JSON API (connector.api functions, so the
answers equal the CLI's `--json`), the WebUI's static files, /health, /metrics and an offline
/docs page. `create_app(ServeSettings(...))` builds it; `connector.cli` runs it with uvicorn."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from connector import __version__, api
from connector.config import SyncConfig
from connector.errors import ConfigError, ConnectorError, InputError, ModelLoadError, StoreError, StoreUnreachableError
from connector.serve.batcher import EncodeBatcher, QueueFull
from connector.serve.metrics import ServiceMetrics

log = logging.getLogger("connector.serve")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServeSettings:
    """What `connector serve` was started with. `config` (with a store) or `model` (embedding only)."""

    config: SyncConfig | None = None
    model: str | None = None
    max_length: int | None = None
    api_key: str | None = None
    max_texts: int = 64  # texts per request (embed, matrix)
    max_chars: int = 20_000  # characters per text
    max_batch: int = 32  # texts per coalesced encoder call
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_queue: int = 512  # texts waiting for the encoder; past it: 503 + Retry-After
    cache_mb: float = 256  # the in-memory embedding cache
    coalesce: bool = True

    @property
    def max_body_bytes(self) -> int:
        # a full request: every text at the limit, JSON-escaped (up to 6 bytes per character)
        return self.max_texts * self.max_chars * 6 + 65_536


class ApiError(Exception):
    """An answer other than 200: HTTP status, kind, message (and headers)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "kind": kind}, status_code=status, headers=headers)


# ---- request bodies -----------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Body):
    texts: list[str] = Field(min_length=1, description="The texts to encode.")
    legacy: bool = Field(False, description="Also the projected (legacy-size) dense vector.")


class SimilarityRequest(_Body):
    a: str = Field(description="Text A (ColBERT: the query).")
    b: str = Field(description="Text B.")
    mode: str = Field("hybrid", description="dense | sparse | colbert | hybrid: the score in `score`.")


class MatrixRequest(_Body):
    texts: list[str] | None = Field(None, description="The texts, one per row and column.")
    text: str | None = Field(None, description="Or one text: split into its lines, or else its sentences.")
    mode: str = Field("dense", description="dense | sparse | colbert | hybrid")


class TokenizeRequest(_Body):
    text: str


class SearchRequest(_Body):
    query: str
    mode: str = Field("hybrid", description="hybrid | dense | sparse | legacy")
    limit: int = Field(10, ge=1, le=1000)
    collection: str | None = Field(None, description="Another collection of the store, e.g. a backfill target.")


# ---- the service's state ----------------------------------------------------------------------
def open_service_encoder(settings: ServeSettings):
    """The encoder as the service uses it (benchmarks/serve_latency.py measures it alone)."""
    encoder = api.open_encoder(settings.config, model=settings.model, max_length=settings.max_length)
    # A coalesced batch is one forward pass: let it hold the whole batch, and pad short
    # texts of different lengths together instead of splitting it at 2% padding.
    encoder.batch_size = max(encoder.batch_size, settings.max_batch)
    encoder.max_padding = 0.5
    return encoder


class Service:
    """The encoder (loaded in the background), the batcher, the projection and the open sinks."""

    def __init__(self, settings: ServeSettings, metrics: ServiceMetrics):
        self.settings, self.metrics = settings, metrics
        self.batcher: EncodeBatcher | None = None
        self.load_error: str | None = None
        self.projection = None
        self.projection_error: str | None = None
        self.clean = api.query_cleaner(settings.config)
        self._sinks: dict[str, object] = {}
        self._sink_lock = threading.Lock()
        self.search_lock = threading.Lock()  # one search at a time (an embedded store's client is not thread-safe)
        self._store_checked: tuple[float, dict] | None = None
        self._loader = threading.Thread(target=self._load, name="connector-model-loader", daemon=True)

    def start(self) -> None:
        self._loader.start()

    def _load(self) -> None:
        s = self.settings
        try:
            encoder = open_service_encoder(s)
            encoder.encode(["warm up"])  # reads the weights now, not in the first request
            try:
                self.projection = api.legacy_projection(s.config, encoder)
            except ConnectorError as err:
                self.projection_error = str(err)
            fp = encoder.fingerprint
            self.metrics.model_info.info({
                "model": str(fp.get("model")), "backend": self.backend, "quantize": self.quantize,
                "dimension": str(encoder.dimension), "device": "cpu", "version": __version__})
            self.batcher = EncodeBatcher(encoder, max_batch=s.max_batch, max_wait=s.batch_wait_ms / 1000,
                                         max_queue=s.max_queue, cache_mb=s.cache_mb, coalesce=s.coalesce,
                                         metrics=self.metrics).start()
            self.metrics.ready.set(1)
            log.info("model loaded: %s", fp.get("model"))
        except Exception as err:  # reported by /health and every API call
            self.load_error = f"{type(err).__name__}: {err}" if not isinstance(err, ConnectorError) else str(err)
            log.exception("the model could not be loaded")

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        with self._sink_lock:
            for sink in self._sinks.values():
                sink.close()
            self._sinks.clear()

    @property
    def backend(self) -> str:
        return self.settings.config.encoder.backend if self.settings.config else "torch"

    @property
    def quantize(self) -> str:
        return self.settings.config.encoder.quantize if self.settings.config else "none"

    def encoder(self) -> EncodeBatcher:
        if self.batcher is not None:
            return self.batcher
        if self.load_error:
            raise ApiError(503, "unavailable", f"the model could not be loaded: {self.load_error}")
        raise ApiError(503, "unavailable", "the model is still loading; retry in a few seconds",
                       {"Retry-After": "2"})

    def config(self) -> SyncConfig:
        if self.settings.config is None:
            raise ApiError(400, "no_store", "this service was started with --model only, so there is no store to "
                                            "search; start it with -c CONFIG")
        return self.settings.config

    def open_sink(self, config: SyncConfig):
        """An open sink per collection, kept for the life of the service (opening an embedded
        store reads the whole collection). An embedded store allows one client per folder, so
        searching another of its collections (a backfill target) closes the one open before."""
        from connector.app import open_sink

        name = config.sink.collection
        with self._sink_lock:
            sink = self._sinks.pop(name, None)
            if sink is None:
                limit = 1 if _embedded(config) else 8
                while len(self._sinks) >= limit:
                    self._sinks.pop(next(iter(self._sinks))).close()
                sink = open_sink(config)
            self._sinks[name] = sink  # the most recently used last
            return sink

    def store_health(self) -> dict | None:
        """Whether the store answers (one probe, remembered for 5 seconds)."""
        if self.settings.config is None:
            return None
        if self._store_checked and time.monotonic() - self._store_checked[0] < 5:
            return self._store_checked[1]
        try:
            with self.search_lock:
                self.open_sink(self.settings.config).probe()
            result = {"reachable": True}
        except Exception as err:
            result = {"reachable": False, "error": str(err)}
        self._store_checked = (time.monotonic(), result)
        return result


# ---- the app ------------------------------------------------------------------------------------
def create_app(settings: ServeSettings) -> FastAPI:
    """The service: call `app.state.service.start()` (the lifespan does) to load the model."""
    from contextlib import asynccontextmanager

    metrics = ServiceMetrics()
    service = Service(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="connector", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="bge-m3 (dense + sparse + ColBERT) on the CPU, and search in the synced collection.")
    app.state.service = service
    app.state.metrics = metrics
    _add_error_handlers(app)
    _add_middleware(app, settings, metrics)

    @app.get("/health", tags=["service"])
    def health():
        if service.batcher is None:
            body = {"status": "failed", "error": service.load_error} if service.load_error else {"status": "loading"}
            return JSONResponse(body, status_code=503, headers=None if service.load_error else {"Retry-After": "2"})
        enc = service.batcher
        p = service.projection
        return {
            "status": "healthy", "model": enc.fingerprint.get("model"), "device": "cpu", "backend": service.backend,
            "quantize": service.quantize, "dimension": enc.dimension, "colbert": enc.colbert_error is None,
            "projection": {"k": p.k, "sha256": p.sha256} if p is not None else None,
            "collection": settings.config.sink.collection if settings.config else None,
            "store": service.store_health(), "auth": settings.api_key is not None, "version": __version__,
        }

    @app.get("/metrics", tags=["service"])
    def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix="/v1", tags=["api"])  # the API key is checked by the middleware, before anything else

    @v1.post("/embed")
    def embed(req: EmbedRequest):
        """The `connector embed --json` document of the texts."""
        _check_texts(req.texts, settings, allow_empty=True)  # as `connector embed ""`: an empty sparse vector
        encoder = service.encoder()
        projection = None
        if req.legacy:
            if service.projection is None:
                raise InputError(service.projection_error or "legacy: true needs a projection: start the service "
                                 "with a config whose projection.output is dense+legacy or legacy")
            projection = service.projection
        return api.embed(encoder, req.texts, clean=service.clean, projection=projection)

    @v1.post("/similarity")
    def similarity(req: SimilarityRequest):
        """Every score of two texts and the values behind them (`connector similarity --json`)."""
        _check_texts([req.a, req.b], settings, names=("a", "b"))
        data = api.similarity(service.encoder(), req.a, req.b, mode=req.mode, clean=service.clean)
        for mode, key in (("dense", "dense"), ("sparse", "lexical"), ("colbert", "colbert"), ("hybrid", "hybrid")):
            if data["scores"][key] is not None:
                metrics.similarity_score.labels(mode).observe(data["scores"][key])
        return data

    @v1.post("/similarity/matrix")
    def similarity_matrix(req: MatrixRequest):
        """The N x N score matrix of several texts, or of one text split into lines or sentences."""
        if (req.texts is None) == (req.text is None):
            raise InputError("give either texts (a list) or text (one text to split into lines or sentences)")
        texts = req.texts if req.texts is not None else api.split_conversation(_check_texts([req.text], settings, names=("text",))[0])
        if not texts:
            raise InputError("there is no text to compare: the input is empty")
        _check_texts(texts, settings)
        return api.similarity_matrix(service.encoder(), texts, mode=req.mode, clean=service.clean)

    @v1.post("/tokenize")
    def tokenize(req: TokenizeRequest):
        """The model's tokens of the text with character offsets and each position's sparse weight."""
        _check_texts([req.text], settings, names=("text",))
        return api.tokenize(service.encoder(), req.text, clean=service.clean)

    @v1.post("/search")
    def search(req: SearchRequest):
        """The `connector search --json` document of the query."""
        config = service.config()
        _check_texts([req.query], settings, names=("query",))
        encoder = service.encoder()
        with service.search_lock:
            return api.search(config, req.query, encoder=encoder, mode=req.mode, limit=req.limit,
                              collection=req.collection, clean=service.clean, open_sink=service.open_sink)

    app.include_router(v1)
    _add_pages(app)
    return app


def _embedded(config: SyncConfig) -> bool:
    """Qdrant local mode (`path`) or a Milvus Lite file: a store one client opens at a time."""
    from connector.locations import is_milvus_server_uri

    sink = config.sink
    if sink.type == "qdrant":
        return getattr(sink, "path", None) is not None
    return sink.type == "milvus" and not is_milvus_server_uri(str(getattr(sink, "uri", "")))


def _authorized(request: Request, expected: bytes | None) -> bool:
    """No key configured, or `Authorization: Bearer <key>` with the key (compared in constant time)."""
    if expected is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


def _check_texts(texts: list[str], settings: ServeSettings, allow_empty: bool = False, names=None) -> list[str]:
    """The service's limits: texts per request, characters per text, no empty text (but embed's)."""
    if len(texts) > settings.max_texts:
        raise ApiError(413, "too_large", f"{len(texts)} texts in one request; at most {settings.max_texts} "
                                         "(split the request, or start the service with a larger --max-texts)")
    for name, text in zip(names or range(len(texts)), texts):
        if not allow_empty and not text.strip():
            raise InputError(f"text {name} is empty: there is nothing to compare or look up")
        if len(text) > settings.max_chars:
            raise ApiError(413, "too_large", f"text {name} has {len(text)} characters; at most {settings.max_chars} "
                                             "(split it, or start the service with a larger --max-chars)")
    return texts


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        return error_response(err.status, err.kind, err.message, err.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(_request, err: QueueFull):
        return error_response(503, "unavailable", f"{err}; retry in a second", {"Retry-After": "1"})

    @app.exception_handler(ConnectorError)
    async def connector_error(_request, err: ConnectorError):
        if isinstance(err, (InputError, ConfigError)):
            return error_response(422, "invalid", str(err))
        if isinstance(err, (StoreError, StoreUnreachableError)):
            return error_response(502, "store_error", str(err))
        if isinstance(err, ModelLoadError):
            return error_response(503, "unavailable", str(err))
        return error_response(400, "error", str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        if "json" not in request.headers.get("content-type", "") and request.method == "POST":
            # FastAPI reads a body as JSON only when the request says so (a browser's cross-site
            # form post cannot), so a `curl -d` without the header lands here
            return error_response(422, "invalid", "the request body must be JSON, sent with the header "
                                                  "'Content-Type: application/json'")
        return error_response(422, "invalid", _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return error_response(err.status_code, kinds.get(err.status_code, "error"), str(err.detail),
                              getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_request, err: Exception):
        log.error("internal error", exc_info=err)
        return error_response(500, "internal", "internal error (the server log has the details)")


def _validation_message(err: RequestValidationError) -> str:
    """The validation errors as one sentence, without echoing the (possibly huge) input."""
    parts = []
    for e in err.errors()[:5]:
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})"
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(err.errors()) - 5} more)" if len(err.errors()) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more + ". See /docs for the request shapes"


def _add_middleware(app: FastAPI, settings: ServeSettings, metrics: ServiceMetrics) -> None:
    limit = settings.max_body_bytes
    key = settings.api_key.encode() if settings.api_key else None

    @app.middleware("http")
    async def count_and_limit(request: Request, call_next):
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if request.url.path.startswith("/v1/") and not _authorized(request, key):  # before the body is read
            response = error_response(401, "unauthorized", "this service needs an API key: send the header "
                                                           "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
        elif length is not None and (not length.isdigit() or int(length) > limit):
            response = error_response(413, "too_large", f"the request body is larger than {limit} bytes "
                                                        "(fewer or shorter texts per request)")
        elif length is None and request.method in ("POST", "PUT", "PATCH"):
            response = await _limited_stream(request, call_next, limit)
        else:
            response = await call_next(request)
        endpoint = _endpoint_label(app, request)
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
        return response


def _endpoint_label(app: FastAPI, request: Request) -> str:
    """The route's path template when the request reached one or names one exactly (a 401 or 413
    answered before routing), else `/static` or `other`: random paths never become labels."""
    route = request.scope.get("route")
    if getattr(route, "path", None):
        return route.path
    path = request.url.path
    if path in app.openapi()["paths"]:  # built once, then cached by FastAPI
        return path
    return "/static" if path.startswith("/static/") else "other"


async def _limited_stream(request: Request, call_next, limit: int):
    """A chunked body (no Content-Length): read it with the limit, then hand it on."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return error_response(413, "too_large", f"the request body is larger than {limit} bytes")
    request._body = bytes(body)  # Starlette reads a cached body from here
    return await call_next(request)


def _add_pages(app: FastAPI) -> None:
    """The WebUI (/ and /static), and /docs with Swagger UI's files served from here (no CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        page = STATIC / "index.html"
        if not page.is_file():
            raise ApiError(404, "not_found", "the WebUI files are not installed (connector/serve/static)")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    assets = _swagger_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="connector API",
                                       swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/docs-assets/favicon.png")


def _swagger_assets() -> Path | None:
    """Swagger UI's JS and CSS as shipped by the `fastapi-offline` package (part of connector[serve])."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None
