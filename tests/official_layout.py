"""Checkpoints as the official FourierFormer code writes them, and a float64 reference of the paper's models.

Written for the tests from the paper's equations and the official code's layout (GitHub
minhtannguyen/FourierFormer_NeurIPS), sharing no code with ``fourierformer/``: the state_dict names and shapes, the
four file formats users hold, and a time-major float64 forward pass of each model (the official LM runs [T, B]).
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

EPS = 1e-6
POWER = 4


@dataclass(frozen=True)
class DeiTHyper:
    """The hyperparameters of an official DeiT: deit_fourier_tiny_patch16_224 and smaller instances."""

    img_size: int = 224
    patch: int = 16
    chans: int = 3
    classes: int = 1000
    dim: int = 192
    depth: int = 12
    heads: int = 3


@dataclass(frozen=True)
class LMHyper:
    """The hyperparameters of an official MemTransformerLM (train.py's flags; --adaptive cutoffs)."""

    n_token: int
    n_layer: int
    n_head: int
    d_model: int
    d_head: int
    d_inner: int
    tgt_len: int
    cutoffs: tuple[int, ...]


TINY_DEIT = DeiTHyper(img_size=32, patch=8, classes=10, dim=48, depth=2, heads=3)
"""The shapes of the named config tiny-vit."""
DEIT_TINY = DeiTHyper()
TINY_LM = LMHyper(512, 2, 4, 64, 16, 128, 64, (64, 128, 320))
"""The shapes of the named config tiny-lm."""
LM_SMALL = LMHyper(267735, 16, 8, 128, 16, 2048, 256, (20000, 40000, 200000))
LM_MEDIUM = LMHyper(267735, 16, 8, 256, 32, 2048, 384, (20000, 40000, 200000))


def _qk_std(fan_in: int, head_dim: int, R: float) -> float:
    """Weight std giving R*(q_i - k_j) a per-dimension spread of 1.5/sqrt(head_dim) on unit-scale inputs: the
    attention is far from uniform, and its row sums stay far above eps."""
    return 1.5 / (math.sqrt(head_dim) * R * math.sqrt(2 * fan_in))


def _norm(gen: torch.Generator, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std + mean


def deit_state(h: DeiTHyper, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random official-layout DeiT state_dict (timm names): non-zero biases, LayerNorm weights away from 1, and a
    different paramR per block."""
    g = torch.Generator().manual_seed(seed)
    d, hd = h.dim, h.dim // h.heads
    patches = (h.img_size // h.patch) ** 2
    s = {"cls_token": _norm(g, 1, 1, d, std=0.5), "pos_embed": _norm(g, 1, patches + 1, d, std=0.5),
         "patch_embed.proj.weight": _norm(g, d, h.chans, h.patch, h.patch, std=1 / math.sqrt(h.chans * h.patch ** 2)),
         "patch_embed.proj.bias": _norm(g, d, std=0.1)}
    for i in range(h.depth):
        p, R = f"blocks.{i}.", 0.6 + 0.5 * i
        qk = _qk_std(d, hd, R)
        s.update({
            p + "norm1.weight": _norm(g, d, std=0.1, mean=1.0), p + "norm1.bias": _norm(g, d, std=0.1),
            p + "attn.qkv.weight": torch.cat([_norm(g, 2 * d, d, std=qk), _norm(g, d, d, std=1 / math.sqrt(d))]),
            p + "attn.qkv.bias": torch.cat([_norm(g, 2 * d, std=0.2 * qk), _norm(g, d, std=0.1)]),
            p + "attn.proj.weight": _norm(g, d, d, std=1 / math.sqrt(d)), p + "attn.proj.bias": _norm(g, d, std=0.1),
            p + "attn.paramR": torch.tensor([R]),
            p + "norm2.weight": _norm(g, d, std=0.1, mean=1.0), p + "norm2.bias": _norm(g, d, std=0.1),
            p + "mlp.fc1.weight": _norm(g, 4 * d, d, std=1 / math.sqrt(d)),
            p + "mlp.fc1.bias": _norm(g, 4 * d, std=0.1),
            p + "mlp.fc2.weight": _norm(g, d, 4 * d, std=1 / math.sqrt(4 * d)),
            p + "mlp.fc2.bias": _norm(g, d, std=0.1),
        })
    s.update({"norm.weight": _norm(g, d, std=0.1, mean=1.0), "norm.bias": _norm(g, d, std=0.1),
              "head.weight": _norm(g, h.classes, d, std=1 / math.sqrt(d)), "head.bias": _norm(g, h.classes, std=0.1)})
    return s


def lm_state(h: LMHyper, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random official-layout MemTransformerLM state_dict (attention type 203, adaptive input and softmax with
    div_val 1, tied output weights): non-zero biases, LayerNorm weights away from 1, a different paramR per layer."""
    g = torch.Generator().manual_seed(seed)
    d, inner = h.d_model, h.n_head * h.d_head
    embedding = _norm(g, h.n_token, d, std=1 / math.sqrt(d))
    s = {"word_emb.emb_layers.0.weight": embedding,
         "pos_emb.inv_freq": 1 / (10000 ** (torch.arange(0.0, d, 2.0) / d))}
    for i in range(h.n_layer):
        p, R = f"layers.{i}.", 0.7 + 0.4 * i
        qk = _qk_std(d, h.d_head, R)
        s.update({
            p + "dec_attn.q_net.weight": _norm(g, inner, d, std=qk),
            p + "dec_attn.k_net.weight": _norm(g, inner, d, std=qk),
            p + "dec_attn.v_net.weight": _norm(g, inner, d, std=1 / math.sqrt(d)),
            p + "dec_attn.o_net.weight": _norm(g, d, inner, std=1 / math.sqrt(inner)),
            p + "dec_attn.layer_norm.weight": _norm(g, d, std=0.1, mean=1.0),
            p + "dec_attn.layer_norm.bias": _norm(g, d, std=0.1),
            p + "dec_attn.paramR": torch.tensor([R]),
            p + "pos_ff.CoreNet.0.weight": _norm(g, h.d_inner, d, std=1 / math.sqrt(d)),
            p + "pos_ff.CoreNet.0.bias": _norm(g, h.d_inner, std=0.1),
            p + "pos_ff.CoreNet.3.weight": _norm(g, d, h.d_inner, std=1 / math.sqrt(h.d_inner)),
            p + "pos_ff.CoreNet.3.bias": _norm(g, d, std=0.1),
            p + "pos_ff.layer_norm.weight": _norm(g, d, std=0.1, mean=1.0),
            p + "pos_ff.layer_norm.bias": _norm(g, d, std=0.1),
        })
    clusters = len(h.cutoffs)
    s.update({"crit.cluster_weight": _norm(g, clusters, d, std=1 / math.sqrt(d)),
              "crit.cluster_bias": _norm(g, clusters, std=1.0),
              "crit.out_layers.0.weight": embedding, "crit.out_layers.0.bias": _norm(g, h.n_token, std=0.5)})
    return s


# --- the file formats ----------------------------------------------------------------------------------------------

def deit_args(h: DeiTHyper, model: str = "deit_fourier_tiny_patch16_224") -> argparse.Namespace:
    """DeiT main.py's parsed arguments as its checkpoint stores them (a representative subset)."""
    return argparse.Namespace(model=model, input_size=h.img_size, nb_classes=h.classes, batch_size=64, epochs=300,
                              drop=0.0, drop_path=0.1, model_ema=True, model_ema_decay=0.99996, opt="adamw", lr=5e-4,
                              opt_betas=None, data_set="IMNET", output_dir="output", seed=0, distributed=False,
                              kernel_size=None, stride=None)


def write_deit_checkpoint(path: Path, state: dict, ema_state: dict, args: argparse.Namespace) -> None:
    """DeiT's checkpoint.pth: model, optimizer, lr_scheduler, epoch, model_ema, scaler, args."""
    optimizer = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 5e-4, "weight_decay": 0.05, "params": [0]}]}
    torch.save({"model": state, "optimizer": optimizer, "lr_scheduler": {"last_epoch": 9, "base_lrs": [5e-4]},
                "epoch": 9, "model_ema": ema_state, "scaler": {"scale": 65536.0, "_growth_tracker": 0}, "args": args},
               path)


