"""TPSNet for unsupervised cross-domain image retrieval, as a pytorch-metric-learning plugin."""

from . import _torchvision_compat  # noqa: F401  (must run before timm / open_clip are imported)

__version__ = "0.1.0"
