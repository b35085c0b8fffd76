"""Shared fixtures: a tiny model with BAAI/bge-m3's exact file layout, built once per session."""

from __future__ import annotations

import os

import pytest

from connector.testing import make_model

# Every Ray process the tests start (head, workers, the pytest driver, CLI drivers) inherits this:
# Ray then keeps every node on 127.0.0.1. Ray reads it when imported, so it is set before any test imports ray.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(RAY_ENV)


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """The connector's per-user cache (model file hashes) in a temporary folder, not the user's home;
    subprocesses started by tests inherit it."""
    from connector.encoders.filehash import CACHE_DIR_ENV

    folder = tmp_path_factory.mktemp("connector-cache")
    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a random-weight bge-m3-layout model (hidden size 32, 2 layers), built once."""
    return make_model(tmp_path_factory.mktemp("tiny-bge-m3"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    """A BGEM3Encoder on the tiny model (max_length 512, batch_size 4)."""
    from connector.encoders.bge_m3 import BGEM3Encoder

    return BGEM3Encoder(str(tiny_model_dir), max_length=512, batch_size=4)


@pytest.fixture
def plain_batches(monkeypatch):
    """Encoders batch texts as plain length-sorted batches (no padding limit), so that tests of
    padded batches really pad: with the 2% limit most test texts would go through alone."""
    from connector.encoders import bge_m3

    plain = bge_m3.length_batches
    monkeypatch.setattr(bge_m3, "length_batches", lambda lengths, batch_size, max_padding=None: plain(
        lengths, batch_size, max_padding=1.0))
