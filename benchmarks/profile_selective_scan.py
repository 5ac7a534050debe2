"""Per-kernel GPU time of one selective-scan forward+backward (torch.profiler), to see where the
time goes before optimising.

    python benchmarks/profile_selective_scan.py [--shape 1,3072,16384,16] [--backend cuda]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_selective_scan import make_inputs, scan_functions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="1,3072,16384,16")
    parser.add_argument("--backend", default="cuda")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    fn = scan_functions()[args.backend]
    inputs = make_inputs(shape, torch.bfloat16, requires_grad=True)
    dout = torch.randn_like(inputs[0])
    for _ in range(3):
        torch.autograd.grad(fn(*inputs), inputs, dout)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            torch.autograd.grad(fn(*inputs), inputs, dout)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
