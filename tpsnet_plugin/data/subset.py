"""A seeded random subset of one domain, keeping the domain-dataset contract."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError


class DomainSubset(Dataset):
    """At most ``size`` images of a domain dataset, drawn at random with ``seed``.

    Keeps the contract of the domain datasets (items ``(image, label, index)``, ``labels``,
    ``classes``, ``domain``), so it can stand in for a domain inside ``MultiDomainDataset``; used
    for quick CPU recipes and tests (``data.subset_per_domain``).

    Args:
        dataset: A domain dataset (``DigitsDomain``, ``DomainImageFolder``).
        size: Number of images to keep; the whole domain when it has fewer.
        seed: Seed of the draw.
    """

    def __init__(self, dataset: Dataset, size: int, seed: int = 0) -> None:
        if size < 1:
            raise DataError(f"subset size must be at least 1, got {size}")
        self.dataset = dataset
        order = np.random.default_rng(seed).permutation(len(dataset))
        self.indices = np.sort(order[:size])
        self.labels = np.asarray(dataset.labels, dtype=np.int64)[self.indices]
        self.classes = dataset.classes
        self.domain = getattr(dataset, "domain", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label, _ = self.dataset[int(self.indices[index])]
        return image, label, index
