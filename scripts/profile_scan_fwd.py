"""One forward of the selective scan at the ANCHORS.md shape, for ncu:

    ncu --kernel-name regex:selective_scan_fwd --launch-skip 2 --launch-count 1 \
        --section WarpStateStats --section SchedulerStats python3 scripts/profile_scan_fwd.py
"""

import torch

from m4v.kernels import selective_scan

batch, dim, seqlen, dstate = 1, 3072, 16384, 16
dev, dtype = "cuda", torch.bfloat16
u = torch.randn(batch, dim, seqlen, device=dev, dtype=dtype)
delta = torch.rand(batch, dim, seqlen, device=dev, dtype=dtype) * 0.1
A = -torch.rand(dim, dstate, device=dev) - 0.5
B = torch.randn(batch, 1, dstate, seqlen, device=dev, dtype=dtype)
C = torch.randn(batch, 1, dstate, seqlen, device=dev, dtype=dtype)
D = torch.randn(dim, device=dev)
z = torch.randn(batch, dim, seqlen, device=dev, dtype=dtype)
bias = torch.randn(dim, device=dev)
for _ in range(3):  # two warm-up launches, then the profiled one
    selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend="cuda")
torch.cuda.synchronize()
