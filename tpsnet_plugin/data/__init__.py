from .digits import CLASSES, DOMAINS, DigitsDomain, load_domain
from .folder import IMG_EXTENSIONS, DomainImageFolder
from .multi_domain import MultiDomainDataset, build_folder_domains
from .subset import DomainSubset
from .transforms import default_transform

__all__ = [
    "CLASSES",
    "DOMAINS",
    "DigitsDomain",
    "DomainImageFolder",
    "DomainSubset",
    "IMG_EXTENSIONS",
    "MultiDomainDataset",
    "build_folder_domains",
    "default_transform",
    "load_domain",
]
