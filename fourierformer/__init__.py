"""FourierFormer models (Nguyen et al., NeurIPS 2022) in PyTorch: attention, models, configs, op spec."""
