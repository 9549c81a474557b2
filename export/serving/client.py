"""The client side of a served artifact: Triton request inputs from numpy arrays, for tritonclient's HTTP or
gRPC module (the ``[serve]`` extra)."""

from __future__ import annotations

from types import ModuleType
from typing import Mapping

import numpy as np


def triton_inputs(protocol: ModuleType, arrays: Mapping[str, np.ndarray]) -> list:
    """``protocol.InferInput`` objects holding ``arrays`` by name; ``protocol`` is ``tritonclient.http`` or
    ``tritonclient.grpc``."""
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        tensor = protocol.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs
