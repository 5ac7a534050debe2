"""One small forward+backward per feature of the causal conv1d, for compute-sanitizer.

    compute-sanitizer --tool memcheck python3 scripts/sanitize_causal_conv1d.py
"""

import torch

from m4v.kernels.conv1d import causal_conv1d


def run(batch, seqlen, channels, width, dtype=torch.bfloat16, seq_lens=None, strided=False):
    dev = "cuda"
    if seq_lens is not None:
        batch, seqlen = 1, sum(seq_lens)
    full = torch.randn(batch, seqlen, 2 * channels if strided else channels, device=dev, dtype=dtype)
    x = full[..., :channels].detach().requires_grad_(True)
    weight = torch.randn(channels, width, device=dev, dtype=dtype, requires_grad=True)
    bias = torch.randn(channels, device=dev, dtype=dtype, requires_grad=True)
    cu = None
    if seq_lens is not None:
        cu = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    out = causal_conv1d(x, weight, bias, cu, "silu", backend="cuda")
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()


if __name__ == "__main__":
    run(2, 1, 64, 4)
    run(2, 77, 40, 4, strided=True)
    run(1, 300, 13, 3, dtype=torch.float32)
    run(1, 129, 24, 2, dtype=torch.float16)
    run(1, 0, 32, 4, seq_lens=[1, 63, 0, 1, 85, 50])
    print("ok")
