"""Making tensors, with PyTorch's module-level signatures: tg.tensor, tg.zeros, tg.arange, tg.full_like, ...

Each takes dtype=, device= and requires_grad= (only float tensors can require a gradient).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import backend
from . import dtypes as _dtypes
from .backend import array_module, is_cupy_array
from .memory import out_of_memory
from .tensor import Tensor, _check_grad_dtype, _real

_INTEGER_KINDS = "iu"


def tensor(data: Any, dtype: Any = None, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """A new tensor (a copy) of `data`, its dtype inferred as torch.tensor does.

    Python bools give bool, ints int64, floats float32; a NumPy/CuPy array or a Tensor keeps its
    dtype (other integer widths become int64, float16 float32). A CuPy array stays on the GPU
    unless `device` says otherwise.
    """
    if isinstance(data, Tensor):
        data = data.array
    if isinstance(data, np.ndarray) or is_cupy_array(data):
        inferred = (data.dtype if data.dtype in _dtypes.SUPPORTED else _dtypes.bool_ if data.dtype.kind == "b"
                    else _dtypes.int64 if data.dtype.kind in _INTEGER_KINDS else _dtypes.float32)
        data = data.copy()
    else:
        try:
            host = np.asarray(data)
        except ValueError as exc:
            raise ValueError(f"tensor: cannot make a tensor from a ragged nested list: {exc}") from None
        inferred = _dtypes.of_python_data(host) if host.dtype.kind in "biuf" else None
    wanted = _dtypes.resolve(dtype) if dtype is not None else inferred
    _check_grad_dtype(wanted if wanted is not None else _dtypes.float32, requires_grad)
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=wanted)


def _filled(where: str, shape: tuple, fill: Any, dtype: np.dtype, device: str | None,
            requires_grad: bool) -> Tensor:
    """A tensor of `shape` holding `fill`, made on the device itself."""
    shape = Tensor._shape(shape)
    _check_grad_dtype(dtype, requires_grad)
    device = backend.check_device(device) if device is not None else backend.default_device()
    try:
        array = array_module(device).full(shape, fill, dtype)
    except MemoryError as error:
        raise out_of_memory(error, device, f"{where}{shape}", math.prod(shape) * dtype.itemsize) from error
    return Tensor._from_array(array, requires_grad)


def zeros(*size: Any, dtype: Any = None, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros (float32 unless dtype says otherwise)."""
    return Tensor.zeros(*size, device=device, dtype=_dtypes.float32 if dtype is None else dtype,
                        requires_grad=requires_grad)


