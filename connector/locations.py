"""Where things are, decided once: is a Milvus `uri` a server, is a URL well formed, is a model
reference a local folder or a hub id. Config validation, the sinks, the encoders and the CLI
all ask these functions, so they never disagree."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import SplitResult, urlsplit, urlunsplit

#: URL schemes pymilvus's MilvusClient connects to a server with, besides `unix:<socket path>`
#: (pymilvus/client/connection_manager.py, ConnectionConfig.from_uri).
MILVUS_SERVER_SCHEMES = ("http", "https", "tcp")


def is_milvus_server_uri(uri: str) -> bool:
    """True when pymilvus connects to a server for `uri`: `unix:<socket path>` (gRPC over a Unix
    socket) or an http/https/tcp URL. False for a Milvus Lite file: pymilvus checks for the .db
    ending first, so `anything.db` is always a Lite file."""
    if uri.endswith(".db"):
        return False
    return uri.startswith("unix:") or urlsplit(uri).scheme.lower() in MILVUS_SERVER_SCHEMES


def check_server_url(url: str, example: str) -> None:
    """Raise ValueError (a config error) unless `url` names a host, and a port from 1 to 65535 if
    any; `example` shows a correct URL in the message. `unix:` socket URIs have no host or port."""
    if url.startswith("unix:"):
        if not url[len("unix:"):].strip("/"):
            raise ValueError(f"{url!r} names no socket path; e.g. unix:/run/milvus/milvus.sock")
        return
    parts = urlsplit(url if "://" in url else f"//{url}")  # host:port without a scheme names a host too
    if _port(parts) == 0:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host (scheme://host:port); e.g. {example}")


def public_url(url: str) -> str:
    """`url` without user:password@, query and fragment (where secrets may hide), for messages."""
    if "://" not in url or url.startswith("unix:"):
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal
    port = _port(parts)
    return urlunsplit((parts.scheme, host + (f":{port}" if port else ""), parts.path, "", ""))


def _port(parts: SplitResult) -> int | None:
    """The URL's port; None without one; 0 for one that is not a number from 1 to 65535."""
    try:
        return parts.port  # urllib raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        return 0


def resolve_unix_uri(uri: str, base: Path) -> str:
    """A relative `unix:` socket path (`unix:./milvus.sock`) resolved from `base`; others unchanged."""
    path = uri[len("unix:"):]
    if not uri.startswith("unix:") or path.startswith("/"):
        return uri
    return "unix:" + str((base / Path(path).expanduser()).resolve())


def local_model_path(model: str, base: Path) -> Path | None:
    """The folder `model` names, absolute (a relative path resolves from `base`), or None when it is
    a hub id. It is a path when it starts with '.', '/' or '~', has more than one '/' (hub ids are
    `name` or `owner/name`), or exists under `base`. The folder itself may be missing."""
    path = Path(model).expanduser()
    path = path if path.is_absolute() else base / path
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or path.exists():
        return path.resolve()
    return None
