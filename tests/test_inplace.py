"""In-place ops: add_ and kin, +=, fill_/zero_/copy_, clamp_, pow_, neg_, and t[index] = value."""

import numpy as np
import pytest
from conftest import to_numpy

import tinygrad_gpu as tg
from tinygrad_gpu.function import Function

X = np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]], np.float32)


def tensor(values, device, **kwargs):
    return tg.Tensor(np.array(values), device=device, **kwargs)


# ---- values, memory, versions ---------------------------------------------------------------
BINARY = {"add_": np.add, "sub_": np.subtract, "mul_": np.multiply, "div_": np.divide}


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("other", [2.5, np.array([1.0, 2.0, 4.0], np.float32), X[:1] + 10])
def test_binary_in_place_values_and_memory(device, name, other):
    t = tensor(X, device)
    array, version = t.array, t._version
    operand = tensor(other, device) if isinstance(other, np.ndarray) else other
    assert getattr(t, name)(operand) is t
    assert t.array is array  # written into the same memory
    assert t._version == version + 1
    assert t.dtype == np.float32
    np.testing.assert_allclose(to_numpy(t), BINARY[name](X, other).astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("op, reference", [("+=", np.add), ("-=", np.subtract), ("*=", np.multiply),
                                           ("/=", np.divide)])
def test_augmented_assignment_is_in_place(device, op, reference):
    t = tensor(X, device)
    alias, array = t, t.array
    other = tensor([1.0, 2.0, 4.0], device)
    namespace = {"t": t, "other": other}
    exec(f"t {op} other", namespace)
    assert namespace["t"] is alias and alias.array is array
    np.testing.assert_allclose(to_numpy(alias), reference(X, [1.0, 2.0, 4.0]), rtol=1e-6)


def test_alpha_scales_the_operand(device):
    t = tensor(X, device)
    t.add_(tensor([1.0, 1.0, 1.0], device), alpha=2).sub_(1, alpha=3)
    np.testing.assert_allclose(to_numpy(t), X + 2 - 3)


def test_unary_in_place_ops(device):
    t = tensor(X, device)
    array = t.array
    t.neg_()
    np.testing.assert_allclose(to_numpy(t), -X)
    t.pow_(2)
    np.testing.assert_allclose(to_numpy(t), X ** 2)
    t.pow_(tensor([0.5, 1.0, 0.5], device))
    np.testing.assert_allclose(to_numpy(t), (X ** 2) ** np.array([0.5, 1.0, 0.5]), rtol=1e-6)
    t.clamp_(2.0, 10.0)
    np.testing.assert_allclose(to_numpy(t), np.clip((X ** 2) ** np.array([0.5, 1.0, 0.5]), 2, 10), rtol=1e-6)
    t.clip_(max=3.0)
    assert float(t.max()) == 3.0
    t.clamp_(min=2.5)
    assert float(t.min()) == 2.5
    t.fill_(7)
    np.testing.assert_array_equal(to_numpy(t), np.full(X.shape, 7, np.float32))
    t.zero_()
    np.testing.assert_array_equal(to_numpy(t), np.zeros(X.shape, np.float32))
    assert t.array is array and t._version == 8


def test_copy_broadcasts_casts_and_keeps_memory(device):
    t = tg.zeros(2, 3, device=device)
    array = t.array
    t.copy_(tensor([1.5, 2.5, 3.5], device, dtype=tg.float64))
    assert t.array is array and t.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(t), np.tile([1.5, 2.5, 3.5], (2, 1)))
    ints = tg.zeros(3, device=device, dtype=tg.int64)
    ints.copy_(tensor([1.7, -2.7, 3.2], device))  # copy_ truncates, as PyTorch's does
    np.testing.assert_array_equal(to_numpy(ints), [1, -2, 3])
    t.copy_([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(to_numpy(t), [[1, 2, 3], [4, 5, 6]])


def test_integer_in_place_ops(device):
    t = tensor([1, 5, -3], device, dtype=tg.int64)
    t.mul_(2).add_(1).clamp_(min=0)
    np.testing.assert_array_equal(to_numpy(t), [3, 11, 0])
    t.pow_(2)
    np.testing.assert_array_equal(to_numpy(t), [9, 121, 0])
    t += tensor([1, 1, 1], device, dtype=tg.int32)
    assert t.dtype == np.int64
    np.testing.assert_array_equal(to_numpy(t), [10, 122, 1])
    small = tensor([1, 2], device, dtype=tg.int32)
    small.add_(tensor([3, 4], device, dtype=tg.int64))  # int64 into int32: the same kind, allowed
    np.testing.assert_array_equal(to_numpy(small), [4, 6])


def test_version_bumps_reach_every_alias_and_view(device):
    base = tensor(X, device)
    alias, view = base.detach(), base[1]
    view.add_(1)  # a view of row 1: the base's memory changes
    np.testing.assert_allclose(to_numpy(base)[1], X[1] + 1)
    assert base._version == alias._version == view._version == 1
    row = base[0, 1]  # a 0-d view, not a copy
    row.fill_(9)
    assert to_numpy(base)[0, 1] == 9 and alias._version == 2
    base.data[0] = 0  # through .data, an alias too
    assert view._version == 3


def test_changing_a_saved_input_in_place_breaks_backward(device):
    w = tensor([1.0, 2.0, 3.0], device, requires_grad=True)
    a = tensor([4.0, 5.0, 6.0], device)
    loss = (w * a).sum()  # Mul saved a
    a[1:].mul_(2)  # through a view of a
    with pytest.raises(RuntimeError, match="changed in place"):
        loss.backward()


@pytest.mark.parametrize("method", ["exp", "sigmoid", "tanh", "relu", "sqrt"])
def test_changing_a_saved_output_in_place_breaks_backward(device, method):
    x = tensor([0.5, 1.0, 2.0], device, requires_grad=True)
    y = getattr(x, method)()
    y.mul_(2)
    with pytest.raises(RuntimeError, match=f"output of {type(y.grad_fn.inputs[0].grad_fn).__name__}"):
        y.sum().backward()


def test_changing_a_saved_output_through_a_view_or_under_no_grad_breaks_backward(device):
    x = tensor([0.5, 1.0, 2.0], device, requires_grad=True)
    y = x.exp()
    with tg.no_grad():
        y[0] = 0
    with pytest.raises(RuntimeError, match="output of Exp"):
        y.sum().backward()
    m = tensor(X, device, requires_grad=True).max(axis=1)
    with tg.no_grad():
        m.zero_()
    with pytest.raises(RuntimeError, match="output of Max"):
        m.sum().backward()


def test_a_user_function_that_saves_its_output_is_protected(device):
    class Square(Function):
        def forward(self, x):
            self.x, self.y = x, x * x
            return self.y

        def backward(self, gy):
            return (2 * self.x * gy,)

    x = tensor([1.0, 2.0], device, requires_grad=True)
    y = Square.apply(x)
    with tg.no_grad():
        y.add_(1)
    with pytest.raises(RuntimeError, match="output of Square"):
        y.sum().backward()


# ---- leaves and the manual update ------------------------------------------------------------
def test_in_place_on_a_leaf_that_requires_grad_raises(device):
    p = tensor(X, device, requires_grad=True)
    for change in (lambda: p.add_(1), lambda: p.zero_(), lambda: p.__setitem__(0, 1.0),
                   lambda: p.__imul__(2), lambda: p[0].mul_(2), lambda: p.T.clamp_(0, 1)):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            change()
    np.testing.assert_array_equal(to_numpy(p), X)
    assert p._version == 0


def test_manual_update_under_no_grad_keeps_the_leaf(device):
    p = tensor([1.0, -2.0, 3.0], device, requires_grad=True)
    leaf, array = p, p.array
    for _ in range(3):
        loss = (p * p).sum()
        loss.backward()
        with tg.no_grad():
            p -= 0.25 * p.grad
            p.grad.zero_()
    assert p is leaf and p.array is array
    assert p.requires_grad and p.is_leaf and p.grad_fn is None
    np.testing.assert_allclose(to_numpy(p), np.array([1.0, -2.0, 3.0]) * 0.5 ** 3)


# ---- recorded in place on graph tensors, against PyTorch --------------------------------------
def _cases(lib):
    flip = (lambda t: t.flip(0)) if lib.__name__ == "torch" else (lambda t: t[::-1])
    return {
        "add": lambda x: (x * 2).add_(1),
        "mul_by_tensor": lambda x: (x * 1).mul_(x[0]),
        "div_by_tensor": lambda x: (x + 10).div_(x[1] + 10),
        "pow": lambda x: (x * 1).pow_(2),
        "clamp": lambda x: (x * 1).clamp_(-3, 2),
        "neg_then_sub": lambda x: (x * 3).neg_().sub_(x),
        "fill_from_tensor": lambda x: (x * 1).fill_(x[1, 1]),
        "zero_then_add": lambda x: (x * 1).zero_().add_(x * x),
        "copy": lambda x: (x * 1).copy_(flip(x) * 2),
        "float64_operand": lambda x: (x * 1).add_(x.double() * 3),
        "into_a_fresh_tensor": lambda x: lib.zeros(2, 3, dtype=x.dtype, device=x.device).add_(x),
        "row_of_a_view": lambda x: _returns_base(x * 2, lambda y: y[0].mul_(3)),
        "view_of_a_view": lambda x: _returns_base(x * 2, lambda y: y[1][1:].mul_(x[0, :2])),
        "reshape_view": lambda x: _returns_base(x * 2, lambda y: y.reshape(3, 2)[1:].pow_(2)),
        "transpose_view": lambda x: _returns_base(x * 2, lambda y: y.T[0].clamp_(0, 3)),
        "setitem_int": lambda x: _returns_base(x * 1, lambda y: y.__setitem__((0, 1), x[1, 2] * 3)),
        "setitem_row_broadcast": lambda x: _returns_base(x * 1, lambda y: y.__setitem__(1, x[0, :1])),
        "setitem_mask": lambda x: _returns_base(x * 1, lambda y: y.__setitem__(y > 2, 0.0)),
        "setitem_mask_tensor": lambda x: _returns_base(x * 1, lambda y: y.__setitem__(y < 0, x[0, 0])),
        "setitem_row_mask_row": lambda x: _returns_base(
            x * 1, lambda y: y.__setitem__(y[:, 0] > 0, x[1] * 2)),
        "setitem_row_mask_rows": lambda x: _returns_base(
            x * 1, lambda y: y.__setitem__(y[:, 1] > -10, x.flip(0) if lib.__name__ == "torch" else x[::-1])),
        "setitem_index_arrays": lambda x: _returns_base(
            x * 1, lambda y: y.__setitem__(([0, 1], [2, 0]), x[0, :2] * 10)),
        "setitem_slice_none_ellipsis": lambda x: _returns_base(
            x * 1, lambda y: y.__setitem__((..., None, slice(1, None)), x[0, 1:] * 2)),
    }


def _returns_base(base, change):
    change(base)
    return base


@pytest.mark.parametrize("case", sorted(_cases(tg)))
def test_recorded_in_place_matches_torch(device, case):
    torch = pytest.importorskip("torch")
    x = tensor(X, device, requires_grad=True)
    y = _cases(tg)[case](x)
    (y * y).sum().backward()
    xt = torch.tensor(X, requires_grad=True)
    yt = _cases(torch)[case](xt)
    (yt * yt).sum().backward()
    np.testing.assert_allclose(to_numpy(y), yt.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(x.grad), xt.grad.numpy(), rtol=1e-5)


def test_recorded_in_place_keeps_memory_and_rebases_the_tensor(device):
    x = tensor([1.0, 2.0, 3.0], device, requires_grad=True)
    y = x * 2
    array, node = y.array, y.grad_fn
    y.add_(1)
    assert y.array is array and y.grad_fn is not node and not y.is_leaf
    y.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [2.0, 2.0, 2.0])
    fresh = tg.zeros(3, device=device)
    fresh.add_(x)
    assert fresh.requires_grad and not fresh.is_leaf


def test_setitem_on_a_non_leaf_passes_the_gradient_around_the_written_part(device):
    x = tensor([1.0, 2.0, 3.0, 4.0], device, requires_grad=True)
    y = x * 1
    y[0] = 5
    y.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(to_numpy(y), [5.0, 2.0, 3.0, 4.0])


def test_value_written_by_setitem_gets_its_gradient_summed_over_broadcasting(device):
    v = tensor([1.0, 2.0, 3.0], device, requires_grad=True)
    y = tg.zeros(4, 3, device=device)
    y[1:] = v
    (y * tensor([1.0, 2.0, 3.0], device)).sum().backward()
    np.testing.assert_array_equal(to_numpy(v.grad), [3.0, 6.0, 9.0])


# ---- index assignment: every key kind --------------------------------------------------------
KEYS = {
    "int": (1, 0.5),
    "negative_int": (-1, 7.0),
    "slice": (np.s_[:, 1:], np.float32([8.0, 9.0])),
    "step_slice": (np.s_[:, ::2], 1.0),
    "none_and_ellipsis": (np.s_[None, ..., 2], np.float32([[3.0, 4.0]])),
    "full_int": (np.s_[1, 2], 42.0),
    "int_list": ([1, 0], np.float32([[1, 2, 3], [4, 5, 6]])),
    "int_array_pair": ((np.array([0, 1]), np.array([2, 0])), np.float32([10, 20])),
    "bool_rows": (np.array([False, True]), 3.0),
    "bool_rows_vector": (np.array([True, False]), np.float32([1, 2, 3])),
    "bool_mask": (X > 0, 0.0),
    "bool_mask_values": (X < 0, np.float32([7, 8, 9])),
    "bool_rows_one_row": (np.array([True, True]), np.float32([[1, 2, 3]])),
    "bool_rows_each_row": (np.array([True, True]), np.float32([[1, 2, 3], [4, 5, 6]])),
    "bool_rows_column": (np.array([True, True]), np.float32([[1], [2]])),
}


@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_setitem_every_index_kind_matches_numpy(device, kind, as_tensor):
    key, value = KEYS[kind]
    expected = X.copy()
    expected[key] = value
    t = tensor(X, device)
    array = t.array
    if as_tensor:
        wrap = lambda k: tg.Tensor(k, device=device, dtype=tg.int64 if k.dtype.kind == "i" else tg.bool)  # noqa: E731
        key = tuple(wrap(k) if isinstance(k, np.ndarray) else k for k in key) if isinstance(key, tuple) else (
            wrap(key) if isinstance(key, np.ndarray) else key)
        value = tensor(value, device) if isinstance(value, np.ndarray) else value
    t[key] = value
    assert t.array is array and t._version == 1
    np.testing.assert_array_equal(to_numpy(t), expected)


def test_mask_from_the_tensor_itself(device):
    t = tensor(X, device)
    t[t > 0] = 0
    np.testing.assert_array_equal(to_numpy(t), np.minimum(X, 0))
    t[t < -4] = tensor(1.0, device)  # a one-element tensor as the value
    np.testing.assert_array_equal(to_numpy(t), np.where(X < -4, 1, np.minimum(X, 0)))


def test_setitem_casts_to_the_tensor_dtype(device):
    t = tg.zeros(3, device=device, dtype=tg.int64)
    t[0] = 2.9  # truncated, as PyTorch's index assignment does
    t[1:] = tensor([1.5, -1.5], device)
    np.testing.assert_array_equal(to_numpy(t), [2, 1, -1])
    b = tg.zeros(2, device=device, dtype=tg.bool)
    b[1] = 1
    np.testing.assert_array_equal(to_numpy(b), [False, True])


def test_setitem_reads_overlapping_values_before_writing(device):
    t = tensor([1.0, 2.0, 3.0, 4.0], device)
    t[1:] = t[:-1]
    np.testing.assert_array_equal(to_numpy(t), [1.0, 1.0, 2.0, 3.0])
    t.add_(t[::-1])
    np.testing.assert_array_equal(to_numpy(t), [4.0, 3.0, 3.0, 4.0])


# ---- errors, all or nothing ------------------------------------------------------------------
@pytest.mark.parametrize("change", [
    lambda t: t.add_(0.5), lambda t: t.mul_(tg.Tensor([1.5, 2.0, 1.0])), lambda t: t.div_(2),
    lambda t: t.pow_(0.5), lambda t: t.clamp_(0.5), lambda t: t.__itruediv__(2)])
def test_a_float_result_cannot_be_written_into_an_int_tensor(change):
    t = tg.Tensor([1, 2, 3], dtype=tg.int64)
    with pytest.raises(RuntimeError, match="can't be cast") as error:
        change(t)
    assert isinstance(error.value, TypeError)
    np.testing.assert_array_equal(t.numpy(), [1, 2, 3])
    assert t._version == 0


def test_float32_tensor_takes_a_float64_operand_and_stays_float32(device):
    t = tensor([1.0, 2.0], device, dtype=tg.float32)
    t.add_(tensor([0.5, 0.25], device, dtype=tg.float64))
    assert t.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(t), [1.5, 2.25])


