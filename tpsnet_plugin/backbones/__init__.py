"""Backbones: the phase-only transform, the RGB + phase-prior backbone and a small timm CNN.

Importing this package registers ``small_cnn`` with timm's model registry.
"""

from .phase import phase_only
from .phase_prior_backbone import PhasePriorBackbone
from .small_cnn import SmallCNN

__all__ = ["PhasePriorBackbone", "SmallCNN", "phase_only"]
