"""Sweep of the Triton scan's tile: channels per program x warps per program (x, for the forward,
a cap on registers per thread).

Each tile is timed at one shape (bf16, with z, D and softplus, as bench_selective_scan.py) and its
outputs checked against the default tile's; the table gives the time against the default tile (the
peer in this run), against the CUDA kernel when it is built (forward only), and against the physical
floor. ``--backward`` times the backward kernels (summary, carry, main) from one saved forward.

    python benchmarks/tune_triton_selective_scan.py [--shape 1,3072,16384,16] [--block-d 4 8 16] [--warps 4 8]
        [--max-registers 0 128] [--reverse] [--backward]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from _report import emit_records
from bench_selective_scan import floor_ms, make_inputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1,3072,16384,16", help="batch,dim,seqlen,dstate")
    parser.add_argument("--block-d", type=int, nargs="+", default=[2, 4, 8, 16], help="channels per program")
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8], help="warps per program")
    parser.add_argument("--max-registers", type=int, nargs="+", default=[0],
                        help="forward only: registers per thread (Triton's maxnreg); 0 leaves it to the compiler")
    parser.add_argument("--reverse", action="store_true", help="time the reverse scan")
    parser.add_argument("--backward", action="store_true", help="time the backward kernels instead")
    parser.add_argument("--json", default=None, help="also write the records here")
    args = parser.parse_args(argv)
    if args.backward and args.max_registers != [0]:
        parser.error("--max-registers applies to the forward only")
    if not torch.cuda.is_available():
        raise SystemExit("tune_triton_selective_scan.py times GPU kernels: no CUDA device here")

    from triton.testing import do_bench

    from m4v.kernels import available_backends, selective_scan
    from m4v.kernels.triton.selective_scan import (backward_tile, default_forward_tile, selective_scan_bwd_triton,
                                                   selective_scan_fwd_triton)

    shape = tuple(int(v) for v in args.shape.split(","))
    (u, delta, A, B, C, D, z), _ = make_inputs(shape, torch.bfloat16, requires_grad=False)
    B4, C4 = B.unsqueeze(1), C.unsqueeze(1)  # (batch, groups=1, dstate, seqlen)

    def forward(tile, save_checkpoints=False, max_registers=None):
        return selective_scan_fwd_triton(u, delta, A, B4, C4, D, z, None, None, None, True, args.reverse,
                                         save_checkpoints, tile=tile, max_registers=max_registers)

    if args.backward:
        _, _, checkpoints, out_pre = forward(None, save_checkpoints=True)
        dout = torch.randn_like(u)

        def run(tile, max_registers=None):  # du, ddelta, dA, dB, dC, dD, dz
            return [t for t in selective_scan_bwd_triton(dout, None, u, delta, A, B4, C4, D, z, None, None, None,
                                                         checkpoints, out_pre, True, args.reverse, tile=tile)
                    if t.numel()]

        default_tile = backward_tile(shape[3])
    else:
        def run(tile, max_registers=None):
            return [forward(tile, max_registers=max_registers)[0]]

        default_tile = default_forward_tile(shape[0], shape[1], shape[3], u.device)

    def time(fn):
        with torch.no_grad():
            return do_bench(fn, warmup=50, rep=300, return_mode="median")

    expected = [t.float() for t in run(None)]  # the defaults: tile, and for the forward its register cap
    default_ms = time(lambda: run(None))
    cuda_ms = None
    if available_backends()["cuda"].usable and not args.backward:
        cuda_ms = time(lambda: selective_scan(u, delta, A, B, C, D, z, delta_softplus=True, reverse=args.reverse,
                                              backend="cuda"))
    pass_name = "bwd" if args.backward else "fwd"
    floor, _ = floor_ms(shape, pass_name)
    records = []
    print(f"shape {shape}, bf16, {'reverse' if args.reverse else 'plain'}, {pass_name}; default tile {default_tile}; "
          f"CUDA {cuda_ms if cuda_ms is None else round(cuda_ms, 3)} ms; floor {floor:.3f} ms")
    print(f"{'block_d':>8} {'warps':>6} {'max regs':>8} {'ms':>8} {'vs default':>11} {'vs cuda':>8} {'/floor':>7} "
          f"{'max err':>9}")
    for block_d, warps, max_registers in itertools.product(args.block_d, args.warps, args.max_registers):
        tile = (block_d, warps)
        max_registers = max_registers or None
        outputs = run(tile, max_registers)
        # Largest difference relative to each output's largest value: the tile must not change the
        # answer beyond rounding, 2 ulps for 16-bit outputs, summation order for fp32 ones.
        errors = [(float((o.float() - e).abs().max() / e.abs().max().clamp_min(1e-12)),
                   1e-4 if o.dtype == torch.float32 else 2 * 2.0 ** -7) for o, e in zip(outputs, expected)]
        error = max(e for e, _ in errors)
        if not all(torch.isfinite(o).all() for o in outputs) or any(e > tol for e, tol in errors):
            raise SystemExit(f"tile {tile}, max registers {max_registers}: outputs differ from the default tile's "
                             f"(relative errors {errors})")
        ms = time(lambda: run(tile, max_registers))
        vs_cuda = f"{ms / cuda_ms:.2f}x" if cuda_ms else "-"
        print(f"{block_d:>8} {warps:>6} {str(max_registers or '-'):>8} {ms:>8.3f} {ms / default_ms:>10.2f}x "
              f"{vs_cuda:>8} {ms / floor:>7.2f} {error:>9.2e}")
        records.append({"backend": "triton", "shape": list(shape), "dtype": "bfloat16", "pass": pass_name,
                        "reverse": args.reverse, "block_d": block_d, "num_warps": warps,
                        "max_registers": max_registers, "ms": round(ms, 4),
                        "default_ms": round(default_ms, 4), "cuda_ms": cuda_ms and round(cuda_ms, 4)})
    emit_records(records, args.json)


if __name__ == "__main__":
    main()