@pytest.mark.parametrize("change", [
    lambda t: t.add_(tg.ones(2, 3)), lambda t: t.mul_(tg.ones(4)), lambda t: t.copy_(tg.ones(2)),
    lambda t: t.pow_(tg.ones(1, 3)), lambda t: t.fill_(tg.ones(3)),
    lambda t: t.__setitem__(slice(0, 2), tg.ones(3)), lambda t: t.__setitem__(np.array([True, False, True]),
                                                                                tg.ones(3))])
def test_an_operand_that_does_not_fit_the_tensor_raises(change):
    t = tg.Tensor([1.0, 2.0, 3.0])
    with pytest.raises((ValueError, IndexError)) as error:
        change(t)
    assert str(error.value)
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0, 3.0])
    assert t._version == 0


def test_shape_error_names_both_shapes():
    with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(3,\)"):
        tg.zeros(3).add_(tg.ones(2, 3))


@pytest.mark.parametrize("change", [lambda t: t.sub_(True), lambda t: t.neg_(), lambda t: t.clamp_(0, 1),
                                    lambda t: t.add_(1 + 2j), lambda t: t.__setitem__(0, "a"),
                                    lambda t: t.pow_("2"), lambda t: t.add_(1, alpha="2")])
def test_bad_operands_raise_type_errors(change):
    t = tg.Tensor([True, False], dtype=tg.bool)
    with pytest.raises((TypeError, ValueError)):
        change(t)
    np.testing.assert_array_equal(t.numpy(), [True, False])


