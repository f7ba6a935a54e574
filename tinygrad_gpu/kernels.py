"""The kernel table: every primitive is one row, its CUDA body beside its NumPy twin.

A row dispatches on the array type: NumPy arrays (and plain Python scalars) go to the twin. On
the GPU a row runs as a raw kernel generated from its own body where the operands allow it
(contiguous arrays, numbers, 0-d arrays: see "Streaming kernels" below), else as the
``cupy.ElementwiseKernel`` / ``cupy.ReductionKernel`` built from it on first use. Both sides must
compute the same formula; ``tests/test_kernel_twins.py`` and ``check_twins`` walk every row.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import blas, tiled_gemm
from .backend import cupy_module
from .caches import LRU
from .dtypes import FLOATS, int32, int64
from .dtypes import bool_ as bool8
from .launch import Prepared
from .memory import out_of_memory

ROWS: dict[str, Elementwise | Reduction] = {}
STREAMING_MIN_SIZE = 1 << 20  # full reductions of this many elements take the streaming kernels
RAW_LAUNCHES = True  # the library's own raw kernels where operands allow; False: always CuPy's kernels


class _Quiet(threading.local):
    depth = 0  # > 0 while an enclosing np.errstate(all="ignore") is active on this thread


quiet = _Quiet()


try:  # NumPy 2 keeps the error state in a context variable: entering a block is one set()
    from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj

    _make_extobj(all="ignore")  # private names: proven to work here, or not used at all
except Exception:  # NumPy 1, or a NumPy whose internals moved: through np.errstate
    _extobj_contextvar = _make_extobj = None
# (an error state, the same with every warning off): np.errstate(all="ignore") builds the second
# from the first on each entry, the costliest part of a small CPU step's errstates
_ignoring: tuple = (None, None)


class _silenced_by_errstate:
    """Context manager: NumPy floating-point warnings off for a block of twin calls (entered once)."""

    __slots__ = ("_errstate",)

    def __enter__(self) -> None:
        self._errstate = np.errstate(all="ignore")
        self._errstate.__enter__()
        quiet.depth += 1

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        quiet.depth -= 1
        self._errstate.__exit__(kind, value, traceback)


if _extobj_contextvar is None:
    silenced_numpy: type = _silenced_by_errstate
else:
    _current_state, _set_state, _reset_state = (_extobj_contextvar.get, _extobj_contextvar.set,
                                                _extobj_contextvar.reset)

    class silenced_numpy:  # type: ignore[no-redef]
        """Context manager: NumPy floating-point warnings off for a block of twin calls (entered once)."""

        __slots__ = ("_token",)

        def __enter__(self) -> None:
            global _ignoring
            current = _current_state()
            base, silent = _ignoring
            if current is not base and current is not silent:
                silent = _make_extobj(all="ignore")  # derived from the current state, as errstate does
                _ignoring = (current, silent)  # one assignment: other threads see either pair whole
            self._token = _set_state(silent)
            quiet.depth += 1

        def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
            quiet.depth -= 1
            _reset_state(self._token)


# np.where without its __array_function__ dispatch (the twins' operands are NumPy arrays): the same
# function, half the cost of a call on a small array
_where = getattr(np.where, "_implementation", np.where)
SELECT_MIN_SIZE = 1 << 12  # below this many elements one np.where call is cheaper than the masks
_BITS = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.uint64)}


def _select(condition: Any, a: Any, b: np.ndarray) -> np.ndarray:
    """np.where(condition, a, b) for a bool array `condition`, a float array `b` of its shape and `a`
    an array or scalar of b's dtype: the same bits. On large arrays it is computed with bit masks:
    NumPy's where branches on every element, which costs several times more where the condition
    is mixed (a ReLU's gradient, a sigmoid's two branches)."""
    if type(b) is not np.ndarray or b.size < SELECT_MIN_SIZE:  # (small arrays: tested first)
        return _where(condition, a, b)
    bits = _BITS.get(b.dtype)
    if (bits is None or type(condition) is not np.ndarray or condition.dtype != np.bool_
            or condition.shape != b.shape or getattr(a, "dtype", None) != b.dtype
            or (type(a) is np.ndarray and a.ndim and a.shape != b.shape)):  # (0-d: a scalar)
        return _where(condition, a, b)
    mask = condition.astype(bits)
    mask -= 1  # all ones where b is taken, zero where a is
    out = np.bitwise_and(b.view(bits), mask)
    a_bits = np.asarray(a).view(bits)
    if a_bits.ndim or a_bits:  # (a scalar +0.0 adds nothing)
        np.invert(mask, out=mask)
        np.bitwise_and(a_bits, mask, out=mask)
        np.bitwise_or(out, mask, out=out)
    return out.view(b.dtype)


def param_names(params: str) -> list[str]:
    """The parameter names of a kernel signature such as "T x, T gy"."""
    return [p.split()[-1] for p in params.split(",")]


def _runs_on_numpy(args: tuple) -> bool:
    for arg in args:
        kind = type(arg)
        if kind is np.ndarray or isinstance(arg, np.ndarray):
            return True
        if kind is not float and kind is not int and kind is not bool:
            return False  # a cupy.ndarray
    return True


class Elementwise:
    """One elementwise primitive: a CUDA statement and the NumPy function computing the same."""

    def __init__(self, name: str, in_params: str, out_params: str, body: str,
                 twin: Callable[..., Any], *, scalars: tuple[str, ...] = (),
                 domain: tuple[float, float] = (-3.0, 3.0), preamble: str = "",
                 inplace_twin: Callable[..., None] | None = None, register: bool = True,
                 dtypes: tuple = FLOATS) -> None:
        self.name, self.in_params, self.out_params = name, in_params, out_params
        self.dtypes = dtypes  # the operand dtypes the row is meant for (check_twins walks each)
        # every parameter of type T: the row's outputs have its inputs' dtype (streaming needs that)
        self.uniform = all(p.split()[0] == "T" for p in (in_params + "," + out_params).split(","))
        # optional: the twin's formula written with in-place NumPy ops, for out= calls on the CPU
        self.inplace_twin = inplace_twin
        self.body, self.twin, self.preamble = body, twin, preamble
        self.scalars = scalars  # parameters passed as Python numbers, not arrays
        self.input_names, self.output_names = param_names(in_params), param_names(out_params)
        self.domain = domain  # input range the twin test draws from
        self._kernel: Any = None
        self._single_output = self.n_outputs == 1
        if register:  # generated rows (tg.fuse) are checked through the rows they are made of
            ROWS[name] = self

    def foreach(self, arrays: dict[str, list], scalars: dict[str, Any], counted: str | None = None) -> None:
        """Run this row in place over several tensors at once: one launch on the GPU.

        `arrays` maps each array parameter (inputs and outputs) to one array per tensor, all of
        one dtype (a strided view makes it one launch per tensor); `scalars` gives the other
        parameters: a number or 0-d array shared by all tensors, or a list of one 0-d array per
        tensor (e.g. Adam's step counts). `counted` names such a list whose entries get 1 added
        before the row reads them (an optimizer's step counts): on the GPU's one launch, each
        tensor's blocks read its count plus one and the last of them to finish writes it back.
        """
        outputs = list(map(arrays.__getitem__, self.output_names))
        count = len(outputs[0])
        if count == 0:
            return
        # NumPy, or a strided view among device arrays: one call per tensor
        on_numpy = isinstance(outputs[0][0], np.ndarray)
        # (CuPy's own flag: `.flags` would build an object per array, twice per tensor per step)
        if on_numpy or not all(a._c_contiguous for v in arrays.values() for a in v):
            if counted is not None:
                ADD_IN_PLACE.foreach({"total": scalars[counted]}, {"value": 1})
            # the class's __call__ looked up now, not once: tg.jit's CPU tape records through it
            call = type(self).__call__
            direct = on_numpy and call is _PLAIN_CALL
            inputs = []  # per input parameter, one value per tensor
            for name in self.input_names:
                value = arrays[name] if name in arrays else scalars[name]
                if type(value) is not list:
                    # a shared 0-d setting (an optimizer's lr, ...) read once as a NumPy scalar: the
                    # same arithmetic, cheaper per tensor. Not while a tape records (it wraps
                    # __call__): its replays must read the 0-d array, which a schedule rewrites in place.
                    if direct and type(value) is np.ndarray and not value.ndim:
                        value = value[()]
                    value = [value] * count
                inputs.append(value)
            with silenced_numpy():
                if direct and self.inplace_twin is not None:  # what __call__ would do, without its
                    twin = self.inplace_twin                 # dispatch per tensor
                    for args, out in zip(zip(*inputs), zip(*outputs)):
                        twin(*args, *out)
                elif direct:
                    for args, out in zip(zip(*inputs), zip(*outputs)):
                        self._numpy_into(args, out)
                else:
                    for args, out in zip(zip(*inputs), zip(*outputs)):
                        call(self, *args, out=out)
            return
        for start in range(0, count, _FOREACH_CHUNK):
            part = slice(start, start + _FOREACH_CHUNK)
            chunk = {name: values[part] for name, values in arrays.items()}
            _foreach_launch(self, chunk, {name: value[part] if type(value) is list else value
                                          for name, value in scalars.items()}, counted)

    @property
    def n_outputs(self) -> int:
        """How many outputs the row writes."""
        return len(self.out_params.split(","))

    def cuda_kernel(self) -> Any:
        """The compiled-on-first-use cupy.ElementwiseKernel for this row."""
        if self._kernel is None:
            cp = cupy_module()
            self._kernel = cp.ElementwiseKernel(self.in_params, self.out_params, self.body,
                                                "tg_" + self.name, preamble=self.preamble)
        return self._kernel

    def _numpy_into(self, args: tuple, out: tuple) -> None:
        """The twin on NumPy operands, written into the arrays `out` (errstate entered by the caller)."""
        if self.inplace_twin is not None:
            self.inplace_twin(*args, *out)
        else:
            result = self.twin(*args, *out)
            for target, value in zip(out, result if len(out) > 1 else (result,)):
                np.copyto(target, value)

    def numpy_form(self, *args: Any, out: tuple | None = None) -> Callable[[], Any] | None:
        """What calling the row with these operands does when they are NumPy arrays and NumPy's
        warnings are off (as a CPU tape replays it), as a function of no arguments; None for
        device operands."""
        if not (type(args[0]) is np.ndarray or _runs_on_numpy(args)):
            return None
        if out is not None:
            if self.inplace_twin is not None:
                return functools.partial(self.inplace_twin, *args, *out)
            return functools.partial(self._numpy_into, args, out)
        twin = self.twin
        if self._single_output:
            return lambda: np.asarray(twin(*args))
        return lambda: tuple(map(np.asarray, twin(*args)))

    def __call__(self, *args: Any, out: tuple | None = None) -> Any:
        if type(args[0]) is np.ndarray or _runs_on_numpy(args):  # (the first test: most CPU calls)
            if not quiet.depth:
                with silenced_numpy():  # inf/NaN follow IEEE rules silently, as on the GPU
                    return self(*args, out=out)
            if out is None:
                result = self.twin(*args)
                return np.asarray(result) if self._single_output else tuple(map(np.asarray, result))
            self._numpy_into(args, out)
            return out[0] if len(out) == 1 else out
        try:  # free unless raised: CuPy's OutOfMemoryError becomes ours, with the pool's figures
            # one raw launch where the operands allow it: cheaper to start than CuPy's generic kernel
            # (small arrays) and twice as fast on large ones (16-byte loads)
            if RAW_LAUNCHES:
                result = _streaming_elementwise(self, args, out)
                if result is not None:
                    return result
            kernel = self._kernel or self.cuda_kernel()
            # a number beyond float32's range is passed as ±inf, which it becomes anyway (CuPy's
            # own conversion would warn about the overflow)
            if any(getattr(a, "dtype", None) == np.float32 for a in args):
                args = tuple(_within_float32(a) if type(a) is float or type(a) is int else a for a in args)
            return kernel(*args) if out is None else kernel(*args, *out)
        except MemoryError as error:
            raise out_of_memory(error, "cuda", f"{self.name} kernel") from error


_PLAIN_CALL = Elementwise.__call__  # (foreach tells a wrapped __call__ from this one)


class Reduction:
    """One reduction primitive: a cupy.ReductionKernel and the NumPy function computing the same."""

    def __init__(self, name: str, in_params: str, out_params: str, map_expr: str,
                 reduce_expr: str, post_map_expr: str, identity: str,
                 twin: Callable[..., Any], *, domain: tuple[float, float] = (-3.0, 3.0)) -> None:
        self.name, self.in_params, self.out_params = name, in_params, out_params
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity, self.twin, self.domain = identity, twin, domain
        self.input_names, self.output_names = param_names(in_params), param_names(out_params)
        self.scalars = ()
        self._kernel: Any = None
        ROWS[name] = self

    def cuda_kernel(self) -> Any:
        """The compiled-on-first-use cupy.ReductionKernel for this row."""
        if self._kernel is None:
            cp = cupy_module()
            self._kernel = cp.ReductionKernel(self.in_params, self.out_params, self.map_expr,
                                              self.reduce_expr, self.post_map_expr,
                                              self.identity, "tg_" + self.name)
        return self._kernel

    def numpy_form(self, x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False,
                   scale: float = 1.0) -> Callable[[], Any] | None:
        """What a call does for a NumPy array with NumPy's warnings off (as a CPU tape replays it), as
        a function of no arguments; None for a device array."""
        if not isinstance(x, np.ndarray):
            return None
        twin = self.twin
        if scale == 1.0:
            return lambda: np.asarray(twin(x, axis=axis, keepdims=keepdims))

        def scaled() -> Any:
            result = np.asarray(twin(x, axis=axis, keepdims=keepdims))
            return np.asarray(result * result.dtype.type(scale))
        return scaled

    def __call__(self, x: Any, axis: int | tuple[int, ...] | None = None,
                 keepdims: bool = False, scale: float = 1.0) -> Any:
        """Reduce over `axis`; the result is multiplied by `scale` (mean = sum scaled by 1/n)."""
        if isinstance(x, np.ndarray):
            if not quiet.depth:
                with silenced_numpy():
                    return self(x, axis, keepdims, scale)
            result = np.asarray(self.twin(x, axis=axis, keepdims=keepdims))
            return result if scale == 1.0 else np.asarray(result * result.dtype.type(scale))
        try:  # CuPy's OutOfMemoryError becomes ours, with the pool's figures
            return self._on_gpu(x, axis, keepdims, scale)
        except MemoryError as error:
            raise out_of_memory(error, "cuda", f"{self.name} kernel") from error

    def _on_gpu(self, x: Any, axis: int | tuple[int, ...] | None, keepdims: bool, scale: float) -> Any:
        if isinstance(axis, int):
            axis = (axis % x.ndim,)
        if RAW_LAUNCHES and x._c_contiguous and x.size and x.dtype.char in "fd":
            leading = axis is not None and axis == tuple(range(len(axis))) and len(axis) < x.ndim
            if axis is None or len(axis) == x.ndim:
                result = _streaming_reduction(self, x, scale)
                return result.reshape((1,) * x.ndim) if keepdims else result
            if leading:  # e.g. a bias gradient: sum over the batch axis, one thread per column
                result = _column_reduction(self, x, len(axis), scale)
                return result.reshape((1,) * len(axis) + result.shape) if keepdims else result
            if axis is not None and axis == tuple(range(x.ndim - len(axis), x.ndim)):
                result = _row_reduction(self, x, len(axis), scale)  # e.g. a softmax's max per row
                return result.reshape(result.shape + (1,) * len(axis)) if keepdims else result
            if axis is not None and axis == tuple(range(axis[0], axis[0] + len(axis))) and \
                    math.prod(x.shape[:axis[0]]) < 65536:  # axes in the middle (a pooling window)
                result = _column_reduction(self, x, len(axis), scale, n_outer=axis[0])
                if keepdims:
                    return result.reshape(x.shape[:axis[0]] + (1,) * len(axis) + x.shape[axis[-1] + 1:])
                return result
        kernel = self._kernel or self.cuda_kernel()
        result = kernel(x, axis=axis, keepdims=keepdims)
        return result if scale == 1.0 else MUL(result, scale)


# ---------------------------------------------------------------------------------------------
# Elementwise rows.  CUDA body                                   | NumPy twin (same formula)
# ---------------------------------------------------------------------------------------------
ADD = Elementwise("add", "T a, T b", "T y", "y = a + b",
                  lambda a, b: a + b)
SUB = Elementwise("sub", "T a, T b", "T y", "y = a - b",
                  lambda a, b: a - b)
MUL = Elementwise("mul", "T a, T b", "T y", "y = a * b",
                  lambda a, b: a * b)
DIV = Elementwise("div", "T a, T b", "T y", "y = a / b",
                  lambda a, b: a / b, domain=(0.5, 3.0))
# d(a/b)/db = -a/b², written as (a/b)/b so that b² cannot overflow on its own.
DIV_BWD_DIVISOR = Elementwise("div_bwd_divisor", "T a, T b, T gy", "T gb", "gb = -gy * (a / b) / b",
                              lambda a, b, gy: -gy * (a / b) / b, domain=(0.5, 3.0))
NEG = Elementwise("neg", "T x", "T y", "y = -x",
                  lambda x: -x)


def _pow_twin(x, p):
    """numpy.power with C's pow at x = -inf: a non-integer p gives +inf (p > 0) or +0 (p < 0)."""
    y = np.power(x, x.dtype.type(p))
    if math.isfinite(p) and not float(p).is_integer():
        y = np.where(np.isneginf(x), x.dtype.type(np.inf if p > 0 else 0), y)
    return y


POW = Elementwise("pow", "T x, T p", "T y", "y = pow(x, p)",
                  _pow_twin, scalars=("p",), domain=(0.5, 3.0))
# NOTE: x**0 is constant, so its gradient is 0 even at x = 0 (where p * x**(p-1) would be 0 * inf).
# (gy times the local derivative, so that a tiny gy meets an infinite derivative as inf, not 0 * inf)
def _pow_bwd_twin(x, gy, p):
    if p == 0:
        return np.zeros(np.broadcast_shapes(x.shape, gy.shape), gy.dtype)
    # (x**1 is x itself, bit for bit: a square's gradient skips the power)
    return gy * (x.dtype.type(p) * (x if p == 2 else _pow_twin(x, p - 1)))


POW_BWD = Elementwise("pow_bwd", "T x, T gy, T p", "T gx",
                      "gx = p == 0 ? (T)0 : gy * (p * pow(x, p - 1))",
                      _pow_bwd_twin, scalars=("p",), domain=(0.5, 3.0))


# x ** p with a tensor exponent (both arrays, broadcast)
def _pow_arrays_twin(x, p):
    """numpy.power with C's pow at x = -inf: a finite non-integer p gives +inf (p > 0) or +0 (p < 0)."""
    y = np.power(x, p)
    real = y.dtype.type
    odd = np.isneginf(x) & np.isfinite(p) & (p != np.floor(p))
    return np.where(odd, np.where(p > 0, real(np.inf), real(0)), y)


POW_TENSOR = Elementwise("pow_tensor", "T x, T p", "T y", "y = pow(x, p)",
                         _pow_arrays_twin, domain=(0.5, 3.0))
POW_BWD_BASE = Elementwise("pow_bwd_base", "T x, T p, T gy", "T gx",
                           "gx = p == (T)0 ? (T)0 : gy * (p * pow(x, p - (T)1))",
                           lambda x, p, gy: np.where(p == 0, gy.dtype.type(0),
                                                     gy * (p * _pow_arrays_twin(x, p - 1))),
                           domain=(0.5, 3.0))
# NOTE: d(x**p)/dp = x**p log(x); 0 where x == 0 and p >= 0 (PyTorch's convention, not 0 * -inf)
POW_BWD_EXPONENT = Elementwise("pow_bwd_exponent", "T x, T p, T gy", "T gp",
                               "gp = (x == (T)0 && p >= (T)0) ? (T)0 : gy * (pow(x, p) * log(x))",
                               lambda x, p, gy: np.where((x == 0) & (p >= 0), gy.dtype.type(0),
                                                         gy * (_pow_arrays_twin(x, p) * np.log(x))),
                               domain=(0.5, 3.0))
EXP = Elementwise("exp", "T x", "T y", "y = exp(x)",
                  np.exp)
LOG = Elementwise("log", "T x", "T y", "y = log(x)",
                  np.log, domain=(0.1, 5.0))
SQRT = Elementwise("sqrt", "T x", "T y", "y = sqrt(x)",
                   np.sqrt, domain=(0.1, 5.0))
SQRT_BWD = Elementwise("sqrt_bwd", "T y, T gy", "T gx", "gx = gy / (y + y)",
                       lambda y, gy: gy / (y + y), domain=(0.1, 5.0))
# The numbers the activation twins use, as 0-d arrays per float dtype: NumPy converts a Python or
# NumPy number operand on every call, which costs more than the operation itself on a small array;
# a 0-d array of the operand's dtype is the same value (the same results and dtypes), passed as is.
_NUMBERS = {np.dtype(t): (np.zeros((), t), np.ones((), t), np.full((), -1, t))
            for t in (np.float32, np.float64)}
for _constants in _NUMBERS.values():
    for _constant in _constants:
        _constant.flags.writeable = False  # shared by every call: never an output


def _numbers(like: Any) -> tuple:
    """(0, 1, -1) in `like`'s dtype: 0-d arrays for the float dtypes, NumPy scalars for others,
    Python numbers for a Python number."""
    dtype = getattr(like, "dtype", None)
    numbers = _NUMBERS.get(dtype)
    if numbers is None:
        numbers = (0, 1, -1) if dtype is None else (dtype.type(0), dtype.type(1), dtype.type(-1))
    return numbers


# NOTE: ReLU's gradient at 0 is taken as 0 (PyTorch's convention); y > 0 exactly when x > 0.
# NaN passes through ReLU, gradient included, as in PyTorch (np.maximum keeps NaN, and is 5x
# faster than np.where on mixed signs)
RELU = Elementwise("relu", "T x", "T y", "y = (x > 0 || x != x) ? x : (T)0",
                   lambda x: np.maximum(x, _numbers(x)[0]))
RELU_BWD = Elementwise("relu_bwd", "T y, T gy", "T gx", "gx = y <= 0 ? (T)0 : gy",
                       lambda y, gy: _select(y <= _numbers(y)[0], _numbers(gy)[0], gy))
# NOTE: overflow-free sigmoid: exp only ever sees -|x| <= 0, so it lies in (0, 1].
def _sigmoid_twin(x):
    zero, one, minus_one = _numbers(x)
    e = np.exp(np.copysign(x, minus_one))  # -|x| (the sign bit set: the same bits, one call)
    # 1 / (1 + e) or e / (1 + e): the numerator chosen first, then one division
    return _select(x >= zero, one, e) / (one + e)


SIGMOID = Elementwise("sigmoid", "T x", "T y",
                      "T e = exp(-fabs(x)); y = x >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e)",
                      _sigmoid_twin)
SIGMOID_BWD = Elementwise("sigmoid_bwd", "T y, T gy", "T gx", "gx = gy * y * ((T)1 - y)",
                          lambda y, gy: gy * y * (_numbers(y)[1] - y), domain=(0.0, 1.0))
TANH = Elementwise("tanh", "T x", "T y", "y = tanh(x)",
                   np.tanh)
TANH_BWD = Elementwise("tanh_bwd", "T y, T gy", "T gx", "gx = gy * ((T)1 - y * y)",
                       lambda y, gy: gy * (1 - y * y), domain=(-1.0, 1.0))


# ---- more activations (PyTorch's formulas; each gradient from x, so any setting works) ----------
def _erf(x: np.ndarray) -> np.ndarray:
    """erf elementwise: SciPy's where installed, else the C library's one value at a time."""
    try:
        from scipy.special import erf
    except ImportError:  # NumPy has no erf
        return np.vectorize(math.erf, otypes=[x.dtype])(x)
    return erf(x).astype(x.dtype, copy=False)


def _stable_sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_SIGMOID_OF_X = "T e = exp(-fabs(x)); T s = x >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);"
_SQRT_HALF, _INV_SQRT_2PI = 0.70710678118654752440, 0.39894228040143267794  # 1/sqrt(2), 1/sqrt(2 pi)
_SQRT_2_OVER_PI = 0.79788456080286535588

LEAKY_RELU = Elementwise("leaky_relu", "T x, T slope", "T y", "y = x > 0 ? x : x * slope",
                         lambda x, slope: np.where(x > 0, x, x * x.dtype.type(slope)), scalars=("slope",))
LEAKY_RELU_BWD = Elementwise("leaky_relu_bwd", "T x, T gy, T slope", "T gx", "gx = x > 0 ? gy : gy * slope",
                             lambda x, gy, slope: np.where(x > 0, gy, gy * gy.dtype.type(slope)),
                             scalars=("slope",))
ELU = Elementwise("elu", "T x, T alpha", "T y", "y = x > 0 ? x : alpha * expm1(x)",
                  lambda x, alpha: np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(x)), scalars=("alpha",))
ELU_BWD = Elementwise("elu_bwd", "T x, T gy, T alpha", "T gx", "gx = x > 0 ? gy : gy * (alpha * exp(x))",
                      lambda x, gy, alpha: np.where(x > 0, gy, gy * (x.dtype.type(alpha) * np.exp(x))),
                      scalars=("alpha",))
SILU = Elementwise("silu", "T x", "T y", _SIGMOID_OF_X + " y = x * s",
                   lambda x: x * _stable_sigmoid(x))
SILU_BWD = Elementwise("silu_bwd", "T x, T gy", "T gx",
                       _SIGMOID_OF_X + " gx = gy * (s * ((T)1 + x * ((T)1 - s)))",
                       lambda x, gy: gy * (lambda s: s * (1 + x * (1 - s)))(_stable_sigmoid(x)))
# softplus is x itself beyond the threshold (PyTorch's convention), where exp would overflow
SOFTPLUS = Elementwise("softplus", "T x, T beta, T threshold", "T y",
                       "y = x * beta > threshold ? x : log1p(exp(x * beta)) / beta",
                       lambda x, beta, threshold: np.where(
                           x * x.dtype.type(beta) > threshold, x,
                           np.log1p(np.exp(x * x.dtype.type(beta))) / x.dtype.type(beta)),
                       scalars=("beta", "threshold"))
SOFTPLUS_BWD = Elementwise("softplus_bwd", "T x, T gy, T beta, T threshold", "T gx",
                           "T z = exp(x * beta); gx = x * beta > threshold ? gy : gy * (z / (z + (T)1))",
                           lambda x, gy, beta, threshold: (lambda z: np.where(
                               x * x.dtype.type(beta) > threshold, gy, gy * (z / (z + 1))))(
                               np.exp(x * x.dtype.type(beta))),
                           scalars=("beta", "threshold"))
GELU = Elementwise("gelu", "T x", "T y", f"y = (T)0.5 * x * ((T)1 + erf(x * (T){_SQRT_HALF!r}))",
                   lambda x: x.dtype.type(0.5) * x * (1 + _erf(x * x.dtype.type(_SQRT_HALF))))
GELU_BWD = Elementwise("gelu_bwd", "T x, T gy", "T gx",
                       f"T cdf = (T)0.5 * ((T)1 + erf(x * (T){_SQRT_HALF!r}));"
                       f" T pdf = exp((T)-0.5 * x * x) * (T){_INV_SQRT_2PI!r}; gx = gy * (cdf + x * pdf)",
                       lambda x, gy: gy * (x.dtype.type(0.5) * (1 + _erf(x * x.dtype.type(_SQRT_HALF)))
                                           + x * (np.exp(x.dtype.type(-0.5) * x * x)
                                                  * x.dtype.type(_INV_SQRT_2PI))))


# The tanh form written with sigmoids, which never cancel: 0.5 (1 + tanh(u)) = sigmoid(2u) and
# 1 - tanh(u)^2 = 4 sigmoid(2u) sigmoid(-2u); u = sqrt(2/pi) (x + 0.044715 x^3).
_GELU_TANH_SIGMOIDS = (f"T v = (T){2 * _SQRT_2_OVER_PI!r} * (x + (T)0.044715 * x * x * x);"
                       " T e = exp(-fabs(v)); T p = (T)1 / ((T)1 + e); T q = e / ((T)1 + e);"
                       " T s = v >= 0 ? p : q; T r = v >= 0 ? q : p;")


def _gelu_tanh_sigmoids(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid(2u), sigmoid(-2u)) for the tanh form's u, each without cancellation."""
    v = x.dtype.type(2 * _SQRT_2_OVER_PI) * (x + x.dtype.type(0.044715) * x * x * x)
    e = np.exp(-np.abs(v))
    p, q = 1 / (1 + e), e / (1 + e)
    return np.where(v >= 0, p, q), np.where(v >= 0, q, p)


GELU_TANH = Elementwise("gelu_tanh", "T x", "T y", _GELU_TANH_SIGMOIDS + " y = x * s",
                        lambda x: x * _gelu_tanh_sigmoids(x)[0])
GELU_TANH_BWD = Elementwise(
    "gelu_tanh_bwd", "T x, T gy", "T gx",
    _GELU_TANH_SIGMOIDS + f" gx = gy * (s + (T)2 * x * s * r * (T){_SQRT_2_OVER_PI!r}"
    " * ((T)1 + (T)0.134145 * x * x))",
    lambda x, gy: (lambda s, r: gy * (s + 2 * x * s * r * x.dtype.type(_SQRT_2_OVER_PI)
                                      * (1 + x.dtype.type(0.134145) * x * x)))(*_gelu_tanh_sigmoids(x)))
# logsumexp shifts by the maximum; an infinite or NaN maximum is replaced by 0 so that x - max
# gives the right infinity (or NaN) instead of inf - inf = NaN.
FINITE_OR_ZERO = Elementwise("finite_or_zero", "T x", "T y", "y = isfinite(x) ? x : (T)0",
                             lambda x: np.where(np.isfinite(x), x, x.dtype.type(0)))
# max's backward: the gradient is shared evenly between all elements equal to the maximum.
# NOTE: a NaN maximum came from the NaN elements: they share the gradient (PyTorch's max() does so).
MAX_MASK = Elementwise("max_mask", "T x, T m", "T mask",
                       "mask = (x == m || (x != x && m != m)) ? (T)1 : (T)0",
                       lambda x, m: ((x == m) | ((x != x) & (m != m))).astype(x.dtype))
MAX_BWD = Elementwise("max_bwd", "T mask, T gy, T count", "T gx", "gx = mask * (gy / count)",
                      lambda mask, gy, count: mask * (gy / count), domain=(1.0, 3.0))
# Optimizer updates, in place on the parameter (and its momentum buffer).
# (without weight decay the gradient is used as it is: no 0 * param term, which is NaN for inf)
SGD_STEP = Elementwise("sgd_step", "T grad, T lr, T weight_decay", "T param",
                       "param -= lr * (weight_decay != 0 ? grad + weight_decay * param : grad)",
                       lambda grad, lr, weight_decay, param: param - lr * (
                           grad + weight_decay * param if float(weight_decay) != 0 else grad),
                       scalars=("lr", "weight_decay"),
                       inplace_twin=lambda grad, lr, weight_decay, param: np.subtract(
                           param, lr * (grad + weight_decay * param if float(weight_decay) != 0 else grad),
                           out=param))


def _sgd_momentum_twin(grad, lr, weight_decay, momentum, nesterov, param, buf):
    g = grad + weight_decay * param
    buf = momentum * buf + g
    return param - lr * (g + momentum * buf if nesterov else buf), buf


SGD_MOMENTUM_STEP = Elementwise(
    "sgd_momentum_step", "T grad, T lr, T weight_decay, T momentum, T nesterov", "T param, T buf",
    "T g = grad + weight_decay * param; buf = momentum * buf + g;"
    " param -= lr * (nesterov != 0 ? g + momentum * buf : buf)",
    _sgd_momentum_twin, scalars=("lr", "weight_decay", "momentum", "nesterov"))

# ---------------------------------------------------------------------------------------------
# Reduction rows.  map / reduce / post-map / identity           | NumPy twin
# ---------------------------------------------------------------------------------------------
SUM = Reduction("sum", "T x", "T y", "x", "a + b", "y = a", "0",
                np.add.reduce)
# NaN propagates (a != a), as in NumPy's max; identity is -inf.
MAX = Reduction("max", "T x", "T y", "x", "(a > b || a != a) ? a : b", "y = a",
                "__int_as_float(0xff800000)", np.maximum.reduce)
MIN = Reduction("min", "T x", "T y", "x", "(a < b || a != a) ? a : b", "y = a",
                "__int_as_float(0x7f800000)", np.minimum.reduce)

# ---------------------------------------------------------------------------------------------
# Selection, classification-loss and Adam rows.  CUDA body         | NumPy twin (same formula)
# ---------------------------------------------------------------------------------------------
# NOTE: |x| has gradient 0 at x = 0 (the subgradient PyTorch picks).
ABS = Elementwise("abs", "T x", "T y", "y = fabs(x)",
                  np.abs)
ABS_BWD = Elementwise("abs_bwd", "T x, T gy", "T gx", "gx = x > 0 ? gy : (x < 0 ? -gy : (T)0)",
                      lambda x, gy: np.where(x > 0, gy, np.where(x < 0, -gy, gy.dtype.type(0))))
# NaN stays NaN (both comparisons are false); the caller checks low <= high.
CLIP = Elementwise("clip", "T x, T low, T high", "T y", "y = x < low ? low : (x > high ? high : x)",
                   lambda x, low, high: np.where(x < low, x.dtype.type(low),
                                                 np.where(x > high, x.dtype.type(high), x)),
                   scalars=("low", "high"))
# NOTE: clip passes the gradient where low <= x <= high, bounds included (PyTorch's convention).
CLIP_BWD = Elementwise("clip_bwd", "T x, T gy, T low, T high", "T gx",
                       "gx = (x >= low && x <= high) ? gy : (T)0",
                       lambda x, gy, low, high: np.where((x >= low) & (x <= high), gy, gy.dtype.type(0)),
                       scalars=("low", "high"))
# maximum/minimum propagate NaN from either side, as NumPy does.
MAXIMUM = Elementwise("maximum", "T a, T b", "T y", "y = (a > b || a != a) ? a : b",
                      lambda a, b: np.where((a > b) | (a != a), a, b))
MINIMUM = Elementwise("minimum", "T a, T b", "T y", "y = (a < b || a != a) ? a : b",
                      lambda a, b: np.where((a < b) | (a != a), a, b))
# NOTE: on a tie (a == b) each operand gets half of the gradient; an operand gets none only where
# it strictly loses, so with a NaN on either side both get all of it (PyTorch's rules).
MAXIMUM_BWD = Elementwise(
    "maximum_bwd", "T a, T b, T gy", "T ga, T gb",
    "ga = a < b ? (T)0 : (a == b ? gy * (T)0.5 : gy); gb = a > b ? (T)0 : (a == b ? gy * (T)0.5 : gy)",
    lambda a, b, gy: (np.where(a < b, gy.dtype.type(0), np.where(a == b, gy * gy.dtype.type(0.5), gy)),
                      np.where(a > b, gy.dtype.type(0), np.where(a == b, gy * gy.dtype.type(0.5), gy))))
MINIMUM_BWD = Elementwise(
    "minimum_bwd", "T a, T b, T gy", "T ga, T gb",
    "ga = a > b ? (T)0 : (a == b ? gy * (T)0.5 : gy); gb = a < b ? (T)0 : (a == b ? gy * (T)0.5 : gy)",
    lambda a, b, gy: (np.where(a > b, gy.dtype.type(0), np.where(a == b, gy * gy.dtype.type(0.5), gy)),
                      np.where(a < b, gy.dtype.type(0), np.where(a == b, gy * gy.dtype.type(0.5), gy))))
# Comparisons and logical ops give bool (not differentiable); a < b is GREATER(b, a).
NUMERIC = (*FLOATS, int32, int64)
EVERY_DTYPE = (*NUMERIC, bool8)
INTEGRAL = (int32, int64, bool8)
GREATER = Elementwise("greater", "T a, T b", "bool y", "y = a > b",
                      np.greater, dtypes=NUMERIC)
GREATER_EQUAL = Elementwise("greater_equal", "T a, T b", "bool y", "y = a >= b",
                            np.greater_equal, dtypes=NUMERIC)
EQUAL = Elementwise("equal", "T a, T b", "bool y", "y = a == b",
                    np.equal, dtypes=EVERY_DTYPE)
NOT_EQUAL = Elementwise("not_equal", "T a, T b", "bool y", "y = a != b",
                        np.not_equal, dtypes=EVERY_DTYPE)
LOGICAL_AND = Elementwise("logical_and", "T a, T b", "bool y", "y = a != (T)0 && b != (T)0",
                          np.logical_and, dtypes=EVERY_DTYPE)
LOGICAL_OR = Elementwise("logical_or", "T a, T b", "bool y", "y = a != (T)0 || b != (T)0",
                         np.logical_or, dtypes=EVERY_DTYPE)
LOGICAL_XOR = Elementwise("logical_xor", "T a, T b", "bool y", "y = (a != (T)0) != (b != (T)0)",
                          np.logical_xor, dtypes=EVERY_DTYPE)
LOGICAL_NOT = Elementwise("logical_not", "T x", "bool y", "y = x == (T)0",
                          np.logical_not, dtypes=EVERY_DTYPE)
# bitwise ops on integers, and on bool (where & | ^ are the logical ops; ~ on bool is LOGICAL_NOT,
# since ~true is -2 in C)
BITWISE_AND = Elementwise("bitwise_and", "T a, T b", "T y", "y = a & b",
                          np.bitwise_and, dtypes=INTEGRAL)
BITWISE_OR = Elementwise("bitwise_or", "T a, T b", "T y", "y = a | b",
                         np.bitwise_or, dtypes=INTEGRAL)
BITWISE_XOR = Elementwise("bitwise_xor", "T a, T b", "T y", "y = a ^ b",
                          np.bitwise_xor, dtypes=INTEGRAL)
BITWISE_NOT = Elementwise("bitwise_not", "T x", "T y", "y = ~x",
                          np.invert, dtypes=(int32, int64))
# where: the mask holds the condition as 0/1 in the operands' dtype.
WHERE = Elementwise("where", "T mask, T a, T b", "T y", "y = mask != 0 ? a : b",
                    lambda mask, a, b: np.where(mask != 0, a, b))
WHERE_BWD = Elementwise("where_bwd", "T mask, T gy", "T ga, T gb",
                        "ga = mask != 0 ? gy : (T)0; gb = mask != 0 ? (T)0 : gy",
                        lambda mask, gy: (np.where(mask != 0, gy, gy.dtype.type(0)),
                                          np.where(mask != 0, gy.dtype.type(0), gy)))
# Binary cross-entropy on probabilities p, target t. NOTE: each log is clamped at -100, as PyTorch
# does, so p = 0 or 1 gives a finite loss; log1p(-p) keeps precision for small p.
def _clamped_logs(p):
    lp, lq = np.log(p), np.log1p(-p)
    low = p.dtype.type(-100)
    return np.where(lp < low, low, lp), np.where(lq < low, low, lq)


def _bce_twin(p, t):
    lp, lq = _clamped_logs(p)
    return (t - 1) * lq - t * lp


def _bce_bwd_twin(p, t, gy):
    d = (1 - p) * p
    lp, lq = _clamped_logs(p)
    return gy * (p - t) / np.where(d < 1e-12, d.dtype.type(1e-12), d), gy * (lq - lp)


_CLAMPED_LOGS = ("T lp = log(p); T lq = log1p(-p); lp = lp < (T)-100 ? (T)-100 : lp;"
                 " lq = lq < (T)-100 ? (T)-100 : lq;")
BCE = Elementwise("bce", "T p, T t", "T y", _CLAMPED_LOGS + " y = (t - (T)1) * lq - t * lp",
                  _bce_twin, domain=(0.05, 0.95))
# d/dp = (p - t) / (p (1 - p)), the denominator kept >= 1e-12 (PyTorch's EPSILON); d/dt = lq - lp.
BCE_BWD = Elementwise("bce_bwd", "T p, T t, T gy", "T gp, T gt",
                      _CLAMPED_LOGS + " T d = ((T)1 - p) * p;"
                      " gp = gy * (p - t) / (d < (T)1e-12 ? (T)1e-12 : d); gt = gy * (lq - lp)",
                      _bce_bwd_twin, domain=(0.05, 0.95))


# NOTE: with logits x: max(x, 0) - x t + log1p(exp(-|x|)); exp only sees -|x| <= 0, so no overflow.
def _bce_with_logits_twin(x, t):
    return np.where(x > 0, x, x.dtype.type(0)) - x * t + np.log1p(np.exp(-np.abs(x)))


def _bce_with_logits_bwd_twin(x, t, gy):
    e = np.exp(-np.abs(x))
    s = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return gy * (s - t), -gy * x


BCE_WITH_LOGITS = Elementwise("bce_with_logits", "T x, T t", "T y",
                              "y = (x > 0 ? x : (T)0) - x * t + log1p(exp(-fabs(x)))",
                              _bce_with_logits_twin)
# d/dx = sigmoid(x) - t (the overflow-free sigmoid of SIGMOID); d/dt = -x.
BCE_WITH_LOGITS_BWD = Elementwise(
    "bce_with_logits_bwd", "T x, T t, T gy", "T gx, T gt",
    "T e = exp(-fabs(x)); T s = x >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e); gx = gy * (s - t); gt = -gy * x",
    _bce_with_logits_bwd_twin)


# ---- in-place twins of the optimizer rows --------------------------------------------------------
# An optimizer twin written as expressions allocates a temporary per operation, each as large as
# the parameter, then copies its results into the state. The in-place forms below run the very
# same NumPy operations, operands in the same order, on the same values (so the same roundings,
# bit for bit), but write into the outputs and two scratch blocks, a block of elements at a time:
# each block's operands stay in the CPU cache across the dozen passes of the update.
# Below INPLACE_MIN_SIZE elements the expression twin is the cheaper one (its temporaries are
# small, and a ufunc call without out= dispatches faster); from there on the in-place form is.
INPLACE_BLOCK = 1 << 16  # elements per block (256 KiB of float32 per operand)
INPLACE_MIN_SIZE = 1 << 13


def _plain_operands(arrays: tuple, outputs: tuple, scalars: tuple) -> bool:
    """Whether an in-place twin computes exactly what the expression twin does with these operands:
    one dtype throughout (a wider operand would round otherwise), arrays of the outputs' shape, and
    no input sharing memory with an output (the expression twin reads every input before it writes)."""
    first = outputs[0]
    dtype, shape = first.dtype, first.shape
    for array in (*arrays, *outputs):
        if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape:
            return False
    for value in scalars:
        if type(value) is not float and type(value) is not int and getattr(value, "dtype", dtype) != dtype:
            return False
    for array in arrays:
        for output in outputs:
            if np.may_share_memory(array, output):
                return False
    return True


def _blocks(arrays: tuple, scratch: int) -> Any:
    """Per block of elements: views of `arrays` (all of one shape and dtype) and `scratch` scratch
    arrays of the same size; the arrays whole, with whole-size scratch, when one is not contiguous."""
    first = arrays[0]
    if not all(a.flags.c_contiguous for a in arrays):
        yield (*arrays, *(np.empty_like(first) for _ in range(scratch)))
        return
    flat = [a.reshape(-1) for a in arrays]
    size = first.size
    block = min(size, INPLACE_BLOCK)
    spare = [np.empty(block, first.dtype) for _ in range(scratch)]
    for start in range(0, size, block):
        stop = min(start + block, size)
        if stop - start < block:
            spare = [s[:stop - start] for s in spare]
        yield (*(f[start:stop] for f in flat), *spare)


def _copied_results(twin: Callable[..., Any], args: tuple, outputs: tuple) -> None:
    """The expression twin's results copied into `outputs` (what rows without an in-place twin do)."""
    for target, value in zip(outputs, twin(*args, *outputs)):
        np.copyto(target, value)


def _adam_inplace_twin(expression_twin: Callable[..., Any], decoupled: bool,
                       amsgrad: bool) -> Callable[..., None]:
    """The in-place form of an Adam row's `expression_twin` (AdamW's with `decoupled`, AMSGrad's with
    `amsgrad`): the same operations in the same order."""

    def twin(grad, lr, step, beta1, beta2, log_beta1, log_beta2, eps, weight_decay, *outputs):
        scalars = (lr, step, beta1, beta2, log_beta1, log_beta2, eps, weight_decay)
        if outputs[0].size < INPLACE_MIN_SIZE or not _plain_operands((grad,), outputs, scalars):
            _copied_results(expression_twin, (grad, *scalars), outputs)
            return
        decay = None
        if decoupled:
            decay, weight_decay = 1 - lr * weight_decay, 0.0
        coupled = float(weight_decay) != 0
        keep1, keep2 = 1 - beta1, 1 - beta2
        real = outputs[0].dtype.type  # the corrections in the parameters' precision, as the kernel's T
        step_size = real(lr) / -np.expm1(real(step) * real(log_beta1))
        bias_correction2_sqrt = np.sqrt(-np.expm1(real(step) * real(log_beta2)))
        # NumPy scalars as 0-d arrays: the same values and dtype, cheaper as ufunc operands
        decay, weight_decay, keep1, keep2, beta2, step_size, bias_correction2_sqrt, eps = (
            np.asarray(v) if isinstance(v, np.generic) else v
            for v in (decay, weight_decay, keep1, keep2, beta2, step_size, bias_correction2_sqrt, eps))
        multiply, add, subtract, divide, sqrt = np.multiply, np.add, np.subtract, np.divide, np.sqrt
        mask = more = None
        for block in _blocks((grad, *outputs), 2):  # (outputs passed by position: cheaper than out=)
            if amsgrad:
                g, param, exp_avg, exp_avg_sq, max_exp_avg_sq, u, w = block
            else:
                g, param, exp_avg, exp_avg_sq, u, w = block
            if decay is not None:
                multiply(param, decay, param)
            if coupled:  # g = grad + weight_decay * param
                multiply(weight_decay, param, w)
                g = add(g, w, w)
            # exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
            subtract(g, exp_avg, u)
            multiply(keep1, u, u)
            add(exp_avg, u, exp_avg)
            # exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
            multiply(beta2, exp_avg_sq, exp_avg_sq)
            multiply(keep2, g, u)
            multiply(u, g, u)
            add(exp_avg_sq, u, exp_avg_sq)
            second = exp_avg_sq
            if amsgrad:  # the running maximum, NaN taken as the larger
                if mask is None or mask.shape != u.shape:
                    mask, more = np.empty(u.shape, np.bool_), np.empty(u.shape, np.bool_)
                np.greater(exp_avg_sq, max_exp_avg_sq, mask)
                np.not_equal(exp_avg_sq, exp_avg_sq, more)
                np.logical_or(mask, more, mask)
                np.copyto(max_exp_avg_sq, exp_avg_sq, where=mask)
                second = max_exp_avg_sq
            # param = param - step_size * exp_avg / (sqrt(second) / bias_correction2_sqrt + eps)
            multiply(step_size, exp_avg, u)
            sqrt(second, w)
            divide(w, bias_correction2_sqrt, w)
            add(w, eps, w)
            divide(u, w, u)
            subtract(param, u, param)

    return twin


# Adam / AdamW, in place on the parameter and both moment buffers (no 0 * param term without
# weight decay: it would turn an infinite parameter into NaN). `step` is this update's count and
# may live in device memory, so a replayed CUDA graph computes the bias corrections itself:
# 1 - beta**step = -expm1(step * log(beta)), with log(beta) from the host in double precision
# (no cancellation for beta2 = 0.999 in float32).
ADAM_SCALARS = ("lr", "step", "beta1", "beta2", "log_beta1", "log_beta2", "eps", "weight_decay")
_ADAM_UPDATE = (" exp_avg_sq = beta2 * exp_avg_sq + ((T)1 - beta2) * g * g;"
                " T step_size = lr / -expm1(step * log_beta1);"
                " T bias_correction2_sqrt = sqrt(-expm1(step * log_beta2));"
                " param -= step_size * exp_avg / (sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)")


def _adam_twin(grad, lr, step, beta1, beta2, log_beta1, log_beta2, eps, weight_decay,
               param, exp_avg, exp_avg_sq):
    g = grad + weight_decay * param if float(weight_decay) != 0 else grad
    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    real = param.dtype.type  # the corrections in the parameters' precision, as the kernel's T
    step_size = real(lr) / -np.expm1(real(step) * real(log_beta1))
    bias_correction2_sqrt = np.sqrt(-np.expm1(real(step) * real(log_beta2)))
    param = param - step_size * exp_avg / (np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)
    return param, exp_avg, exp_avg_sq


ADAM_STEP = Elementwise(
    "adam_step", "T grad, " + ", ".join(f"T {n}" for n in ADAM_SCALARS), "T param, T exp_avg, T exp_avg_sq",
    "T g = weight_decay != 0 ? grad + weight_decay * param : grad; exp_avg += ((T)1 - beta1) * (g - exp_avg);"
    + _ADAM_UPDATE,
    _adam_twin, scalars=ADAM_SCALARS, domain=(0.0, 3.0),
    inplace_twin=_adam_inplace_twin(_adam_twin, False, False))


# AdamW: the weight decay shrinks the parameter directly (decoupled), it never enters the moments.
def _adamw_twin(grad, lr, step, beta1, beta2, log_beta1, log_beta2, eps, weight_decay,
                param, exp_avg, exp_avg_sq):
    param = param * (1 - lr * weight_decay)
    return _adam_twin(grad, lr, step, beta1, beta2, log_beta1, log_beta2, eps, 0.0,
                      param, exp_avg, exp_avg_sq)


ADAMW_STEP = Elementwise(
    "adamw_step", "T grad, " + ", ".join(f"T {n}" for n in ADAM_SCALARS), "T param, T exp_avg, T exp_avg_sq",
    "param *= (T)1 - lr * weight_decay; T g = grad; exp_avg += ((T)1 - beta1) * (g - exp_avg);"
    + _ADAM_UPDATE,
    _adamw_twin, scalars=ADAM_SCALARS, domain=(0.0, 3.0),
    inplace_twin=_adam_inplace_twin(_adamw_twin, True, False))
# The optimizers' step counts, kept beside the parameters (in device memory on the GPU).
ADD_IN_PLACE = Elementwise("add_in_place", "T value", "T total", "total += value",
                           lambda value, total: total + value, scalars=("value",),
                           inplace_twin=lambda value, total: np.add(total, value, out=total))


# SGD with dampened momentum: buf = momentum * buf + (1 - dampening) * g. (The first update of a
# buffer runs with dampening 0 on a zero buffer, so it starts as the gradient, as in PyTorch.)
def _sgd_dampened_twin(grad, lr, weight_decay, momentum, dampening, nesterov, param, buf):
    g = grad + weight_decay * param if float(weight_decay) != 0 else grad
    buf = momentum * buf + (1 - dampening) * g
    return param - lr * (g + momentum * buf if nesterov else buf), buf


SGD_DAMPENED_MOMENTUM_STEP = Elementwise(
    "sgd_dampened_momentum_step", "T grad, T lr, T weight_decay, T momentum, T dampening, T nesterov",
    "T param, T buf",
    "T g = weight_decay != 0 ? grad + weight_decay * param : grad;"
    " buf = momentum * buf + ((T)1 - dampening) * g;"
    " param -= lr * (nesterov != 0 ? g + momentum * buf : buf)",
    _sgd_dampened_twin, scalars=("lr", "weight_decay", "momentum", "dampening", "nesterov"))

# AMSGrad: the denominator uses the running maximum of exp_avg_sq (NaN propagates, as torch.maximum).
_AMSGRAD_UPDATE = (" exp_avg_sq = beta2 * exp_avg_sq + ((T)1 - beta2) * g * g;"
                   " max_exp_avg_sq = (exp_avg_sq > max_exp_avg_sq || exp_avg_sq != exp_avg_sq)"
                   " ? exp_avg_sq : max_exp_avg_sq;"
                   " T step_size = lr / -expm1(step * log_beta1);"
                   " T bias_correction2_sqrt = sqrt(-expm1(step * log_beta2));"
                   " param -= step_size * exp_avg / (sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps)")


def _amsgrad_twin(decoupled):
    def twin(grad, lr, step, beta1, beta2, log_beta1, log_beta2, eps, weight_decay,
             param, exp_avg, exp_avg_sq, max_exp_avg_sq):
        if decoupled:
            param = param * (1 - lr * weight_decay)
            weight_decay = 0.0
        g = grad + weight_decay * param if float(weight_decay) != 0 else grad
        exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        max_exp_avg_sq = np.where((exp_avg_sq > max_exp_avg_sq) | (exp_avg_sq != exp_avg_sq),
                                  exp_avg_sq, max_exp_avg_sq)
        real = param.dtype.type
        step_size = real(lr) / -np.expm1(real(step) * real(log_beta1))
        bias_correction2_sqrt = np.sqrt(-np.expm1(real(step) * real(log_beta2)))
        param = param - step_size * exp_avg / (np.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps)
        return param, exp_avg, exp_avg_sq, max_exp_avg_sq
    return twin


_AMSGRAD_OUTPUTS = "T param, T exp_avg, T exp_avg_sq, T max_exp_avg_sq"
ADAM_AMSGRAD_STEP = Elementwise(
    "adam_amsgrad_step", "T grad, " + ", ".join(f"T {n}" for n in ADAM_SCALARS), _AMSGRAD_OUTPUTS,
    "T g = weight_decay != 0 ? grad + weight_decay * param : grad; exp_avg += ((T)1 - beta1) * (g - exp_avg);"
    + _AMSGRAD_UPDATE,
    _amsgrad_twin(False), scalars=ADAM_SCALARS, domain=(0.0, 3.0),
    inplace_twin=_adam_inplace_twin(_amsgrad_twin(False), False, True))
ADAMW_AMSGRAD_STEP = Elementwise(
    "adamw_amsgrad_step", "T grad, " + ", ".join(f"T {n}" for n in ADAM_SCALARS), _AMSGRAD_OUTPUTS,
    "param *= (T)1 - lr * weight_decay; T g = grad; exp_avg += ((T)1 - beta1) * (g - exp_avg);"
    + _AMSGRAD_UPDATE,
    _amsgrad_twin(True), scalars=ADAM_SCALARS, domain=(0.0, 3.0),
    inplace_twin=_adam_inplace_twin(_amsgrad_twin(True), True, True))


# RMSprop (PyTorch's rule): square_avg = alpha sq + (1 - alpha) g^2; centered subtracts the
# squared running mean of g; with momentum the step goes through a buffer. One row per set of
# state buffers, so each launch reads and writes only the buffers it has.
RMSPROP_SCALARS = ("lr", "alpha", "eps", "weight_decay", "momentum")


def _rmsprop_row(centered: bool, with_momentum: bool) -> Elementwise:
    outputs = ["param", "square_avg"] + ["grad_avg"] * centered + ["momentum_buffer"] * with_momentum
    body = ("T g = weight_decay != 0 ? grad + weight_decay * param : grad;"
            " square_avg = alpha * square_avg + ((T)1 - alpha) * g * g;")
    if centered:
        body += (" grad_avg += ((T)1 - alpha) * (g - grad_avg);"
                 " T avg = sqrt(square_avg - grad_avg * grad_avg) + eps;")
    else:
        body += " T avg = sqrt(square_avg) + eps;"
    body += (" momentum_buffer = momentum * momentum_buffer + g / avg; param -= lr * momentum_buffer"
             if with_momentum else " param -= lr * (g / avg)")

    def twin(grad, lr, alpha, eps, weight_decay, momentum, param, square_avg, *rest):
        rest = list(rest)
        g = grad + weight_decay * param if float(weight_decay) != 0 else grad
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        results = []
        if centered:
            grad_avg = rest.pop(0)
            grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)
            avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
            results.append(grad_avg)
        else:
            avg = np.sqrt(square_avg) + eps
        if with_momentum:
            buf = momentum * rest.pop(0) + g / avg
            results.append(buf)
            param = param - lr * buf
        else:
            param = param - lr * (g / avg)
        return (param, square_avg, *results)

    name = "rmsprop" + "_centered" * centered + "_momentum" * with_momentum + "_step"
    return Elementwise(name, "T grad, " + ", ".join(f"T {n}" for n in RMSPROP_SCALARS),
                       ", ".join(f"T {n}" for n in outputs), body, twin, scalars=RMSPROP_SCALARS,
                       domain=(0.0, 3.0))


