"""Checkpoints as the official training code writes them, read without executing anything from the file.

Formats, detected from the file itself:

* ``deit-training-checkpoint``: DeiT's ``checkpoint.pth`` (imagenet/main.py), a dict with ``model``,
  ``model_ema``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler`` and ``args`` (an ``argparse.Namespace``);
  read with ``torch.load(weights_only=True)``, ``argparse.Namespace`` allowed.
* ``lm-module-pickle``: the language model's ``model.pt`` (train.py's ``torch.save(model)``), the whole pickled
  ``MemTransformerLM``. Its classes need not be installed: a restricted unpickler imports nothing but torch's
  tensor-rebuild functions (torch's own weights-only allowlist) and turns every other class into an inert
  stand-in that keeps its state; a pickle that would *call* anything else is refused before the call.
* ``state-dict``: a plain state_dict saved with ``torch.save`` (``weights_only=True``).
* ``safetensors``: a safetensors file.

The architecture comes from the checkpoint where it says it (DeiT's ``args``, the pickled module's attributes);
a plain state_dict is matched by its tensor names and shapes against the named configs.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import functools
import hashlib
import importlib
import io
import logging
import pickle
import struct
import types
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from fourierformer.configs import CONFIGS, LMConfig, ModelConfig, ViTConfig, differences, name_of

log = logging.getLogger(__name__)

FOURIER_ATTN_TYPE = 203
"""The official LM's attention type for Fourier attention (mem_transformer.py); type 2 is softmax."""
FOURIER_DEIT = {"deit_fourier_tiny_patch16_224": "deit-tiny"}
"""The official DeiT model names with Fourier attention (imagenet/models.py) and the named config of each (its
``create_model`` passes only ``num_classes``: the image size is always the default)."""
CALLABLE_GLOBALS = ("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                    "torch._utils._rebuild_parameter_with_state", "torch.Size", "torch.device",
                    "collections.OrderedDict", "builtins.set", "builtins.frozenset")
"""The globals a module pickle may call: torch's tensor and parameter rebuilds and plain containers."""
DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
"""The dtypes a pickle may name (``torch.float32`` ...), as values, never called."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit: the message says why, in one line."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: float32 tensors under official names, its format, the config it declares
    (None where the file does not say: plain state_dicts and safetensors), and the sha256 of the bytes read."""

    path: Path
    format: str
    state: dict[str, torch.Tensor]
    config: ModelConfig | None
    sha256: str
    ema: bool = False


# --- the restricted unpickler ------------------------------------------------------------------------------------

class _InertMeta(type):
    """Metaclass of stand-ins: creating one through ``__new__`` (pickle's NEWOBJ) works, calling it is refused."""

    def __call__(cls, *args, **kwargs):
        raise CheckpointError(f"the pickle would call {cls.__module__}.{cls.__qualname__}(...): refused, "
                              "checkpoints are read without running code from them")


class _Inert(metaclass=_InertMeta):
    """A stand-in for a class the restricted unpickler did not import: it only keeps the pickled state."""

    def __new__(cls, *args):
        return object.__new__(cls)

    def __setstate__(self, state) -> None:
        self.__dict__["_pickled_state"] = state[0] if isinstance(state, tuple) and len(state) == 2 else state

    def attributes(self) -> dict:
        """The object's pickled attributes (its ``__dict__``), or {} if its state is not a dict."""
        state = self.__dict__.get("_pickled_state")
        return state if isinstance(state, dict) else {}

    def attribute(self, name: str, default=None):
        """One pickled attribute of the object."""
        return self.attributes().get(name, default)


@functools.lru_cache(maxsize=None)
def _allowed_globals() -> dict[str, object]:
    """The fixed globals the restricted unpickler resolves (its own names, never the file's)."""
    allowed = {f"torch.{name}": getattr(torch, name) for name in DTYPES}
    for name in CALLABLE_GLOBALS:
        module, _, attr = name.rpartition(".")
        allowed[name] = getattr(importlib.import_module(module), attr)
    return allowed


class _RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python unpickler that resolves only :data:`CALLABLE_GLOBALS` and :data:`DTYPES`; every other global
    becomes an inert stand-in class, which refuses to be called, and BUILD sets state on stand-ins only (so a pickle
    cannot change attributes of torch or library objects)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # protocol 2 names builtins __builtin__
        found = _allowed_globals().get(f"{module}.{name}")
        if found is not None:
            return found
        return _InertMeta(name.rsplit(".", 1)[-1], (_Inert,), {"__module__": module, "__qualname__": name})

    def load_build(self) -> None:
        target = self.stack[-2] if len(self.stack) > 1 else None
        if not isinstance(target, _Inert):
            raise CheckpointError(f"the pickle would set the state of a {type(target).__name__}: refused")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def load(self):
        try:
            return super().load()
        except KeyError as exc:  # the pure-Python unpickler's lookup of an unknown opcode
            raise pickle.UnpicklingError(f"not a pickle (unknown opcode {exc})") from None


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


