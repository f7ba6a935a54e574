"""cuBLAS through our own handle: every operand layout gives NumPy's product, on the GPU."""

import numpy as np
import pytest

import tinygrad_gpu as tg

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="needs a GPU")


def _layouts(rng, shape, dtype):
    """The same matrix values as a C-ordered array, a transposed view, a sliced view, a copy with
    padded rows and a negatively strided view (which must be copied)."""
    import cupy as cp

    host = rng.standard_normal(shape).astype(dtype)
    padded = cp.zeros((shape[0], shape[1] + 3), dtype)
    padded[:, :shape[1]] = cp.asarray(host)
    flipped = cp.asarray(host[::-1].copy())[::-1]
    return host, [cp.asarray(host), cp.asarray(host.T.copy()).T, padded[:, :shape[1]], flipped]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(65, 70, 33), (1, 300, 257), (300, 1, 300), (257, 300, 1)])
def test_gemm_matches_numpy_for_every_layout(dtype, m, k, n):
    from tinygrad_gpu import blas

    rng = np.random.default_rng(0)
    a_host, a_views = _layouts(rng, (m, k), dtype)
    b_host, b_views = _layouts(rng, (k, n), dtype)
    want = a_host.astype(np.float64) @ b_host
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a in a_views:
        for b in b_views:
            got = blas.gemm(a, b).get()
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("a_shape,b_shape", [((4, 30, 20), (4, 20, 10)), ((30, 20), (2, 3, 20, 10)),
                                             ((2, 1, 30, 20), (3, 20, 10)), ((5, 30, 20), (20, 10)),
                                             ((1, 30, 20), (6, 20, 10))])
def test_batched_gemm_broadcasts_like_numpy(a_shape, b_shape):
    import cupy as cp

    from tinygrad_gpu import blas

    rng = np.random.default_rng(1)
    a = rng.standard_normal(a_shape)
    b = rng.standard_normal(b_shape)
    want = a @ b
    np.testing.assert_allclose(blas.batched_gemm(cp.asarray(a), cp.asarray(b)).get(), want, rtol=1e-10)
    # transposed views of each matrix (strided batches) give the same product
    at = cp.asarray(np.swapaxes(a, -1, -2).copy()).swapaxes(-1, -2)
    bt = cp.asarray(np.swapaxes(b, -1, -2).copy()).swapaxes(-1, -2)
    np.testing.assert_allclose(blas.batched_gemm(at, bt).get(), want, rtol=1e-10)


def test_empty_and_zero_depth_products():
    import cupy as cp

    from tinygrad_gpu import blas

    assert blas.gemm(cp.ones((0, 3), np.float32), cp.ones((3, 4), np.float32)).shape == (0, 4)
    zero = blas.gemm(cp.ones((300, 0), np.float32), cp.ones((0, 300), np.float32))
    assert zero.shape == (300, 300) and not zero.any()


def test_tensor_matmul_of_vectors_and_batches_matches_numpy():
    rng = np.random.default_rng(2)
    for a_shape, b_shape in [((500,), (500, 300)), ((300, 500), (500,)), ((2, 200, 300), (300,)),
                             ((300,), (2, 300, 200))]:
        a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
        got = (tg.Tensor(a, device="cuda") @ tg.Tensor(b, device="cuda")).numpy()
        np.testing.assert_allclose(got, a @ b, rtol=1e-10)
