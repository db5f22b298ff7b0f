"""Training-step cost of the phase prior + fusion + synergy: TPSNet vs the RGB backbone alone.

One step = zero_grad + forward + backward of a mean-squared dummy loss on the embedding, batch 32,
224 x 224, CPU, ``pretrained=False`` (no optimizer step: it is the same for both, per parameter).

- "RGB alone": ``timm.create_model(rgb, num_classes=0)`` + ``nn.Linear(num_features, 512)``;
- "TPSNet": ``TPSNet(PhasePriorBackbone(rgb, phase_model="resnet18", embed_dim=512), T)`` with
  random text features T (D = 2, C = 65, e = 512) and domain ids.
Variants (local monkeypatches, the package is unchanged): "phase@1/2" runs the phase network on
the phase-only image average-pooled to half resolution; "channels_last" converts both models and
inputs to channels-last; on a GPU, "phase compiled (default / reduce-overhead)" is TPSNet with
``PhasePriorBackbone.compile_phase_branch(mode=...)``, what ``model.compile`` does in training.
Overhead % = TPSNet / RGB alone - 1, both timed in
this process: the cases of one RGB model are timed in turn (one step each per round), so a change of
clock speed or load hits them alike.
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.speed.bench_step [--quick] [--out FILE]``.
On a GPU: ``--device cuda [--amp]`` (bf16 autocast); cuDNN benchmark mode is on, every step ends
with a CUDA synchronise, more steps are timed (3 warm-up, 40 timed) and the memory column is the
peak CUDA memory of the step beyond what was allocated before it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import tpsnet_plugin  # noqa: E402,F401

# isort: split
import timm

from benchmarks._common import format_table, measure, parse_args, write_json
from tpsnet_plugin.backbones import PhasePriorBackbone
from tpsnet_plugin.models import TPSNet

EMBED = 512
NUM_DOMAINS, NUM_CLUSTERS = 2, 65
PHASE_MODEL = "resnet18"


class HalfResolution(nn.Module):
    """Variant: run a timm model on its input average-pooled by 2 (phase net at lower resolution)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def rgb_alone(name: str, img_size: int) -> nn.Module:
    kwargs = {"img_size": img_size} if "vit" in name else {}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    return nn.Sequential(model, nn.Linear(model.num_features, EMBED))


def tpsnet(name: str, img_size: int, phase_model: str, half_phase: bool = False) -> TPSNet:
    kwargs = {"img_size": img_size} if "vit" in name else {}
    backbone = PhasePriorBackbone(name, phase_model=phase_model, embed_dim=EMBED, rgb_kwargs=kwargs)
    if half_phase:
        backbone.phase_model = HalfResolution(backbone.phase_model)
    text = F.normalize(torch.randn(NUM_DOMAINS, NUM_CLUSTERS, EMBED), dim=-1)
    return TPSNet(backbone, text)


def make_step(model: nn.Module, images: torch.Tensor, domains: torch.Tensor | None, amp: bool = False):
    model.train()
    cuda = images.is_cuda

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(images, domains) if domains is not None else model(images)
        loss = out.float().pow(2).mean()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        return None

    return step


def measure_step(step, repeats: int, warmup: int, cuda: bool) -> dict:
    """:func:`measure` plus, on CUDA, the step's peak CUDA memory beyond the memory held before it."""
    if not cuda:
        return measure(step, repeats, warmup=warmup)
    for _ in range(warmup):
        step()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = measure(step, repeats, warmup=0)
    result["extra_peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return result


def measure_interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, cuda: bool) -> dict[str, dict]:
    """Median step time of every case, timed in turn for ``repeats`` rounds.

    Interleaving puts a change of clock speed or machine load on every case alike, so the ratios
    between cases stay fair. Each case first gets its warm-up steps and one step for its memory.
    """
    results = {case: measure_step(step, 1, warmup, cuda) for case, step in steps.items()}
    times: dict[str, list[float]] = {case: [] for case in steps}
    for _ in range(repeats):
        for case, step in steps.items():
            begin = time.perf_counter()
            step()
            times[case].append(time.perf_counter() - begin)
    return {case: {"median_s": statistics.median(t), "times_s": t, "repeats": repeats, "warmup": warmup,
                   "extra_peak_mib": results[case]["extra_peak_mib"]} for case, t in times.items()}