def test_clamp_bounds_are_checked():
    t = tg.Tensor([1.0, 2.0])
    for bounds in ((None, None), (2.0, 1.0), (float("nan"), 1.0)):
        with pytest.raises(ValueError):
            t.clamp_(*bounds)
    assert t._version == 0


def test_read_only_tensors_refuse_in_place_ops(device):
    t = tensor([1.0, 2.0], device).expand(3, 2)
    with pytest.raises(ValueError, match="read-only"):
        t.add_(1)
    with pytest.raises(ValueError, match="read-only"):
        t[0] = 1.0


def test_an_operand_on_another_device_raises():
    if not tg.cuda_available():
        pytest.skip("needs a GPU: a second device")
    t, other = tg.zeros(3, device="cpu"), tg.ones(3, device="cuda")
    for change in (lambda: t.add_(other), lambda: t.__setitem__(slice(None), other),
                   lambda: t.fill_(other[0])):
        with pytest.raises(tg.DeviceError, match="cuda"):
            change()
    assert t._version == 0
    t.copy_(other)  # copy_ moves across devices, as PyTorch's does
    np.testing.assert_array_equal(t.numpy(), [1.0, 1.0, 1.0])


def test_view_of_a_graph_tensor_whose_graph_was_freed_raises(device):
    x = tensor([1.0, 2.0], device, requires_grad=True)
    y = x * 2
    v = y[0]
    v.sum().backward()
    with pytest.raises(RuntimeError, match="freed"):
        v.add_(1)


