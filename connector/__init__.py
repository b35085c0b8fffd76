"""connector: keep a vector store in sync with a body of documents (bge-m3 dense + sparse).

The library API (the CLI and `connector serve` call the same functions):

    from connector import load_config, open_encoder, sync, search, similarity
    config = load_config("configs/demo.yaml")
    report = sync(config, prune=True)           # a SyncReport; report.to_json() is `sync --json`
    encoder = open_encoder(config)
    search(config, "reset password", encoder=encoder)["hits"]
    similarity(encoder, "What is BGE M3?", "BGE M3 is an embedding model")["scores"]
"""

__version__ = "0.1.0"

__all__ = ["backfill", "embed", "failed", "fit_projection", "load_config", "open_encoder", "query_cleaner",
           "rebind", "retry", "schema", "search", "similarity", "similarity_matrix", "split_conversation", "status", "sync",
           "tokenize", "verify", "sync_registry", "write_textfile", "push_metrics", "export_run_metrics"]

_HOMES = {
    "load_config": ("connector.config", "load_config"),
    "sync": ("connector.pipeline", "run_sync"),
    "retry": ("connector.recovery", "retry_dead_letters"),
    "backfill": ("connector.backfill", "backfill"),
    "fit_projection": ("connector.backfill", "fit_projection"),
    **{name: ("connector.run_metrics", name)
       for name in ("sync_registry", "write_textfile", "push_metrics", "export_run_metrics")},
}


def __getattr__(name: str):
    """Imported on first use, so `import connector` (and every CLI command) stays fast."""
    import importlib

    if name in _HOMES:
        module, attr = _HOMES[name]
        return getattr(importlib.import_module(module), attr)
    if name in __all__:
        return getattr(importlib.import_module("connector.api"), name)
    raise AttributeError(f"module 'connector' has no attribute {name!r}")
