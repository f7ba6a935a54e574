"""Every kernel row: the CUDA kernel and its NumPy twin agree (runs where a GPU is present)."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="needs CuPy and a CUDA GPU")

TOLERANCE = {np.float32: 2e-6, np.float64: 1e-13}


def _param_names(params):
    return [p.split()[-1] for p in params.split(",")]


@pytest.mark.parametrize("name", sorted(kernels.ROWS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_kernel_matches_numpy_twin(name, dtype):
    import cupy

    row = kernels.ROWS[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    low, high = row.domain
    args = [0.75 if n in row.scalars else rng.uniform(low, high, (33, 17)).astype(dtype)
            for n in _param_names(row.in_params)]
    on_gpu = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    if isinstance(row, kernels.Reduction):
        for axis in (None, 0, 1, (0, 1)):
            expected = row(args[0], axis=axis, keepdims=True)
            got = cupy.asnumpy(row(on_gpu[0], axis=axis, keepdims=True))
            np.testing.assert_allclose(got, expected, rtol=TOLERANCE[dtype] * 30, atol=1e-30)
        return
    outs = None
    if isinstance(row, kernels.Elementwise) and name in ("sgd_step", "sgd_momentum_step",
                                                          "adam_step", "adamw_step"):
        outs = [rng.uniform(low, high, (33, 17)).astype(dtype) for _ in range(row.n_outputs)]
    expected = row(*args, out=tuple(o.copy() for o in outs)) if outs else row(*args)
    got = row(*on_gpu, out=tuple(cupy.asarray(o) for o in outs)) if outs else row(*on_gpu)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got):
        assert g.dtype == dtype
        np.testing.assert_allclose(cupy.asnumpy(g), e, rtol=TOLERANCE[dtype], atol=1e-30)
