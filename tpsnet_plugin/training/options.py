"""Every trainer option, declared once: default, help, accepted values, and whether it may change on resume.

The defaults (:func:`~tpsnet_plugin.training.config.default_config`), the validation of a config,
the list of options a resume may change and the commented ``default_config.yaml`` shipped beside
this module all come from :data:`OPTIONS` (a test checks the YAML file is :func:`render_yaml`'s).
A section is a dict of options (and sub-sections); its help is :data:`SECTION_HELP`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .loss_terms import LOSS_TERMS


@dataclass(frozen=True)
class Option:
    """One config option.

    Attributes:
        default: The packaged default (a ``{}`` default is a free-form mapping, replaced whole).
        help: One line for the YAML comment and the docs.
        choices: The accepted words, when the option is one of them.
        low: The smallest accepted number (``low_open``: excluded), when bounded below.
        high: The largest accepted number, when bounded above.
        low_open: ``low`` itself is refused.
        nullable: Type of the value besides ``null`` for options whose default is ``null``
            (``int``, ``float``, ``str`` or ``list``).
        check: ``(value) -> bool`` for options whose values do not fit the above, with ``accepts``
            saying what they accept.
        accepts: What ``check`` accepts, in words.
        resume_safe: May change when a run resumes (it changes no learned state: evaluation,
            logging, more epochs, learning rates, where files lie).
    """

    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: type | None = None
    check: Callable[[Any], bool] | None = None
    accepts: str = ""
    resume_safe: bool = False


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's true/false are bools)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


opt = Option
SAFE = {"resume_safe": True}
UNIT = {"low": 0, "high": 1}  # a probability or a share

OPTIONS: dict[str, Any] = {
    "seed": opt(0, "seeds Python, numpy, torch, the sampler, k-means and the prompts stage"),
    "output_dir": opt("outputs/run", "checkpoints, metrics.jsonl, summary.json, plots, resolved config", **SAFE),
    "data": {
        "dataset": opt("digits", '"digits" (embedded, offline) or "folder" (Office-Home, DomainNet, Office-31, '
                       'your data)', choices=("digits", "folder")),
        "root": opt(None, 'dataset root for "folder" (`--data-root`)', nullable=str, **SAFE),
        "domains": opt(["handwritten-mnist", "printed"],
                     ">= 2 domain names (`--domains`), in the order the results list them"),
        "layout": opt("auto", "folder layout: auto | folder (<root>/<domain>/<class>/<img>) | office31 "
                    "(<root>/<domain>/images/<class>/<img>) | list", choices=("auto", "folder", "office31", "list")),
        "list_files": opt(None, 'layout "list": one `relative/path label` file per domain, same order as `domains`',
                        nullable=list),
        "classes": opt(None, "explicit shared class order; null = sorted union over domains", nullable=list),
        "class_names": opt(None, "names a CLIP reads for the zero-shot starting point, one per class; null = the "
                         "class names as words", nullable=list),
        "class_policy": opt("strict", "strict: a class missing from a domain is an error; intersection: keep shared "
                          "classes only", choices=("strict", "intersection")),
        "on_error": opt("raise", "unreadable image: raise (name the file) or skip (drop it and report the count)",
                      choices=("raise", "skip")),
        "image_size": opt(32, "images are resized to image_size x image_size, RGB; auto = fit the data (median side, "
                        "16-96), or the CLIP tower's size with model.rgb_from_clip",
                        check=lambda v: v == "auto" or (is_int(v) and v >= 8),
                        accepts='an image side in pixels >= 8, or "auto" (fit the data)'),
        "num_clusters": opt(None, "C; null = the number of classes found (UCDIR assumes C is known); >= 2",
                          nullable=int, low=2),
        "num_workers": opt(0, "DataLoader workers for folder data", low=0, **SAFE),
        "subset_per_domain": opt(None, "keep at most this many random images per domain (quick runs, tests); "
                               "null = all", nullable=int, low=1),
        "cache_in_memory": opt(True, "decode every image once into a uint8 tensor (fast for small sets; set false "
                             "for DomainNet)", **SAFE),
    },
    "model": {
        "rgb_backbone": opt("small_cnn", "any timm model name (e.g. vit_base_patch16_clip_224.openai, resnet50)"),
        "pretrained": opt(False, "load timm pretrained weights for the RGB backbone (needs the hub or its cache)"),
        "checkpoint_path": opt(None, "local weights file for the RGB backbone (timm `checkpoint_path`)", nullable=str),
        "rgb_from_clip": opt(False, "start the RGB backbone (and its projection) from the image tower of "
                           "clip_model/clip_pretrained; rgb_backbone must be its timm counterpart "
                           "(tpsnet-cnn-clip: small_cnn)"),
        "phase_prior": opt(True, "false = RGB only (phase ablation)"),
        "phase_backbone": opt("small_cnn", "timm name of the phase network (in_chans=1); paper setting: resnet18"),
        "phase_pretrained": opt(False),
        "phase_amplitude": opt(None, "constant amplitude R; null = 50000 * sqrt(H*W) / 224", nullable=float,
                             low=0, low_open=True),
        "rgb_kwargs": opt({}, "extra timm.create_model arguments for the RGB backbone (e.g. {img_size: 28})"),
        "phase_kwargs": opt({}, "extra timm.create_model arguments for the phase network (e.g. {widths: [16, 32, "
                          "64, 128]})"),
        "channels_last": opt(True, "channels-last memory format (faster convolutions on CPU and GPU)"),
        "compile": opt("auto", "torch.compile the phase branch: auto (CUDA: mode default; CPU: off) | off | default | "
                     "reduce-overhead | max-autotune-no-cudagraphs | max-autotune",
                     choices=("auto", "off", "default", "reduce-overhead", "max-autotune-no-cudagraphs",
                              "max-autotune"), **SAFE),
        "embed_dim": opt(64, "embedding width e without a CLIP (with the text prior or rgb_from_clip the CLIP's "
                       "width is used, and another value here is warned about)", low=1),
        "num_heads": opt(4, "heads of the fusion self-attention and the synergy cross-attention", low=1),
        "weight_temperature": opt(0.07, "tau_w of the synergy weights softmax(cos(I_f, T_d) / tau_w)", low=0,
                                low_open=True),
        "text_prior": opt(True, "false = no prompts stage, no L_i2tce, no synergy (text ablation)"),
        "clip_model": opt("tpsnet-tiny-clip", "open_clip model name (paper: ViT-B-16)"),
        "clip_pretrained": opt(None, "open_clip pretrained tag (openai; packaged offline: icons for tpsnet-tiny-clip, "
                             "digits_disjoint / artwork for tpsnet-cnn-clip) or a local file", nullable=str),
        "num_context": opt(4, "M learnable context vectors per (domain, cluster) prompt", low=1),
        "template": opt("An image of a", "fixed words before the context vectors"),
    },
    "warmup": {
        "epochs": opt(0, "0 = no warm-up", low=0),
        "batch_size": opt(256, low=2),
        "lr": opt(0.001, low=0, low_open=True),
        "temperature": opt(0.1, low=0, low_open=True),
        "within_domain": opt(True, "negatives from the anchor's own domain only (the loss cannot drop by telling "
                           "domains apart)"),
        "min_steps": opt(0, "run more epochs if needed to reach this many optimizer steps (small datasets); 0 = off",
                       low=0),
    },
    "cluster": {
        "kmeans": opt("auto", "k-means backend: auto (faiss when installed, else scikit-learn) | faiss | sklearn",
                    choices=("auto", "faiss", "sklearn")),
        "niter": opt(20, low=1),
        "nredo": opt(5, low=1),
        "center_per_domain": opt(True, "cluster on per-domain mean-centred features"),
        "anchor": opt("smallest", "cluster this domain first and initialise the others from it: smallest | <domain "
                    "index> | null", check=lambda v: v is None or v == "smallest" or (is_int(v) and v >= 0),
                    accepts='"smallest", a domain index >= 0 or null'),
        "warm_start": opt(True, "initialise re-clusterings from the previous aligned centroids (stable ids)"),
        "alignment": opt("consensus", "align cluster ids across domains: consensus (each domain vs the mean of the "
                       "others) | reference (each vs domain 0)", choices=("consensus", "reference")),
        "recluster_every": opt(2, "synergy epochs between re-clusterings; 0 = never", low=0),
        "keep_ratio": opt(1.0, "per cluster, train the cluster losses on this fraction of samples closest to the "
                        "centroid", low=0, high=1, low_open=True),
    },
    "prompts": {
        "epochs": opt(20, low=0),
        "batch_size": opt(256, low=1),
        "lr": opt(0.002, low=0, low_open=True),
        "repair_every": opt(5, "epochs between label re-pairings with the prompts; 0 = never", low=0),
        "repair_threshold": opt(0.9, "softmax confidence needed to re-pair a label", **UNIT),
    },
    "synergy": {
        "epochs": opt(10, low=1, **SAFE),
        "batch_size": opt(128, low=2),
        "m_per_cluster": opt(4, "samples per cluster in a batch, balanced over domains", low=1),
        "lr_backbone": opt(0.001, "5e-6 for pretrained backbones (paper)", low=0, **SAFE),
        "lr_head": opt(0.001, "fusion, synergy and projection heads (paper: 5e-4)", low=0, **SAFE),
        "weight_decay": opt(0.0001, low=0),
        # one weight per registered loss term, declared by the term itself
        "loss_weights": {name: opt(term.default_weight, term.help, low=0) for name, term in LOSS_TERMS.items()},
        "label_smoothing": opt(0.1, "epsilon of L_i2tce", **UNIT),
        "prototype_momentum": opt(0.9, "m of the EMA prototypes", **UNIT),
        "prototype_temperature": opt(0.05, "tau_p of L_pce", low=0, low_open=True),
        "instance_temperature": opt(0.1, low=0, low_open=True),
        "instance_within_domain": opt(True, "L_inst negatives from the anchor's own domain only"),
        "miner_threshold": opt(0.5, "DomainPromptMiner confidence threshold", **UNIT),
        "min_steps": opt(0, "run more epochs if needed to reach this many optimizer steps (small datasets); 0 = off",
                       low=0),
        "checkpoint_every": opt(1, "save a resumable checkpoint every N synergy epochs", low=1, **SAFE),
    },
    "augment": {
        "crop_scale": opt([0.6, 1.0], "random resized crop area range"),
        "rotation": opt(15.0, "max rotation, degrees", low=0, high=180),
        "translate": opt(0.1, "max translation, fraction of the image", **UNIT),
        "hflip": opt(False, "horizontal flips (off for digits)"),
        "brightness": opt(0.3, "colour jitter strengths", **UNIT),
        "contrast": opt(0.3, **UNIT),
        "saturation": opt(0.0, "saturation jitter strength (colour images)", **UNIT),
        "invert_p": opt(0.0, "probability of inverting a view (light-on-dark vs dark-on-light renderings)", **UNIT),
        "grayscale_p": opt(0.0, "probability of converting a view to grayscale", **UNIT),
        "morphology_p": opt(0.0, "probability of a 3x3 dilation or erosion (stroke width; line drawings, digits)",
                          **UNIT),
        "elastic_alpha": opt(0.0, "elastic distortion strength in pixels (handwriting); 0 = off", low=0),
        "elastic_sigma": opt(4.0, "smoothing of the elastic displacement field, pixels", low=0, low_open=True),
        "amplitude_mix_p": opt(0.0, "probability of mixing a view's Fourier amplitude with another image's (texture, "
                             "background)", **UNIT),
        "amplitude_mix_ratio": opt(1.0, "the other image's weight is drawn from U(0, ratio)", low=0, high=1,
                                 low_open=True),
    },
    "eval": {
        "ks": opt([1, 5, 15], "P@k cut-offs (DomainNet: [50, 100, 200])", **SAFE),
        "every": opt(2, "evaluate every N synergy epochs (and always at the end)", low=0, **SAFE),
        "knn": opt("auto", "auto (faiss when installed) | faiss | torch", choices=("auto", "faiss", "torch"), **SAFE),
        "center_per_domain": opt(True, "subtract each domain's mean embedding before retrieval (uses domain ids "
                               "only); applied to every starting point too", **SAFE),
        "zero_shot": opt("auto", "report the CLIP's zero-shot retrieval as a starting point (uses class names): auto "
                       "(when clip_pretrained is set) | true | false",
                       check=lambda v: v == "auto" or isinstance(v, bool),
                       accepts='true, false or "auto" (when model.clip_pretrained is set)', **SAFE),
        "map_at_all": opt(True, **SAFE),
        "batch_size": opt(512, "images per embedding batch and queries per retrieval block (memory ~ 40 x this x "
                        "gallery size bytes)", low=1, **SAFE),
        "plots": opt(True, "retrieval grids and t-SNE in the output dir", **SAFE),
        "tsne_max_points": opt(2000, low=2, **SAFE),
    },
    "accelerate": {
        "mixed_precision": opt("no", "no | fp16 | bf16", choices=("no", "fp16", "bf16"), **SAFE),
        "gradient_accumulation_steps": opt(1, low=1),
        "log_with": opt("auto", "auto (tensorboard when installed, else csv) | tensorboard | csv | none",
                      choices=("auto", "tensorboard", "csv", "none"), **SAFE),
    },
}
SECTION_HELP = {
    "warmup": "the warm-up: instance-contrastive training for runs without pretrained weights",
    "cluster": "the clustering after the warm-up and every re-clustering (ClusterPseudoLabeler)",
    "prompts": "the prompts stage: domain prompts learned with frozen CLIP (text prior)",
    "synergy": "the synergy stage: the text-phase synergy network (TPSNet) trained on pseudo-labels",
    "synergy.loss_weights": "weight of each loss term; 0 = the term is off",
    "augment": "batched augmentations on the model's device",
}
YAML_HEADER = ("# Every option of the TPSNet trainer, with its default. Config files (configs/*.yaml) override\n"
               "# a subset; `--set section.key=value` overrides anything; unknown keys are an error.\n"
               "# Generated from tpsnet_plugin/training/options.py by its write_yaml(); edit the options there.\n")


def iter_options(section: Mapping[str, Any] = OPTIONS, prefix: str = "") -> Iterator[tuple[str, Option]]:
    """``(path, option)`` for every option, in declaration order."""
    for key, value in section.items():
        if isinstance(value, Option):
            yield f"{prefix}{key}", value
        else:
            yield from iter_options(value, f"{prefix}{key}.")


def defaults(section: Mapping[str, Any] = OPTIONS) -> dict[str, Any]:
    """The nested default config (fresh copies of mutable defaults)."""
    return {key: (copy.deepcopy(value.default) if isinstance(value, Option) else defaults(value))
            for key, value in section.items()}


def resume_safe_paths() -> tuple[str, ...]:
    """The options a resume may change."""
    return tuple(path for path, option in iter_options() if option.resume_safe)


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def render_yaml() -> str:
    """The commented ``default_config.yaml``: every option, its default and its help."""
    lines = [YAML_HEADER.rstrip("\n")]

    def section(entries: Mapping[str, Any], prefix: str, indent: int) -> None:
        for key, value in entries.items():
            path = f"{prefix}{key}"
            if isinstance(value, Option):
                line = f"{' ' * indent}{key}: {_scalar(value.default)}"
                help_text = value.help
            else:
                if indent == 0:
                    lines.append("")
                line = f"{' ' * indent}{key}:"
                help_text = SECTION_HELP.get(path, "")
            lines.append(f"{line:<32} # {help_text}" if help_text else line)
            if not isinstance(value, Option):
                section(value, path + ".", indent + 2)

    section(OPTIONS, "", 0)
    return "\n".join(lines) + "\n"


def write_yaml() -> Path:
    """Write :func:`render_yaml` to the ``default_config.yaml`` beside this module (after editing :data:`OPTIONS`)."""
    target = Path(__file__).with_name("default_config.yaml")
    target.write_text(render_yaml())
    return target