def test_in_place_ops_inside_fuse_run_eagerly(device):
    def step(a):
        y = a * 2
        y.add_(1)
        return y

    a = tensor([1.0, 2.0], device, dtype=tg.float64, requires_grad=True)
    out = tg.fuse(step)(a)
    np.testing.assert_array_equal(to_numpy(out), [3.0, 5.0])
    out.sum().backward()
    np.testing.assert_array_equal(to_numpy(a.grad), [2.0, 2.0])


def test_writing_a_graph_value_into_an_unrecorded_view_raises(device):
    buffer = tg.zeros(2, 3, device=device)
    w = tensor([1.0, 2.0, 3.0], device, requires_grad=True)
    with pytest.raises(RuntimeError, match="assign through the tensor itself"):
        buffer[0].copy_(w)
    assert buffer._version == 0
    buffer[0] = w  # through the tensor itself: recorded
    buffer.sum().backward()
    np.testing.assert_array_equal(to_numpy(w.grad), [1.0, 1.0, 1.0])


def test_numbers_must_fit_an_integer_tensor_and_are_cast_into_a_float_one(device):
    t = tg.Tensor([1, 2], device=device, dtype=tg.int32)
    for change in (lambda: t.add_(2 ** 40), lambda: t.fill_(2 ** 31), lambda: t.__setitem__(0, -2 ** 70)):
        with pytest.raises(ValueError, match="does not fit"):
            change()
    assert t._version == 0
    f = tg.zeros(2, device=device)
    f.fill_(1e300)  # beyond float32: inf, as a cast gives
    f[0] = 2 ** 70
    np.testing.assert_array_equal(to_numpy(f), np.float32([2.0 ** 70, np.inf]))
    f.add_(tensor([1e300, 0.0], device, dtype=tg.float64))
    assert np.isinf(to_numpy(f)[0])