def write_safetensors(path: Path, state: dict) -> None:
    """A safetensors state_dict (tied tensors saved as separate copies, as safetensors requires)."""
    save_file({name: t.clone().contiguous() for name, t in state.items()}, str(path))


_CLASSES = {"MemTransformerLM": "mem_transformer", "AdaptiveEmbedding": "mem_transformer",
            "PositionalEmbedding": "mem_transformer", "DecoderLayer": "mem_transformer",
            "FourierAttn": "mem_transformer", "MultiHeadAttn": "mem_transformer", "PositionwiseFF": "mem_transformer",
            "ProjectedAdaptiveLogSoftmax": "utils.proj_adaptive_softmax"}


def _none_params(count: int) -> nn.ParameterList:
    """The head's out_projs with d_proj == d_embed: one None projection per cluster, held in _parameters as the
    official code's ParameterList.append(None) does."""
    projs = nn.ParameterList()
    for i in range(count):
        projs.register_parameter(str(i), None)
    return projs


def write_lm_pickle(path: Path, state: dict, h: LMHyper, attn_type: int = 203, extra: dict | None = None) -> None:
    """The LM's model.pt as train.py writes it, ``torch.save(model)``: the whole module tree, pickled under the
    official classes' module paths. Those modules exist only while saving, as on a user's machine without them."""
    modules = {name: types.ModuleType(name) for name in ("mem_transformer", "utils", "utils.proj_adaptive_softmax")}
    C = {}
    for cls, module in _CLASSES.items():
        C[cls] = type(cls, (nn.Module,), {"__module__": module})
        setattr(modules[module], cls, C[cls])

    def make(cls: str, **attrs) -> nn.Module:
        obj = C[cls]()
        for key, value in attrs.items():
            setattr(obj, key, value)
        return obj

    def param(name: str) -> nn.Parameter:
        return nn.Parameter(state[name].clone())

    def linear(prefix: str, bias: bool) -> nn.Linear:
        weight = state[prefix + ".weight"]
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
        layer.weight = param(prefix + ".weight")
        if bias:
            layer.bias = param(prefix + ".bias")
        return layer

    def layer_norm(prefix: str) -> nn.LayerNorm:
        norm = nn.LayerNorm(h.d_model)
        norm.weight, norm.bias = param(prefix + ".weight"), param(prefix + ".bias")
        return norm

    ends = [*h.cutoffs, h.n_token]
    embedding = nn.Embedding(h.n_token, h.d_model)
    embedding.weight = param("word_emb.emb_layers.0.weight")
    word_emb = make("AdaptiveEmbedding", n_token=h.n_token, d_embed=h.d_model, d_proj=h.d_model, cutoffs=ends,
                    div_val=1, emb_scale=h.d_model ** 0.5, cutoff_ends=[0, *ends],
                    emb_layers=nn.ModuleList([embedding]), emb_projs=nn.ParameterList())
    pos_emb = make("PositionalEmbedding", demb=h.d_model)
    pos_emb.register_buffer("inv_freq", state["pos_emb.inv_freq"].clone())
    layers = nn.ModuleList()
    for i in range(h.n_layer):
        p = f"layers.{i}."
        attn = make("FourierAttn", n_head=h.n_head, d_model=h.d_model, d_head=h.d_head, dropout=0.1,
                    q_net=linear(p + "dec_attn.q_net", False), k_net=linear(p + "dec_attn.k_net", False),
                    v_net=linear(p + "dec_attn.v_net", False), drop=nn.Dropout(0.1), dropatt=nn.Dropout(0.0),
                    o_net=linear(p + "dec_attn.o_net", False), layer_norm=layer_norm(p + "dec_attn.layer_norm"),
                    pre_lnorm=False, paramR=param(p + "dec_attn.paramR"))
        core = nn.Sequential(linear(p + "pos_ff.CoreNet.0", True), nn.ReLU(inplace=True), nn.Dropout(0.1),
                             linear(p + "pos_ff.CoreNet.3", True), nn.Dropout(0.1))
        ff = make("PositionwiseFF", d_model=h.d_model, d_inner=h.d_inner, dropout=0.1, CoreNet=core,
                  layer_norm=layer_norm(p + "pos_ff.layer_norm"), pre_lnorm=False)
        layers.append(make("DecoderLayer", dec_attn=attn, pos_ff=ff, attn_type=attn_type))
    out_layer = nn.Linear(h.d_model, h.n_token)
    out_layer.weight, out_layer.bias = embedding.weight, param("crit.out_layers.0.bias")  # tie_weight
    crit = make("ProjectedAdaptiveLogSoftmax", n_token=h.n_token, d_embed=h.d_model, d_proj=h.d_model, cutoffs=ends,
                cutoff_ends=[0, *ends], div_val=1, shortlist_size=h.cutoffs[0], n_clusters=len(h.cutoffs),
                head_size=h.cutoffs[0] + len(h.cutoffs), cluster_weight=param("crit.cluster_weight"),
                cluster_bias=param("crit.cluster_bias"), out_layers=nn.ModuleList([out_layer]),
                out_projs=_none_params(len(ends)), keep_order=False)
    root = make("MemTransformerLM", n_token=h.n_token, no_pos=False, d_embed=h.d_model, d_model=h.d_model,
                n_head=h.n_head, d_head=h.d_head, word_emb=word_emb, drop=nn.Dropout(0.1), n_layer=h.n_layer,
                tgt_len=h.tgt_len, mem_len=0, ext_len=0, max_klen=h.tgt_len, attn_type=attn_type, layers=layers,
                sample_softmax=-1, crit=crit, same_length=False, clamp_len=-1, pos_emb=pos_emb, **(extra or {}))
    sys.modules.update(modules)
    try:
        torch.save(root, path)
    finally:
        for name in modules:
            del sys.modules[name]


