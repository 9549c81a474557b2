"""``python -m export serve``: a built artifact behind a real Triton Inference Server on this machine.

PyTriton (``nvidia-pytriton``) starts the ``tritonserver`` its wheel ships and binds the model to a Python
inference function, which runs the artifact through :func:`export.load` (inputs checked, token ids included).
Triton batches requests dynamically (unless a request can be wrong in ways only the tool sees: see
:func:`batchable`), answers HTTP and gRPC and publishes metrics. The serving dependencies are the
``[serve]`` extra; PyTriton needs numpy < 2, so they live in an environment of their own (see the README).
"""

from __future__ import annotations

import logging
import os
import socket
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from export.errors import UserError
from export.paths import cache_dir
from export.serving.repository import QUEUE_DELAY_US, ServingShape, serving_shape, triton_dims

log = logging.getLogger(__name__)

EXIT_TIMEOUT_S = 2
"""How long Triton waits for requests in flight when it stops (its own default is 30 s)."""


@dataclass(frozen=True)
class Ports:
    """Where the server listens."""

    address: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def _pytriton():
    """PyTriton's modules; UserError naming the extra if it is missing."""
    try:
        from pytriton import decorators, model_config, triton
    except ImportError as exc:
        raise UserError("serve needs PyTriton, which is not installed: pip install 'fourierformer-deploy[serve]' "
                        "(in an environment of its own: PyTriton needs numpy < 2)") from exc
    return decorators, model_config, triton


def _server_environment() -> None:
    """Put this interpreter's own libpython first on the library path of the server, which Triton's Python
    backend stub links: a Python built elsewhere (pyenv) would otherwise meet the system's libpython and fail to
    load the model."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)
    # the shared-memory tracker PyTriton starts would warn at exit about segments the stopped server owned
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")


def _tensors(model_config, tensors) -> list:
    """PyTriton tensors of the manifest's (the batch axis left out, -1 for other dynamic axes)."""
    return [model_config.Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=triton_dims(t)) for t in tensors]


def server_log(name: str) -> Path:
    """Where the server of model ``name`` writes its log (replaced at each start)."""
    return cache_dir() / "triton-logs" / f"{name}.log"


def batchable(manifest) -> bool:
    """Whether requests may be batched together: only if Triton itself can refuse every bad one (all inputs of
    fixed size past the batch axis, no value bounds). PyTriton answers a batched call with one error for all its
    requests, so one client's bad request would fail the others'."""
    return all(t.values is None and all(isinstance(d, int) for d in t.shape[1:]) for t in manifest.inputs)


def free_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``address`` now (the system's choice), for servers started next."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind((address, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def check_ports(ports: Ports) -> None:
    """UserError unless the three ports differ and are free on the address (before the server is started:
    Triton would print its usage, or PyTriton wait two minutes)."""
    numbers = {"--http-port": ports.http, "--grpc-port": ports.grpc, "--metrics-port": ports.metrics}
    if len(set(numbers.values())) != 3:
        raise UserError(f"--http-port, --grpc-port and --metrics-port must differ, got {list(numbers.values())}")
    for flag, port in numbers.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ports.address, port))
            except OSError as exc:
                raise UserError(f"{flag} {port}: cannot listen on {ports.address}:{port} ({exc.strerror}); choose "
                                "another port") from exc


def serve(directory: Path, ports: Ports, name: str | None = None, max_batch: int | None = None,
          instances: int = 1, ready: Callable[[ServingShape, Ports, Path | None], None] = lambda *_: None,
          at_stop: Callable[[Callable[[], object]], None] = lambda stop: None, verbose: bool = False) -> None:
    """Serve the artifact until the server stops. ``ready`` is called once it answers, with the server's log
    (None with ``verbose``: the log goes to stderr); ``at_stop`` is handed the function that stops it (for a
    signal handler)."""
    import export

    decorators, model_config, triton = _pytriton()
    from pytriton.exceptions import PyTritonError
    from tritonclient.utils import InferenceServerException

    check_ports(ports)
    artifact = export.load(directory)
    shape = serving_shape(artifact.manifest, name, max_batch)

    @decorators.batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return artifact.run(inputs)

    _server_environment()
    log_file = None if verbose else server_log(shape.name)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("pytriton").setLevel(logging.ERROR)  # its notes on stopping ("exited with failure")
    config = triton.TritonConfig(http_address=ports.address, http_port=ports.http, grpc_address=ports.address,
                                 grpc_port=ports.grpc, metrics_address=ports.address, metrics_port=ports.metrics,
                                 exit_timeout_secs=EXIT_TIMEOUT_S, allow_gpu_metrics=False, log_file=log_file,
                                 log_verbose=1 if verbose else 0)
    batcher = None
    if batchable(artifact.manifest):
        batcher = model_config.DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US,
                                              preferred_batch_size=list(shape.preferred))
    else:
        log.info("serving %s without dynamic batching: its inputs can be wrong in ways Triton cannot see", shape.name)
    try:
        with triton.Triton(config=config) as server:
            at_stop(server.stop)
            server.bind(model_name=shape.name, infer_func=[infer] * instances,
                        inputs=_tensors(model_config, artifact.manifest.inputs),
                        outputs=_tensors(model_config, artifact.manifest.outputs),
                        config=model_config.ModelConfig(max_batch_size=shape.max_batch, batcher=batcher),
                        strict=True)
            server.connect()
            ready(shape, ports, log_file)
            server.serve()  # returns only if the server or its model died (a signal exits through at_stop)
        raise UserError("Triton Inference Server stopped unexpectedly" + (f" (its log: {log_file})" if log_file else ""))
    except (TimeoutError, RuntimeError, OSError, PyTritonError, InferenceServerException) as exc:  # start-up failures
        raise UserError(f"Triton Inference Server did not start: {exc}"
                        + (f" (its log: {log_file})" if log_file else "")) from exc
    finally:
        artifact.close()
