"""Named model configurations: the paper's models and small instances of the same architectures for tests.

Field names are the official code's hyperparameter names (``MemTransformerLM``'s arguments for the language
model, timm's ``VisionTransformer`` arguments for DeiT), so a difference between a checkpoint and a config reads
in the words its training script used.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, Union

import numpy as np

from fourierformer import opspec

AttentionKind = Literal["fourier", "softmax"]
WIKITEXT103_VOCAB = 267_735
"""Word-level vocabulary of WikiText-103 (the paper's language models)."""
WIKITEXT103_CUTOFFS = (20_000, 40_000, 200_000)
"""Adaptive input and softmax cutoffs of the official WikiText-103 runs (``--adaptive``, train.py)."""


@dataclass(frozen=True)
class LMConfig:
    """The WikiText-103 language model of the official code (``MemTransformerLM``, attention type 203).

    Post-LayerNorm decoder blocks, absolute sinusoidal positions, adaptive input with div_val 1 and the adaptive
    log-softmax head with ``cutoffs``, output weights tied to the embedding when ``tie_weight``. ``tgt_len`` is the
    training context, the longest sequence the deployed model accepts.
    """

    n_token: int
    n_layer: int
    n_head: int
    d_model: int
    d_head: int
    d_inner: int
    tgt_len: int
    cutoffs: tuple[int, ...]
    tie_weight: bool = True
    attention: AttentionKind = "fourier"
    power: int = opspec.POWER.default
    eps: float = opspec.EPS.default
    kind: Literal["lm"] = "lm"

    def __post_init__(self) -> None:
        _check_fields(self)
        if not all(a < b for a, b in zip((0, *self.cutoffs), (*self.cutoffs, self.n_token))):
            raise ValueError(f"cutoffs {list(self.cutoffs)} must increase strictly inside 1..{self.n_token - 1}")


@dataclass(frozen=True)
class ViTConfig:
    """DeiT as the official code defines it (timm's VisionTransformer layout: class token, learned positions,
    pre-norm blocks with a fused qkv projection with bias, LayerNorm eps 1e-6, exact GELU)."""

    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    attention: AttentionKind = "fourier"
    power: int = opspec.POWER.default
    eps: float = opspec.EPS.default
    kind: Literal["vit"] = "vit"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.img_size % self.patch_size or self.embed_dim % self.num_heads:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}, and "
                             f"embed_dim {self.embed_dim} of num_heads {self.num_heads}")


ModelConfig = Union[LMConfig, ViTConfig]


MAX_SIZE = 1 << 20
"""The largest size a config field may hold (WikiText-103's vocabulary is 267 735)."""
MAX_LAYERS = 1024
"""The most layers a config may have."""
MAX_RATIO = 64.0
"""The largest mlp_ratio."""


def _check_fields(config: ModelConfig) -> None:
    """ValueError naming the first field of the wrong type or range: sizes are integers in 1..MAX_SIZE (layers
    1..MAX_LAYERS), floats finite and > 0, literals one of their values, and the op's attributes (power, eps)
    valid for the op."""
    hints = typing.get_type_hints(type(config))
    for spec in fields(config):
        value, hint = getattr(config, spec.name), hints[spec.name]
        if hint is int:
            good = type(value) is int and 1 <= value <= _largest(spec.name)
        elif hint is float:
            good = type(value) in (int, float) and math.isfinite(value) and 0 < value <= _largest(spec.name)
        elif hint is bool:
            good = type(value) is bool
        elif typing.get_origin(hint) is Literal:
            good = value in typing.get_args(hint)
        else:  # cutoffs
            good = isinstance(value, tuple) and all(type(v) is int and 1 <= v <= MAX_SIZE for v in value)
        if not good:
            raise ValueError(f"field {spec.name} is {value!r}, not {_expected(hint, spec.name)}")
    try:
        opspec.check_attributes({"power": config.power, "eps": config.eps})
    except ValueError as exc:
        raise ValueError(f"the attention's {exc}") from exc


def _largest(name: str) -> float:
    """The largest value field ``name`` may hold."""
    return {"n_layer": MAX_LAYERS, "depth": MAX_LAYERS, "mlp_ratio": MAX_RATIO}.get(name, MAX_SIZE)


