"""The training data as the stages draw it: loaders and augmented views, never a true label."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import MultiDomainDataset
from .augment import BatchAugment
from .data import images_as_float, unlabelled_view


class TrainingBatches:
    """The images a stage trains on: ``(image, domain, index)`` items, shuffled or sampled, and two views of a batch.

    Args:
        dataset: The run's dataset (its true labels are not exposed).
        images: Every image decoded once (N×3×S×S uint8, ``data.cache_in_memory``), or None.
        domains: Domain id per image (N).
        num_clusters: C, the clusters per domain.
        augment: The augmentation of the two views.
        accelerator: The run's accelerator (sharding, device).
        num_workers: DataLoader workers.
        seed: The run's seed (``seed``).
        memory_format: The images' memory format (``model.channels_last``).
    """

    def __init__(self, dataset: MultiDomainDataset, images: torch.Tensor | None, domains: torch.Tensor,
                 num_clusters: int, augment: BatchAugment, accelerator: Accelerator, num_workers: int, seed: int,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.dataset: Dataset = unlabelled_view(dataset, images, domains)
        self.domains, self.num_clusters, self.augment = domains, int(num_clusters), augment
        self.accelerator, self.num_workers, self.seed = accelerator, int(num_workers), int(seed)
        self.memory_format = memory_format

    def __len__(self) -> int:
        return len(self.dataset)

    def shuffled_loader(self, batch_size: int, epoch: int) -> DataLoader:
        """A shuffled, sharded loader of full batches (the warm-up); each epoch draws its own order."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                            num_workers=self.num_workers, generator=generator)
        return self.accelerator.prepare_data_loader(loader)

    def sampled_loader(self, batch_sampler: Sampler[Iterable[int]]) -> DataLoader:
        """A loader of the batches ``batch_sampler`` draws; it shards by rank itself (no ``accelerator.prepare``)."""
        return DataLoader(self.dataset, batch_sampler=batch_sampler, num_workers=self.num_workers)

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of a batch, on the run's device."""
        images = images_as_float(images).to(self.accelerator.device)
        return tuple(self.augment(images).contiguous(memory_format=self.memory_format) for _ in range(2))
