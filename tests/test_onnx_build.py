"""build-engine --onnx: a user's own FourierFormer, exported plainly, builds into an artifact with one FourierAttention
node per layer that equals the original file run in stock ONNX Runtime (validate --onnx).

The user models are written here in the official code's layouts (time-major q and k; DeiT's weights permuted onto
v, the LM's einsum), sharing no code with fourierformer/.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from export.cli import EXIT_OK, EXIT_USER_ERROR, main
from fourierformer import opspec

EPS = 1e-6
MIN_ROW_SUM = 1e3 * EPS
"""Every attention row's weights must sum to at least this in the eager run: the check is not vacuous."""


def fourier_weights(q: torch.Tensor, k: torch.Tensor, R: torch.Tensor, sinc: str) -> torch.Tensor:
    """prod_d sinc(R (q_i - k_j))^4 for time-major q [Nq,B,H,D], k [Nk,B,H,D]: [Nq,Nk,B,H]."""
    x = R * (q[:, None] - k[None])
    if sinc == "torch":
        s = torch.sinc(x / torch.pi)
    else:
        zero = x == 0
        s = torch.where(zero, torch.ones_like(x), torch.sin(x) / torch.where(zero, torch.ones_like(x), x))
    return s.prod(-1) ** 4


class Attention(nn.Module):
    """Multi-head Fourier attention on [N, B, C] (time-major), in the official code's layout."""

    def __init__(self, dim: int, heads: int, causal: bool, sinc: str, r: float):
        super().__init__()
        self.heads, self.causal, self.sinc = heads, causal, sinc
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.R = nn.Parameter(torch.tensor([r]))
        self.min_row_sum = float("inf")

    def forward(self, x: torch.Tensor, R: torch.Tensor | None = None) -> torch.Tensor:
        n, b, c = x.shape
        q, k, v = self.qkv(x).reshape(n, b, 3, self.heads, c // self.heads).unbind(2)  # each [N, B, H, D]
        w = fourier_weights(q, k, self.R if R is None else R, self.sinc)
        if self.causal:
            w = w.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1)[:, :, None, None], 0.0)
        total = w.sum(1, keepdim=True)
        if not torch.onnx.is_in_onnx_export():
            self.min_row_sum = min(self.min_row_sum, float(total.min()))
        out = torch.einsum("ijbn,jbnd->ibnd", w / (total + EPS), v)
        return self.proj(out.reshape(n, b, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool, sinc: str, r: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal, sinc, r)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, R: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), R)
        return x + self.mlp(self.norm2(x))


class UserViT(nn.Module):
    """A DeiT-like classifier: patches, a class token, learned positions, pre-norm blocks; R a parameter per layer,
    or with ``r_input`` one R fed at run time."""

    def __init__(self, depth: int = 2, dim: int = 32, heads: int = 2, r_input: bool = False):
        super().__init__()
        self.r_input = r_input
        self.patches = nn.Conv2d(3, dim, 8, 8)
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, dim)), nn.Parameter(0.02 * torch.randn(1, 5, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, False, "where", 0.3 + 0.1 * i) for i in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, images: torch.Tensor, R: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patches(images).flatten(2).transpose(1, 2)
        x = (torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos).transpose(0, 1)
        for block in self.blocks:
            x = block(x, R)
        return self.head(self.norm(x[0]))


class UserLM(nn.Module):
    """A causal LM, time-major as the official code runs it, sinc written as torch.sinc: tokens [B, T] -> logits."""

    def __init__(self, depth: int = 2, dim: int = 32, heads: int = 2, vocab: int = 50):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, True, "torch", 0.3) for _ in range(depth))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens.transpose(0, 1))
        for block in self.blocks:
            x = block(x)
        return self.head(x).transpose(0, 1)


def export_plainly(model: nn.Module, inputs: dict[str, torch.Tensor], path: Path,
                   dynamic: dict[str, dict[int, torch.export.Dim]] | None = None) -> Path:
    """``model`` exported the ordinary way (dynamo, no custom op) to ``path``; its eager run checked non-vacuous."""
    model.eval()
    with torch.no_grad():
        model(**inputs)
    sums = [m.min_row_sum for m in model.modules() if isinstance(m, Attention)]
    assert sums and min(sums) >= MIN_ROW_SUM, sums
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (), kwargs=inputs, dynamo=True, dynamic_shapes=dynamic,
                                    input_names=list(inputs), output_names=["out"], opset_version=18, verbose=False)
    onnx.save(program.model_proto, path)
    return path


