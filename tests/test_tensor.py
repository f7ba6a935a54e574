"""Tensor construction, attributes, factories, devices and bad input."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import backend


def test_python_data_defaults_to_float32(device):
    t = tg.Tensor([[0, 1], [1, 0]], device=device)
    assert t.dtype == np.float32 and t.shape == (2, 2) and t.ndim == 2 and t.device == device
    assert tg.Tensor(3, device=device).item() == 3.0
    assert tg.Tensor(2.5, device=device).shape == ()


def test_arrays_keep_their_float_dtype(device):
    assert tg.Tensor(np.zeros(3), device=device).dtype == np.float64
    assert tg.Tensor(np.zeros(3, np.float32), device=device).dtype == np.float32
    assert tg.Tensor(np.arange(3), device=device).dtype == np.float32
    assert tg.Tensor([1, 2], device=device, dtype="float64").dtype == np.float64


def test_tensor_from_tensor_and_numpy_round_trip(device):
    a = tg.Tensor([1.0, 2.0], device=device)
    b = tg.Tensor(a)
    np.testing.assert_array_equal(b.numpy(), [1, 2])
    host = a.numpy()
    host[0] = 9  # numpy() is a copy
    assert a.numpy()[0] == 1


def test_repr_shows_values_shape_dtype_device_and_grad_fn(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    text = repr(x * 2)
    assert "[2., 4.]" in text and "shape=(2,)" in text and "float32" in text
    assert f"device='{device}'" in text and "grad_fn=<Mul>" in text
    assert "requires_grad=True" in repr(x)


def test_factories(device):
    assert tg.Tensor.zeros(2, 3, device=device).numpy().sum() == 0
    assert tg.Tensor.ones((2, 3), device=device, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(tg.Tensor.eye(3, device=device).numpy(), np.eye(3))
    r = tg.Tensor.rand(1000, device=device).numpy()
    assert 0 <= r.min() and r.max() < 1
    n = tg.Tensor.randn(2000, device=device, requires_grad=True)
    assert n.requires_grad and abs(n.numpy().mean()) < 0.1


def test_manual_seed_reproduces_on_every_device(device):
    tg.manual_seed(7)
    a = tg.Tensor.randn(5, device=device).numpy()
    tg.manual_seed(7)
    b = tg.Tensor.randn(5, device="cpu").numpy()
    np.testing.assert_array_equal(a, b)
    tg.manual_seed(7)
    w1 = tg.nn.Linear(3, 2, device=device).weight.numpy()
    tg.manual_seed(7)
    w2 = tg.nn.Linear(3, 2).weight.numpy()
    np.testing.assert_array_equal(w1, w2)


@pytest.mark.parametrize("bad", ["abc", ["a", "b"], None, {"a": 1}, object(), 1 + 2j])
def test_non_numeric_data_raises_type_error(bad):
    with pytest.raises(TypeError):
        tg.Tensor(bad)


def test_ragged_data_raises_value_error():
    with pytest.raises(ValueError, match="ragged"):
        tg.Tensor([[1, 2], [3]])


def test_unsupported_dtype_raises():
    with pytest.raises(TypeError, match="float16 is not supported; use one of float32, float64, int32"):
        tg.Tensor([1, 2], dtype=np.float16)


def test_unknown_device_raises():
    with pytest.raises(ValueError, match="unknown device"):
        tg.Tensor([1.0], device="tpu")


def test_cuda_request_without_gpu_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cuda_checked", True)
    monkeypatch.setattr(backend, "_cuda_problem", "CuPy could not be imported")
    with pytest.raises(tg.DeviceError, match=r"pip install 'tinygrad_gpu\[cuda13\]'"):
        tg.Tensor([1.0], device="cuda")


def test_environment_variable_picks_the_default_device(monkeypatch, device):
    monkeypatch.setenv("TINYGRAD_GPU_DEVICE", device)
    assert tg.default_device() == device
    assert tg.Tensor([1.0]).device == device


def test_item_needs_one_element(device):
    with pytest.raises(ValueError, match="one element"):
        tg.Tensor([1.0, 2.0], device=device).item()


def test_pow_needs_a_scalar_or_tensor_exponent(device):
    x = tg.Tensor([1.0], device=device)
    with pytest.raises(TypeError, match="scalar exponent or a Tensor"):
        x ** "2"


def test_reshape_and_axis_errors_name_the_shapes(device):
    x = tg.Tensor(np.ones((2, 3)), device=device)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\(4, 2\)"):
        x.reshape(4, 2)
    with pytest.raises(ValueError, match="out of range"):
        x.sum(axis=2)
    with pytest.raises(ValueError, match="cannot broadcast"):
        x.expand(3, 3)
