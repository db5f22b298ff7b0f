from .domain_labels import decode_domain_labels, encode_domain_labels

__all__ = ["decode_domain_labels", "encode_domain_labels"]