def build_and_validate(source: Path, out: Path, layers: int, *extra: str) -> dict:
    """build-engine --onnx, then validate --onnx; the manifest, after checking the fused node count."""
    assert main(["build-engine", "--onnx", str(source), "--out", str(out), *extra]) == EXIT_OK
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fused_layers"] == layers and manifest["config"] is None
    graph = onnx.load(out / manifest["onnx_file"]).graph
    assert sum(n.op_type == opspec.OP_TYPE for n in graph.node) == layers
    assert not any(n.op_type in ("Sin", "ReduceProd") for n in graph.node)
    assert main(["validate", str(out), "--onnx", str(source)]) == EXIT_OK
    return manifest


BATCH = torch.export.Dim("batch", min=1, max=16)


def test_user_vit_builds_fused_and_equal(tmp_path, ort_library, capsys):
    torch.manual_seed(0)
    images = {"images": torch.randn(2, 3, 16, 16)}
    source = export_plainly(UserViT(depth=3), images, tmp_path / "vit.onnx", {"images": {0: BATCH}})
    manifest = build_and_validate(source, tmp_path / "vit", 3)
    assert manifest["weights"]["sha256"] and manifest["dynamic_ranges"] == {"batch": [1, 4096]}
    assert "3 attention layer(s) fused" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "vit"), "--batch", "3"]) == EXIT_OK
    assert "out: shape [3, 10] float32" in capsys.readouterr().out


def test_user_causal_lm_with_torch_sinc_builds_fused_and_equal(tmp_path, ort_library):
    torch.manual_seed(1)
    tokens = {"tokens": torch.randint(0, 50, (2, 7))}
    seq = torch.export.Dim("seq", min=2, max=64)
    source = export_plainly(UserLM(), tokens, tmp_path / "lm.onnx", {"tokens": {0: BATCH, 1: seq}})
    manifest = build_and_validate(source, tmp_path / "lm", 2)
    assert manifest["inputs"][0]["values"] == [0, 49]  # the embedding's rows: random tokens stay in the vocabulary
    assert main(["validate", str(tmp_path / "lm"), "--onnx", str(source), "--seq", "13", "--batch", "1"]) == EXIT_OK


def test_user_model_with_R_as_graph_input_builds_fused_and_equal(tmp_path, ort_library):
    torch.manual_seed(2)
    inputs = {"images": torch.randn(2, 3, 16, 16), "R": torch.tensor([0.4])}
    source = export_plainly(UserViT(depth=2, r_input=True), inputs, tmp_path / "vit_r.onnx")
    build_and_validate(source, tmp_path / "vit_r", 2)


