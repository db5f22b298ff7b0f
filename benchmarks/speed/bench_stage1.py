"""Stage-1 epoch (domain prompts from cached CLIP features) vs a stage-2 epoch, on Digits.

Data: Digits handwritten-mnist + printed with the ``configs/digits.yaml`` settings (28 px,
small_cnn RGB and phase networks, batch 128 with 4 per cluster, C = 10, D = 2).

- stage 1, ``tpsnet-tiny-clip``: ``PromptStage.train_epoch`` (``DomainPromptLearner``
  encodes all D*C prompts each step, ``PromptContrastiveLoss`` against a batch of 256 cached,
  normalised CLIP image features, Adam) over one epoch, features cached by the trainer;
- stage 1, ``ViT-B-16`` with ``pretrained=None`` (random weights): the same loop with the
  ViT-B-16 text tower; its cached image features are random unit vectors (their values do not
  change the cost). One ViT-B-16 epoch takes minutes on 2 cores, so it is the median step time x
  steps per epoch (extrapolated, labelled so); the one-off cost of caching the ViT-B-16 image
  features is timed separately per image;
- stage 2: ``SynergyStage.train_epoch`` (``PseudoLabelSampler`` batches, two augmented views,
  the loss table, backward, Adam), without the end-of-epoch hooks (re-clustering, evaluation,
  checkpoint).
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.speed.bench_stage1 [--quick] [--out FILE]``.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tpsnet_plugin  # noqa: F401
from benchmarks._common import PeakRSS, format_table, measure, parse_args, write_json
from tpsnet_plugin.losses import PromptContrastiveLoss
from tpsnet_plugin.text_prior import TINY_CLIP_MODEL, DomainPromptLearner
from tpsnet_plugin.training import PromptStage, SynergyStage, TPSNetTrainer, load_config
from tpsnet_plugin.utils import encode_domain_labels

ROOT = Path(__file__).resolve().parents[2]


def stage1_steps(learner, features, domains, labels, batch_size: int, lr: float,
                 max_steps: int | None = None) -> tuple[list[float], float]:
    """``PromptStage.train_epoch`` over one epoch, or over the first ``max_steps`` batches of the images
    (fewer images, the same step); (losses, seconds)."""
    if max_steps is not None:
        features, domains, labels = (t[:max_steps * batch_size] for t in (features, domains, labels))
    stage = PromptStage(epochs=1, batch_size=batch_size, lr=lr, repair_every=0, repair_threshold=1.0)
    loss_fn = PromptContrastiveLoss(logit_scale=learner.logit_scale)
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=lr)
    combined = encode_domain_labels(domains, labels, learner.num_clusters)
    t0 = time.perf_counter()
    losses = stage.train_epoch(learner, loss_fn, optimizer, features, combined, torch.Generator().manual_seed(0))
    return losses, time.perf_counter() - t0


def stage2_epoch(trainer: TPSNetTrainer, stage: SynergyStage) -> int:
    """``SynergyStage.train_epoch`` (no re-clustering, evaluation or checkpoint); returns the steps."""
    sampler = stage.sampler(trainer.stage_context)
    stage.train_epoch(trainer.stage_context, sampler)
    return len(sampler)


def main() -> None:
    args = parse_args("bench_stage1", __doc__.splitlines()[0])
    subset = 60 if args.quick else None
    repeats = 1 if args.quick else 3
    vit_steps = 1 if args.quick else 3
    # --quick swaps ViT-B-16 for the tiny config so the smoke test stays fast
    big_clip = TINY_CLIP_MODEL if args.quick else "ViT-B-16"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(ROOT / "configs" / "digits.yaml", output_dir=tmp,
                             data={"subset_per_domain": subset},
                             accelerate={"log_with": "none"}, eval={"plots": False})
        trainer = TPSNetTrainer(config)
        stage1_cfg, stage2_cfg = config["prompts"], config["synergy"]
        n = len(trainer.data.dataset)
        domains = trainer.data.domains
        trainer.labelling.cluster(trainer.embedder(synergy=False))
        labels = trainer.state.labels
        learner = trainer.networks.prompt_learner
        features = F.normalize(trainer.embedder(encoder=learner.encode_images, desc="CLIP"), dim=-1)
        batch_size = int(stage1_cfg["batch_size"])
        steps_per_epoch = math.ceil(n / batch_size)

        rows, results = [], {}
        tiny = measure(lambda: stage1_steps(learner, features, domains, labels, batch_size,
                                            stage1_cfg["lr"]), repeats, warmup=1)
        tiny_losses, _ = tiny.pop("value")
        tiny["step_median_s"] = tiny["median_s"] / len(tiny_losses)
        tiny["epoch_s"], tiny["extrapolated"] = tiny["median_s"], False
        results["stage 1, tpsnet-tiny-clip"] = tiny

        with torch.no_grad():
            trainer.model.set_text_features(F.normalize(learner().float(), dim=-1))
        trainer.labelling.init_prototypes(trainer.embedder())
        synergy = next(stage for stage in trainer.stages if isinstance(stage, SynergyStage))
        trainer.setup.stage_model.train()
        s2 = measure(lambda: stage2_epoch(trainer, synergy), 1, warmup=0 if args.quick else 1)
        s2_steps = s2.pop("value")
        s2["step_median_s"] = s2["median_s"] / s2_steps
        s2["epoch_s"], s2["extrapolated"] = s2["median_s"], False
        results["stage 2 (digits.yaml)"] = s2

        vit = DomainPromptLearner(big_clip, pretrained=None, num_domains=len(trainer.data.domain_names),
                                  num_clusters=trainer.data.num_clusters)
        vit_features = F.normalize(torch.randn(n, vit.embed_dim,
                                               generator=torch.Generator().manual_seed(0)), dim=-1)
        stage1_steps(vit, vit_features, domains, labels, batch_size, stage1_cfg["lr"], 1)
        with PeakRSS() as rss:
            vit_times = [stage1_steps(vit, vit_features, domains, labels, batch_size, stage1_cfg["lr"], 1)[1]
                         for _ in range(vit_steps)]
        step = statistics.median(vit_times)
        results[f"stage 1, {big_clip} (random weights)"] = {
            "step_median_s": step, "times_s": vit_times, "repeats": len(vit_times), "warmup": 1,
            "epoch_s": step * steps_per_epoch, "extrapolated": True,
            "extra_peak_mib": rss.extra_mib}
        images = torch.rand(8 if args.quick else 32, 3, 28, 28)
        cache = measure(lambda: vit.encode_images(images), 1, warmup=1)
        cache.pop("value")
        results["image-feature caching (one-off, per image)"] = {
            "per_image_s": cache["median_s"] / len(images), "images": len(images),
            "whole_dataset_s": cache["median_s"] / len(images) * n}

    s2_epoch = results["stage 2 (digits.yaml)"]["epoch_s"]
    for name, r in results.items():
        if "epoch_s" not in r:
            continue
        r["ratio_to_stage2_epoch"] = r["epoch_s"] / s2_epoch
        steps = s2_steps if name.startswith("stage 2") else steps_per_epoch
        how = (f"{r['repeats']} steps, x{steps_per_epoch}" if r["extrapolated"]
               else f"{r['repeats']} epoch(s)")
        rows.append([name, how, steps, r["step_median_s"], r["epoch_s"],
                     r["extra_peak_mib"], r["ratio_to_stage2_epoch"]])
    cache = results["image-feature caching (one-off, per image)"]
    headers = ["case", "timed", "steps/epoch", "median s/step", "s/epoch", "extra peak MiB",
               "/ stage-2 epoch"]
    print(format_table(headers, rows))
    print(f"one-off {big_clip} image-feature caching: {cache['per_image_s'] * 1000:.1f} ms/image "
          f"({cache['whole_dataset_s']:.0f} s for the {n} images)")
    write_json(args.out, {
        "benchmark": "bench_stage1",
        "quick": args.quick,
        "setup": {"images": n, "domains": trainer.data.domain_names, "num_clusters": trainer.data.num_clusters,
                  "stage1_batch": batch_size, "stage2_batch": int(stage2_cfg["batch_size"]),
                  "timing": "tiny-clip: median of whole epochs after 1 warm-up epoch; stage 2: "
                            "one epoch after 1 warm-up epoch; ViT-B-16: median of single-step "
                            "epochs x steps per epoch (extrapolated), after 1 warm-up step",
                  "memory": "extra peak RSS, background sampler (benchmarks/_common.py)"},
        "headers": headers,
        "rows": rows,
        "results": results,
    })


if __name__ == "__main__":
    main()
