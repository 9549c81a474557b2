"""``python -m export triton``: a Triton Inference Server model repository for a built artifact.

``REPO/NAME/`` gets ``config.pbtxt``, the model as version 1 (``1/model.onnx`` for ONNX Runtime, ``1/model.plan``
for TensorRT), our plugin library, ``SHA256SUMS`` (``sha256sum -c`` checks the copy) and a README saying how to
start a server on it. Inputs and outputs come from the manifest: the leading ``batch`` axis becomes
``max_batch_size``, other dynamic axes are -1. Torch-free: it reads the manifest and copies verified bytes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from export.artifact import Manifest, TensorInfo, load_manifest, read_verified, staging_directory
from export.errors import UserError

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
"""Triton's data types of the manifest's dtypes."""
DEFAULT_MAX_BATCH = 64
"""max_batch_size when --max-batch is not given (or the artifact's largest batch, if smaller)."""
QUEUE_DELAY_US = 1000
"""How long the dynamic batcher waits to fill a batch, in microseconds."""
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx", "KIND_CPU"),
             "tensorrt": ("tensorrt_plan", "model.plan", "KIND_GPU")}
"""Per backend: Triton's platform, the model file's name in the version folder, the instance kind."""


@dataclass(frozen=True)
class ServingShape:
    """How an artifact is served: its name, the largest batch and the batch sizes the batcher prefers."""

    name: str
    max_batch: int
    preferred: tuple[int, ...]


def serving_shape(manifest: Manifest, name: str | None, max_batch: int | None) -> ServingShape:
    """The model name (default: the manifest's model) and batch sizes, checked against the artifact: every
    input and output has a leading ``batch`` axis, the artifact accepts batch 1, and ``max_batch`` is within its
    range. The preferred sizes are the TensorRT profile's opt and max, or the largest batch."""
    name = manifest.model if name is None else name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (Triton's folder names)")
    for tensor in (*manifest.inputs, *manifest.outputs):
        if tensor.shape[:1] != ["batch"]:
            raise UserError(f"{tensor.name} has no leading batch axis ({tensor.shape}): Triton batches on axis 0")
    low, high = manifest.dimension_range("batch")
    if low > 1:
        raise UserError(f"the artifact accepts batches from {low}, but Triton sends any size from 1: rebuild it "
                        "with --shapes batch=1:OPT:MAX")
    largest = min(high, DEFAULT_MAX_BATCH) if max_batch is None else max_batch
    if not 1 <= largest <= high:
        raise UserError(f"--max-batch {max_batch} is outside 1..{high}, the artifact's range")
    profile = manifest.tensorrt.profiles.get("batch") if manifest.tensorrt else None
    preferred = sorted({size for size in (profile or [])[1:] if size <= largest} | {largest})
    return ServingShape(name, largest, tuple(preferred))


def triton_dims(tensor: TensorInfo) -> tuple[int, ...]:
    """Triton's dims of a tensor: the axes after the batch axis, -1 for a dynamic one."""
    return tuple(-1 if isinstance(d, str) else d for d in tensor.shape[1:])


def _tensors(kind: str, tensors: list[TensorInfo]) -> str:
    """An ``input [...]`` or ``output [...]`` block."""
    entries = []
    for t in tensors:
        dims = ", ".join(map(str, triton_dims(t)))
        entries.append(f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_TYPES[t.dtype]}\n    dims: [ {dims} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def config_text(manifest: Manifest, shape: ServingShape, instances: int, library: str | None) -> str:
    """The model's ``config.pbtxt`` (Triton's ModelConfig in protobuf text format). ``library`` is the path the
    server will see our ONNX Runtime custom-op library at."""
    platform, _, kind = PLATFORMS[manifest.backend]
    text = (f'name: "{shape.name}"\nplatform: "{platform}"\nmax_batch_size: {shape.max_batch}\n'
            + _tensors("input", manifest.inputs) + _tensors("output", manifest.outputs)
            + f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, shape.preferred))} ]\n"
              f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n")
    if library is not None and manifest.backend == "onnxruntime":
        text += f'model_operations {{\n  op_library_filename: "{library}"\n}}\n'
    return text


