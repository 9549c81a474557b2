"""Serving built artifacts with NVIDIA Triton Inference Server: a Triton model repository for a production
server (:mod:`export.serving.repository`, ``python -m export triton``), and a Triton server on this machine through
PyTriton (:mod:`export.serving.server`, ``python -m export serve``)."""
