"""Legacy dimensions: PCA from the model's dense size down to k (768 by default).

Fitted with numpy on a sample of dense vectors (mean-centred; components from the eigen-
decomposition of the sample covariance); applied as x @ components.T and then L2-renormalised.
The mean is NOT subtracted when applying: bge-m3-like embeddings share a large common direction,
and cosine on centred vectors ranks neighbours differently from cosine on the raw ones (measured
in benchmarks/RESULTS.md: at 75% of the dimensions, recall@10 against the full vectors is 0.98
uncentred against 0.84 centred). The mean stays in the artifact for reference. The fitted
projection is an artifact in the state dir; its sha256 is recorded with every collection that
holds legacy vectors, so a query is never projected with another matrix than its documents.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connector.errors import ConfigError, ConnectorError
from connector.statedir import open_private, private_dir

ARTIFACT = "projection.npz"


class ProjectionError(ConnectorError):
    """A projection is missing, does not fit the data, or does not match a collection."""

    exit_code = 2


@dataclass
class Projection:
    mean: np.ndarray  # (d,) float32
    components: np.ndarray  # (k, d) float32, orthonormal rows
    source_fingerprint: str  # what produced the vectors it was fitted on (the model's identity)
    sample_size: int
    explained_variance: float  # fraction of the sample's variance the k components keep
    fitted_from: str | None = None  # where the sample came from: "store" or "source"

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def source_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.k}x{self.source_dim}:apply=uncentred:".encode())
        digest.update(np.ascontiguousarray(self.mean, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.components, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project (n, d) or (d,) vectors to k dimensions, L2-normalised, float32."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.shape[-1] != self.source_dim:
            raise ProjectionError(
                f"the projection takes {self.source_dim}-d vectors, got {x.shape[-1]}-d ones: it was fitted for "
                "another model; fit it again with `connector projection fit`"
            )
        y = x @ self.components.T
        norms = np.linalg.norm(y, axis=-1, keepdims=True)
        return (y / np.where(norms == 0, 1, norms)).astype(np.float32)

    def describe(self) -> dict:
        return {"k": self.k, "source_dim": self.source_dim, "explained_variance": self.explained_variance,
                "sample_size": self.sample_size, "fitted_from": self.fitted_from,
                "source_fingerprint": self.source_fingerprint, "sha256": self.sha256}

    def save(self, state_dir: Path) -> Path:
        """Write the artifact atomically (a crash never leaves half a matrix)."""
        path = private_dir(state_dir) / ARTIFACT
        tmp = path.with_suffix(".tmp.npz")
        meta = json.dumps({k: v for k, v in self.describe().items() if k not in ("k", "source_dim")})
        with open_private(tmp) as f:
            np.savez(f, mean=self.mean, components=self.components, meta=np.array(meta))
        os.replace(tmp, path)
        return path


def fit(vectors: np.ndarray, k: int, source_fingerprint: str) -> Projection:
    """PCA of (n, d) vectors down to k dimensions."""
    x = np.asarray(vectors, dtype=np.float64)
    n, d = x.shape
    if k > d:
        raise ConfigError(f"projection.dim ({k}) must be smaller than the vectors' size ({d})")
    if n < k:
        raise ProjectionError(
            f"only {n} sample vectors for a {k}-d projection: PCA needs at least k samples; sync more "
            "documents first, or fit from the source with a larger projection.sample"
        )
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / max(n - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1][:k]
    components = eigenvectors[:, order].T
    # A fixed sign per component, so that refitting the same sample gives the same matrix.
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1, signs)[:, None]
    total = float(np.clip(eigenvalues, 0, None).sum())
    kept = float(np.clip(eigenvalues[order], 0, None).sum())
    return Projection(mean.astype(np.float32), components.astype(np.float32), source_fingerprint, n,
                      kept / total if total else 1.0)


def load(state_dir: Path) -> Projection:
    path = Path(state_dir) / ARTIFACT
    if not path.is_file():
        raise ProjectionError(
            f"no fitted projection in {state_dir}: run `connector projection fit -c CONFIG` first "
            "(it fits on a sample of the store's vectors, or of the source with --from source)"
        )
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        projection = Projection(data["mean"], data["components"], meta["source_fingerprint"], meta["sample_size"],
                                meta["explained_variance"], meta.get("fitted_from"))
    if projection.sha256 != meta["sha256"]:
        raise ProjectionError(f"{path} is damaged (its content does not match its sha256); fit it again")
    return projection


def random_projection(d: int, k: int, seed: int = 0) -> np.ndarray:
    """A (k, d) Gaussian random projection with orthonormal rows (a baseline for benchmarks)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))
    return q.T.astype(np.float32)
