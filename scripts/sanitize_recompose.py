"""Recompose + inverse forward and backward on odd and aligned rows, for compute-sanitizer.

    compute-sanitizer --tool memcheck python3 scripts/sanitize_recompose.py
"""

import torch

from m4v.kernels.recompose import ScanLayout, inverse_recompose, recompose


def run(channels, dtype, text_len=5, batch=2):
    mask = torch.arange(text_len)[None] < torch.tensor([[text_len], [2]])
    layout = ScanLayout([(2, 3, 0), (4, 6, 1), (4, 6, 1)], path=5, text_len=text_len, text_mask=mask)
    text = torch.randn(batch, text_len, channels, device="cuda", dtype=dtype, requires_grad=True)
    video = torch.randn(batch, layout.video_len, channels, device="cuda", dtype=dtype, requires_grad=True)
    registers = torch.randn(layout.num_stages, channels, device="cuda", dtype=dtype, requires_grad=True)
    text_out, video_out = inverse_recompose(recompose(text, video, layout, registers, backend="cuda"), layout,
                                            backend="cuda")
    (text_out.float().sum() + video_out.float().sum()).backward()
    torch.cuda.synchronize()


for channels in (8, 13, 1920):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        run(channels, dtype)
print("sanitize cases ran")
