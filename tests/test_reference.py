"""The eager reference (float32, materializing) against the float64 oracle and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import assert_not_vacuous, attention_inputs, oracle
from export.validate import error_stats
from fourierformer.attention import FourierAttention, fourier_attention_oracle, fourier_attention_reference


def test_single_pair_by_hand():
    q = torch.tensor([[[[0.5, -1.0]]]])
    k = torch.tensor([[[[0.0, 1.0], [0.5, -1.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    R, power, eps = 2.0, 4, 1e-6
    x = [R * 0.5, R * -2.0]
    w0 = math.prod((math.sin(t) / t) ** power for t in x)
    w1 = 1.0  # identical query and key: sinc(0) = 1 (not torch.sinc)
    expected = (w0 * np.array([1.0, 2.0]) + w1 * np.array([3.0, 4.0])) / (w0 + w1 + eps)
    out = fourier_attention_reference(q, k, v, R, power, eps)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(fourier_attention_oracle(q, k, v, R, power, eps)[0, 0, 0].numpy(), expected, rtol=1e-12)


def test_causal_mask_is_bottom_right_aligned():
    q, k, v = (torch.randn(1, 1, n, 4) * 0.2 for n in (2, 5, 5))
    out = fourier_attention_reference(q, k, v, 1.0, causal=True)
    # query 0 sees keys 0..3, query 1 sees all five keys
    full = fourier_attention_reference(q, k[:, :, :4], v[:, :, :4], 1.0)
    torch.testing.assert_close(out[:, :, 0], full[:, :, 0])
    torch.testing.assert_close(out[:, :, 1], fourier_attention_reference(q, k, v, 1.0)[:, :, 1])


@pytest.mark.parametrize("R", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 3, 9, 13, 7), (1, 2, 31, 17, 64)])
def test_eager_float32_matches_oracle(shape, R):
    inputs = attention_inputs(*shape, R=R, seed=5)
    reference, min_row_sum = oracle(inputs, R, 4, 1e-6, 0)
    assert_not_vacuous(min_row_sum, 1e-6)
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    out = fourier_attention_reference(t["q"], t["k"], t["v"], R)
    assert error_stats("out", out.numpy(), reference).norm_rel <= 1e-5


def test_module_rejects_bad_attributes():
    with pytest.raises(ValueError, match="power"):
        FourierAttention(power=3)
    with pytest.raises(ValueError, match="eps"):
        FourierAttention(eps=-1.0)


def test_module_R_is_learnable_and_used():
    attention = FourierAttention()
    q, k, v = (torch.randn(1, 2, 6, 8) * 0.3 for _ in range(3))
    before = attention(q, k, v)
    with torch.no_grad():
        attention.paramR.fill_(3.0)
    assert attention.paramR.shape == (1,) and attention.paramR.requires_grad
    assert not torch.allclose(before, attention(q, k, v))


SOFTMAX_NAMES = {"tiny-lm": lambda n: n.replace(".k_net.", ".kv_net.") if ".v_net." not in n else None,
                 "tiny-vit": lambda n: n}
"""Fourier state_dict name -> the softmax baseline's (the LM's type 2 fuses k_net and v_net into kv_net)."""


@pytest.mark.parametrize("name", ["tiny-lm", "tiny-vit"])
def test_softmax_switch_builds_the_official_baselines(name):
    from fourierformer.configs import get_config
    from fourierformer.models import create_model, example_inputs

    fourier, softmax = (create_model(get_config(name, kind)) for kind in ("fourier", "softmax"))
    assert not any(isinstance(m, FourierAttention) for m in softmax.modules())
    assert sum(isinstance(m, FourierAttention) for m in fourier.modules()) == 2
    renamed = {SOFTMAX_NAMES[name](n) for n in fourier.state_dict() if not n.endswith(".paramR")} - {None}
    assert renamed == set(softmax.state_dict())
    inputs = example_inputs(get_config(name), batch=1)
    with torch.no_grad():
        assert softmax(**inputs).shape == fourier(**inputs).shape
