"""Functions of several tensors: tg.where, tg.cat, tg.stack, and comparisons and logical ops (tg.eq, ...)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import ops
from .backend import DeviceError, default_device, device_of, is_cupy_array, move
from .dtypes import promote_all, with_scalar
from .tensor import Tensor, _cast, _pick, _real, is_integer


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """Elementwise `a` where `condition` is true (nonzero), else `b`, with NumPy broadcasting.

    The condition (a Tensor, a NumPy/CuPy array or a nested list) gets no gradient; `a` and `b`
    may be tensors, arrays or Python numbers. Example: ``tg.where(x > 0, x, 0.1 * x)``.
    """
    tensors = [v for v in (a, b, condition) if isinstance(v, Tensor)]
    if isinstance(condition, Tensor):
        mask, device = condition.array, condition.device
    elif isinstance(condition, np.ndarray) or is_cupy_array(condition):
        mask, device = condition, device_of(condition)
    else:
        mask, device = np.asarray(condition), default_device()
    device = tensors[0].device if tensors else device
    if isinstance(condition, Tensor) and condition.device != device:
        raise DeviceError(f"where: the condition is on {condition.device!r} but the values are on "
                           f"{device!r}; move one with .to(device)")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"where: the condition must hold booleans or numbers, got dtype {mask.dtype}")
    operands = [value if isinstance(value, Tensor)
                else value if isinstance(value, (numbers.Integral, np.integer))
                else _real(value, "where: value") if isinstance(value, numbers.Real)
                and not isinstance(value, np.ndarray)
                else Tensor(value, device=device) for value in (a, b)]
    if not any(isinstance(v, Tensor) for v in operands):  # two numbers: a tensor of the first's dtype
        kind = "b" if isinstance(a, bool) else "i" if isinstance(a, numbers.Integral) else "f"
        operands[0] = Tensor(operands[0], device=device, dtype={"b": np.bool_, "i": np.int64}.get(kind))
    dtype = promote_all(v.dtype for v in operands if isinstance(v, Tensor))
    for v in operands:
        if not isinstance(v, Tensor):
            dtype = with_scalar(dtype, v)
    # the values in one dtype (PyTorch's promotion); int and bool operands never need a gradient
    number = ((lambda v: _real(v, "where: value")) if dtype.kind == "f"
              else int if dtype.kind in "iu" else bool)
    operands = [(v._cast_to(dtype) if v.dtype.kind != "f" else v) if isinstance(v, Tensor) else number(v)
                for v in operands]
    mask = move(mask, device)
    if mask.dtype != dtype:
        mask = _cast(mask, dtype)  # in the operands' dtype (the kernel row has one type T); only != 0 counts
    try:
        return ops.Where.apply(mask, *operands)
    except ValueError:
        shape = lambda v: v.shape if isinstance(v, Tensor) else "scalar"  # noqa: E731
        raise ValueError(f"where: cannot broadcast condition shape {mask.shape} with shapes "
                         f"{shape(operands[0])} and {shape(operands[1])}") from None


def _tensor_list(name: str, tensors: Sequence[Tensor]) -> list[Tensor]:
    """The tensors to join as a list: at least one, each a Tensor."""
    # NOTE: a Tensor is iterable (its rows), so list() would quietly take it for a sequence
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name}: expects a sequence (list or tuple) of Tensors, "
                        f"got {type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{name}: needs at least one tensor")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: takes Tensors, got {type(t).__name__}")
    return tensors


def cat(tensors: Sequence[Tensor], dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """Join tensors along an existing dim (or axis; 0 by default); all other dimensions must agree."""
    axis = _pick("cat", dim, axis)
    axis = 0 if axis is None else axis
    tensors = _tensor_list("cat", tensors)
    first = tensors[0]
    if first.ndim == 0:
        raise ValueError("cat: 0-d tensors cannot be joined; use tg.stack")
    if not is_integer(axis) or not -first.ndim <= axis < first.ndim:
        raise ValueError(f"cat: axis {axis} is out of range for tensors of shape {first.shape}")
    axis = int(axis) % first.ndim
    for t in tensors[1:]:
        if t.ndim != first.ndim or any(n != m for i, (n, m) in enumerate(zip(t.shape, first.shape))
                                       if i != axis):
            raise ValueError(f"cat: shapes {first.shape} and {t.shape} differ outside axis {axis}")
    if len(tensors) == 1:
        return first
    return ops.Concatenate.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """Join same-shaped tensors along a new dim (or axis; 0 by default)."""
    axis = _pick("stack", dim, axis)
    axis = 0 if axis is None else axis
    tensors = _tensor_list("stack", tensors)
    for t in tensors:
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: every tensor needs the same shape, got {tensors[0].shape} "
                             f"and {t.shape}")
    ndim = tensors[0].ndim + 1
    if not is_integer(axis) or not -ndim <= axis < ndim:
        raise ValueError(f"stack: axis {axis} is out of range for the result's {ndim} dimensions")
    return cat([t.unsqueeze(int(axis) % ndim) for t in tensors], axis=int(axis) % ndim)


def _first(where: str, input: Any) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{where}: the first argument must be a Tensor, got {type(input).__name__}")
    return input


def eq(input: Tensor, other: Any) -> Tensor:
    """input == other, elementwise, as a bool tensor."""
    return _first("eq", input).eq(other)


def ne(input: Tensor, other: Any) -> Tensor:
    """input != other, elementwise, as a bool tensor."""
    return _first("ne", input).ne(other)


def gt(input: Tensor, other: Any) -> Tensor:
    """input > other, elementwise, as a bool tensor."""
    return _first("gt", input).gt(other)


def ge(input: Tensor, other: Any) -> Tensor:
    """input >= other, elementwise, as a bool tensor."""
    return _first("ge", input).ge(other)


def lt(input: Tensor, other: Any) -> Tensor:
    """input < other, elementwise, as a bool tensor."""
    return _first("lt", input).lt(other)


def le(input: Tensor, other: Any) -> Tensor:
    """input <= other, elementwise, as a bool tensor."""
    return _first("le", input).le(other)


def logical_and(input: Tensor, other: Any) -> Tensor:
    """Elementwise 'both nonzero', as a bool tensor."""
    return _first("logical_and", input).logical_and(other)


def logical_or(input: Tensor, other: Any) -> Tensor:
    """Elementwise 'either nonzero', as a bool tensor."""
    return _first("logical_or", input).logical_or(other)


def logical_xor(input: Tensor, other: Any) -> Tensor:
    """Elementwise 'exactly one nonzero', as a bool tensor."""
    return _first("logical_xor", input).logical_xor(other)


def logical_not(input: Tensor) -> Tensor:
    """Elementwise 'is zero', as a bool tensor."""
    return _first("logical_not", input).logical_not()