# --- the float64 reference -------------------------------------------------------------------------------------------

def _fourier_weights(q: torch.Tensor, k: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """The official layout: q[Lq,B,H,D], k[Lk,B,H,D] -> prod_d sinc(R (q_id - k_jd)) ** POWER as [Lq,Lk,B,H]."""
    x = R * (q[:, None] - k[None])
    sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(x) / torch.where(x == 0, torch.ones_like(x), x))
    return sinc.prod(dim=-1) ** POWER


def _layer_norm(x: torch.Tensor, s: dict, prefix: str, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * s[prefix + ".weight"] + s[prefix + ".bias"]


def _linear(x: torch.Tensor, s: dict, prefix: str) -> torch.Tensor:
    out = x @ s[prefix + ".weight"].T
    return out + s[prefix + ".bias"] if prefix + ".bias" in s else out


def _double(state: dict) -> dict[str, torch.Tensor]:
    return {name: t.double() for name, t in state.items()}


def deit_logits(state: dict, h: DeiTHyper, images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Float64 logits of an official-layout DeiT, and the smallest attention row sum seen (to rule out eps)."""
    s, x = _double(state), images.double()
    b = x.shape[0]
    x = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=h.patch).flatten(2).transpose(1, 2)
    x = torch.cat([s["cls_token"].expand(b, -1, -1), x], 1) + s["pos_embed"]
    n, hd, smallest = x.shape[1], h.dim // h.heads, math.inf
    for i in range(h.depth):
        p = f"blocks.{i}."
        qkv = _linear(_layer_norm(x, s, p + "norm1", 1e-6), s, p + "attn.qkv").reshape(b, n, 3, h.heads, hd)
        q, k, v = (qkv[:, :, j].transpose(0, 1) for j in range(3))  # [N, B, H, D]
        w = _fourier_weights(q, k, s[p + "attn.paramR"][0])  # [Nq, Nk, B, H]
        sums = w.sum(1)
        smallest = min(smallest, float(sums.min()))
        attn = w / (sums[:, None] + EPS)
        out = torch.einsum("ijbn,jbnd->ibnd", attn, v).transpose(0, 1).reshape(b, n, h.dim)
        x = x + _linear(out, s, p + "attn.proj")
        y = _layer_norm(x, s, p + "norm2", 1e-6)
        x = x + _linear(F.gelu(_linear(y, s, p + "mlp.fc1")), s, p + "mlp.fc2")
    return _linear(_layer_norm(x, s, "norm", 1e-6)[:, 0], s, "head"), smallest


def _lm_hidden(s: dict, h: LMHyper, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The official time-major forward pass to the last hidden state [T, B, d] (post-LN blocks, no memory)."""
    data = tokens.T  # [T, B]
    t, b = data.shape
    positions = torch.arange(t - 1, -1, -1.0, dtype=torch.float64)
    angles = positions[:, None] * s["pos_emb.inv_freq"][None]
    positional = torch.cat([angles.sin(), angles.cos()], -1)[:, None]
    x = s["word_emb.emb_layers.0.weight"][data] * h.d_model ** 0.5 + positional
    masked = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)  # [Tq, Tk]: key after query
    smallest = math.inf
    for i in range(h.n_layer):
        p = f"layers.{i}."
        q, k, v = (_linear(x, s, p + f"dec_attn.{net}").reshape(t, b, h.n_head, h.d_head)
                   for net in ("q_net", "k_net", "v_net"))
        w = _fourier_weights(q, k, s[p + "dec_attn.paramR"][0]).masked_fill(masked[:, :, None, None], 0.0)
        sums = w.sum(1)
        smallest = min(smallest, float(sums.min()))
        vec = torch.einsum("ijbn,jbnd->ibnd", w / (sums[:, None] + EPS), v).reshape(t, b, h.n_head * h.d_head)
        x = _layer_norm(x + _linear(vec, s, p + "dec_attn.o_net"), s, p + "dec_attn.layer_norm", 1e-5)
        core = _linear(torch.relu(_linear(x, s, p + "pos_ff.CoreNet.0")), s, p + "pos_ff.CoreNet.3")
        x = _layer_norm(x + core, s, p + "pos_ff.layer_norm", 1e-5)
    return x, smallest


def _head_and_tails(s: dict, h: LMHyper, hidden: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The adaptive softmax's head log-probs (shortlist + one column per cluster) and each tail's log-probs."""
    weight, bias, ends = s["crit.out_layers.0.weight"], s["crit.out_layers.0.bias"], (0, *h.cutoffs, h.n_token)
    head = torch.cat([hidden @ weight[:ends[1]].T + bias[:ends[1]], hidden @ s["crit.cluster_weight"].T
                      + s["crit.cluster_bias"]], -1).log_softmax(-1)
    tails = [(hidden @ weight[lo:hi].T + bias[lo:hi]).log_softmax(-1) for lo, hi in zip(ends[1:-1], ends[2:])]
    return head, tails


def lm_log_probs(state: dict, h: LMHyper, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Float64 next-token log-probabilities [B, T, V] of an official-layout LM, and the smallest row sum seen."""
    s = _double(state)
    hidden, smallest = _lm_hidden(s, h, tokens)
    head, tails = _head_and_tails(s, h, hidden)
    parts = [head[..., :h.cutoffs[0]]] + [tail + head[..., -i, None] for i, tail in enumerate(tails, start=1)]
    return torch.cat(parts, -1).transpose(0, 1), smallest


def lm_nll(state: dict, h: LMHyper, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float64 NLL [B, T] of ``targets`` the way the official adaptive softmax computes its loss: the head's column for
    a shortlist token; head column -i plus the tail's log-prob for a token of tail cluster i."""
    s = _double(state)
    hidden, _ = _lm_hidden(s, h, tokens)
    head, tails = _head_and_tails(s, h, hidden)
    target, ends = targets.T, (0, *h.cutoffs, h.n_token)
    nll = -head.gather(-1, target.clamp(max=ends[1] - 1)[..., None])[..., 0]
    for i, tail in enumerate(tails, start=1):
        inside = (target >= ends[i]) & (target < ends[i + 1])
        local = (target - ends[i]).clamp(0, ends[i + 1] - ends[i] - 1)
        nll = torch.where(inside, -(head[..., -i] + tail.gather(-1, local[..., None])[..., 0]), nll)
    return nll.T
