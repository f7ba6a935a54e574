"""Every op: forward against NumPy, gradients against finite differences, on every device."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpu as tg

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
values = st.floats(-3, 3, allow_nan=False, allow_infinity=False, width=64)


def arrays(shape, elements=values):
    return hnp.arrays(np.float64, shape, elements=elements)


def broadcast_pair():
    """Two shapes that broadcast together (NumPy rules)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3).map(
        lambda s: s.input_shapes)


def leaf(array, device):
    return tg.Tensor(array, device=device, dtype=np.float64, requires_grad=True)


BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
}


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_ops_broadcast(device, name, data):
    shape_a, shape_b = data.draw(broadcast_pair())
    a = data.draw(arrays(shape_a))
    b = data.draw(arrays(shape_b, st.floats(0.5, 3) if name == "div" else values))
    ours, reference = BINARY[name]
    np.testing.assert_allclose(ours(leaf(a, device), leaf(b, device)).numpy(), reference(a, b),
                               rtol=1e-12)
    assert tg.gradcheck(ours, [leaf(a, device), leaf(b, device)])


@pytest.mark.parametrize("name", BINARY)
def test_binary_ops_with_scalars_and_arrays_on_both_sides(device, name):
    ours, reference = BINARY[name]
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    t = tg.Tensor(a, device=device)
    for left, right, ref in [(t, 2.0, reference(a, 2.0)), (2.0, t, reference(2.0, a)),
                             (t, a, reference(a, a)), (a, t, reference(a, a))]:
        result = ours(left, right)
        assert isinstance(result, tg.Tensor) and result.dtype == np.float32
        np.testing.assert_allclose(result.numpy(), ref, rtol=1e-6)


UNARY = {
    "neg": (lambda t: -t, np.negative, (-3, 3)),
    "exp": (lambda t: t.exp(), np.exp, (-3, 3)),
    "log": (lambda t: t.log(), np.log, (0.1, 5)),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, (0.1, 5)),
    "relu": (lambda t: t.relu(), lambda x: np.maximum(x, 0), (-3, 3)),
    "sigmoid": (lambda t: t.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), (-6, 6)),
    "tanh": (lambda t: t.tanh(), np.tanh, (-3, 3)),
    "pow3": (lambda t: t ** 3, lambda x: x ** 3, (-3, 3)),
    "pow_half": (lambda t: t ** 0.5, np.sqrt, (0.1, 5)),
    "pow_neg": (lambda t: t ** -1.5, lambda x: x ** -1.5, (0.2, 5)),
}


@pytest.mark.parametrize("name", UNARY)
@given(data=st.data())
def test_unary_ops(device, name, data):
    ours, reference, (low, high) = UNARY[name]
    x = data.draw(arrays(data.draw(shapes), st.floats(low, high)))
    if name == "relu":  # keep away from the kink at 0, where finite differences are meaningless
        assume(np.all(np.abs(x) > 1e-3))
    np.testing.assert_allclose(ours(leaf(x, device)).numpy(), reference(x), rtol=1e-12, atol=1e-300)
    assert tg.gradcheck(ours, [leaf(x, device)])


def test_relu_gradient_at_zero_is_zero(device):
    x = tg.Tensor([-1.0, 0.0, 2.0], device=device, requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 1.0])


def test_relu_passes_nan_through_as_pytorch_does(device):
    x = tg.Tensor([np.nan, -np.inf, -1.0, 0.0, 2.0, np.inf], device=device, requires_grad=True)
    y = x.relu()
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [np.nan, 0.0, 0.0, 0.0, 2.0, np.inf])
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.0, 0.0, 0.0, 1.0, 1.0])


def test_pow_zero_exponent_gradient_is_zero_at_zero(device):
    x = tg.Tensor([0.0, 2.0], device=device, requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


def test_sigmoid_does_not_overflow(device):
    x = tg.Tensor([-1e4, -100.0, 0.0, 100.0, 1e4], device=device, requires_grad=True)
    y = x.sigmoid()
    y.sum().backward()
    expected = [0.0, 1 / (1 + np.exp(100.0)), 0.5, 1.0, 1.0]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-30)
    assert np.all(np.isfinite(x.grad.numpy()))


AXES = st.one_of(st.none(), st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)))


def _axis_for(shape, axis):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(sorted({a % len(shape) for a in axes})) if shape else None
    return axes


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@given(data=st.data(), keepdims=st.booleans())
def test_reductions(device, name, data, keepdims):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    axis = _axis_for(shape, data.draw(AXES))
    x = data.draw(arrays(shape))
    if name == "max":  # distinct values: the max is not a kink
        x = x + np.arange(x.size).reshape(shape) * 10.0
    reference = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    ours = lambda t: getattr(t, name)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(ours(leaf(x, device)).numpy(), reference, rtol=1e-12)
    assert tg.gradcheck(ours, [leaf(x, device)])


def test_max_shares_gradient_between_ties(device):
    x = tg.Tensor([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], device=device, requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [1, 0, 0]])


def test_negative_axis(device):
    x = tg.Tensor(np.arange(6.0).reshape(2, 3), device=device)
    np.testing.assert_allclose(x.sum(axis=-1).numpy(), [3, 12])
    np.testing.assert_allclose(x.mean(axis=(-2, -1)).numpy(), 2.5)


MATMUL_SHAPES = [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((4,), (4, 3)), ((3, 4), (4,)),
                 ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 2)), ((1, 2), (2, 1)),
                 ((50, 60), (60, 40))]  # the last is big enough for cuBLAS on the GPU


@pytest.mark.parametrize("shape_a,shape_b", MATMUL_SHAPES)
def test_matmul(device, shape_a, shape_b):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    np.testing.assert_allclose((leaf(a, device) @ leaf(b, device)).numpy(), a @ b, rtol=1e-12)
    assert tg.gradcheck(lambda x, y: x.matmul(y), [leaf(a, device), leaf(b, device)])


@given(data=st.data())
def test_reshape_transpose_expand(device, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    x = data.draw(arrays(shape))
    perm = data.draw(st.permutations(range(len(shape))))
    np.testing.assert_array_equal(leaf(x, device).transpose(*perm).numpy(), x.transpose(perm))
    np.testing.assert_array_equal(leaf(x, device).T.numpy(), x.T)
    np.testing.assert_array_equal(leaf(x, device).reshape(-1).numpy(), x.reshape(-1))
    target = (2,) + tuple(shape)
    np.testing.assert_array_equal(leaf(x, device).expand(*target).numpy(), np.broadcast_to(x, target))
    assert tg.gradcheck(lambda t: t.transpose(*perm) * 1.5, [leaf(x, device)])
    assert tg.gradcheck(lambda t: t.reshape(x.size, 1) * 2.0, [leaf(x, device)])
    assert tg.gradcheck(lambda t: t.broadcast_to(target) * 3.0, [leaf(x, device)])


def test_mixed_precision_promotes_to_float64(device):
    a = tg.Tensor([1.0, 2.0], device=device, dtype=np.float32, requires_grad=True)
    b = tg.Tensor([3.0, 4.0], device=device, dtype=np.float64, requires_grad=True)
    c = a * b
    assert c.dtype == np.float64
    c.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_allclose(a.grad.numpy(), [3, 4])


def test_float32_stays_float32_with_python_scalars(device):
    x = tg.Tensor([1.0, 2.0], device=device)
    for y in (x + 1, 2 * x, x / 3.0, 1 - x, x ** 2, (x * np.float64(2.0))):
        assert y.dtype == np.float32
