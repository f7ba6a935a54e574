"""abs, clip, maximum/minimum, comparisons, where, softmax, shape helpers, cat/stack and indexing:
forward against NumPy, gradients against finite differences, on every device."""

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


def leaf(array, device):
    return tg.Tensor(array, device=device, dtype=np.float64, requires_grad=True)


# ---- abs, clip ----------------------------------------------------------------------------------
@given(data=st.data())
def test_abs(device, data):
    x = data.draw(arrays(data.draw(shapes)))
    assume(np.all(np.abs(x) > 1e-3))  # away from the kink at 0
    np.testing.assert_array_equal(leaf(x, device).abs().numpy(), np.abs(x))
    assert tg.gradcheck(lambda t: t.abs(), [leaf(x, device)])


def test_abs_gradient_at_zero_is_zero(device):
    x = tg.Tensor([-2.0, 0.0, 3.0], device=device, requires_grad=True)
    x.abs().sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [-1.0, 0.0, 1.0])


@given(data=st.data(), low=st.one_of(st.none(), st.floats(-2, 0)),
       high=st.one_of(st.none(), st.floats(0.1, 2)))
def test_clip(device, data, low, high):
    assume(low is not None or high is not None)
    x = data.draw(arrays(data.draw(shapes)))
    for bound in (low, high):  # away from the kinks at the bounds
        assume(bound is None or np.all(np.abs(x - bound) > 1e-3))
    np.testing.assert_array_equal(leaf(x, device).clip(low, high).numpy(), np.clip(x, low, high))
    assert tg.gradcheck(lambda t: t.clip(low, high), [leaf(x, device)])


def test_clip_passes_the_gradient_at_its_bounds_and_keeps_dtype(device):
    x = tg.Tensor([-2.0, -1.0, 0.0, 1.0, 2.0], device=device, requires_grad=True)
    y = x.clamp(-1, 1)
    assert y.dtype == np.float32
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0])


def test_clip_rejects_bad_bounds(device):
    x = tg.Tensor([1.0], device=device)
    with pytest.raises(ValueError, match="min 2.0 is larger than max 1.0"):
        x.clip(2, 1)
    with pytest.raises(ValueError, match="at least one"):
        x.clip()


# ---- maximum, minimum, comparisons, where -----------------------------------------------------
@pytest.mark.parametrize("name", ["maximum", "minimum"])
@given(data=st.data())
def test_maximum_minimum_broadcast(device, name, data):
    shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3)
                                 .map(lambda s: s.input_shapes))
    a, b = data.draw(arrays(shape_a)), data.draw(arrays(shape_b))
    assume(np.all(np.abs(a - b) > 1e-3))  # no ties: the gradient is a kink there
    ours = lambda x, y: getattr(x, name)(y)
    np.testing.assert_array_equal(ours(leaf(a, device), leaf(b, device)).numpy(), getattr(np, name)(a, b))
    assert tg.gradcheck(ours, [leaf(a, device), leaf(b, device)])


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_ties_share_the_gradient_evenly(device, name):
    a = tg.Tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    b = tg.Tensor([3.0, 2.0, 1.0], device=device, requires_grad=True)
    getattr(a, name)(b).sum().backward()
    first = [0.0, 0.5, 1.0] if name == "maximum" else [1.0, 0.5, 0.0]
    np.testing.assert_array_equal(a.grad.numpy(), first)
    np.testing.assert_array_equal(b.grad.numpy(), first[::-1])


def test_maximum_with_a_scalar_and_nan(device):
    x = tg.Tensor([-1.0, 0.5, np.nan], device=device)
    np.testing.assert_array_equal(x.maximum(0.0).numpy(), np.maximum(x.numpy(), 0.0))
    np.testing.assert_array_equal(x.minimum(0.0).numpy(), np.minimum(x.numpy(), 0.0))
    with pytest.raises(ValueError, match=r"maximum: cannot broadcast shapes \(3,\) and \(2,\)"):
        x.maximum(tg.Tensor([1.0, 2.0], device=device))


def test_comparisons_give_masks_without_gradient(device):
    a = np.array([[1.0, 2.0, 3.0]], np.float32)
    x = tg.Tensor(a, device=device, requires_grad=True)
    for got, expected in [(x > 2, a > 2), (x >= 2, a >= 2), (x < 2, a < 2), (x <= 2, a <= 2),
                          (2 < x, 2 < a), (x > tg.Tensor([[2.0], [0.0]], device=device), a > [[2], [0]])]:
        assert not got.requires_grad and got.dtype == np.bool_ and got.device == device
        np.testing.assert_array_equal(got.numpy(), expected)


