"""m4v: fast Mamba kernels and the M4V multi-modal Mamba text-to-video model."""

from m4v import kernels

__version__ = "0.1.0"

__all__ = ["kernels", "__version__"]
