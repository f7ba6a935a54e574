"""In-place ops (add_, mul_, fill_, copy_, x[idx] = v, ...): results written into a tensor's own memory.

Each op is checked completely before anything is written. Then one of two things happens:
- nothing to record (inside no_grad, or no operand requires grad): the result is written straight
  into the tensor's array, one kernel launch with `out=` on the GPU, and the storage's version is
  bumped so that graphs which saved the old values refuse backward();
- something to record: the out-of-place result is computed by the recorded ops from a handle on the
  tensor's previous value (which keeps the old graph node), copied into the tensor's array, and the
  tensor is rebased onto the new node (PyTorch's behaviour: `y.add_(1)` gives y a new grad_fn).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from . import dtypes as _dtypes
from . import kernels as K
from .backend import DeviceError, array_module, move
from .function import grad_mode, memory_root, no_grad, recording

# a result may be written into a tensor of its own or a higher kind (PyTorch's can_cast)
_KIND_ORDER = {"b": 0, "u": 1, "i": 1, "f": 2}


class InPlaceDtypeError(TypeError, RuntimeError):
    """An in-place result whose dtype cannot be written into the tensor (e.g. a float into an int tensor)."""


class InPlaceShapeError(ValueError, RuntimeError):
    """An in-place operand that does not broadcast to the tensor's own shape (self is never broadcast)."""


class InPlaceWrite:
    """What an in-place op leaves on tg.fuse's trace: a write no generated kernel reproduces."""


def can_cast(source: np.dtype, target: np.dtype) -> bool:
    """True when a result of dtype `source` may be written into a tensor of dtype `target`."""
    return _KIND_ORDER[source.kind] <= _KIND_ORDER[target.kind]


# ---- checks ---------------------------------------------------------------------------------
def _is_view_in_graph(t: Any) -> bool:
    """True when t was recorded as a view of another tensor's memory (t = base[0], base.reshape(...))."""
    ctx = t._ctx
    if ctx is None or not ctx.may_view_input or t._counter is None:
        return False
    if ctx.released:  # the base is forgotten: count it as a view (view_chain says why it cannot go on)
        return True
    base = ctx.inputs[0]
    return t._counter is getattr(base, "_counter", None)


def check_target(t: Any, what: str, operands: tuple = ()) -> None:
    """Raise unless t may be changed in place by `what` with these tensor operands (nothing is changed)."""
    t._check_writable(what)
    if not grad_mode.enabled:
        return
    if t.requires_grad and t._ctx is None:
        raise RuntimeError(f"{what}: a leaf Variable that requires grad is being used in an in-place "
                           f"operation (tensor of shape {t.shape}); update parameters inside "
                           "`with tg.no_grad():`, or work on a copy (t * 1, t.detach())")
    if t.requires_grad:
        view_chain(t, what)  # raises for views it cannot write through
    elif (any(o.requires_grad for o in operands) and t._counter is not None
          and getattr(t.array, "base", None) is not None):
        # a view taken without recording (its base needs no gradient): the base could not learn
        # that part of it now depends on the operand, so its gradient would be silently wrong
        raise RuntimeError(f"{what}: writing a value that requires grad into a view (shape {t.shape}) of "
                           "a tensor outside the graph is not supported; assign through the tensor "
                           "itself (base[index] = value), which is recorded")


def view_chain(t: Any, what: str) -> tuple[list, Any]:
    """The views from t up to the tensor owning their memory in the graph: ([(view, its node), ...], base)."""
    from . import ops

    chain = []
    while _is_view_in_graph(t):
        ctx = t._ctx
        if ctx.released:
            raise RuntimeError(f"{what}: the graph of this view (shape {t.shape}) was freed by backward(); "
                               "take the view again before changing it in place")
        if not isinstance(ctx, (ops.Index, ops.Reshape, ops.Transpose)):
            raise RuntimeError(f"{what}: in-place change of a view made by {ctx.name} (shape {t.shape}) "
                               "of a tensor in a graph is not supported; assign through the tensor itself")
        chain.append((t, ctx))
        t = ctx.inputs[0]
    if chain and t.requires_grad and t._ctx is None:
        raise RuntimeError(f"{what}: a view of a leaf Variable that requires grad is being used in an "
                           f"in-place operation (view of shape {chain[0][0].shape} of a leaf of shape "
                           f"{t.shape}); change it inside `with tg.no_grad():`")
    return chain, t


