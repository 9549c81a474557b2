"""The FourierFormer models: a WikiText-103 language model and DeiT, with Fourier or softmax attention."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from fourierformer.attention import FourierAttention, SoftmaxAttention
from fourierformer.configs import LMConfig, ModelConfig, ViTConfig

log = logging.getLogger(__name__)


class MultiHeadAttention(nn.Module):
    """Projections around a pluggable attention kernel (Fourier or softmax)."""

    def __init__(self, dim: int, heads: int, attention: str, causal: bool, power: int, eps: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.kernel = FourierAttention(power, eps, causal) if attention == "fourier" else SoftmaxAttention(causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = self.kernel(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, hidden: int, attention: str, causal: bool, power: int, eps: float,
                 activation: type[nn.Module], norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, heads, attention, causal, power, eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), activation(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """[length, dim] sinusoidal position encodings (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class FourierLM(nn.Module):
    """Causal language model of the paper's WikiText-103 experiments: tokens[B,T] -> logits[B,T,V]."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.register_buffer("positions", _sinusoidal_positions(config.context, config.d_model), persistent=False)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.d_ff, config.attention, True, config.power, config.eps,
                  nn.ReLU, 1e-5)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) * math.sqrt(self.config.d_model) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.t()


class FourierViT(nn.Module):
    """DeiT-style image classifier: images[B,C,H,W] -> logits[B,classes]."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = nn.Conv2d(config.in_chans, config.dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, config.dim))
        hidden = int(config.dim * config.mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, hidden, config.attention, False, config.power, config.eps, nn.GELU, 1e-6)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.head = nn.Linear(config.dim, config.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def create_model(config: ModelConfig, seed: int = 0) -> nn.Module:
    """A model of ``config`` in eval mode, its random weights reproducible from ``seed``."""
    torch.manual_seed(seed)
    model = FourierLM(config) if isinstance(config, LMConfig) else FourierViT(config)
    return model.eval()


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a plain state_dict file into ``model``; ValueError says what does not fit."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        raise ValueError(f"checkpoint {path} is not a readable PyTorch state_dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(n for n in set(own) & set(state) if tuple(own[n].shape) != tuple(state[n].shape))
    problems = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
    if problems:
        raise ValueError(f"checkpoint {path} does not fit the model config ({'; '.join(problems)})")
    model.load_state_dict(state)
    log.info("loaded checkpoint %s", path)


def example_inputs(config: ModelConfig, batch: int = 2, seq: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random named inputs: ``tokens`` for an LM (seq defaults to its context), ``images`` for a ViT."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(config, LMConfig):
        length = config.context if seq is None else seq
        if not 1 <= length <= config.context:
            raise ValueError(f"sequence length {length} is outside 1..{config.context} (the model's context)")
        return {"tokens": torch.randint(0, config.vocab_size, (batch, length), generator=gen)}
    size = config.image_size
    return {"images": torch.randn(batch, config.in_chans, size, size, generator=gen)}
