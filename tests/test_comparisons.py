"""Comparisons give bool tensors; masks select; == is elementwise; truth values; max(dim) and argmax."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpu as tg


def leaf(values, device, dtype=np.float32):
    return tg.Tensor(np.asarray(values, dtype), device=device, requires_grad=True)


# ---- comparisons and masks -----------------------------------------------------------------
def test_comparisons_are_bool_tensors_on_the_device(device):
    x = leaf([-1.0, 2.0, -3.0, 4.0], device)
    a = x.numpy()
    cases = [(x > 0, a > 0), (x >= 2, a >= 2), (x < 0, a < 0), (x <= -1, a <= -1), (x == 2, a == 2),
             (x != 2, a != 2), (x.gt(0), a > 0), (x.ge(2), a >= 2), (x.lt(0), a < 0), (x.le(-1), a <= -1),
             (x.eq(x), a == a), (x.ne(4), a != 4), (tg.eq(x, 4.0), a == 4), (tg.lt(x, 0), a < 0),
             (0 < x, 0 < a), (2 == x, 2 == a)]
    for got, want in cases:
        assert got.dtype == np.bool_ and got.device == device and not got.requires_grad
        np.testing.assert_array_equal(got.numpy(), want)


def test_mask_selects_like_numpy_and_scatters_the_gradient_back(device):
    x = leaf([-1.0, 2.0, -3.0, 4.0], device)
    picked = x[x > 0]
    np.testing.assert_array_equal(picked.numpy(), [2.0, 4.0])  # not x[[0, 1, 0, 1]]
    (picked * tg.Tensor([10.0, 20.0], device=device)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 10.0, 0.0, 20.0])


def test_mask_mixed_with_other_index_items_matches_torch(device):
    torch = pytest.importorskip("torch")
    values = np.arange(12.0).reshape(3, 4)
    rows, columns = np.array([True, False, True]), [True, False, False, True]
    for key in ((rows, slice(1, None)), (rows, 2), (slice(None), columns), (Ellipsis, columns),
                (rows, [0, 2]), (np.ones((3, 4), bool),)):
        x = leaf(values, device)
        t = torch.tensor(values, requires_grad=True)
        ours = x[tuple(tg.tensor(k, device=device) if isinstance(k, (np.ndarray, list)) else k for k in key)]
        theirs = t[tuple(torch.tensor(k) if isinstance(k, (np.ndarray, list)) else k for k in key)]
        np.testing.assert_array_equal(ours.numpy(), theirs.detach().numpy())
        ours.sum().backward()
        theirs.sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())


@given(data=st.data())
def test_masks_of_any_shape_select_and_scatter_like_numpy(device, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3))
    values = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-4, 4)))
    covered = data.draw(st.integers(1, len(shape)))  # the mask covers the leading dimensions
    mask = data.draw(hnp.arrays(np.bool_, shape[:covered]))
    x = tg.Tensor(values, device=device, requires_grad=True)
    picked = x[tg.tensor(mask, device=device)]
    np.testing.assert_array_equal(picked.numpy(), values[mask])
    weights = np.arange(picked.size, dtype=np.float64).reshape(picked.shape)
    (picked * tg.Tensor(weights, device=device)).sum().backward()
    expected = np.zeros_like(values)
    expected[mask] = weights
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_float_index_is_an_index_error_naming_the_dtype(device):
    x = tg.Tensor([1.0, 2.0, 3.0], device=device)
    float_mask = tg.Tensor([0.0, 1.0, 1.0], device=device)
    with pytest.raises(IndexError, match="got dtype float32"):
        x[float_mask]
    with pytest.raises(IndexError, match="got dtype float64"):
        x[np.array([0.0, 1.0])]
    with pytest.raises(IndexError, match="got dtype float64"):
        x[[0.0, 1.0]]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_tensors_and_arrays_index_as_integer_arrays(device, dtype):
    x = leaf(np.arange(6.0).reshape(3, 2), device)
    rows = tg.tensor(np.array([2, 0, 2], dtype), device=device)
    picked = x[rows]
    assert picked.shape == (3, 2) and picked.numpy()[:, 0].tolist() == [4.0, 0.0, 4.0]
    picked.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    np.testing.assert_array_equal(x[np.array([1], dtype)].numpy(), [[2.0, 3.0]])


@given(data=st.data())
def test_comparisons_match_numpy_under_broadcasting(device, data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    a = data.draw(hnp.arrays(np.float32, shapes.input_shapes[0], elements=st.sampled_from([-1.0, 0.0, 2.0])))
    b = data.draw(hnp.arrays(np.int64, shapes.input_shapes[1], elements=st.integers(-1, 2)))
    ta, tb = tg.tensor(a, device=device), tg.tensor(b, device=device)
    for got, want in [(ta < tb, a < b), (ta == tb, a == b), (tb >= ta, b >= a), (ta != tb, a != b)]:
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got.numpy(), want)


def test_comparing_with_an_unrelated_object_is_not_equal(device):
    x = tg.Tensor([1.0], device=device)
    assert (x == None) is False and (x != "a") is True  # noqa: E711


# ---- == and hashing ------------------------------------------------------------------------
def test_equality_is_elementwise_and_hashing_stays_by_identity(device):
    x, y = tg.Tensor([1.0, 2.0], device=device), tg.Tensor([1.0, 2.0], device=device)
    assert (x == y).tolist() == [True, True] and (x != y).tolist() == [False, False]
    seen = {x: "x", y: "y"}
    assert len({x, y}) == 2 and seen[x] == "x" and seen[y] == "y"


def test_engine_and_optimizer_keep_working_with_elementwise_equality(device):
    w = leaf([1.0, 2.0], device)
    loss = (w * w + w).sum() + (w * 3.0).sum()  # w reached along several paths: dict keys by identity
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * w.numpy() + 4.0)
    opt = tg.optim.SGD([w, leaf([3.0, 4.0], device)], lr=0.1)
    opt.step()
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.1 * 6.0, 2.0 - 0.1 * 8.0], rtol=1e-6)
    model = tg.nn.Sequential(tg.nn.Linear(2, 2), tg.nn.ReLU())
    assert len(list(model.parameters())) == 2


# ---- truth values --------------------------------------------------------------------------
def test_one_element_tensors_convert_to_python_values(device):
    assert bool(tg.Tensor([0.9], device=device) < 0.5) is False
    loss = tg.Tensor(1e-4, device=device)
    assert (loss < 1e-3) and not (loss > 1e-3)
    assert float(tg.Tensor([[2.5]], device=device)) == 2.5 and int(tg.Tensor(3.7, device=device)) == 3
    index = tg.tensor(2, device=device)
    assert [10, 20, 30][index] == 30 and index.item() == 2 and isinstance(index.item(), int)
    assert isinstance((index > 1).item(), bool)
    with pytest.raises(TypeError, match="only integer tensors can be used as an index"):
        [1, 2][tg.Tensor(1.0, device=device)]


def test_truth_value_of_many_elements_is_ambiguous(device):
    x = tg.Tensor([0.9, 0.1], device=device)
    with pytest.raises(RuntimeError, match="truth value of a tensor with 2 elements.*ambiguous"):
        bool(x < 0.5)
    with pytest.raises(RuntimeError, match="ambiguous"):
        float(x)
    with pytest.raises(RuntimeError, match="ambiguous"):
        if x == x:
            pass
    assert (x < 0.5).any() and not (x < 0.5).all()


# ---- max / min with a dim, argmax / argmin -------------------------------------------------
def test_max_with_a_dim_returns_values_and_indices(device):
    logits = leaf([[0.1, 0.9, 0.3], [0.8, 0.2, 0.8]], device)
    _, pred = logits.max(1)
    assert pred.dtype == np.int64 and pred.tolist() == [1, 0]
    values, indices = logits.max(dim=1, keepdim=True)
    assert values.shape == (2, 1) and indices.tolist() == [[1], [0]]
    result = logits.min(0)
    assert result.values.tolist() == pytest.approx([0.1, 0.2, 0.3]) and result.indices.tolist() == [0, 1, 0]
    # NumPy's keyword (and a tuple of axes) keeps returning the values only
    assert logits.max(axis=1).tolist() == pytest.approx([0.9, 0.8])
    assert logits.max(axis=(0, 1), keepdims=True).shape == (1, 1)
    assert logits.max().shape == () and logits.min().item() == pytest.approx(0.1)


def test_max_and_min_gradients_match_torch(device):
    torch = pytest.importorskip("torch")
    values = np.array([[1.0, 3.0, 3.0], [2.0, -1.0, 2.0]])
    for call in (lambda t: t.max(1)[0], lambda t: t.min(dim=0).values, lambda t: t.max(), lambda t: t.min(),
                 lambda t: t.max(1, keepdim=True).values * 2):
        x, t = leaf(values, device, np.float64), torch.tensor(values, requires_grad=True)
        ours, theirs = call(x), call(t)
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy())
        ours.sum().backward()
        theirs.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy())


def test_argmax_and_argmin_match_torch(device):
    torch = pytest.importorskip("torch")
    values = np.array([[1.0, 3.0, 3.0], [7.0, -1.0, 2.0]], np.float32)
    x, t = tg.Tensor(values, device=device), torch.tensor(values)
    for dim in (None, 0, 1, -1):
        for keepdim in (False, True):
            for name in ("argmax", "argmin"):
                ours = getattr(x, name)(dim=dim, keepdim=keepdim)
                theirs = getattr(t, name)(dim=dim, keepdim=keepdim)
                assert ours.dtype == np.int64 and ours.device == device
                np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    ints = tg.tensor([[3, 9], [9, 1]], device=device)
    assert ints.argmax(1).tolist() == [1, 0] and ints.max(1).values.tolist() == [9, 9]
    assert ints.max().item() == 9 and tg.tensor([True, False], device=device).argmin().item() == 1
    with pytest.raises(ValueError, match="argmax over an empty axis"):
        tg.zeros(0, 3, device=device).argmax(0)


def test_max_of_another_tensor_is_the_elementwise_maximum(device):
    x, y = tg.Tensor([1.0, 5.0], device=device), tg.Tensor([3.0, 2.0], device=device)
    assert x.max(y).tolist() == [3.0, 5.0] and x.min(y).tolist() == [1.0, 2.0]
