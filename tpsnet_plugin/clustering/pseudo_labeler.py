"""Per-domain k-means pseudo-labels with cluster ids aligned across domains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.pseudo_label_metrics import pseudo_label_scores
from ..utils.arrays import to_numpy
from ._utils import l2_normalize
from .alignment import BaseAlignment, create_alignment
from .base_kmeans import assign
from .centroids import cluster_centroids
from .kmeans import create_kmeans


@dataclass
class ClusterResult:
    """Outcome of :meth:`ClusterPseudoLabeler.fit`.

    Attributes:
        labels: Aligned cluster id per sample, int64 array of shape (N,): id ``c`` means the
            same cluster in every domain.
        centroids: Aligned centroids, float32 array of shape (D, C, e), in the space that was
            clustered (L2-normalised, per-domain mean-centred if ``center_per_domain``).
        matching: Per domain, the int64 permutation ``perm`` with ``perm[raw_id] = aligned_id``
            from the k-means output ids to the aligned ids.
        matching_cost: ``1 - mean cosine`` of the matched centroids: each domain's with the mean
            of the other domains' (consensus alignment), or each domain d >= 1's with domain
            0's (reference alignment); 0 = identical centroids, lower is better; 0.0 for one
            domain.
        ids_changed: How many samples changed label since the previous fit; ``None`` on the
            first fit or when the number of samples changed.
        cluster_sizes: Samples per (domain, cluster), int64 array of shape (D, C).
        nmi: NMI between the aligned labels and the true labels over all domains (cross-domain
            consistency included); only with ``true_labels``, for diagnosis.
        ari: Adjusted Rand index, as ``nmi``.
        nmi_per_domain: NMI within each domain; only with ``true_labels``.
        ari_per_domain: ARI within each domain; only with ``true_labels``.
    """

    labels: np.ndarray
    centroids: np.ndarray
    matching: list[np.ndarray]
    matching_cost: float
    ids_changed: int | None
    cluster_sizes: np.ndarray
    nmi: float | None = None
    ari: float | None = None
    nmi_per_domain: list[float] | None = None
    ari_per_domain: list[float] | None = None


class ClusterPseudoLabeler:
    """Cluster each domain with k-means and align the cluster ids across domains.

    Steps of :meth:`fit`: L2-normalise the features; optionally subtract each domain's mean and
    normalise again (removes the domain offset); k-means with ``num_clusters`` clusters in every
    domain; then align the ids (``alignment``), so that cluster ``c`` means the same in all
    domains.

    Initialisation, in order of precedence:

    - warm start (``warm_start`` and a previous fit or loaded state): every domain starts from
      the centroids of the previous labels recomputed in the current features (the stored
      aligned centroids when the samples differ or a cluster is empty), and the alignment keeps
      the previous ids, so ids stay stable across re-clusterings even after training has moved
      the feature space;
    - anchored (``anchor`` not ``None``): the anchor domain is clustered first (``nredo``
      restarts) and every other domain starts from its centroids;
    - otherwise every domain is clustered independently.

    Args:
        num_clusters: C, clusters per domain (the number of categories).
        niter: k-means iterations (only when ``kmeans`` is a name).
        nredo: k-means restarts of a clustering without initial centroids, the best is kept
            (only when ``kmeans`` is a name).
        seed: Random seed of k-means (only when ``kmeans`` is a name).
        spherical: Spherical k-means: unit centroids, assignment by inner product (only when
            ``kmeans`` is a name; an object's own ``spherical`` is used otherwise).
        center_per_domain: Subtract each domain's mean feature before clustering.
        anchor: ``"smallest"`` (the domain with the fewest images, usually the cleaner one), a
            domain index, or ``None`` for independent clustering. Unused when warm-starting.
        warm_start: Initialise every fit after the first from the previous aligned clusters.
        alignment: ``"consensus"`` (:class:`ConsensusAlignment`), ``"reference"``
            (:class:`ReferenceAlignment`) or an alignment object.
        use_gpu: Run faiss k-means on all visible GPUs (needs faiss-gpu; only when ``kmeans``
            is a name).
        kmeans: ``"auto"``, ``"faiss"``, ``"sklearn"`` (see :func:`create_kmeans`) or a k-means
            object (e.g. :class:`FaissKMeans`) with ``num_clusters`` clusters.
    """

    def __init__(
        self,
        num_clusters: int,
        niter: int = 20,
        nredo: int = 5,
        seed: int = 0,
        spherical: bool = True,
        center_per_domain: bool = True,
        anchor: str | int | None = "smallest",
        warm_start: bool = True,
        alignment: str | BaseAlignment = "consensus",
        use_gpu: bool = False,
        kmeans="auto",
    ):
        if int(num_clusters) < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        if not (anchor is None or anchor == "smallest" or (
            isinstance(anchor, int) and not isinstance(anchor, bool) and anchor >= 0
        )):
            raise ValueError(f"anchor must be 'smallest', a domain index or None, got {anchor!r}")
        self.num_clusters = int(num_clusters)
        if isinstance(alignment, str):
            alignment = create_alignment(alignment)
        elif not callable(getattr(alignment, "align", None)):
            raise TypeError(f"alignment must be a name or an object with align(), got {alignment!r}")
        if isinstance(kmeans, str):
            kmeans = create_kmeans(
                kmeans, self.num_clusters, niter=niter, nredo=nredo, seed=seed,
                spherical=spherical, use_gpu=use_gpu,
            )
        elif not callable(getattr(kmeans, "fit", None)):
            raise TypeError(f"kmeans must be a name or an object with fit(), got {kmeans!r}")
        elif getattr(kmeans, "num_clusters", self.num_clusters) != self.num_clusters:
            raise ValueError(
                f"kmeans has num_clusters={kmeans.num_clusters}, the labeler {self.num_clusters}"
            )
        self.kmeans = kmeans
        self.alignment = alignment
        self.center_per_domain = bool(center_per_domain)
        self.anchor = anchor
        self.warm_start = bool(warm_start)
        self._centroids: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    @property
    def use_faiss(self) -> bool:
        """Whether k-means runs with faiss."""
        from .faiss_kmeans import FaissKMeans

        return isinstance(self.kmeans, FaissKMeans)

    @property
    def spherical(self) -> bool:
        """Whether samples are assigned to centroids by inner product (else by L2 distance)."""
        return bool(getattr(self.kmeans, "spherical", True))

    def fit(self, features, domains, true_labels=None) -> ClusterResult:
        """Cluster ``features`` per domain and return aligned pseudo-labels.

        Args:
            features: Tensor or array of shape (N, e) (e.g. embeddings of the training images).
            domains: Domain id per sample, N ints in [0, D); every domain needs at least
                ``num_clusters`` samples.
            true_labels: Optional class per sample, only to compute NMI/ARI for diagnosis.

        Returns:
            A :class:`ClusterResult`; its aligned centroids are kept for the next warm start.
        """
        x = to_numpy(features, np.float32)
        domains = to_numpy(domains, np.int64)
        if x.ndim != 2 or domains.shape != (len(x),):
            raise ValueError(
                f"features must be (N, e) and domains (N,), got {x.shape} and {domains.shape}"
            )
        if len(x) == 0 or domains.min() < 0:
            raise ValueError("features must be non-empty and domain ids non-negative")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf values")
        if true_labels is not None:
            true_labels = to_numpy(true_labels, np.int64)
            if true_labels.shape != domains.shape:
                raise ValueError(
                    f"true_labels must have shape {domains.shape}, got {true_labels.shape}"
                )
        counts = np.bincount(domains)
        for d, count in enumerate(counts):
            if count < self.num_clusters:
                raise ValueError(
                    f"domain {d} has {count} images, fewer than num_clusters={self.num_clusters}; "
                    "lower num_clusters or add images (domain ids must be 0..D-1)"
                )
        num_domains = len(counts)
        members = [np.flatnonzero(domains == d) for d in range(num_domains)]

        x = l2_normalize(x)
        if self.center_per_domain:
            for idx in members:
                x[idx] -= x[idx].mean(axis=0)
            x = l2_normalize(x)

        previous = self._warm_start_centroids(x, members) if self.warm_start else None
        raw = self._cluster_domains([x[idx] for idx in members], counts, previous)
        matching, cosines = self.alignment.align(raw, previous)
        centroids = np.empty((num_domains, self.num_clusters, x.shape[1]), dtype=np.float32)
        for d in range(num_domains):
            centroids[d, matching[d]] = raw[d]

        labels = np.empty(len(x), dtype=np.int64)
        for d, idx in enumerate(members):
            labels[idx] = assign(x[idx], centroids[d], spherical=self.spherical)
        ids_changed = None
        if self._labels is not None and len(self._labels) == len(labels):
            ids_changed = int((self._labels != labels).sum())
        self._centroids, self._labels = centroids, labels

        result = ClusterResult(
            labels=labels,
            centroids=centroids,
            matching=matching,
            matching_cost=float(1.0 - np.mean(cosines)) if len(cosines) else 0.0,
            ids_changed=ids_changed,
            cluster_sizes=np.stack(
                [np.bincount(labels[idx], minlength=self.num_clusters) for idx in members]
            ),
        )
        if true_labels is not None:
            # diagnosis only: the true labels never reach training
            for key, value in pseudo_label_scores(labels, true_labels, domains).items():
                setattr(result, key, value)
        return result

    def _warm_start_centroids(self, x: np.ndarray, members: list[np.ndarray]) -> np.ndarray | None:
        """Previous aligned clusters as centroids (D, C, e) in the space of ``x``, or None (cold start)."""
        if self._centroids is None and self._labels is None:
            return None
        shape = (len(members), self.num_clusters, x.shape[1])
        stored = self._centroids if self._centroids is not None and self._centroids.shape == shape else None
        if self._labels is None or len(self._labels) != len(x):
            if stored is None:
                raise ValueError(
                    f"the previous fit has centroids of shape {getattr(self._centroids, 'shape', None)} "
                    f"and no labels for these {len(x)} samples, but these features need {shape}; "
                    "call reset() first"
                )
            return stored
        # Centroids of the previous labels in the current features: training moves the feature
        # space between fits, so the stored centroids can start k-means far from its clusters.
        centroids = np.empty(shape, dtype=np.float32)
        for d, idx in enumerate(members):
            centroids[d] = cluster_centroids(x[idx], self._labels[idx], self.num_clusters)
            empty = np.bincount(self._labels[idx], minlength=self.num_clusters) == 0
            if empty.any():
                if stored is None:
                    raise ValueError(
                        f"cluster(s) {np.flatnonzero(empty).tolist()} of the previous fit are empty in "
                        f"domain {d} and no stored centroids fit these features; call reset() first"
                    )
                centroids[d, empty] = l2_normalize(stored[d, empty])
        return centroids

    def reset(self) -> None:
        """Forget the previous fit: the next :meth:`fit` starts cold (anchored or independent)."""
        self._centroids, self._labels = None, None

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """Previous aligned centroids and labels, as tensors (for ``torch.save`` / Accelerate)."""

        def to_tensor(array):
            return None if array is None else torch.from_numpy(array.copy())

        return {"centroids": to_tensor(self._centroids), "labels": to_tensor(self._labels)}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor | None]) -> None:
        """Restore the state saved by :meth:`state_dict`, so a resumed run warm-starts as before.

        Args:
            state_dict: Mapping with keys ``"centroids"`` ((D, C, e) or ``None``) and ``"labels"``
                ((N,) or ``None``).
        """
        if set(state_dict) != {"centroids", "labels"}:
            raise KeyError(f"expected keys 'centroids' and 'labels', got {sorted(state_dict)}")
        centroids, labels = state_dict["centroids"], state_dict["labels"]
        if centroids is not None:
            centroids = to_numpy(centroids, np.float32)
            if centroids.ndim != 3 or centroids.shape[1] != self.num_clusters:
                raise ValueError(
                    f"centroids must have shape (D, {self.num_clusters}, e), got {centroids.shape}"
                )
        self._centroids = centroids
        self._labels = None if labels is None else to_numpy(labels, np.int64)

    def _cluster_domains(
        self, xs: list[np.ndarray], counts: np.ndarray, previous: np.ndarray | None
    ) -> list[np.ndarray]:
        """Raw (unaligned) centroids per domain, initialised as the class docstring describes."""
        if previous is not None:
            return [self.kmeans.fit(x, init=previous[d]) for d, x in enumerate(xs)]
        anchor = int(np.argmin(counts)) if self.anchor == "smallest" else self.anchor
        if anchor is None:
            return [self.kmeans.fit(x) for x in xs]
        if anchor >= len(xs):
            raise ValueError(f"anchor domain {anchor} does not exist: there are {len(xs)} domains")
        anchor_centroids = self.kmeans.fit(xs[anchor])
        return [
            anchor_centroids if d == anchor else self.kmeans.fit(x, init=anchor_centroids)
            for d, x in enumerate(xs)
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_clusters={self.num_clusters}, kmeans={self.kmeans!r}, "
            f"alignment={self.alignment!r}, center_per_domain={self.center_per_domain}, "
            f"anchor={self.anchor!r}, warm_start={self.warm_start})"
        )