def _records(t: Any, operands: tuple) -> bool:
    """True when the in-place op must be recorded in the graph."""
    return grad_mode.enabled and (t.requires_grad or any(o.requires_grad for o in operands))


def check_device(t: Any, what: str, other: Any) -> None:
    """DeviceError unless the tensor operand `other` is on t's device."""
    if other.device != t.device:
        raise DeviceError(f"{what}: the tensor of shape {t.shape} is on {t.device!r}, the operand of shape "
                          f"{other.shape} on {other.device!r}; move it with .to({t.device!r})")


def check_fits(t: Any, what: str, shape: tuple, target: tuple | None = None) -> None:
    """InPlaceShapeError unless an operand of `shape` broadcasts to `target` (t's shape by default)."""
    target = t.shape if target is None else target
    try:
        fits = np.broadcast_shapes(shape, target) == target
    except ValueError:
        fits = False
    if not fits:
        raise InPlaceShapeError(f"{what}: an operand of shape {shape} does not broadcast to the shape "
                                f"{target} being written (an in-place result keeps the tensor's shape)")


def check_result_dtype(t: Any, what: str, dtype: np.dtype) -> None:
    """InPlaceDtypeError unless a result of `dtype` may be written into t."""
    if not can_cast(dtype, t.dtype):
        raise InPlaceDtypeError(f"{what}: the result type {dtype} can't be cast to the tensor's dtype "
                                f"{t.dtype} (shape {t.shape}); convert the tensor first (e.g. .float())")


def result_dtype(t: Any, operands: tuple, floating: bool = False) -> np.dtype:
    """The dtype PyTorch gives `t op operands...` (numbers and tensors)."""
    from .tensor import Tensor

    dtype = _dtypes.promote_all([t.dtype, *(o.dtype for o in operands if isinstance(o, Tensor))])
    for o in operands:
        if not isinstance(o, Tensor):
            dtype = _dtypes.with_scalar(dtype, o)
    return _dtypes.float32 if floating and dtype.kind != "f" else dtype


def tensor_operand(t: Any, what: str, value: Any) -> Any:
    """value as a Tensor on t's device (numbers, lists and arrays are converted; tensors are checked)."""
    from .tensor import Tensor

    if isinstance(value, Tensor):
        check_device(t, what, value)
        return value
    if isinstance(value, (bool, np.bool_, numbers.Number)) and not isinstance(value, numbers.Real):
        raise TypeError(f"{what}: only real numbers can be written into a tensor, got {type(value).__name__}")
    return Tensor(value, device=t.device, dtype=t.dtype)


def number_in_dtype(what: str, value: Any, dtype: np.dtype) -> Any:
    """A Python number as a NumPy scalar of `dtype`, converted as a cast would convert it (floats
    beyond float32 become inf, floats into integers truncate); an integer must fit an integer dtype."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if not info.min <= int(value) <= info.max:
                raise ValueError(f"{what}: the number {value} does not fit the tensor's dtype {dtype} "
                                 f"(from {info.min} to {info.max})")
            return dtype.type(int(value))
        if dtype.kind == "f":
            from .tensor import _real

            value = _real(value, f"{what}: the number")  # a huge int is an error, not an object array
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(value).astype(dtype)[()]


# ---- writing --------------------------------------------------------------------------------
def write_row(row: K.Elementwise, target: Any, *args: Any) -> None:
    """Run `row` on args and put the result into target's memory (on the GPU one launch, no new array)."""
    if isinstance(target, np.ndarray):
        np.copyto(target, row(*args), casting="unsafe")
    else:
        row(*args, out=(target,))


def copy_into(target: Any, source: Any) -> None:
    """Copy (broadcast and cast) source's values into target's memory; out-of-range casts are silent."""
    xp = array_module("cpu" if isinstance(target, np.ndarray) else "cuda")
    if xp is not np and memory_root(source) is memory_root(target) and source is not target:
        source = source.copy()  # overlapping views: a GPU copy could read what it has already written
    with np.errstate(over="ignore", invalid="ignore"):
        xp.copyto(target, source, casting="unsafe")


def separate(t: Any, value: Any) -> Any:
    """value, copied when it is another view of t's memory (a kernel reading it while writing t races)."""
    if hasattr(value, "shape") and value is not t.array and memory_root(value) is memory_root(t.array):
        return value.copy()
    return value


