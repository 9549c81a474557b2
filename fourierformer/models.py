"""The paper's FourierFormers as its official code defines them, with the official module and parameter names.

* DeiT (``imagenet/models.py``, ``deit_fourier_tiny_patch16_224``): timm's VisionTransformer layout, pre-LN blocks,
  a fused qkv projection with bias and a learnable ``paramR`` per attention layer, no 1/sqrt(d) scale.
* The WikiText-103 language model (``wikitext103/lmtool-fwms/src/mem_transformer.py``, ``MemTransformerLM`` with
  attention type 203 and ``--adaptive --mem_len 0``): post-LN blocks, bias-free q/k/v/o projections, Transformer-XL's
  absolute sinusoidal positions, adaptive input (div_val 1) and the adaptive log-softmax head.

An official state_dict loads into these models as it is. The official LM is time-major ([T, B]); these models are
batch-first (tokens[B, T] -> log_probs[B, T, V]) and compute the same numbers. ``attention="softmax"`` gives the
official baselines: the LM's attention type 2 and timm's softmax attention for DeiT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fourierformer.attention import FourierAttention
from fourierformer.configs import LMConfig, ModelConfig, ViTConfig, example_arrays, io_shapes

LM_R_INIT = 2.0
"""Initial paramR of the language model's attention (the official FourierAttn's)."""
VIT_R_INIT = 1.0
"""Initial paramR of DeiT's attention (the official FourierAttention's)."""


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, H, T, D]."""
    b, t, c = x.shape
    return x.reshape(b, t, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H*D]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused [B, N, 3*C] projection -> q, k, v as [B, H, N, C/H] (timm's layout of the qkv weight)."""
    b, n, c3 = qkv.shape
    return qkv.reshape(b, n, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


# --- DeiT -------------------------------------------------------------------------------------------------------

class ViTFourierAttention(FourierAttention):
    """DeiT's Fourier attention: qkv (with bias), the kernel with ``paramR``, proj."""

    def __init__(self, dim: int, num_heads: int, power: int, eps: float):
        super().__init__(power, eps, causal=False, R=VIT_R_INIT)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(_merge_heads(self.attend(*_split_qkv(self.qkv(x), self.num_heads))))


class ViTSoftmaxAttention(nn.Module):
    """timm's softmax attention, the DeiT baseline: qkv (with bias), softmax(q k^T / sqrt(d)) v, proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split_qkv(self.qkv(x), self.num_heads)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: images[B, C, H, W] -> [B, patches, dim]."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, config.patch_size, stride=config.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """fc1, exact GELU, fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = (ViTFourierAttention(dim, config.num_heads, config.power, config.eps)
                     if config.attention == "fourier" else ViTSoftmaxAttention(dim, config.num_heads))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """DeiT: images[B, C, H, W] -> logits[B, classes] from the class token."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.embed_dim % config.num_heads:
            raise ValueError(f"embed_dim {config.embed_dim} is not divisible by num_heads {config.num_heads}")
        self.config = config
        patches = (config.img_size // config.patch_size) ** 2
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, config.embed_dim))
        self.blocks = nn.Sequential(*(Block(config) for _ in range(config.depth)))
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.head = nn.Linear(config.embed_dim, config.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# --- WikiText-103 language model ---------------------------------------------------------------------------------

class AdaptiveEmbedding(nn.Module):
    """Adaptive input with div_val 1: one embedding table, scaled by sqrt(d_model)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.emb_scale = config.d_model ** 0.5
        self.emb_layers = nn.ModuleList([nn.Embedding(config.n_token, config.d_model)])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.emb_layers[0](tokens) * self.emb_scale


class PositionalEmbedding(nn.Module):
    """Transformer-XL's absolute sinusoidal positions: [sin | cos] halves of pos * inv_freq, pos = T-1 down to 0.

    The table is computed for every position up to ``max_length`` and sliced, so an exported graph holds it as a
    constant (float32-accurate in an fp16 build, where angles up to ``max_length`` would not be).
    """

    def __init__(self, d_model: int, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0.0, d_model, 2.0) / d_model))

    def forward(self, length: int) -> torch.Tensor:
        """[length, d_model] encodings of positions length-1, ..., 1, 0."""
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds the model's context {self.max_length}")
        positions = torch.arange(self.max_length, dtype=self.inv_freq.dtype, device=self.inv_freq.device)
        angles = positions[:, None] * self.inv_freq[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)[:length].flip(0)


class FourierAttn(FourierAttention):
    """The LM's Fourier attention (type 203): bias-free q/k/v/o projections, causal kernel, post-LN residual."""

    def __init__(self, config: LMConfig):
        super().__init__(config.power, config.eps, causal=True, R=LM_R_INIT)
        inner = config.n_head * config.d_head
        self.n_head = config.n_head
        self.q_net = nn.Linear(config.d_model, inner, bias=False)
        self.k_net = nn.Linear(config.d_model, inner, bias=False)
        self.v_net = nn.Linear(config.d_model, inner, bias=False)
        self.o_net = nn.Linear(inner, config.d_model, bias=False)
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(net(h), self.n_head) for net in (self.q_net, self.k_net, self.v_net))
        return self.layer_norm(h + self.o_net(_merge_heads(self.attend(q, k, v))))