def test_zero_fused_is_a_warning_and_the_artifact_still_works(tmp_path, ort_library, caplog):
    class Softmax(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    qkv = {name: torch.randn(1, 2, 5, 8) for name in "qkv"}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        onnx.save(torch.onnx.export(Softmax(), (), kwargs=qkv, dynamo=True, verbose=False).model_proto,
                  tmp_path / "softmax.onnx")
    assert main(["build-engine", "--onnx", str(tmp_path / "softmax.onnx"), "--out", str(tmp_path / "a")]) == EXIT_OK
    assert "no Fourier attention found to fuse" in caplog.text and "no pairwise difference" in caplog.text
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["fused_layers"] == 0
    assert main(["validate", str(tmp_path / "a"), "--onnx", str(tmp_path / "softmax.onnx")]) == EXIT_OK


def test_explain_lists_what_matched_and_builds_nothing(tmp_path, capsys):
    torch.manual_seed(0)
    source = export_plainly(UserViT(depth=2), {"images": torch.randn(1, 3, 16, 16)}, tmp_path / "vit.onnx")
    assert main(["build-engine", "--onnx", str(source), "--explain", "--out", str(tmp_path / "none")]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("fused 2 of 2 candidate attention subgraph(s)") and "matched" in out
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("args, message", [
    (["--onnx", "missing.onnx"], "ONNX file not found: missing.onnx"),
    (["--onnx", "{bad}"], "is not an ONNX model"),
    (["--onnx", "{vit}", "--model", "tiny-vit"], "--onnx builds from the ONNX file alone"),
    (["--explain", "--model", "tiny-vit"], "--explain lists what the fuse pass finds in an ONNX file"),
])
def test_bad_onnx_builds_are_refused_in_one_line(args, message, tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    if "{vit}" in args:
        export_plainly(UserViT(depth=1), {"images": torch.randn(1, 3, 16, 16)}, tmp_path / "vit.onnx")
    args = [a.format(bad=tmp_path / "bad.onnx", vit=tmp_path / "vit.onnx") for a in args]
    assert main(["build-engine", *args, "--out", str(tmp_path / "out")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_validate_needs_the_very_file_it_was_built_from(tmp_path, ort_library, capsys):
    torch.manual_seed(3)
    images = {"images": torch.randn(1, 3, 16, 16)}
    source = export_plainly(UserViT(depth=1), images, tmp_path / "vit.onnx")
    assert main(["build-engine", "--onnx", str(source), "--out", str(tmp_path / "a")]) == EXIT_OK
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "a")]) == EXIT_USER_ERROR
    assert "name it with --onnx FILE" in capsys.readouterr().err
    other = export_plainly(UserViT(depth=1), images, tmp_path / "other.onnx")
    assert main(["validate", str(tmp_path / "a"), "--onnx", str(other)]) == EXIT_USER_ERROR
    assert "is not the file the artifact was built from" in capsys.readouterr().err


class OnOurModule(nn.Module):
    """A user's layer built on fourierformer.FourierAttention: it exports to one node directly."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        from fourierformer import FourierAttention

        self.heads, self.qkv, self.attention = heads, nn.Linear(dim, 3 * dim), FourierAttention(causal=True, R=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.attention(q, k, v).transpose(1, 2).reshape(b, n, c)


def test_compile_a_users_module_and_validate_it_later(tmp_path, ort_library):
    import export

    torch.manual_seed(4)
    images = {"images": torch.randn(2, 3, 16, 16)}
    out = export.compile(UserViT(depth=2), images, out=tmp_path / "vit", source=tmp_path / "vit.onnx",
                         dynamic_shapes={"images": {0: BATCH}})
    assert json.loads((out / "manifest.json").read_text())["fused_layers"] == 2
    assert main(["validate", str(out), "--onnx", str(tmp_path / "vit.onnx"), "--batch", "5"]) == EXIT_OK


def test_compile_a_module_built_on_fourierformer_attention(tmp_path, ort_library):
    import export

    torch.manual_seed(5)
    out = export.compile(OnOurModule(), {"x": 0.3 * torch.randn(2, 9, 16)}, out=tmp_path / "ours")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fused_layers"] == 1 and manifest["weights"]["onnx"].endswith("OnOurModule.onnx")
    (node,) = [n for n in onnx.load(out / "model.onnx").graph.node if n.op_type == opspec.OP_TYPE]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["causal"] == 1


def test_user_onnx_builds_a_tensorrt_engine_with_a_profile_per_dimension(tmp_path, capsys):
    from export.tensorrt_backend import installed_flavour

    if installed_flavour() is None:
        pytest.skip("neither tensorrt nor tensorrt-rtx is installed")
    torch.manual_seed(6)
    source = export_plainly(UserViT(depth=2), {"images": torch.randn(2, 3, 16, 16)}, tmp_path / "vit.onnx",
                            {"images": {0: BATCH}})
    base = ["build-engine", "--onnx", str(source), "--backend", "tensorrt", "--attention", "decomposed",
            "--compute-capability", "89", "--timing-cache", str(tmp_path / "timing.cache")]
    assert main([*base, "--out", str(tmp_path / "no-profile")]) == EXIT_USER_ERROR
    assert "give --shapes batch=MIN:OPT:MAX" in capsys.readouterr().err
    assert main([*base, "--shapes", "seq=1:2:4", "--out", str(tmp_path / "bad")]) == EXIT_USER_ERROR
    assert "--shapes names 'seq', which is not a dynamic dimension" in capsys.readouterr().err
    assert main([*base, "--shapes", "batch=1:2:4", "--out", str(tmp_path / "engine")]) == EXIT_OK
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["fused_layers"] == 2 and manifest["tensorrt"]["profiles"] == {"batch": [1, 2, 4]}


def test_a_plain_export_of_our_model_is_fused_back_and_both_are_timed(tmp_path, ort_library, capsys):
    """onnx --plain writes what a general-purpose exporter writes; build-engine --onnx fuses every layer back;
    bench --onnx FILE times the file as it is and bench DIR --onnx FILE the artifact, validated against it."""
    plain, out = tmp_path / "plain.onnx", tmp_path / "fused"
    assert main(["onnx", "--model", "tiny-vit", "--plain", "--out", str(plain)]) == EXIT_OK
    assert not any(n.op_type == opspec.OP_TYPE for n in onnx.load(plain).graph.node)
    build_and_validate(plain, out, 2)
    capsys.readouterr()
    assert main(["bench", "--onnx", str(plain), "--batch", "2", "--repeats", "2", "--warmup", "0"]) == EXIT_OK
    assert f"ONNX file {plain}, as it is, in stock ONNX Runtime" in capsys.readouterr().out
    assert main(["bench", str(out), "--onnx", str(plain), "--batch", "2", "--repeats", "2", "--warmup", "0",
                 "--json"]) == EXIT_OK
    (timing,) = json.loads(capsys.readouterr().out)["timings"]
    assert timing["batch"] == 2 and timing["max_norm_error"] <= 1e-4


def _with_external_weights(tmp_path: Path, location: str) -> Path:
    """The tiny user ViT saved with its weights in an external file, then every tensor's location rewritten."""
    torch.manual_seed(7)
    plain = export_plainly(UserViT(depth=1), {"images": torch.randn(1, 3, 16, 16)}, tmp_path / "plain.onnx")
    model = onnx.load(plain)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    model = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, tmp_path / "ext.onnx")
    return tmp_path / "ext.onnx"


@pytest.mark.parametrize("location, message", [
    ("weights.bin", None),
    ("../weights.bin", "outside the model's folder (refused)"),
    ("/etc/passwd", "outside the model's folder (refused)"),
    ("link.bin", "outside the model's folder (refused)"),
    ("gone.bin", "which is missing"),
    ("weights\0.bin", "outside the model's folder (refused)"),
])
def test_external_data_is_read_only_from_the_models_folder(tmp_path, ort_library, capsys, location, message):
    source = _with_external_weights(tmp_path, location)
    (tmp_path / "link.bin").symlink_to(tmp_path.parent)
    code = main(["build-engine", "--onnx", str(source), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    if message is None:
        assert code == EXIT_OK
        assert main(["validate", str(tmp_path / "out"), "--onnx", str(source)]) == EXIT_OK
        data = bytearray((tmp_path / "weights.bin").read_bytes())
        data[-4:] = b"\0\0\x80\x3f"  # other weights in the same file: the recorded sha256 covers them
        (tmp_path / "weights.bin").write_bytes(bytes(data))
        capsys.readouterr()
        assert main(["validate", str(tmp_path / "out"), "--onnx", str(source)]) == EXIT_USER_ERROR
        assert "is not the file the artifact was built from" in capsys.readouterr().err
    else:
        assert code == EXIT_USER_ERROR and message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


class DictOutputs(nn.Module):
    """Two outputs returned as a dict: the exporter flattens them in key order (naming them after their ops)."""

    def __init__(self):
        super().__init__()
        self.vit = UserViT(depth=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.vit(images)
        return {"logits": logits, "probs": logits.softmax(-1)}


def test_compile_checks_every_output_of_a_dict_and_refuses_a_wrong_artifact(tmp_path, ort_library, monkeypatch):
    import export
    from export import module_compiler
    from export.errors import UserError

    torch.manual_seed(8)
    images = {"images": torch.randn(2, 3, 16, 16)}
    out = export.compile(DictOutputs(), images, out=tmp_path / "dict")
    assert len(json.loads((out / "manifest.json").read_text())["outputs"]) == 2
    before = (out / "manifest.json").read_bytes()
    model = DictOutputs()  # other weights than the export: the check must refuse, and leave the old artifact
    real = module_compiler.check_against_module
    monkeypatch.setattr(module_compiler, "check_against_module",
                        lambda directory, module, inputs: real(directory, model, inputs))
    with pytest.raises(UserError, match="disagrees with DictOutputs on the example inputs"):
        export.compile(DictOutputs(), images, out=tmp_path / "dict")
    assert (out / "manifest.json").read_bytes() == before


def test_a_torchscript_export_builds_fused_and_equal(tmp_path, ort_library):
    """The legacy exporter (torch.onnx.export(dynamo=False)) writes other ops for the same model: fused all the
    same, every layer."""
    torch.manual_seed(9)
    model, images = UserViT(depth=2).eval(), torch.randn(2, 3, 16, 16)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (images,), str(tmp_path / "ts.onnx"), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, opset_version=17)
    build_and_validate(tmp_path / "ts.onnx", tmp_path / "ts", 2)


def test_a_near_miss_builds_unfused_and_the_warning_says_why(tmp_path, ort_library, caplog):
    class OddPower(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            x = 0.5 * (q.unsqueeze(-2) - k.unsqueeze(-3))
            one = torch.ones_like(x)
            w = torch.where(x == 0, one, torch.sin(x) / torch.where(x == 0, one, x)).prod(-1) ** 3
            return (w @ v) / (w.sum(-1, keepdim=True) + EPS)

    qkv = {name: 0.3 * torch.randn(1, 2, 5, 8) for name in "qkv"}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        onnx.save(torch.onnx.export(OddPower(), (), kwargs=qkv, dynamo=True, verbose=False).model_proto,
                  tmp_path / "odd.onnx")
    assert main(["build-engine", "--onnx", str(tmp_path / "odd.onnx"), "--out", str(tmp_path / "a")]) == EXIT_OK
    assert "Why each of its 1 candidate(s) was left alone" in caplog.text and "power 3" in caplog.text
