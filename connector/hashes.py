"""The hashes that decide what a sync reads again, rewrites and reuses.

- `content_hash_for`: a document's text, stable metadata and text settings; when the ledger's
  differs, the document is read (cleaned, chunked, planned) again;
- `chunk_key`: a point's payload (less volatile metadata) and the pipeline fingerprint; when
  the ledger's differs, the point is rewritten;
- `volatile_hash`: the metadata that alone only refreshes the points' payloads (`modified`);
- `vector_identity`: what decides a text's vectors (the model's content and revision): the key of
  the embedding cache and of a fitted projection.
"""

from __future__ import annotations

import hashlib
import json

from connector.encoders.base import Encoder
from connector.records import Document

VOLATILE_METADATA = ("modified",)  # metadata that alone does not make a document "changed"

# json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str), with its encoder built once (json.dumps
# builds one per call with these options: a third of the time verify spends per point)
_STABLE_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


def stable_hash(obj) -> str:
    return hashlib.sha256(_STABLE_JSON.encode(obj).encode()).hexdigest()


def stable_metadata(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k not in VOLATILE_METADATA}


def volatile_hash(metadata: dict) -> str:
    """The volatile metadata a document's points carry: when it moves (a file touched, its text
    unchanged), the points get a payload-only update."""
    return stable_hash({k: metadata[k] for k in VOLATILE_METADATA if k in metadata})


def document_hash(doc: Document) -> str:
    return stable_hash({"text": doc.text, "metadata": stable_metadata(doc.metadata)})


# The text settings (document_text_settings) shape the cleaned text, which the payload, hence the
# chunk key, already holds: so they decide whether a document is read again (they are part of its
# content hash), not whether its points are rewritten (they are not part of the fingerprint). A
# config that changes a rule, or moves it to queries, re-reads every document and rewrites only
# those whose cleaned text changed. Fingerprints once held those settings: they keep the default
# value, so that stores synced with the default settings keep their chunk keys.
DEFAULT_TEXT_SETTINGS = {"preprocess": {"normalize_unicode": True, "abbreviations": {}, "drop_symbols": []}}


def content_hash_for(doc: Document, text_settings: dict) -> str:
    """What decides whether a document must be read again: its text and metadata, and the text
    settings it is cleaned with (left out when they are the defaults, as before they were part of it)."""
    if text_settings == DEFAULT_TEXT_SETTINGS:
        return document_hash(doc)
    return stable_hash({"document": document_hash(doc), "text_settings": text_settings})


def chunk_key(payload: dict, fingerprint: str) -> str:
    """What the ledger records per point: a hash of its payload (less volatile metadata) and of
    the pipeline fingerprint. A point is rewritten when its key changes."""
    metadata = stable_metadata(payload.get("metadata") or {})
    return stable_hash({"payload": {**payload, "metadata": metadata}, "fingerprint": fingerprint})


def vector_identity(encoder: Encoder) -> dict:
    """What decides the vectors of a text: the model's content and revision. Not its path (a moved
    folder is the same model) and not max_length (chunks always fit it)."""
    fp = encoder.fingerprint
    identity = {"content_sha256": fp.get("content_sha256"), "revision": fp.get("revision")}
    # only when not the defaults, so that torch encoders keep their identity (int8 vectors differ)
    if fp.get("backend", "torch") != "torch":
        identity["backend"] = fp["backend"]
    if fp.get("quantize", "none") != "none":
        identity["quantize"] = fp["quantize"]
    # int8 vectors depend on the ONNX graph recipe (fused attention is quantized too); fp32 ones
    # agree to ~1e-6 whatever the recipe, so their identity (cache, fitted projections) is kept
    if fp.get("quantize", "none") != "none" and fp.get("graph") is not None:
        identity["graph"] = fp["graph"]
    return identity
