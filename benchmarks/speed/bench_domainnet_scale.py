"""DomainNet-scale pipeline run: stage-2 throughput, embedding, clustering and evaluation at full size.

Data: synthetic JPEG images in DomainNet's shape, 6 domains with DomainNet's per-domain image
counts (train + test of the cleaned release: clipart 48,129, infograph 51,605, painting 72,266,
quickdraw 172,500, real 172,947, sketch 69,128; 586,575 in all) over 345 classes, 224 px. Each
image is a class pattern (an 8x8 random pattern seeded by the class, upsampled) in a domain
style (colour map, noise) plus per-image noise, written once to ``--data-dir`` and read back through
the package's folder loader with ``data.cache_in_memory: false``: DataLoader workers decode every
batch from disk, nothing is held in memory. Retrieval quality on these images means nothing; only
the costs are measured.

Model (random weights, nothing downloaded): timm ``vit_base_patch16_224`` RGB backbone, ``resnet18``
phase network, open_clip ``ViT-B-16`` prompts; bf16 autocast on a GPU.

Measured in one run, through the trainer's own code paths (``TPSNetTrainer``):

- dataset scan (folder walk, labels, fingerprint) and model build;
- embedding of every image (``trainer.embedder``): seconds, images/s, peak GPU memory;
- clustering of all images into 345 clusters per domain (``trainer.labelling.cluster``; faiss on the GPU
  when faiss-gpu sees one, else on the CPU);
- stage 2 (``SynergyStage.train_epoch``, ``--steps`` steps): median step seconds, images/s, the
  fraction of each step spent waiting for the DataLoader, and GPU utilisation sampled with NVML
  when available; the full-epoch time is extrapolated from the median step (labelled so);
- evaluation of every ordered domain pair (30 directions), P@50/100/200 and mAP@All on the run's
  device: seconds per direction and in all, peak memory.

``--quick`` is a CPU smoke variant in the same shape at small scale (DomainNet's domain sizes / 1000,
10 classes, 32 px, ``small_cnn`` networks and the tiny CLIP); the tests run it.
Run: ``HF_HUB_OFFLINE=1 python -m benchmarks.speed.bench_domainnet_scale --device cuda --amp [--quick]``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tpsnet_plugin  # noqa: F401  (torchvision fix first)
from benchmarks._common import PeakRSS, format_table, parse_args, write_json
from tpsnet_plugin.evaluation import evaluate_domains
from tpsnet_plugin.training import SynergyStage, TPSNetTrainer, load_config

ROOT = Path(__file__).resolve().parents[2]

DOMAINNET_SIZES = {"clipart": 48_129, "infograph": 51_605, "painting": 72_266,
                   "quickdraw": 172_500, "real": 172_947, "sketch": 69_128}
FULL = dict(num_classes=345, image_size=224, scale=1, steps=60, batch_size=64, eval_batch_size=512,
            model=["model.rgb_backbone=vit_base_patch16_224", "model.phase_backbone=resnet18",
                   "model.clip_model=ViT-B-16", "model.rgb_kwargs={}", "model.phase_kwargs={}"])
QUICK = dict(num_classes=10, image_size=32, scale=1000, steps=4, batch_size=40, eval_batch_size=64,
             model=["model.rgb_backbone=small_cnn", "model.phase_backbone=small_cnn",
                    "model.clip_model=tpsnet-tiny-clip", "model.rgb_kwargs={widths: [8, 16]}",
                    "model.phase_kwargs={widths: [8, 16]}"])


# ------------------------------------------------------------------------------- synthetic data
def domain_sizes(scale: int) -> dict[str, int]:
    return {name: max(1, size // scale) for name, size in DOMAINNET_SIZES.items()}


def _write_images(job: tuple[Path, str, int, int, int, int, int]) -> int:
    root, domain, domain_index, start, end, num_classes, image_size = job
    colour_map = np.random.default_rng(1000 + domain_index).uniform(0, 255, (2, 3))  # the domain
    rng = np.random.default_rng([domain_index, start])
    for i in range(start, end):
        label = i % num_classes
        pattern = np.random.default_rng(label).uniform(0, 1, (8, 8))  # the class
        weights = np.clip(pattern + rng.uniform(-0.25, 0.25, (8, 8)), 0, 1)[..., None]  # the image
        small = (weights * colour_map[0] + (1 - weights) * colour_map[1]).astype(np.uint8)
        image = Image.fromarray(small).resize((image_size, image_size), Image.BILINEAR)
        folder = root / domain / f"class_{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:06d}.jpg", quality=90)
    return end - start


def make_dataset(root: Path, num_classes: int, image_size: int, scale: int, workers: int) -> dict:
    """Write the synthetic folder dataset once (a ``complete.json`` marker names its shape)."""
    shape = {"sizes": domain_sizes(scale), "num_classes": num_classes, "image_size": image_size}
    marker = root / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()) == shape:
        return {"seconds": 0.0, "reused": True, **shape}
    start = time.perf_counter()
    chunk = 5000
    jobs = [(root, domain, index, first, min(first + chunk, size), num_classes, image_size)
            for index, (domain, size) in enumerate(shape["sizes"].items())
            for first in range(0, size, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_images, jobs))
    else:
        for job in jobs:
            _write_images(job)
    marker.write_text(json.dumps(shape))
    return {"seconds": time.perf_counter() - start, "reused": False, **shape}


# ------------------------------------------------------------------------------- measurements
class UtilisationSampler:
    """GPU utilisation (percent) sampled every 0.1 s: NVML through ``torch.cuda.utilization``,
    else ``nvidia-smi``; ``median`` is None when neither works (or on a CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[float] = []
        self.device = device
        self.read = None
        if device.type != "cuda":
            return
        try:
            torch.cuda.utilization(device)
            self.read = lambda: float(torch.cuda.utilization(device))
        except Exception:  # pynvml missing or NVML unusable
            if shutil.which("nvidia-smi"):
                index = device.index if device.index is not None else torch.cuda.current_device()
                command = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                           "--format=csv,noheader,nounits"]
                self.read = lambda: float(subprocess.run(command, capture_output=True, text=True,
                                                         check=True).stdout.strip())

    def __enter__(self) -> UtilisationSampler:
        self._stop = threading.Event()
        if self.read is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples.append(self.read())
            except (subprocess.CalledProcessError, ValueError):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.read is not None:
            self._thread.join()

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


