"""Fuzzing: bad input thrown at the public API raises only documented errors, each with a message.

Documented: TypeError, ValueError, RuntimeError (with its subclasses tg.DeviceError,
tg.AnomalyError, tg.OutOfMemoryError), for file paths OSError, and for an index or a class
label out of range IndexError, as Python's own sequences do. Never AttributeError, KeyError,
ZeroDivisionError, OverflowError, NumPy's AxisError, a warning, or an error from CuPy.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpu as tg

DOCUMENTED = (TypeError, ValueError, RuntimeError, tg.GradcheckError)
INTERNAL = (IndexError, AttributeError, KeyError, ZeroDivisionError, ArithmeticError)
OTHER_DEVICE = {"cpu": "cuda", "cuda": "cpu"}


def tensors(device):
    """Tensors of any small shape (zero-size dimensions included) holding any float, NaN and inf too."""
    return st.builds(
        lambda array, requires_grad: tg.Tensor(array, device=device, requires_grad=requires_grad),
        hnp.arrays(st.sampled_from([np.float32, np.float64]),
                   hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
                   elements=st.floats(width=32)),
        st.booleans())


def odd_values(device):
    """Values a careless caller might pass anywhere: wrong types, ragged or empty data, bad numbers."""
    numbers = st.one_of(st.integers(-3, 5), st.sampled_from([10**30, -10**30, 2**64, 10**400]),
                        st.floats(), st.complex_numbers(max_magnitude=10), st.booleans())
    arrays = hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.complex64, "U1"]),
                        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    other = [None, "abc", "", "cuda", "cpu", "cuda:1", "tpu", b"\x00", object(), {"a": 1}, {}, [], [[]],
             (), [[1.0, 2.0], [3.0]], [[1, 2], "ab"], [None, 1.0], np.array([None, 1.0], dtype=object),
             [np.nan], slice(1), int, np.float32, Ellipsis, lambda: None, range(3)]
    values = st.one_of(numbers, arrays, st.sampled_from(other), st.text(max_size=3),
                       st.lists(numbers, max_size=3), st.tuples(st.integers(-3, 4), st.integers(-3, 4)),
                       st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3),
                       tensors(device))
    if tg.cuda_available():
        values = st.one_of(values, tensors(OTHER_DEVICE[device]))
    return values


def _model(device):
    return tg.nn.Sequential(tg.nn.Linear(3, 2, device=device), tg.nn.ReLU())


# name: call(t, v, device, path) with t a tensor and v an odd value
CALLS = {
    "Tensor(v)": lambda t, v, d, p: tg.Tensor(v, device=d),
    "Tensor(dtype=v)": lambda t, v, d, p: tg.Tensor([1.0], device=d, dtype=v),
    "Tensor(device=v)": lambda t, v, d, p: tg.Tensor([1.0], device=v),
    "t + v": lambda t, v, d, p: t + v,
    "v + t": lambda t, v, d, p: v + t,
    "t - v": lambda t, v, d, p: t - v,
    "v * t": lambda t, v, d, p: v * t,
    "t / v": lambda t, v, d, p: t / v,
    "v / t": lambda t, v, d, p: v / t,
    "t ** v": lambda t, v, d, p: t ** v,
    "t @ v": lambda t, v, d, p: t @ v,
    "v @ t": lambda t, v, d, p: v @ t,
    "t.matmul(t)": lambda t, v, d, p: t.matmul(t),
    "-t.exp().log().sqrt()": lambda t, v, d, p: -t.exp().log().sqrt(),
    "activations": lambda t, v, d, p: t.relu() + t.sigmoid() + t.tanh(),
    "t.reshape(v)": lambda t, v, d, p: t.reshape(v),
    "t.reshape(*v)": lambda t, v, d, p: t.reshape(*v) if isinstance(v, (tuple, list)) else t.reshape(v, v),
    "t.transpose(v)": lambda t, v, d, p: t.transpose(v),
    "t.transpose(*v)": lambda t, v, d, p: t.transpose(*v) if isinstance(v, (tuple, list)) else t.T,
    "t.expand(v)": lambda t, v, d, p: t.expand(v),
    "t.sum(axis=v)": lambda t, v, d, p: t.sum(axis=v),
    "t.mean(axis=v)": lambda t, v, d, p: t.mean(axis=v, keepdims=True),
    "t.max(axis=v)": lambda t, v, d, p: t.max(axis=v),
    "t.logsumexp(axis=v)": lambda t, v, d, p: t.logsumexp(axis=v),
    "t.to(v)": lambda t, v, d, p: t.to(v),
    "t.backward(v)": lambda t, v, d, p: t.backward(v),
    "t.backward()": lambda t, v, d, p: t.backward(),
    "t.item()": lambda t, v, d, p: t.item(),
    "len(t)": lambda t, v, d, p: len(t),
    "repr(t)": lambda t, v, d, p: repr(t),
    "t.requires_grad_(v)": lambda t, v, d, p: t.requires_grad_(v),
    "t.retain_grad()": lambda t, v, d, p: t.retain_grad(),
    "Tensor.zeros(v)": lambda t, v, d, p: tg.Tensor.zeros(v, device=d),
    "Tensor.ones(*v)": lambda t, v, d, p: tg.Tensor.ones(*v, device=d) if isinstance(v, tuple) else
    tg.Tensor.ones(v, device=d),
    "Tensor.randn(v)": lambda t, v, d, p: tg.Tensor.randn(v, device=d),
    "Tensor.uniform(low=v)": lambda t, v, d, p: tg.Tensor.uniform(2, low=v, device=d),
    "Tensor.eye(v)": lambda t, v, d, p: tg.Tensor.eye(v, device=d),
    "Tensor.zeros(dtype=v)": lambda t, v, d, p: tg.Tensor.zeros(2, dtype=v, device=d),
    "manual_seed(v)": lambda t, v, d, p: tg.manual_seed(v),
    "Linear(v, 2)": lambda t, v, d, p: tg.nn.Linear(v, 2, device=d),
    "Linear(2, v, bias=v)": lambda t, v, d, p: tg.nn.Linear(2, v, bias=v, device=d),
    "Linear(3, 2)(v)": lambda t, v, d, p: tg.nn.Linear(3, 2, device=d)(v),
    "Linear(3, 2)(t)": lambda t, v, d, p: tg.nn.Linear(3, 2, device=d)(t),
    "Sequential(v)(t)": lambda t, v, d, p: tg.nn.Sequential(v)(t),
    "MSELoss()(t, v)": lambda t, v, d, p: tg.nn.MSELoss()(t, v),
    "MSELoss()(v, t)": lambda t, v, d, p: tg.nn.MSELoss()(v, t),
    "MSELoss(v)(t, t)": lambda t, v, d, p: tg.nn.MSELoss(v)(t, t),
    "mse_loss(t, t, reduction=v)": lambda t, v, d, p: tg.nn.functional.mse_loss(t, t, reduction=v),
    "load_state_dict(v)": lambda t, v, d, p: _model(d).load_state_dict(v),
    "load_state_dict({name: v})": lambda t, v, d, p: _model(d).load_state_dict(
        {"0.weight": v, "0.bias": np.zeros(2, np.float32)}),
    "module.to(v)": lambda t, v, d, p: _model(d).to(v),
    "SGD(v)": lambda t, v, d, p: tg.optim.SGD(v, lr=0.1),
    "SGD([t], lr=v)": lambda t, v, d, p: tg.optim.SGD([t], lr=v),
    "SGD(momentum=v)": lambda t, v, d, p: tg.optim.SGD(_model(d).parameters(), lr=0.1, momentum=v),
    "SGD.load_state_dict(v)": lambda t, v, d, p: tg.optim.SGD(_model(d).parameters(), lr=0.1)
    .load_state_dict(v),
    "gradcheck(v, [t])": lambda t, v, d, p: tg.gradcheck(v, [t]),
    "gradcheck(f, v)": lambda t, v, d, p: tg.gradcheck(lambda x: x * 2, v),
    "save({k: v}, path)": lambda t, v, d, p: tg.save({"k": v}, p),
    "save(v, path)": lambda t, v, d, p: tg.save(v, p),
    "save(state, v)": lambda t, v, d, p: tg.save({"t": t}, _inside(p, v)),
    "load(v)": lambda t, v, d, p: tg.load(_inside(p, v)),
    "load(path, device=v)": lambda t, v, d, p: (tg.save({"t": t}, p), tg.load(p, device=v))[1],
    "no_grad()(v)": lambda t, v, d, p: tg.no_grad()(v)(t),
    "no_grad(v)": lambda t, v, d, p: tg.no_grad(v),
    "Tensor([t, v])": lambda t, v, d, p: tg.Tensor([t, v], device=d),
    "t.sum(keepdims=v)": lambda t, v, d, p: t.sum(keepdims=v),
    "t.max(axis=-1, keepdims=v)": lambda t, v, d, p: t.max(axis=-1, keepdims=v),
    "gradcheck(f, [t], eps=v)": lambda t, v, d, p: tg.gradcheck(lambda x: x * 2, [t], eps=v),
    "gradcheck(f, [t], atol=v, rtol=v)": lambda t, v, d, p: tg.gradcheck(lambda x: x * 2, [t],
                                                                         atol=v, rtol=v),
    "init.constant_(t, v)": lambda t, v, d, p: tg.nn.init.constant_(t, v),
    # classification ops, indexing, combining, losses, optimizers, init and interop
    "t[v]": lambda t, v, d, p: t[v],
    "t[v, v]": lambda t, v, d, p: t[v, v],
    "t > v": lambda t, v, d, p: t > v,
    "list(t)": lambda t, v, d, p: list(t),
    "t.abs().clip(v)": lambda t, v, d, p: t.abs().clip(v),
    "t.clip(max=v)": lambda t, v, d, p: t.clip(max=v),
    "t.maximum(v)": lambda t, v, d, p: t.maximum(v),
    "t.minimum(v)": lambda t, v, d, p: t.minimum(v),
    "t.softmax(v)": lambda t, v, d, p: t.softmax(v),
    "t.log_softmax(v)": lambda t, v, d, p: t.log_softmax(v),
    "t.squeeze(v)": lambda t, v, d, p: t.squeeze(v),
    "t.unsqueeze(v)": lambda t, v, d, p: t.unsqueeze(v),
    "t.flatten(v)": lambda t, v, d, p: t.flatten(v),
    "cat([t, v])": lambda t, v, d, p: tg.cat([t, v]),
    "cat(v)": lambda t, v, d, p: tg.cat(v),
    "stack([t, v], axis=v)": lambda t, v, d, p: tg.stack([t, t], axis=v),
    "stack([t, v])": lambda t, v, d, p: tg.stack([t, v]),
    "where(v, t, t)": lambda t, v, d, p: tg.where(v, t, t),
    "where(t > 0, t, v)": lambda t, v, d, p: tg.where(t > 0, t, v),
    "cross_entropy(t, v)": lambda t, v, d, p: tg.nn.functional.cross_entropy(t, v),
    "cross_entropy(v, t)": lambda t, v, d, p: tg.nn.functional.cross_entropy(v, t),
    "nll_loss(t, v)": lambda t, v, d, p: tg.nn.functional.nll_loss(t, v),
    "binary_cross_entropy(t, v)": lambda t, v, d, p: tg.nn.functional.binary_cross_entropy(t.sigmoid(), v),
    "bce_with_logits(t, v)": lambda t, v, d, p: tg.nn.functional.binary_cross_entropy_with_logits(t, v),
    "CrossEntropyLoss(v)(t, t)": lambda t, v, d, p: tg.nn.CrossEntropyLoss(v)(t, t),
    "Flatten(v)(t)": lambda t, v, d, p: tg.nn.Flatten(v)(t),
    "Adam([t], lr=v)": lambda t, v, d, p: tg.optim.Adam([t], lr=v),
    "Adam(betas=v)": lambda t, v, d, p: tg.optim.Adam(_model(d).parameters(), betas=v),
    "AdamW(eps=v)": lambda t, v, d, p: tg.optim.AdamW(_model(d).parameters(), eps=v),
    "Adam.load_state_dict(v)": lambda t, v, d, p: tg.optim.Adam(_model(d).parameters()).load_state_dict(v),
    "SGD.load_state_dict(state with v)": lambda t, v, d, p: _load_optimizer_state_with(v, d),
    "init.xavier_uniform_(t)": lambda t, v, d, p: tg.nn.init.xavier_uniform_(t),
    "init.kaiming_normal_(t, a=v)": lambda t, v, d, p: tg.nn.init.kaiming_normal_(t, a=v),
    "init.uniform_(t, v)": lambda t, v, d, p: tg.nn.init.uniform_(t, v),
    "init.constant_(v, v)": lambda t, v, d, p: tg.nn.init.constant_(v, v),
    "init.calculate_gain(v)": lambda t, v, d, p: tg.nn.init.calculate_gain(v),
    "from_dlpack(v)": lambda t, v, d, p: tg.from_dlpack(v),
    "fuse(v)(t)": lambda t, v, d, p: tg.fuse(v)(t),
    "fuse(f)(t, v)": lambda t, v, d, p: tg.fuse(lambda x, y: (x * y).exp())(t, v),
    "graph_memory(v)": lambda t, v, d, p: tg.graph_memory(v),
    "diagnose_gradients(f, v)": lambda t, v, d, p: tg.diagnose_gradients(lambda x: x * 2, v),
    "detect_anomaly(v)": lambda t, v, d, p: _doubled_under_anomaly_mode(v, t),
}
INDEX_CALLS = {"t[v]", "t[v, v]", "cross_entropy(t, v)", "cross_entropy(v, t)", "nll_loss(t, v)",
               "CrossEntropyLoss(v)(t, t)"}
FILE_CALLS = {"save({k: v}, path)", "save(v, path)", "save(state, v)", "load(v)", "load(path, device=v)"}


def listed_tensors(device):
    """Edge-case tensors: empty, zero-size dimensions, 0-d, non-finite values, float64."""
    return [tg.Tensor(np.zeros((0, 3)), device=device, requires_grad=True),
            tg.Tensor(np.ones((3, 3)), device=device, requires_grad=True),
            tg.Tensor(2.0, device=device, requires_grad=True),
            tg.Tensor([np.nan, np.inf], device=device),
            tg.Tensor(np.ones((2, 1, 3)), device=device, dtype=np.float64),
            tg.Tensor(np.zeros((2, 0, 1)), device=device)]


def listed_values(device):
    """Odd values, each tried against every call."""
    values = [None, True, 0, -1, 3, 10**30, -10**30, 2**64, 10**400, 1.5, float("nan"), float("inf"),
              -0.0, 1e300, 3.4e38, 1j, "abc", "", "cuda", "cpu", "cuda:1", "tpu", b"\x00", object(),
              {"a": 1}, {}, [], [[]], (), [[1.0, 2.0], [3.0]], [[1, 2], "ab"], [None, 1.0],
              np.array([None, 1.0], dtype=object), [np.nan], slice(1), int, np.float32, Ellipsis,
              lambda: None, range(3), (2, 3), (-1,), (0,), (3, 0), [1e300], np.array(["a"]),
              np.zeros((0, 3)), np.arange(3), np.ones((2, 3), np.complex64), np.float64(2.0), np.int64(2),
              np.array(2.0), (1.5, 2), (0, 5), [0, 0], (-2, 3),
              np.ones((2, 3)).view(np.matrix), np.ma.masked_array([1.0, 2.0], mask=[False, True])]
    devices = [device] + ([OTHER_DEVICE[device]] if tg.cuda_available() else [])
    return values + [t for d in devices for t in listed_tensors(d)]


def _inside(path, value):
    """A string path is taken inside the test's directory (prefixed, so never absolute)."""
    return path.parent / ("x" + value) if isinstance(value, str) else value


