"""Models: TPSNet, the stage-2 retrieval network."""

from .tpsnet import TPSNet

__all__ = ["TPSNet"]
