"""The synergy stage's loss terms: each builds its loss from the config and computes from one batch.

A term declares what it reads of a :class:`SynergyBatch` (the two views' embeddings, domains,
pseudo-labels, the confident-sample mask) and returns one loss tensor; the stage adds the terms
with ``synergy.loss_weights.<name>``. A new term is one class here, registered in
:data:`LOSS_TERMS`: its ``default_weight`` and ``help`` become the option
``synergy.loss_weights.<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from pytorch_metric_learning.losses import NTXentLoss
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch import nn

from ..losses import ImageTextCrossEntropyLoss, InstanceContrastiveLoss, PrototypeCrossEntropyLoss
from ..miners import DomainPromptMiner
from ..text_prior.prompt_features import PromptFeatures
from ..utils import encode_domain_labels


@dataclass
class SynergyBatch:
    """One synergy step's inputs to the loss terms.

    Attributes:
        view1: Embeddings of the first augmented view (B×e).
        view2: Embeddings of the second view of the same images (B×e).
        domains: Domain id per image (B).
        clusters: Pseudo-label per image (B).
        keep: Confident images (``cluster.keep_ratio``), bool (B).
        num_clusters: C, for the combined ``domain * C + cluster`` labels.
    """

    view1: torch.Tensor
    view2: torch.Tensor
    domains: torch.Tensor
    clusters: torch.Tensor
    keep: torch.Tensor
    num_clusters: int

    @cached_property
    def both(self) -> torch.Tensor:
        """Both views' embeddings (2B×e), view 1 first; one tensor shared by the terms that read it, so
        their gradients meet in one graph node (the order of the float sums, hence the run, is fixed)."""
        return torch.cat([self.view1, self.view2])

    @cached_property
    def keep_both(self) -> torch.Tensor:
        """The confident-image mask of both views (2B), view 1 first."""
        return self.keep.repeat(2)

    def combined(self, both_views: bool = False) -> torch.Tensor:
        """The combined ``domain * C + cluster`` labels of one view (B) or both (2B)."""
        repeat = 2 if both_views else 1
        return encode_domain_labels(self.domains.repeat(repeat), self.clusters.repeat(repeat), self.num_clusters)


@dataclass(frozen=True)
class TermSetup:
    """What the terms are built for, beside their config section.

    Attributes:
        num_clusters: C.
        embed_dim: The embedding width e.
        prompt_features: The model's holder of the frozen prompt features (None without the text prior).
        logit_scale: CLIP's logit scale for image-to-text logits.
        num_processes: World size; above 1 the pml loss and miner gather across processes.
    """

    num_clusters: int
    embed_dim: int
    prompt_features: PromptFeatures | None = None
    logit_scale: float = 100.0
    num_processes: int = 1


class LossTerm:
    """One term of the synergy loss: a pml loss (and miner) computed from a :class:`SynergyBatch`.

    Args:
        loss: The loss function.
        miner: The miner feeding it, if any.
    """

    name: ClassVar[str]
    default_weight: ClassVar[float] = 1.0  # the default of synergy.loss_weights.<name>
    help: ClassVar[str] = ""  # its line in default_config.yaml
    uses_text_prior: ClassVar[bool] = False  # not built without prompts

    def __init__(self, loss: nn.Module, miner: Any = None) -> None:
        self.loss, self.miner = loss, miner

    @classmethod
    def from_config(cls, config: Mapping[str, Any], setup: TermSetup) -> LossTerm:
        """The term the ``synergy`` section describes, for the run ``setup`` describes."""
        raise NotImplementedError

    def __call__(self, batch: SynergyBatch) -> torch.Tensor:
        raise NotImplementedError


class PrototypeTerm(LossTerm):
    """Cross-entropy of both views' confident images against the shared momentum prototypes."""

    name = "prototype"
    help = "L_pce, prototype cross-entropy over shared prototypes"

    @classmethod
    def from_config(cls, config, setup) -> PrototypeTerm:
        return cls(PrototypeCrossEntropyLoss(setup.num_clusters, setup.embed_dim,
                                             temperature=config["prototype_temperature"],
                                             momentum=config["prototype_momentum"]))

    def __call__(self, batch: SynergyBatch) -> torch.Tensor:
        return self.loss(batch.both[batch.keep_both], batch.clusters.repeat(2)[batch.keep_both])


