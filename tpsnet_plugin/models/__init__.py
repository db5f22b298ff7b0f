"""Models: TPSNet, the stage-2 retrieval network, and its factory."""

from .factory import create_tpsnet
from .tpsnet import TPSNet

__all__ = ["TPSNet", "create_tpsnet"]
