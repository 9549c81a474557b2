"""Deploying checkpoints as the official training code writes them, checked against a float64 reference of the paper.

Every checkpoint is written here in the official layout (tests/official_layout.py, no code shared with
fourierformer/), built with ``build-engine --checkpoint FILE`` and no ``--model``, and the artifact's outputs are
compared with the independent float64 reference: DeiT logits, and LM log-probs and their NLL on given targets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import official_layout as official
from export.artifact import MANIFEST, sha256_file
from export.cli import EXIT_OK, EXIT_USER_ERROR, main
from export.runtime import load_artifact
from export.validate import error_stats

BOUND = 1e-5
"""Normwise error bound of a float32 artifact against the float64 reference."""
MIN_ROW_SUM = 1e3 * official.EPS
"""Every attention row of the reference must sum far above eps, or the check would only see eps."""
REPO = Path(__file__).resolve().parents[1]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, object, dict]]:
    """Official-format checkpoint files by case: (path, hyperparameters, the state they hold)."""
    root = tmp_path_factory.mktemp("checkpoints")
    lm, vit = official.lm_state(official.TINY_LM), official.deit_state(official.TINY_DEIT)
    deit, deit_ema = official.deit_state(official.DEIT_TINY), official.deit_state(official.DEIT_TINY, seed=1)
    official.write_lm_pickle(root / "model.pt", lm, official.TINY_LM)
    torch.save(lm, root / "lm-state.pt")
    official.write_safetensors(root / "lm.safetensors", lm)
    torch.save(vit, root / "vit-state.pth")
    official.write_safetensors(root / "vit.safetensors", vit)
    official.write_deit_checkpoint(root / "checkpoint.pth", deit, deit_ema, official.deit_args(official.DEIT_TINY))
    return {"tiny-lm pickle": (root / "model.pt", official.TINY_LM, lm),
            "tiny-lm state_dict": (root / "lm-state.pt", official.TINY_LM, lm),
            "tiny-lm safetensors": (root / "lm.safetensors", official.TINY_LM, lm),
            "tiny-vit state_dict": (root / "vit-state.pth", official.TINY_DEIT, vit),
            "tiny-vit safetensors": (root / "vit.safetensors", official.TINY_DEIT, vit),
            "deit-tiny checkpoint": (root / "checkpoint.pth", official.DEIT_TINY, deit),
            "deit-tiny checkpoint ema": (root / "checkpoint.pth", official.DEIT_TINY, deit_ema)}


def check_against_reference(artifact: Path, hyper, state: dict, seq: int = 20) -> dict[str, float]:
    """Run the artifact on random inputs and compare with the float64 reference; returns the errors."""
    artifact = load_artifact(artifact)
    gen = torch.Generator().manual_seed(3)
    if isinstance(hyper, official.LMHyper):
        tokens = torch.randint(0, hyper.n_token, (2, seq + 1), generator=gen)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        reference, smallest = official.lm_log_probs(state, hyper, inputs)
        out = artifact.run({"tokens": inputs.numpy()})["log_probs"]
        nll = -np.take_along_axis(out, targets.numpy()[..., None], -1)[..., 0]
        errors = {"log_probs": error_stats("log_probs", out, reference.numpy()).norm_rel,
                  "nll": error_stats("nll", nll, official.lm_nll(state, hyper, inputs, targets).numpy()).norm_rel}
    else:
        images = torch.randn(2, hyper.chans, hyper.img_size, hyper.img_size, generator=gen)
        reference, smallest = official.deit_logits(state, hyper, images)
        out = artifact.run({"images": images.numpy()})["logits"]
        errors = {"logits": error_stats("logits", out, reference.numpy()).norm_rel}
    assert smallest >= MIN_ROW_SUM, f"vacuous: an attention row sums to {smallest:.3g}"
    return errors


CASES = {"tiny-lm pickle": ("tiny-lm", "lm-module-pickle"), "tiny-lm state_dict": ("tiny-lm", "state-dict"),
         "tiny-lm safetensors": ("tiny-lm", "safetensors"), "tiny-vit state_dict": ("tiny-vit", "state-dict"),
         "tiny-vit safetensors": ("tiny-vit", "safetensors"),
         "deit-tiny checkpoint": ("deit-tiny", "deit-training-checkpoint"),
         "deit-tiny checkpoint ema": ("deit-tiny", "deit-training-checkpoint")}


@pytest.mark.parametrize("case", list(CASES))
def test_build_from_official_checkpoint_matches_float64_reference(files, tmp_path, monkeypatch, ort_library, case):
    path, hyper, state = files[case]
    ema = case.endswith("ema")
    if ema:  # and into its own default folder, not over the build of the model weights
        monkeypatch.chdir(tmp_path)
        out = tmp_path / "engines/built/deit-tiny-ema-onnxruntime-fp32"
        assert cli("build-engine", "--checkpoint", path, "--ema") == EXIT_OK
    else:
        out = tmp_path / "art"
        assert cli("build-engine", "--checkpoint", path, "--out", out) == EXIT_OK
    manifest = json.loads((out / MANIFEST).read_text())
    model, form = CASES[case]
    assert manifest["model"] == model
    assert manifest["weights"] == {"checkpoint": str(path.resolve()), "sha256": sha256_file(path), "format": form,
                                   "ema": ema}
    errors = check_against_reference(out, hyper, state)
    assert all(e <= BOUND for e in errors.values()), errors
    assert cli("validate", out, "--checkpoint", path, "--batch", 2) == EXIT_OK


def test_ema_weights_are_not_the_model_weights(files):
    _, _, deit = files["deit-tiny checkpoint"]
    _, _, ema = files["deit-tiny checkpoint ema"]
    assert not torch.equal(deit["head.weight"], ema["head.weight"])


@pytest.mark.parametrize("hyper, name", [(official.LM_SMALL, "lm-small"), (official.LM_MEDIUM, "lm-medium")],
                         ids=["lm-small", "lm-medium"])
def test_paper_language_models_from_model_pt(tmp_path, ort_library, hyper, name):
    """The paper's LMs at full size (vocabulary 267735, adaptive softmax), from train.py's model.pt."""
    state = official.lm_state(hyper)
    official.write_lm_pickle(tmp_path / "model.pt", state, hyper)
    out = tmp_path / "art"
    assert cli("build-engine", "--checkpoint", tmp_path / "model.pt", "--out", out) == EXIT_OK
    assert json.loads((out / MANIFEST).read_text())["model"] == name
    errors = check_against_reference(out, hyper, state, seq=12)
    assert all(e <= BOUND for e in errors.values()), errors
    assert cli("validate", out, "--checkpoint", tmp_path / "model.pt", "--batch", 1, "--seq", 16) == EXIT_OK


def _readme_commands() -> list[str]:
    """The commands of the README section on official checkpoints."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Deploying a checkpoint trained with the official code", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.strip().startswith("python -m export ")]


