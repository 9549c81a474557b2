"""FourierAttention as a PyTorch custom op on our kernels, and :func:`fuse`, which puts it into a model.

``torch.ops.fourierformer.fourier_attention(q, k, v, R, power, eps, causal)`` runs the CPU kernel on CPU tensors
(:mod:`export.cpu_kernel`) and the CUDA kernel on CUDA tensors (:mod:`export.cuda_kernel`); it has a fake
(meta) implementation, so it traces under ``torch.compile`` and captures in CUDA graphs, and no autograd
formula: it is for inference. R is a Python float, read once by :func:`fuse`.
"""

from __future__ import annotations

import torch
from torch import nn

from export import cpu_kernel, cuda_kernel
from fourierformer import opspec
from fourierformer.attention import FourierAttention


@torch.library.custom_op(opspec.TORCH_OP, mutates_args=(), device_types="cpu")
def fourier_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, R: float, power: int, eps: float,
                      causal: bool) -> torch.Tensor:
    """out[B,H,Nq,D] for q[B,H,Nq,D], k/v[B,H,Nk,D] (semantics: fourierformer/attention.py)."""
    return cpu_kernel.fourier_attention_cpu(q, k, v, R, power, eps, causal)


@fourier_attention.register_kernel("cuda")
def _cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, R: float, power: int, eps: float,
          causal: bool) -> torch.Tensor:
    return cuda_kernel.fourier_attention_cuda(q, k, v, R, power, eps, causal)


@fourier_attention.register_fake
def _fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, R: float, power: int, eps: float,
          causal: bool) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


class FusedFourierAttention(nn.Module):
    """Inference kernel of a :class:`FourierAttention` (set by :func:`fuse`): R frozen to a float, our fused kernels."""

    def __init__(self, R: float, power: int, eps: float, causal: bool):
        super().__init__()
        opspec.check_attributes({"R": R, "power": power, "eps": eps, "causal": int(causal)})
        self.R, self.power, self.eps, self.causal = float(R), int(power), float(eps), bool(causal)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fourier_attention(q, k, v, self.R, self.power, self.eps, self.causal)

    def extra_repr(self) -> str:
        return f"R={self.R}, power={self.power}, eps={self.eps}, causal={self.causal}"


def fuse(model: nn.Module) -> nn.Module:
    """Make every FourierAttention in ``model`` (in place) compute with our fused kernels, its learned ``paramR``
    frozen to a float; returns ``model``. Parameters and the state_dict are unchanged."""
    for module in model.modules():
        if isinstance(module, FourierAttention):
            module.fused = FusedFourierAttention(abs(module.paramR.item()), module.power, module.eps, module.causal)
    return model
