"""layer_norm as one primitive (tinygrad_gpu.norms.LayerNorm): against PyTorch, finite differences
and second derivatives on every device; on a GPU, its kernels against their NumPy twins."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_gpu as tg
from tests.conftest import to_numpy, training_step
from tinygrad_gpu import norms

F = tg.nn.functional
rng = np.random.default_rng(0)
needs_gpu = pytest.mark.skipif(not tg.cuda_available(), reason="CuPy with a CUDA GPU is not available")

# name -> (input shape, normalized_shape, weight, bias)
SHAPES = {
    "last axis": ((4, 7), (7,), True, True),
    "last two axes": ((2, 3, 9, 8), (9, 8), True, True),
    "no affine": ((3, 5, 6), (6,), False, False),
    "weight only": ((3, 10), (10,), True, False),
    "bias only": ((3, 10), (10,), False, True),
    "one element a row": ((5, 1), (1,), True, True),
    "one row": ((33,), (33,), True, True),
    "whole input": ((2, 3), (2, 3), True, True),
}


def _tensors(arrays, device, dtype):
    return [None if a is None else tg.Tensor(a, device=device, dtype=dtype, requires_grad=True)
            for a in arrays]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", SHAPES)
def test_forward_and_every_gradient_match_torch(device, name, dtype):
    torch = pytest.importorskip("torch")
    shape, normalized, with_weight, with_bias = SHAPES[name]
    arrays = [rng.standard_normal(shape) * 3 + 1,
              rng.standard_normal(normalized) if with_weight else None,
              rng.standard_normal(normalized) if with_bias else None]
    arrays = [None if a is None else a.astype(dtype) for a in arrays]
    ours = _tensors(arrays, device, dtype)
    theirs = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    y = F.layer_norm(ours[0], normalized, ours[1], ours[2], eps=1e-5)
    ty = torch.nn.functional.layer_norm(theirs[0], normalized, theirs[1], theirs[2], eps=1e-5)
    assert y.dtype == dtype and y.shape == shape
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-5, 2e-5)
    np.testing.assert_allclose(to_numpy(y), ty.detach().numpy(), rtol=rtol, atol=atol)
    seed = rng.standard_normal(shape).astype(dtype)
    y.backward(tg.Tensor(seed, device=device, dtype=dtype))
    ty.backward(torch.tensor(seed))
    for a, b in zip(ours, theirs):
        if a is not None:
            assert a.grad.dtype == dtype and a.grad.shape == a.shape
            np.testing.assert_allclose(to_numpy(a.grad), b.grad.numpy(), rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("name", ["last axis", "last two axes", "no affine", "bias only",
                                  "one element a row"])
def test_gradcheck(device, name):
    shape, normalized, with_weight, with_bias = SHAPES[name]
    inputs = _tensors([rng.standard_normal(shape), rng.standard_normal(normalized),
                       rng.standard_normal(normalized)], device, np.float64)
    used = [inputs[0]] + [t for t, on in zip(inputs[1:], (with_weight, with_bias)) if on]

    def fn(x, *affine):
        weight = affine[0] if with_weight else None
        bias = affine[-1] if with_bias else None
        return F.layer_norm(x, normalized, weight, bias)

    assert tg.gradcheck(fn, used)


@pytest.mark.parametrize("affine", [True, False])
def test_gradgradcheck(device, affine):
    x, w, b = _tensors([rng.standard_normal((3, 2, 4)), rng.standard_normal((2, 4)) + 1.0,
                        rng.standard_normal((2, 4))], device, np.float64)
    if affine:
        assert tg.gradgradcheck(lambda x, w, b: F.layer_norm(x, (2, 4), w, b), [x, w, b])
    else:
        assert tg.gradgradcheck(lambda x: F.layer_norm(x, 4) * x, [x])


def test_second_derivatives_match_torch(device):
    torch = pytest.importorskip("torch")
    x0, w0, b0 = rng.standard_normal((3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    x, w, b = _tensors([x0, w0, b0], device, np.float64)
    gx, gw = tg.grad((F.layer_norm(x, 5, w, b) ** 3).sum(), (x, w), create_graph=True)
    second = tg.grad((gx * gx).sum() + (gw * x[0]).sum(), (x, w, b))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x0, w0, b0))
    tgx, tgw = torch.autograd.grad((torch.nn.functional.layer_norm(tx, (5,), tw, tb) ** 3).sum(), (tx, tw),
                                   create_graph=True)
    tsecond = torch.autograd.grad((tgx * tgx).sum() + (tgw * tx[0]).sum(), (tx, tw, tb))
    for mine, reference in zip(second, tsecond):
        np.testing.assert_allclose(to_numpy(mine), reference.numpy(), rtol=1e-9, atol=1e-11)


@given(rows=st.integers(1, 6), n=st.integers(1, 40), scale=st.floats(0.01, 100.0),
       shift=st.floats(-50.0, 50.0))
def test_normalised_rows_ignore_scale_and_shift(device, rows, n, scale, shift):
    """A row scaled by a positive number and shifted normalises to the same values (eps aside)."""
    x = np.random.default_rng(rows * 100 + n).standard_normal((rows, n))
    base = F.layer_norm(tg.Tensor(x, device=device, dtype=np.float64), n, eps=0.0)
    moved = F.layer_norm(tg.Tensor(x * scale + shift, device=device, dtype=np.float64), n, eps=0.0)
    atol = 1e-6 * (1 + abs(shift) / scale)  # the shift's digits lost in x - mean
    np.testing.assert_allclose(to_numpy(moved), to_numpy(base), rtol=1e-6, atol=atol)
    if n > 1:
        values = to_numpy(base)
        np.testing.assert_allclose(values.mean(axis=1), 0.0, atol=1e-9)
        np.testing.assert_allclose(values.var(axis=1), 1.0, rtol=1e-9)


def test_one_primitive_a_call(device):
    x = tg.Tensor(rng.standard_normal((2, 3, 4)), device=device, requires_grad=True)
    w = tg.Tensor(rng.standard_normal(4), device=device, requires_grad=True)
    y = F.layer_norm(x, 4, w, w)
    node = y._ctx.inputs[0]._ctx  # y is the (rows, n) result reshaped back
    assert isinstance(node, norms.LayerNorm)
    assert node.inputs[0]._ctx.inputs[0] is x  # x reshaped to (rows, n), nothing else in between


def test_a_transposed_input_and_a_float32_weight_on_a_float64_input(device):
    torch = pytest.importorskip("torch")
    x0, w0 = rng.standard_normal((6, 5)), rng.standard_normal(6).astype(np.float32)
    x = tg.Tensor(x0, device=device, dtype=np.float64, requires_grad=True)
    w = tg.Tensor(w0, device=device, requires_grad=True)
    y = F.layer_norm(x.T, 6, w)  # a non-contiguous view; float64 with float32 promotes, as x * w does
    assert y.dtype == np.float64
    y.backward(tg.Tensor(np.ones((5, 6)), device=device, dtype=np.float64))
    tx, tw = torch.tensor(x0, requires_grad=True), torch.tensor(w0.astype(np.float64), requires_grad=True)
    ty = torch.nn.functional.layer_norm(tx.T, (6,), tw)
    ty.backward(torch.ones(5, 6, dtype=torch.float64))
    np.testing.assert_allclose(to_numpy(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(x.grad), tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    assert w.grad.dtype == np.float32
    np.testing.assert_allclose(to_numpy(w.grad), tw.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_weights_that_only_broadcast_still_apply(device):
    """A weight or bias not of normalized_shape (a number, a broadcasting tensor) is applied after the
    normalisation, as ordinary ops, as before the primitive existed."""
    x0 = rng.standard_normal((2, 3, 4))
    x = tg.Tensor(x0, device=device, dtype=np.float64)
    plain = to_numpy(F.layer_norm(x, (3, 4)))
    w, b = tg.Tensor(rng.standard_normal(4), device=device, dtype=np.float64), 0.5
    np.testing.assert_allclose(to_numpy(F.layer_norm(x, (3, 4), w, b)), plain * to_numpy(w) + 0.5, rtol=1e-12)
    full_b = tg.Tensor(rng.standard_normal((3, 4)), device=device, dtype=np.float64)
    np.testing.assert_allclose(to_numpy(F.layer_norm(x, (3, 4), 2.0, full_b)), plain * 2.0 + to_numpy(full_b),
                               rtol=1e-12)


def test_errors_and_empty_inputs(device):
    x = tg.Tensor(np.zeros((2, 3)), device=device)
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(4,\) does not match the last axes"):
        F.layer_norm(x, 4)
    with pytest.raises(ValueError, match="does not match"):
        F.layer_norm(x, (1, 2, 3))
    empty = tg.Tensor(np.zeros((0, 3)), device=device, requires_grad=True)
    out = F.layer_norm(empty, 3, tg.Tensor(np.ones(3), device=device, requires_grad=True))
    assert out.shape == (0, 3)
    out.sum().backward()
    assert empty.grad.shape == (0, 3)


def test_constant_rows_and_nonfinite_values_stay_quiet(device):
    """A constant row normalises to 0 (its variance is 0, eps keeps rstd finite); inf gives NaN, quietly."""
    x = np.array([[2.0, 2.0, 2.0], [1.0, np.inf, 0.0]])
    with np.errstate(all="raise"):
        values = to_numpy(F.layer_norm(tg.Tensor(x, device=device, dtype=np.float64), 3))
    np.testing.assert_array_equal(values[0], [0.0, 0.0, 0.0])
    assert np.isnan(values[1]).all()


def test_layer_norm_module_gradients_match_torch(device):
    torch = pytest.importorskip("torch")
    ours = tg.nn.LayerNorm((3, 4), device=device, dtype=np.float64)
    theirs = torch.nn.LayerNorm((3, 4), dtype=torch.float64)
    x0 = rng.standard_normal((5, 3, 4))
    loss = (ours(tg.Tensor(x0, device=device, dtype=np.float64)) ** 2 * 0.5).sum()
    loss.backward()
    tloss = (theirs(torch.tensor(x0)) ** 2 * 0.5).sum()
    tloss.backward()
    np.testing.assert_allclose(to_numpy(ours.weight.grad), theirs.weight.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(to_numpy(ours.bias.grad), theirs.bias.grad.numpy(), rtol=1e-9, atol=1e-11)
    no_affine = tg.nn.LayerNorm(4, elementwise_affine=False, device=device)
    no_bias = tg.nn.LayerNorm(4, bias=False, device=device)
    x = tg.Tensor(rng.standard_normal((2, 4)), device=device)
    np.testing.assert_allclose(to_numpy(no_affine(x)), to_numpy(no_bias(x)), rtol=1e-6)


def test_a_jit_step_with_layer_norm_replays_like_the_eager_one(device):
    def trainer():
        tg.manual_seed(0)
        model = tg.nn.Sequential(tg.nn.Linear(6, 8, device=device), tg.nn.LayerNorm(8, device=device),
                                 tg.nn.ReLU(), tg.nn.Linear(8, 1, device=device))
        opt = tg.optim.SGD(model.parameters(), lr=0.1)
        return model, training_step(model, opt, F.mse_loss)

    eager_model, eager_step = trainer()
    jit_model, raw = trainer()
    step = tg.jit(raw)
    data = np.random.default_rng(1)
    for _ in range(5):
        x = tg.Tensor(data.standard_normal((4, 6)), device=device)
        y = tg.Tensor(data.standard_normal((4, 1)), device=device)
        np.testing.assert_allclose(step(x, y).item(), eager_step(x, y).item(), rtol=1e-6)
    for p, q in zip(jit_model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(to_numpy(p), to_numpy(q), rtol=1e-6, atol=1e-7)


# ---- on a GPU: the kernels against their NumPy twins -----------------------------------------------
def _device_array(shape, dtype, offset=0, seed=0):
    """A (rows, n) CuPy array; offset > 0 starts it that many elements into a buffer (not 16-byte aligned)."""
    import cupy

    size = int(np.prod(shape))
    values = np.random.default_rng(seed).standard_normal(size + offset).astype(dtype)
    return cupy.asarray(values)[offset:].reshape(shape)


# (rows, n, offset): warp-per-row (vector and scalar loads, aligned or not), one element a row, one
# row, block-per-row with the row in registers, block-per-row reading the row again, 1M elements
GPU_CASES = [(64, 1024, 0), (64, 1024, 1), (37, 1000, 0), (9, 1002, 0), (300, 1, 0), (1, 768, 0), (5, 7, 3),
             (3, 1025, 0), (4, 4096, 0), (2, 6000, 2), (3, 40000, 0), (1, 1 << 20, 0), (700, 40, 0),
             (0, 16, 0), (3, 0, 0)]


@needs_gpu
@pytest.mark.parametrize("affine", ["weight and bias", "weight", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,n,offset", GPU_CASES)
def test_gpu_kernels_match_numpy_twins(rows, n, offset, dtype, affine):
    import cupy

    x = _device_array((rows, n), dtype, offset, seed=1)
    w = _device_array((n,), dtype, offset, seed=2) if affine != "none" else None
    b = _device_array((n,), dtype, offset, seed=3) if affine == "weight and bias" else None
    gy = _device_array((rows, n), dtype, offset, seed=4)
    host = [None if a is None else cupy.asnumpy(a) for a in (x, w, b, gy)]
    rtol, atol = (1e-4, 1e-4) if dtype == np.float32 else (1e-11, 1e-11)
    y, mean, rstd = norms._gpu_forward(x, w, b, 1e-5)
    with np.errstate(all="ignore"):
        want = norms.layer_norm_twin(host[0], host[1], host[2], 1e-5)
    for got, expected in zip((y, mean, rstd), want):
        assert got.dtype == dtype
        np.testing.assert_allclose(cupy.asnumpy(got), expected, rtol=rtol, atol=atol)
    # backward from the GPU's own mean and rstd: the kernels checked one at a time
    got = norms._gpu_backward(x, w, mean, rstd, gy, True, w is not None, b is not None)
    with np.errstate(all="ignore"):
        want = norms.layer_norm_backward_twin(host[0], host[1], cupy.asnumpy(mean), cupy.asnumpy(rstd),
                                              host[3], True, w is not None, b is not None)
    for grad, expected in zip(got, want):
        assert (grad is None) == (expected is None)
        if grad is not None:
            # column sums over many rows: the tolerance grows with the terms added
            scale = 1.0 if grad.ndim == 2 else np.sqrt(max(rows, 1))
            np.testing.assert_allclose(cupy.asnumpy(grad), expected, rtol=rtol * scale, atol=atol * scale)


@needs_gpu
def test_gpu_forward_is_one_launch_and_backward_two_of_ours(monkeypatch):
    """(plus the table's SUM adding the chunks of the weight and bias sums, for many rows)"""
    launches = []
    make = norms._kernel

    def counted(name, *args, **kwargs):
        kernel = make(name, *args, **kwargs)
        return lambda *launch: (launches.append(name), kernel(*launch))

    monkeypatch.setattr(norms, "_kernel", counted)
    x = tg.Tensor(rng.standard_normal((4096, 512)), device="cuda", requires_grad=True)
    layer = tg.nn.LayerNorm(512, device="cuda")
    y = layer(x)
    assert launches == ["tg_layer_norm"]
    y.backward(tg.Tensor(rng.standard_normal((4096, 512)), device="cuda"))
    assert launches[1:] == ["tg_layer_norm_backward", "tg_layer_norm_affine"]
