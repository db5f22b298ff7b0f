"""Pretrain an open_clip model on offline image-caption corpora (no pretrained weights can be downloaded).

Trains with open_clip's own ``ClipLoss`` under Hugging Face Accelerate on one of the corpora of
:data:`CORPORA` (``--corpus``):

* ``icons``: the ``train`` split of the icon corpus (``scripts/build_icons.py``;
  ``tpsnet_plugin.data.icons.load_manifest``);
* ``digits_disjoint``: ``icons`` plus the Digits domains of :data:`DIGITS_DOMAINS` captioned by
  their class ("seven", "7", "the number seven", ...): a CLIP that knows the digits without ever
  seeing the evaluation pair ``handwritten-mnist-half`` ↔ ``mnist-m``;
* ``artwork``: ``icons`` plus the openclipart and Tux Paint artwork corpus
  (``scripts/build_artwork.py``); the held-out icon themes are never seen.

Per image:

* caption: a random template of ``TEMPLATES`` filled with one of the image's captions;
* augmentation, batched on tensors: random resized crop, horizontal flip (not for captions
  with a direction word such as "left" or "next"), brightness/contrast/saturation jitter,
  random grayscale, optionally random two-colour tinting (``--tint-p``) and inversion
  (``--invert-p``); then the same antialiased resize + CLIP normalisation as evaluation;
* theme-balanced sampling: a theme is drawn with probability proportional to
  (its image count) ** ``--theme-power`` (0 = every theme equally often, 1 = every image equally
  often; papirus alone is 48 % of the training images), then an image of that theme uniformly;
  one image per icon name in a batch (the same name in two themes would be a false negative);
* resumable: ``accelerator.save_state`` every ``--save-every`` steps into
  ``<output-dir>/checkpoint`` (written to a temporary folder, then renamed), and ``--resume``
  continues from it exactly as an uninterrupted run would (model, optimizer, schedule, sampler
  and augmentation streams are all in the checkpoint); the final weights go to
  ``<output-dir>/model.safetensors`` (its metadata: model, corpus, training themes) with a
  ``train_log.json`` (loss curve, settings, wall time);
* safe to resume: every file of the checkpoint is read without unpickling anything before
  Accelerate loads it, and a checkpoint of another run (``--model``, ``--corpus``, corpus content,
  ``--image-size`` or run length) is refused before loading. User errors (a damaged checkpoint,
  another run's checkpoint, a batch larger than the corpus's names, ...) print one line
  ``pretrain_clip: error: ...`` and exit with status 2.

Example::

    nice -n 10 python -m scripts.pretrain_clip --output-dir runs/icons_clip --steps 6000
    python -m scripts.pretrain_clip --model tpsnet-cnn-clip --corpus digits_disjoint --output-dir runs/digits_clip
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import tpsnet_plugin  # noqa: F401  (registers tpsnet-tiny-clip)

# isort: split
import open_clip
from open_clip.loss import ClipLoss

from scripts.icons_clip import load_images
from tpsnet_plugin.data.digits import CLASSES as DIGIT_CLASSES
from tpsnet_plugin.data.digits import DigitsDomain
from tpsnet_plugin.data.icons import TEMPLATES, IncompleteCorpusError, cache_dir, default_cache_dir, load_manifest
from tpsnet_plugin.text_prior import TINY_CLIP_MODEL
from tpsnet_plugin.text_prior.domain_prompt_learner import clip_preprocess
from tpsnet_plugin.text_prior.packaged_weights import PackagedWeightsError
from tpsnet_plugin.training.checkpoint import META, CheckpointError, check_weights_file, read_checkpoint_meta
from tpsnet_plugin.utils.cli import positive_int

CORPORA = ("icons", "digits_disjoint", "artwork")
# Digits domains a digits CLIP may see: every domain but the evaluation pair handwritten-mnist(-half) <-> mnist-m.
DIGITS_DOMAINS = ("printed", "handwriting-fonts", "handwritten-uci")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIRECTION_WORDS = frozenset({"left", "right", "next", "previous", "prev", "forward", "back", "backward",
                             "undo", "redo", "rtl", "ltr", "first", "last", "start", "end", "rewind",
                             "indent", "unindent", "justify", "east", "west", "align", "ff", "rew"})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_CLIP_MODEL, help="open_clip model name")
    parser.add_argument("--corpus", choices=CORPORA, default="icons", help="what to train on (see the module doc)")
    parser.add_argument("--cache-dir", default=None, help=f"icon corpus folder (default {default_cache_dir()})")
    parser.add_argument("--artwork-dir", default=None,
                        help="artwork corpus folder for --corpus artwork (default: build_artwork.py's)")
    parser.add_argument("--output-dir", required=True, help="checkpoints, final weights and log")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default 2000)")
    length.add_argument("--epochs", type=float, default=None,
                        help="run length in passes over the training images (steps = epochs * N / batch)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps, then cosine decay")
    parser.add_argument("--image-size", type=positive_int, default=64,
                        help="size the corpus images are loaded at (the crop works at this size; the "
                             "model's own input size comes from its config)")
    parser.add_argument("--tint-p", type=float, default=0.0,
                        help="probability of recolouring a view with two random colours (ink and paper)")
    parser.add_argument("--invert-p", type=float, default=0.0, help="probability of inverting a view")
    parser.add_argument("--theme-power", type=float, default=0.5,
                        help="theme sampling probability ~ count ** power (0: uniform over themes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=positive_int, default=500, help="checkpoint interval (steps)")
    parser.add_argument("--log-every", type=positive_int, default=50)
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def digit_captions(label: int) -> tuple[str, ...]:
    """The captions of a digit class: its word and numeral, alone and as "the number ..."."""
    word, numeral = NUMBER_WORDS[label], DIGIT_CLASSES[label]
    return (word, numeral, f"the number {word}", f"the number {numeral}", f"the digit {numeral}")


def pick_caption(captions: tuple[str, ...], rng: random.Random) -> str:
    """One of an image's captions; a single caption draws no random number (icon runs stay reproducible)."""
    return captions[0] if len(captions) == 1 else rng.choice(captions)


