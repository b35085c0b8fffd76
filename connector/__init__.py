"""connector: keep a vector store in sync with a body of documents (bge-m3 dense + sparse)."""

__version__ = "0.1.0"
