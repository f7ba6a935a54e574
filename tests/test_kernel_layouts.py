"""The raw GPU kernels agree with the NumPy twins for every operand layout they take: repeated
operands (a bias over rows, a value per row), reductions over trailing axes (aligned, unaligned,
cut into segments), and multi-tensor updates of aligned and unaligned tensors."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels as K

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="needs a GPU")


def _gpu(array):
    import cupy as cp

    return cp.asarray(array)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("big,small", [((64, 128), (128,)), ((64, 128), (64, 1)), ((4, 6, 8), (6, 8)),
                                       ((4, 6, 8), (4, 1, 1)), ((4, 6, 8), (1, 1, 8)), ((8, 12), (1, 1)),
                                       ((64, 130), (130,)), ((6, 7), (6, 1))])
def test_repeated_operands_match_the_twin(dtype, big, small):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(big).astype(dtype), rng.standard_normal(small).astype(dtype)
    for row in (K.ADD, K.MUL, K.SUB):
        np.testing.assert_array_equal(row(_gpu(a), _gpu(b)).get(), row.twin(a, b))
        np.testing.assert_array_equal(row(_gpu(b), _gpu(a)).get(), row.twin(b, a))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axes", [((300, 1024), (1,)), ((3, 100003), (1,)), ((4, 200000), (1,)),
                                        ((1000, 1023), (1,)), ((5, 7), (1,)), ((6, 20, 30), (1, 2)),
                                        ((2, 3, 4, 5), (3,)), ((1, 65536), (1,))])
def test_trailing_axis_reductions_match_the_twin(dtype, shape, axes):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[7] = 9.0
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for row in (K.SUM, K.MAX, K.MIN):
        got = row(_gpu(x), axis=axes).get()
        np.testing.assert_allclose(got, row.twin(x, axis=axes), rtol=tol, atol=tol * shape[-1])
    mean = K.SUM(_gpu(x), axis=axes, keepdims=True, scale=1.0 / np.prod([shape[a] for a in axes])).get()
    np.testing.assert_allclose(mean, x.mean(axis=axes, keepdims=True), rtol=tol, atol=tol)
    # a view starting one element in: rows no longer begin on 16 bytes, the scalar path reads them
    flat = _gpu(np.concatenate([np.zeros(1, dtype), x.ravel()]))[1:].reshape(shape)
    np.testing.assert_allclose(K.SUM(flat, axis=axes).get(), x.sum(axis=axes), rtol=tol, atol=tol * shape[-1])


def test_trailing_max_propagates_nan():
    x = np.random.default_rng(2).standard_normal((4, 5000)).astype(np.float32)
    x[2, 4321] = np.nan
    got = K.MAX(_gpu(x), axis=(1,)).get()
    assert np.isnan(got[2]) and not np.isnan(got[[0, 1, 3]]).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_foreach_updates_aligned_and_unaligned_tensors(dtype):
    import cupy as cp

    rng = np.random.default_rng(3)
    sizes = [1, 3, 4, 1000003, 17, 4096]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    # the second and fifth start 1 element into a larger array: not 16-byte aligned
    def place(values, k):
        if k in (1, 4):
            holder = cp.zeros(values.size + 1, dtype)
            holder[1:] = cp.asarray(values)
            return holder[1:]
        return cp.asarray(values)

    gpu_params = [place(p, k) for k, p in enumerate(params)]
    gpu_grads = [place(g, k) for k, g in enumerate(grads)]
    lr = cp.asarray(np.array(0.1, dtype))
    K.ROWS["sgd_step"].foreach({"grad": gpu_grads, "param": gpu_params}, {"lr": lr, "weight_decay": 0.01})
    for got, p, g in zip(gpu_params, params, grads):
        want = K.ROWS["sgd_step"].twin(g, np.array(0.1, dtype), 0.01, p)
        # (the compiler may fuse multiply and add: last-bit differences)
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(got.get(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axes", [((64, 128), (0,)), ((128, 10), (0,)), ((5000, 33), (0,)),
                                        ((3, 100, 7), (0, 1)), ((6, 4, 50, 9), (1,)), ((6, 4, 3, 2), (1, 2)),
                                        ((2, 70000, 3), (1,)), ((1, 1, 5), (1,))])
def test_leading_and_middle_axis_reductions_match_the_twin(dtype, shape, axes):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    rows = int(np.prod([shape[a] for a in axes]))
    for row in (K.SUM, K.MAX, K.MIN):
        got = row(_gpu(x), axis=axes).get()
        np.testing.assert_allclose(got, row.twin(x, axis=axes), rtol=tol, atol=tol * rows)
        kept = row(_gpu(x), axis=axes, keepdims=True).get()
        assert kept.shape == row.twin(x, axis=axes, keepdims=True).shape
    mean = K.SUM(_gpu(x), axis=axes, scale=1.0 / rows).get()
    np.testing.assert_allclose(mean, x.mean(axis=axes), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    ((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)), ((3, 2), (1, 2), (1, 0), (2, 1)),
    ((2, 3), (3, 1), (0, 1), (1, 2))])
def test_max_pool_matches_the_cpu_with_ties_and_nan(dtype, kernel, stride, padding, dilation):
    """The GPU's direct pooling kernels give the CPU's values and send each gradient to the same
    first maximum (ties everywhere, NaN windows, -inf beyond the edges, overlapping windows)."""
    from tinygrad_gpu import windows

    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 3, 9, 8)).astype(dtype)  # many ties
    x[0, 1, 2, 3] = x[1, 2, 5, 5] = x[1, 2, 5, 6] = np.nan
    x[0, 0, 0, 0] = -np.inf
    settings = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    cpu, gpu = windows.MaxPool(), windows.MaxPool()
    want = cpu.forward(x, **settings)
    got = gpu.forward(_gpu(x), **settings)
    np.testing.assert_array_equal(got.get(), want)
    gy = rng.standard_normal(want.shape).astype(dtype)
    np.testing.assert_array_equal(gpu.backward(_gpu(gy))[0].get(), cpu.backward(gy)[0])