class TimedIterable:
    """Wraps a loader: seconds waiting in ``next()`` (data) and between batches (the step)."""

    def __init__(self, iterable, device: torch.device) -> None:
        self.iterable, self.device = iterable, device
        self.data_s: list[float] = []
        self.step_s: list[float] = []

    def __iter__(self):
        iterator = iter(self.iterable)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            fetched = time.perf_counter()
            self.data_s.append(fetched - start)
            yield batch
            _synchronize(self.device)  # the step's kernels are done (the loss .item() syncs too)
            self.step_s.append(time.perf_counter() - fetched)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gpu_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(device: torch.device, fn):
    """(value, seconds, extra peak RSS MiB, peak GPU MiB) of one call."""
    _reset_peak(device)
    _synchronize(device)
    with PeakRSS(interval=0.05) as rss:
        start = time.perf_counter()
        value = fn()
        _synchronize(device)
        seconds = time.perf_counter() - start
    return value, seconds, rss.extra_mib, _peak_gpu_mib(device)


def build_config(data_dir: Path, output_dir: Path, shape: dict, amp: bool, workers: int):
    overrides = [
        "data.dataset=folder", f"data.root={data_dir}",
        f"data.domains=[{', '.join(DOMAINNET_SIZES)}]", "data.layout=folder",
        "data.classes=null", "data.num_clusters=null",
        "model.pretrained=false", "model.rgb_from_clip=false", "model.clip_pretrained=null",  # cost, not weights
        f"data.image_size={shape['image_size']}", "data.cache_in_memory=false",
        f"data.num_workers={workers}",
        *shape["model"],
        "synergy.epochs=1", f"synergy.batch_size={shape['batch_size']}",
        "eval.ks=[50, 100, 200]", "eval.map_at_all=true", f"eval.batch_size={shape['eval_batch_size']}",
        "eval.plots=false", "accelerate.log_with=none",
        "accelerate.mixed_precision=" + ("bf16" if amp else "'no'"),  # YAML reads a bare no as false
    ]
    return load_config(ROOT / "configs" / "domainnet.yaml", overrides, output_dir=str(output_dir))