def test_recorded_in_place_gradients_pass_gradcheck(device):
    def f(x, v):
        y = x * 1
        y[1:] = v * 2  # broadcast over the rows
        y.mul_(x)
        y[:, 0].add_(v[0] * v[1])  # through a view
        y.pow_(2)
        return y

    rng = np.random.default_rng(0)
    x = tg.Tensor(rng.uniform(0.5, 1.5, (3, 2)), device=device, dtype=tg.float64, requires_grad=True)
    v = tg.Tensor(rng.uniform(0.5, 1.5, (2,)), device=device, dtype=tg.float64, requires_grad=True)
    assert tg.gradcheck(f, [x, v])


def test_changing_a_fused_chain_output_in_place_never_gives_a_wrong_gradient(device):
    fused = tg.fuse(lambda a, b: (a * b).sigmoid())
    a = tensor([0.5, 1.0], device, dtype=tg.float64, requires_grad=True)
    b = tensor([2.0, -1.0], device, dtype=tg.float64)
    out = fused(a, b)
    expected = (a * b).sigmoid()
    expected.sum().backward()
    right = to_numpy(a.grad)
    a.grad = None
    with tg.no_grad():
        out.mul_(0)
    try:  # either refused (the output was saved) or right (backward recomputes from the inputs)
        out.sum().backward()
    except RuntimeError as error:
        assert "changed in place" in str(error)
    else:
        np.testing.assert_allclose(to_numpy(a.grad), right)


def test_zero_dimensional_masks(device):
    scalar = tensor(2.0, device)
    scalar[scalar > 0] = 5
    assert scalar.item() == 5
    t = tensor(X, device)
    t[tensor(False, device, dtype=tg.bool)] = 0  # selects nothing
    t[tensor(True, device, dtype=tg.bool)] = tensor([1.0, 2.0, 3.0], device)  # selects everything
    np.testing.assert_array_equal(to_numpy(t), np.tile([1.0, 2.0, 3.0], (2, 1)))
