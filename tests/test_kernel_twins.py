"""Every kernel row: the CUDA kernel and its NumPy twin agree (runs where a GPU is present).

The inputs (ordinary, around each row's domain, ±1e3, float limits, inf, NaN) and the per-row
tolerances are those of `python -m tinygrad_gpu.check_twins`, which prints the same comparison as a table.
"""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels, twins

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="needs CuPy and a CUDA GPU")


@pytest.mark.parametrize("name,dtype", [(name, dtype) for name in sorted(kernels.ROWS)
                                        for dtype in twins.row_dtypes(kernels.ROWS[name])])
@pytest.mark.parametrize("path", ["raw", "generic"])
def test_cuda_kernel_matches_numpy_twin(name, dtype, path, monkeypatch):
    # "raw": the library's own launches (small arrays in one block, large ones streamed);
    # "generic": CuPy's ElementwiseKernel / ReductionKernel built from the same rows
    monkeypatch.setattr(kernels, "RAW_LAUNCHES", path == "raw")
    monkeypatch.setattr(kernels, "STREAMING_MIN_SIZE", 700)
    result = twins.check_row(kernels.ROWS[name], dtype)
    assert result.ok, f"{name} ({np.dtype(dtype)}): {result.failures} elements out of {result.tolerance}; " \
                      f"worst: {result.example}"


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


@pytest.mark.parametrize("shape", [(3000, 5), (4096, 300), (700, 2, 3)])
def test_leading_axis_sums_split_into_chunks_match_numpy(shape):
    import cupy

    x = np.random.default_rng(3).standard_normal(shape)
    got = kernels.SUM(cupy.asarray(x), axis=(0,), keepdims=True, scale=0.5)
    np.testing.assert_allclose(cupy.asnumpy(got), 0.5 * x.sum(axis=0, keepdims=True), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cupy.asnumpy(kernels.MAX(cupy.asarray(x), axis=0)), x.max(axis=0))