def rebase(t: Any, compute: Callable[[Any], Any], needs_old_value: bool) -> None:
    """Record `compute` on t's previous value, write its result into t's memory and make t its output.

    The previous value is a handle holding t's old graph node. When the new node's backward needs
    the old values (mul_ by a tensor that requires grad, pow_, clamp_) the handle gets a copy, since
    t's memory is about to be overwritten. When t is a view of another tensor's memory, that tensor
    (the base) is what is rebased: its new value is its old one with the view's part replaced (as
    base[key] = new part would record), and the views between are taken again from it.
    """
    from .tensor import Tensor

    chain, base = view_chain(t, "in-place op")
    previous = Tensor._from_array(base.array.copy() if needs_old_value else base.array, base.requires_grad)
    previous._ctx = base._ctx
    olds = [previous]  # the old value of the base, then of each view down to t
    for view, ctx in reversed(chain):
        olds.append(_view_again(ctx, olds[-1], view.shape))
    result = compute(olds[-1])
    if result.dtype != t.dtype:
        result = result._cast_to(t.dtype)  # recorded between float dtypes: the gradient comes back cast
    for (_, ctx), old_source in zip(chain, reversed(olds[:-1])):
        result = _written_through(ctx, old_source, result)
    copy_into(base.array, result.array)
    base._bump_version()  # graphs that saved the old values (e.g. exp's output) refuse backward()
    base._ctx, base.requires_grad = result._ctx, result.requires_grad
    source = base
    for view, ctx in reversed(chain):  # each view: the same view of its (new) source, same memory
        again = _view_again(ctx, source, view.shape)
        view._ctx, view.requires_grad = again._ctx, again.requires_grad
        source = view


def _view_again(ctx: Any, source: Any, shape: tuple) -> Any:
    """The view `ctx` made, taken (and recorded) from `source` instead."""
    from . import ops

    if isinstance(ctx, ops.Index):
        return ops.Index.apply(source, key=ctx.key, advanced=False)
    if isinstance(ctx, ops.Reshape):
        return ops.Reshape.apply(source, shape=shape)
    return ops.Transpose.apply(source, axes=ctx.axes)


def _written_through(ctx: Any, old_source: Any, new_view: Any) -> Any:
    """The new value of the tensor a view was taken from, given the view's new value (recorded)."""
    from . import ops

    if isinstance(ctx, ops.Index):
        return ops.SetItem.apply(old_source, new_view, key=ctx.key, mask=None)
    if isinstance(ctx, ops.Reshape):
        return ops.Reshape.apply(new_view, shape=old_source.shape)
    inverse = [0] * len(ctx.axes)
    for position, axis in enumerate(ctx.axes):
        inverse[axis] = position
    return ops.Transpose.apply(new_view, axes=tuple(inverse))


def apply(t: Any, what: str, compute: Callable[[Any], Any], operands: tuple = (), *,
          write: Callable[[], None] | None = None, needs_old_value: bool = False) -> Any:
    """Change t in place to compute(t) (checked by the caller) and return t.

    `write`, when given, writes the result directly (the fast path, used when nothing is recorded);
    otherwise the result is computed out of place and copied in.
    """
    check_target(t, what, operands)
    if recording.tape is not None:  # tg.fuse's trace: a chain with a write in it runs eagerly
        recording.tape.append((InPlaceWrite, (t,), {}, t))
    if _records(t, operands):
        rebase(t, compute, needs_old_value)
        return t
    if write is not None:
        write()
    else:
        with no_grad():
            result = compute(t)
        copy_into(t.array, result.array)
    t._bump_version()
    return t


# ---- the ops --------------------------------------------------------------------------------
_BINARY = {  # name: (row, the out-of-place method computing it, floating result)
    "add": (K.ADD, "__add__", False),
    "sub": (K.SUB, "__sub__", False),
    "mul": (K.MUL, "__mul__", False),
    "div": (K.DIV, "__truediv__", True),
}


def binary(t: Any, name: str, other: Any) -> Any:
    """t.add_(other) and its kin: t = t op other, other broadcast to t's shape."""
    from .tensor import Tensor

    what = f"{name}_"
    row, method, floating = _BINARY[name]
    other = t._subtrahend(other) if name == "sub" else t._operand(other)
    if isinstance(other, Tensor):
        check_device(t, what, other)
        check_fits(t, what, other.shape)
    if name == "sub" and t.dtype.kind == "b":
        raise TypeError("sub_: subtraction (-) of bool tensors is not supported; use ^ or logical_xor()")
    check_result_dtype(t, what, result_dtype(t, (other,), floating))
    operands = (other,) if isinstance(other, Tensor) else ()
    # the old value is needed by the gradient of a tensor operand of * and /
    needs_old = name in ("mul", "div") and bool(operands) and other.requires_grad

    if not operands:
        number = number_in_dtype(what, other, t.dtype)  # checked here: an int must fit t's dtype

    def write() -> None:
        if isinstance(other, Tensor):
            value = separate(t, other.array if other.dtype == t.dtype else _cast(other.array, t.dtype))
        else:
            value = number if t.dtype.kind != "f" else other  # (a float goes as a Python float)
        write_row(row, t.array, t.array, value)

    return apply(t, what, lambda previous: getattr(previous, method)(other), operands,
                 write=write, needs_old_value=needs_old)


