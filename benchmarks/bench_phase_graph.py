"""Can the phase branch's launch cost be hidden? ViT-B/16 training step, batch 32, 224 px, on a GPU.

Cases, all timed in turn (``bench_step.measure_interleaved``: 30 rounds after 3 warm-up steps
and one memory step each; median; each step ends with a CUDA synchronise), fp32 and bf16 autocast:

- "rgb alone": ``timm`` ViT-B/16 + linear to 512 (as ``bench_step.py``);
- "tpsnet": ``TPSNet(PhasePriorBackbone(vit, phase_model="resnet18"))`` (as ``bench_step.py``);
- "tpsnet phase first": the phase branch computed before the RGB branch, so that autograd runs
  its backward after the ViT's (a local replacement of ``forward_parts``);
- "tpsnet graphed phase": the phase network (pooled features) captured as a CUDA graph with
  ``torch.cuda.make_graphed_callables``, so its forward and backward are one launch each.

Needs a CUDA GPU. Run: ``python -m benchmarks.bench_phase_graph``. Output of the run quoted in the
README: ``benchmarks/results/bench_phase_graph_h200.txt``.
"""

import statistics
import sys
import time

import torch
from torch import nn

from benchmarks.bench_step import make_step, measure_interleaved, rgb_alone, tpsnet

if not torch.cuda.is_available():
    sys.exit("bench_phase_graph.py needs a CUDA GPU (torch.cuda.is_available() is False)")
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")


VIT = "vit_base_patch16_clip_224"


class Pooled(nn.Module):
    """A timm model's pooled pre-logits features as its forward (what the backbone calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def graphed(amp: bool) -> nn.Module:
    """TPSNet whose phase network runs as a CUDA graph (captured for batch 32, 224 px)."""
    model = tpsnet(VIT, 224, "resnet18").to(dev)
    backbone = model.backbone
    sample = torch.rand(32, 1, 224, 224, device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        backbone.phase_model = torch.cuda.make_graphed_callables(Pooled(backbone.phase_model), (sample,))
    return model


def phase_first(model: nn.Module) -> nn.Module:
    """TPSNet computing its phase branch before the RGB branch (the fusion is unchanged)."""
    backbone = model.backbone

    def forward_parts(x):
        phase = backbone.phase_branch(x)
        rgb = backbone.rgb_branch(x)
        z = backbone.norm(torch.stack([rgb, phase], dim=1))
        z = z + backbone.attn(z, z, z, need_weights=False)[0]
        return {"rgb": rgb, "phase": phase, "tokens": z, "fused": backbone.forward_head(z)}

    backbone.forward_parts = forward_parts
    return model


def main() -> None:
    images = torch.rand(32, 3, 224, 224, device=dev)
    domains = torch.randint(0, 2, (32,), device=dev)
    for amp in (False, True):
        start = time.time()
        cases = {
            "rgb alone": (rgb_alone(VIT, 224).to(dev), None),
            "tpsnet": (tpsnet(VIT, 224, "resnet18").to(dev), domains),
            "tpsnet phase first": (phase_first(tpsnet(VIT, 224, "resnet18").to(dev)), domains),
            "tpsnet graphed phase": (graphed(amp), domains),
        }
        steps = {case: make_step(model, images, doms, amp) for case, (model, doms) in cases.items()}
        times = {case: m["times_s"] for case, m in measure_interleaved(steps, 30, 3, cuda=True).items()}
        base = statistics.median(times["rgb alone"])
        print(f"amp={amp} ({time.time() - start:.0f} s): " + ", ".join(
            f"{case} {1000 * statistics.median(t):.1f} ms ({100 * (statistics.median(t) / base - 1):+.1f}%)"
            for case, t in times.items()), flush=True)
        del steps, cases


if __name__ == "__main__":
    main()
