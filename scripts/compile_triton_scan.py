"""Compiles the Triton selective-scan kernels for Hopper (sm_90) on a machine without a GPU.

Triton lowers and assembles a kernel (ptxas ships with it) from its signature alone, so a CPU machine
can catch what only the GPU path meets: lowering errors, and the SASS each kernel turns into. Run
without TRITON_INTERPRET (its kernels are interpreted, not compiled):

    python scripts/compile_triton_scan.py [--shape 1,3072,16384,16] [--sms 132] [--sass-counts] [--dump DIR]

Each kernel is compiled as the launchers (m4v/kernels/triton/selective_scan.py) launch it at
``--shape`` (batch, dim, seqlen, dstate), in both scan directions: the launchers run on meta tensors
(bf16 activations, fp32 parameters and scratch, as the model and the benchmarks call them) with the
kernels replaced by recorders, and each recorded launch is compiled with the signature, constants and
16-byte divisibility hints that Triton's own launch derives from those arguments (an int equal to 1 is
a constant; ints, strides and pointers divisible by 16 carry the hint). Compiled from plain i32
arguments instead, the forward's chunk loop was twice as long (every mask and stride unknown). With
``--sms`` the forward's register cap is the one it takes on a GPU with that many SMs. Exit status 0
when all kernels assemble.

``--sass-counts`` prints each kernel's static SASS count and that of its longest loop body: the
instructions one warp issues per iteration (per chunk), the figure to compare between versions.
Compare kernels compiled by the Triton version the GPU runs (the device has 3.6: ``pip install
--target DIR triton==3.6.0`` and put DIR first on PYTHONPATH).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from m4v.kernels.triton import selective_scan as scan

HOPPER = GPUTarget("cuda", 90, 32)
KERNELS = {
    "fwd": "_selective_scan_fwd_kernel",
    "bwd summary": "_selective_scan_bwd_summary_kernel",
    "bwd carry": "_selective_scan_bwd_carry_kernel",
    "bwd main": "_selective_scan_bwd_main_kernel",
}


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, name: str, launches: list):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, args, kwargs))


@contextmanager
def _recording(launches: list):
    originals = {attr: getattr(scan, attr) for attr in KERNELS.values()}
    try:
        for attr in KERNELS.values():
            setattr(scan, attr, _Recorder(attr, launches))
        yield originals
    finally:
        for attr, kernel in originals.items():
            setattr(scan, attr, kernel)


def recorded_launches(shape: tuple[int, int, int, int], reverse: bool, sms: int | None) -> list:
    """(name, kernel, args, kwargs) of the forward's and the backward's launches at ``shape``."""
    batch, dim, seqlen, dstate = shape
    meta = dict(device="meta")
    u, delta, z = (torch.empty(batch, dim, seqlen, dtype=torch.bfloat16, **meta) for _ in range(3))
    B, C = (torch.empty(batch, 1, dstate, seqlen, dtype=torch.bfloat16, **meta) for _ in range(2))
    A = torch.empty(dim, dstate, **meta)
    D, bias = torch.empty(dim, **meta), torch.empty(dim, **meta)
    init = torch.empty(batch, dim, dstate, **meta)
    cap = None
    if sms is not None:  # the cap forward_max_registers takes on a GPU of `sms` SMs
        programs = batch * triton.cdiv(dim, scan.default_forward_tile(batch, dim, dstate, u.device)[0])
        if dstate <= 16 and programs > scan.FORWARD_UNCAPPED_PROGRAMS_PER_SM * sms:
            cap = scan.FORWARD_CAPPED_REGISTERS
    launches = []
    with _recording(launches) as kernels:
        _, _, checkpoints, out_pre = scan.selective_scan_fwd_triton(
            u, delta, A, B, C, D, z, bias, init, None, True, reverse, True, max_registers=cap)
        scan.selective_scan_bwd_triton(torch.empty_like(u), torch.empty_like(init), u, delta, A, B, C, D, z, bias,
                                       init, None, checkpoints, out_pre, True, reverse)
    return [(name, kernels[attr], args, kwargs) for attr, args, kwargs in launches
            for name, kernel_attr in KERNELS.items() if kernel_attr == attr]


def compile_launch(kernel, args: tuple, kwargs: dict):
    """The kernel compiled as Triton's launch of ``kernel[grid](*args, **kwargs)`` compiles it."""
    options = {key: kwargs[key] for key in ("num_warps", "num_stages", "maxnreg") if key in kwargs}
    bound = dict(zip([p.name for p in kernel.params], args))
    bound.update({k: v for k, v in kwargs.items() if k not in options})
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        kind, attr = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize,
                                            not param.do_not_specialize_on_alignment)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = attr
        elif attr:
            attrs[(index,)] = BaseBackend.parse_attr(attr)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=HOPPER, options=options)


def cuobjdump(cubin: bytes, option: str) -> str:
    """Triton's own cuobjdump of the cubin (``-sass``, ``-res-usage``)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, option, f.name], capture_output=True, text=True, check=True).stdout


_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[^;]*?(?:0x([0-9a-f]+))?\s*;")


def sass_counts(text: str) -> tuple[collections.Counter, int]:
    """(static instruction counts by opcode, instructions in the longest loop body: from a backward
    branch's target to the branch)."""
    counts, longest = collections.Counter(), 0
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        address, opcode, target = match.groups()
        counts[opcode] += 1
        if opcode == "BRA" and target is not None and int(target, 16) < int(address, 16):
            longest = max(longest, (int(address, 16) - int(target, 16)) // 16 + 1)
    return counts, longest


def registers(res_usage: str) -> int:
    match = re.search(r"REG:(\d+)", res_usage)
    return int(match.group(1)) if match else -1


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels are not compiled", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1,3072,16384,16", help="batch,dim,seqlen,dstate of the launches")
    parser.add_argument("--sms", type=int, default=None, help="the forward's register cap as on a GPU of this many SMs")
    parser.add_argument("--sass-counts", action="store_true", help="print each kernel's SASS instruction counts")
    parser.add_argument("--dump", default=None, help="write each kernel's SASS into this folder")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 4:
        parser.error("--shape takes batch,dim,seqlen,dstate")
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    for reverse in (False, True):
        direction = "reverse" if reverse else "forward"
        for name, kernel, kernel_args, kernel_kwargs in recorded_launches(shape, reverse, args.sms):
            compiled = compile_launch(kernel, kernel_args, kernel_kwargs)
            cubin = compiled.asm.get("cubin")
            if not cubin:
                print(f"{name} ({direction}): no cubin", file=sys.stderr)
                return 1
            line = f"{name} ({direction}): sm_90 cubin of {len(cubin)} bytes"
            if args.sass_counts or args.dump:
                text = cuobjdump(cubin, "-sass")
                if args.dump:
                    with open(os.path.join(args.dump, f"{name.replace(' ', '_')}_{direction}.sass"), "w") as f:
                        f.write(text)
                counts, loop = sass_counts(text)
                line += (f", {sum(counts.values())} SASS instructions ({counts['MUFU']} MUFU, {counts['SHFL']} SHFL),"
                         f" longest loop body {loop}, {registers(cuobjdump(cubin, '-res-usage'))} registers")
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
