"""connector: keep a vector store in sync with a body of documents (bge-m3 dense + sparse)."""

__version__ = "0.1.0"

# The public API, imported when first used (so that `import connector.x` stays light).
_EXPORTS = {
    "sync_registry": "connector.run_metrics",
    "write_textfile": "connector.run_metrics",
    "push_metrics": "connector.run_metrics",
    "export_run_metrics": "connector.run_metrics",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'connector' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
