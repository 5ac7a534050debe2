"""Selective-scan speed: every m4v backend against mamba_ssm, measured in the same run (GPU).

Inputs follow ../shared/ANCHORS.md: u, delta, z, B, C in bf16 (B, C as (batch, dstate, seqlen)),
A and D in fp32, delta_softplus=True. Prints a table and writes a JSON list of records
{"backend", "shape": [batch, dim, seqlen, dstate], "dtype", "pass", "ms"}.

The floor is the larger of ideal bytes / 3.0 TB/s and exps / 3.94 T/s (H100 ceilings measured
in ANCHORS.md). Ideal bytes: forward reads u, delta, z and writes out (8 B per element in bf16);
forward+backward adds reading u, delta, z, dout and writing du, ddelta, dz (14 B more). The
backward recomputes the forward's exps at least once, so forward+backward needs 2 * dstate exps
per element.

``--variants reverse varlen`` adds m4v's reverse scan and a varlen run (the shape's batch packed
into one row of unequal sequences, boundaries off the chunk grid), each with its cost over the
plain scan of the same run; mamba_ssm has neither, so those rows have no peer. ``token_major``
passes the tensors as MambaMixer does: u, delta, z (and dout) as views of (batch, seqlen, dim)
tensors, B and C as slices of x_proj's (batch, seqlen, dt_rank + 2 * dstate) output; mamba_ssm
runs it too (it copies such inputs to contiguous ones). Records of a variant carry a "variant"
key; plain records keep the format above.

    python benchmarks/bench_selective_scan.py [--shapes 1,3072,16384,16 ...]
                                              [--variants plain reverse varlen token_major]
                                              [--backends cuda triton mamba_ssm] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

import torch
from _report import emit_records

COPY_BYTES_PER_S = 3.0e12
EXPS_PER_S = 3.94e12
DEFAULT_SHAPES = [(1, 3072, 16384, 16), (1, 3072, 65536, 16), (2, 2048, 32768, 16)]
VARIANTS = ("plain", "reverse", "varlen", "token_major")
# Where a varlen run cuts each packed sequence (fractions of its length): unequal pieces whose
# boundaries do not fall on the 256-step chunk grid.
VARLEN_CUTS = (0.0, 0.137, 0.402, 0.551, 0.813, 1.0)


def floor_ms(shape, pass_name, bytes_per_element=2):
    batch, dim, seqlen, dstate = shape
    elements = batch * dim * seqlen
    reads_writes = {"fwd": 4, "bwd": 7, "fwd_bwd": 11}[pass_name]  # tensors of (batch, dim, seqlen) moved
    exps = dstate * elements * (2 if pass_name == "fwd_bwd" else 1)
    bytes_moved = reads_writes * bytes_per_element * elements
    return 1e3 * max(bytes_moved / COPY_BYTES_PER_S, exps / EXPS_PER_S), bytes_moved


def varlen_cu_seqlens(batch: int, seqlen: int) -> torch.Tensor:
    """cu_seqlens for ``batch`` sequences of ``seqlen`` packed into one row, each cut at VARLEN_CUTS."""
    bounds = sorted({b * seqlen + round(f * seqlen) for b in range(batch) for f in VARLEN_CUTS})
    return torch.tensor(bounds, dtype=torch.int32, device="cuda")


def make_inputs(shape, dtype, requires_grad, variant="plain"):
    """u, delta, A, B, C, D, z and the scan's keyword arguments for ``variant``."""
    batch, dim, seqlen, dstate = shape
    kwargs = {"reverse": True} if variant == "reverse" else {}
    if variant == "varlen":
        kwargs = {"cu_seqlens": varlen_cu_seqlens(batch, seqlen)}
        batch, seqlen = 1, batch * seqlen
    dev = "cuda"
    g = requires_grad

    def activation(sample=torch.randn):
        """(batch, dim, seqlen); for token_major a view of a (batch, seqlen, dim) tensor."""
        if variant == "token_major":
            return sample(batch, seqlen, dim, device=dev).to(dtype).mT.requires_grad_(g)
        return sample(batch, dim, seqlen, device=dev).to(dtype).requires_grad_(g)

    u = activation()
    # softplus(delta) about 0.02-0.03: slow decay, as trained dt biases give
    delta = activation(lambda *size, device: 0.5 * torch.rand(*size, device=device) - 4.0)
    z = activation()
    A = (-torch.rand(dim, dstate, device=dev) - 0.5).requires_grad_(g)
    if variant == "token_major":
        # B and C as slices of x_proj's (batch, seqlen, dt_rank + 2 * dstate) output, with Mamba's
        # default dt_rank (expand 2: ceil(d_model / 16)); at dim 2880 its rows are not 16-byte aligned
        dt_rank = -(-dim // 32)
        proj = torch.randn(batch, seqlen, dt_rank + 2 * dstate, device=dev, dtype=dtype)
        B, C = (t.mT.requires_grad_(g) for t in proj[..., dt_rank:].split(dstate, dim=-1))
    else:
        B = torch.randn(batch, dstate, seqlen, device=dev, dtype=dtype, requires_grad=g)
        C = torch.randn(batch, dstate, seqlen, device=dev, dtype=dtype, requires_grad=g)
    D = torch.randn(dim, device=dev, requires_grad=g)
    return (u, delta, A, B, C, D, z), kwargs


def scan_functions():
    """name -> callable(u, delta, A, B, C, D, z) for every scan available here."""
    from m4v.kernels import available_backends, selective_scan

    fns = {}
    for backend in ("cuda", "triton"):
        status = available_backends()[backend]
        if status.usable:
            fns[backend] = (lambda b: lambda *a, **kw: selective_scan(*a, delta_softplus=True, backend=b, **kw))(
                backend)
        else:
            print(f"# skipping m4v backend {backend}: {status.reason}", file=sys.stderr)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        fns["mamba_ssm"] = lambda *a: selective_scan_fn(*a, delta_softplus=True)
    except ImportError as exc:
        print(f"# mamba_ssm not importable ({exc}); no peer column", file=sys.stderr)
    return fns


def time_ms(fn, pass_name, shape, dtype, variant="plain"):
    from triton.testing import do_bench

    inputs, kwargs = make_inputs(shape, dtype, requires_grad=(pass_name == "fwd_bwd"), variant=variant)
    if pass_name == "fwd":
        with torch.no_grad():
            return do_bench(lambda: fn(*inputs, **kwargs), warmup=50, rep=300, return_mode="median")
    dout = torch.randn_like(inputs[0])
    leaves = [t for t in inputs if t.requires_grad]

    def step():
        out = fn(*inputs, **kwargs)
        torch.autograd.grad(out, leaves, dout)

    return do_bench(step, warmup=50, rep=300, return_mode="median")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=None, help="batch,dim,seqlen,dstate ...")
    parser.add_argument("--passes", nargs="*", default=["fwd", "fwd_bwd"])
    parser.add_argument("--variants", nargs="*", default=["plain"], choices=VARIANTS,
                        help="plain, and m4v's reverse, varlen and token-major scans (timed against plain)")
    parser.add_argument("--backends", nargs="*", default=None,
                        help="time only these of cuda, triton, mamba_ssm (default: every one available)")
    parser.add_argument("--json", default=None, help="write the records here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_selective_scan: needs a CUDA GPU", file=sys.stderr)
        return 1
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else DEFAULT_SHAPES
    dtype = torch.bfloat16
    fns = {name: fn for name, fn in scan_functions().items() if args.backends is None or name in args.backends}
    records = []
    rows = []
    variants = ["plain"] + [v for v in args.variants if v != "plain"]  # the others are timed against it
    for shape in shapes:
        for pass_name in args.passes:
            floor, bytes_moved = floor_ms(shape, pass_name)
            plain = {}
            for variant in variants:
                times = {}
                for name, fn in fns.items():
                    if variant in ("reverse", "varlen") and name == "mamba_ssm":
                        continue
                    ms = time_ms(fn, pass_name, shape, dtype, variant)
                    times[name] = ms
                    record = {"backend": name, "shape": list(shape), "dtype": "bfloat16", "pass": pass_name,
                              "ms": round(ms, 4)}
                    records.append(record if variant == "plain" else {**record, "variant": variant})
                    torch.cuda.empty_cache()
                if variant == "plain":
                    plain = times
                for name, ms in times.items():
                    peer, cuda = times.get("mamba_ssm"), times.get("cuda")
                    rows.append((str(shape), pass_name, name, variant, ms, bytes_moved / ms / 1e6, ms / floor,
                                 f"{peer / ms:.2f}x" if peer else "-",
                                 f"{ms / cuda:.2f}x" if cuda and name != "cuda" else "-",
                                 f"{ms / plain[name] - 1:+.1%}" if variant != "plain" else "-"))
    # "time vs cuda": issue 7 asks the Triton fallback's forward for at most 2x the CUDA one's.
    print(f"{'shape (b, d, L, N)':24} {'pass':8} {'backend':10} {'variant':8} {'ms':>8} {'GB/s':>7} {'/floor':>7} "
          f"{'speedup vs mamba_ssm':>21} {'time vs cuda':>12} {'vs plain':>9}")
    for shape, pass_name, name, variant, ms, gbps, vs_floor, vs_peer, vs_cuda, vs_plain in rows:
        print(f"{shape:24} {pass_name:8} {name:10} {variant:8} {ms:8.3f} {gbps:7.0f} {vs_floor:7.2f} {vs_peer:>21} "
              f"{vs_cuda:>12} {vs_plain:>9}")
    emit_records(records, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