_RESTRICTED_PICKLE = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=_restricted_load,
                                           __name__="fourierformer_restricted_pickle")
"""A ``pickle_module`` for ``torch.load`` that never imports or runs code named by the file."""


def _state_group(module: _Inert, group: str, kind: type) -> dict | set:
    """One of a pickled module's state containers (``_parameters``, ...), checked to be of ``kind``."""
    value = module.attribute(group)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise CheckpointError(f"the pickled module's {group} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _module_tensors(module: _Inert, prefix: str = "", ancestors: frozenset[int] = frozenset()) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of a pickled nn.Module tree, under its state_dict name."""
    if id(module) in ancestors:
        raise CheckpointError(f"the pickled module tree contains itself at {prefix.rstrip('.')}")
    tensors = {}
    skipped = _state_group(module, "_non_persistent_buffers_set", set)
    for group in ("_parameters", "_buffers"):
        for name, value in _state_group(module, group, dict).items():
            if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skipped):
                tensors[f"{prefix}{name}"] = value
    for name, child in _state_group(module, "_modules", dict).items():
        if isinstance(child, _Inert):
            tensors.update(_module_tensors(child, f"{prefix}{name}.", ancestors | {id(module)}))
    return tensors


def _child(module: _Inert, path: str) -> _Inert | None:
    """The pickled submodule at a dotted path, or None."""
    for name in path.split("."):
        module = (module.attribute("_modules") or {}).get(name) if isinstance(module, _Inert) else None
    return module if isinstance(module, _Inert) else None


# --- configs from what the checkpoint says -----------------------------------------------------------------------

def _lm_config_from_module(root: _Inert, state: dict[str, torch.Tensor]) -> LMConfig:
    """The LMConfig of a pickled MemTransformerLM; CheckpointError for anything the deployment cannot reproduce."""
    attn_type = root.attribute("attn_type")
    if attn_type != FOURIER_ATTN_TYPE:
        raise CheckpointError(f"the model's attn_type is {attn_type!r}; only attention type {FOURIER_ATTN_TYPE} "
                              "(Fourier) is a FourierFormer")
    crit, ff, attn = _child(root, "crit"), _child(root, "layers.0.pos_ff"), _child(root, "layers.0.dec_attn")
    if crit is None or ff is None or attn is None:
        raise CheckpointError("the pickled model has no crit, layers.0.pos_ff or layers.0.dec_attn: "
                              "not a MemTransformerLM with the adaptive softmax")
    unsupported = {
        "div_val": (crit.attribute("div_val", 1), 1), "d_embed": (root.attribute("d_embed"), root.attribute("d_model")),
        "pre_lnorm": (bool(attn.attribute("pre_lnorm", False)), False),
        "same_length": (bool(root.attribute("same_length", False)), False),
        "no_pos": (bool(root.attribute("no_pos", False)), False),
        "sample_softmax": (root.attribute("sample_softmax", -1) > 0, False),
    }
    for name, (value, expected) in unsupported.items():
        if value != expected:
            raise CheckpointError(f"the model has {name}={value!r}; the deployment reproduces {name}={expected!r} only")
    clamp = root.attribute("clamp_len", -1)
    if clamp is not None and 0 < clamp < root.attribute("tgt_len", 0):
        raise CheckpointError(f"the model clamps positions at clamp_len={clamp}, below its context: not supported")
    if root.attribute("mem_len", 0):
        log.warning("the model was trained with mem_len=%s; it is deployed without memory (mem_len 0, as the paper "
                    "evaluates)", root.attribute("mem_len"))
    weight, tied = state.get("word_emb.emb_layers.0.weight"), state.get("crit.out_layers.0.weight")
    values = {name: _positive_int(root.attribute(name), name)
              for name in ("n_token", "n_layer", "n_head", "d_model", "d_head", "tgt_len")}
    values["d_inner"] = _positive_int(ff.attribute("d_inner"), "d_inner")
    cutoffs = crit.attribute("cutoffs")
    if not isinstance(cutoffs, list) or not cutoffs or cutoffs[-1] != values["n_token"]:
        raise CheckpointError(f"the pickled crit.cutoffs {cutoffs!r} is not a list ending with n_token")
    values["cutoffs"] = tuple(_positive_int(c, "a cutoff") for c in cutoffs[:-1])
    return LMConfig(**values, tie_weight=weight is not None and tied is not None and torch.equal(weight, tied))


