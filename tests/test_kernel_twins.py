"""Every kernel row: the CUDA kernel and its NumPy twin agree (runs where a GPU is present).

The inputs (ordinary, around each row's domain, ±1e3, float limits, inf, NaN) and the per-row
tolerances are those of `python -m tinygrad_gpu.check_twins`, which prints the same comparison as a table.
"""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels, twins

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="needs CuPy and a CUDA GPU")


@pytest.mark.parametrize("name", sorted(kernels.ROWS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_kernel_matches_numpy_twin(name, dtype):
    result = twins.check_row(kernels.ROWS[name], dtype)
    assert result.ok, f"{name} ({np.dtype(dtype)}): {result.failures} elements out of {result.tolerance}; " \
                      f"worst: {result.example}"
