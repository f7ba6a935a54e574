"""Out of memory: tg.OutOfMemoryError names the size asked for and what is in use; the process goes on."""

import gc
import types

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels

needs_gpu = pytest.mark.skipif(not tg.cuda_available(), reason="needs CuPy and a CUDA GPU")


class FakeCupyOutOfMemory(MemoryError):
    """Shaped like cupy.cuda.memory.OutOfMemoryError: it knows the size it was asked for."""

    def __init__(self, size):
        self._size = size
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: 0 bytes).")


class FakeDeviceArray:
    """Stands in for a large cupy.ndarray, so that the kernel table takes its GPU branches."""

    ndim, shape, size, dtype = 2, (4096, 4096), 4096 * 4096, np.dtype(np.float32)
    strides, itemsize = (4096 * 4, 4), 4

    def __init__(self, contiguous=True):
        self.flags = types.SimpleNamespace(c_contiguous=contiguous)
        self._c_contiguous = contiguous  # CuPy's own flag, which the GPU paths read


def _failing_launch(*args, **kwargs):
    raise FakeCupyOutOfMemory(2**32)


def test_error_is_a_runtime_and_a_memory_error():
    assert issubclass(tg.OutOfMemoryError, RuntimeError) and issubclass(tg.OutOfMemoryError, MemoryError)


@pytest.mark.parametrize("launch", ["raw", "generic"])
def test_elementwise_allocation_failure_names_kernel_and_size(monkeypatch, launch):
    if launch == "raw":
        monkeypatch.setattr(kernels, "_streaming_elementwise", _failing_launch)
    else:  # the raw launch declines; CuPy's generic kernel runs out of memory
        monkeypatch.setattr(kernels, "_streaming_elementwise", lambda *args: None)
        monkeypatch.setattr(kernels.ADD, "_kernel", _failing_launch)
    with pytest.raises(tg.OutOfMemoryError) as info:
        kernels.ADD(FakeDeviceArray(), FakeDeviceArray())
    message = str(info.value)
    assert "add kernel: out of memory on cuda asking for 4.00 GiB (4,294,967,296 bytes)" in message
    assert "Free tensors" in message and isinstance(info.value.__cause__, FakeCupyOutOfMemory)


@pytest.mark.parametrize("launch", ["raw", "generic"])
def test_reduction_allocation_failure_names_kernel_and_size(monkeypatch, launch):
    monkeypatch.setattr(kernels, "_streaming_reduction", _failing_launch)
    monkeypatch.setattr(kernels.SUM, "_kernel", _failing_launch)
    with pytest.raises(tg.OutOfMemoryError, match=r"sum kernel: out of memory on cuda asking for 4.00 GiB"):
        kernels.SUM(FakeDeviceArray(contiguous=launch == "raw"))


def test_matmul_allocation_failure_names_size(monkeypatch):
    def failing_gemm(a, b):  # cuBLAS's output cannot be allocated
        raise FakeCupyOutOfMemory(3 * 2**30)

    monkeypatch.setattr(kernels.blas, "gemm", failing_gemm)
    with pytest.raises(tg.OutOfMemoryError, match=r"matmul: out of memory on cuda asking for 3.00 GiB"):
        kernels.matmul(FakeDeviceArray(), FakeDeviceArray())


def test_factory_asking_for_too_much_fails_cleanly_and_the_process_goes_on(device):
    # 800 TB: more than any machine has, and more than a 47-bit address space can even reserve
    with pytest.raises(tg.OutOfMemoryError) as info:
        tg.Tensor.zeros(10**7, 10**7, dtype=np.float64, device=device)
    message = str(info.value)
    assert f"Tensor.zeros(10000000, 10000000): out of memory on {device}" in message
    assert "727.60 TiB (800,000,000,000,000 bytes)" in message
    if device == "cuda":
        assert "in use by arrays" in message and "from the driver" in message
    x = tg.Tensor.ones(1000, device=device, requires_grad=True)
    (x * 2.0).sum().backward()
    assert x.grad.numpy().sum() == 2000.0


@needs_gpu
def test_gpu_kernel_out_of_memory_then_free_and_go_on():
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    free, _ = cupy.cuda.runtime.memGetInfo()
    big = tg.Tensor.zeros(int(free * 0.6) // 4, device="cuda")  # a second one cannot fit
    with pytest.raises(tg.OutOfMemoryError) as info:
        big + 1.0
    message = str(info.value)
    assert "add kernel: out of memory on cuda asking for" in message and "in use by arrays" in message
    del big, info
    gc.collect()
    pool.free_all_blocks()
    x = tg.Tensor.ones(10_000, device="cuda")
    assert (x + 1.0).sum().item() == 20_000.0