def _load_optimizer_state_with(value, device):
    """An SGD state_dict with one setting, and one buffer, replaced by `value`."""
    model = _model(device)
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(tg.Tensor(np.ones((1, 3)), device=device)).sum().backward()
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["momentum"] = value
    opt.load_state_dict(state)
    state = opt.state_dict()
    state["state"][0]["momentum_buffer"] = value
    opt.load_state_dict(state)


def _doubled_under_anomaly_mode(enabled, t):
    with tg.detect_anomaly(enabled):
        return t * 2


def _exercise(result):
    """Use what a call returned the way a user would: read it, and backpropagate through it."""
    if isinstance(result, tg.Tensor):
        result.numpy()
        if result.requires_grad:
            result.sum().backward()


def check_call(name, tensor, value, device, path):
    """Run one call; it may succeed or raise a documented error with a message, nothing else."""
    allowed = DOCUMENTED + ((OSError,) if name in FILE_CALLS else ()) + (
        (IndexError,) if name in INDEX_CALLS else ())
    try:  # warnings are errors in this suite: a RuntimeWarning leaking from us fails here too
        _exercise(CALLS[name](tensor, value, device, path))
    except allowed as error:
        if type(error) is not IndexError:  # our own out-of-range index or label (not NumPy's AxisError)
            assert not isinstance(error, INTERNAL), f"{name}: internal error {type(error).__name__}: {error}"
        assert not type(error).__module__.startswith("cupy"), f"{name}: CuPy's own error leaked: {error!r}"
        assert str(error).strip(), f"{name}: {type(error).__name__} without a message"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_call_with_every_listed_value(device, name, tmp_path):
    for tensor in listed_tensors(device):
        for value in listed_values(device):
            check_call(name, tensor, value, device, tmp_path / "ckpt.npz")


