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
    if not hasattr(obj, "__dlpack_device__") or not hasattr(obj, "__dlpack__"):
        raise TypeError(f"from_dlpack: {type(obj).__name__} does not support DLPack "
                        "(it has no __dlpack__ / __dlpack_device__)")
    device_type = int(obj.__dlpack_device__()[0])
    if device_type in (_DLPACK_CPU, _DLPACK_CUDA_HOST):
        try:
            array = np.from_dlpack(obj)
        except BufferError as exc:  # e.g. an object array: DLPack carries numbers only
            raise TypeError(f"from_dlpack: {exc}") from None
    elif device_type in (_DLPACK_CUDA, _DLPACK_CUDA_MANAGED):
        try:
            cupy = cupy_module()
        except DeviceError as exc:
            raise DeviceError(f"from_dlpack: the data is on a CUDA device, but {exc}") from None
        array = cupy.from_dlpack(obj)
    else:
        raise TypeError(f"from_dlpack: DLPack device type {device_type} is not supported "
                        "(only CPU and CUDA memory)")
    # stay where the data is: no copy
    return Tensor(array, requires_grad=requires_grad, device=device_of(array))
