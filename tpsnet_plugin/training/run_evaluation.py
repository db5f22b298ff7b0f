"""Embedding every image once, and evaluating embeddings and starting points the same way.

:class:`Embedder` makes one pass over the data (no augmentation), gathered once across
processes in dataset order. :class:`RunEvaluator` evaluates with true labels (the only reader of
them besides the diagnostics): every embedding, trained or a starting point, goes through one
post-processing (:meth:`RunEvaluator.retrieval_features`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..evaluation import evaluate_domains, mean_metrics
from ..evaluation.baseline import raw_pixel_features
from ..text_prior.domain_prompt_learner import encode_clip_images
from ..text_prior.zero_shot import zero_shot_probabilities
from .data import images_as_float
from .state import TrainingState


class Embedder:
    """Embed every image of a dataset view with the run's model (or another encoder).

    Args:
        accelerator: The run's accelerator (sharding, gathering, autocast).
        stage_model: The wrapped :class:`~tpsnet_plugin.training.builder.StageModel`.
        dataset: The ``(image, domain, index)`` view of the data.
        batch_size: Images per forward pass (``eval.batch_size``).
        num_workers: DataLoader workers.
        memory_format: The images' memory format.
        progress: ``progress(iterable, desc)``, e.g. a progress bar.
    """

    def __init__(self, accelerator: Accelerator, stage_model: nn.Module, dataset: Dataset, batch_size: int,
                 num_workers: int, memory_format: torch.memory_format, progress: Callable) -> None:
        self.accelerator, self.stage_model, self.dataset = accelerator, stage_model, dataset
        self.batch_size, self.num_workers, self.memory_format = batch_size, num_workers, memory_format
        self.progress = progress

    @torch.no_grad()
    def __call__(self, synergy: bool = True, encoder: Callable | None = None, desc: str = "embedding") -> torch.Tensor:
        """Every image's features, in dataset order, on the CPU (N×e float32).

        Args:
            synergy: The full TPSNet embedding (False: the backbone's fused feature I_f).
            encoder: A callable ``images -> features`` replacing the model (e.g. a frozen CLIP).
            desc: Progress label.
        """
        acc, device = self.accelerator, self.accelerator.device
        model = acc.unwrap_model(self.stage_model)
        self._sync_buffers(model)
        was_training = model.training
        model.eval()
        loader = acc.prepare_data_loader(DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                                                    num_workers=self.num_workers))
        features, indices = [], []
        for images, domains, index in self.progress(loader, desc):
            images = images_as_float(images).to(device, memory_format=self.memory_format)
            with acc.autocast():
                if encoder is not None:
                    out = encoder(images)
                else:
                    out = model(images, domains.to(device), synergy=synergy)["embedding"]
            out, index = acc.gather_for_metrics((out.float().contiguous(), index.to(device)))
            features.append(out.cpu())
            indices.append(index.cpu())
        model.train(was_training)
        features, indices = torch.cat(features), torch.cat(indices)
        if not torch.equal(indices, torch.arange(len(self.dataset))):
            raise RuntimeError("Gathered evaluation features are not one per image in dataset order")
        return features

    def _sync_buffers(self, model: nn.Module) -> None:
        # BatchNorm statistics drift apart across processes between DDP forwards; every process
        # must embed with rank 0's (the ones that get saved).
        if self.accelerator.num_processes > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)


class EpochEmbeddings:
    """``epoch_embeddings()``: the retrieval embedding of every image at the run's current stage and epoch,
    computed once however many hooks ask for it (the backbone's fused feature before the synergy stage).

    Args:
        embed: The run's :class:`Embedder`.
        state: The run's state (stage and epoch).
    """

    def __init__(self, embed: Embedder, state: TrainingState) -> None:
        self.embed, self.state = embed, state
        self._cached: tuple[tuple[str, int], torch.Tensor] | None = None

    def __call__(self) -> torch.Tensor:
        stage = "synergy" if self.state.stage == "done" else self.state.stage
        key = (stage, self.state.epoch)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.embed(synergy=stage == "synergy"))
        return self._cached[1]


class RunEvaluator:
    """Retrieval quality of embeddings and of the run's starting points, with the config's metrics.

    Args:
        embed: The run's :class:`Embedder`.
        config: The resolved config (``eval`` and ``model`` sections).
        domains: Domain id per image (N).
        true_labels: Class per image (N).
        domain_names: The domains' names, in id order.
        model: The TPSNet (its backbone gives the frozen-features starting point).
        clip: The frozen open_clip model, or None.
        class_names: The names the CLIP zero-shot reads, or None.
        zero_shot: Whether the CLIP zero-shot is a starting point (``eval.zero_shot``).
    """

    def __init__(self, embed: Embedder, config: Mapping[str, Any], domains: torch.Tensor, true_labels: np.ndarray,
                 domain_names: list[str], model: nn.Module, clip: nn.Module | None,
                 class_names: list[str] | None, zero_shot: bool) -> None:
        self.embed, self.config, self.domains, self.true_labels = embed, config, domains, true_labels
        self.domain_names, self.model, self.clip = domain_names, model, clip
        self.class_names, self.zero_shot = class_names, zero_shot

    def retrieval_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The evaluation post-processing: each domain centred by its own mean (``eval.center_per_domain``), L2."""
        if self.config["eval"]["center_per_domain"]:
            embeddings = embeddings.clone()
            for d in range(len(self.domain_names)):
                mask = self.domains == d
                embeddings[mask] -= embeddings[mask].mean(0)
        return F.normalize(embeddings, dim=-1)

    def evaluate(self, embeddings: torch.Tensor) -> dict[str, dict[str, float]]:
        """Every ordered domain pair (queries: all of A, gallery: all of B), after the post-processing."""
        return self.evaluate_features(self.retrieval_features(embeddings))

    def evaluate_features(self, features: torch.Tensor) -> dict[str, dict[str, float]]:
        """Evaluate given retrieval features (one row per image, dataset order) with the config's metrics."""
        ev = self.config["eval"]
        # On the run's device: a GPU ranks a DomainNet-size gallery in seconds, a CPU in hours.
        return evaluate_domains(
            features.to(self.embed.accelerator.device), self.true_labels, self.domains.numpy(),
            domain_names=self.domain_names, ks=tuple(ev["ks"]), knn=ev["knn"], map_at_all=ev["map_at_all"],
            batch_size=int(ev["batch_size"]),
        )

    def label_free_score(self, embeddings: torch.Tensor, pseudo_labels: torch.Tensor) -> float:
        """The model-selection score that uses no labels: pseudo-label P@1 across domains.

        The share of queries whose top-1 neighbour in another domain carries the same aligned
        cluster id, averaged over ordered domain pairs (the UCDIR P@1 with pseudo-labels in place
        of classes).
        """
        results = evaluate_domains(
            self.retrieval_features(embeddings), pseudo_labels.numpy(), self.domains.numpy(),
            domain_names=self.domain_names, ks=(1,), knn=self.config["eval"]["knn"], map_at_all=False,
        )
        return mean_metrics(results)["precision_at_1"]

    def starts_pretrained(self) -> bool:
        """Whether the RGB backbone starts from pretrained weights (timm ``pretrained``, a file, a CLIP tower)."""
        model_cfg = self.config["model"]
        return bool(model_cfg["pretrained"] or model_cfg["checkpoint_path"] or model_cfg["rgb_from_clip"])

    def starting_point_kinds(self) -> list[str]:
        """The starting points this run reports: raw pixels, the frozen pretrained features, the CLIP zero-shot."""
        kinds = ["raw_pixels"]
        if self.starts_pretrained():
            kinds.append("frozen_features")
        if self.zero_shot:
            kinds.append("clip_zero_shot")
        return kinds

    def clip_features(self, desc: str = "CLIP features") -> torch.Tensor:
        """The frozen CLIP's image embedding of every image (no augmentation)."""
        return self.embed(encoder=partial(encode_clip_images, self.clip), desc=desc)

    def baseline(self, kind: str = "raw_pixels") -> dict[str, Any]:
        """Retrieval with one of the run's starting points, evaluated exactly like the trained embedding.

        * ``raw_pixels``: grayscale pixels, at most 32×32;
        * ``frozen_features``: the pretrained RGB backbone's pooled features, before any new head;
        * ``clip_zero_shot``: each image as its CLIP zero-shot class-probability vector over the class
          names (``uses_class_names``: UCDIR methods do not get class names, like ``oracle_best``
          uses test labels); also its zero-shot classification accuracy (diagnostic).

        Returns:
            ``{"kind": kind, "results": direction -> metrics, ...}``.
        """
        extra: dict[str, Any] = {}
        if kind == "raw_pixels":
            # at most 32×32: a floor, and at 224 px raw pixels would not fit in memory at scale
            features = self.embed(encoder=partial(raw_pixel_features, max_size=32), desc="baseline (raw pixels)")
        elif kind == "frozen_features":
            features = self.embed(encoder=self.model.backbone.rgb_features, desc="baseline (frozen features)")
        elif kind == "clip_zero_shot":
            image_features = self.clip_features(desc="baseline (CLIP zero-shot)")
            features = zero_shot_probabilities(
                self.clip, self.config["model"]["clip_model"], image_features, self.class_names,
                pretrained=self.config["model"]["clip_pretrained"])
            predicted = features.argmax(1).numpy()
            extra = {"uses_class_names": True, "class_names": list(self.class_names),
                     "top1_accuracy": float(100 * (predicted == self.true_labels).mean())}
        else:
            raise ValueError(f"unknown starting point {kind!r}: choose one of {self.starting_point_kinds()}")
        # L2-normalised first, as the model's embeddings are, then centred and normalised like them
        return {"kind": kind, "results": self.evaluate(F.normalize(features.float(), dim=-1)), **extra}
