"""The tiled GEMM kernel: every tile shape and operand layout gives NumPy's product, on the GPU;
and how products are planned (tile, depth, or cuBLAS), on any machine."""

import types

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import tiled_gemm

needs_gpu = pytest.mark.skipif(not tg.cuda_available(), reason="needs a GPU")


def _views(host):
    """The same matrix as a C-ordered array, a transposed view and a view with padded rows."""
    import cupy as cp

    padded = cp.zeros((host.shape[0], host.shape[1] + 5), host.dtype)
    padded[:, :host.shape[1]] = cp.asarray(host)
    return [cp.asarray(host), cp.asarray(host.T.copy()).T, padded[:, :host.shape[1]]]


# (m, k, n): a flat tile for few rows, one for few columns, 32x32 for a small grid, 64x64 for a
# grid that fills the GPU; sizes that are not multiples of the tile or of its depth
SHAPES = [(5, 37, 300), (300, 37, 7), (65, 70, 33), (1100, 3, 1100), (1, 1, 1), (17, 16, 17)]


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_tiled_gemm_matches_numpy_for_every_layout(dtype, m, k, n):
    from tinygrad_gpu import tiled_gemm

    rng = np.random.default_rng(m + k + n)
    a_host = rng.standard_normal((m, k)).astype(dtype)
    b_host = rng.standard_normal((k, n)).astype(dtype)
    want = a_host.astype(np.float64) @ b_host
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert tiled_gemm.plan_for(a_host, b_host)
    for a in _views(a_host):
        for b in _views(b_host):
            got = tiled_gemm.gemm(a, b)
            assert got.flags.c_contiguous and got.dtype == dtype
            np.testing.assert_allclose(got.get(), want, rtol=tol, atol=tol * np.abs(want).max())


@needs_gpu
def test_every_tile_shape_and_depth_is_chosen_somewhere():
    from tinygrad_gpu import tiled_gemm

    assert {tiled_gemm.tile_for(m, n) for m, _, n in SHAPES} == set(tiled_gemm.TILES)
    depths = {tiled_gemm.depth_for(tiled_gemm.tile_for(m, n), k, size)
              for m, k, n in SHAPES + [(64, 300, 64), (40, 20, 40)] for size in (4, 8)}
    assert depths == set(tiled_gemm.DEPTHS)


@needs_gpu
def test_empty_and_zero_depth_products():
    import cupy as cp

    from tinygrad_gpu import tiled_gemm

    assert tiled_gemm.gemm(cp.ones((0, 3), np.float32), cp.ones((3, 4), np.float32)).shape == (0, 4)
    zero = tiled_gemm.gemm(cp.ones((30, 0), np.float32), cp.ones((0, 20), np.float32))
    assert zero.shape == (30, 20) and not zero.any()


@needs_gpu
def test_matmul_picks_the_tiled_kernel_up_to_its_work_limit_and_cublas_beyond():
    import cupy as cp

    from tinygrad_gpu import kernels as K
    from tinygrad_gpu import tiled_gemm

    rng = np.random.default_rng(3)
    columns = tiled_gemm.TILED_WORK // (64 * 128)
    for m, k, n in [(64, 128, columns), (64, 128, columns + 1)]:  # the limit, then one column more
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        assert (tiled_gemm.plan_for(a, b) is not None) == (m * k * n <= tiled_gemm.TILED_WORK)
        want = a @ b
        got = K.matmul(cp.asarray(a), cp.asarray(b)).get()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    # a deep product (more steps of the k loop than a block should take) is cuBLAS's too
    a, b = rng.standard_normal((6, 2000)), rng.standard_normal((2000, 25))
    assert tiled_gemm.plan_for(a, b) is None
    want = a @ b
    np.testing.assert_allclose(K.matmul(cp.asarray(a), cp.asarray(b)).get(), want, rtol=1e-10,
                               atol=1e-10 * np.abs(want).max())
    # negative strides are cuBLAS's path (which copies), never the tiled kernel's
    a = cp.asarray(rng.standard_normal((40, 30)))[::-1]
    assert tiled_gemm.plan_for(a, a.T) is None
    np.testing.assert_allclose(K.matmul(a, a.T).get(), a.get() @ a.get().T, rtol=1e-10)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU of 132 multiprocessors for the planning code, with its plans starting empty."""
    device = types.SimpleNamespace(attributes={"MultiProcessorCount": 132})
    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0),
                                 Device=lambda index: device)
    monkeypatch.setattr(tiled_gemm, "cupy_module", lambda: types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(tiled_gemm, "_plans", tiled_gemm.LRU(tiled_gemm.PLANS))
    monkeypatch.setattr(tiled_gemm, "_sm_count", {})


def test_plans_pick_tiles_and_depths_and_leave_big_or_deep_products_to_cublas(fake_gpu):
    plan = tiled_gemm.plan
    assert plan(128, 512, 784, 4) == ((32, 32), 128)  # few blocks of 64 x 64: 32 x 32, deep slices
    assert plan(1100, 1100, 3, 4) == ((64, 64), 16)  # enough blocks for 64 x 64; k needs 16
    assert plan(6, 300, 25, 4) == ((16, 64), 32)  # few rows: the flat tile
    assert plan(300, 7, 25, 8) == ((64, 16), 32)
    assert plan(128, 512, 784, 8) is None  # float64 slices are half as deep: 13 steps of k
    assert plan(512, 10, 4096, 4) is None  # deep: 32 steps of k
    assert plan(1024, 1024, 1024, 4) is None  # more than TILED_WORK multiply-adds


def test_plans_are_bounded(fake_gpu):
    for n in range(1, tiled_gemm.PLANS + 50):
        tiled_gemm.plan(20, n, 20, 4)
    assert len(tiled_gemm._plans) == tiled_gemm.PLANS


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("route", ["tiled", "cublas"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_convolution_on_both_routes_matches_the_cpu(dtype, route, bias, relu, monkeypatch):
    """A convolution's product lands in (N, C, H, W) order with the bias (and ReLU) applied, whether
    the tiled kernel stores it so or cuBLAS's product is reordered after; its gradients (the tiled
    route: split over the long axis, gy read in place through the ReLU) match the CPU's."""
    F = tg.nn.functional
    if route == "cublas":
        monkeypatch.setattr(tiled_gemm, "TILED_WORK", 0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 33, 37)).astype(dtype)  # long enough to split the weights' product
    w = rng.standard_normal((5, 4, 3, 2)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if bias else None
    results = {}
    for device in ("cpu", "cuda"):
        tx, tw = (tg.Tensor(v, device=device, requires_grad=True) for v in (x, w))
        tb = tg.Tensor(b, device=device, requires_grad=True) if bias else None
        out = F._conv2d(tx, tw, tb, (2, 1), 1, 1, 1, relu=relu)
        out.backward(tg.Tensor(np.cos(np.arange(out.size)).reshape(out.shape).astype(dtype), device=device))
        grads = [t.grad.numpy() for t in (tx, tw, tb) if t is not None]
        results[device] = [out.numpy()] + grads
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for got, want in zip(results["cuda"], results["cpu"], strict=True):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