def readme_text(manifest: Manifest, shape: ServingShape, instances: int, server_path: PurePosixPath,
                host_repository: Path) -> str:
    """The model folder's README: how to start a server on the repository, for the artifact's backend.
    ``server_path`` is where the server sees the model folder, ``host_repository`` where the repository is here."""
    repo, model = server_path.parent, server_path
    docker = (f"    docker run{' --gpus all' if manifest.backend == 'tensorrt' else ''} --rm -p8000:8000 -p8001:8001 "
              f"-p8002:8002 -v {host_repository}:{repo} \\\n        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
              f"tritonserver --model-repository={repo}")
    if manifest.backend == "onnxruntime":
        start = (f"Triton's onnxruntime backend runs `1/model.onnx` on the CPU and loads our custom op from\n"
                 f"`{model}/{manifest.plugin_library}` (`model_operations` in `config.pbtxt`): the server must see\n"
                 f"the repository at `{repo}` (`triton --server-path` writes another place).\n\n"
                 f"    tritonserver --model-repository={repo}\n\n"
                 f"In the NGC container (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`):\n\n{docker}\n\n"
                 "The op library was built against ONNX Runtime 1.21's C API: the server's ONNX Runtime must be\n"
                 "1.21 or newer.\n")
    else:
        plugin = f"{model}/{manifest.plugin_library}" if manifest.plugin_library else None
        flag = f" --backend-config=tensorrt,plugins={plugin}" if plugin else ""
        start = (f"Triton's tensorrt backend runs `1/model.plan`, built with {manifest.tensorrt.flavour} "
                 f"{manifest.tensorrt.version}"
                 + (f", and our plugin, loaded through the tensorrt backend's `plugins` setting (or start the "
                    f"server with `LD_PRELOAD={plugin}`):" if plugin else " (attention decomposed, no plugin):")
                 + f"\n\n    tritonserver --model-repository={repo}{flag}\n\n"
                 "In the NGC container whose TensorRT is that release (an engine runs only under the TensorRT it "
                 f"was built with):\n\n{docker}{flag}\n")
    unchecked = ("\nTriton's backend does not check token ids or sequence lengths: a negative id wraps around in\n"
                 "ONNX's `Gather`, and a sequence past the model's context fails inside it. Check them in the client\n"
                 "(or serve with `python -m export serve`, which does).\n"
                 if any(t.values is not None for t in manifest.inputs) else "")
    title = shape.name if shape.name == manifest.model else f"{shape.name} ({manifest.model})"
    return (f"# {title}: {manifest.backend}, {manifest.precision}\n\n{start}{unchecked}\n"
            f"Batches of up to {shape.max_batch}, dynamic batching (preferred {list(shape.preferred)}), {instances} "
            "instance(s). `sha256sum -c SHA256SUMS` checks the files.\n")


def write_repository(artifact: Path, repository: Path, name: str | None = None, max_batch: int | None = None,
                     instances: int = 1, server_path: PurePosixPath | None = None) -> Path:
    """Write ``repository/NAME`` for the artifact (verified first); returns that folder. ``server_path`` is where
    the server will see that folder (default: its absolute path here). An existing NAME folder is replaced only
    if empty: a repository's other models are never touched."""
    manifest = load_manifest(artifact)
    if manifest.backend == "tensorrt" and manifest.tensorrt.flavour != "tensorrt":
        raise UserError(f"a {manifest.tensorrt.flavour} engine cannot be served by Triton's tensorrt backend, which "
                        "runs TensorRT: build the artifact with TensorRT or for ONNX Runtime")
    shape = serving_shape(manifest, name, max_batch)
    out = repository / shape.name
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"refusing to overwrite {out}: it exists (remove it, or choose another --name)")
    server_path = PurePosixPath(out.absolute().as_posix()) if server_path is None else server_path / shape.name
    _, model_file, _ = PLATFORMS[manifest.backend]
    copies = {f"1/{model_file}": manifest.engine_file or manifest.onnx_file}
    if manifest.plugin_library:
        copies[manifest.plugin_library] = manifest.plugin_library
    library = str(server_path / manifest.plugin_library) if manifest.plugin_library else None
    with staging_directory(out) as staging:
        for target, source in copies.items():
            (staging / target).parent.mkdir(exist_ok=True)
            (staging / target).write_bytes(read_verified(artifact, manifest, source))
        (staging / "config.pbtxt").write_text(config_text(manifest, shape, instances, library))
        (staging / "README.md").write_text(readme_text(manifest, shape, instances, server_path,
                                                       repository.absolute()))
        sums = "".join(f"{hashlib.sha256((staging / f).read_bytes()).hexdigest()}  {f}\n"
                       for f in sorted(("config.pbtxt", "README.md", *copies)))
        (staging / "SHA256SUMS").write_text(sums)
    return out
