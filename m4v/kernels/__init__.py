"""Kernels: each op has a CUDA, a Triton and a reference (PyTorch) backend behind one function."""

from m4v.kernels._backend import available_backends
from m4v.kernels.selective_scan import selective_scan, selective_scan_flops, selective_scan_ref

__all__ = ["available_backends", "selective_scan", "selective_scan_flops", "selective_scan_ref"]