def ones(*size: Any, dtype: Any = None, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones (float32 unless dtype says otherwise)."""
    return Tensor.ones(*size, device=device, dtype=_dtypes.float32 if dtype is None else dtype,
                       requires_grad=requires_grad)


def _dtype_of_number(value: Any, where: str) -> np.dtype:
    """The dtype torch gives a tensor filled with `value`: bool, int64 or float32."""
    if isinstance(value, (bool, np.bool_)):
        return _dtypes.bool_
    if isinstance(value, (numbers.Integral, np.integer)):
        return _dtypes.int64
    if isinstance(value, numbers.Real):
        return _dtypes.float32
    raise TypeError(f"{where}: the fill value must be a real number, got {type(value).__name__}")


def full(size: Any, fill_value: Any, *, dtype: Any = None, device: str | None = None,
         requires_grad: bool = False) -> Tensor:
    """A tensor of `size` filled with fill_value (dtype inferred from it: bool, int64 or float32)."""
    inferred = _dtype_of_number(fill_value, "full")
    dtype = _dtypes.resolve(dtype) if dtype is not None else inferred
    size = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    return _filled("full", size, fill_value, dtype, device, requires_grad)


def arange(start: Any, end: Any = None, step: Any = 1, *, dtype: Any = None, device: str | None = None,
           requires_grad: bool = False) -> Tensor:
    """start, start + step, ... up to (not including) end; int64 when all are integers, else float32."""
    if end is None:
        start, end = 0, start
    for name, value in (("start", start), ("end", end), ("step", step)):
        if not isinstance(value, numbers.Real) or not math.isfinite(_real(value, f"arange: {name}")):
            raise ValueError(f"arange: {name} must be a finite real number, got {value!r}")
    if step == 0:
        raise ValueError("arange: step must not be zero")
    integral = all(isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)
                   for v in (start, end, step))
    dtype = _dtypes.resolve(dtype) if dtype is not None else _dtypes.int64 if integral else _dtypes.float32
    _check_grad_dtype(dtype, requires_grad)
    count = max(0, math.ceil((end - start) / step))
    if count >= 2 ** 62:
        raise ValueError(f"arange({start}, {end}, {step}) has more elements than any device can index")
    # made in float64 (or int64) on the host, then cast: the values are start + i * step exactly
    host = np.arange(start, end, step, dtype=np.int64 if integral else np.float64)
    return Tensor._factory(host.astype(dtype), device, requires_grad)


def linspace(start: float, end: float, steps: int, *, dtype: Any = None, device: str | None = None,
             requires_grad: bool = False) -> Tensor:
    """`steps` evenly spaced values from start to end, both included (float32 unless dtype says)."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"linspace: steps must be a non-negative int, got {steps!r}")
    low, high = _real(start, "linspace: start"), _real(end, "linspace: end")
    dtype = _dtypes.resolve(dtype) if dtype is not None else _dtypes.float32
    _check_grad_dtype(dtype, requires_grad)
    return Tensor._factory(np.linspace(low, high, int(steps)).astype(dtype), device, requires_grad)


def randn(*size: Any, dtype: Any = None, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples (float32 unless dtype says), from the generator seeded by manual_seed."""
    dtype = _dtypes.resolve(dtype if dtype is not None else _dtypes.float32, _dtypes.FLOATS, "randn: dtype")
    return Tensor.randn(*size, device=device, dtype=dtype, requires_grad=requires_grad)


def rand(*size: Any, dtype: Any = None, device: str | None = None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1) (float32 unless dtype says), from the generator seeded by manual_seed."""
    dtype = _dtypes.resolve(dtype if dtype is not None else _dtypes.float32, _dtypes.FLOATS, "rand: dtype")
    return Tensor.rand(*size, device=device, dtype=dtype, requires_grad=requires_grad)


def _like(where: str, input: Tensor, dtype: Any, device: str | None) -> tuple[np.dtype, str]:
    if not isinstance(input, Tensor):
        raise TypeError(f"{where}: takes a Tensor, got {type(input).__name__}")
    return (_dtypes.resolve(dtype) if dtype is not None else input.dtype,
            device if device is not None else input.device)


def zeros_like(input: Tensor, *, dtype: Any = None, device: str | None = None,
               requires_grad: bool = False) -> Tensor:
    """Zeros of input's shape, dtype and device (unless given)."""
    dtype, device = _like("zeros_like", input, dtype, device)
    return _filled("zeros_like", input.shape, 0, dtype, device, requires_grad)


def ones_like(input: Tensor, *, dtype: Any = None, device: str | None = None,
              requires_grad: bool = False) -> Tensor:
    """Ones of input's shape, dtype and device (unless given)."""
    dtype, device = _like("ones_like", input, dtype, device)
    return _filled("ones_like", input.shape, 1, dtype, device, requires_grad)


def full_like(input: Tensor, fill_value: Any, *, dtype: Any = None, device: str | None = None,
              requires_grad: bool = False) -> Tensor:
    """fill_value in input's shape, dtype and device (unless given)."""
    _dtype_of_number(fill_value, "full_like")
    dtype, device = _like("full_like", input, dtype, device)
    return _filled("full_like", input.shape, fill_value, dtype, device, requires_grad)
