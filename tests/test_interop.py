"""Moving data in and out: NumPy's __array__, DLPack with NumPy, CuPy and PyTorch (where installed)."""

import numpy as np
import pytest

import tinygrad_gpu as tg

try:
    import torch
except ImportError:  # PyTorch is optional
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
needs_gpu = pytest.mark.skipif(not tg.cuda_available(), reason="CuPy with a CUDA GPU is not available")


def test_np_asarray_shares_a_cpu_tensor_and_refuses_a_gpu_one(device):
    t = tg.Tensor([1.0, 2.0, 3.0], device=device)
    if device == "cuda":
        with pytest.raises(TypeError, match=r"on 'cuda'.*call \.numpy\(\)"):
            np.asarray(t)
        return
    view = np.asarray(t)
    view[0] = 10.0  # the same memory
    assert t.tolist() == [10.0, 2.0, 3.0]
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    copied = np.array(t, copy=True)
    copied[1] = -1.0
    assert t.tolist()[1] == 2.0
    np.testing.assert_allclose(np.sqrt(np.asarray(t)), np.sqrt([10.0, 2.0, 3.0]), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dlpack_round_trip_with_numpy_shares_memory(dtype):
    t = tg.Tensor(np.arange(6.0).reshape(2, 3), device="cpu", dtype=dtype)
    assert t.__dlpack_device__() == (1, 0)
    exported = np.from_dlpack(t)
    assert exported.dtype == dtype and np.shares_memory(exported, t.array)
    source = np.linspace(0, 1, 5).astype(dtype)
    imported = tg.from_dlpack(source)
    assert imported.device == "cpu" and imported.dtype == dtype and np.shares_memory(imported.array, source)
    source[0] = 42.0
    assert imported.tolist()[0] == 42.0


def test_from_dlpack_converts_integers_and_rejects_other_objects():
    ints = tg.from_dlpack(np.arange(3))
    assert ints.dtype == np.float32 and ints.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match="list does not support DLPack"):
        tg.from_dlpack([1.0, 2.0])


def test_from_dlpack_result_trains(device):
    w = tg.from_dlpack(np.array([1.0, -1.0]), requires_grad=True).to(device)
    (w * w).sum().backward()
    assert w.requires_grad


@needs_torch
def test_dlpack_exchange_with_pytorch_shares_memory():
    t = tg.Tensor([1.0, 2.0, 3.0], device="cpu")
    as_torch = torch.from_dlpack(t)
    as_torch[1] = 20.0
    assert t.tolist() == [1.0, 20.0, 3.0]
    source = torch.arange(4, dtype=torch.float64)
    back = tg.from_dlpack(source)
    assert back.dtype == np.float64
    source[0] = -5.0
    assert back.tolist() == [-5.0, 1.0, 2.0, 3.0]


@needs_gpu
def test_cupy_arrays_are_shared_both_ways():
    import cupy

    source = cupy.arange(4, dtype=cupy.float32)
    wrapped = tg.Tensor(source)
    assert wrapped.device == "cuda" and wrapped.array.data.ptr == source.data.ptr
    assert wrapped.__dlpack_device__()[0] == 2
    exported = cupy.from_dlpack(wrapped)
    assert exported.data.ptr == source.data.ptr
    imported = tg.from_dlpack(source)
    assert imported.device == "cuda" and imported.array.data.ptr == source.data.ptr
    source[0] = 9.0
    assert imported.tolist()[0] == 9.0 and wrapped.tolist()[0] == 9.0


@needs_gpu
@needs_torch
def test_dlpack_exchange_with_pytorch_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA")
    source = torch.arange(3, dtype=torch.float32, device="cuda")
    imported = tg.from_dlpack(source)
    assert imported.device == "cuda" and imported.array.data.ptr == source.data_ptr()
    exported = torch.from_dlpack(imported)
    assert exported.data_ptr() == source.data_ptr()
