"""Compiles the Triton selective-scan kernels for Hopper (sm_90) on a machine without a GPU.

Triton lowers and assembles a kernel (ptxas ships with it) from its signature alone, so a CPU machine
can catch what only the GPU path meets: lowering errors, and the SASS each kernel turns into. Run
without TRITON_INTERPRET (its kernels are interpreted, not compiled):

    python scripts/compile_triton_scan.py [--dstate 16] [--sass-counts]

Each kernel is compiled in both scan directions at its default tile, with bf16 activations (the
model's dtype) and fp32 parameters and scratch. Exit status 0 when all of them assemble.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from m4v.kernels.triton import selective_scan as scan

HOPPER = GPUTarget("cuda", 90, 32)
# Pointer arguments that are not activations (those are bf16).
FP32_POINTERS = {"A_ptr", "D_ptr", "bias_ptr", "init_ptr", "last_ptr", "ck_ptr", "chunk_decay_ptr",
                 "chunk_adjoint_ptr", "carry_ptr", "dlast_ptr", "dinit_ptr", "dA_part_ptr", "dD_part_ptr",
                 "dbias_part_ptr", "dB_part_ptr", "dC_part_ptr"}
INDEX_POINTERS = {"cu_ptr", "chunk_off_ptr"}


def kernel_launches(dstate: int) -> list[tuple[str, object, dict, int]]:
    """(name, kernel, constexpr values (a superset of the kernel's), warps) of every kernel a forward
    and a backward launch."""
    fwd_d, fwd_n = scan._block_sizes(dstate, scan.FORWARD_TILE_ELEMENTS)
    bwd_d, bwd_warps = scan.backward_tile(dstate)
    bwd_n = scan._block_sizes(dstate, scan.BACKWARD_TILE_ELEMENTS)[1]
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_INIT=True, HAS_DLAST=True, VARLEN=False, SAVE_CK=True,
                 SOFTPLUS=True, CHUNK_L=scan.CHUNK, ALIGN=scan.SEQ_ALIGN)
    launches = []
    for reverse in (False, True):
        direction = "reverse" if reverse else "forward"
        launches += [
            (f"fwd ({direction})", scan._selective_scan_fwd_kernel,
             dict(flags, REVERSE=reverse, BLOCK_D=fwd_d, BLOCK_N=fwd_n),
             scan.FORWARD_NUM_WARPS),
            (f"bwd summary ({direction})", scan._selective_scan_bwd_summary_kernel,
             dict(flags, REVERSE=reverse, BLOCK_D=bwd_d, BLOCK_N=bwd_n), bwd_warps),
            (f"bwd carry ({direction})", scan._selective_scan_bwd_carry_kernel,
             dict(flags, REVERSE=reverse, BLOCK=256), 4),
            (f"bwd main ({direction})", scan._selective_scan_bwd_main_kernel,
             dict(flags, REVERSE=reverse, BLOCK_D=bwd_d, BLOCK_N=bwd_n), bwd_warps),
        ]
    return launches


def compile_for_hopper(kernel, values: dict, num_warps: int):
    """The compiled kernel (its `asm` holds the PTX and the cubin); its constexprs taken from `values`."""
    signature, constexprs = {}, {}
    for param in kernel.params:
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = values[param.name]
        elif param.name.endswith("_ptr"):
            signature[param.name] = ("*i32" if param.name in INDEX_POINTERS
                                     else "*fp32" if param.name in FP32_POINTERS else "*bf16")
        else:
            signature[param.name] = "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps})


def sass_opcode_counts(cubin: bytes) -> collections.Counter:
    """Static SASS instruction counts by opcode (without modifiers), from Triton's own cuobjdump."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in sass.splitlines():
        line = line.strip()
        if not line.startswith("/*") or ";" not in line:
            continue
        words = line.split("*/", 1)[1].split()
        opcode = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "")
        if opcode:
            counts[opcode.split(".")[0]] += 1
    return counts


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels are not compiled", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--sass-counts", action="store_true", help="print each kernel's SASS instruction count")
    args = parser.parse_args()
    for name, kernel, values, num_warps in kernel_launches(args.dstate):
        compiled = compile_for_hopper(kernel, values, num_warps)
        if not compiled.asm.get("cubin"):
            print(f"{name}: no cubin", file=sys.stderr)
            return 1
        line = f"{name}: sm_90 cubin of {len(compiled.asm['cubin'])} bytes"
        if args.sass_counts:
            counts = sass_opcode_counts(compiled.asm["cubin"])
            line += f", {sum(counts.values())} SASS instructions ({counts['MUFU']} MUFU, {counts['SHFL']} SHFL)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
