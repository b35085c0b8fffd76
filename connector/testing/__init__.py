"""Test helpers that users can use too: a tiny model with BAAI/bge-m3's exact file layout.

`make_model` is imported lazily, so `python -m connector.testing.tiny_model` runs cleanly and
importing this package does not import torch.
"""

__all__ = ["make_model"]


def __getattr__(name):
    if name == "make_model":
        from connector.testing.tiny_model import make_model

        return make_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
