"""The contract of the k-means backends, and nearest-centroid assignment."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def assign(x: np.ndarray, centroids: np.ndarray, spherical: bool = True) -> np.ndarray:
    """Index of the nearest centroid of every row of ``x``.

    Args:
        x: Samples, array of shape (N, e).
        centroids: Centroids, array of shape (C, e).
        spherical: Nearest by inner product (cosine for unit vectors); else by L2 distance.

    Returns:
        int64 array of shape (N,).
    """
    if spherical:
        return np.argmax(x @ centroids.T, axis=1).astype(np.int64)
    sq_dist = (centroids**2).sum(axis=1)[None] - 2 * x @ centroids.T
    return np.argmin(sq_dist, axis=1).astype(np.int64)


class BaseKMeans(ABC):
    """k-means with a fixed number of clusters; subclasses implement :meth:`fit`.

    Args:
        num_clusters: C, the number of clusters.
        niter: Iterations per run.
        nredo: Runs from random initialisations, the best is kept; a run from given
            centroids is done once.
        seed: Random seed.
        spherical: Unit-norm centroids and assignment by inner product (for L2-normalised
            rows); else Euclidean k-means.
    """

    def __init__(
        self, num_clusters: int, niter: int = 20, nredo: int = 5, seed: int = 0, spherical: bool = True
    ):
        for name, value in (("num_clusters", num_clusters), ("niter", niter), ("nredo", nredo)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_clusters = int(num_clusters)
        self.niter = int(niter)
        self.nredo = int(nredo)
        self.seed = int(seed)
        self.spherical = bool(spherical)

    @abstractmethod
    def fit(self, x: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        """Cluster ``x``.

        Args:
            x: float32 array of shape (N, e), N >= ``num_clusters``.
            init: Optional initial centroids (C, e); then k-means runs once.

        Returns:
            The centroids, float32 array of shape (C, e).
        """

    def assign(self, x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """Nearest centroid of every row of ``x``, with this backend's metric (see :func:`assign`)."""
        return assign(x, centroids, spherical=self.spherical)

    def _runs(self, init: np.ndarray | None) -> int:
        # restarts from the same given centroids would all be identical
        return 1 if init is not None else self.nredo

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_clusters={self.num_clusters}, niter={self.niter}, "
            f"nredo={self.nredo}, seed={self.seed}, spherical={self.spherical})"
        )