@pytest.mark.parametrize("name", sorted(CALLS))
@given(data=st.data())
def test_random_bad_input_raises_only_documented_errors(device, name, tmp_path, data):
    tensor = data.draw(tensors(device), label="t")
    value = data.draw(odd_values(device), label="v")
    check_call(name, tensor, value, device, tmp_path / "ckpt.npz")


def test_bad_inputs_found_by_fuzzing_give_clear_errors(device):
    t = tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    with pytest.raises(ValueError, match="not a permutation"):
        t.transpose(0, 5)  # used to wrap around to (0, 1) silently
    with pytest.raises(ValueError, match="too large for a float"):
        t + 10**400
    with pytest.raises(ValueError, match="too large for a float"):
        t ** 10**400
    with pytest.raises(TypeError, match="axis must be"):
        t.sum(axis=1.5)
    with pytest.raises(TypeError, match="input must be a Tensor"):
        tg.nn.MSELoss()([1.0], t)
    with pytest.raises(ValueError, match="positive sizes"):
        tg.nn.Linear(10**400, 2)
    with pytest.raises(TypeError, match="nesterov"):
        tg.optim.SGD([t], lr=0.1, momentum=0.9, nesterov="yes")
    with pytest.raises(ValueError, match="momentum must be finite"):
        tg.optim.SGD([t], lr=0.1, momentum=float("nan"))
    with pytest.raises(TypeError, match="decorates a function"):
        tg.no_grad()(5)
    with pytest.raises(ValueError, match="range"):
        tg.Tensor.uniform(2, low=-1e308, high=1e308)
    assert tg.Tensor([1e300], device=device).numpy()[0] == np.inf  # float32 overflow: inf, no warning
    out = tg.nn.Linear(3, 2, device=device)([[1.0, 2.0, 3.0]])  # plain data is taken as a Tensor
    assert out.shape == (1, 2) and out.device == device


def test_mixing_devices_raises_device_error():
    if not tg.cuda_available():
        pytest.skip("needs a GPU")
    with pytest.raises(tg.DeviceError, match="'cpu'.*'cuda'"):
        tg.Tensor([1.0], device="cpu") * tg.Tensor([1.0], device="cuda")
