"""Where the phase network's step time goes on a GPU: timm resnet18 alone, forward + backward.

Batch 32; input channels 1 (the phase-only image), 3 or 8, 224 or 112 px, NCHW or channels-last,
fp32 and bf16 autocast; median of 20 steps after 3 warm-up steps, each ending with a CUDA
synchronise (``bench_step.make_step`` and ``measure_interleaved``); plus a torch.profiler table of
one step (1 channel, 224 px) by self CUDA time.
Compare "Self CPU time total" with "Self CUDA time total": when the host needs longer to launch the
kernels than the GPU needs to run them, the step is launch-bound and shrinking the input does not
help. Needs a CUDA GPU. Run: ``python -m benchmarks.profile_phase_net``.
Output of the run quoted in the README: ``benchmarks/results/profile_phase_net_h200.txt``.
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

if not torch.cuda.is_available():
    sys.exit("profile_phase_net.py needs a CUDA GPU (torch.cuda.is_available() is False)")
import tpsnet_plugin  # noqa: E402,F401  (its torchvision fix must run before timm is imported)

# isort: split
import timm

from benchmarks.bench_step import make_step, measure_interleaved

torch.backends.cudnn.benchmark = True
dev = "cuda"


def main() -> None:
    for amp in (False, True):
        for chans, size, channels_last in ((1, 224, False), (3, 224, False), (1, 112, False), (1, 224, True),
                                           (8, 224, True)):
            model = timm.create_model("resnet18", num_classes=0, in_chans=chans).to(dev)
            x = torch.rand(32, chans, size, size, device=dev)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            step = make_step(model, x, None, amp)
            ms = 1000 * measure_interleaved({"phase net": step}, 20, 3, cuda=True)["phase net"]["median_s"]
            print(f"amp={amp} in_chans={chans} size={size} channels_last={channels_last}: {ms:.2f} ms", flush=True)
            if chans == 1 and size == 224 and not channels_last:
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    step()
                print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=70),
                      flush=True)


if __name__ == "__main__":
    main()
