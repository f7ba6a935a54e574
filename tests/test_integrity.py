"""Autograd integrity: versions on the storage, gradients that never alias, a checked Function
contract, checked .grad assignment, NaN-aware max/maximum/minimum, and all-or-nothing state loads."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_gpu as tg
from tinygrad_gpu.backend import array_module
from tinygrad_gpu.function import in_place

IN_PLACE = r"was changed in place after .* it is now at version \d+, the graph recorded version \d+"


def _shares(a, b):
    """True when two tensors' (or arrays') memory may overlap."""
    a, b = (v.array if isinstance(v, tg.Tensor) else v for v in (a, b))
    if type(a) is not type(b):
        return False
    return bool(array_module("cpu" if isinstance(a, np.ndarray) else "cuda").may_share_memory(a, b))


# ---- versions belong to the storage -----------------------------------------------------------
@pytest.mark.parametrize("fill", [
    lambda t: tg.nn.init.constant_(t, 5.0), lambda t: tg.nn.init.normal_(t), lambda t: tg.nn.init.uniform_(t),
    lambda t: tg.nn.init.zeros_(t), lambda t: tg.nn.init.ones_(t),
    lambda t: tg.nn.init.xavier_uniform_(t.reshape(1, 2)),
    lambda t: tg.nn.init.kaiming_normal_(t.reshape(2, 1))],
    ids=["constant_", "normal_", "uniform_", "zeros_", "ones_", "xavier_uniform_", "kaiming_normal_"])
def test_nn_init_after_forward_is_detected(device, fill):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    y = (w * w).sum()
    with tg.no_grad():
        fill(w)
    with pytest.raises(RuntimeError, match=IN_PLACE):
        y.backward()


def test_optimizer_stepping_a_detached_alias_is_detected(device):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    y = (w * w).sum()
    alias = w.detach().requires_grad_()
    alias.grad = tg.Tensor([1.0, 1.0], device=device)
    tg.optim.SGD([alias], lr=0.1).step()
    assert w._version == alias._version == 1
    with pytest.raises(RuntimeError, match=IN_PLACE):
        y.backward()


@pytest.mark.parametrize("alias", [
    lambda w: w.detach(), lambda w: w.data, lambda w: tg.Tensor(w), lambda w: tg.nn.Parameter(w),
    lambda w: w.reshape(6), lambda w: w.T, lambda w: w.transpose(1, 0), lambda w: w[1:, ::2],
    lambda w: w[0], lambda w: w.detach().reshape(3, 2).T],
    ids=["detach", "data", "Tensor", "Parameter", "reshape", "T", "transpose", "slice", "row", "chain"])
def test_a_change_through_any_alias_or_view_is_seen_by_the_graph(device, alias):
    w = tg.Tensor(np.arange(6.0).reshape(2, 3), device=device, requires_grad=True)
    loss = (w * w).sum()
    view = alias(w)
    assert _shares(view, w)
    with tg.no_grad():
        tg.nn.init.constant_(view, 7.0)
    assert view._version == w._version == 1
    with pytest.raises(RuntimeError, match=IN_PLACE):
        loss.backward()


def test_a_copy_has_its_own_version(device):
    w = tg.Tensor([[1.0, 2.0], [3.0, 4.0]], device=device, requires_grad=True)
    loss = (w * w).sum()
    copy = w[np.array([0, 1])]  # advanced indexing copies
    tg.nn.init.constant_(copy.detach(), 0.0)
    assert w._version == 0
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * np.array([[1, 2], [3, 4]]))


def test_ops_never_bump_versions_and_backward_skips_the_check(device):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    before = in_place.changes
    loss = (w.reshape(2, 1).T * w.detach()).sum()
    loss.backward()
    assert in_place.changes == before and w._version == 0


def test_data_is_a_detached_alias_and_assigning_it_checks_and_replaces(device):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    d = w.data
    assert d.is_leaf and not d.requires_grad and _shares(d, w)
    loss = (w * w).sum()
    w.data = tg.Tensor([3.0, 4.0], device=device)
    np.testing.assert_allclose(w.numpy(), [3, 4])
    assert w.requires_grad and w._version >= 1
    with pytest.raises(RuntimeError, match=IN_PLACE):
        loss.backward()
    with pytest.raises(ValueError, match=r"shape \(2,\).*shape \(3,\)"):
        w.data = tg.Tensor([1.0, 2.0, 3.0], device=device)
    with pytest.raises(TypeError, match="float32.*float64"):
        w.data = tg.Tensor([1.0, 2.0], device=device, dtype=np.float64)
    with pytest.raises(TypeError, match="expected a Tensor"):
        w.data = np.array([1.0, 2.0], np.float32)
    np.testing.assert_allclose(w.numpy(), [3, 4])  # refused assignments changed nothing


def test_init_and_load_refuse_read_only_tensors(device):
    frozen_view = tg.Tensor([1.0, 2.0], device=device).expand(3, 2).detach()
    with pytest.raises(ValueError, match="constant_.*read-only"):
        tg.nn.init.constant_(frozen_view, 0.0)
    assert frozen_view._version == 0


# ---- gradients never alias --------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: (a + b).reshape(3, 2).T,
    lambda a, b: a + b + a, lambda a, b: tg.cat([a, b]),
    lambda a, b: tg.where(tg.Tensor(np.eye(2, 3), device=a.device), a, b),
    lambda a, b: a.maximum(b) + b.expand(2, 2, 3), lambda a, b: a * 1.0 + b[None],
    lambda a, b: a.reshape(3, 2) + b.reshape(3, 2)],
    ids=["add", "sub", "reshape-transpose", "add3", "cat", "where", "expand", "index", "views"])
def test_sibling_gradients_never_share_memory(device, build):
    a = tg.Tensor(np.arange(6.0).reshape(2, 3), device=device, requires_grad=True)
    b = tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    out = build(a, b)
    # Mul's gradient is a fresh array, which Add and the views pass on as it is
    (out * tg.Tensor(np.arange(out.size).reshape(out.shape), device=device)).sum().backward()
    assert not _shares(a.grad, b.grad)
    assert not _shares(a.grad, a) and not _shares(b.grad, b)


_STEPS = [
    lambda u, v: u + v, lambda u, v: u - v, lambda u, v: u * 1.0 + v, lambda u, v: u.reshape(3, 2).T + v,
    lambda u, v: u.T.T, lambda u, v: (u + v)[:, :], lambda u, v: -u, lambda u, v: u.maximum(v),
    lambda u, v: tg.cat([u, v])[:2], lambda u, v: u + v.sum(axis=0, keepdims=True)]


@given(st.lists(st.tuples(st.integers(0, len(_STEPS) - 1), st.integers(0, 5), st.integers(0, 5)),
                min_size=1, max_size=6), st.booleans())
def test_no_two_gradients_share_memory_in_random_graphs(device, steps, seed_given):
    leaves = [tg.Tensor(np.arange(6.0).reshape(2, 3) + i, device=device, requires_grad=True)
              for i in range(3)]
    values = list(leaves)
    for step, i, j in steps:
        values.append(_STEPS[step](values[i % len(values)], values[j % len(values)]))
    out = values[-1]
    seed = tg.Tensor(np.ones(out.shape), device=device) if seed_given else None
    if seed is None:
        out = out.sum()
    out.backward(seed)
    grads = [t.grad for t in leaves if t.grad is not None]
    others = values + ([seed] if seed is not None else [])
    for k, g in enumerate(grads):
        assert not any(_shares(g, h) for h in grads[k + 1:])
        assert not any(_shares(g, t) for t in others)


def test_gradients_never_alias_the_callers_seed(device):
    a = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    b = tg.Tensor([3.0, 4.0], device=device, requires_grad=True)
    g = tg.Tensor([1.0, 1.0], device=device)
    (a + b).backward(g)
    assert not _shares(a.grad, g) and not _shares(b.grad, g) and not _shares(a.grad, b.grad)
    g.array[...] = 5  # the caller reuses its buffer
    np.testing.assert_allclose(a.grad.numpy(), [1, 1])
    if device == "cpu":  # a NumPy array as the seed, passed straight to a leaf's gradient
        host = np.ones(2, np.float32)
        c = tg.Tensor([1.0, 2.0], device="cpu", requires_grad=True)
        (c + 0.0).backward(host)
        assert not np.shares_memory(c.grad.array, host)


def test_retained_and_leaf_gradients_never_alias(device):
    x = tg.Tensor([1.0, 2.0, 3.0, 4.0], device=device, requires_grad=True)
    y = x.reshape(2, 2)
    y.retain_grad()
    (y * 2).sum().backward()
    assert not _shares(x.grad, y.grad)


def test_a_gradient_is_never_a_user_functions_saved_array(device):
    class Identity(tg.Function):
        def forward(self, x):
            self.ones = array_module(device).ones(x.shape, x.dtype)
            return x * 1

        def backward(self, gy):
            return (self.ones,)  # a saved array, returned as it is

    class PassThrough(tg.Function):
        def forward(self, x):
            return x * 1

        def backward(self, gy):
            return (gy,)

    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    node = Identity.apply(x)
    saved = node.grad_fn.ones
    node.sum().backward(retain_graph=True)
    assert not _shares(x.grad, saved)
    z = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    g = tg.Tensor([3.0, 4.0], device=device)
    PassThrough.apply(z).backward(g)
    assert not _shares(z.grad, g)


# ---- the Function contract is checked ---------------------------------------------------------
def _custom(backward, forward=None):
    """A user Function of one (2, 3) input with the given backward (and forward)."""
    class Custom(tg.Function):
        def forward(self, x):
            self.xp = array_module("cpu" if isinstance(x, np.ndarray) else "cuda")
            return forward(self, x) if forward else x * 2

        def backward(self, gy):
            return backward(self, gy)

    return Custom


@pytest.mark.parametrize("shape", [(3, 2), (6,), (1, 6), (1, 3), (2, 1), ()])
def test_custom_gradient_of_the_wrong_shape_is_rejected(device, shape):
    fn = _custom(lambda self, gy: (self.xp.ones(shape, gy.dtype),))
    x = tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match=rf"Custom.backward: the gradient for input 0 .*shape "
                                           rf"{re_shape(shape)}.*\(2, 3\)"):
        fn.apply(x).sum().backward()
    assert x.grad is None


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("returned, error, message", [
    (lambda self, gy: (), RuntimeError, "returned 0 gradients for 1 inputs"),
    (lambda self, gy: (gy, gy), RuntimeError, "returned 2 gradients for 1 inputs"),
    (lambda self, gy: (None,), RuntimeError, "input 0 .* is None, but that input requires a gradient"),
    (lambda self, gy: (tg.Tensor._from_array(gy),), TypeError, "input 0 .* is a Tensor"),
    (lambda self, gy: (1.0,), TypeError, "input 0 .* is a float"),
    (lambda self, gy: ([[1.0] * 3] * 2,), TypeError, "input 0 .* is a list"),
    (lambda self, gy: [[1.0] * 3] * 2, TypeError, "returned a list holding list"),
    (lambda self, gy: None, TypeError, "returned NoneType"),
    (lambda self, gy: (gy.astype(np.float64),), TypeError, "input 0 .* dtype float64.*float32"),
    (lambda self, gy: (gy.astype(np.int64),), TypeError, "input 0 .* dtype int64"),
], ids=["too-few", "too-many", "none", "tensor", "float", "nested-list", "bare-list", "none-tuple",
        "dtype", "int"])
def test_custom_gradient_of_the_wrong_count_or_type_is_rejected(device, returned, error, message):
    fn = _custom(returned)
    x = tg.Tensor(np.ones((2, 3), np.float32), device=device, requires_grad=True)
    with pytest.raises(error, match=f"Custom.backward.*{message}"):
        fn.apply(x).sum().backward()
    assert x.grad is None


def test_custom_gradient_on_the_wrong_device_is_rejected(device):
    if device == "cpu":
        pytest.skip("needs a second device")
    fn = _custom(lambda self, gy: (np.ones((2, 3), np.float32),))
    x = tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    with pytest.raises(tg.DeviceError, match="Custom.backward: the gradient for input 0"):
        fn.apply(x).sum().backward()


def test_custom_functions_that_keep_the_contract_work(device):
    class Scale(tg.Function):
        def forward(self, x, y, factor):
            self.factor = factor
            return x * factor + y

        def backward(self, gy):
            return gy * self.factor, gy, None  # None for the Python number

    class Square(tg.Function):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, gy):
            return 2 * self.x * gy  # one input: a bare array is accepted

    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    y = tg.Tensor([3.0, 4.0], device=device)  # needs no gradient: what backward returns for it is ignored
    (Scale.apply(x, y, 3.0) + Square.apply(x)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3 + 2, 3 + 4])


@pytest.mark.parametrize("forward, error, message", [
    (lambda self, x: [1.0, 2.0], TypeError, "returned list, not an array"),
    (lambda self, x: None, TypeError, "returned NoneType, not an array"),
    (lambda self, x: (x * 2).astype(np.int64), TypeError, "returned an array of dtype int64"),
    (lambda self, x: tg.Tensor._from_array(x), TypeError, "returned a Tensor"),
], ids=["list", "none", "int64", "tensor"])
def test_custom_forward_must_return_a_float_array(device, forward, error, message):
    fn = _custom(lambda self, gy: (gy,), forward)
    x = tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    with pytest.raises(error, match=f"Custom.forward {message}"):
        fn.apply(x)


def test_custom_forward_may_return_a_numpy_scalar():
    class Total(tg.Function):
        def forward(self, x):
            self.shape = x.shape
            return x.sum()  # a NumPy scalar, not an array

        def backward(self, gy):
            return np.full(self.shape, gy, gy.dtype)

    x = tg.Tensor([1.0, 2.0], device="cpu", requires_grad=True)
    y = Total.apply(x)
    assert y.device == "cpu" and y.shape == () and y.item() == 3
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [1, 1])


def test_custom_forward_on_the_wrong_device_is_rejected(device):
    if device == "cpu":
        pytest.skip("needs a second device")
    fn = _custom(lambda self, gy: (gy,), lambda self, x: np.ones((2, 3), np.float32))
    with pytest.raises(tg.DeviceError, match="Custom.forward"):
        fn.apply(tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True))


# ---- assigning .grad is checked ---------------------------------------------------------------
def test_assigning_grad_checks_type_shape_device_and_dtype(device):
    p = tg.Tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    with pytest.raises(ValueError, match=r"\.grad.*shape \(3,\).*shape \(1,\)"):
        p.grad = tg.Tensor([1.0], device=device)
    with pytest.raises(TypeError, match=r"\.grad: expected a Tensor.*ndarray"):
        p.grad = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=r"\.grad: expected a Tensor.*float"):
        p.grad = 1.0
    with pytest.raises(TypeError, match=r"\.grad.*float32.*float64"):
        p.grad = tg.Tensor([1.0, 2.0, 3.0], device=device, dtype=np.float64)
    with pytest.raises(RuntimeError, match="its own"):
        p.grad = p
    assert p.grad is None
    good = tg.Tensor([1.0, 1.0, 1.0], device=device)
    p.grad = good
    assert p.grad is good
    tg.optim.SGD([p], lr=0.5).step()
    np.testing.assert_allclose(p.numpy(), [0.5, 1.5, 2.5])
    p.grad = None
    assert p.grad is None
    if device == "cuda":
        with pytest.raises(tg.DeviceError, match=r"\.grad"):
            p.grad = tg.Tensor([1.0, 1.0, 1.0], device="cpu")


# ---- NaN edge cases, PyTorch as the oracle ----------------------------------------------------
def test_max_gradient_goes_to_the_nan(device):
    torch = pytest.importorskip("torch")
    for values in ([1.0, math.nan, 3.0], [math.nan, 2.0, math.nan], [3.0, 1.0, 3.0]):
        x = tg.Tensor(values, device=device, requires_grad=True)
        x.max().backward()
        ref = torch.tensor(values, requires_grad=True)
        ref.max().backward()
        np.testing.assert_allclose(x.grad.numpy(), ref.grad.numpy())
    x = tg.Tensor([[1.0, math.nan, 3.0], [5.0, 2.0, 5.0]], device=device, requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 1, 0], [0.5, 0, 0.5]])


def test_clip_rejects_nan_bounds(device):
    x = tg.Tensor([1.0, 2.0], device=device)
    for bounds in ({"min": math.nan}, {"max": math.nan}, {"min": 0.0, "max": math.nan}):
        with pytest.raises(ValueError, match="clip: bounds must not be NaN"):
            x.clip(**bounds)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_gradients_match_pytorch_with_nans_and_ties(device, name):
    torch = pytest.importorskip("torch")
    a_values = [math.nan, 1.0, 2.0, math.nan, 3.0, -1.0, 0.0]
    b_values = [1.0, math.nan, 2.0, math.nan, 1.0, 4.0, 0.0]
    a = tg.Tensor(a_values, device=device, requires_grad=True)
    b = tg.Tensor(b_values, device=device, requires_grad=True)
    out = getattr(a, name)(b)
    (out * tg.Tensor(np.arange(1.0, 8.0), device=device)).sum().backward()
    ta = torch.tensor(a_values, requires_grad=True)
    tb = torch.tensor(b_values, requires_grad=True)
    ref = getattr(torch, name)(ta, tb)
    (ref * torch.arange(1.0, 8.0)).sum().backward()
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy())
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy())
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy())


# ---- parameters are registered, frozen or not -------------------------------------------------
def test_frozen_parameters_stay_in_state_dict_and_load(device):
    model = tg.nn.Sequential(tg.nn.Linear(2, 3, device=device), tg.nn.Linear(3, 1, device=device))
    model[0].weight.requires_grad_(False)
    model[1].bias.requires_grad_(False)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert len(model.parameters()) == 4
    fresh = tg.nn.Sequential(tg.nn.Linear(2, 3, device=device), tg.nn.Linear(3, 1, device=device))
    fresh.load_state_dict(model.state_dict())
    for (name, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    # an optimizer over every parameter leaves the frozen ones alone
    frozen_before = model[0].weight.numpy()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    model(tg.Tensor([[1.0, 2.0]], device=device)).sum().backward()
    opt.step()
    assert model[0].weight.grad is None
    np.testing.assert_array_equal(model[0].weight.numpy(), frozen_before)


def test_parameter_registry(device):
    class Net(tg.nn.Module):
        def __init__(self):
            self.frozen = tg.nn.Parameter(tg.Tensor([1.0], device=device), requires_grad=False)
            self.old_style = tg.Tensor([2.0], device=device, requires_grad=True)
            self.buffer = tg.Tensor([3.0], device=device)
            self.bias = tg.nn.Parameter(tg.Tensor([4.0], device=device))

    net = Net()
    assert isinstance(net.frozen, tg.nn.Parameter) and isinstance(net.frozen, tg.Tensor)
    assert isinstance(net.old_style, tg.nn.Parameter)  # marked when assigned
    assert not isinstance(net.buffer, tg.nn.Parameter)
    assert net.bias.requires_grad and not net.frozen.requires_grad and net.bias.is_leaf
    net.old_style.requires_grad_(False)
    assert [name for name, _ in net.named_parameters()] == ["frozen", "old_style", "bias"]
    tg.optim.SGD(net.parameters(), lr=0.1)  # frozen parameters are accepted, as PyTorch does
    net.bias = None
    del net.frozen
    assert [name for name, _ in net.named_parameters()] == ["old_style"]
    net.buffer.requires_grad_(True)  # switched on after assignment: still found
    assert [name for name, _ in net.named_parameters()] == ["old_style", "buffer"]
    net.cache = net.old_style * 2  # a result, not a leaf: never registered
    net.cache = tg.Tensor([0.0], device=device)
    assert [name for name, _ in net.named_parameters()] == ["old_style", "buffer"]
    source = tg.Tensor([5.0, 6.0], device=device)
    shared = tg.nn.Parameter(source)
    assert _shares(shared, source) and shared.device == source.device and shared.dtype == source.dtype


def test_load_state_dict_is_all_or_nothing_with_a_read_only_parameter(device):
    class Net(tg.nn.Module):
        def __init__(self):
            self.a = tg.nn.Parameter(tg.Tensor([1.0, 2.0], device=device))
            self.b = tg.nn.Parameter(tg.Tensor([1.0, 2.0], device=device))
            self.c = tg.nn.Parameter(tg.Tensor([1.0, 2.0], device=device))
            # a broadcast view (stride 0) cannot be written in place (Parameter() would copy it)
            self.d = tg.Tensor([1.0], device=device).expand(2).detach().requires_grad_()

    net = Net()
    before = {name: p.numpy() for name, p in net.named_parameters()}
    with pytest.raises(ValueError, match="load_state_dict: parameter d.*read-only"):
        net.load_state_dict({name: np.full(2, 9.0, np.float32) for name in before})
    for name, p in net.named_parameters():
        np.testing.assert_array_equal(p.numpy(), before[name], err_msg=name)
        assert p._version == 0
    if device == "cpu":
        net.d = tg.nn.Parameter(tg.Tensor([1.0, 1.0], device="cpu"))
        net.d.array.setflags(write=False)  # memory that cannot be written (a constructor copies
        # read-only input, so this stands for e.g. a read-only buffer shared through DLPack)
        with pytest.raises(ValueError, match="parameter d.*read-only"):
            net.load_state_dict({name: np.full(2, 9.0, np.float32) for name in before})
        np.testing.assert_array_equal(net.a.numpy(), before["a"])


def test_library_ops_un_broadcast_only_when_they_declare_it(device):
    class Spread(tg.Function):  # stands in for a library op: unchecked, gradient in the output's shape
        def forward(self, x):
            return array_module(device).broadcast_to(x, (4, 3)) * 1

        def backward(self, gy):
            return (gy,)

    Spread.user_defined = False
    x = tg.Tensor([[1.0, 2.0, 3.0]], device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"Spread.backward returned a gradient of shape \(4, 3\) "
                                           r"for input 0 of shape \(1, 3\)"):
        Spread.apply(x).sum().backward()
    Spread.broadcasts_inputs = True
    Spread.apply(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[4, 4, 4]])
