from .domain_labels import decode_domain_labels, encode_domain_labels
from .io import atomic_open, atomic_save_numpy, atomic_write_bytes, atomic_write_text

__all__ = [
    "atomic_open",
    "atomic_save_numpy",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_domain_labels",
    "encode_domain_labels",
]
