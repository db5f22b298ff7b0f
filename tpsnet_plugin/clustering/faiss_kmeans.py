"""k-means with faiss."""

from __future__ import annotations

import warnings

import numpy as np

from .base_kmeans import BaseKMeans


class FaissKMeans(BaseKMeans):
    """faiss k-means (``faiss.Kmeans``), on the CPU or on all visible GPUs.

    Args:
        num_clusters: C, the number of clusters.
        niter: Iterations per run.
        nredo: Runs from random initialisations, the best is kept.
        seed: Random seed.
        spherical: Normalise the centroids at each iteration and assign by inner product.
        use_gpu: Run on all visible GPUs (needs faiss-gpu; warns and runs on the CPU otherwise).

    Raises:
        ImportError: faiss is not installed.
    """

    def __init__(
        self,
        num_clusters: int,
        niter: int = 20,
        nredo: int = 5,
        seed: int = 0,
        spherical: bool = True,
        use_gpu: bool = False,
    ):
        import faiss

        super().__init__(num_clusters, niter=niter, nredo=nredo, seed=seed, spherical=spherical)
        self.use_gpu = bool(use_gpu)
        if self.use_gpu and faiss.get_num_gpus() == 0:
            warnings.warn(
                "use_gpu=True but faiss sees no GPU (needs faiss-gpu): clustering on CPU", stacklevel=2
            )

    def fit(self, x: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        if init is not None:
            init = np.ascontiguousarray(init, dtype=np.float32)
        # min_points_per_centroid=1 only silences faiss's "please provide at least 39*C points"
        # message, printed at every re-clustering of small domains.
        kmeans = faiss.Kmeans(
            x.shape[1], self.num_clusters, niter=self.niter, nredo=self._runs(init), seed=self.seed,
            spherical=self.spherical, gpu=self.use_gpu, min_points_per_centroid=1,
        )
        kmeans.train(x, init_centroids=init)
        return kmeans.centroids.astype(np.float32)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", use_gpu={self.use_gpu})"
