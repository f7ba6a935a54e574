"""tg.nn.init: PyTorch's fan and gain formulas, in place, reproducible with tg.manual_seed."""

import math

import numpy as np
import pytest

import tinygrad_gpu as tg

init = tg.nn.init

try:
    import torch
except ImportError:  # PyTorch is an optional oracle
    torch = None


def test_kaiming_uniform_bound_and_spread(device):
    w = tg.Tensor.zeros(64, 100, device=device, requires_grad=True)
    storage = w.array
    assert init.kaiming_uniform_(w) is w and w.array is storage and w.is_leaf
    bound = math.sqrt(3) * math.sqrt(2) / math.sqrt(100)  # gain sqrt(2 / (1 + 0**2)), fan_in 100
    values = w.numpy()
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.98 * bound
    assert abs(values.mean()) < 0.02 and values.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)


def test_kaiming_fan_out_relu_on_a_4d_weight(device):
    w = tg.Tensor.zeros(8, 3, 5, 5, device=device)
    assert init.calculate_fan_in_and_fan_out(w) == (75, 200)
    init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu")
    bound = math.sqrt(3) * math.sqrt(2) / math.sqrt(200)
    assert np.abs(w.numpy()).max() <= bound and np.abs(w.numpy()).max() > 0.95 * bound
    init.kaiming_normal_(w, a=0.2)
    assert w.numpy().std() == pytest.approx(math.sqrt(2 / 1.04) / math.sqrt(75), rel=0.1)


def test_xavier_uniform_and_normal(device):
    w = tg.Tensor.zeros(200, 300, device=device, dtype=np.float64)
    init.xavier_uniform_(w, gain=2.0)
    bound = 2.0 * math.sqrt(6 / 500)
    assert np.abs(w.numpy()).max() <= bound and np.abs(w.numpy()).max() > 0.99 * bound
    init.xavier_normal_(w)
    assert w.numpy().std() == pytest.approx(math.sqrt(2 / 500), rel=0.02)


def test_normal_uniform_and_constants(device):
    t = tg.Tensor.zeros(100_000, device=device)
    init.normal_(t, mean=3.0, std=0.5)
    values = t.numpy()
    assert values.mean() == pytest.approx(3.0, abs=0.01) and values.std() == pytest.approx(0.5, rel=0.02)
    init.uniform_(t, -1.0, 2.0)
    values = t.numpy()
    assert values.min() >= -1.0 and values.max() <= 2.0 and values.mean() == pytest.approx(0.5, abs=0.02)
    init.zeros_(t)
    assert not t.numpy().any()
    init.ones_(t)
    assert np.all(t.numpy() == 1.0)
    init.constant_(t, -2.5)
    assert np.all(t.numpy() == -2.5) and t.dtype == np.float32


@pytest.mark.parametrize("fill", [init.kaiming_uniform_, init.xavier_uniform_, init.normal_])
def test_reproducible_with_manual_seed_on_every_device(device, fill):
    def draw(on):
        tg.manual_seed(7)
        return fill(tg.Tensor.zeros(5, 4, device=on)).numpy()
    first = draw(device)
    np.testing.assert_array_equal(first, draw(device))
    np.testing.assert_array_equal(first, draw("cpu"))  # the same values on the CPU and the GPU
    tg.manual_seed(8)
    assert not np.array_equal(first, fill(tg.Tensor.zeros(5, 4, device=device)).numpy())


def test_init_errors_are_clear(device):
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(3,\)"):
        init.xavier_uniform_(tg.Tensor.zeros(3, device=device))
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.kaiming_uniform_(tg.Tensor.zeros(3, 3, device=device), nonlinearity="swish")
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        init.kaiming_normal_(tg.Tensor.zeros(3, 3, device=device), mode="fan")
    with pytest.raises(TypeError, match="takes a Tensor"):
        init.zeros_(np.zeros(3))


@pytest.mark.parametrize("nonlinearity,param", [("linear", None), ("sigmoid", None), ("tanh", None),
                                                ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
                                                ("selu", None)])
def test_calculate_gain_follows_pytorch(nonlinearity, param):
    expected = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5 / 3, "relu": math.sqrt(2), "selu": 0.75,
                "leaky_relu": math.sqrt(2 / (1 + (0.01 if param is None else param) ** 2))}[nonlinearity]
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(expected)
    if torch is not None:
        assert init.calculate_gain(nonlinearity, param) == pytest.approx(
            torch.nn.init.calculate_gain(nonlinearity, param))