@given(data=st.data())
def test_where(device, data):
    three_shapes = hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3)
    shape_c, shape_a, shape_b = data.draw(three_shapes.map(lambda s: s.input_shapes))
    condition = data.draw(hnp.arrays(np.bool_, shape_c))
    a, b = data.draw(arrays(shape_a)), data.draw(arrays(shape_b))
    np.testing.assert_array_equal(tg.where(condition, leaf(a, device), leaf(b, device)).numpy(),
                                  np.where(condition, a, b))
    assert tg.gradcheck(lambda x, y: tg.where(condition, x, y), [leaf(a, device), leaf(b, device)])


def test_where_with_a_tensor_condition_and_scalars(device):
    x = tg.Tensor([-2.0, 0.0, 3.0], device=device, requires_grad=True)
    leaky = tg.where(x > 0, x, 0.1 * x)
    leaky.sum().backward()
    np.testing.assert_allclose(leaky.numpy(), [-0.2, 0.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), [0.1, 0.1, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(tg.where(x > 0, 1.0, x).numpy(), [-2, 0, 1])
    np.testing.assert_array_equal(tg.where([True, False, True], x, 7).numpy(), [-2, 7, 3])
    with pytest.raises(ValueError, match=r"where: cannot broadcast condition shape \(2,\)"):
        tg.where([True, False], x, 0.0)


# ---- softmax, log_softmax -----------------------------------------------------------------------
def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data())
def test_softmax_and_log_softmax(device, name, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(shape))
    expected = _softmax(x, axis) if name == "softmax" else np.log(_softmax(x, axis))
    np.testing.assert_allclose(getattr(leaf(x, device), name)(axis).numpy(), expected, rtol=1e-10, atol=1e-14)
    assert tg.gradcheck(lambda t: getattr(t, name)(axis), [leaf(x, device)])


def test_softmax_is_stable_for_large_inputs(device):
    x = tg.Tensor([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]], device=device, requires_grad=True)
    p, log_p = x.softmax(), tg.nn.functional.log_softmax(x)
    np.testing.assert_allclose(p.numpy(), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(log_p.numpy(), [[0, -1000, -2000], [-np.log(3)] * 3], rtol=1e-6)
    (log_p[:, 0].sum() + p[0, 1]).backward()
    assert np.all(np.isfinite(x.grad.numpy()))


# ---- shapes: squeeze, unsqueeze, flatten, cat, stack --------------------------------------------
def test_squeeze_unsqueeze_flatten(device):
    a = np.arange(12.0).reshape(1, 3, 1, 4)
    x = leaf(a, device)
    np.testing.assert_array_equal(x.squeeze().numpy(), a.squeeze())
    np.testing.assert_array_equal(x.squeeze(2).numpy(), a.squeeze(2))
    np.testing.assert_array_equal(x.squeeze((0, -2)).numpy(), a.squeeze((0, 2)))
    for axis in (0, 2, 4, -1, -5):
        np.testing.assert_array_equal(x.unsqueeze(axis).numpy(), np.expand_dims(a, axis))
    assert x.flatten().shape == (12,) and x.flatten(1).shape == (1, 12) and x.flatten(1, 2).shape == (1, 3, 4)
    assert tg.nn.Flatten()(x).shape == (1, 12)
    assert tg.gradcheck(lambda t: t.squeeze().unsqueeze(1).flatten(0, 1) * 2.0, [leaf(a, device)])
    with pytest.raises(ValueError, match=r"squeeze: axis 1 of a tensor of shape \(1, 3, 1, 4\) has size 3"):
        x.squeeze(1)
    with pytest.raises(ValueError, match="unsqueeze: axis 5 is out of range"):
        x.unsqueeze(5)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cat_and_stack(device, axis):
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    if axis == 0:
        b = rng.standard_normal((4, 3))
    joined = tg.cat([leaf(a, device), leaf(b, device)], axis=axis)
    np.testing.assert_array_equal(joined.numpy(), np.concatenate([a, b], axis=axis))
    assert tg.gradcheck(lambda x, y: tg.cat([x, y, x], axis=axis), [leaf(a, device), leaf(b, device)])
    stacked = tg.stack([leaf(a, device), leaf(c, device)], axis=axis)
    np.testing.assert_array_equal(stacked.numpy(), np.stack([a, c], axis=axis))
    assert tg.gradcheck(lambda x, y: tg.stack([x, y], axis=axis), [leaf(a, device), leaf(c, device)])


def test_cat_and_stack_errors_name_the_shapes(device):
    x, y = tg.Tensor(np.ones((2, 3)), device=device), tg.Tensor(np.ones((2, 4)), device=device)
    with pytest.raises(ValueError, match=r"cat: shapes \(2, 3\) and \(2, 4\) differ outside axis 0"):
        tg.cat([x, y])
    with pytest.raises(ValueError, match=r"stack: every tensor needs the same shape, got \(2, 3\) and"):
        tg.stack([x, y])
    with pytest.raises(ValueError, match="needs at least one"):
        tg.cat([])
    assert tg.cat([x, y], axis=1).shape == (2, 7)


def test_cat_mixed_dtypes_promotes_and_gives_each_its_own_gradient_dtype(device):
    a = tg.Tensor([1.0], device=device, dtype=np.float32, requires_grad=True)
    b = tg.Tensor([2.0], device=device, dtype=np.float64, requires_grad=True)
    joined = tg.cat([a, b])
    assert joined.dtype == np.float64
    (joined * tg.Tensor([3.0, 4.0], device=device, dtype=np.float64)).sum().backward()
    assert a.grad.dtype == np.float32 and a.grad.item() == 3.0 and b.grad.item() == 4.0


# ---- indexing ----------------------------------------------------------------------------------
KEYS = [
    0, -1, (1, 2), (slice(None), 1), (slice(1, None), slice(None, None, 2)), (Ellipsis, 0),
    (None, 1, Ellipsis), (slice(None), None, slice(1, 3)), ([0, 2, 0],), (slice(None), [3, 0, 3]),
    ([0, 2], [1, 1]), (np.array([[0, 1], [1, 2]]), slice(None), 0), (Ellipsis, np.array([4, -1])),
    (np.array([True, False, True]),), (1, np.array([[True, False, True, False, True]] * 4)),
    (slice(None, None, -1), [1, 0]), (None, [2, 2, 2], None), ([], slice(None)),
]


@pytest.mark.parametrize("key", KEYS, ids=[repr(k) for k in KEYS])
def test_indexing_matches_numpy_and_scatters_gradients(device, key):
    a = np.random.default_rng(0).standard_normal((3, 4, 5))
    got = leaf(a, device)[key]
    np.testing.assert_array_equal(got.numpy(), a[key])
    if got.size:
        assert tg.gradcheck(lambda t: t[key] * 1.5, [leaf(a, device)])


def test_repeated_indices_add_their_gradients(device):
    x = tg.Tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    (x[[0, 0, 2, 0]] * tg.Tensor([1.0, 2.0, 3.0, 4.0], device=device)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [7.0, 0.0, 3.0])


def test_index_with_tensors_and_iteration(device):
    x = tg.Tensor(np.arange(6.0).reshape(3, 2), device=device, requires_grad=True)
    picked = x[tg.tensor([2, 0], device=device), tg.tensor([1, 1])]
    np.testing.assert_array_equal(picked.numpy(), [5.0, 1.0])
    rows = list(x)  # iteration stops at the IndexError of x[3]
    assert len(rows) == 3 and rows[2].tolist() == [4.0, 5.0]
    assert x[1, 1].shape == () and x[1, 1].item() == 3.0


@pytest.mark.parametrize("key,error,message", [
    (3, IndexError, "index 3 is out of range for axis 0 of size 3"),
    ((0, -3), IndexError, "index -3 is out of range for axis 1 of size 2"),
    ([0, 5], IndexError, "index 5 is out of range for axis 0 of size 3"),
    ((0, 0, 0), IndexError, r"too many indices \(3\) for a tensor with 2 dimensions"),
    (1.5, TypeError, "cannot index with float"),
    (np.array([0.5]), IndexError, "must hold integers or booleans, got dtype float64"),
    (np.array([True, False]), IndexError, r"boolean index of shape \(2,\) does not match"),
    ((Ellipsis, Ellipsis), IndexError, "single Ellipsis"),
    (True, TypeError, "a single bool is not an index"),
])
def test_indexing_errors_are_clear(device, key, error, message):
    x = tg.Tensor(np.ones((3, 2)), device=device)
    with pytest.raises(error, match=message):
        x[key]


def test_iteration_yields_rows_and_refuses_0d(device):
    x = tg.Tensor([[1.0, 2.0], [3.0, 4.0]], device=device, requires_grad=True)
    first, second = x
    (first * 2.0 + second).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[2.0, 2.0], [1.0, 1.0]])
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(x[0, 0])
