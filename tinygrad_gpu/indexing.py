"""Checking an index key (t[...]) and class labels before they reach the device.

CuPy wraps out-of-range integer indices around instead of raising, so every index is checked
here: at once when it comes from the host, and on the device when it lives there (no read back:
device_checks raises at the next host read, as CUDA device-side asserts do).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import device_checks
from .backend import array_module, is_cupy_array, move, plain_array

_KEY_HELP = "use ints, slices, None, Ellipsis, and integer (or boolean) arrays, lists or Tensors"


def _as_index_array(item: Any, where: str) -> Any:
    """A NumPy or CuPy array of integers or booleans from a list, array or Tensor.

    A float index is an error, never reinterpreted: a 0/1 float mask would otherwise select
    elements 0 and 1 instead of the masked ones.
    """
    from .tensor import Tensor

    array = item.array if isinstance(item, Tensor) else plain_array(item, f"{where}: cannot index with")
    if not (isinstance(array, np.ndarray) or is_cupy_array(array)):
        array = np.asarray(array)
        if array.dtype.kind == "f" and array.size == 0:
            array = array.astype(np.int64)  # an empty list selects nothing
    if array.dtype.kind not in "iub":
        what = "Tensor" if isinstance(item, Tensor) else "array"
        hint = "; use a bool mask (e.g. x > 0) or convert with .long()" if array.dtype.kind == "f" else ""
        raise IndexError(f"{where}: an index {what} must hold integers or booleans, got dtype "
                         f"{array.dtype}{hint}")
    return array


class _Where:
    """The words naming an index in messages, formed only when one is raised (a Tensor key's repr
    would copy it to the host)."""

    def __init__(self, key: Any, shape: tuple) -> None:
        self.key, self.shape = key, shape

    def __format__(self, spec: str) -> str:
        from .tensor import Tensor

        items = self.key if isinstance(self.key, tuple) else (self.key,)
        shown = ", ".join(f"Tensor(shape={k.shape}, dtype={k.dtype})" if isinstance(k, Tensor) else repr(k)
                          for k in items)
        return f"index {shown if isinstance(self.key, tuple) else shown} of a tensor of shape {self.shape}"


def _check_range(array: Any, size: int, axis: int, where: Any) -> Any:
    message = f"{where}: index {{value}} is out of range for axis {axis} of size {size}"
    return device_checks.check_in_range(array, -size, size, IndexError, message)


def normalize_key(key: Any, shape: tuple, device: str) -> tuple[tuple, bool]:
    """A checked key for arrays of `shape` on `device`, and whether it holds index arrays."""
    from .tensor import Tensor

    where = _Where(key, shape)
    items = key if isinstance(key, tuple) else (key,)
    converted: list[Any] = []
    consumed = 0
    for item in items:
        if item is None or item is Ellipsis or isinstance(item, slice):
            if isinstance(item, slice):
                for bound in (item.start, item.stop, item.step):
                    if bound is not None and not isinstance(bound, (int, np.integer)):
                        raise TypeError(f"{where}: slice bounds must be ints or None, got {bound!r}")
                if item.step == 0:
                    raise ValueError(f"{where}: slice step cannot be zero")
                consumed += 1
            converted.append(item)
        elif isinstance(item, (bool, np.bool_)):
            raise TypeError(f"{where}: a single bool is not an index; {_KEY_HELP}")
        elif isinstance(item, (numbers.Integral, np.integer)):
            converted.append(int(item))
            consumed += 1
        elif isinstance(item, (list, tuple, np.ndarray, Tensor)) or is_cupy_array(item):
            array = _as_index_array(item, where)
            converted.append(array)
            consumed += array.ndim if array.dtype.kind == "b" else 1
        else:
            raise TypeError(f"{where}: cannot index with {type(item).__name__}; {_KEY_HELP}")
    if sum(item is Ellipsis for item in converted) > 1:
        raise IndexError(f"{where}: an index can only have a single Ellipsis (...)")
    if consumed > len(shape):
        raise IndexError(f"{where}: too many indices ({consumed}) for a tensor with {len(shape)} dimensions")

    checked: list[Any] = []
    advanced = False
    axis = 0
    for item in converted:
        if item is None:
            checked.append(item)
        elif item is Ellipsis:
            axis += len(shape) - consumed
            checked.append(item)
        elif isinstance(item, slice):
            axis += 1
            checked.append(item)
        elif isinstance(item, int):
            if not -shape[axis] <= item < shape[axis]:
                raise IndexError(f"{where}: index {item} is out of range for axis {axis} of size "
                                 f"{shape[axis]}")
            axis += 1
            checked.append(item)
        elif item.dtype.kind == "b":
            covered = shape[axis:axis + item.ndim]
            if item.shape != covered:
                raise IndexError(f"{where}: boolean index of shape {item.shape} does not match the "
                                 f"indexed dimensions {covered}")
            # a mask selects what its nonzero() positions select (NumPy's definition); how many
            # there are is a read back to the host
            device_checks.host_read(f"{where}: a boolean mask index", item)
            checked.extend(move(positions, device) for positions in item.nonzero())
            axis += item.ndim
            advanced = True
        else:
            item = _check_range(item, shape[axis], axis, where)
            checked.append(move(item.astype(np.int64), device))
            axis += 1
            advanced = True
    return tuple(checked), advanced


def class_labels(target: Any, n_classes: int, shape: tuple, device: str, where: str,
                 ignore_index: int | None = None) -> tuple[Any, Any]:
    """Class labels as an int64 array of `shape` on `device`, each checked to lie in [0, n_classes)
    or to equal ignore_index; and a bool array marking the counted (not ignored) labels, or None
    when every label counts. Ignored labels are replaced by 0 so that they index safely."""
    from .tensor import Tensor

    if isinstance(target, Tensor) or is_cupy_array(target):
        array = target.array if isinstance(target, Tensor) else target
        if array.dtype.kind not in "iuf":
            raise TypeError(f"{where}: class labels must be integers, got dtype {array.dtype}")
        array = device_checks.check_whole(
            array, TypeError, f"{where}: class labels must be whole numbers, got values such as {{value!r}}")
    else:
        array = np.asarray(plain_array(target, f"{where}: cannot take class labels from"))
        # whole floats are labels too; they are range-checked below before becoming int64
        whole_floats = array.dtype.kind == "f" and bool(np.all(np.isfinite(array)
                                                               & (array == np.round(array))))
        if array.dtype.kind not in "iu" and not whole_floats:
            raise TypeError(f"{where}: class labels must be integers, got dtype {array.dtype} "
                            "(pass a list, an integer array, or a Tensor of whole numbers)")
    if array.shape != shape:
        raise ValueError(f"{where}: target shape {array.shape} does not match the expected {shape}")
    counted = None
    if ignore_index is not None and array.size:
        ignored = array == ignore_index
        # device labels: the mask is used whether or not it ignores anything (knowing would need a read)
        if device_checks.deferred(array) or ignored.any():
            counted = ~ignored
            array = array * counted  # ignored labels become 0: they index row 0, weighted by 0
    # checked before the move (host labels: at once) and before the cast, which would wrap a huge
    # float label around
    array = device_checks.check_in_range(array, 0, n_classes, IndexError,
                                 f"{where}: class label {{value}} is out of range for {n_classes} classes")
    array, counted = move(array, device), None if counted is None else move(counted, device)
    return (array.astype(np.int64) if array.dtype != np.int64 else array), counted


def arange(n: int, device: str) -> Any:
    """0, 1, ..., n - 1 as an int64 array on `device`."""
    return array_module(device).arange(n, dtype=np.int64)

