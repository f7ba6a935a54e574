"""Every kernel row: the CUDA kernel and its NumPy twin agree (runs where a GPU is present)."""

import itertools

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="needs CuPy and a CUDA GPU")

TOLERANCE = {np.float32: 2e-6, np.float64: 1e-13}


def _atol(dtype, args, terms=1):
    """Absolute slack for cancellation: a few ULPs of the largest operand (the GPU fuses a*b+c)."""
    scale = max([float(np.max(np.abs(a))) for a in args if isinstance(a, np.ndarray)] + [1.0])
    return 16 * np.finfo(dtype).eps * scale * np.sqrt(terms)


def _param_names(params):
    return [p.split()[-1] for p in params.split(",")]


@pytest.mark.parametrize("name", sorted(kernels.ROWS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["generic", "streaming"])
def test_cuda_kernel_matches_numpy_twin(name, dtype, path, monkeypatch):
    import cupy

    row = kernels.ROWS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    low, high = row.domain
    # the streaming kernels take large contiguous arrays; an odd size exercises their scalar tail
    shape = (33, 17) if path == "generic" else (4099, 3)
    if path == "streaming":
        monkeypatch.setattr(kernels, "STREAMING_MIN_SIZE", 1000)
    args = [0.75 if n in row.scalars else rng.uniform(low, high, shape).astype(dtype)
            for n in _param_names(row.in_params)]
    if path == "generic":  # column-major operands: the raw kernels decline, CuPy's generic ones run
        args = [np.asfortranarray(a) if isinstance(a, np.ndarray) else a for a in args]
    on_gpu = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    if path == "generic":
        assert all(not a.flags.c_contiguous for a in on_gpu if hasattr(a, "flags"))
    if isinstance(row, kernels.Reduction):
        for axis, scale in itertools.product((None, 0, 1, (0, 1)), (1.0, 0.25)):
            expected = row(args[0], axis=axis, keepdims=True, scale=scale)
            got = cupy.asnumpy(row(on_gpu[0], axis=axis, keepdims=True, scale=scale))
            np.testing.assert_allclose(got, expected, rtol=TOLERANCE[dtype],
                                       atol=_atol(dtype, args, terms=args[0].size))
        return
    outs = None
    if isinstance(row, kernels.Elementwise) and name in ("sgd_step", "sgd_momentum_step",
                                                          "adam_step", "adamw_step"):
        outs = [rng.uniform(low, high, shape).astype(dtype) for _ in range(row.n_outputs)]
    expected = row(*args, out=tuple(o.copy() for o in outs)) if outs else row(*args)
    got = row(*on_gpu, out=tuple(cupy.asarray(o) for o in outs)) if outs else row(*on_gpu)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got):
        assert g.dtype == dtype
        np.testing.assert_allclose(cupy.asnumpy(g), e, rtol=TOLERANCE[dtype],
                                   atol=_atol(dtype, args + (outs or [])))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_foreach_update_matches_per_tensor_twin(momentum):
    import cupy

    rng = np.random.default_rng(5)
    shapes = [(4, 2), (4,), (1, 4), (1,), (333, 7)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    bufs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    on_gpu = {name: [cupy.asarray(a) for a in arrays]
              for name, arrays in (("grad", grads), ("param", params), ("buf", bufs))}
    lr = cupy.full((), 0.1, np.float32)  # a learning rate kept in device memory
    if momentum:
        row, scalars = kernels.SGD_MOMENTUM_STEP, dict(weight_decay=0.01, momentum=momentum, nesterov=1)
        expected = [row(g, 0.1, 0.01, momentum, 1, out=(p.copy(), b.copy()))
                    for g, p, b in zip(grads, params, bufs)]
    else:
        row, scalars = kernels.SGD_STEP, dict(weight_decay=0.01)
        del on_gpu["buf"]
        expected = [(row(g, 0.1, 0.01, out=(p.copy(),)),) for g, p in zip(grads, params)]
    row.foreach(on_gpu, dict(lr=lr, **scalars))
    for t, values in enumerate(expected):
        for name, value in zip(("param", "buf"), values):
            np.testing.assert_allclose(cupy.asnumpy(on_gpu[name][t]), value, rtol=1e-6, atol=1e-6)