def neg(t: Any) -> Any:
    """t.neg_(): t = -t."""
    if t.dtype.kind == "b":
        raise TypeError("neg_: negation (-) of a bool tensor is not supported; use ~ or logical_not()")
    return apply(t, "neg_", lambda previous: -previous, write=lambda: write_row(K.NEG, t.array, t.array))


def pow_(t: Any, exponent: Any) -> Any:
    """t.pow_(exponent): t = t ** exponent (a number or a tensor broadcast to t's shape)."""
    from .tensor import Tensor

    what = "pow_"
    if isinstance(exponent, Tensor):
        check_device(t, what, exponent)
        check_fits(t, what, exponent.shape)
        check_result_dtype(t, what, result_dtype(t, (exponent,), floating=True))
        operands = (exponent,)
    else:
        if not isinstance(exponent, numbers.Real) or isinstance(exponent, np.ndarray):
            raise TypeError(f"{what}: the exponent must be a real number or a Tensor, got "
                            f"{type(exponent).__name__}")
        floating = not isinstance(exponent, numbers.Integral)
        check_result_dtype(t, what, result_dtype(t, (exponent,), floating))
        if not floating and t.dtype.kind != "f" and exponent < 0:
            raise ValueError(f"{what}: integers to negative integer powers are not allowed "
                             f"(tensor of dtype {t.dtype}); call .float() first")
        operands = ()
    fast = None
    if not operands and t.dtype.kind == "f":
        fast = lambda: write_row(K.POW, t.array, t.array, float(exponent))  # noqa: E731
    return apply(t, what, lambda previous: previous.pow(exponent), operands, write=fast,
                 needs_old_value=True)


def clamp(t: Any, low: Any, high: Any, what: str) -> Any:
    """t.clamp_(min, max): t limited to [min, max] (either may be None)."""
    from .tensor import Tensor, _real

    if low is None and high is None:
        raise ValueError(f"{what}: give at least one of min and max")
    for bound in (low, high):
        if bound is not None and (not isinstance(bound, numbers.Real) or isinstance(bound, np.ndarray)):
            raise TypeError(f"{what}: bounds must be real numbers or None, got {type(bound).__name__}")
    if t.dtype.kind == "b":
        raise TypeError(f"{what}: clamping is not defined for bool tensors")
    check_result_dtype(t, what, result_dtype(t, tuple(b for b in (low, high) if b is not None)))
    if t.dtype.kind == "f":
        lo = -np.inf if low is None else _real(low, f"{what}: min")
        hi = np.inf if high is None else _real(high, f"{what}: max")
    else:  # integers: a missing bound is the dtype's own limit, and the row runs in integers
        info = np.iinfo(t.dtype)
        lo = t.dtype.type(info.min if low is None else max(int(low), info.min))
        hi = t.dtype.type(info.max if high is None else min(int(high), info.max))
    if lo != lo or hi != hi:
        raise ValueError(f"{what}: bounds must not be NaN, got min={low} and max={high}")
    if lo > hi:
        raise ValueError(f"{what}: min {low} is larger than max {high}")

    def compute(previous: Any) -> Any:
        if t.dtype.kind == "f":
            return previous.clip(low, high)  # recorded: the gradient passes where min <= x <= max
        return Tensor._from_array(K.CLIP(previous.array, lo, hi))

    return apply(t, what, compute, write=lambda: write_row(K.CLIP, t.array, t.array, lo, hi),
                 needs_old_value=True)


