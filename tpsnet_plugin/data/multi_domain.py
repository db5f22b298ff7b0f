"""Several domains with one shared class order, as one dataset with domain ids."""

from __future__ import annotations

import bisect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from ..utils.io import file_ends_digest
from .folder import DomainImageFolder
from .walk import preview

CLASS_POLICIES = ("strict", "intersection")


class MultiDomainDataset(Dataset):
    """Concatenation of D ≥ 2 domain datasets that share one class order.

    Each part returns ``(image, label, index)`` and has ``labels`` and ``classes`` attributes
    (e.g. :class:`DomainImageFolder`). Items are ``(image, label, domain, index)`` with the
    domain id and the global index.

    Attributes:
        datasets: The parts, in domain-id order.
        domain_names: Name of each domain.
        num_domains: D.
        classes: The shared class names.
        labels: int64 array of class labels, shape (N,).
        domains: int64 array of domain ids, shape (N,).
        image_size: The side of the square images every item has, when the code that built the
            parts knows it (the trainer's ``build_dataset`` sets it), else None.
    """

    image_size: int | None = None

    def __init__(self, datasets: Sequence[Dataset], domain_names: Sequence[str] | None = None):
        """Concatenate the domains.

        Args:
            datasets: One dataset per domain.
            domain_names: Name per domain; default each part's ``domain`` attribute, else
                ``"domain<d>"``.
        """
        self.datasets = list(datasets)
        if len(self.datasets) < 2:
            raise DataError("cross-domain retrieval needs at least 2 domains, got "
                             f"{len(self.datasets)}")
        if domain_names is None:
            domain_names = [
                getattr(ds, "domain", None) or f"domain{d}" for d, ds in enumerate(self.datasets)
            ]
        self.domain_names = [str(n) for n in domain_names]
        if len(self.domain_names) != len(self.datasets):
            raise DataError(f"got {len(self.domain_names)} domain names for "
                             f"{len(self.datasets)} datasets")
        if len(set(self.domain_names)) != len(self.domain_names):
            raise DataError(f"domain names must be distinct, got {self.domain_names}")
        for name, ds in zip(self.domain_names, self.datasets):
            if not hasattr(ds, "labels") or not hasattr(ds, "classes"):
                raise TypeError(f"dataset of domain {name!r} needs `labels` and `classes` "
                                "attributes")
            if len(ds) == 0 or len(ds.labels) != len(ds):
                raise DataError(f"dataset of domain {name!r} is empty or its `labels` do not "
                                 f"match its length ({len(ds.labels)} labels, {len(ds)} items)")
        self.classes = list(self.datasets[0].classes)
        differences = []
        for name, ds in zip(self.domain_names[1:], self.datasets[1:]):
            other = list(ds.classes)
            if other == self.classes:
                continue
            lacks = [c for c in self.classes if c not in other]
            extra = [c for c in other if c not in self.classes]
            detail = (f"lacks {preview(lacks)}; has extra {preview(extra)}" if lacks or extra
                      else "has the same classes in another order")
            differences.append(f"domain {name!r} {detail}")
        if differences:
            raise DataError(
                f"all domains must share domain {self.domain_names[0]!r}'s class order: "
                f"{'; '.join(differences)}. Build the domains with the same `classes` "
                "(build_folder_domains does this)"
            )
        self.num_domains = len(self.datasets)
        self.labels = np.concatenate(
            [np.asarray(ds.labels, dtype=np.int64) for ds in self.datasets]
        )
        self.domains = np.concatenate(
            [np.full(len(ds), d, dtype=np.int64) for d, ds in enumerate(self.datasets)]
        )
        self._ends = np.cumsum([len(ds) for ds in self.datasets]).tolist()

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int):
        """Return ``(image, label, domain, index)`` for the global ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        domain = bisect.bisect_right(self._ends, index)
        start = self._ends[domain - 1] if domain else 0
        image, label = self.datasets[domain][index - start][:2]
        return image, int(label), domain, index

    def domain_indices(self, domain: int | str) -> np.ndarray:
        """Global indices of one domain's samples.

        Args:
            domain: Domain id or name.

        Returns:
            int64 array of indices, ascending.
        """
        if isinstance(domain, str):
            if domain not in self.domain_names:
                raise KeyError(f"unknown domain {domain!r}; domains are {self.domain_names}")
            domain = self.domain_names.index(domain)
        if not 0 <= domain < self.num_domains:
            raise IndexError(f"domain id {domain} out of range for {self.num_domains} domains")
        return np.flatnonzero(self.domains == domain)


def build_folder_domains(
    root: str | os.PathLike,
    domains: Sequence[str],
    layout: str = "auto",
    classes: Sequence[str] | None = None,
    class_policy: str = "strict",
    image_size: int | tuple[int, int] = 224,
    on_error: str = "raise",
    list_files: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] | None = None,
    transform: Callable | None = None,
) -> MultiDomainDataset:
    """Load several domains of a folder benchmark with one shared class order.

    The class order is ``classes`` if given; else the domains' common order when they all agree
    (folders: sorted names; list files: label order), else the sorted union of their classes.

    Args:
        root: Dataset root holding the domain folders (or the base of the list files' paths).
        domains: At least two domain names, e.g. ``["Art", "Real World"]``.
        layout: Layout of every domain (see :class:`DomainImageFolder`).
        classes: Shared class order; None derives it as described above.
        class_policy: ``"strict"``: a class without images in some domain is an error;
            ``"intersection"``: keep only the classes present in every domain (relabelled in
            the shared order) and warn with the dropped ones.
        image_size: Output size of the default transform.
        on_error: ``"raise"`` or ``"skip"`` for unreadable images.
        list_files: For ``layout="list"``: a mapping domain -> list file, or a sequence aligned
            with ``domains``.
        transform: Transform for every domain; default :func:`default_transform`.

    Returns:
        A :class:`MultiDomainDataset` with the domains in the given order.

    Raises:
        ValueError: Among others, when a domain has fewer images than the shared classes.

    Warns:
        UserWarning: When every image of a domain is the same file content (same size and the
            same first and last 8 KB), e.g. placeholders left by a failed download.
    """
    if isinstance(domains, str):
        raise TypeError(f"domains must be a list of domain names, got the string {domains!r}")
    domains = [str(d) for d in domains]
    if len(domains) < 2 or len(set(domains)) != len(domains):
        raise DataError(f"cross-domain retrieval needs at least 2 distinct domains, got {domains}")
    if class_policy not in CLASS_POLICIES:
        raise DataError(f"class_policy must be one of {CLASS_POLICIES}, got {class_policy!r}")
    if list_files is not None and not isinstance(list_files, Mapping):
        if isinstance(list_files, (str, os.PathLike)) or len(list_files) != len(domains):
            raise DataError("list_files must map each domain to its list file, or be a sequence "
                             f"with one file per domain ({len(domains)})")
        list_files = dict(zip(domains, list_files))
    if list_files is not None and set(domains) - set(list_files):
        absent = sorted(set(domains) - set(list_files))
        raise DataError(f"list_files has no entry for domains {absent}")

    parts = [
        DomainImageFolder(
            root, domain, classes=classes, layout=layout,
            list_file=None if list_files is None else list_files[domain],
            transform=transform, image_size=image_size, on_error=on_error,
        )
        for domain in domains
    ]
    if classes is not None:
        shared = [str(c) for c in classes]
    elif all(p.classes == parts[0].classes for p in parts):
        shared = list(parts[0].classes)
    else:
        shared = sorted(set().union(*(p.classes for p in parts)))
    for part in parts:
        part.set_classes(shared)

    missing = {part.domain: part.missing_classes for part in parts if part.missing_classes}
    if missing and class_policy == "strict":
        detail = "; ".join(f"domain {d!r} lacks {preview(m)}" for d, m in missing.items())
        raise DataError(
            f"{_too_few_images(parts, shared)}"
            f"some classes have no images in some domains: {detail}. Every class needs images "
            "in every domain: fix the folders, choose the classes (classes=[...]; config: data.classes), "
            "or pass class_policy='intersection' (config: data.class_policy) to keep only the classes "
            "shared by all domains"
        )
    if missing:
        dropped = [c for c in shared if any(c in m for m in missing.values())]
        kept = [c for c in shared if c not in dropped]
        if not kept:
            raise DataError(f"no class has images in all of the domains {domains}")
        warnings.warn(f"data.class_policy=intersection: dropped {len(dropped)} classes missing "
                      f"from some domain: {preview(dropped)}; keeping {len(kept)}", stacklevel=2)
        for part in parts:
            part.set_classes(kept)
    too_few = _too_few_images(parts, parts[0].classes)
    if too_few:  # cannot happen after the checks above; kept as the invariant's guard
        raise DataError(too_few)
    for part in parts:
        if _all_same_content([path for path, _ in part.samples]):
            warnings.warn(
                f"domain {part.domain!r}: all {len(part)} images are the same file content (same "
                "size and bytes), so nothing in this domain can be told apart; check the folder "
                "(placeholders from a failed download or conversion?)", stacklevel=2,
            )
    return MultiDomainDataset(parts, domain_names=domains)


def _too_few_images(parts: Sequence[DomainImageFolder], classes: Sequence[str]) -> str:
    """The error's first sentence when a domain has fewer images than classes, else ``""``."""
    small = [part for part in parts if len(part) < len(classes)]
    if not small:
        return ""
    detail = "; ".join(f"domain {p.domain!r} has only {len(p)} image(s)" for p in small)
    return (f"{detail}, fewer than the {len(classes)} classes, so it cannot have an image of "
            "every class: are root and domains (config: data.root, data.domains) the right folders? ")


def _all_same_content(paths: Sequence[str]) -> bool:
    """Whether two or more files all have the same size and the same head and tail bytes.

    Stops at the first file that differs: on real data this reads two file sizes, so it is
    cheap on any dataset size; only a degenerate domain is read in full (8 KB per file).
    """
    if len(paths) < 2:
        return False
    try:
        sizes = {os.path.getsize(paths[0])}
        for path in paths[1:]:
            sizes.add(os.path.getsize(path))
            if len(sizes) > 1:
                return False
    except OSError:
        return False
    first = file_ends_digest(paths[0])
    return first is not None and all(file_ends_digest(path) == first for path in paths[1:])
