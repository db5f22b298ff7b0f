"""The training data: the dataset a config describes, its image cache and its label-free views."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..data import DigitsDomain, DomainSubset, MultiDomainDataset, build_folder_domains, default_transform, load_domain
from ..data.digits import warn_shared_instances
from ..data.icons import caption_from_name
from ..errors import ConfigError, DataError
from ..utils.io import file_ends_digest
from .progress import progress


def build_dataset(data_config: Mapping[str, Any], seed: int = 0) -> MultiDomainDataset:
    """Build the multi-domain dataset a config's ``data`` section describes; its ``image_size`` is the
    resolved side of its images (``data.image_size: auto`` resolved)."""
    domains = list(data_config["domains"])
    if len(domains) < 2:
        raise ConfigError(f"UCDIR needs at least two domains, got {domains}. Pass e.g. --domains A B")
    size = 64 if data_config["image_size"] == "auto" else int(data_config["image_size"])
    if data_config["dataset"] == "digits":
        if data_config["image_size"] == "auto":
            size = max(load_domain(d)[0].shape[1] for d in domains)  # the arrays' native size
        warn_shared_instances(domains, stacklevel=3)  # e.g. handwritten-mnist with mnist-m
        dataset = MultiDomainDataset([DigitsDomain(d, image_size=size) for d in domains], domain_names=domains)
    elif data_config["dataset"] == "folder":
        if not data_config["root"]:
            raise ConfigError("data.dataset=folder needs a root folder: pass --data-root DIR")
        dataset = build_folder_domains(
            data_config["root"],
            domains,
            layout=data_config["layout"],
            classes=data_config["classes"],
            class_policy=data_config["class_policy"],
            image_size=size,
            on_error=data_config["on_error"],
            list_files=data_config["list_files"],
        )
    else:
        raise ConfigError(f"Unknown data.dataset {data_config['dataset']!r}: use 'digits' or 'folder'")
    if data_config["dataset"] == "folder" and data_config["image_size"] == "auto":
        size = fitting_image_size(dataset, seed=seed)
        for part in dataset.datasets:
            part.transform = default_transform(size)
    if data_config["subset_per_domain"]:
        parts = [DomainSubset(part, int(data_config["subset_per_domain"]), seed=seed) for part in dataset.datasets]
        dataset = MultiDomainDataset(parts, domain_names=dataset.domain_names)
    if len(set(np.asarray(dataset.labels).tolist())) < 2:
        raise DataError(f"the data holds one class ({dataset.classes[0]!r}): with one class every image is a "
                         "correct match of every query, so retrieval cannot be measured; give two or more classes")
    dataset.image_size = size
    return dataset


def class_names_of(data_config: Mapping[str, Any], classes) -> list[str] | None:
    """The class names a CLIP reads (zero-shot starting point): ``data.class_names``, else the classes.

    Folder names become words, as icon names become captions (``Alarm_Clock`` -> ``alarm clock``).
    None when the only names are the numeric labels of list files without ``data.classes``.

    Raises:
        ValueError: ``data.class_names`` does not give one name per class.
    """
    classes = [str(c) for c in classes]
    given = data_config["class_names"]
    if given is not None:
        if len(given) != len(classes):
            raise ConfigError(f"data.class_names gives {len(given)} names for {len(classes)} classes "
                             f"({classes[:5]}...): give one name per class, in the class order")
        return [str(name) for name in given]
    if data_config["dataset"] == "folder" and data_config["layout"] == "list" and not data_config["classes"]:
        return None
    return [caption_from_name(c) for c in classes]


AUTO_SIZE_RANGE = (16, 96)


def fitting_image_size(dataset: MultiDomainDataset, sample: int = 256, seed: int = 0) -> int:
    """The ``image_size: auto`` of a folder dataset: the median shorter side of its images.

    Read from the headers of up to ``sample`` random files per domain, rounded down to a multiple
    of 8 and clipped to ``AUTO_SIZE_RANGE``: small images are not blown up, large photos are
    brought to a size a CPU trains on in minutes (raise ``data.image_size`` on a GPU).
    """
    rng = np.random.default_rng(seed)
    sides = []
    for part in dataset.datasets:
        paths = [path for path, _ in part.samples]
        for index in rng.permutation(len(paths))[:sample]:
            with Image.open(paths[index]) as image:
                sides.append(min(image.size))
    low, high = AUTO_SIZE_RANGE
    return int(min(max(int(np.median(sides)) // 8 * 8, low), high))


def small_domain_warnings(domain_sizes: Mapping[str, int], num_clusters: int, m_per_cluster: int) -> list[str]:
    """Warnings for domains with fewer images than ``num_clusters * m_per_cluster``.

    Such a domain averages fewer than ``m_per_cluster`` images per cluster: its k-means clusters
    hold a few images each, the synergy batches repeat them, and its pseudo-labels are unreliable.

    Args:
        domain_sizes: Number of images per domain name.
        num_clusters: Clusters per domain (the number of classes unless ``data.num_clusters``).
        m_per_cluster: Images per cluster in a synergy batch.

    Returns:
        One message per small domain, naming the sizes and the fix.
    """
    needed = num_clusters * m_per_cluster
    return [
        f"domain {name!r} has {size} images for {num_clusters} clusters, fewer than "
        f"synergy.m_per_cluster={m_per_cluster} per cluster on average ({needed} images): its clusters hold "
        "a few images each and its pseudo-labels are unreliable. Add images to this domain, or lower "
        "data.num_clusters or synergy.m_per_cluster."
        for name, size in domain_sizes.items() if size < needed
    ]


def fit_batch_to_dataset(
    batch_size: int, num_images: int, num_processes: int = 1, key: str = "warmup.batch_size", multiple_of: int = 1
) -> tuple[int, str | None]:
    """A batch size lowered to the images each process holds when it has fewer.

    The warm-up keeps full batches only, so a batch larger than the dataset would leave no step; a
    synergy batch larger than the dataset repeats images, and the copies of an image become false
    negatives of the instance loss.

    Args:
        batch_size: The configured batch size (per process).
        num_images: Images in the dataset.
        num_processes: Processes sharing the images (each takes a disjoint share of every epoch);
            1 when every process draws from all images (the synergy sampler).
        key: The option, named in messages.
        multiple_of: The fitted size stays a multiple of this (``synergy.m_per_cluster``).

    Returns:
        ``(batch_size, note)``: the batch size to use and, when it was lowered, a message saying so.

    Raises:
        ValueError: Fewer than ``max(2, multiple_of)`` images per process (no batch can be formed).
    """
    per_process = num_images // num_processes
    smallest = max(2, multiple_of)
    if per_process < smallest:
        raise ConfigError(f"{num_images} image(s) on {num_processes} process(es): {key} needs at least {smallest} "
                         "images per process; add images or train on fewer processes")
    if batch_size <= per_process:
        return batch_size, None
    fitted = per_process // multiple_of * multiple_of
    return fitted, (f"{key}={batch_size} is larger than the {num_images} images on {num_processes} process(es): "
                    f"batches of {fitted} are used instead")


def cache_images(dataset: Dataset, num_workers: int = 0, show_progress: bool = True) -> torch.Tensor:
    """Decode every image once into a uint8 tensor (N×3×S×S), in dataset order."""
    loader = DataLoader(dataset, batch_size=256, num_workers=num_workers)
    chunks = [
        images.mul(255).round_().to(torch.uint8)
        for images, *_ in progress(loader, "caching images", enabled=show_progress)
    ]
    return torch.cat(chunks)


def unlabelled_view(dataset: MultiDomainDataset, images: torch.Tensor | None, domains: torch.Tensor) -> Dataset:
    """The dataset as training sees it: items ``(image, domain, index)``, no true label.

    Args:
        dataset: The multi-domain dataset.
        images: Its decoded uint8 images (:func:`cache_images`), or None to decode on the fly.
        domains: Domain id per image.
    """
    if images is not None:
        return TensorDataset(images, domains, torch.arange(len(dataset)))
    return _NoLabelView(dataset)


def images_as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1]; float images unchanged (as float32)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


class _NoLabelView(Dataset):
    """A MultiDomainDataset seen without its true labels: items are (image, domain, index)."""

    def __init__(self, dataset: MultiDomainDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, _, domain, index = self.dataset[index]
        return image, domain, index


def dataset_fingerprint(dataset: MultiDomainDataset) -> dict[str, Any]:
    """What identifies a dataset for resuming: domains, classes, sizes and hashes of its content.

    ``content_sha256`` covers every image's label and domain and, for folder data, every file's
    path relative to its domain folder. ``files_sha256`` covers each file's size and a hash of
    its first and last 8 KB (:func:`~tpsnet_plugin.utils.io.file_ends_digest`): an image
    replaced under the same name changes it, while the same files moved or copied elsewhere
    (another ``data.root``) keep it. Neither hash depends on where the dataset lies.
    """
    digest, files = hashlib.sha256(), hashlib.sha256()
    digest.update(np.asarray(dataset.labels, dtype=np.int64).tobytes())
    digest.update(np.asarray(dataset.domains, dtype=np.int64).tobytes())
    for part in dataset.datasets:
        for relative, path in _sample_paths(part):
            digest.update(relative.encode("utf-8", "surrogateescape") + b"\0")
            files.update(file_ends_digest(path) or b"<unreadable>")
    return {
        "domains": list(dataset.domain_names),
        "classes": [str(c) for c in dataset.classes],
        "sizes": [len(part) for part in dataset.datasets],
        "content_sha256": digest.hexdigest(),
        "files_sha256": files.hexdigest(),
    }


def _sample_paths(part) -> list[tuple[str, str]]:
    """``(path relative to the domain folder, path)`` of every image of a folder domain; [] for others."""
    indices = getattr(part, "indices", None)
    inner = getattr(part, "dataset", part)
    samples = getattr(inner, "samples", None)
    if samples is None:
        return []
    root = getattr(inner, "root", None)
    paths = [str(path) for path, _ in samples]
    pairs = [(os.path.relpath(path, root) if root is not None else path, path) for path in paths]
    if indices is not None:
        pairs = [pairs[int(i)] for i in indices]
    return pairs