def _positive_int(value: object, name: str) -> int:
    """``value`` if it is a positive int (pickled attributes are untrusted); CheckpointError otherwise."""
    if type(value) is not int or value < 1:
        raise CheckpointError(f"the model's {name} is {value!r}, not a positive integer")
    return value


def _vit_config_from_args(args: dict) -> ViTConfig:
    """The ViTConfig of DeiT's training ``args`` (their attributes); CheckpointError for other models."""
    name = args.get("model")
    if name not in FOURIER_DEIT:
        raise CheckpointError(f"the checkpoint's model is {name!r}; the official FourierFormer DeiT is "
                              f"{', '.join(FOURIER_DEIT)} (the other official DeiTs use softmax attention)")
    return replace(CONFIGS[FOURIER_DEIT[name]], num_classes=_positive_int(args.get("nb_classes", 1000), "nb_classes"))


@functools.lru_cache(maxsize=None)
def _meta_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict names and shapes of a model of ``config``, computed without allocating it."""
    from fourierformer.models import MemTransformerLM, VisionTransformer

    with torch.device("meta"):
        model = MemTransformerLM(config) if isinstance(config, LMConfig) else VisionTransformer(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in state.items()}


TIED = ("word_emb.emb_layers.0.weight", "crit.out_layers.0.weight")
"""The LM's embedding and output weights, one tensor when the config ties them (either name may be saved alone)."""


def _with_tied(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """``state`` with a tied weight saved under one of its two names filled in under the other."""
    state = dict(state)
    if isinstance(config, LMConfig) and config.tie_weight:
        for name, other in (TIED, TIED[::-1]):
            if name in state and other not in state:
                state[other] = state[name]
    return state


def fit_problems(state: dict[str, torch.Tensor], config: ModelConfig) -> list[str]:
    """What keeps ``state`` from loading into a model of ``config`` (missing, unexpected, wrong shape)."""
    own, have = _meta_shapes(config), _shapes(_with_tied(state, config))
    missing = sorted(set(own) - set(have))
    unexpected = sorted(set(have) - set(own))
    wrong = sorted(f"{n} {list(have[n])} vs {list(own[n])}" for n in set(own) & set(have) if own[n] != have[n])
    return [f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]


def resolve_config(checkpoint: Checkpoint, model: str | None = None) -> tuple[str | None, ModelConfig]:
    """The config to deploy ``checkpoint`` with, and its name if it is a named one.

    With ``model``, the checkpoint must fit that named config (CheckpointError says what differs); without it,
    the checkpoint's own config, or for a plain state_dict the one named config its tensors fit.
    """
    if model is not None:
        if model not in CONFIGS:
            raise CheckpointError(f"unknown model {model!r}; choose one of: {', '.join(CONFIGS)}")
        named = CONFIGS[model]
        if checkpoint.config is not None:
            differ = differences(checkpoint.config, named)
            if differ:
                raise CheckpointError(f"checkpoint {checkpoint.path} does not fit --model {model}: "
                                      f"{', '.join(differ)} (checkpoint vs --model)")
            return model, checkpoint.config
        problems = fit_problems(checkpoint.state, named)
        if problems:
            raise CheckpointError(f"checkpoint {checkpoint.path} does not fit --model {model} ({'; '.join(problems)})")
        return model, named
    if checkpoint.config is not None:
        return name_of(checkpoint.config), checkpoint.config
    fitting = [name for name, named in CONFIGS.items() if not fit_problems(checkpoint.state, named)]
    if len(fitting) != 1:
        found = f"fits {', '.join(fitting)}" if fitting else f"fits none of the named models ({', '.join(CONFIGS)})"
        raise CheckpointError(f"checkpoint {checkpoint.path} is a plain state_dict, which does not say its n_head or "
                              f"cutoffs, and {found}: name the architecture with --model")
    return fitting[0], CONFIGS[fitting[0]]


# --- reading files -----------------------------------------------------------------------------------------------

def _is_safetensors(data: bytes) -> bool:
    """A safetensors file starts with its JSON header's little-endian length, then the header."""
    return len(data) > 9 and data[8:9] == b"{" and struct.unpack("<Q", data[:8])[0] < len(data)


def _float32(state: object, what: str) -> dict[str, torch.Tensor]:
    """A state_dict's tensors as float32 (half-precision training saves half); CheckpointError for anything but
    finite, dense CPU tensors under string names."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{what} is not a state_dict (a dict of tensors)")
    out = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what} is not a state_dict: entry {name!r} is a {type(value).__name__}")
        if value.layout != torch.strided or value.is_quantized or value.is_nested or value.device.type != "cpu":
            raise CheckpointError(f"tensor {name} in {what} is not a dense CPU tensor ({value.layout}, {value.device})")
        if value.is_complex():
            raise CheckpointError(f"tensor {name} in {what} is complex ({value.dtype}); the models' weights are real")
        tensor = value.detach().float() if value.is_floating_point() else value.detach()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"tensor {name} in {what} has non-finite values (NaN or inf)")
        out[name] = tensor
    return out


def _attributes(args: object) -> dict:
    """The attributes of DeiT's saved ``args``: an argparse.Namespace, a dict of them, or an inert stand-in."""
    if isinstance(args, argparse.Namespace):
        return vars(args)
    if isinstance(args, _Inert):
        return args.attributes()
    return args if isinstance(args, dict) else {}


def _read_dict(data: dict, ema: bool) -> tuple[str, dict[str, torch.Tensor], ModelConfig | None]:
    """DeiT's training checkpoint (a dict holding ``model`` and ``args``) or a plain state_dict."""
    if "model" in data and not isinstance(data["model"], torch.Tensor):
        key = "model_ema" if ema else "model"
        if data.get(key) is None:
            raise CheckpointError(f"has no {key!r} entry" + (" (trained without --model-ema)" if ema else ""))
        args = _attributes(data.get("args"))
        config = _vit_config_from_args(args) if "model" in args else None
        return "deit-training-checkpoint", _float32(data[key], repr(key)), config
    if ema:
        raise CheckpointError("is a plain state_dict: it holds no EMA copy")
    return "state-dict", _float32(data, "the file"), None


def _read_module(root: object, ema: bool) -> tuple[str, dict[str, torch.Tensor], ModelConfig | None]:
    """A whole pickled module: the official LM's ``torch.save(model)``."""
    if not isinstance(root, _Inert) or not isinstance(root.attribute("_modules"), dict):
        raise CheckpointError(f"holds a pickled {type(root).__name__}, not a model")
    kind = f"{type(root).__module__}.{type(root).__qualname__}"
    if not kind.endswith("MemTransformerLM"):
        raise CheckpointError(f"holds a pickled {kind}; the pickled models read are the official "
                              "MemTransformerLM's (DeiT checkpoints are dicts)")
    if ema:
        raise CheckpointError("is a pickled model: it holds no EMA copy")
    state = _float32(_module_tensors(root), "the pickled model")
    return "lm-module-pickle", state, _lm_config_from_module(root, state)


def _parse(data: bytes, ema: bool) -> tuple[str, dict[str, torch.Tensor], ModelConfig | None]:
    """(format, float32 tensors, declared config) of a checkpoint's bytes; CheckpointError says what is wrong."""
    if _is_safetensors(data):
        if ema:
            raise CheckpointError("is a safetensors state_dict: it holds no EMA copy")
        from safetensors.torch import load

        return "safetensors", _float32(load(data), "the file"), None
    if not data:
        raise CheckpointError("is empty")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols other than 2
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refusal:  # a global outside torch's weights-only allowlist, or not a pickle
        log.debug("weights-only load refused (%s); reading it with the restricted unpickler", refusal)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                                pickle_module=_RESTRICTED_PICKLE)
        if not isinstance(loaded, dict):
            return _read_module(loaded, ema)
    if not isinstance(loaded, dict):
        raise CheckpointError(f"holds a {type(loaded).__name__}, not a state_dict or a checkpoint dict")
    return _read_dict(loaded, ema)


