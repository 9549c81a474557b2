"""Graph-surgeon passes: each a pure function taking a graph and returning a new one.

``PIPELINES`` names the passes that retarget an exported graph to each backend.
"""

from export.passes.cleanup import cleanup
from export.passes.onnxruntime import to_onnxruntime

PIPELINES = {
    "onnxruntime": (cleanup, to_onnxruntime, cleanup),
}

__all__ = ["PIPELINES", "cleanup", "to_onnxruntime"]