class MultiHeadAttn(nn.Module):
    """The LM's softmax baseline (type 2): q_net, a fused kv_net, causal softmax(q k^T / sqrt(d)), o_net, post-LN."""

    def __init__(self, config: LMConfig):
        super().__init__()
        inner = config.n_head * config.d_head
        self.n_head = config.n_head
        self.q_net = nn.Linear(config.d_model, inner, bias=False)
        self.kv_net = nn.Linear(config.d_model, 2 * inner, bias=False)
        self.o_net = nn.Linear(inner, config.d_model, bias=False)
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k, v = self.kv_net(h).chunk(2, dim=-1)
        q, k, v = (_split_heads(x, self.n_head) for x in (self.q_net(h), k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.layer_norm(h + self.o_net(_merge_heads(out)))


class PositionwiseFF(nn.Module):
    """Post-LN feed-forward: LN(x + W2 relu(W1 x + b1) + b2); CoreNet indices as the official Sequential's."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.CoreNet = nn.Sequential(nn.Linear(config.d_model, config.d_inner), nn.ReLU(), nn.Dropout(0.0),
                                     nn.Linear(config.d_inner, config.d_model), nn.Dropout(0.0))
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x + self.CoreNet(x))


class DecoderLayer(nn.Module):
    """dec_attn, then pos_ff."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.dec_attn = FourierAttn(config) if config.attention == "fourier" else MultiHeadAttn(config)
        self.pos_ff = PositionwiseFF(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.pos_ff(self.dec_attn(h))


class ProjectedAdaptiveLogSoftmax(nn.Module):
    """The adaptive log-softmax head with div_val 1 and no projections, as full log-probabilities.

    The head covers the shortlist [0, cutoffs[0]) plus one logit per tail cluster (``cluster_weight``,
    ``cluster_bias``); token t of tail cluster i (1-based, [cutoffs[i-1], cutoffs[i])) has
    log p(t) = head_logprob[-i] + log_softmax(tail logits of cluster i)[t - cutoffs[i-1]]: cluster i's probability is
    head column -i, the official rule (so the last cluster_weight row belongs to the first tail cluster).
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.bounds = (0, *config.cutoffs, config.n_token)
        if config.cutoffs:
            self.cluster_weight = nn.Parameter(torch.zeros(len(config.cutoffs), config.d_model))
            self.cluster_bias = nn.Parameter(torch.zeros(len(config.cutoffs)))
        self.out_layers = nn.ModuleList([nn.Linear(config.d_model, config.n_token)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """log_probs[..., n_token] of hidden[..., d_model] (a plain log-softmax without cutoffs)."""
        logits = self.out_layers[0](hidden)
        if len(self.bounds) == 2:
            return F.log_softmax(logits, dim=-1)
        shortlist = self.bounds[1]
        head = torch.cat([logits[..., :shortlist], F.linear(hidden, self.cluster_weight, self.cluster_bias)], dim=-1)
        head = F.log_softmax(head, dim=-1)
        parts = [head[..., :shortlist]]
        for i, (low, high) in enumerate(zip(self.bounds[1:-1], self.bounds[2:]), start=1):
            cluster = head.shape[-1] - i
            parts.append(F.log_softmax(logits[..., low:high], dim=-1) + head[..., cluster:cluster + 1])
        return torch.cat(parts, dim=-1)


class MemTransformerLM(nn.Module):
    """The paper's WikiText-103 LM without memory: tokens[B, T] -> log_probs[B, T, n_token] (next-token)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.word_emb = AdaptiveEmbedding(config)
        self.pos_emb = PositionalEmbedding(config.d_model, config.tgt_len)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.crit = ProjectedAdaptiveLogSoftmax(config)
        if config.tie_weight:
            self.crit.out_layers[0].weight = self.word_emb.emb_layers[0].weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.word_emb(tokens) + self.pos_emb(tokens.shape[1])
        for layer in self.layers:
            h = layer(h)
        return self.crit(h)


def _init_lm_weights(model: MemTransformerLM, std: float = 0.02) -> None:
    """Random weights the way the official train.py initializes them (normal init): N(0, std) weights and
    embeddings, zero biases, LayerNorm weights N(1, std)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, 1.0, std)
            nn.init.zeros_(module.bias)
    if model.config.cutoffs:
        nn.init.normal_(model.crit.cluster_weight, 0.0, std)
        nn.init.zeros_(model.crit.cluster_bias)


def create_model(config: ModelConfig, seed: int = 0) -> nn.Module:
    """A model of ``config`` in eval mode, its random weights reproducible from ``seed``."""
    torch.manual_seed(seed)
    if isinstance(config, LMConfig):
        model = MemTransformerLM(config)
        _init_lm_weights(model)
    else:
        model = VisionTransformer(config)
    return model.eval()


def output_names(config: ModelConfig) -> list[str]:
    """The model's output names: ``log_probs`` for a language model, ``logits`` for a classifier."""
    return list(io_shapes(config)[1])


def example_inputs(config: ModelConfig, batch: int = 2, seq: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`fourierformer.configs.example_arrays` as CPU tensors."""
    return {name: torch.from_numpy(value) for name, value in example_arrays(config, batch, seq, seed).items()}