RMSPROP_STEP = _rmsprop_row(False, False)
RMSPROP_MOMENTUM_STEP = _rmsprop_row(False, True)
RMSPROP_CENTERED_STEP = _rmsprop_row(True, False)
RMSPROP_CENTERED_MOMENTUM_STEP = _rmsprop_row(True, True)


# Adagrad (PyTorch's rule): clr = lr / (1 + (step - 1) lr_decay); state_sum += g^2;
# param -= clr g / (sqrt(state_sum) + eps). `step` is this update's count, kept in device memory.
def _adagrad_twin(grad, lr, step, lr_decay, eps, weight_decay, param, state_sum):
    g = grad + weight_decay * param if float(weight_decay) != 0 else grad
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum = state_sum + g * g
    return param - clr * (g / (np.sqrt(state_sum) + eps)), state_sum


ADAGRAD_STEP = Elementwise(
    "adagrad_step", "T grad, T lr, T step, T lr_decay, T eps, T weight_decay", "T param, T state_sum",
    "T g = weight_decay != 0 ? grad + weight_decay * param : grad;"
    " T clr = lr / ((T)1 + (step - (T)1) * lr_decay); state_sum += g * g;"
    " param -= clr * (g / (sqrt(state_sum) + eps))",
    _adagrad_twin, scalars=("lr", "step", "lr_decay", "eps", "weight_decay"), domain=(0.0, 3.0))


