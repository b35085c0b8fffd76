"""Documents whose write waits for a store that is down (see connector.steps.write)."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Iterator

from connector.steps.plan import DocPlan


class DeferredPlans:
    """Documents whose write waits for the store to come back, spilled to a temporary file in the
    state dir (deleted on close), so that a long outage holds no texts in memory. Their vectors
    are in the embedding cache."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._file = None
        self.count = 0

    def add(self, plan: DocPlan) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.folder, prefix="deferred-")
        pickle.dump(plan, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def take(self) -> Iterator[DocPlan]:
        """Every plan added so far, oldest first; plans added meanwhile wait for the next take()."""
        spill, self._file, self.count = self._file, None, 0
        if spill is None:
            return
        with spill:
            spill.seek(0)
            while True:
                try:
                    yield pickle.load(spill)
                except EOFError:
                    return

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return self.count