def read_checkpoint(path: Path, ema: bool = False) -> Checkpoint:
    """Read any supported checkpoint format (module docstring) without running code from the file.

    The file is read once: the tensors and the recorded sha256 come from the same bytes.
    """
    if path.exists() and not path.is_file():  # a FIFO would block, a device would never end
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    try:
        form, state, config = _parse(data, ema)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    except Exception as exc:  # torch, pickle and safetensors raise many types for bad files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch or safetensors file "
                              f"({type(exc).__name__}{': ' + detail if detail else ''})") from exc
    return Checkpoint(path, form, state, config, hashlib.sha256(data).hexdigest(), ema)


def load_weights(model: nn.Module, checkpoint: Checkpoint, config: ModelConfig) -> None:
    """Load the checkpoint's tensors into ``model`` (built from ``config``); CheckpointError says what does not fit."""
    problems = fit_problems(checkpoint.state, config)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit the model config ({'; '.join(problems)})")
    state = _with_tied(checkpoint.state, config)
    if isinstance(config, LMConfig) and config.tie_weight and not torch.equal(*(state[name] for name in TIED)):
        raise CheckpointError(f"checkpoint {checkpoint.path}: {' and '.join(TIED)} differ, but the config ties them")
    model.load_state_dict(state)
    log.info("loaded %s checkpoint %s%s", checkpoint.format, checkpoint.path,
             " (EMA weights)" if checkpoint.ema else "")
