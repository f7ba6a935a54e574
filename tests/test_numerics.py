"""Ops at extreme inputs: values and gradients against a wider reference over the whole finite range.

float32 results are checked against float64, float64 results against the x86 80-bit long double.
Where the reference is representable in the tested dtype we must match it closely; where it
overflows we must give an infinity of the same sign; we never give NaN where it has none.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpu as tg

WIDER = {np.float32: np.float64, np.float64: np.longdouble}
LONG_DOUBLE_IS_WIDER = np.finfo(np.longdouble).max > np.finfo(np.float64).max
DTYPES = [np.float32, pytest.param(np.float64, marks=pytest.mark.skipif(
    not LONG_DOUBLE_IS_WIDER, reason="needs a long double wider than float64 as the reference"))]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _sigmoid_grad(x):
    e = np.exp(-np.abs(x))
    return e / (1 + e) ** 2


def _pow(p):
    return (lambda t: t ** p, lambda x: x ** p, lambda x: p * x ** (p - 1))


# name: (our op, reference value, reference derivative, lowest input allowed)
UNARY = {
    "exp": (lambda t: t.exp(), np.exp, np.exp, None),
    "log": (lambda t: t.log(), np.log, lambda x: 1 / x, 0.0),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, lambda x: 0.5 / np.sqrt(x), 0.0),
    "sigmoid": (lambda t: t.sigmoid(), _sigmoid, _sigmoid_grad, None),
    "tanh": (lambda t: t.tanh(), np.tanh, lambda x: 1 / np.cosh(x) ** 2, None),
    "pow2": (*_pow(2.0), None),
    "pow3": (*_pow(3.0), None),
    "pow-1": (*_pow(-1.0), None),
    "pow0.5": (*_pow(0.5), 0.0),
    "pow-2.5": (*_pow(-2.5), 0.0),
    "pow1.5": (*_pow(1.5), 0.0),
}


# NOTE: sigmoid's and tanh's derivatives are computed from the output, y(1 - y) and 1 - y², as
# PyTorch does: accurate to a few ulp of their largest value (0.25 and 1), not relative to the tiny
# true value once y has rounded to ±1 (|x| > ~9 in float32), where they are exactly 0.
GRADIENT_SCALE = {"sigmoid": 0.25, "tanh": 1.0}


def special_points(dtype):
    """±1e3, zeros, the float limits (largest, smallest normal, smallest subnormal) and the exp limit."""
    info = np.finfo(dtype)
    points = [1e3, 1.0, 20.0, 88.75, 709.8, 0.0, info.max, info.tiny, info.smallest_subnormal, info.eps]
    return np.array(points + [-p for p in points], dtype=dtype)


def assert_matches(ours, reference, dtype, what, scale=0.0):
    """Close to the reference where it is representable, same-signed infinity where it overflows.

    `scale` widens the relative tolerance for results that cancel (a sum of terms of that size).
    """
    ours, reference = np.asarray(ours), np.asarray(reference)
    info = np.finfo(dtype)
    rtol, atol = 32 * info.eps, info.tiny  # a few ulp; absolute below the normal range
    reference_nan = np.isnan(reference)
    new_nan = np.isnan(ours) & ~reference_nan
    assert not new_nan.any(), f"{what}: NaN where the reference has none, at {np.argwhere(new_nan)[:3]}"
    with np.errstate(all="ignore"):
        magnitude = np.abs(reference)
        representable = ~reference_nan & (magnitude <= info.max * (1 - rtol))
        overflows = ~reference_nan & (magnitude >= info.max * (1 + rtol))
        error = np.abs(ours.astype(reference.dtype) - reference)
    bad = representable & ~(error <= rtol * (magnitude + scale) + atol)
    assert not bad.any(), (f"{what}: ours {ours[bad][:3]} != reference {reference[bad][:3]} "
                           f"(rtol {rtol:.2g}, atol {atol:.2g})")
    bad = overflows & ~(np.isinf(ours) & (np.sign(ours) == np.sign(reference)))
    assert not bad.any(), f"{what}: ours {ours[bad][:3]} where the reference overflows ({reference[bad][:3]})"


def as_the_device_sees_it(x, dtype, device):
    """x with subnormals flushed to zero for float32 on the GPU (CuPy compiles with -ftz=true)."""
    if device == "cuda" and dtype == np.float32:
        return np.where(np.abs(x) < np.finfo(dtype).tiny, np.copysign(dtype(0), x), x)
    return x


def check_unary(name, x, dtype, device):
    ours_fn, value_fn, grad_fn, _ = UNARY[name]
    t = tg.Tensor(x, device=device, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning may leak out of our ops
        y = ours_fn(t)
        y.backward(tg.Tensor(np.ones(x.shape), device=device, dtype=dtype))
    wide = as_the_device_sees_it(x, dtype, device).astype(WIDER[dtype])
    with np.errstate(all="ignore"):
        value, grad = value_fn(wide), grad_fn(wide)
    assert y.dtype == dtype and t.grad.dtype == dtype
    assert_matches(y.numpy(), value, dtype, f"{name} forward")
    assert_matches(t.grad.numpy(), grad, dtype, f"{name} backward", scale=GRADIENT_SCALE.get(name, 0.0))


def finite(dtype, low=None):
    width = 32 if dtype == np.float32 else 64
    return st.floats(min_value=low, allow_nan=False, allow_infinity=False, width=width)


def drawn_array(data, dtype, low=None):
    return data.draw(hnp.arrays(dtype, st.integers(1, 8), elements=finite(dtype, low)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", UNARY)
def test_unary_ops_at_special_points(device, name, dtype):
    x = special_points(dtype)
    low = UNARY[name][3]
    check_unary(name, x[x >= low] if low is not None else x, dtype, device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", UNARY)
@given(data=st.data())
def test_unary_ops_over_the_finite_range(device, name, dtype, data):
    check_unary(name, drawn_array(data, dtype, UNARY[name][3]), dtype, device)


def check_div(a, b, dtype, device):
    ta = tg.Tensor(a, device=device, dtype=dtype, requires_grad=True)
    tb = tg.Tensor(b, device=device, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ta / tb
        y.backward(tg.Tensor(np.ones(y.shape), device=device, dtype=dtype))
    wa, wb = (as_the_device_sees_it(v, dtype, device).astype(WIDER[dtype]) for v in (a, b))
    with np.errstate(all="ignore"):
        assert_matches(y.numpy(), wa / wb, dtype, "div forward")
        assert_matches(ta.grad.numpy(), 1 / wb, dtype, "div backward (dividend)")
        assert_matches(tb.grad.numpy(), -wa / (wb * wb), dtype, "div backward (divisor)")


@pytest.mark.parametrize("dtype", DTYPES)
def test_div_at_special_points(device, dtype):
    points = special_points(dtype)
    points = points[points != 0]
    a, b = np.meshgrid(points, points)
    check_div(a.ravel(), b.ravel(), dtype, device)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_div_over_the_finite_range(device, dtype, data):
    a = drawn_array(data, dtype)
    b = data.draw(hnp.arrays(dtype, a.shape, elements=finite(dtype).filter(lambda v: v != 0)))
    check_div(a, b, dtype, device)


def check_logsumexp(x, dtype, device):
    t = tg.Tensor(x, device=device, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = t.logsumexp(axis=-1)
        y.backward(tg.Tensor(np.ones(y.shape), device=device, dtype=dtype))
    wide = x.astype(WIDER[dtype])
    m = wide.max(axis=-1, keepdims=True)
    with np.errstate(all="ignore"):
        shifted = np.exp(wide - m)
        value = m + np.log(shifted.sum(axis=-1, keepdims=True))
        softmax = shifted / shifted.sum(axis=-1, keepdims=True)
    assert y.shape == x.shape[:-1]
    # max + log(sum) cancels (and log(sum) of a sum near 1 too): the error is a few ulp of max(1, |max|)
    assert_matches(y.numpy(), value[..., 0], dtype, "logsumexp forward",
                   scale=np.maximum(np.abs(m[..., 0]), 1))
    # exp(x - max) turns the rounding of x - max into a relative error |x - max| times larger
    assert_matches(t.grad.numpy(), softmax, dtype, "logsumexp backward", scale=softmax * np.abs(wide - m))


@pytest.mark.parametrize("dtype", DTYPES)
def test_logsumexp_at_special_points(device, dtype):
    points = special_points(dtype)
    check_logsumexp(np.stack([points, points[::-1], np.full_like(points, points.max())]), dtype, device)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_logsumexp_over_the_finite_range(device, dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=5))
    check_logsumexp(data.draw(hnp.arrays(dtype, shape, elements=finite(dtype))), dtype, device)


def test_saturated_activations_have_zero_gradients_not_nan(device):
    x = tg.Tensor([-1e3, 1e3, -3e38, 3e38], device=device, requires_grad=True)
    (x.sigmoid().sum() + x.tanh().sum()).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 0, 0])
    np.testing.assert_array_equal(x.sigmoid().numpy(), [0, 1, 0, 1])
    np.testing.assert_array_equal(x.tanh().numpy(), [-1, 1, -1, 1])


def test_logsumexp_keepdims_axes_and_infinities(device):
    x = np.array([[1.0, 2.0, 3.0], [-np.inf, -np.inf, -np.inf]], np.float64)
    t = tg.Tensor(x, device=device)
    np.testing.assert_allclose(t.logsumexp(axis=1, keepdims=True).numpy(),
                               [[np.log(np.exp([1, 2, 3]).sum())], [-np.inf]])
    np.testing.assert_allclose(tg.Tensor(x[:1], device=device).logsumexp().numpy(),
                               np.log(np.exp([1, 2, 3]).sum()))
    assert tg.Tensor([np.inf, 0.0], device=device).logsumexp().item() == np.inf
    with pytest.raises(ValueError, match="logsumexp over an empty axis"):
        tg.Tensor(np.ones((2, 0)), device=device).logsumexp(axis=1)
