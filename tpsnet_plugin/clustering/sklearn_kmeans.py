"""k-means with scikit-learn."""

from __future__ import annotations

import numpy as np

from ._utils import l2_normalize
from .base_kmeans import BaseKMeans


class SklearnKMeans(BaseKMeans):
    """scikit-learn ``KMeans`` (k-means++ initialisation), the fallback when faiss is missing.

    scikit-learn runs Euclidean k-means; with ``spherical`` the final centroids are normalised,
    and samples are assigned by inner product, as with faiss.

    Args:
        num_clusters: C, the number of clusters.
        niter: Iterations per run (``max_iter``).
        nredo: Runs from random initialisations, the best is kept (``n_init``).
        seed: Random seed (``random_state``).
        spherical: Return unit-norm centroids.
    """

    def fit(self, x: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        from sklearn.cluster import KMeans

        kmeans = KMeans(
            self.num_clusters, init="k-means++" if init is None else init, n_init=self._runs(init),
            max_iter=self.niter, random_state=self.seed,
        ).fit(x)
        centroids = kmeans.cluster_centers_.astype(np.float32)
        return l2_normalize(centroids) if self.spherical else centroids
