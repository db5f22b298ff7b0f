"""Models: TPSNet, the retrieval network of the synergy stage, and its factory."""

from .factory import create_tpsnet
from .pretrained import load_pretrained
from .tpsnet import TPSNet

__all__ = ["TPSNet", "create_tpsnet", "load_pretrained"]
