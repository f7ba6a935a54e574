"""Generated kernels at edge sizes: empty, one element, odd counts, and past 2**31 bytes (on the GPU).

Run under `compute-sanitizer --tool memcheck` (and `--tool racecheck` for the reductions, which
use shared memory) to check that no launch reads or writes outside its arrays at these sizes.
"""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="needs CuPy and a CUDA GPU")

SIZES = [0, 1, 2, 3, 7, 31, 33, 255, 257, 1023, 1025, 4097, 65537]


@pytest.fixture(params=["raw", "generic"])
def path(request, monkeypatch):
    # "raw": the library's own launches (one block for small arrays, streamed above the threshold);
    # "generic": CuPy's kernels built from the same rows
    monkeypatch.setattr(kernels, "RAW_LAUNCHES", request.param == "raw")
    monkeypatch.setattr(kernels, "STREAMING_MIN_SIZE", 700)
    return request.param


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_and_reductions_at_edge_sizes(path, n, dtype):
    import cupy

    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    y = np.random.default_rng(n + 1).standard_normal(n).astype(dtype)
    gx, gy = cupy.asarray(x), cupy.asarray(y)
    np.testing.assert_array_equal(cupy.asnumpy(kernels.ADD(gx, gy)), x + y)
    np.testing.assert_array_equal(cupy.asnumpy(kernels.RELU(gx)), np.maximum(x, 0))
    out = gx.copy()
    kernels.ADD_IN_PLACE(gy, out=(out,))
    np.testing.assert_array_equal(cupy.asnumpy(out), x + y)
    tolerance = dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(float(kernels.SUM(gx)), x.sum(dtype=np.float64), **tolerance)
    if n:
        assert float(kernels.MAX(gx)) == x.max()
    for rows in (1, 3):  # a leading-axis (column) reduction and a last-axis one of the same data
        if n % rows == 0 and n:
            m = x.reshape(rows, -1)
            g = cupy.asarray(m)
            np.testing.assert_allclose(cupy.asnumpy(kernels.SUM(g, axis=(0,))), m.sum(axis=0), **tolerance)
            np.testing.assert_allclose(cupy.asnumpy(kernels.SUM(g, axis=(1,))), m.sum(axis=1), **tolerance)


@pytest.mark.parametrize("n", [1, 3, 1025, 65537])
def test_fused_chains_and_foreach_updates_at_edge_sizes(path, n):
    import cupy

    rng = np.random.default_rng(n)
    a = tg.Tensor(rng.standard_normal(n), device="cuda", dtype=np.float32, requires_grad=True)
    b = tg.Tensor(rng.standard_normal(n), device="cuda", dtype=np.float32, requires_grad=True)
    fused = tg.fuse(lambda a, b: ((a * b).sigmoid() - b).relu().sum())
    loss = fused(a, b)
    loss.backward()
    with tg.no_grad():
        expected = ((a * b).sigmoid() - b).relu().sum()
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-5, atol=1e-6)
    params = [cupy.asarray(rng.standard_normal(s).astype(np.float32)) for s in (n, 1, n + 2)]
    grads = [cupy.ones_like(p) for p in params]
    before = [cupy.asnumpy(p) for p in params]
    kernels.SGD_STEP.foreach({"grad": grads, "param": params}, {"lr": 0.5, "weight_decay": 0.0})
    for p, old in zip(params, before):
        np.testing.assert_allclose(cupy.asnumpy(p), old - 0.5, rtol=1e-6)


def test_arrays_past_two_gigabytes(path):
    """Indices past 2**31 bytes (and past 2**31 elements' worth of bytes for float32) stay right."""
    import cupy

    n = (1 << 31) // 4 + 3  # float32 elements: just over 2 GiB
    if cupy.cuda.runtime.memGetInfo()[0] < 4 * n * 4:
        pytest.skip("not enough free GPU memory for three 2 GiB arrays")
    x = cupy.ones(n, np.float32)
    x[-1] = 5.0  # the last element, past the 2 GiB boundary
    y = kernels.RELU(x)
    assert float(y[-1]) == 5.0 and float(y[0]) == 1.0
    del y
    z = kernels.ADD(x, x)
    assert float(z[-1]) == 10.0 and float(z[-2]) == 2.0
    del z
    total = float(kernels.SUM(x, scale=1.0 / n))  # a mean, so that float32 can hold it exactly enough
    assert abs(total - (n + 4) / n) < 1e-3
    assert float(kernels.MAX(x)) == 5.0
