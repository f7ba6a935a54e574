"""Prepared launches: every kind of argument reaches the kernel as a RawKernel call passes it."""

import threading

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu.launch import Prepared

pytestmark = pytest.mark.skipif(not tg.cuda_available(), reason="launches kernels on the GPU")

SOURCE = r"""
extern "C" __global__ void tg_test_arguments(const float* a, double* out, int i32, long long i64,
                                             float f32, double f64, unsigned int u32, short i16,
                                             bool flag, long long python_int, double python_float) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k == 0) {
    out[0] = a[0]; out[1] = a[1]; out[2] = i32; out[3] = (double)i64; out[4] = f32; out[5] = f64;
    out[6] = u32; out[7] = i16; out[8] = flag ? 1.0 : 0.0; out[9] = (double)python_int;
    out[10] = python_float;
  }
}
"""
ARGUMENTS = (np.int32(-7), np.int64(2**40 + 3), np.float32(1.5), np.float64(-2.25), np.uint32(4000000000),
             np.int16(-300), np.bool_(True), 2**33 + 1, 0.125)


def launch_and_read(kernel, grid=(1,), block=(32,)):
    cp = tg.backend.cupy_module()
    a = cp.asarray([3.5, -1.0], cp.float32)
    out = cp.zeros(11, cp.float64)
    kernel(grid, block, (a, out, *ARGUMENTS))
    return out.get()


def expected():
    return np.array([3.5, -1.0, -7, 2**40 + 3, 1.5, -2.25, 4000000000, -300, 1.0, 2**33 + 1, 0.125])


@pytest.mark.parametrize("grid,block", [((1,), (32,)), (1, 32), ((1, 1), (32, 1)), ((1, 1, 1), (32, 1, 1))])
def test_every_argument_kind_arrives(grid, block):
    kernel = Prepared.kernel(SOURCE, "tg_test_arguments")
    np.testing.assert_array_equal(launch_and_read(kernel, grid, block), expected())


def test_a_module_function_and_a_new_thread_launch_too():
    cp = tg.backend.cupy_module()
    kernel = Prepared.from_module(cp.RawModule(code=SOURCE), "tg_test_arguments")
    np.testing.assert_array_equal(launch_and_read(kernel), expected())
    results = []
    worker = threading.Thread(target=lambda: results.append(launch_and_read(kernel)))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(results[0], expected())  # its own context made current first


def test_an_argument_it_cannot_pass_is_named():
    kernel = Prepared.kernel(SOURCE, "tg_test_arguments")
    with pytest.raises(TypeError, match="of type str"):
        kernel((1,), (32,), ("not a number",))