def test_readme_commands_deploy_official_checkpoints(tmp_path):
    """The README's commands, exactly as written, on files where the official scripts put them."""
    deit = official.deit_state(official.DEIT_TINY)
    (tmp_path / "output").mkdir()
    official.write_deit_checkpoint(tmp_path / "output/checkpoint.pth", deit, deit,
                                   official.deit_args(official.DEIT_TINY))
    (tmp_path / "LM-TFM").mkdir()
    official.write_lm_pickle(tmp_path / "LM-TFM/model.pt", official.lm_state(official.LM_SMALL), official.LM_SMALL)
    commands = _readme_commands()
    assert len(commands) >= 4
    assert any("checkpoint.pth" in c for c in commands) and any("model.pt" in c for c in commands)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in commands:
        result = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == EXIT_OK, f"{command}\n{result.stderr[-2000:]}"
    assert (tmp_path / "engines/built/deit-tiny-onnxruntime-fp32" / MANIFEST).is_file()
    assert (tmp_path / "engines/built/lm-small-onnxruntime-fp32" / MANIFEST).is_file()


# --- refusals: one clear line, exit 2 --------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("where", ["container", "inside the model"])
def test_code_execution_payload_is_refused_and_runs_nothing(tmp_path, capsys, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    if where == "container":
        torch.save({"model": Payload(marker)}, path)
    else:
        official.write_lm_pickle(path, official.lm_state(official.TINY_LM), official.TINY_LM,
                                 extra={"note": Payload(marker)})
    assert cli("build-engine", "--checkpoint", path, "--out", tmp_path / "art") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "would call posix.system" in err and "refused" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "art").exists()


def _softmax_lm(path: Path) -> None:
    official.write_lm_pickle(path, official.lm_state(official.TINY_LM), official.TINY_LM, attn_type=2)


def _softmax_deit(path: Path) -> None:
    state = official.deit_state(official.TINY_DEIT)
    official.write_deit_checkpoint(path, state, state, official.deit_args(official.TINY_DEIT, "deit_tiny_patch16_224"))


def _linear_pickle(path: Path) -> None:
    torch.save(nn.Linear(2, 2), path)


def _other_vit(path: Path) -> None:
    state = official.deit_state(official.TINY_DEIT)
    torch.save({**state, "head.weight": state["head.weight"][:7], "head.bias": state["head.bias"][:7]}, path)


def _nan_weights(path: Path) -> None:
    state = official.deit_state(official.TINY_DEIT)
    torch.save({**state, "norm.weight": torch.full_like(state["norm.weight"], float("nan"))}, path)


