"""Choice of the k-means backend."""

from __future__ import annotations

import warnings

from .base_kmeans import BaseKMeans
from .faiss_kmeans import FaissKMeans
from .sklearn_kmeans import SklearnKMeans

KMEANS_BACKENDS = ("auto", "faiss", "sklearn")


def faiss_available() -> bool:
    """Whether faiss can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu_available() -> bool:
    """Whether faiss imports and sees at least one GPU (faiss-gpu on a CUDA machine)."""
    if not faiss_available():
        return False
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def create_kmeans(
    name: str,
    num_clusters: int,
    niter: int = 20,
    nredo: int = 5,
    seed: int = 0,
    spherical: bool = True,
    use_gpu: bool = False,
) -> BaseKMeans:
    """Build a k-means backend by name.

    Args:
        name: ``"faiss"``, ``"sklearn"`` or ``"auto"`` (faiss when it imports, else scikit-learn
            with a warning).
        num_clusters: C, the number of clusters.
        niter: Iterations per run.
        nredo: Runs from random initialisations, the best is kept.
        seed: Random seed.
        spherical: Spherical k-means (unit-norm centroids, assignment by inner product).
        use_gpu: Run faiss on all visible GPUs (needs faiss-gpu).

    Returns:
        A :class:`FaissKMeans` or a :class:`SklearnKMeans`.
    """
    if name not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans must be one of {KMEANS_BACKENDS} or a k-means object, got {name!r}")
    if name == "auto":
        if faiss_available():
            name = "faiss"
        else:
            warnings.warn(
                "faiss is not installed: k-means falls back to scikit-learn KMeans, which is much "
                "slower. Install faiss-cpu or faiss-gpu for the fast path.",
                stacklevel=2,
            )
            name = "sklearn"
    kwargs = dict(niter=niter, nredo=nredo, seed=seed, spherical=spherical)
    if name == "faiss":
        return FaissKMeans(num_clusters, use_gpu=use_gpu, **kwargs)
    if use_gpu:
        warnings.warn("use_gpu=True needs faiss-gpu: scikit-learn k-means runs on CPU", stacklevel=2)
    return SklearnKMeans(num_clusters, **kwargs)
