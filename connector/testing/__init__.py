"""Test helpers that users can use too: a tiny model with BAAI/bge-m3's exact file layout."""

from connector.testing.tiny_model import make_model

__all__ = ["make_model"]