def fill(t: Any, value: Any) -> Any:
    """t.fill_(value): every element set to value (a number or a one-element tensor), cast to t's dtype."""
    from .tensor import Tensor

    what = "fill_"
    if isinstance(value, Tensor):
        check_device(t, what, value)
        if value.ndim != 0:
            raise InPlaceShapeError(f"{what}: the value must be a number or a 0-d tensor, got a tensor "
                                    f"of shape {value.shape}")
        return assign(t, what, Ellipsis, None, value)
    if not isinstance(value, numbers.Real) or isinstance(value, np.ndarray):
        raise TypeError(f"{what}: the value must be a real number or a 0-d tensor, "
                        f"got {type(value).__name__}")
    return assign(t, what, Ellipsis, None, value)


def copy(t: Any, source: Any) -> Any:
    """t.copy_(source): source's values (broadcast, cast to t's dtype, moved to t's device) written into t."""
    from .tensor import Tensor

    what = "copy_"
    if not isinstance(source, Tensor):
        source = Tensor(source, device=t.device, dtype=t.dtype)
    check_fits(t, what, source.shape)
    if source.device != t.device:
        source = source.to(t.device)  # recorded: the gradient goes back to source's device
    return assign(t, what, Ellipsis, None, source)


# ---- index assignment -----------------------------------------------------------------------
def setitem(t: Any, key: Any, value: Any) -> None:
    """t[key] = value: ints, slices, None, Ellipsis, index arrays and bool masks; value broadcast."""
    from . import indexing
    from .tensor import Tensor

    what = "index assignment (t[...] = value)"
    if isinstance(value, Tensor):
        check_device(t, what, value)
    elif isinstance(value, numbers.Real) and not isinstance(value, np.ndarray):
        pass
    else:
        value = tensor_operand(t, what, value)
    mask = _whole_mask(t, key)
    if mask is not None and _same_for_every_selected(t, key, value):
        # x[mask] = value: one where() over the whole tensor, no read-back of the mask's count
        # (the positions a general key needs would come from the mask's nonzero())
        if isinstance(value, Tensor) and value.size == 1:
            value = value.reshape(())
        assign(t, what, None, mask, value)
        return
    checked, _ = indexing.normalize_key(key, t.shape, t.device)
    target = t.array[checked].shape  # a view for basic keys; index arrays are already checked
    if isinstance(value, Tensor):
        check_fits(t, what, value.shape, target)
    assign(t, what, checked, None, value)


def _same_for_every_selected(t: Any, mask: Any, value: Any) -> bool:
    """True when value is written alike at every position a bool mask selects (a number, one element,
    or a broadcast of what one selected position holds), so the mask's count does not matter."""
    from .tensor import Tensor

    if not isinstance(value, Tensor) or value.size == 1:
        return True
    rest = t.shape[mask.ndim:]
    try:
        return value.ndim <= len(rest) and np.broadcast_shapes(value.shape, rest) == rest
    except ValueError:
        return False


def _whole_mask(t: Any, key: Any) -> Any:
    """The key as a 0/1 array in t's dtype on t's device, shaped to broadcast against t, when it is one
    bool mask over t's leading dimensions (x[x > 0], x[rows]); None for any other key."""
    from .backend import is_cupy_array
    from .tensor import Tensor

    array = key.array if isinstance(key, Tensor) else key if (
        isinstance(key, np.ndarray) or is_cupy_array(key)) else None
    if array is None or array.dtype.kind != "b" or array.shape != t.shape[:array.ndim]:
        return None
    mask = move(array, t.device).astype(t.dtype)
    return mask.reshape(mask.shape + (1,) * (t.ndim - mask.ndim))  # whole rows along the rest


def assign(t: Any, what: str, key: Any, mask: Any, value: Any) -> Any:
    """Write value into t[key] (or where mask is 1, when key is None), recorded when it must be."""
    from . import ops
    from .tensor import Tensor

    operands = (value,) if isinstance(value, Tensor) else ()
    if not operands:
        value = number_in_dtype(what, value, t.dtype)

    def compute(previous: Any) -> Any:
        return ops.SetItem.apply(previous, value, key=key, mask=mask)

    def write() -> None:
        if isinstance(value, Tensor):
            array = separate(t, value.array if value.dtype == t.dtype else _cast(value.array, t.dtype))
        else:  # a number goes to the kernel as an argument in t's dtype: no host-to-device copy
            array = value
        if mask is not None:
            write_row(K.WHERE, t.array, mask, array, t.array)
        elif key is Ellipsis:
            copy_into(t.array, array)
        else:
            t.array[key] = array

    return apply(t, what, compute, operands, write=write)


def _cast(array: Any, dtype: np.dtype) -> Any:
    """array.astype(dtype); out-of-range values convert silently, as they do on the GPU."""
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype)