# ---------------------------------------------------------------------------------------------
# Matrix product.  On the GPU, 2-D products up to the tiled kernel's limit run on it
# (tiled_gemm.py), larger and batched ones on cuBLAS through our own handle (blas.py); both also
# run while tg.jit captures a CUDA graph. On the CPU, NumPy's matmul.
# ---------------------------------------------------------------------------------------------
SMALL_PRODUCT = 1 << 12


def _cpu_matmul(a: np.ndarray, b: np.ndarray, any_layout: bool = False) -> np.ndarray:
    # (b.T @ a.T).T is column-major, which a gradient must not be (it is kept in its parameter's
    # layout: an optimizer's passes over a parameter and a differently laid out gradient are
    # slow), so only a product whose layout is free (a forward's) is computed that way
    # (below SMALL_PRODUCT elements of b the layout changes nothing measurable: not looked at)
    if (any_layout and a.ndim == 2 and b.ndim == 2 and b.size >= SMALL_PRODUCT and b.flags.f_contiguous
            and not b.flags.c_contiguous):
        # both operands column-major (e.g. x @ W.T with x itself a transposed product): as
        # (b.T @ a.T).T both are row-major, the layout OpenBLAS multiplies fastest (10-25%)
        if a.flags.f_contiguous and not a.flags.c_contiguous:
            return (b.T @ a.T).T
        # x @ W.T (W stored row-major, the Linear layout) with fewer rows than columns runs up to
        # 1.5x faster as (W @ x.T).T: OpenBLAS's kernels prefer the longer side as the rows
        if a.shape[0] < b.shape[1] and a.flags.c_contiguous:
            return (b.T @ a.T).T
    return a @ b


