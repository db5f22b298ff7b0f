"""TPSNet for unsupervised cross-domain image retrieval, as a pytorch-metric-learning plugin.

Components (each also importable from its subpackage, pml style)::

    from tpsnet_plugin.backbones import PhasePriorBackbone, phase_only
    from tpsnet_plugin.text_prior import DomainPromptLearner
    from tpsnet_plugin.losses import PromptContrastiveLoss, ImageTextCrossEntropyLoss, ...
    from tpsnet_plugin.miners import DomainPromptMiner
    from tpsnet_plugin.clustering import ClusterPseudoLabeler, ConsensusAlignment, create_kmeans, ...
    from tpsnet_plugin.samplers import PseudoLabelSampler
    from tpsnet_plugin.models import TPSNet
    from tpsnet_plugin.evaluation import UCDIRAccuracyCalculator, cross_domain_retrieval
    from tpsnet_plugin.training import TPSNetTrainer
"""

from . import _torchvision_compat  # noqa: F401  (must run before timm / open_clip are imported)

__version__ = "0.1.0"

from .backbones import PhasePriorBackbone, phase_only  # noqa: E402
from .clustering import ClusterPseudoLabeler  # noqa: E402
from .data import DigitsDomain, DomainImageFolder, MultiDomainDataset, build_folder_domains  # noqa: E402
from .evaluation import UCDIRAccuracyCalculator, cross_domain_retrieval, evaluate_domains  # noqa: E402
from .losses import (  # noqa: E402
    ImageTextCrossEntropyLoss,
    InstanceContrastiveLoss,
    PromptContrastiveLoss,
    PrototypeCrossEntropyLoss,
)
from .miners import DomainPromptMiner  # noqa: E402
from .models import TPSNet  # noqa: E402
from .samplers import PseudoLabelSampler  # noqa: E402
from .text_prior import DomainPromptLearner  # noqa: E402
from .training import TPSNetTrainer, load_config  # noqa: E402
from .utils import decode_domain_labels, encode_domain_labels  # noqa: E402

__all__ = [
    "ClusterPseudoLabeler",
    "DigitsDomain",
    "DomainImageFolder",
    "DomainPromptLearner",
    "DomainPromptMiner",
    "ImageTextCrossEntropyLoss",
    "InstanceContrastiveLoss",
    "MultiDomainDataset",
    "PhasePriorBackbone",
    "PromptContrastiveLoss",
    "PrototypeCrossEntropyLoss",
    "PseudoLabelSampler",
    "TPSNet",
    "TPSNetTrainer",
    "UCDIRAccuracyCalculator",
    "__version__",
    "build_folder_domains",
    "cross_domain_retrieval",
    "decode_domain_labels",
    "encode_domain_labels",
    "evaluate_domains",
    "load_config",
    "phase_only",
]
