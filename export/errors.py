"""Errors the command line reports as one clear line."""


class UserError(Exception):
    """A problem the user can fix (bad name, missing file, broken artifact): printed without a traceback."""


class ValidationFailed(Exception):
    """A built artifact's outputs do not match the eager model within tolerance."""


def one_line(message: object) -> str:
    """A message on one line (ONNX Runtime's, TensorRT's and some of ours span several)."""
    return " ".join(str(message).split())
