"""One small forward+backward per feature, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python3 scripts/sanitize_selective_scan.py
"""

import torch

from m4v.kernels import selective_scan


def run(seqlen, dim=24, dstate=16, groups=2, dtype=torch.bfloat16, reverse=False, seq_lens=None, init=False,
        token_major=False, state_lead=0):
    dev = "cuda"
    batch = 2 if seq_lens is None else 1
    if seq_lens is not None:
        seqlen = sum(seq_lens)
    u = torch.randn(batch, dim, seqlen, device=dev, dtype=dtype, requires_grad=True)
    delta = torch.rand(batch, dim, seqlen, device=dev, dtype=dtype, requires_grad=True)
    A = (-torch.rand(dim, dstate, device=dev) - 0.5).requires_grad_(True)
    B = torch.randn(batch, groups, dstate, seqlen, device=dev, dtype=dtype, requires_grad=True)
    C = torch.randn(batch, groups, dstate, seqlen, device=dev, dtype=dtype, requires_grad=True)
    D = torch.randn(dim, device=dev, requires_grad=True)
    z = torch.randn(batch, dim, seqlen, device=dev, dtype=dtype, requires_grad=True)
    bias = torch.randn(dim, device=dev, requires_grad=True)
    cu = None
    num_seqs = batch
    if seq_lens is not None:
        cu = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
        num_seqs = len(seq_lens)
    x0 = torch.randn(num_seqs, dim, dstate, device=dev, requires_grad=True) if init else None
    if token_major:  # the forward's vector fast paths: unit channel stride, unit state stride
        u, delta, z = (t.mT.contiguous().mT for t in (u, delta, z))
        B, C = (t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) for t in (B, C))
    if token_major and state_lead:  # B and C as slices of an x_proj output: rows off 16-byte alignment
        width = groups * dstate
        proj = torch.zeros(batch, seqlen, state_lead + 2 * width, device=dev, dtype=dtype)
        proj[..., state_lead:state_lead + width] = B.detach().permute(0, 3, 1, 2).reshape(batch, seqlen, width)
        proj[..., state_lead + width:] = C.detach().permute(0, 3, 1, 2).reshape(batch, seqlen, width)
        proj.requires_grad_(True)
        B, C = (t.reshape(batch, seqlen, groups, dstate).permute(0, 2, 3, 1)
                for t in proj[..., state_lead:].split(width, dim=-1))
    out, last = selective_scan(u, delta, A, B, C, D, z, bias, True, True, initial_state=x0, reverse=reverse,
                               cu_seqlens=cu, backend="cuda")
    (out.float().square().sum() + last.sum()).backward()
    torch.cuda.synchronize()


if __name__ == "__main__":
    run(1000)
    run(300, dstate=17, dim=12, groups=1)  # odd dstate: the backward's zero padding state; idle warps
    run(257, reverse=True, init=True, dtype=torch.float32)
    run(0, seq_lens=(300, 0, 1, 77), init=True)
    # aligned row-major B/C rows with packed starts off the 8-step grid: the forward's B/C pipeline
    # (one 8-state tile per chunk, then four, reverse)
    run(0, seq_lens=(251, 262, 7, 512), dstate=8, init=True)
    run(0, seq_lens=(251, 262, 7, 512), dstate=32, groups=1, reverse=True)
    run(100, dstate=64, groups=1, dtype=torch.float16)
    run(70, dstate=256, dim=8, groups=1)
    run(600, dim=16, token_major=True)
    run(0, seq_lens=(300, 0, 1, 77), dim=16, reverse=True, init=True, token_major=True, dtype=torch.float32)
    run(0, seq_lens=(300, 0, 1, 77), dim=16, dstate=15, init=True, token_major=True)  # cp.async zero fills
    run(520, dim=32, reverse=True, token_major=True)  # token-major gradients' vector path, 3 chunks
    run(300, dim=8, dtype=torch.float16, token_major=True)
    run(700, dim=16, groups=1, token_major=True, state_lead=7)  # the forward's aligned copy of B and C
    print("sanitize cases ran")