def profile_step(step, top: int = 12, cuda: bool = False) -> str:
    """torch.profiler table of one step, by self CPU time (self CUDA time on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=top)


def module_times(model: TPSNet, images, domains, repeats: int = 2, amp: bool = False) -> dict[str, float]:
    """Forward+backward median seconds of the parts of TPSNet on their own (RGB, phase, rest)."""
    backbone = model.backbone
    norm = ((images - backbone.rgb_mean) / backbone.rgb_std).detach()
    from tpsnet_plugin.backbones import phase_only

    def synchronize():
        if images.is_cuda:
            torch.cuda.synchronize()

    def part(fn):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
                out = fn()
            out.float().pow(2).mean().backward()
            synchronize()
        return measure(run, repeats, warmup=1)["median_s"]

    def transform():
        phase_only(images)
        synchronize()

    phase_in = ((phase_only(images) - 0.5) / 0.5).detach()
    return {
        "phase_only transform (fwd)": measure(transform, repeats, 1)["median_s"],
        "rgb model (fwd+bwd)": part(lambda: backbone.rgb_model(norm)),
        "phase model (fwd+bwd)": part(lambda: backbone.phase_model(phase_in)
                                      if isinstance(backbone.phase_model, HalfResolution)
                                      else backbone.phase_model(phase_in)),
    }


def main() -> None:
    args = parse_args("bench_step", __doc__.splitlines()[0], device=True)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        # fixed input shapes: let cuDNN pick its fastest convolution algorithms (as timm's train.py does)
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    # full on CPU: 1 warm-up + 2 timed steps per case (a ViT-B step at batch 32 takes many seconds);
    # on a GPU a step takes milliseconds: 3 warm-up + 40 timed
    batch, size, repeats = (2, 64, 1) if args.quick else (32, 224, 40 if cuda else 2)
    warmup = 3 if cuda else 1
    # --quick: timm's tiny test models (the full run uses the real ones)
    names = ["test_vit"] if args.quick else ["resnet50", "vit_base_patch16_clip_224"]
    phase_model = "test_resnet" if args.quick else PHASE_MODEL
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size, device=device)
    domains = torch.randint(0, NUM_DOMAINS, (batch,), device=device)
    rows, results, profiles, parts = [], {}, {}, {}
    for name in names:
        cases = {
            "RGB alone": (rgb_alone(name, size), None, False),
            "TPSNet (phase+fusion+synergy)": (tpsnet(name, size, phase_model), domains, False),
            "variant: TPSNet phase@1/2": (tpsnet(name, size, phase_model, half_phase=True), domains, False),
            "variant: RGB alone channels_last": (rgb_alone(name, size), None, True),
            "variant: TPSNet channels_last": (tpsnet(name, size, phase_model), domains, True),
        }
        if cuda:
            # the package option model.compile (auto = "default" on CUDA) and its CUDA-graph mode
            for mode in ("default", "reduce-overhead"):
                model = tpsnet(name, size, phase_model)
                model.backbone.compile_phase_branch(mode=mode)
                cases[f"TPSNet, phase compiled ({mode})"] = (model, domains, False)
        if args.quick or "vit" in name:
            # channels-last only changes convolutions: for the ViT, time it on TPSNet only
            cases = {k: v for k, v in cases.items() if not k.startswith("variant: RGB")}
        steps = {}
        for case, (model, doms, channels_last) in cases.items():
            model = model.to(device)
            x = images
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = images.contiguous(memory_format=torch.channels_last)
            steps[case] = make_step(model, x, doms, args.amp)
            if case == "TPSNet (phase+fusion+synergy)":
                parts[name] = module_times(model, images, domains, repeats=20 if cuda else 1, amp=args.amp)
                if "vit" in name:
                    profiles[name] = profile_step(steps[case], cuda=cuda)
        timed = measure_interleaved(steps, repeats, warmup, cuda)
        del steps
        # progress, in case the run is cut off
        print(f"[{time.perf_counter() - start:.0f} s] {name}: " + ", ".join(
            f"{case} {m['median_s']:.4f}" for case, m in timed.items()) + " (median s/step)", flush=True)
        base, base_cl = timed["RGB alone"], timed.get("variant: RGB alone channels_last")
        for case, m in timed.items():
            ref = base_cl if ("channels_last" in case and base_cl is not None) else base
            m["overhead_pct"] = 100.0 * (m["median_s"] / ref["median_s"] - 1)
            rows.append([name, case, m["repeats"], m["median_s"], m["extra_peak_mib"],
                         m["overhead_pct"] if m is not ref else None])
        results[name] = timed
    memory = "extra peak CUDA MiB" if cuda else "extra peak MiB"
    headers = ["RGB model", "case", "runs", "median s/step", memory, "overhead %"]
    print(format_table(headers, rows))
    for name, p in parts.items():
        print(f"\n{name}: parts of the TPSNet step (median s): "
              + ", ".join(f"{k} {v:.3f}" for k, v in p.items()))
    for name, table in profiles.items():
        print(f"\ntorch.profiler, one TPSNet step with {name} (top ops by self CPU time):\n{table}")
    vit = [n for n in names if "vit" in n]
    goal = (results[vit[0]]["TPSNet (phase+fusion+synergy)"]["overhead_pct"] <= 15
            if vit else None)
    print(f"goal (ViT overhead <= 15%): {goal}")
    write_json(args.out, {
        "benchmark": "bench_step",
        "quick": args.quick,
        "setup": {"batch": batch, "image_size": size, "phase_model": phase_model, "embed": EMBED,
                  "num_domains": NUM_DOMAINS, "num_clusters": NUM_CLUSTERS,
                  "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                  "amp_bf16": args.amp,
                  "cudnn_benchmark": cuda,
                  "timing": f"median of {repeats} timed steps after {warmup} warm-up step(s); the cases of one "
                            "RGB model are timed in turn, one step each per round",
                  "memory": ("peak CUDA memory of the timed steps beyond the memory held before them" if cuda
                             else "extra peak RSS, background sampler (benchmarks/_common.py)")},
        "headers": headers,
        "rows": rows,
        "results": results,
        "parts_s": parts,
        "profiles": profiles,
        "goal_vit_overhead_le_15pct": goal,
    })


if __name__ == "__main__":
    main()