class ImageTextTerm(LossTerm):
    """Label-smoothed cross-entropy of both views' confident images against their domain's prompts."""

    name = "image_text"
    help = "L_i2tce, image-to-text cross-entropy; ignored without the text prior"
    uses_text_prior = True

    @classmethod
    def from_config(cls, config, setup) -> ImageTextTerm:
        return cls(ImageTextCrossEntropyLoss(setup.num_clusters, label_smoothing=config["label_smoothing"],
                                             logit_scale=setup.logit_scale, prompt_features=setup.prompt_features))

    def __call__(self, batch: SynergyBatch) -> torch.Tensor:
        return self.loss(batch.both[batch.keep_both], batch.combined(both_views=True)[batch.keep_both])


class InstanceTerm(LossTerm):
    """NT-Xent between the two views of each image (negatives from its own domain by default)."""

    name = "instance"
    help = "L_inst, instance contrastive on two augmented views"

    @classmethod
    def from_config(cls, config, setup) -> InstanceTerm:
        return cls(InstanceContrastiveLoss(temperature=config["instance_temperature"],
                                           within_domain=config["instance_within_domain"]))

    def __call__(self, batch: SynergyBatch) -> torch.Tensor:
        return self.loss(batch.view1, batch.domains, ref_emb=batch.view2)


class MinerTerm(LossTerm):
    """pml's NT-Xent on the pairs :class:`~tpsnet_plugin.miners.DomainPromptMiner` mines from view 1."""

    name = "miner"
    default_weight = 0.0
    help = "DomainPromptMiner pairs fed to pml's NTXentLoss"

    @classmethod
    def from_config(cls, config, setup) -> MinerTerm:
        loss = NTXentLoss(temperature=config["instance_temperature"])
        miner = DomainPromptMiner(setup.num_clusters, threshold=config["miner_threshold"],
                                  prompt_features=setup.prompt_features)
        if setup.num_processes > 1:
            loss, miner = DistributedLossWrapper(loss), DistributedMinerWrapper(miner)
        return cls(loss, miner)

    def __call__(self, batch: SynergyBatch) -> torch.Tensor:
        combined = batch.combined()
        return self.loss(batch.view1, combined, self.miner(batch.view1, combined))


# The terms, in the order they are computed and logged.
LOSS_TERMS: dict[str, type[LossTerm]] = {term.name: term for term in (PrototypeTerm, ImageTextTerm, InstanceTerm,
                                                                        MinerTerm)}


@dataclass
class LossTable:
    """The synergy stage's loss terms with a weight above 0, keyed by name.

    ``loss_funcs``, ``mining_funcs`` and ``loss_weights`` follow pytorch-metric-learning's trainers.
    """

    terms: dict[str, LossTerm] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)

    @property
    def loss_funcs(self) -> dict[str, nn.Module]:
        return {name: term.loss for name, term in self.terms.items()}

    @property
    def mining_funcs(self) -> dict[str, Any]:
        return {name: term.miner for name, term in self.terms.items() if term.miner is not None}

    def compute(self, batch: SynergyBatch) -> dict[str, torch.Tensor]:
        """Every term of one batch, keyed by name (unweighted)."""
        return {name: term(batch) for name, term in self.terms.items()}

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of computed loss terms."""
        return sum(self.loss_weights[name] * value for name, value in terms.items())


def build_losses(
    synergy_config: Mapping[str, Any],
    num_clusters: int,
    embed_dim: int,
    prompt_features: PromptFeatures | None,
    logit_scale: float = 100.0,
    num_processes: int = 1,
) -> LossTable:
    """Build the loss table of the synergy stage from the ``synergy`` config section.

    Args:
        synergy_config: The ``synergy`` section (``loss_weights`` and the loss options).
        num_clusters: Number of clusters C.
        embed_dim: Embedding width e.
        prompt_features: The model's holder of the frozen prompt features, read by the terms of the
            text prior; None (no text prior) leaves those terms out.
        logit_scale: CLIP's logit scale for the image-to-text logits.
        num_processes: World size; above 1 the pml loss and miner are wrapped to gather across processes.
    """
    setup = TermSetup(num_clusters, embed_dim, prompt_features, logit_scale, num_processes)
    table = LossTable()
    for name, term in LOSS_TERMS.items():
        weight = float(synergy_config["loss_weights"][name])
        if weight <= 0 or (term.uses_text_prior and prompt_features is None):
            continue
        table.loss_weights[name] = weight
        table.terms[name] = term.from_config(synergy_config, setup)
    return table