def matmul(a: Any, b: Any, any_layout: bool = False) -> Any:
    """a @ b on either device (NumPy's rules; batched operands broadcast); with `any_layout` the
    CPU may return a column-major product when that multiplies faster."""
    if isinstance(a, np.ndarray):
        if not quiet.depth:
            with silenced_numpy():  # inf/NaN operands follow IEEE rules silently, like the twins
                return _cpu_matmul(a, b, any_layout)
        return _cpu_matmul(a, b, any_layout) if any_layout else a @ b
    try:  # CuPy's OutOfMemoryError becomes ours, with the pool's figures
        return _gpu_matmul(a, b)
    except MemoryError as error:
        raise out_of_memory(error, "cuda", "matmul") from error


def _gpu_matmul(a: Any, b: Any) -> Any:
    if a.dtype != b.dtype or a.dtype.char not in "fd":
        return a @ b  # other dtypes: CuPy's own kernels
    if a.ndim == 1:  # a vector is a one-row (or, on the right, one-column) matrix, as in NumPy
        return _gpu_matmul(a[None], b)[..., 0, :]
    if b.ndim == 1:
        return _gpu_matmul(a, b[:, None])[..., 0]
    if a.ndim == 2 and b.ndim == 2:
        chosen = tiled_gemm.plan_for(a, b)
        return tiled_gemm.gemm(a, b, chosen) if chosen else blas.gemm(a, b)
    return blas.batched_gemm(a, b)


