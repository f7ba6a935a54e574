"""Tensor: an array on a device plus the graph that produced it, and backward() (the engine)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import anomaly, backend, indexing
from .anomaly import anomaly_mode
from .backend import array_module, is_cupy_array, move
from .function import in_place
from .memory import out_of_memory

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Make parameter initialisation and random factories reproducible (same values on every device)."""
    global _generator
    _generator = np.random.default_rng(seed)


def random_generator() -> np.random.Generator:
    """The host generator every random tensor is drawn from (seeded by manual_seed)."""
    return _generator


def _resolve_dtype(dtype: Any) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype {dtype!r} is not a dtype; use float32 or float64") from exc
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"dtype {resolved} is not supported; use float32 or float64")
    return resolved


def _cast(array: Any, dtype: np.dtype) -> Any:
    """array.astype(dtype); values beyond float32's range become ±inf silently, as on the GPU."""
    if type(array) is np.ndarray:
        with np.errstate(over="ignore"):
            return array.astype(dtype)
    return array.astype(dtype)


def _as_array(data: Any, device: str | None, dtype: Any) -> Any:
    """Turn user data into a float array on a device, sharing memory where nothing must change."""
    if isinstance(data, Tensor):
        data = data.array
    if isinstance(data, np.ndarray) or is_cupy_array(data):
        kind = data.dtype.kind
        if kind not in "fiub":
            raise TypeError(f"cannot make a Tensor from an array of dtype {data.dtype}")
        wanted = _resolve_dtype(dtype) if dtype is not None else (
            data.dtype if data.dtype in FLOAT_DTYPES else np.dtype(np.float32))
        if device is not None:
            device = backend.check_device(device)
        else:  # a CuPy array stays on the GPU; a NumPy array goes where Python data would go
            device = "cuda" if is_cupy_array(data) else backend.default_device()
        array = move(data, device)
        return array if array.dtype == wanted else _cast(array, wanted)
    if isinstance(data, (bool, numbers.Number)) and not isinstance(data, numbers.Real):
        raise TypeError(f"cannot make a Tensor from {type(data).__name__} {data!r}: only real numbers")
    if not isinstance(data, (numbers.Real, list, tuple)):
        raise TypeError(f"cannot make a Tensor from {type(data).__name__}; "
                        "give a number, a nested list, or a NumPy/CuPy array")
    try:
        host = np.asarray(data)
    except ValueError as exc:
        raise ValueError(f"cannot make a Tensor from a ragged nested list: {exc}") from None
    if host.dtype.kind not in "fiub":
        raise TypeError(f"cannot make a Tensor from data of kind {host.dtype} "
                        "(it must hold only real numbers)")
    host = _cast(host, _resolve_dtype(dtype) if dtype is not None else np.float32)
    return move(host, backend.check_device(device) if device is not None else backend.default_device())