class Corpus:
    """Training images (uint8 N x 3 x S x S) with, per image, its captions (one is drawn per use),
    its theme or domain (for the sampler), its name (one image per name in a batch) and whether a
    horizontal flip keeps its meaning."""

    def __init__(self, images: torch.Tensor, captions: list[tuple[str, ...]], themes: list[str],
                 names: list[str], flippable: torch.Tensor) -> None:
        self.images, self.captions, self.themes, self.names, self.flippable = images, captions, themes, names, flippable

    def __len__(self) -> int:
        return len(self.captions)

    @classmethod
    def from_manifest(cls, cache_dir, image_size: int) -> Corpus:
        """The ``train`` rows of an icon-format corpus (icons or artwork)."""
        records = [r for r in load_manifest(cache_dir) if r.split == "train"]
        captions = [(r.caption,) for r in records]
        flippable = torch.tensor([not (set(r.caption.split()) & DIRECTION_WORDS) for r in records])
        return cls(load_images([r.path for r in records], size=image_size), captions,
                   [r.theme for r in records], [r.name for r in records], flippable)

    @classmethod
    def from_digits(cls, domains, image_size: int) -> Corpus:
        """Digits domains as RGB images of ``image_size``, captioned by their class (never flipped)."""
        images, captions, themes, names = [], [], [], []
        for domain in domains:
            dataset = DigitsDomain(domain, image_size=image_size)
            images.append((dataset.images_tensor() * 255).round().to(torch.uint8))
            captions += [digit_captions(int(label)) for label in dataset.labels]
            themes += [domain] * len(dataset)
            names += [f"digit {int(label)}" for label in dataset.labels]
        return cls(torch.cat(images), captions, themes, names, torch.zeros(len(captions), dtype=torch.bool))

    @classmethod
    def concat(cls, parts: list[Corpus]) -> Corpus:
        return cls(torch.cat([p.images for p in parts]), [c for p in parts for c in p.captions],
                   [t for p in parts for t in p.themes], [n for p in parts for n in p.names],
                   torch.cat([p.flippable for p in parts]))

    def fingerprint(self) -> str:
        """Which images, in which order, with which captions: a checkpoint's sampler state and
        image indices mean nothing for another corpus (another build, another holdout)."""
        digest = hashlib.sha256()
        for theme, name, captions in zip(self.themes, self.names, self.captions):
            digest.update("\t".join((theme, name, *captions, "\n")).encode())
        return f"{len(self)} images of {len(set(self.themes))} themes or domains, sha256 {digest.hexdigest()[:12]}"


