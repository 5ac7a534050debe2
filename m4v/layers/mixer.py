"""The Mamba-1 (S6) mixer, token-major throughout."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m4v.kernels.conv1d import causal_conv1d
from m4v.kernels.selective_scan import selective_scan
from m4v.layers.mixer_autograd import MixerShape, mamba_inner, one_node_enabled
from m4v.layers.projections import forked_linear, split_linear


def _plain_linear(layer: nn.Module) -> bool:
    """Whether calling ``layer`` is F.linear on its weight and bias and nothing more."""
    return type(layer) is nn.Linear and not layer._forward_hooks and not layer._forward_pre_hooks


class MambaMixer(nn.Module):
    """in_proj -> causal depthwise conv + SiLU -> x_proj -> dt_proj -> selective scan (D skip, z
    gate) -> out_proj, with Mamba-1's initialisation of A_log, D and the dt bias.

    Activations stay (batch, tokens, channels); the scan reads (batch, channels, tokens) views of
    them through strides, so no transpose copy is made and every GEMM output is (tokens, features).

    Args:
        d_model: hidden size. d_state: N. d_conv: conv width. expand: d_inner = int(expand * d_model).
        dt_rank: "auto" (ceil(d_model / 16)) or an int. dt_min, dt_max, dt_init_floor: dt bias init.
        backend: the selective-scan backend ("auto", "cuda", "triton", "reference").
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner)) if conv_bias else None
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba-1 init: S4D-real A, D = 1, dt log-uniform in [dt_min, dt_max] through softplus."""
        bound = 1.0 / math.sqrt(self.d_conv)  # nn.Conv1d's default for a depthwise conv
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        dt_std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        device = self.A_log.device
        dt = torch.exp(torch.rand(self.d_inner, device=device) * (math.log(self.dt_max) - math.log(self.dt_min))
                       + math.log(self.dt_min)).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device))
                         .repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def forward(self, hidden: Tensor, initial_state: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                return_last_state: bool = False):
        """hidden (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        initial_state (num_seqs, d_inner, d_state) seeds the scan (the conv starts from zeros);
        cu_seqlens packs sequences (batch 1) for both the conv and the scan. With
        ``return_last_state`` also returns the scan's final state (num_seqs, d_inner, d_state).
        """
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ValueError(f"MambaMixer: hidden must be (batch, seqlen, {self.d_model}), got {tuple(hidden.shape)}")
        if one_node_enabled() and all(_plain_linear(layer) for layer in (self.in_proj, self.x_proj, self.out_proj)):
            # Eager training: in_proj, then one autograd node for the rest (m4v/layers/mixer_autograd.py).
            out, last_state = mamba_inner(hidden, self.in_proj, self.conv_weight, self.conv_bias, self.x_proj,
                                          self.dt_proj, self.A_log, self.D, self.out_proj,
                                          MixerShape(self.d_inner, self.dt_rank, self.d_state, self.backend),
                                          initial_state, cu_seqlens)
            return (out, last_state) if return_last_state else out
        # in_proj's and x_proj's own autograd functions spare the backward a concatenation of dx and
        # dz and a separate add of x's two gradients (scan and x_proj); a wrapped layer (LoRA) or
        # one with hooks is called as it is.
        if _plain_linear(self.in_proj):
            x, z = split_linear(hidden, self.in_proj.weight, self.in_proj.bias, (self.d_inner, self.d_inner))
        else:
            x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = causal_conv1d(x, self.conv_weight, self.conv_bias, cu_seqlens, activation="silu", backend=self.backend)
        x, x_dbl = forked_linear(x, self.x_proj.weight) if _plain_linear(self.x_proj) else (x, self.x_proj(x))
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias goes into the scan's softplus
        y, last_state = selective_scan(x.mT, delta.mT, -torch.exp(self.A_log.float()), B.mT, C.mT, self.D.float(),
                                       z=z.mT, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                       return_last_state=True, initial_state=initial_state, cu_seqlens=cu_seqlens,
                                       backend=self.backend)
        # The CUDA scan returns token-major y for token-major input, so y.mT is already contiguous; the
        # other backends' y is copied once, since GEMMs on the transposed view of an odd-length
        # sequence run on cuBLAS's align-1 kernels (1.5 ms per call at the 768p unit).
        out = self.out_proj(y.mT.contiguous())
        return (out, last_state) if return_last_state else out


__all__ = ["MambaMixer"]
