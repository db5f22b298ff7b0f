"""Batch sampler with m samples per pseudo-label cluster, balanced over domains, sharded by rank."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from ..utils.arrays import as_int_array


class PseudoLabelSampler(Sampler[list[int]]):
    """Yield batches of ``batch_size // m`` clusters × ``m`` samples; use as ``batch_sampler=``.

    pml's ``MPerClassSampler`` fixes its labels at construction and is not distributed; this
    sampler follows the pseudo-labels through :meth:`set_labels` after every re-clustering.

    An epoch, deterministic given ``(seed, epoch)``:

    - each cluster's members are ordered so that every domain's members (shuffled) are spread
      evenly along the sequence: with equal domain counts the domains alternate exactly, else
      they mix in proportion to the cluster's members. The sequence is cut into groups of ``m``;
      the last group is completed by wrapping to the start of the sequence, so every sample
      appears at least once, and a cluster with fewer than ``m`` members repeats them;
    - a batch takes one group from each of ``batch_size // m`` different clusters, drawn with
      probability proportional to their groups left (so clusters run out together). When fewer
      clusters have groups left than a batch needs (or there are fewer clusters), a batch holds
      several groups of the same cluster; the last batch is completed with re-drawn groups of
      random clusters (preferring clusters not yet in it).

    With several processes the global list of batches is split across ranks without overlap
    (rank ``r`` takes batches ``r, r + R, ...``); like ``DistributedSampler``, the list is padded
    by repeating its first batches so every rank gets the same number. Every rank must hold the
    same labels (e.g. clustered on gathered features with a fixed seed, or broadcast).

    Args:
        labels: Cluster id per dataset index (aligned ids shared by the domains, not combined
            labels); every distinct value is a cluster.
        domains: Domain id per dataset index.
        batch_size: Samples per batch and per process; a multiple of ``m``.
        m: Samples per cluster group in a batch.
        seed: Base seed; each epoch uses ``(seed, epoch)``.
        num_replicas: Number of processes; ``None`` = the ``torch.distributed`` world size if it
            is initialised, else 1.
        rank: This process's rank; ``None`` = the ``torch.distributed`` rank, else 0.
    """

    def __init__(
        self,
        labels,
        domains,
        batch_size: int = 64,
        m: int = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if m < 1 or batch_size < m or batch_size % m != 0:
            raise ValueError(
                f"batch_size must be a positive multiple of m, got batch_size={batch_size}, m={m}"
            )
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, "
                             f"num_replicas={num_replicas}")
        self.batch_size = int(batch_size)
        self.m = int(m)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.domains = None
        self.set_labels(labels, domains)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next iteration (call before each epoch, as for
        ``DistributedSampler``).

        Args:
            epoch: Epoch number.
        """
        self.epoch = int(epoch)

    def set_labels(self, labels, domains=None) -> None:
        """Replace the pseudo-labels (after a re-clustering); the next iteration uses them.

        Args:
            labels: New cluster id per dataset index.
            domains: New domain id per dataset index; ``None`` keeps the current ones.
        """
        labels = as_int_array(labels, "labels")
        if domains is None and self.domains is None:
            raise ValueError("domains are required the first time labels are set")
        domains = self.domains if domains is None else as_int_array(domains, "domains")
        if len(labels) == 0 or domains.shape != labels.shape:
            raise ValueError(f"labels and domains must be non-empty and of equal length, got "
                             f"{len(labels)} and {len(domains)}")
        self.labels, self.domains = labels, domains
        _, cluster_sizes = np.unique(labels, return_counts=True)
        num_groups = int(np.ceil(cluster_sizes / self.m).sum())
        self._num_batches = math.ceil(num_groups / (self.batch_size // self.m))

    def __len__(self) -> int:
        return math.ceil(self._num_batches / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()
        total = len(self) * self.num_replicas
        padded = [batches[i % len(batches)] for i in range(total)]
        yield from padded[self.rank : total : self.num_replicas]

    def _global_batches(self) -> list[list[int]]:
        """All batches of the epoch, identical on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        clusters = np.unique(self.labels)
        sequences = [self._spread_domains(np.flatnonzero(self.labels == k), rng) for k in clusters]
        groups_left = np.array([math.ceil(len(s) / self.m) for s in sequences])
        next_group = np.zeros(len(clusters), dtype=np.int64)
        per_batch = self.batch_size // self.m
        batches = []
        for _ in range(self._num_batches):
            batch = []
            while len(batch) < per_batch and groups_left.sum() > 0:
                available = np.flatnonzero(groups_left > 0)
                take = min(per_batch - len(batch), len(available))
                prob = groups_left[available] / groups_left[available].sum()
                for k in rng.choice(available, size=take, replace=False, p=prob):
                    start = next_group[k] * self.m
                    batch.append((k, start))
                    next_group[k] += 1
                    groups_left[k] -= 1
            while len(batch) < per_batch:  # only the last batch: re-draw groups
                absent = np.setdiff1d(np.arange(len(clusters)), [k for k, _ in batch])
                pool = absent if len(absent) else np.arange(len(clusters))
                take = min(per_batch - len(batch), len(pool))
                for k in rng.choice(pool, size=take, replace=False):
                    batch.append((k, int(rng.integers(len(sequences[k])))))
            batches.append([
                int(i) for k, start in batch
                for i in np.take(sequences[k], np.arange(start, start + self.m), mode="wrap")
            ])
        return batches

    def _spread_domains(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Order one cluster's members so each domain is spread evenly along the sequence.

        Member ``i`` of a domain with ``n_d`` members (shuffled) gets the position key
        ``(i + u_d) / n_d`` with a random phase ``u_d``; sorting by key interleaves the domains.
        """
        members = rng.permutation(members)
        keys = np.empty(len(members))
        member_domains = self.domains[members]
        for d in np.unique(member_domains):
            idx = np.flatnonzero(member_domains == d)
            keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
        return members[np.argsort(keys, kind="stable")]