def _tiny_lm_pickle(path: Path) -> None:
    official.write_lm_pickle(path, official.lm_state(official.TINY_LM), official.TINY_LM)


def _vit_state(path: Path) -> None:
    torch.save(official.deit_state(official.TINY_DEIT), path)


def _meta_tensor(path: Path) -> None:
    torch.save({"w": torch.empty(2, device="meta")}, path)


def _sparse_tensor(path: Path) -> None:
    torch.save({"w": torch.eye(2).to_sparse()}, path)


def _cyclic_module(path: Path) -> None:
    """A pickled 'MemTransformerLM' whose module tree contains itself."""
    fake = types.ModuleType("mem_transformer")
    fake.MemTransformerLM = type("MemTransformerLM", (nn.Module,), {"__module__": "mem_transformer"})
    root = fake.MemTransformerLM()
    root._modules["loop"] = root
    sys.modules["mem_transformer"] = fake
    try:
        torch.save(root, path)
    finally:
        del sys.modules["mem_transformer"]


def _unicode(text: str) -> bytes:
    """Pickle's BINUNICODE of ``text``."""
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


def _build_onto_torch(path: Path) -> None:
    """A protocol-2 pickle whose BUILD sets __defaults__ on torch's _rebuild_tensor_v2 (neg=True): if it ran, every
    tensor loaded later in the process would come back negated."""
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + _unicode("__defaults__") + b"(}"
                     + _unicode("neg") + b"\x88sts\x86b0N.")


@pytest.mark.parametrize("write, flags, message", [
    (_softmax_lm, [], "the model's attn_type is 2; only attention type 203 (Fourier) is a FourierFormer"),
    (_softmax_deit, [], "the checkpoint's model is 'deit_tiny_patch16_224'; the official FourierFormer DeiT is "
                        "deit_fourier_tiny_patch16_224"),
    (_linear_pickle, [], "holds a pickled torch.nn.modules.linear.Linear"),
    (_other_vit, [], "is a plain state_dict, which does not say its n_head or cutoffs, and fits none of the named"),
    (_nan_weights, [], "tensor norm.weight in the file has non-finite values"),
    (_tiny_lm_pickle, ["--model", "lm-small"], "does not fit --model lm-small: n_token 512 vs 267735, "
                                               "n_layer 2 vs 16"),
    (_tiny_lm_pickle, ["--ema"], "is a pickled model: it holds no EMA copy"),
    (_vit_state, ["--model", "tiny-lm"], "does not fit --model tiny-lm (missing: crit.cluster_bias"),
    (_meta_tensor, [], "tensor w in the file is not a dense CPU tensor"),
    (_sparse_tensor, [], "tensor w in the file is not a dense CPU tensor"),
    (_cyclic_module, [], "the pickled module tree contains itself at loop"),
    (_build_onto_torch, [], "the pickle would set the state of a function: refused"),
], ids=["softmax-lm", "softmax-deit", "not-a-model", "unknown-shapes", "nan", "wrong-model", "no-ema", "wrong-kind",
        "meta", "sparse", "cycle", "build-onto-torch"])
def test_unfit_checkpoints_are_one_line_errors(tmp_path, capsys, write, flags, message):
    write(tmp_path / "ckpt.pt")
    code = cli("build-engine", "--checkpoint", tmp_path / "ckpt.pt", *flags, "--out", tmp_path / "art")
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "art").exists()


def test_a_refused_pickle_changes_nothing_in_the_process(tmp_path):
    torch.save({"w": torch.tensor([1.0, 2.0])}, tmp_path / "good.pt")
    _build_onto_torch(tmp_path / "evil.pt")
    assert cli("build-engine", "--checkpoint", tmp_path / "evil.pt", "--out", tmp_path / "art") == EXIT_USER_ERROR
    assert torch.equal(torch.load(tmp_path / "good.pt", weights_only=True)["w"], torch.tensor([1.0, 2.0]))


def test_model_flag_that_fits_is_accepted(files, tmp_path, ort_library):
    path, hyper, state = files["tiny-lm state_dict"]
    assert cli("build-engine", "--checkpoint", path, "--model", "tiny-lm", "--out", tmp_path / "art") == EXIT_OK
    assert check_against_reference(tmp_path / "art", hyper, state)["log_probs"] <= BOUND


def test_untied_state_dict_is_refused_for_a_tied_config(tmp_path, capsys):
    state = official.lm_state(official.TINY_LM)
    state["crit.out_layers.0.weight"] = state["crit.out_layers.0.weight"] + 1.0
    torch.save(state, tmp_path / "w.pt")
    assert cli("build-engine", "--checkpoint", tmp_path / "w.pt", "--out", tmp_path / "art") == EXIT_USER_ERROR
    assert re.search(r"word_emb\.emb_layers\.0\.weight and crit\.out_layers\.0\.weight differ", capsys.readouterr().err)
