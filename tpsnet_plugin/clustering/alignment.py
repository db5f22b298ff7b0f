"""Alignment of per-domain cluster ids: cluster ``c`` means the same cluster in every domain."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from scipy.optimize import linear_sum_assignment

from ._utils import l2_normalize

ALIGNMENTS = ("consensus", "reference")


def match_centroids(raw: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of ``raw`` centroids to ``target`` ids, maximising the summed cosine.

    Args:
        raw: Centroids (C, e) to relabel.
        target: Centroids (C, e) whose ids ``raw`` takes.

    Returns:
        ``(perm, cosines)``: int64 ``perm`` with ``perm[raw_id] = target_id``, and the cosine of
        each matched pair, indexed by raw id.
    """
    cos = l2_normalize(target) @ l2_normalize(raw).T  # (target id, raw id)
    target_ids, raw_ids = linear_sum_assignment(cos, maximize=True)
    perm = np.empty(len(raw), dtype=np.int64)
    perm[raw_ids] = target_ids
    return perm, cos[perm, np.arange(len(raw))]


def aligned_centroids(raw: list[np.ndarray], matching: list[np.ndarray]) -> np.ndarray:
    """Normalised centroids (D, C, e) in aligned-id order."""
    return np.stack([l2_normalize(r)[np.argsort(perm)] for r, perm in zip(raw, matching)])


class BaseAlignment(ABC):
    """Maps each domain's k-means ids to shared ids; subclasses implement :meth:`align`."""

    @abstractmethod
    def align(
        self, raw: list[np.ndarray], previous: np.ndarray | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Align the ids of the per-domain centroids ``raw``.

        Args:
            raw: Per domain, the (C, e) k-means centroids in k-means id order.
            previous: Optional (D, C, e) centroids of the previous aligned clusters (a warm
                start): the ids should keep their meaning.

        Returns:
            ``(matching, cosines)``: per domain, the int64 permutation ``perm`` with
            ``perm[raw_id] = aligned_id``; and the cosines of the matched centroids whose mean
            measures the agreement (an empty list when nothing was matched, e.g. one domain).
        """

    def __call__(self, raw, previous=None):
        return self.align(raw, previous)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReferenceAlignment(BaseAlignment):
    """Match every domain d >= 1 to domain 0 (Hungarian, maximum summed cosine).

    Domain 0 keeps its k-means ids, or after a warm start is matched to its previous centroids.
    ``cosines`` are those of domains d >= 1 with domain 0.
    """

    def align(self, raw, previous=None):
        first = np.arange(len(raw[0])) if previous is None else match_centroids(raw[0], previous[0])[0]
        return self.match_to_first(raw, first)

    @staticmethod
    def match_to_first(
        raw: list[np.ndarray], first: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Match every domain d >= 1 to domain 0, whose ids are given by ``first``."""
        reference = raw[0][np.argsort(first)]  # domain 0's centroids in aligned-id order
        pairs = [match_centroids(r, reference) for r in raw[1:]]
        return [first] + [perm for perm, _ in pairs], [cos for _, cos in pairs]


class ConsensusAlignment(BaseAlignment):
    """Re-match every domain to the mean of the other domains until no matching changes.

    Starts from :class:`ReferenceAlignment` (cold) or from each domain matched to its own
    previous centroids (warm). Each round matches every domain's centroids to the normalised
    mean of the other domains' aligned centroids, so one domain with poor clusters cannot
    mis-align the others. After a warm start all domains are then relabelled together so that
    the ids best keep their previous meaning. With two domains the partition is that of
    :class:`ReferenceAlignment`. ``cosines`` are those of each domain with the mean of the others.

    Args:
        max_rounds: Stop after this many rounds even if a matching still changes.
    """

    def __init__(self, max_rounds: int = 10):
        if int(max_rounds) < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.max_rounds = int(max_rounds)

    def align(self, raw, previous=None):
        if previous is None:
            matching, cosines = ReferenceAlignment.match_to_first(raw, np.arange(len(raw[0])))
        else:
            # every domain keeps the ids of its own previous clusters; the consensus fixes the rest
            matching = [match_centroids(r, p)[0] for r, p in zip(raw, previous)]
            cosines = []
        if len(raw) < 2:
            return matching, cosines
        matching, cosines = self.refine(raw, matching)
        if previous is not None:
            # The consensus may have moved a domain that kept its ids onto the others' ids;
            # relabel all domains together so that the ids best keep their previous meaning.
            similarity = np.einsum(
                "dpe,dne->pn", l2_normalize(previous), aligned_centroids(raw, matching)
            )
            previous_ids, new_ids = linear_sum_assignment(similarity, maximize=True)
            relabel = np.empty(len(new_ids), dtype=np.int64)
            relabel[new_ids] = previous_ids
            matching = [relabel[perm] for perm in matching]
        return matching, cosines

    def refine(
        self, raw: list[np.ndarray], matching: list[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rounds of re-matching each domain to the others' mean, from the permutations ``matching``."""
        matching = [perm.copy() for perm in matching]
        aligned = aligned_centroids(raw, matching)
        cosines = [np.ones(len(raw[0]), dtype=np.float32)] * len(raw)
        for _ in range(self.max_rounds):
            changed = False
            for d in range(len(raw)):
                others = l2_normalize(np.delete(aligned, d, axis=0).mean(axis=0))
                perm, cosines[d] = match_centroids(raw[d], others)
                if not np.array_equal(perm, matching[d]):
                    changed = True
                    matching[d] = perm
                    aligned[d] = l2_normalize(raw[d])[np.argsort(perm)]
            if not changed:
                break
        return matching, cosines

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_rounds={self.max_rounds})"


def create_alignment(name: str) -> BaseAlignment:
    """``"consensus"`` -> :class:`ConsensusAlignment`, ``"reference"`` -> :class:`ReferenceAlignment`."""
    if name == "consensus":
        return ConsensusAlignment()
    if name == "reference":
        return ReferenceAlignment()
    raise ValueError(f"alignment must be 'consensus' or 'reference', got {name!r}")
