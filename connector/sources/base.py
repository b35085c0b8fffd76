"""The Source extension point: where documents come from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

from connector.records import Document, FailedDocument, UnchangedFile


class Source(ABC):
    """Reads the documents of one collection, one at a time.

    `read()` yields every item of the source once, as a stream (never a list of the whole corpus),
    in a deterministic order:

    - a `Document` with a `doc_id` that stays the same across runs for the same item, so the sync
      can tell new, changed and deleted documents apart;
    - a `FailedDocument` for an item that exists but cannot be read (bad encoding, unreadable file,
      malformed record), with a one-line `reason` that says what is wrong. The sync records it and
      goes on; it must not count that item as deleted.

    A source that cannot be read at all (its folder is missing, a sub-folder cannot be listed)
    raises `SourceError` instead of yielding nothing: the sync must never mistake an unreachable
    source for one whose documents were all deleted. `doc_id`s are unique within one `read()`.

    Plugin contract (entry-point group `connector.sources`, e.g. in a plugin's pyproject.toml:
    `[project.entry-points."connector.sources"] static = "my_pkg:StaticSource"`): the entry point's
    name is the config's `source.type`, its value a subclass, built as `cls(config)`. A built-in
    type gets its strict model (`files`: `FilesSourceConfig`); a plugin's type gets a
    `connector.config.PluginConfig`: `config.type`, `config.options` (every other field, as
    written) and `config.base_dir` (the config file's folder, for relative paths). Raise
    `ConfigError` from `__init__` for bad options; nothing should be read before `read()`.
    """

    @abstractmethod
    def read(self) -> Iterator[Document | FailedDocument | UnchangedFile]:
        """Yield every document of the source (see the class docstring)."""

    def skip_unchanged(self, stamps: dict[str, str]) -> None:
        """Called by the sync before it takes the first item of `read()`: per origin (a file), the
        `Document.stamp` its documents had when the last finished sync read them all without a
        failure. A source that stamps its documents may then yield `UnchangedFile(origin)` for a
        file whose stamp is still the same, without reading it: the sync counts every document it
        has from that origin as seen and unchanged (none is pruned). The stamp must change whenever
        the file's content, or a setting that decides how it is read, may have changed.
        Default: ignored, every item is read."""

    def renamed_doc_ids(self, known: dict[str, str | None]) -> dict[str, str]:
        """Documents the ledger knows under a doc_id this source no longer gives them (the source
        changed how it names its documents): {old doc_id: new doc_id}. `known` maps each doc_id in
        the ledger to its origin (the file it came from, or None). Called by the sync after `read()`
        and before the first item is taken; the sync moves those documents to their new ids and
        rewrites their points from the embedding cache (no encoding) under the new ids, deleting
        the old points. Default: nothing was renamed."""
        return {}
