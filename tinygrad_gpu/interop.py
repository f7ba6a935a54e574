"""Exchanging tensors with other array libraries through DLPack, without copies where possible."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import DeviceError, cupy_module, device_of
from .tensor import Tensor

_DLPACK_CPU, _DLPACK_CUDA, _DLPACK_CUDA_HOST, _DLPACK_CUDA_MANAGED = 1, 2, 3, 13


def from_dlpack(obj: Any, requires_grad: bool = False) -> Tensor:
    """A Tensor sharing memory with a DLPack producer (NumPy, CuPy, PyTorch, JAX arrays).

    CPU data becomes a "cpu" tensor and CUDA data a "cuda" one. float32 and float64 are shared;
    other dtypes are converted to float32 (a copy), as tg.Tensor does.
    """
    array = array_from_dlpack(obj, "from_dlpack")
    # stay where the data is: no copy
    return Tensor(array, requires_grad=requires_grad, device=device_of(array))


def array_from_dlpack(obj: Any, what: str) -> Any:
    """The NumPy (CPU) or CuPy (CUDA) array sharing memory with a DLPack producer, its dtype kept."""
    if not hasattr(obj, "__dlpack_device__") or not hasattr(obj, "__dlpack__"):
        raise TypeError(f"{what}: {type(obj).__name__} does not support DLPack "
                        "(it has no __dlpack__ / __dlpack_device__)")
    device_type = int(obj.__dlpack_device__()[0])
    if device_type in (_DLPACK_CPU, _DLPACK_CUDA_HOST):
        try:
            return np.from_dlpack(obj)
        except (BufferError, TypeError, RuntimeError) as exc:  # e.g. bfloat16, or a tensor that requires grad
            raise TypeError(f"{what}: {exc}") from None
    if device_type in (_DLPACK_CUDA, _DLPACK_CUDA_MANAGED):
        try:
            cupy = cupy_module()
        except DeviceError as exc:
            raise DeviceError(f"{what}: the data is on a CUDA device, but {exc}") from None
        try:
            return cupy.from_dlpack(obj)
        except (BufferError, TypeError, RuntimeError) as exc:
            raise TypeError(f"{what}: {exc}") from None
    raise TypeError(f"{what}: DLPack device type {device_type} is not supported (only CPU and CUDA memory)")