def run(args) -> dict:
    shape = QUICK if args.quick else FULL
    device_name = args.device
    if device_name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU")
    if device_name == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainer's Accelerator must pick the CPU
    workers = args.workers if args.workers is not None else (0 if args.quick else min(16, os.cpu_count() or 1))
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.gettempdir()) / (
        "tpsnet_domainnet_synthetic" + ("_quick" if args.quick else ""))
    rows, report = [], {}

    made = make_dataset(data_dir, shape["num_classes"], shape["image_size"], shape["scale"], max(1, workers))
    report["synthetic_data"] = made
    rows.append(["write synthetic images", "reused" if made["reused"] else made["seconds"], None, None, None])

    with tempfile.TemporaryDirectory() as output_dir:
        config = build_config(data_dir, Path(output_dir), shape, args.amp, workers)
        trainer, seconds, rss, _ = timed(torch.device("cpu"), lambda: TPSNetTrainer(config))
        device = trainer.accelerator.device
        num_images = len(trainer.data.dataset)
        report["dataset"] = {"images": num_images, "domains": dict(zip(
            trainer.data.domain_names, np.bincount(trainer.data.domains.numpy()).tolist())),
            "classes": trainer.data.num_clusters}
        rows.append(["scan folders + build model", seconds, rss, None, None])
        report["scan_and_build_s"] = seconds

        # embedding of every image, as the clustering and evaluation passes do
        embeddings, seconds, rss, gpu = timed(device, lambda: trainer.embedder(synergy=False))
        report["embedding"] = {"seconds": seconds, "images_per_s": num_images / seconds,
                               "extra_peak_rss_mib": rss, "peak_gpu_mib": gpu}
        rows.append(["embed all images", seconds, rss, gpu, f"{num_images / seconds:.0f} img/s"])

        record, seconds, rss, gpu = timed(device, lambda: trainer.labelling.cluster(embeddings))
        report["clustering"] = {"seconds": seconds, "extra_peak_rss_mib": rss,
                                "faiss_gpu": getattr(trainer.setup.labeler.kmeans, "use_gpu", False)}
        rows.append(["cluster (k-means per domain + alignment)", seconds, rss, gpu,
                     "faiss GPU" if report["clustering"]["faiss_gpu"] else "CPU"])

        # stage 2 steps through the real epoch loop, timing data waits and steps
        stage = next(s for s in trainer.stages if isinstance(s, SynergyStage))
        trainer.labelling.init_prototypes(embeddings)
        if trainer.networks.prompt_learner is not None:
            with torch.no_grad():
                trainer.model.set_text_features(
                    torch.nn.functional.normalize(trainer.networks.prompt_learner().float(), dim=-1))
        trainer.setup.stage_model.train()
        timers: list[TimedIterable] = []
        context = trainer.stage_context
        progress = context.progress

        def timed_progress(iterable, desc):  # the epoch's first shape["steps"] batches, timed
            timers.append(TimedIterable(itertools.islice(iterable, shape["steps"]), device))
            return progress(timers[-1], desc)

        context.progress = timed_progress
        _reset_peak(device)
        with UtilisationSampler(device) as utilisation:
            stage.train_epoch(context, stage.sampler(context))
        context.progress = progress
        timer = timers[-1]
        warm = max(1, len(timer.step_s) // 5)  # drop the first steps (allocator, cuDNN autotuning)
        step_s = statistics.median(timer.step_s[warm:] or timer.step_s)
        data_s = statistics.median(timer.data_s[warm:] or timer.data_s)
        batch = shape["batch_size"]
        steps_per_epoch = math.ceil(num_images / batch)
        report["stage2"] = {
            "steps": len(timer.step_s), "batch_size": batch, "median_step_s": step_s,
            "median_data_wait_s": data_s, "data_wait_fraction": data_s / (data_s + step_s),
            "images_per_s": batch / (step_s + data_s), "gpu_utilisation_median_pct": utilisation.median,
            "peak_gpu_mib": _peak_gpu_mib(device),
            "epoch_s_extrapolated": steps_per_epoch * (step_s + data_s),
        }
        rows.append([f"stage 2 step (batch {batch}, two views)", step_s, None, report["stage2"]["peak_gpu_mib"],
                     f"{batch / (step_s + data_s):.0f} img/s, data wait {100 * data_s / (data_s + step_s):.0f}%"])
        rows.append([f"stage 2 epoch, extrapolated ({steps_per_epoch} steps)",
                     report["stage2"]["epoch_s_extrapolated"], None, None, "median step x steps"])

        # evaluation: every ordered pair, on the run's device, one direction at a time
        features = trainer.evaluator.retrieval_features(embeddings).to(device)
        labels, domains = trainer.data.true_labels, trainer.data.domains.numpy()
        ev = trainer.config["eval"]
        per_direction, metrics = {}, {}
        _reset_peak(device)
        with PeakRSS(interval=0.05) as rss_eval:
            start_all = time.perf_counter()
            for a in range(len(trainer.data.domain_names)):
                for b in range(len(trainer.data.domain_names)):
                    if a == b:
                        continue
                    start = time.perf_counter()
                    result = evaluate_domains(features, labels, domains, trainer.data.domain_names,
                                              ks=tuple(ev["ks"]), knn=ev["knn"], directions=[(a, b)],
                                              map_at_all=True, batch_size=int(ev["batch_size"]))
                    _synchronize(device)
                    name = next(iter(result))
                    per_direction[name] = time.perf_counter() - start
                    metrics[name] = result[name]
            total = time.perf_counter() - start_all
        slowest = max(per_direction, key=per_direction.get)
        report["evaluation"] = {
            "directions": len(per_direction), "seconds": total, "seconds_per_direction": per_direction,
            "slowest": slowest, "extra_peak_rss_mib": rss_eval.extra_mib,
            "peak_gpu_mib": _peak_gpu_mib(device), "metrics": metrics,
        }
        rows.append([f"evaluate {len(per_direction)} directions (P@50/100/200, mAP@All)", total,
                     rss_eval.extra_mib, report["evaluation"]["peak_gpu_mib"],
                     f"slowest {slowest} {per_direction[slowest]:.2f} s"])
        report["device"] = str(device)
        report["phase_branch_compiled"] = trainer.model.backbone.phase_branch_compiled
    return {"rows": rows, "report": report}


def main() -> None:
    def add_arguments(parser):
        parser.add_argument("--data-dir", default=None,
                            help="where the synthetic images are written once and reused "
                                 "(default: a folder in the system temp dir)")
        parser.add_argument("--workers", type=int, default=None,
                            help="DataLoader workers and image writers (default: 0 with --quick, "
                                 "else min(16, CPUs))")

    parser_args = parse_args("bench_domainnet_scale", __doc__.splitlines()[0], device=True,
                             add_arguments=add_arguments)
    result = run(parser_args)
    headers = ["part", "seconds", "extra peak RSS MiB", "peak GPU MiB", "note"]
    print(format_table(headers, result["rows"]))
    write_json(parser_args.out, {"benchmark": "bench_domainnet_scale", "quick": parser_args.quick,
                                 "headers": headers, **result})


if __name__ == "__main__":
    main()
