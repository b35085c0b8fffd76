"""The error tree. Every error a user can meet is a ConnectorError whose message says how to fix it.

`cli.py` is the only place that turns these into exit codes (`exit_code` on each class).
Sinks translate their vendor's exceptions into TransientError (worth retrying) or
TerminalError (retrying cannot help).
"""


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""

    exit_code = 1


class ConfigError(ConnectorError):
    """The config file (or a command-line option) is wrong; nothing has been written."""

    exit_code = 2


class MissingExtraError(ConnectorError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f'Install it with: pip install "connector[{extra}]"'
        )


class ModelLoadError(ConnectorError):
    """The encoder model could not be found, downloaded or loaded."""


class EngineError(ConnectorError):
    """The engine that runs the encode step (a Ray cluster) cannot be reached or its workers failed;
    what they did not finish was never committed."""


class SourceError(ConnectorError):
    """A source cannot be read at all (for example its folder does not exist): a config problem."""

    exit_code = 2


class DocumentError(ConnectorError):
    """One document cannot be read or processed; the sync records it and goes on."""


class StoreError(ConnectorError):
    """A vector store call failed."""


class TransientError(StoreError):
    """A store call failed in a way that may succeed if tried again (network, overload)."""


class TerminalError(StoreError):
    """A store call failed in a way that retrying cannot fix (schema, auth, bad request)."""


class BatchTooLargeError(TerminalError):
    """The store refused a write because the request was too large; smaller batches can pass."""


class SchemaMismatchError(TerminalError):
    """An existing collection does not match the layout the config asks for."""

    exit_code = 2


class StoreUnreachableError(ConnectorError):
    """The store does not answer when a command starts; nothing has been read or written."""


class InputError(ConnectorError):
    """A request's input cannot be processed as given (a mode the model cannot score, a text
    the service's limits refuse); the message says what to change."""

    exit_code = 2


def error_kind(err: Exception) -> str:
    """How a failed store call is recorded (dead letters, reports): 'transient' or 'terminal'."""
    return "transient" if isinstance(err, TransientError) else "terminal"
