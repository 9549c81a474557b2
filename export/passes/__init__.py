"""Graph-surgeon passes: each a pure function taking a graph and returning a new one."""

from typing import Callable

import onnx_graphsurgeon as gs

from export.passes.cleanup import cleanup
from export.passes.custom_op import to_onnxruntime, to_tensorrt
from export.passes.decompose import decompose
from export.passes.fp16 import to_fp16
from export.passes.fuse import Candidate, FuseReport, fuse, fuse_with_report

GraphPass = Callable[[gs.Graph], gs.Graph]

__all__ = ["Candidate", "FuseReport", "GraphPass", "cleanup", "decompose", "fuse", "fuse_with_report", "to_fp16",
           "to_onnxruntime", "to_tensorrt"]
