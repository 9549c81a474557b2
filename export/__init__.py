"""fourierformer-deploy: export FourierFormer models to ONNX and build verified deployment artifacts.

Run ``python -m export --help`` for the command line.
"""

from export.tensorrt_backend import configure_polygraphy

configure_polygraphy()
