"""Token re-composition speed: recompose + inverse on the 768p last-unit layout (GPU).

Layout (DESIGN.md section 1): 28 lowest-stage history frames (12 x 20 tokens), one middle-stage
(24 x 40) and one top-stage (48 x 80) history frame, and the current top-stage frame: 15,360 video
tokens, plus 128 text tokens (77 real), hidden 1920, bf16.

Each backend runs the forward (gather into the scan sequence) and the inverse (gather back, summing
the two text copies). The peers in the same run are plain PyTorch indexing (the reference backend)
and a device copy of the same byte count (torch's copy kernel: the practical ceiling). Ideal bytes
count every row read once and written once; bandwidth is reported against 3.0 TB/s.

    python benchmarks/bench_recompose.py [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

import torch
from _report import emit_records

COPY_BYTES_PER_S = 3.0e12
FRAMES = [(12, 20, 0)] * 28 + [(24, 40, 1), (48, 80, 2), (48, 80, 2)]
TEXT_LEN, REAL_TEXT, HIDDEN = 128, 77, 1920


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write the records here")
    parser.add_argument("--path", type=int, default=7, help="zigzag path")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_recompose: needs a CUDA GPU", file=sys.stderr)
        return 1
    from triton.testing import do_bench

    from m4v.kernels import available_backends
    from m4v.kernels.recompose import ScanLayout, inverse_recompose, recompose, recompose_bytes

    mask = torch.arange(TEXT_LEN)[None] < REAL_TEXT
    layout = ScanLayout(FRAMES, path=args.path, text_len=TEXT_LEN, text_mask=mask)
    dtype, dev = torch.bfloat16, "cuda"
    text = torch.randn(1, TEXT_LEN, HIDDEN, dtype=dtype, device=dev)
    video = torch.randn(1, layout.video_len, HIDDEN, dtype=dtype, device=dev)
    registers = torch.randn(layout.num_stages, HIDDEN, dtype=dtype, device=dev)
    seq = torch.randn(1, layout.seq_len, HIDDEN, dtype=dtype, device=dev)
    forward_bytes, inverse_bytes = recompose_bytes(layout, HIDDEN, dtype)
    total_bytes = forward_bytes + inverse_bytes

    def bench(fn):
        return do_bench(fn, warmup=50, rep=300, return_mode="median")

    times = {}
    with torch.no_grad():
        for backend in ("cuda", "triton", "reference"):
            status = available_backends()[backend]
            if not status.usable:
                print(f"# skipping {backend}: {status.reason}", file=sys.stderr)
                continue
            fwd = bench(lambda: recompose(text, video, layout, registers, backend=backend))
            inv = bench(lambda: inverse_recompose(seq, layout, backend=backend))
            times[backend] = (fwd, inv)
        # The same bytes through torch's copy kernel: read + write total_bytes / 2 each way.
        src = torch.empty(total_bytes // 4, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        copy = bench(lambda: dst.copy_(src))
        times["torch copy"] = (copy, copy)

    records, peer = [], sum(times["reference"])
    print(f"layout: {layout}, hidden {HIDDEN}, bf16; ideal bytes fwd {forward_bytes / 1e6:.1f} MB, "
          f"inverse {inverse_bytes / 1e6:.1f} MB")
    print(f"{'backend':12} {'fwd ms':>8} {'inv ms':>8} {'total ms':>9} {'GB/s':>7} {'of 3.0 TB/s':>12} "
          f"{'vs torch indexing':>18}")
    for name, (fwd, inv) in times.items():
        total = fwd + inv
        gbps = total_bytes / total / 1e6
        print(f"{name:12} {fwd:8.4f} {inv:8.4f} {total:9.4f} {gbps:7.0f} {gbps / 3000:12.0%} {peer / total:17.2f}x")
        records.append({"backend": name, "video_tokens": layout.video_len, "text_tokens": TEXT_LEN,
                        "hidden": HIDDEN, "dtype": "bfloat16", "fwd_ms": round(fwd, 5), "inv_ms": round(inv, 5),
                        "total_ms": round(total, 5), "gbps": round(gbps, 1)})
    emit_records(records, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