# ---------------------------------------------------------------------------------------------
# Streaming kernels for large contiguous arrays, generated from the same rows.
# CuPy's generic kernels index every operand element by element; on big arrays that arithmetic,
# not memory, sets the pace. These kernels load and store 16 bytes at a time (float4 / double2)
# in a grid-stride loop and run the row's body on each lane, so the formula stays the row's own.
# ---------------------------------------------------------------------------------------------
# Compiled raw kernels (streaming, column, reduction and foreach launches, for the table's rows
# and tg.fuse's generated ones), least recently used dropped first: a kernel is a few tens of KB
# of host and device memory, and the key set grows with rows, dtypes, operand layouts and
# foreach group sizes.
STREAMING_KERNELS = 512
_streaming_cache = LRU(STREAMING_KERNELS)
_THREADS = 256


def _ctype(dtype: Any) -> tuple[str, str, int]:
    return ("float", "float4", 4) if dtype == np.float32 else ("double", "double2", 2)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _within_float32(value: float | int) -> float | int:
    """value, or ±inf where it lies beyond float32's range (so no conversion can overflow)."""
    if -_FLOAT32_MAX <= value <= _FLOAT32_MAX or value != value:
        return value
    return math.inf if value > 0 else -math.inf


def as_scalar(dtype: Any, value: Any) -> Any:
    """A Python number as a kernel argument of `dtype`; beyond its range it becomes ±inf, quietly."""
    if dtype.char == "d" or -_FLOAT32_MAX <= value <= _FLOAT32_MAX:  # (no overflow: no errstate)
        return dtype.type(value)
    with np.errstate(over="ignore"):
        return dtype.type(value)