def _real(value: Any, what: str) -> float:
    """A Python real number as a float; an int too large for a float is an error, not OverflowError."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{what} {value} is too large for a float") from None


def _sum_to_shape(grad: Any, shape: tuple) -> Any:
    """Undo broadcasting: sum `grad` over the axes where its operand had size 1 or was absent."""
    extra = grad.ndim - len(shape)
    axes = [*range(extra)]  # the leading axes the operand did not have
    for i, n in enumerate(shape):
        if n == 1 and grad.shape[extra + i] != 1:
            axes.append(extra + i)
    if axes:
        grad = K.SUM(grad, axis=tuple(axes), keepdims=True)
    return grad.reshape(shape)


class Tensor:
    """An n-dimensional float array on "cpu" or "cuda" that records the operations applied to it."""

    __slots__ = ("array", "requires_grad", "grad", "_ctx", "_retains_grad", "_version", "__weakref__")
    __array_ufunc__ = None  # NumPy defers to our reflected operators (array + tensor -> Tensor)

    def __init__(self, data: Any, requires_grad: bool = False, device: str | None = None,
                 dtype: Any = None) -> None:
        self.array = _as_array(data, device, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self._ctx = None
        self._retains_grad = False
        self._version = 0  # bumped by every in-place change (optimizer steps, load_state_dict)

    @classmethod
    def _from_array(cls, array: Any, requires_grad: bool = False) -> Tensor:
        """Wrap a backend array as is (the fast path ops use)."""
        t = cls.__new__(cls)
        t.array, t.requires_grad, t.grad, t._ctx, t._retains_grad = array, requires_grad, None, None, False
        t._version = 0
        return t

    # ---- factories --------------------------------------------------------------------------
    @staticmethod
    def _factory(host: np.ndarray, device: str | None, requires_grad: bool) -> Tensor:
        device = backend.check_device(device) if device is not None else backend.default_device()
        return Tensor._from_array(move(host, device), requires_grad)

    @staticmethod
    def _filled(fill: str, shape: tuple, dtype: Any, device: str | None, requires_grad: bool) -> Tensor:
        """zeros or ones made on the device itself (no host copy); a failed allocation says its size."""
        shape, dtype = Tensor._shape(shape), _resolve_dtype(dtype)
        device = backend.check_device(device) if device is not None else backend.default_device()
        try:
            array = getattr(array_module(device), fill)(shape, dtype)
        except MemoryError as error:
            asked = math.prod(shape) * dtype.itemsize
            raise out_of_memory(error, device, f"Tensor.{fill}{shape}", asked) from error
        return Tensor._from_array(array, requires_grad)

    @staticmethod
    def _shape(shape: tuple) -> tuple:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape):
            raise ValueError(f"a shape is a sequence of non-negative integers, got {shape}")
        if math.prod(int(n) for n in shape) >= 2 ** 62:
            raise ValueError(f"shape {shape} has more elements than any device can index")
        return tuple(int(n) for n in shape)

    @staticmethod
    def zeros(*shape: int, device: str | None = None, dtype: Any = np.float32,
              requires_grad: bool = False) -> Tensor:
        """A tensor filled with 0."""
        return Tensor._filled("zeros", shape, dtype, device, requires_grad)

    @staticmethod
    def ones(*shape: int, device: str | None = None, dtype: Any = np.float32,
             requires_grad: bool = False) -> Tensor:
        """A tensor filled with 1."""
        return Tensor._filled("ones", shape, dtype, device, requires_grad)

    @staticmethod
    def randn(*shape: int, device: str | None = None, dtype: Any = np.float32,
              requires_grad: bool = False) -> Tensor:
        """Standard normal samples, from the generator seeded by manual_seed."""
        host = _generator.standard_normal(Tensor._shape(shape), dtype=_resolve_dtype(dtype))
        return Tensor._factory(host, device, requires_grad)

    @staticmethod
    def rand(*shape: int, device: str | None = None, dtype: Any = np.float32,
             requires_grad: bool = False) -> Tensor:
        """Uniform samples in [0, 1), from the generator seeded by manual_seed."""
        host = _generator.random(Tensor._shape(shape), dtype=_resolve_dtype(dtype))
        return Tensor._factory(host, device, requires_grad)

    @staticmethod
    def uniform(*shape: int, low: float = 0.0, high: float = 1.0, device: str | None = None,
                dtype: Any = np.float32, requires_grad: bool = False) -> Tensor:
        """Uniform samples in [low, high), from the generator seeded by manual_seed."""
        low, high = _real(low, "uniform: low"), _real(high, "uniform: high")
        if not np.isfinite(high - low):
            raise ValueError(f"uniform: the range [{low}, {high}) must be finite")
        host = _cast(_generator.uniform(low, high, Tensor._shape(shape)), _resolve_dtype(dtype))
        return Tensor._factory(host, device, requires_grad)

    @staticmethod
    def eye(n: int, m: int | None = None, device: str | None = None, dtype: Any = np.float32,
            requires_grad: bool = False) -> Tensor:
        """An identity matrix of n rows (and m columns)."""
        return Tensor._factory(np.eye(n, m, dtype=_resolve_dtype(dtype)), device, requires_grad)

    # ---- properties -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """The size along each dimension."""
        return self.array.shape

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self.array.ndim

    @property
    def size(self) -> int:
        """The number of elements."""
        return self.array.size

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64."""
        return self.array.dtype

    @property
    def device(self) -> str:
        """"cpu" or "cuda"."""
        return "cpu" if type(self.array) is np.ndarray else "cuda"

    @property
    def grad_fn(self) -> Any:
        """The Function that produced this tensor, or None for a leaf."""
        return self._ctx

    @property
    def is_leaf(self) -> bool:
        """True for tensors made by the user rather than by a recorded op."""
        return self._ctx is None

    @property
    def T(self) -> Tensor:
        """The transpose (all axes reversed)."""
        return self.transpose()

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # ---- host access ------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A host (NumPy) copy of the values."""
        return self.array.copy() if self.device == "cpu" else self.array.get()

    def item(self) -> float:
        """The value of a one-element tensor as a Python float."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return float(self.array.reshape(()))

    def tolist(self) -> Any:
        """The values as nested Python lists."""
        return self.numpy().tolist()

    def __repr__(self) -> str:
        values = np.array2string(self.numpy(), precision=4, separator=", ", prefix="tensor(")
        extra = f", grad_fn=<{self._ctx.name}>" if self._ctx is not None else (
            ", requires_grad=True" if self.requires_grad else "")
        return (f"tensor({values}, shape={self.shape}, dtype={self.dtype}, "
                f"device='{self.device}'{extra})")

    # ---- graph handling ---------------------------------------------------------------------
    def detach(self) -> Tensor:
        """The same values (shared memory), cut from the graph."""
        return Tensor._from_array(self.array)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set requires_grad in place (leaves only) and return self."""
        if self._ctx is not None and not requires_grad:
            raise RuntimeError("requires_grad can only be turned off on a leaf tensor; use detach()")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> Tensor:
        """Keep this non-leaf tensor's gradient in .grad after backward (for inspection)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        self._retains_grad = True
        return self

    def register_post_accumulate_grad_hook(self, hook: Any) -> Any:
        """Call hook(self) each time backward() has finished accumulating this leaf's .grad."""
        return _hooks.register_post_accumulate(self, hook)

    def _bump_version(self) -> None:
        """Note an in-place change of the values: graphs that recorded the old ones refuse backward()."""
        self._version += 1
        in_place.changes += 1

    def to(self, device: str) -> Tensor:
        """This tensor on `device` (the same tensor when already there); differentiable."""
        device = backend.check_device(device)
        if device == self.device:
            return self
        return ops.ToDevice.apply(self, device=device)

    def cpu(self) -> Tensor:
        """This tensor on the CPU."""
        return self.to("cpu")

    def cuda(self) -> Tensor:
        """This tensor on the GPU."""
        return self.to("cuda")

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's .grad, walking the graph in reverse order."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: "
                               "no input of its graph has requires_grad=True")
        array = self.array
        if grad is None:
            if array.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output; this tensor "
                                   f"has shape {self.shape}: reduce it (e.g. .sum()) or pass grad=")
            seed = _ones_seed(self.device, array.shape, array.dtype)
        else:
            seed = _as_array(grad, self.device, array.dtype)
            if seed.shape != array.shape:
                raise ValueError(f"backward(): grad has shape {seed.shape}, the tensor has {self.shape}")
        order = _topological_order(self)
        _hooks.end_of_backward.clear()  # left over from a backward() that raised
        if _diagnostics.debug.enabled:
            _diagnostics.before_backward(order)
        if type(array) is np.ndarray and not K.quiet.depth:
            with K.silenced_numpy():  # one errstate for the whole pass, not one per kernel
                _run_backward(order, seed, retain_graph)
        else:  # on the GPU, or inside an enclosing errstate already
            _run_backward(order, seed, retain_graph)
        if _hooks.end_of_backward:
            _hooks.run_end_of_backward()
        if _diagnostics.debug.enabled:
            _diagnostics.after_backward(self, order)

    # ---- operators --------------------------------------------------------------------------
    def _operand(self, other: Any) -> Any:
        """A Tensor or a Python float for the other side of a binary op."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Real) and not isinstance(other, np.ndarray):
            value = _real(other, "operand")
            if abs(value) > _FLOAT32_MAX and self.array.dtype == np.float32:
                # rounded here, silently (to ±inf): a kernel's own conversion of it would warn
                with np.errstate(over="ignore"):
                    value = float(np.float32(value))
            return value
        return Tensor(other, device=self.device, dtype=self.dtype if not hasattr(other, "dtype")
                      or other.dtype not in FLOAT_DTYPES else None)

    def _binary(self, op: type, a: Any, b: Any) -> Tensor:
        try:
            return op.apply(a, b)
        except ValueError as exc:
            shape = lambda v: v.shape if isinstance(v, Tensor) else "scalar"  # noqa: E731
            raise ValueError(f"{op.__name__.lower()}: cannot broadcast shapes {shape(a)} and "
                             f"{shape(b)} ({exc})") from None

    def __add__(self, other: Any) -> Tensor:
        return self._binary(ops.Add, self, self._operand(other))

    def __radd__(self, other: Any) -> Tensor:
        return self._binary(ops.Add, self._operand(other), self)

    def __sub__(self, other: Any) -> Tensor:
        return self._binary(ops.Sub, self, self._operand(other))

    def __rsub__(self, other: Any) -> Tensor:
        return self._binary(ops.Sub, self._operand(other), self)

    def __mul__(self, other: Any) -> Tensor:
        return self._binary(ops.Mul, self, self._operand(other))

    def __rmul__(self, other: Any) -> Tensor:
        return self._binary(ops.Mul, self._operand(other), self)

    def __truediv__(self, other: Any) -> Tensor:
        return self._binary(ops.Div, self, self._operand(other))

    def __rtruediv__(self, other: Any) -> Tensor:
        return self._binary(ops.Div, self._operand(other), self)

    def __neg__(self) -> Tensor:
        return ops.Neg.apply(self)

    def __pow__(self, exponent: Any) -> Tensor:
        if not isinstance(exponent, numbers.Real) or isinstance(exponent, np.ndarray):
            raise TypeError(f"** takes a real scalar exponent, got {type(exponent).__name__}")
        return ops.Pow.apply(self, exponent=_real(exponent, "** exponent"))

    def __matmul__(self, other: Any) -> Tensor:
        return self.matmul(other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return self._operand_tensor(other).matmul(self)

    def _operand_tensor(self, other: Any) -> Tensor:
        return other if isinstance(other, Tensor) else Tensor(other, device=self.device, dtype=self.dtype)

    def matmul(self, other: Any) -> Tensor:
        """Matrix product with NumPy's rules: 2-D, batched (broadcast batch dims) and 1-D operands."""
        other = self._operand_tensor(other)
        a_shape, b_shape = self.shape, other.shape
        if len(a_shape) == 2 and len(b_shape) == 2 and a_shape[1] == b_shape[0]:
            return ops.MatMul.apply(self, other)  # the common case, without the general checks
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul: operands must have at least one dimension, got shapes "
                             f"{a_shape} and {b_shape}")
        a = self.reshape(1, *a_shape) if self.ndim == 1 else self
        b = other.reshape(*b_shape, 1) if other.ndim == 1 else other
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a_shape} and {b_shape} are not aligned "
                             f"({a.shape[-1]} != {b.shape[-2]})")
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of {a_shape} and {b_shape} "
                             "do not broadcast") from None
        out = ops.MatMul.apply(a, b)
        if self.ndim == 1:
            out = out.reshape(*out.shape[:-2], out.shape[-1])
        if other.ndim == 1:
            out = out.reshape(*out.shape[:-1])
        return out

    # ---- elementwise functions --------------------------------------------------------------
    def exp(self) -> Tensor:
        """e ** self, elementwise."""
        return ops.Exp.apply(self)

    def log(self) -> Tensor:
        """Natural logarithm, elementwise."""
        return ops.Log.apply(self)

    def sqrt(self) -> Tensor:
        """Square root, elementwise."""
        return ops.Sqrt.apply(self)

    def relu(self) -> Tensor:
        """max(self, 0), elementwise (gradient 0 at 0)."""
        return ops.ReLU.apply(self)

    def sigmoid(self) -> Tensor:
        """1 / (1 + e ** -self), elementwise, without overflow."""
        return ops.Sigmoid.apply(self)

    def tanh(self) -> Tensor:
        """Hyperbolic tangent, elementwise."""
        return ops.Tanh.apply(self)

    # ---- reductions -------------------------------------------------------------------------
    def _axes(self, axis: Any) -> tuple | None:
        if axis is None:
            return None
        if not isinstance(axis, (int, np.integer, tuple, list)):
            raise TypeError(f"axis must be None, an int or a tuple of ints, got {type(axis).__name__}")
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        normalized = []
        for a in axes:
            if not isinstance(a, (int, np.integer)) or not -self.ndim <= a < self.ndim:
                raise ValueError(f"axis {a} is out of range for a tensor of shape {self.shape}")
            normalized.append(int(a) % self.ndim)
        if len(set(normalized)) != len(normalized):
            raise ValueError(f"repeated axis in {axis}")
        return tuple(sorted(normalized))

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Sum over `axis` (all axes when None)."""
        return ops.Sum.apply(self, axis=self._axes(axis), keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Mean over `axis` (all axes when None)."""
        axes = self._axes(axis)
        count = self.size if axes is None else math.prod(self.shape[a] for a in axes)
        if count == 0:
            raise ValueError(f"mean over an empty axis (tensor of shape {self.shape})")
        return ops.Sum.apply(self, axis=axes, keepdims=keepdims, scale=1.0 / count)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Maximum over `axis`; the gradient is shared evenly between tied maxima."""
        axes = self._axes(axis)
        if self.size == 0 or (axes is not None and any(self.shape[a] == 0 for a in axes)):
            raise ValueError(f"max over an empty axis (tensor of shape {self.shape})")
        return ops.Max.apply(self, axis=axes, keepdims=keepdims)

    def logsumexp(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        """log(sum(exp(self))) over `axis`, without overflow: the maximum is shifted out first."""
        axes = self._axes(axis)
        if self.size == 0 or (axes is not None and any(self.shape[a] == 0 for a in axes)):
            raise ValueError(f"logsumexp over an empty axis (tensor of shape {self.shape})")
        # NOTE: the shift is a constant (detached): it cancels out of the value and the gradient.
        shift = Tensor._from_array(K.FINITE_OR_ZERO(self.detach().max(axes, keepdims=True).array))
        total = (self - shift).exp().sum(axes, keepdims).log()
        return total + shift.reshape(total.shape)

    # ---- shape ------------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> Tensor:
        """The same values in a new shape (one dimension may be -1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            new_shape = np.empty(self.shape, dtype=np.bool_).reshape(shape).shape
        except (ValueError, TypeError):
            raise ValueError(f"reshape: cannot reshape a tensor of shape {self.shape} "
                             f"({self.size} elements) into {shape}") from None
        if new_shape == self.shape:
            return self
        return ops.Reshape.apply(self, shape=new_shape)

    def transpose(self, *axes: int) -> Tensor:
        """Permute the axes (reverse them when none are given)."""
        if not axes:
            if self.ndim == 2:
                return ops.Transpose.apply(self, axes=(1, 0))
            axes = tuple(reversed(range(self.ndim)))
        elif len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        # NOTE: checked one by one: an out-of-range axis must not wrap around into a valid one
        if (not all(isinstance(a, (int, np.integer)) and -self.ndim <= a < self.ndim for a in axes)
                or sorted(a % self.ndim for a in axes) != list(range(self.ndim))):
            raise ValueError(f"transpose: axes {axes} are not a permutation of a {self.ndim}-d tensor")
        return ops.Transpose.apply(self, axes=tuple(int(a) % self.ndim for a in axes))

    def expand(self, *shape: int) -> Tensor:
        """A broadcast view of this tensor in a larger shape (NumPy broadcasting rules)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            if np.broadcast_shapes(self.shape, shape) != tuple(shape):
                raise ValueError
        except ValueError:
            raise ValueError(f"expand: cannot broadcast shape {self.shape} to {shape}") from None
        if tuple(shape) == self.shape:
            return self
        return ops.Expand.apply(self, shape=tuple(shape))

    broadcast_to = expand

    # ---- issue: indexing, joining, classification ops ----------------------------------------
    def abs(self) -> Tensor:
        """|self|, elementwise (gradient 0 at 0)."""
        return ops.Abs.apply(self)

    def clip(self, min: float | None = None, max: float | None = None) -> Tensor:
        """Values limited to [min, max] (either bound may be None); gradient passes where min <= x <= max."""
        low = -np.inf if min is None else _real(min, "clip: min")
        high = np.inf if max is None else _real(max, "clip: max")
        if min is None and max is None:
            raise ValueError("clip: give at least one of min and max")
        if low > high:
            raise ValueError(f"clip: min {low} is larger than max {high}")
        return ops.Clip.apply(self, low=low, high=high)

    clamp = clip

    def maximum(self, other: Any) -> Tensor:
        """Elementwise larger of self and other (broadcast); on a tie each side gets half the gradient."""
        return self._binary(ops.Maximum, self, self._operand(other))

    def minimum(self, other: Any) -> Tensor:
        """Elementwise smaller of self and other (broadcast); on a tie each side gets half the gradient."""
        return self._binary(ops.Minimum, self, self._operand(other))

    def _compare(self, row: Any, a: Any, b: Any) -> Tensor:
        """A 0/1 mask tensor (no gradient) from a comparison row, with binary-op broadcasting."""
        arrays = [v.array if isinstance(v, Tensor) else v for v in (a, b)]
        if all(hasattr(v, "dtype") for v in arrays) and arrays[0].dtype != arrays[1].dtype:
            arrays = [v.astype(np.float64) for v in arrays]
        try:
            return Tensor._from_array(row(*arrays))
        except ValueError:
            shape = lambda v: v.shape if isinstance(v, Tensor) else "scalar"  # noqa: E731
            raise ValueError(f"comparison: cannot broadcast shapes {shape(a)} and {shape(b)}") from None

    def __gt__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER, self, self._operand(other))

    def __ge__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER_EQUAL, self, self._operand(other))

    def __lt__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER, self._operand(other), self)

    def __le__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER_EQUAL, self._operand(other), self)

    def log_softmax(self, axis: int = -1) -> Tensor:
        """log(softmax(self)) along `axis`, computed stably as (x - max) - log(sum(exp(x - max)))."""
        axes = self._axes(axis)
        # NOTE: the max is detached: subtracting any constant leaves the result (and gradient) unchanged.
        shifted = self - self.detach().max(axis=axes, keepdims=True)
        return shifted - shifted.exp().sum(axis=axes, keepdims=True).log()

    def softmax(self, axis: int = -1) -> Tensor:
        """exp(self) / sum(exp(self)) along `axis`, shifted by the (detached) max so exp cannot overflow."""
        axes = self._axes(axis)
        e = (self - self.detach().max(axis=axes, keepdims=True)).exp()
        return e / e.sum(axis=axes, keepdims=True)

    def squeeze(self, axis: Any = None) -> Tensor:
        """Remove dimensions of size 1 (all of them, or those in `axis`)."""
        if axis is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        axes = self._axes(axis) or ()
        wide = [a for a in axes if self.shape[a] != 1]
        if wide:
            raise ValueError(f"squeeze: axis {wide[0]} of a tensor of shape {self.shape} has size "
                             f"{self.shape[wide[0]]}, not 1")
        return self.reshape(tuple(n for i, n in enumerate(self.shape) if i not in axes))

    def unsqueeze(self, axis: int) -> Tensor:
        """Insert a dimension of size 1 at `axis` (negative counts from the end of the result)."""
        if not isinstance(axis, (int, np.integer)) or not -self.ndim - 1 <= axis <= self.ndim:
            raise ValueError(f"unsqueeze: axis {axis} is out of range for a tensor of shape {self.shape} "
                             f"(allowed {-self.ndim - 1} to {self.ndim})")
        axis = int(axis) % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        """Merge dimensions start_dim..end_dim (inclusive) into one."""
        if self.ndim == 0:
            return self.reshape(1)
        start, end = (self._axes(start_dim) or (0,))[0], (self._axes(end_dim) or (0,))[0]
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                             f"for a tensor of shape {self.shape}")
        merged = int(np.prod(self.shape[start:end + 1]))
        return self.reshape(self.shape[:start] + (merged,) + self.shape[end + 1:])

    def __getitem__(self, key: Any) -> Tensor:
        """NumPy indexing: ints, slices, None, Ellipsis and integer (or boolean) arrays; differentiable."""
        checked, advanced = indexing.normalize_key(key, self.shape, self.device)
        return ops.Index.apply(self, key=checked, advanced=advanced)

    def __iter__(self) -> Any:
        """The sub-tensors along the first axis, t[0], t[1], ... (differentiable)."""
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    # ---- interop ----------------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The values as a NumPy array (CPU tensors only; shared unless a copy or cast is asked for)."""
        if self.device != "cpu":
            raise TypeError(f"a tensor on '{self.device}' (shape {self.shape}, dtype {self.dtype}) cannot "
                            "become a NumPy array implicitly; call .numpy() to copy it to the host")
        array = self.array
        if dtype is not None and np.dtype(dtype) != array.dtype:
            if copy is False:
                raise ValueError(f"cannot view a {array.dtype} tensor as {np.dtype(dtype)} without a copy")
            return array.astype(dtype)
        return array.copy() if copy else array

    def __dlpack__(self, *, stream: Any = None, **kwargs: Any) -> Any:
        """A DLPack capsule of the values (no copy), for np.from_dlpack, cupy/torch/jax from_dlpack."""
        return self.array.__dlpack__(stream=stream, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        """(DLPack device type, device id): (1, 0) for the CPU, (2, id) for a CUDA GPU."""
        return self.array.__dlpack_device__()


def _topological_order(root: Tensor) -> list:
    """Tensors of root's graph that need a gradient, each after all its inputs (no recursion)."""
    # NOTE: tensors go into the set as they are: a Tensor hashes by identity (it defines no __eq__)
    order, visited = [], set()
    stack = [(root, False)]
    push, pop, append, visit = stack.append, stack.pop, order.append, visited.add
    while stack:
        node, expanded = pop()
        if expanded:
            append(node)
            continue
        if node in visited:
            continue
        visit(node)
        ctx = node._ctx
        if ctx is None:  # a leaf has no inputs to visit first
            append(node)
            continue
        push((node, True))
        if ctx.released:
            raise RuntimeError(
                f"backward through the graph a second time: the saved values of {ctx.name} were "
                "freed by the first backward(); pass retain_graph=True to the first call to keep them")
        if ctx.changes_seen != in_place.changes:  # something changed in place since ctx was recorded
            _diagnostics.check_in_place_changes(ctx)
        inputs = ctx.inputs
        for i, needed in enumerate(ctx.needs_input_grad):
            if needed and inputs[i] not in visited:
                push((inputs[i], False))
    if _hooks.post_accumulate and len(order) > 1:
        order = _leaves_before_first_consumer(order)
    return order


def _leaves_before_first_consumer(order: list) -> list:
    """The same order with each leaf moved just before its first consumer.

    Backward then finishes a leaf's gradient (and runs its hooks) right after its last consumer,
    not at the end of the pass: what lets data parallelism reduce gradients while backward goes on.
    """
    placed, result = set(), []
    for node in order:
        ctx = node._ctx
        if ctx is None:
            continue
        for parent, needed in zip(ctx.inputs, ctx.needs_input_grad):
            if needed and parent._ctx is None and parent not in placed:
                placed.add(parent)
                result.append(parent)
        result.append(node)
    return result


def _run_backward(order: list, seed: Any, retain_graph: bool) -> None:
    """Apply each node's chain rule, outputs before inputs, summing gradients that meet."""
    grads = {order[-1]: seed}  # tensor -> its gradient so far (tensors hash by identity)
    check_anomalies = anomaly_mode.enabled
    for node in reversed(order):
        g = grads.pop(node, None)
        if g is None:
            continue
        ctx = node._ctx
        if ctx is None:
            _accumulate(node, g)
            if _hooks.post_accumulate:
                _hooks.run_post_accumulate(node)
            continue
        if node._retains_grad:
            _accumulate(node, g)
        input_grads = ctx.backward(g)
        if check_anomalies:
            anomaly.check_backward(ctx, g, input_grads)
        for parent, needed, parent_grad in zip(ctx.inputs, ctx.needs_input_grad, input_grads):
            if not needed or parent_grad is None:
                continue
            array = parent.array
            if parent_grad.shape != array.shape:
                parent_grad = _sum_to_shape(parent_grad, array.shape)
            if parent_grad.dtype != array.dtype:
                parent_grad = _cast(parent_grad, array.dtype)
            previous = grads.get(parent)
            grads[parent] = parent_grad if previous is None else K.ADD(previous, parent_grad)
        if not retain_graph:
            ctx.release()

_seeds: dict = {}


def _ones_seed(device: str, shape: tuple, dtype: Any) -> Any:
    """A ones array to start backward from; on the GPU kept and reused (no fill launch per step)."""
    if device == "cpu":
        seed = np.empty(shape, dtype)
        seed.fill(1)  # as np.ones does, without its Python-level wrapper (half the time)
        return seed
    key = (shape, dtype)
    seed = _seeds.get(key)
    if seed is None:
        seed = _seeds[key] = array_module(device).ones(shape, dtype)
    return seed


def _accumulate(tensor: Tensor, grad: Any) -> None:
    """Add grad into tensor.grad; later accumulations make new arrays, so sharing one is safe."""
    if tensor.grad is None:
        # a broadcast view (stride 0) would be read-only and bigger than it looks, and the reused
        # backward seed (GPU only) must never become someone's .grad: materialise both
        owner = grad if grad.base is None else grad.base
        shared = 0 in grad.strides or (type(owner) is not np.ndarray
                                       and owner is _seeds.get((owner.shape, owner.dtype)))
        tensor.grad = Tensor._from_array(grad.copy() if shared else grad)
    else:
        tensor.grad = Tensor._from_array(K.ADD(tensor.grad.array, grad))


from . import diagnostics as _diagnostics  # noqa: E402
from . import hooks as _hooks  # noqa: E402
from . import kernels as K  # noqa: E402  (the op modules import Tensor)
from . import ops  # noqa: E402
