"""FourierFormer models (Nguyen et al., NeurIPS 2022) in PyTorch: attention, models, configs, op spec."""

__all__ = ["FourierAttention"]


def __getattr__(name: str):
    """``fourierformer.FourierAttention``, the attention module to put in your own models (it exports to one
    FourierAttention node), imported on first use: the package itself stays torch-free for ``run``."""
    if name == "FourierAttention":
        from fourierformer.attention import FourierAttention

        return FourierAttention
    raise AttributeError(f"module 'fourierformer' has no attribute {name!r}")
