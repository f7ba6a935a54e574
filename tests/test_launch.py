"""Prepared launches: every kind of argument reaches the kernel as a RawKernel call passes it."""

import threading

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import launch
from tinygrad_gpu.launch import Prepared

gpu = pytest.mark.skipif(not tg.cuda_available(), reason="launches kernels on the GPU")

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


@gpu
@pytest.mark.parametrize("grid,block", [((1,), (32,)), (1, 32), ((1, 1), (32, 1)), ((1, 1, 1), (32, 1, 1))])
def test_every_argument_kind_arrives(grid, block):
    kernel = Prepared.kernel(SOURCE, "tg_test_arguments")
    np.testing.assert_array_equal(launch_and_read(kernel, grid, block), expected())


@gpu
def test_a_module_function_and_a_new_thread_launch_too():
    (kernel,) = Prepared.module(SOURCE, "tg_test_arguments")
    np.testing.assert_array_equal(launch_and_read(kernel), expected())
    results = []
    worker = threading.Thread(target=lambda: results.append(launch_and_read(kernel)))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(results[0], expected())  # its own context made current first


@gpu
def test_an_argument_it_cannot_pass_is_named():
    kernel = Prepared.kernel(SOURCE, "tg_test_arguments")
    with pytest.raises(TypeError, match="of type str"):
        kernel((1,), (32,), ("not a number",))


def test_every_prepared_kernel_first_waits_for_the_grid_it_follows():
    source = """
extern "C" __global__ void first(float* a) { a[0] = 1; }
extern "C" __global__ void __launch_bounds__(128)
second(const float* a, float* b) {
  __shared__ float s[4];
  b[0] = a[0];
}
"""
    changed, found = launch.awaiting(source, ("second",))
    assert found
    assert "void first(float* a) { a[0] = 1; }" in changed  # only the named kernel
    assert "second(const float* a, float* b) { TG_AWAIT_PREVIOUS();\n  __shared__" in changed
    assert changed.startswith(launch.AWAIT_PREVIOUS)  # the macro defined before its use
    assert launch.awaiting(source, ("third",))[1] is False  # not found: launched the ordinary way


CHAIN = r"""
extern "C" __global__ void tg_test_chain_step(const float* src, float* dst, long long n, int spin) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = src[(i * 7919) % n];  // a value another block of the previous kernel wrote
  for (int k = 0; k < spin; ++k) v = v * 0.999f + 0.001f;  // slow the kernel down
  dst[i] = v + 1.0f;
}
"""


@gpu
def test_a_captured_chain_of_prepared_kernels_reads_what_each_one_before_wrote(monkeypatch):
    cp = tg.backend.cupy_module()
    kernel = Prepared.kernel(CHAIN, "tg_test_chain_step")
    assert kernel.awaits
    chained = []
    original = launch._launch_chained
    monkeypatch.setattr(launch, "_launch_chained", lambda *a: (chained.append(a), original(*a)))
    n, steps = 1 << 16, 12

    def run(buffers, sync):
        for k in range(steps):
            kernel((n // 256,), (256,), (buffers[k % 2], buffers[(k + 1) % 2], n, 200))
            if sync:
                cp.cuda.get_current_stream().synchronize()

    expected = [cp.arange(n, dtype=cp.float32), cp.zeros(n, cp.float32)]
    run(expected, sync=True)  # ordinary launches, one kernel at a time
    buffers = [cp.arange(n, dtype=cp.float32), cp.zeros(n, cp.float32)]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream, launch.chained_launches():
        stream.begin_capture()
        run(buffers, sync=False)
        graph = stream.end_capture()
    graph.launch(stream)
    stream.synchronize()
    if launch._chainable_devices():
        assert len(chained) == steps  # every launch of the capture was a chained one
    np.testing.assert_array_equal(cp.asnumpy(buffers[steps % 2]), cp.asnumpy(expected[steps % 2]))
