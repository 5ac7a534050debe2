"""Per-kernel GPU time of one selective-scan forward+backward (torch.profiler), to see where the
time goes before optimising; ``--variant`` as in bench_selective_scan.py (varlen: the shape's
batch packed into one row of unequal sequences).

    python benchmarks/profile_selective_scan.py [--shape 1,3072,16384,16] [--backend cuda]
                                                [--variant plain|reverse|varlen]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_selective_scan import VARIANTS, make_inputs, scan_functions

CALLS = 5


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="1,3072,16384,16")
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--variant", default="plain", choices=VARIANTS)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    fn = scan_functions()[args.backend]
    inputs, kwargs = make_inputs(shape, torch.bfloat16, requires_grad=True, variant=args.variant)
    leaves = [t for t in inputs if t.requires_grad]
    dout = torch.randn_like(inputs[0])
    for _ in range(3):
        torch.autograd.grad(fn(*inputs, **kwargs), leaves, dout)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            torch.autograd.grad(fn(*inputs, **kwargs), leaves, dout)
        torch.cuda.synchronize()
    print(f"# {args.backend} {args.variant} {shape}: {CALLS} calls of forward + backward")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