def _broadcast_period(arg: Any, shape: tuple) -> tuple[str, int] | None:
    """How a contiguous operand smaller than the output repeats over it: ("r", n) when it matches
    the output's last axes (a bias: element i reads arg[i % n]), ("c", n) when it matches the first
    axes and is 1 elsewhere (a per-row value: element i reads arg[i // n]); else None."""
    dims = (1,) * (len(shape) - arg.ndim) + arg.shape
    if len(dims) != len(shape) or not arg._c_contiguous:
        return None
    lead = next((d for d in range(len(shape)) if dims[d] != 1), len(shape))
    if dims[lead:] == shape[lead:]:
        return "r", max(arg.size, 1)
    tail = next((d for d in range(len(shape), 0, -1) if dims[d - 1] != 1), 0)
    if dims[:tail] == shape[:tail] and all(n == 1 for n in dims[tail:]):
        return "c", max(math.prod(shape[tail:]), 1)
    return None


def _streaming_elementwise(row: Elementwise, args: tuple, out: tuple | None = None) -> Any:
    """Run a row as one raw kernel over contiguous arrays; None when not eligible.

    Operands have the output's shape, or repeat over it (a bias along the last axes, a per-row
    value along the first: 16-byte loads still apply when the repeat is a multiple of the vector
    width), or are Python numbers or 0-d device arrays (read once), which is how a learning rate
    kept in device memory reaches the optimizer rows.
    """
    if not row.uniform:
        return None  # an output of another type (bool): CuPy's kernel allocates it
    if out is not None:
        first = out[0]
    else:
        arrays = [arg for arg in args if not isinstance(arg, (int, float, np.generic))]
        if not arrays:
            return None
        first = max(arrays, key=lambda arg: arg.size)
    shape, dtype = first.shape, first.dtype
    if dtype.char not in "fd":
        return None  # the raw kernels are written for float and double
    width = _ctype(dtype)[2]
    modes, periods = [], []
    for arg in (*args, *(out or ())):
        if isinstance(arg, (int, float, np.generic)):
            modes.append("s")
        elif isinstance(arg, np.ndarray):
            return None  # a host array among device arrays: CuPy's kernel says what is wrong
        elif arg.dtype != dtype or arg.data.ptr % 16:
            return None
        elif arg.shape == shape and arg._c_contiguous:
            modes.append("f")
        elif arg.size == 1 and arg.ndim <= len(shape):
            modes.append("z")  # one value for every element (a 0-d array or a (1, 1) one)
        else:
            repeat = _broadcast_period(arg, shape)
            if repeat is None or repeat[1] % width:
                return None
            modes.append(repeat[0])
            periods.append(np.int64(repeat[1]))
    if out is not None and "f" != "".join(set(modes[len(args):])):
        return None  # outputs written in place must be whole arrays
    key = (row.name, dtype.char, tuple(modes), out is not None)
    kernel = _streaming_cache.get(key)
    if kernel is None:
        kernel = _streaming_cache[key] = _build_streaming_elementwise(row, dtype, modes, out is not None)
    if out is None:
        cp = cupy_module()
        outputs = tuple(cp.empty(shape, dtype) for _ in range(row.n_outputs))
    else:
        outputs = out
    n = first.size
    blocks = max(1, -(-(n // width) // _THREADS))
    kernel_args = [as_scalar(dtype, a) if isinstance(a, (int, float, np.generic)) else a for a in args]
    kernel((blocks,), (_THREADS,), (*kernel_args, *outputs, np.int64(n), *periods))
    return outputs[0] if len(outputs) == 1 else outputs


def _build_streaming_elementwise(row: Elementwise, dtype: Any, modes: list[str], in_place: bool) -> Any:
    ctype, vtype, width = _ctype(dtype)
    inputs, outputs = row.input_names, row.output_names
    input_modes = modes[:len(inputs)]
    params = []
    for name, mode in zip(inputs, input_modes):
        params.append(f"const T {name}" if mode == "s" else f"const T* __restrict__ {name}_ptr")
    params += [f"T* __restrict__ {n}_ptr" for n in outputs]
    repeated = [(n, mode) for n, mode in zip(inputs, input_modes) if mode in "rc"]
    periods = "".join(f", long long {n}_period" for n, _ in repeated)
    full = [n for n, mode in zip(inputs, input_modes) if mode == "f"]
    loaded = full + (outputs if in_place else [])  # in-place rows read their outputs first
    zero_d = [n for n, mode in zip(inputs, input_modes) if mode == "z"]
    read_zero_d = "".join(f"const T {n} = {n}_ptr[0]; " for n in zero_d)
    # a repeated operand: "r" reads a whole vector at (index mod period) (period % width == 0, so
    # a vector never wraps), "c" one value per vector at (index / period) (a vector never crosses
    # a period either)
    vector_of = {"r": lambda n: f"reinterpret_cast<const V*>({n}_ptr + (j * {width}) % {n}_period)[0]"}
    load_vectors = "".join(f"V {n}_v = reinterpret_cast<const V*>({n}_ptr)[j]; " for n in loaded)
    load_vectors += "".join(f"V {n}_v = {vector_of['r'](n)}; " if mode == "r" else
                            f"const T {n} = {n}_ptr[(j * {width}) / {n}_period]; " for n, mode in repeated)
    new_vectors = "".join(f"V {n}_v; " for n in outputs if n not in loaded)
    lane_loaded = loaded + [n for n, mode in repeated if mode == "r"]
    lane_inputs = "".join(f"T {n} = reinterpret_cast<const T*>(&{n}_v)[l]; " for n in lane_loaded)
    lane_outputs = "".join(f"reinterpret_cast<T*>(&{n}_v)[l] = {n}; " for n in outputs)
    store_vectors = "".join(f"reinterpret_cast<V*>({n}_ptr)[j] = {n}_v; " for n in outputs)
    tail_inputs = "".join(f"T {n} = {n}_ptr[j]; " for n in loaded)
    tail_inputs += "".join(f"T {n} = {n}_ptr[j % {n}_period]; " if mode == "r" else
                           f"T {n} = {n}_ptr[j / {n}_period]; " for n, mode in repeated)
    tail_outputs = "".join(f"{n}_ptr[j] = {n}; " for n in outputs)
    declare_outputs = "".join(f"T {n}; " for n in outputs if n not in loaded)
    source = f"""
typedef {ctype} T; typedef {vtype} V;
{row.preamble}
extern "C" __global__ void tg_stream_{row.name}({", ".join(params)}, long long n{periods}) {{
  long long stride = (long long)gridDim.x * blockDim.x;
  long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  long long vectors = n / {width};
  {read_zero_d}
  for (long long j = start; j < vectors; j += stride) {{
    {load_vectors}{new_vectors}
    #pragma unroll
    for (int l = 0; l < {width}; ++l) {{
      {lane_inputs}{declare_outputs}
      {{ {row.body}; }}
      {lane_outputs}
    }}
    {store_vectors}
  }}
  for (long long j = vectors * {width} + start; j < n; j += stride) {{
    {tail_inputs}{declare_outputs}
    {{ {row.body}; }}
    {tail_outputs}
  }}
}}
"""
    return Prepared.kernel(source, f"tg_stream_{row.name}")


def _streaming_reduction(row: Reduction, x: Any, scale: float = 1.0) -> Any:
    """Reduce a large contiguous array to a 0-d array: per-block partials, then one block."""
    cp = cupy_module()
    key = (row.name, x.dtype.char)
    kernel = _streaming_cache.get(key)
    if kernel is None:
        kernel = _streaming_cache[key] = _build_streaming_reduction(row, x.dtype)
    partial_kernel, final_kernel = kernel
    out = cp.empty((), x.dtype)
    if x.size < STREAMING_MIN_SIZE:  # small: one block reads everything, one launch
        final_kernel((1,), (_THREADS,), (x, out, np.int64(x.size), as_scalar(x.dtype, scale)))
        return out
    width = _ctype(x.dtype)[2]
    aligned = x.data.ptr % 16 == 0
    blocks = min(1024, max(1, -(-(x.size // width) // _THREADS)))
    partials = cp.empty(blocks, x.dtype)
    partial_kernel((blocks,), (_THREADS,), (x, partials, np.int64(x.size), np.int32(aligned)))
    final_kernel((1,), (_THREADS,), (partials, out, np.int64(blocks), as_scalar(x.dtype, scale)))
    return out


def _column_reduction(row: Reduction, x: Any, n_leading: int, scale: float = 1.0,
                      n_outer: int = 0) -> Any:
    """Reduce the `n_leading` axes after the first `n_outer` ones of a contiguous array, read as
    (outer, rows, columns) and reduced over rows (a bias gradient: outer 1; a pooling window's
    positions: the axes around them kept).

    A block covers 32 columns with 8 threads down each; many rows are cut into chunks reduced side
    by side (blockIdx.y), then the chunks' partial results are reduced by the same kernel: enough
    blocks to fill the GPU for a (4096, 4096) bias gradient, few short loops for a small one.
    """
    cp = cupy_module()
    key = (row.name, x.dtype.char, "columns")
    kernel = _streaming_cache.get(key)
    if kernel is None:
        kernel = _streaming_cache[key] = _build_column_reduction(row, x.dtype)
    outer_shape = x.shape[:n_outer]
    shape = x.shape[n_outer + n_leading:]
    outer = math.prod(outer_shape)
    columns = max(math.prod(shape), 1)
    rows = x.size // (columns * outer) if outer else 0
    column_blocks = -(-columns // 32)
    # split the rows when the columns alone leave the GPU mostly idle and the rows are many (a
    # second launch costs more host time than a few hundred rows cost the GPU)
    chunks = 1
    if rows >= _COLUMN_SPLIT_MIN_ROWS:
        chunks = max(1, min(-(-rows // 32), -(-_COLUMN_BLOCKS_TO_FILL // (column_blocks * outer))))
    chunk = -(-rows // chunks)
    chunks = -(-rows // chunk)
    out = cp.empty(outer_shape + shape, x.dtype)
    unscaled, final = as_scalar(x.dtype, 1), as_scalar(x.dtype, scale)
    block = (32, 8)
    if chunks == 1:
        kernel((column_blocks, 1, outer), block, (x, out, np.int64(rows), np.int64(columns),
                                                  np.int64(rows), np.int32(1), np.int32(1), final))
        return out
    partials = cp.empty((outer, chunks, columns), x.dtype)
    kernel((column_blocks, chunks, outer), block, (x, partials, np.int64(rows), np.int64(columns),
                                                   np.int64(chunk), np.int32(1), np.int32(0), unscaled))
    kernel((column_blocks, 1, outer), block, (partials, out, np.int64(chunks), np.int64(columns),
                                              np.int64(chunks), np.int32(0), np.int32(1), final))
    return out


_COLUMN_BLOCKS_TO_FILL = 512
_COLUMN_SPLIT_MIN_ROWS = 1024


def _build_column_reduction(row: Reduction, dtype: Any) -> Any:
    ctype = _ctype(dtype)[0]
    in_name, out_name = row.input_names[0], row.output_names[0]
    source = f"""
typedef {ctype} T;
__device__ T tg_reduce(T a, T b) {{ return {row.reduce_expr}; }}
__device__ T tg_map(T {in_name}) {{ return {row.map_expr}; }}
extern "C" __global__ void tg_columns_{row.name}(const T* __restrict__ x, T* out, long long rows,
                                                 long long columns, long long chunk, int first,
                                                 int last, T scale) {{
  __shared__ T part[8][33];
  const long long c = (long long)blockIdx.x * 32 + threadIdx.x;
  const long long begin = (long long)blockIdx.y * chunk, end = min(rows, begin + chunk);
  const T* slab = x + (long long)blockIdx.z * rows * columns;
  T a = ({ctype})({row.identity});
  if (c < columns)
    for (long long r = begin + threadIdx.y; r < end; r += 8) {{
      T v = slab[r * columns + c];
      a = tg_reduce(a, first ? tg_map(v) : v);
    }}
  part[threadIdx.y][threadIdx.x] = a;
  __syncthreads();
  if (threadIdx.y == 0 && c < columns) {{
    for (int k = 1; k < 8; ++k) a = tg_reduce(a, part[k][threadIdx.x]);
    if (last) {{ T {out_name}; {row.post_map_expr}; a = {out_name} * scale; }}
    out[((long long)blockIdx.z * gridDim.y + blockIdx.y) * columns + c] = a;
  }}
}}
"""
    return Prepared.kernel(source, f"tg_columns_{row.name}")


_WARPS_TO_FILL = 8192  # warps in flight that keep an H100/H200's memory system busy


def _row_reduction(row: Reduction, x: Any, n_trailing: int, scale: float = 1.0) -> Any:
    """Reduce the trailing `n_trailing` axes of a contiguous array: one warp per row (16-byte loads
    where rows start aligned). Few long rows are cut into segments reduced by a warp each, then the
    segments' partial results are reduced by the same kernel."""
    cp = cupy_module()
    key = (row.name, x.dtype.char, "rows")
    kernel = _streaming_cache.get(key)
    if kernel is None:
        kernel = _streaming_cache[key] = _build_row_reduction(row, x.dtype)
    shape = x.shape[:x.ndim - n_trailing]
    columns = max(math.prod(x.shape[x.ndim - n_trailing:]), 1)
    rows = x.size // columns
    width = _ctype(x.dtype)[2]
    aligned = np.int32(x.data.ptr % 16 == 0 and columns % width == 0)
    segments = max(1, min(-(-_WARPS_TO_FILL // rows), -(-columns // 2048)))
    per_segment = -(-columns // segments)
    chunk = -(-per_segment // width) * width  # a whole number of vectors per segment
    segments = -(-columns // chunk)
    out = cp.empty(shape, x.dtype)
    final = as_scalar(x.dtype, scale)

    def launch(source: Any, target: Any, n_rows: int, n_columns: int, chunk: int, segments: int,
               first: int, last: int, factor: Any, aligned: Any) -> None:
        warps = n_rows * segments
        blocks = min(65535 * 16, -(-warps // (_THREADS // 32)))
        kernel((blocks,), (_THREADS,), (source, target, np.int64(n_rows), np.int64(n_columns),
                                        np.int64(chunk), np.int64(segments), np.int32(first),
                                        np.int32(last), factor, aligned))

    if segments == 1:
        launch(x, out, rows, columns, columns, 1, 1, 1, final, aligned)
        return out
    partials = cp.empty((rows, segments), x.dtype)
    launch(x, partials, rows, columns, chunk, segments, 1, 0, as_scalar(x.dtype, 1), aligned)
    launch(partials, out, rows, segments, segments, 1, 0, 1, final, np.int32(0))
    return out


def _build_row_reduction(row: Reduction, dtype: Any) -> Any:
    ctype, vtype, width = _ctype(dtype)
    in_name, out_name = row.input_names[0], row.output_names[0]
    source = f"""
typedef {ctype} T; typedef {vtype} V;
__device__ T tg_reduce(T a, T b) {{ return {row.reduce_expr}; }}
__device__ T tg_map(T {in_name}) {{ return {row.map_expr}; }}
extern "C" __global__ void tg_rows_{row.name}(const T* __restrict__ x, T* out, long long rows,
                                              long long columns, long long chunk, long long segments,
                                              int first, int last, T scale, int aligned) {{
  const int lane = threadIdx.x & 31;
  const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
  for (long long w = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); w < rows * segments;
       w += warps) {{
    const long long r = w / segments, begin = (w % segments) * chunk;
    const long long end = min(columns, begin + chunk);
    const T* base = x + r * columns;
    T a = ({ctype})({row.identity});
    long long j = begin + lane;
    if (aligned) {{  // begin and end - begin are whole vectors here (chunk and columns are)
      const V* vectors = reinterpret_cast<const V*>(base);
      for (long long v = begin / {width} + lane; v < end / {width}; v += 32) {{
        V value = vectors[v];
        #pragma unroll
        for (int l = 0; l < {width}; ++l) {{
          T e = reinterpret_cast<const T*>(&value)[l];
          a = tg_reduce(a, first ? tg_map(e) : e);
        }}
      }}
      j = end;
    }}
    for (; j < end; j += 32) a = tg_reduce(a, first ? tg_map(base[j]) : base[j]);
    for (int offset = 16; offset > 0; offset >>= 1)
      a = tg_reduce(a, __shfl_down_sync(0xffffffffu, a, offset));
    if (lane == 0) {{
      if (last) {{ T {out_name}; {row.post_map_expr}; a = {out_name} * scale; }}
      out[w] = a;
    }}
  }}
}}
"""
    return Prepared.kernel(source, f"tg_rows_{row.name}")


def _build_streaming_reduction(row: Reduction, dtype: Any) -> tuple:
    ctype, vtype, width = _ctype(dtype)
    in_name, out_name = row.input_names[0], row.output_names[0]
    reduce_fn = f"__device__ T tg_reduce(T a, T b) {{ return {row.reduce_expr}; }}"
    map_fn = f"__device__ T tg_map(T {in_name}) {{ return {row.map_expr}; }}"
    block_reduce = f"""
  for (int offset = 16; offset > 0; offset >>= 1)
    a = tg_reduce(a, __shfl_down_sync(0xffffffffu, a, offset));
  __shared__ T warp_results[{_THREADS // 32}];
  if ((threadIdx.x & 31) == 0) warp_results[threadIdx.x >> 5] = a;
  __syncthreads();
  if (threadIdx.x < 32) {{
    a = threadIdx.x < {_THREADS // 32} ? warp_results[threadIdx.x] : ({ctype})({row.identity});
    for (int offset = 16; offset > 0; offset >>= 1)
      a = tg_reduce(a, __shfl_down_sync(0xffffffffu, a, offset));
  }}"""
    source = f"""
typedef {ctype} T; typedef {vtype} V;
{reduce_fn}
{map_fn}
extern "C" __global__ void tg_stream_{row.name}_partial(const T* __restrict__ x, T* partials,
                                                       long long n, int aligned) {{
  long long stride = (long long)gridDim.x * blockDim.x;
  long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  T a = ({ctype})({row.identity});
  long long vectors = aligned ? n / {width} : 0;
  for (long long j = start; j < vectors; j += stride) {{
    V v = reinterpret_cast<const V*>(x)[j];
    #pragma unroll
    for (int l = 0; l < {width}; ++l) a = tg_reduce(a, tg_map(reinterpret_cast<const T*>(&v)[l]));
  }}
  for (long long j = vectors * {width} + start; j < n; j += stride) a = tg_reduce(a, tg_map(x[j]));
  {block_reduce}
  if (threadIdx.x == 0) partials[blockIdx.x] = a;
}}
extern "C" __global__ void tg_stream_{row.name}_final(const T* __restrict__ partials, T* out, long long n,
                                                     T scale) {{
  T a = ({ctype})({row.identity});
  for (long long j = threadIdx.x; j < n; j += blockDim.x) a = tg_reduce(a, partials[j]);
  {block_reduce}
  if (threadIdx.x == 0) {{ T {out_name}; {row.post_map_expr}; *out = {out_name} * scale; }}
}}
"""
    return Prepared.module(source, f"tg_stream_{row.name}_partial", f"tg_stream_{row.name}_final")


# ---------------------------------------------------------------------------------------------
# Multi-tensor launches: one kernel updates a list of tensors (the optimizer step over all
# parameters). The tensors' pointers and end offsets are plain kernel arguments, so the launch
# needs no table in device memory and can be captured into a CUDA graph as one node.
# ---------------------------------------------------------------------------------------------
_FOREACH_CHUNK = 32
_FOREACH_MAX_BLOCKS = 1024  # per tensor: enough to stream a large one at full speed


_arrivals: dict[int, Any] = {}  # per GPU: zeroed counters of finished blocks, one per tensor of a launch


def prepare_foreach() -> None:
    """Make this GPU's arrival counters now, from the default memory pool (before a capture
    begins, so no graph's private pool owns them)."""
    _arrival_counters()


def _arrival_counters() -> Any:
    """This GPU's counters for counted foreach launches: made once and never replaced (captured
    graphs use this address); every launch leaves them zero again."""
    cp = cupy_module()
    device = cp.cuda.runtime.getDevice()
    counters = _arrivals.get(device)
    if counters is None:
        counters = _arrivals[device] = cp.zeros(_FOREACH_CHUNK, np.uint32)
    return counters


def _foreach_launch(row: Elementwise, arrays: dict[str, list], scalars: dict[str, Any],
                    counted: str | None = None) -> None:
    first_list = next(iter(arrays.values()))
    dtype = first_list[0].dtype
    count = len(first_list)
    for values in arrays.values():  # (foreach checked that they are contiguous)
        for array in values:
            if array.dtype is not dtype and array.dtype != dtype:  # (the same object, as a rule)
                raise ValueError(f"{row.name}: foreach needs contiguous {dtype} arrays, got "
                                 f"{array.dtype} of shape {array.shape}")
    for name, values in scalars.items():
        if type(values) is list and any(v.dtype != dtype or v.size != 1 for v in values):
            raise ValueError(f"{row.name}: foreach needs {name} as one {dtype} element per tensor")
    inputs = row.input_names
    # "t": one 0-d array per tensor, "z": one shared 0-d array, "s": a number passed by value
    scalar_modes = tuple("t" if type(scalars[n]) is list else
                         "z" if hasattr(scalars[n], "ndim") and not isinstance(scalars[n], np.generic)
                         else "s" for n in inputs if n not in arrays)
    key = (row.name, dtype.char, count, scalar_modes, "foreach", counted)
    kernel = _streaming_cache.get(key)
    if kernel is None:
        kernel = _streaming_cache[key] = _build_foreach(row, dtype, count, list(arrays), scalar_modes,
                                                        counted)
    ends, block_ends, blocks = _foreach_geometry(tuple(array.size for array in first_list),
                                                 _THREADS * _ctype(dtype)[2])
    args = [array for name in arrays for array in arrays[name]]
    shared = [n for n in inputs if n not in arrays]
    for name, mode in zip(shared, scalar_modes):
        if mode == "t":
            args += scalars[name]
        else:
            args.append(scalars[name] if mode == "z" else as_scalar(dtype, scalars[name]))
    if counted is not None:
        args.append(_arrival_counters())
    kernel((blocks,), (_THREADS,), (*args, *ends, *block_ends))


@functools.lru_cache(maxsize=256)
def _foreach_geometry(sizes: tuple[int, ...], per_block: int) -> tuple[tuple, tuple, int]:
    """A multi-tensor launch's layout for tensors of `sizes`: each one's end offset, its run of
    blocks' end, and the total number of blocks (kept: an optimizer's sizes repeat every step)."""
    ends, block_ends, total, blocks = [], [], 0, 0
    for size in sizes:
        total += size
        ends.append(np.int64(total))
        blocks += min(_FOREACH_MAX_BLOCKS, max(1, -(-size // per_block)))
        block_ends.append(np.int64(blocks))
    return tuple(ends), tuple(block_ends), blocks


def _build_foreach(row: Elementwise, dtype: Any, count: int, array_names: list[str],
                   scalar_modes: tuple[str, ...], counted: str | None = None) -> Any:
    # Each tensor gets its own run of blocks (in proportion to its size), so small and large
    # tensors are updated side by side; the code for each is written out, so every pointer stays a
    # kernel parameter (no pointer table in local memory), with 16-byte loads where it is aligned.
    # A `counted` per-tensor scalar is read plus one; each block then counts itself finished in
    # the tensor's arrival counter, and the last one writes the new count and zeroes the counter
    # (every block has read the count by then, so none sees the new one).
    ctype, vtype, width = _ctype(dtype)
    inputs, outputs = row.input_names, row.output_names
    params = [f"T* {name}_{t}" for name in array_names for t in range(count)]
    shared = [n for n in inputs if n not in array_names]
    per_tensor = [n for n, mode in zip(shared, scalar_modes) if mode == "t"]
    for name, mode in zip(shared, scalar_modes):
        # a host number (passed by value), a 0-d device array (read once) or one such per tensor
        if mode == "t":
            params += [f"{'' if name == counted else 'const '}T* {name}_{t}" for t in range(count)]
        else:
            params.append(f"const T* {name}_ptr" if mode == "z" else f"const T {name}")
    if counted is not None:
        params.append("unsigned int* tg_arrivals")
    params += [f"long long end_{t}" for t in range(count)]
    params += [f"long long blocks_end_{t}" for t in range(count)]
    read_shared = "".join(f"const T {n} = {n}_ptr[0]; " for n, mode in zip(shared, scalar_modes)
                          if mode == "z")
    loaded = array_names  # every array is read: an in-place row's outputs are its state
    declared = [n for n in outputs if n not in loaded]
    parts = []
    for t in range(count):
        begin = f"end_{t - 1}" if t else "0"
        first_block = f"blocks_end_{t - 1}" if t else "0"
        misaligned = " | ".join(f"(unsigned long long){n}_{t}" for n in array_names)
        tensor_scalars = "".join(f"const T {n} = {n}_{t}[0]{' + (T)1' if n == counted else ''}; "
                                 for n in per_tensor)
        finish = "" if counted is None else f"""
    __syncthreads();
    if (threadIdx.x == 0) {{
      __threadfence();
      if (atomicAdd(&tg_arrivals[{t}], 1u) == (unsigned int)(blocks_end_{t} - {first_block} - 1)) {{
        {counted}_{t}[0] = {counted};
        tg_arrivals[{t}] = 0u;
      }}
    }}"""
        lane_in = "".join(f"T {n} = reinterpret_cast<const T*>(&{n}_v)[l]; " for n in loaded)
        lane_out = "".join(f"reinterpret_cast<T*>(&{n}_v)[l] = {n}; " for n in outputs)
        parts.append(f"""{"else " if t else ""}if (block < blocks_end_{t}) {{ // tensor {t}
    {tensor_scalars}
    const long long size = end_{t} - {begin};
    const long long stride = (blocks_end_{t} - {first_block}) * blockDim.x;
    const long long start = (block - {first_block}) * blockDim.x + threadIdx.x;
    const long long vectors = (({misaligned}) % {width * np.dtype(dtype).itemsize}) ? 0 : size / {width};
    for (long long j = start; j < vectors; j += stride) {{
      {"".join(f"V {n}_v = reinterpret_cast<const V*>({n}_{t})[j]; " for n in loaded)}
      #pragma unroll
      for (int l = 0; l < {width}; ++l) {{
        {lane_in}{"".join(f"T {n}; " for n in declared)}
        {{ {row.body}; }}
        {lane_out}
      }}
      {"".join(f"reinterpret_cast<V*>({n}_{t})[j] = {n}_v; " for n in outputs)}
    }}
    for (long long k = vectors * {width} + start; k < size; k += stride) {{
      {"".join(f"T {n} = {n}_{t}[k]; " for n in loaded)}{"".join(f"T {n}; " for n in declared)}
      {{ {row.body}; }}
      {"".join(f"{n}_{t}[k] = {n}; " for n in outputs)}
    }}{finish}
  }}""")
    source = f"""
typedef {ctype} T; typedef {vtype} V;
{row.preamble}
extern "C" __global__ void tg_foreach_{row.name}({", ".join(params)}) {{
  const long long block = blockIdx.x;
  {read_shared}
  {" ".join(parts)}
}}
"""
    return Prepared.kernel(source, f"tg_foreach_{row.name}")