def load_corpus(name: str, image_size: int, icons_dir=None, artwork_dir=None) -> Corpus:
    """The training corpus ``name`` of :data:`CORPORA`, images at ``image_size`` px."""
    parts = [Corpus.from_manifest(icons_dir, image_size)]
    if name == "digits_disjoint":
        parts.append(Corpus.from_digits(DIGITS_DOMAINS, image_size))
    elif name == "artwork":
        artwork_dir = artwork_dir if artwork_dir is not None else cache_dir("artwork")  # build_artwork.py's default
        parts.append(Corpus.from_manifest(artwork_dir, image_size))
    elif name != "icons":
        raise ValueError(f"unknown corpus {name!r}: choose one of {CORPORA}")
    return Corpus.concat(parts)


class ThemeBalancedSampler:
    """Batches of image indices: theme ~ count ** power, then a uniform image of the theme,
    one image per icon name. Holds its own numpy generator (checkpointed with the run)."""

    def __init__(self, themes: list[str], names: list[str], power: float, seed: int):
        self.names = np.asarray(names)
        order = sorted(set(themes))
        self.by_theme = [np.flatnonzero(np.asarray(themes) == theme) for theme in order]
        counts = np.array([len(indices) for indices in self.by_theme], dtype=np.float64)
        weights = counts ** power
        self.theme_probs = weights / weights.sum()
        self.themes = order
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> np.ndarray:
        chosen: list[int] = []
        seen: set[str] = set()
        while len(chosen) < size:
            theme_ids = self.rng.choice(len(self.by_theme), size=2 * size, p=self.theme_probs)
            for theme_id in theme_ids:
                indices = self.by_theme[theme_id]
                index = int(indices[self.rng.integers(len(indices))])
                if self.names[index] not in seen:
                    seen.add(self.names[index])
                    chosen.append(index)
                    if len(chosen) == size:
                        break
        return np.asarray(chosen)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class Progress:
    """The step counter and loss curve, checkpointed by Accelerate (register_for_checkpointing)."""

    def __init__(self, total_steps: int):
        self.step = 0
        self.total_steps = total_steps  # the learning-rate schedule's length
        self.curve: list[list[float]] = []  # [step, mean loss over the last log interval]
        self.elapsed = 0.0

    def state_dict(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps, "curve": self.curve, "elapsed": self.elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.curve, self.elapsed = int(state["step"]), list(state["curve"]), float(state["elapsed"])
        self.total_steps = int(state["total_steps"])


class RandomStreams:
    """The augmentation and caption-template streams, checkpointed with the run, so a resumed run
    draws exactly what an uninterrupted one would."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.python = random.Random(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "python": self.python.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        version, internal, gauss = state["python"]
        self.python.setstate((version, tuple(internal), gauss))


def augment(images: torch.Tensor, flippable: torch.Tensor, generator: torch.Generator,
            tint_p: float = 0.0, invert_p: float = 0.0) -> torch.Tensor:
    """uint8 B x 3 x H x W -> float [0, 1], augmented, same size.

    ``tint_p``: probability of recolouring a view as a ramp between two random colours (its
    luminance picks the point on the ramp): a drawing in any ink on any paper. ``invert_p``:
    probability of inverting a view (light on dark vs dark on light). Both draw no random number
    when 0, so runs without them are unchanged.
    """
    x = images.float() / 255.0
    b, device = x.shape[0], x.device

    def uniform(low, high, shape=(b,)):
        return low + (high - low) * torch.rand(shape, generator=generator).to(device)

    # random resized crop: area share in [0.5, 1], aspect ratio in [3/4, 4/3], as an affine grid
    area = uniform(0.5, 1.0)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * uniform(-1.0, 1.0)
    ty = (1 - sy) * uniform(-1.0, 1.0)
    flip = (torch.rand(b, generator=generator).to(device) < 0.5) & flippable.to(device)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = sx * torch.where(flip, -1.0, 1.0)
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # border padding: icons sit on white backgrounds, a crop never reaches past the image anyway
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # colour jitter: brightness, contrast, saturation (each x [0.7, 1.3]), random grayscale 20 %
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = x * uniform(0.7, 1.3).view(b, 1, 1, 1)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * uniform(0.7, 1.3).view(b, 1, 1, 1) + mean
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * uniform(0.7, 1.3).view(b, 1, 1, 1) + gray
    to_gray = (torch.rand(b, generator=generator).to(device) < 0.2).view(b, 1, 1, 1)
    x = torch.where(to_gray, gray.expand_as(x), x)
    x = x.clamp(0.0, 1.0)
    if tint_p > 0:
        low, high = (torch.rand(b, 3, 1, 1, generator=generator).to(device) for _ in range(2))
        luminance = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        tinted = low + (high - low) * luminance
        x = torch.where((torch.rand(b, generator=generator).to(device) < tint_p).view(b, 1, 1, 1), tinted, x)
    if invert_p > 0:
        x = torch.where((torch.rand(b, generator=generator).to(device) < invert_p).view(b, 1, 1, 1), 1 - x, x)
    return x


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class PretrainError(ValueError):
    """A user error this script finds (a setting that cannot work, another run's checkpoint)."""


# Errors that are the user's to fix: one line ``pretrain_clip: error: ...``, exit status 2 (see main).
USER_ERRORS = (PretrainError, CheckpointError, IncompleteCorpusError, PackagedWeightsError, OSError)


def save_checkpoint(accelerator, output_dir: Path, meta: dict | None = None) -> None:
    """save_state into a temporary folder, then swap it in (a crash leaves the old one intact).

    ``meta`` (the run's :func:`run_facts`) is written as the checkpoint's ``checkpoint.json``.
    """
    final, tmp, old = output_dir / "checkpoint", output_dir / "checkpoint.tmp", output_dir / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if meta is not None:
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / "COMPLETE").write_text("ok\n")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def find_checkpoint(output_dir: Path) -> Path | None:
    for candidate in (output_dir / "checkpoint", output_dir / "checkpoint.old"):
        if (candidate / "COMPLETE").is_file():
            return candidate
    return None


def run_facts(args: argparse.Namespace, total_steps: int, corpus: Corpus) -> dict:
    """What a checkpoint must share with the command that resumes it (its ``checkpoint.json``)."""
    return {"model": args.model, "corpus": args.corpus, "image_size": args.image_size,
            "total_steps": total_steps, "corpus_content": corpus.fingerprint()}


RUN_FACT_NAMES = {"model": "--model", "corpus": "--corpus", "image_size": "--image-size",
                  "total_steps": "run length in steps (--steps/--epochs, --batch-size)",
                  "corpus_content": "corpus (--cache-dir/--artwork-dir)"}


def check_same_run(checkpoint: Path, facts: dict) -> None:
    """Refuse a checkpoint of another run, before anything is loaded from it.

    Checkpoints written before they recorded their run (no ``checkpoint.json``) pass; their run
    length is still checked once loaded.

    Raises:
        PretrainError: Naming every difference (model, corpus, corpus content, image size, run length).
        CheckpointError: The checkpoint's ``checkpoint.json`` is unreadable.
    """
    if not (checkpoint / META).is_file():
        return
    saved = read_checkpoint_meta(checkpoint)
    differences = [f"{RUN_FACT_NAMES[key]} {saved.get(key)!r} there, {value!r} now"
                   for key, value in facts.items() if saved.get(key) != value]
    if differences:
        raise PretrainError(f"{checkpoint} belongs to another run ({'; '.join(differences)}): resume with the "
                            "settings and corpus it was made with, or start a new run in another --output-dir")


def load_run_checkpoint(accelerator, checkpoint: Path) -> None:
    """``accelerator.load_state(checkpoint)``, after reading each of its files once without unpickling
    anything (Accelerate unpickles the registered objects' files in full; it reads the random
    states weights-only itself, and goes on without them when they cannot be read).

    Raises:
        CheckpointError: A file is damaged, truncated or holds pickled code (naming it), or the
            checkpoint does not load into this model (another ``--model``, written by another version).
    """
    older = next((c for c in (checkpoint.parent / "checkpoint", checkpoint.parent / "checkpoint.old")
                  if c != checkpoint and (c / "COMPLETE").is_file()), None)
    fix = (f"remove the folder {checkpoint} to resume from {older}" if older
           else f"remove the folder {checkpoint} to start again from step 0")
    fix += ", or start a new run in another --output-dir"
    for path in sorted(checkpoint.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".pkl") and not path.name.startswith("random_states"):
            check_weights_file(path, fix)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # a state dict of another model, or of another version of this script
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"cannot resume from {checkpoint} ({type(error).__name__}: {first}): it was made with "
                              f"another --model or is damaged; {fix}") from error