def _expected(hint: object, name: str) -> str:
    """What field ``name`` of type ``hint`` must hold, in words."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return {int: f"an integer in 1..{_largest(name)}", float: f"a finite number in (0, {_largest(name):g}]",
            bool: "true or false"}.get(hint, f"integers in 1..{MAX_SIZE}")


def io_shapes(config: ModelConfig) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    """The model's inputs and outputs, each name with its shape; ``batch`` and ``seq`` name the dynamic axes."""
    if isinstance(config, LMConfig):
        return {"tokens": ["batch", "seq"]}, {"log_probs": ["batch", "seq", config.n_token]}
    size = config.img_size
    return {"images": ["batch", config.in_chans, size, size]}, {"logits": ["batch", config.num_classes]}

CONFIGS: dict[str, ModelConfig] = {
    "lm-small": LMConfig(WIKITEXT103_VOCAB, n_layer=16, n_head=8, d_model=128, d_head=16, d_inner=2048, tgt_len=256,
                         cutoffs=WIKITEXT103_CUTOFFS),
    "lm-medium": LMConfig(WIKITEXT103_VOCAB, n_layer=16, n_head=8, d_model=256, d_head=32, d_inner=2048, tgt_len=384,
                          cutoffs=WIKITEXT103_CUTOFFS),
    "deit-tiny": ViTConfig(224, 16, 3, 1000, embed_dim=192, depth=12, num_heads=3),
    "tiny-lm": LMConfig(n_token=512, n_layer=2, n_head=4, d_model=64, d_head=16, d_inner=128, tgt_len=64,
                        cutoffs=(64, 128, 320)),
    "tiny-vit": ViTConfig(32, 8, 3, 10, embed_dim=48, depth=2, num_heads=3),
}
"""Every named model: the paper's WikiText-103 LMs and DeiT-tiny, and tiny instances of them for tests."""


def get_config(name: str, attention: AttentionKind = "fourier") -> ModelConfig:
    """The named config, with the attention kind switched if asked; KeyError names the choices."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], attention=attention)


def name_of(config: ModelConfig) -> str | None:
    """The name of the named config equal to ``config``, if there is one."""
    return next((name for name, named in CONFIGS.items() if named == config), None)


def differences(config: ModelConfig, other: ModelConfig) -> list[str]:
    """``field a vs b`` for each field where two configs differ."""
    if type(config) is not type(other):
        return [f"kind {config.kind} vs {other.kind}"]
    return [f"{f.name} {getattr(config, f.name)} vs {getattr(other, f.name)}" for f in fields(config)
            if getattr(config, f.name) != getattr(other, f.name)]


def config_to_dict(config: ModelConfig) -> dict:
    """A JSON-ready dict of the config (for manifests)."""
    data = asdict(config)
    if isinstance(config, LMConfig):
        data["cutoffs"] = list(config.cutoffs)
    return data


def config_from_dict(data: dict) -> ModelConfig:
    """Inverse of :func:`config_to_dict`; ValueError names a missing, unknown or bad field."""
    kinds = {"lm": LMConfig, "vit": ViTConfig}
    kind = data.get("kind") if isinstance(data, dict) else data
    if kind not in kinds:
        raise ValueError(f"a model config needs kind 'lm' or 'vit', got {kind!r}")
    cls = kinds[kind]
    values = dict(data)
    if cls is LMConfig and isinstance(values.get("cutoffs"), list):
        values["cutoffs"] = tuple(values["cutoffs"])
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"bad {kind} config: {exc}") from exc


def example_arrays(config: ModelConfig, batch: int = 2, seq: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random named inputs as numpy arrays: int64 ``tokens`` for an LM (seq defaults to its context), float32
    ``images`` for a ViT. Reproducible from ``seed``; needs no torch."""
    rng = np.random.default_rng(seed)
    if isinstance(config, LMConfig):
        length = config.tgt_len if seq is None else seq
        if not 1 <= length <= config.tgt_len:
            raise ValueError(f"sequence length {length} is outside 1..{config.tgt_len} (the model's context)")
        return {"tokens": rng.integers(0, config.n_token, (batch, length), dtype=np.int64)}
    size = config.img_size
    return {"images": rng.standard_normal((batch, config.in_chans, size, size), dtype=np.float32)}
