"""One selective scan (by default at the ANCHORS.md shape), for ncu: a forward, or with
``--backward`` a forward and its backward (for the backward's summary, carry and main kernels):

    ncu --kernel-name regex:selective_scan_fwd --launch-skip 2 --launch-count 1 \
        --section WarpStateStats --section SchedulerStats python3 scripts/profile_scan.py
    ncu --kernel-name regex:selective_scan_bwd_main --launch-skip 2 --launch-count 1 \
        --section SourceCounters python3 scripts/profile_scan.py --backward
"""

import argparse

import torch

from m4v.kernels import selective_scan

parser = argparse.ArgumentParser()
parser.add_argument("--backward", action="store_true", help="run the backward after each forward")
parser.add_argument("--token-major", action="store_true",
                    help="the inputs, and dout, as MambaMixer passes them: views of (batch, seqlen, channels) tensors")
parser.add_argument("--shape", type=int, nargs=4, default=(1, 3072, 16384, 16),
                    metavar=("BATCH", "DIM", "SEQLEN", "DSTATE"),
                    help="the scan's shape (default the ANCHORS.md one; the 768p mixer's, 15,360 visual and "
                         "128 text tokens, is 1 2880 15488 16)")
args = parser.parse_args()

batch, dim, seqlen, dstate = args.shape
dev, dtype = "cuda", torch.bfloat16
grad = args.backward
u = torch.randn(batch, dim, seqlen, device=dev, dtype=dtype, requires_grad=grad)
delta = (torch.rand(batch, dim, seqlen, device=dev, dtype=dtype) * 0.1).requires_grad_(grad)
A = (-torch.rand(dim, dstate, device=dev) - 0.5).requires_grad_(grad)
B = torch.randn(batch, 1, dstate, seqlen, device=dev, dtype=dtype, requires_grad=grad)
C = torch.randn(batch, 1, dstate, seqlen, device=dev, dtype=dtype, requires_grad=grad)
D = torch.randn(dim, device=dev, requires_grad=grad)
z = torch.randn(batch, dim, seqlen, device=dev, dtype=dtype, requires_grad=grad)
bias = torch.randn(dim, device=dev, requires_grad=grad)
leaves = [u, delta, A, B, C, D, z, bias]
dout = torch.randn_like(u)
inputs = leaves
if args.token_major:
    u_tm, delta_tm, z_tm, dout = (t.mT.contiguous().mT for t in (u, delta, z, dout))
    # B and C as two slices of one x_proj output (batch, seqlen, dt_rank + 2 * dstate), as the mixer has them
    proj = torch.cat([torch.zeros(batch, seqlen, 120, device=dev, dtype=dtype), B[:, 0].mT, C[:, 0].mT], dim=-1)
    B_tm, C_tm = (t.mT.unsqueeze(1) for t in proj[..., 120:].split(dstate, dim=-1))
    inputs = [u_tm, delta_tm, A, B_tm, C_tm, D, z_tm, bias]
for _ in range(3):  # two warm-up calls, then the profiled one
    out = selective_scan(*inputs, delta_softplus=True, backend="cuda")
    if grad:
        torch.autograd.grad(out, leaves, dout)
torch.cuda.synchronize()
