"""One fixed-shape step (a forward, a training step, a sampling step) captured in a CUDA graph.

Replaying a graph issues the step's kernels without running its Python, so a step bound by the
host's issue time (the MM-DiM mixer's eager fwd+bwd at 15,360 tokens: benchmarks/NOTES.md, the
thirty-eighth session) runs at the speed of its kernels. m4v's CUDA ops are written to be
capturable: they read no device values on the host once a ``cu_seqlens`` tensor has passed its
first check, and allocate through PyTorch's allocator; the GPU tests ``-k cuda_graph`` check a
captured scan and a captured MM-DiM block step against eager ones.
"""

from __future__ import annotations

from typing import Callable

import torch


def capture_step(step: Callable[[], object], warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Runs ``step`` ``warmup`` times on a side stream, then captures one call in a CUDA graph.

    The warm-up calls fill what the first calls build on the host (scan layouts' index maps on the
    device, ``cu_seqlens`` checks, cuBLAS and cuDNN plans), as ``torch.cuda.graph`` requires. The
    graph's replay reads the tensors the step read during capture and writes the ones it wrote:
    copy new inputs into the former and read results from the latter. Every allocation of the step
    comes from the graph's private memory pool and is reused by each replay.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


__all__ = ["capture_step"]
