"""Named model configurations: the paper's models and tiny ones for tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal, Union

from fourierformer import opspec

AttentionKind = Literal["fourier", "softmax"]
WIKITEXT103_VOCAB = 267_735
"""Word-level vocabulary of WikiText-103 (the paper's language models)."""


@dataclass(frozen=True)
class LMConfig:
    """A causal decoder-only language model (pre-norm, tied embeddings, sinusoidal positions)."""

    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    context: int
    attention: AttentionKind = "fourier"
    power: int = opspec.POWER.default
    eps: float = opspec.EPS.default
    kind: Literal["lm"] = "lm"


@dataclass(frozen=True)
class ViTConfig:
    """A DeiT-style vision transformer (class token, learned positions, pre-norm)."""

    image_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    attention: AttentionKind = "fourier"
    power: int = opspec.POWER.default
    eps: float = opspec.EPS.default
    kind: Literal["vit"] = "vit"


ModelConfig = Union[LMConfig, ViTConfig]

CONFIGS: dict[str, ModelConfig] = {
    "lm-small": LMConfig(WIKITEXT103_VOCAB, d_model=128, n_heads=8, n_layers=16, d_ff=2048, context=256),
    "lm-medium": LMConfig(WIKITEXT103_VOCAB, d_model=256, n_heads=8, n_layers=16, d_ff=2048, context=384),
    "deit-tiny": ViTConfig(224, 16, 3, 1000, dim=192, depth=12, heads=3),
    "tiny-lm": LMConfig(vocab_size=512, d_model=64, n_heads=4, n_layers=2, d_ff=128, context=64),
    "tiny-vit": ViTConfig(32, 8, 3, 10, dim=48, depth=2, heads=3),
}
"""Every named model: the paper's WikiText-103 LMs and DeiT-tiny, and tiny ones for tests."""


def get_config(name: str, attention: AttentionKind = "fourier") -> ModelConfig:
    """The named config, with the attention kind switched if asked; KeyError names the choices."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], attention=attention)


def config_to_dict(config: ModelConfig) -> dict:
    """A JSON-ready dict of the config (for manifests)."""
    return asdict(config)


def config_from_dict(data: dict) -> ModelConfig:
    """Inverse of :func:`config_to_dict`."""
    cls = LMConfig if data["kind"] == "lm" else ViTConfig
    return cls(**data)
