"""Tensor dtypes: their names, and PyTorch's rules for the dtype of a result of mixed operands."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int32 = np.dtype(np.int32)
int64 = np.dtype(np.int64)
bool_ = np.dtype(np.bool_)

FLOATS = (float32, float64)
SUPPORTED = (float32, float64, int32, int64, bool_)
_CATEGORY = {"b": 0, "i": 1, "u": 1, "f": 2}  # bool < integer < floating, as PyTorch ranks them


def resolve(dtype: Any, allowed: tuple = SUPPORTED, what: str = "dtype") -> np.dtype:
    """A NumPy dtype from a dtype, a NumPy type or a name, checked to be one of `allowed`."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{what} {dtype!r} is not a dtype; use one of {names(allowed)}") from exc
    if resolved not in allowed:
        raise TypeError(f"{what} {resolved} is not supported; use one of {names(allowed)}")
    return resolved


def names(dtypes: tuple) -> str:
    """'float32, float64, ...' for messages."""
    return ", ".join(d.name for d in dtypes)


def is_floating(dtype: np.dtype) -> bool:
    """True for float32 and float64."""
    return dtype.kind == "f"


def promote(a: np.dtype, b: np.dtype) -> np.dtype:
    """The dtype of an op on tensors of dtypes a and b: the higher kind wins (bool < int < float),
    within a kind the wider one (int64 + float32 gives float32, as in PyTorch)."""
    if a == b:
        return a
    ka, kb = _CATEGORY[a.kind], _CATEGORY[b.kind]
    if ka != kb:
        return a if ka > kb else b
    return a if a.itemsize >= b.itemsize else b


def promote_all(dtypes: Any) -> np.dtype:
    """promote() over several dtypes."""
    dtypes = iter(dtypes)
    result = next(dtypes)
    for d in dtypes:
        result = promote(result, d)
    return result


def with_scalar(dtype: np.dtype, value: Any) -> np.dtype:
    """The dtype of an op between a tensor of `dtype` and a Python number (the tensor's dtype unless
    the number is of a higher kind: a float with an int tensor gives float32, an int with a bool
    tensor int64)."""
    if isinstance(value, (bool, np.bool_)):
        return dtype
    if isinstance(value, numbers.Integral):
        return int64 if dtype.kind == "b" else dtype
    return dtype if dtype.kind == "f" else float32


def of_python_data(host: np.ndarray) -> np.dtype:
    """The dtype torch.tensor infers for Python data: bools stay bool, ints int64, floats float32."""
    kind = host.dtype.kind
    return bool_ if kind == "b" else int64 if kind in "iu" else float32
