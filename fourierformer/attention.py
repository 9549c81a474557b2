"""Fourier-integral attention: the eager reference, the float64 oracle and the module.

For q[B,H,Nq,D], k[B,H,Nk,D], v[B,H,Nk,D] and a scalar R:

    x_ijd = R * (q_id - k_jd)
    w_ij  = prod_d sinc(x_ijd) ** power        (sinc(x) = sin(x)/x, sinc(0) = 1)
    out_i = sum_j w_ij v_j / (sum_j w_ij + eps)

With ``causal``, w_ij = 0 for j > i + (Nk - Nq) (the mask is bottom-right aligned).
"""

from __future__ import annotations

import torch
from torch import nn

from fourierformer import opspec


def _causal_mask(nq: int, nk: int, device: torch.device) -> torch.Tensor:
    """Boolean [Nq, Nk] mask, True where key j is visible to query i."""
    i = torch.arange(nq, device=device).unsqueeze(1)
    j = torch.arange(nk, device=device).unsqueeze(0)
    return j <= i + (nk - nq)


def _sinc(x: torch.Tensor) -> torch.Tensor:
    """sin(x)/x with sinc(0) = 1 (the unnormalized sinc, unlike torch.sinc)."""
    safe = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.ones_like(x), torch.sin(safe) / safe)


def fourier_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, R: torch.Tensor | float,
    power: int = opspec.POWER.default, eps: float = opspec.EPS.default, causal: bool = False,
) -> torch.Tensor:
    """The eager model's attention, as in the paper's code: materializes [B,H,Nq,Nk,D]."""
    x = R * (q.unsqueeze(-2) - k.unsqueeze(-3))
    w = (_sinc(x) ** power).prod(dim=-1)
    if causal:
        w = w.masked_fill(~_causal_mask(q.shape[-2], k.shape[-2], q.device), 0.0)
    return (w @ v) / (w.sum(dim=-1, keepdim=True) + eps)


def fourier_attention_oracle(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, R: torch.Tensor | float,
    power: int = opspec.POWER.default, eps: float = opspec.EPS.default, causal: bool = False,
    block: int = 64, with_row_sums: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float64 ground truth, computed over blocks of queries to bound memory; returns float64.

    With ``with_row_sums`` also returns sum_j w_ij [B,H,Nq], to check that a test is not dominated by eps.
    """
    q, k, v = q.double(), k.double(), v.double()
    R = torch.as_tensor(R, dtype=torch.float64)
    nq, nk = q.shape[-2], k.shape[-2]
    visible = _causal_mask(nq, nk, q.device) if causal else None
    outs, sums = [], []
    for start in range(0, nq, block):
        x = R * (q[..., start:start + block, None, :] - k[..., None, :, :])
        w = (_sinc(x) ** power).prod(dim=-1)
        if visible is not None:
            w = w * visible[start:start + block]
        sums.append(w.sum(dim=-1))
        outs.append((w @ v) / (sums[-1].unsqueeze(-1) + eps))
    out = torch.cat(outs, dim=-2)
    return (out, torch.cat(sums, dim=-1)) if with_row_sums else out


class FourierAttention(nn.Module):
    """The attention kernel with its learnable bandwidth ``paramR`` (shape [1], named as in the official code).

    ``attend(q, k, v)`` (also ``forward``) computes it: one ONNX FourierAttention node under ONNX export, the eager
    reference otherwise, or a fused kernel once ``fused`` is set (export/torch_op.py's ``fuse``). The paper's
    attention modules subclass it and add their projections, so ``paramR`` sits where the official code has it.
    """

    def __init__(self, power: int = opspec.POWER.default, eps: float = opspec.EPS.default, causal: bool = False,
                 R: float = opspec.R.default):
        super().__init__()
        attrs = opspec.check_attributes({"power": power, "eps": eps, "causal": int(causal)}, opspec.NODE_ATTRIBUTES)
        self.power, self.eps, self.causal = int(attrs["power"]), float(attrs["eps"]), bool(attrs["causal"])
        self.paramR = nn.Parameter(torch.full((1,), float(R)))
        self.fused: nn.Module | None = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """out[B,H,Nq,D] for q[B,H,Nq,D], k and v [B,H,Nk,D]."""
        if self.fused is not None:
            return self.fused(q, k, v)
        R = self.paramR.reshape(()).abs()  # sinc is even: the sign of a learned R does not matter
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(
                f"{opspec.DOMAIN}::{opspec.OP_TYPE}",
                (q, k, v, R.to(q.dtype)),
                {"power": self.power, "eps": self.eps, "causal": int(self.causal)},
                dtype=q.dtype, shape=q.shape, version=opspec.VERSION,
            )
        return fourier_attention_reference(q, k, v, R, self.power, self.eps, self.causal)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(q, k, v)

    def extra_repr(self) -> str:
        return f"power={self.power}, eps={self.eps}, causal={self.causal}"