def main(argv=None) -> int:
    """Run the script; a user error prints one line ``pretrain_clip: error: ...`` on stderr and returns 2."""
    args = parse_args(argv)
    try:
        return train(args)
    except USER_ERRORS as error:
        print(f"pretrain_clip: error: {error}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    if not args.resume and find_checkpoint(output_dir) is not None:
        raise PretrainError(f"{output_dir} already holds a checkpoint: pass --resume to continue it "
                            "or use another --output-dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator()
    set_seed(args.seed)

    start = time.time()
    corpus = load_corpus(args.corpus, args.image_size, args.cache_dir, args.artwork_dir)
    images, captions, flippable = corpus.images, corpus.captions, corpus.flippable
    distinct_names = len(set(corpus.names))
    accelerator.print(f"{len(corpus)} training images ({len(set(corpus.themes))} themes or domains, "
                      f"{distinct_names} names) loaded in {time.time() - start:.1f} s")
    if args.batch_size > distinct_names:
        # a batch holds one image per name: with fewer names than the batch it could never fill
        raise PretrainError(f"--batch-size {args.batch_size} is larger than the {distinct_names} distinct names "
                            "of the corpus (a batch holds one image per name): lower --batch-size")

    if args.steps is None and args.epochs is None:
        args.steps = 2000
    total_steps = args.steps or max(1, round(args.epochs * len(corpus) / args.batch_size))
    facts = run_facts(args, total_steps, corpus)
    checkpoint = find_checkpoint(output_dir) if args.resume else None
    if checkpoint is not None:
        check_same_run(checkpoint, facts)

    model, _, _ = open_clip.create_model_and_transforms(args.model)
    tokenizer = open_clip.get_tokenizer(args.model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "logit_scale" in name or "positional" in name
         or "class_embedding" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98),
                                  eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, total_steps, args.warmup))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    sampler = ThemeBalancedSampler(corpus.themes, corpus.names, args.theme_power, args.seed + accelerator.process_index)
    progress = Progress(total_steps)
    streams = RandomStreams(args.seed)
    accelerator.register_for_checkpointing(sampler, progress, streams)

    if args.resume and checkpoint is None:
        accelerator.print(f"--resume: no finished checkpoint in {output_dir}, starting from step 0")
    elif checkpoint is not None:
        load_run_checkpoint(accelerator, checkpoint)
        if progress.total_steps != total_steps:  # a checkpoint without checkpoint.json (see check_same_run)
            # the cosine schedule (and the optimizer's current learning rate) follow the run length
            raise PretrainError(f"--resume: {checkpoint} belongs to a run of {progress.total_steps} steps, "
                                f"not {total_steps}: resume with the same --steps/--epochs and --batch-size, "
                                "or start a new run in another --output-dir")
        accelerator.print(f"resumed from {checkpoint} at step {progress.step}")

    loss_fn = ClipLoss(rank=accelerator.process_index, world_size=accelerator.num_processes)
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    bar = tqdm(total=total_steps, initial=progress.step, desc="pretrain", disable=not accelerator.is_main_process,
               dynamic_ncols=True, mininterval=5 if not sys.stderr.isatty() else 0.1)
    window: list[float] = []
    last = time.time()
    while progress.step < total_steps:
        indices = sampler.batch(args.batch_size)
        batch = augment(images[indices], flippable[indices], streams.generator, args.tint_p,
                        args.invert_p).to(accelerator.device)
        batch = clip_preprocess(unwrapped, batch)
        texts = [streams.python.choice(TEMPLATES).format(pick_caption(captions[i], streams.python))
                 for i in indices]
        tokens = tokenizer(texts).to(accelerator.device)
        image_features, text_features, logit_scale = model(batch, tokens)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            unwrapped.logit_scale.clamp_(0, math.log(100))
        progress.step += 1
        now = time.time()
        progress.elapsed += now - last
        last = now
        window.append(float(loss.detach()))
        bar.update(1)
        if progress.step % args.log_every == 0 or progress.step == total_steps:
            progress.curve.append([progress.step, float(np.mean(window))])
            bar.set_postfix(loss=f"{np.mean(window):.3f}", scale=f"{unwrapped.logit_scale.exp().item():.1f}")
            if not sys.stderr.isatty():
                accelerator.print(f"step {progress.step}/{total_steps} loss {np.mean(window):.4f} "
                                  f"logit_scale {unwrapped.logit_scale.exp().item():.1f} "
                                  f"{progress.elapsed / progress.step:.3f} s/step", flush=True)
            window = []
        if progress.step % args.save_every == 0 and progress.step < total_steps:
            save_checkpoint(accelerator, output_dir, facts)
            last = time.time()
    bar.close()
    save_checkpoint(accelerator, output_dir, facts)
    if accelerator.is_main_process:
        state = {k: v.detach().cpu().contiguous() for k, v in unwrapped.state_dict().items()}
        tmp = output_dir / "model.safetensors.tmp"
        # eval_clip.py reads the model (another --model is named) and the training themes (a corpus that
        # holds one of them out would score seen themes as unseen)
        save_file(state, str(tmp), metadata={"model": args.model, "steps": str(progress.step), "corpus": args.corpus,
                                             "train_themes": json.dumps(sorted(set(corpus.themes)))})
        os.replace(tmp, output_dir / "model.safetensors")
        log = {"model": args.model, "settings": vars(args), "total_steps": total_steps,
               "corpus": args.corpus, "train_images": len(corpus),
               "images_per_theme": {t: corpus.themes.count(t) for t in sorted(set(corpus.themes))},
               "train_seconds": round(progress.elapsed, 1),
               "loss_curve": progress.curve,
               "theme_probabilities": dict(zip(sampler.themes, map(float, sampler.theme_probs)))}
        (output_dir / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        accelerator.print(f"done: {progress.step} steps, {progress.elapsed:.0f} s; weights in "
                          f"{output_dir / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
