"""Tensor: an array on a device plus the graph that produced it, and backward() (the engine)."""

from __future__ import annotations

import itertools
import math
import numbers
from collections import namedtuple
from typing import Any

import numpy as np

from . import anomaly, backend, device_checks, indexing
from . import dtypes as _dtypes
from .anomaly import anomaly_mode
from .backend import array_module, is_cupy_array, move
from .caches import LRU
from .function import VersionCounter, in_place, is_writable, memory_root
from .memory import out_of_memory

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_generator = np.random.default_rng()
# what max(dim) / min(dim) return, as PyTorch's: values, indices = t.max(1)
ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def manual_seed(seed: int) -> None:
    """Make parameter initialisation and random factories reproducible (same values on every device).

    The seed is an integer in [-2**63, 2**64), as in PyTorch; a negative seed stands for its 64-bit
    two's complement (-1 seeds like 2**64 - 1).
    """
    global _generator
    if not is_integer(seed):
        raise TypeError(f"manual_seed: the seed must be an integer, got {type(seed).__name__} {seed!r}")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"manual_seed: the seed {seed} is outside [-2**63, 2**64)")
    _generator = np.random.default_rng(int(seed) % 2**64)


def random_generator() -> np.random.Generator:
    """The host generator every random tensor is drawn from (seeded by manual_seed)."""
    return _generator


def _resolve_dtype(dtype: Any) -> np.dtype:
    """float32 or float64, from a dtype or its name (what random factories draw in)."""
    return _dtypes.resolve(dtype, FLOAT_DTYPES)


def _cast(array: Any, dtype: np.dtype) -> Any:
    """array.astype(dtype); values beyond float32's range become ±inf silently, as on the GPU."""
    if isinstance(array, np.ndarray):
        with np.errstate(over="ignore"):
            return array.astype(dtype)
    return array.astype(dtype)


def _numbers_from_tensors(data: Any) -> Any:
    """A nested list with every Tensor in it replaced by its number (one-element tensors only)."""
    if isinstance(data, Tensor):
        if data.size != 1:
            raise ValueError(f"cannot make a Tensor from a list holding a tensor of shape {data.shape}: "
                             "only one-element tensors can stand for a number (use tg.stack to join tensors)")
        return data.item()
    if isinstance(data, (list, tuple)):
        return [_numbers_from_tensors(item) for item in data]
    return data


def _holds_tensor(data: Any) -> bool:
    """True when a (nested) list or tuple holds a Tensor somewhere."""
    level = [data]
    while level:  # one depth at a time, with C-level passes: long lists of numbers cost little
        items = list(itertools.chain.from_iterable(level))
        kinds = set(map(type, items))
        if any(issubclass(kind, Tensor) for kind in kinds):
            return True
        nested = [kind for kind in kinds if issubclass(kind, (list, tuple))]
        if not nested:
            return False
        level = items if len(nested) == len(kinds) else [i for i in items if isinstance(i, (list, tuple))]
    return False


def _as_array(data: Any, device: str | None, dtype: Any) -> Any:
    """Turn user data into a float array on a device, sharing memory where nothing must change."""
    if isinstance(data, Tensor):  # a tensor's values stay on its device unless one is named
        device = data.device if device is None else device
        data = data.array
    if isinstance(data, np.ndarray):
        if type(data) is not np.ndarray:
            data = backend.plain_array(data, "cannot make a Tensor from")
        elif not data.flags.writeable:  # e.g. np.broadcast_to: a tensor is updated in place, so copy
            data = data.copy()
    if isinstance(data, np.ndarray) or is_cupy_array(data):
        kind = data.dtype.kind
        if kind not in "fiub":
            raise TypeError(f"cannot make a Tensor from an array of dtype {data.dtype}")
        wanted = _dtypes.resolve(dtype) if dtype is not None else (
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
    if isinstance(data, (list, tuple)) and _holds_tensor(data):
        data = _numbers_from_tensors(data)  # values copied, as torch.tensor does: no graph link
    try:
        host = np.asarray(data)
    except ValueError as exc:
        raise ValueError(f"cannot make a Tensor from a ragged nested list: {exc}") from None
    if host.dtype.kind not in "fiub":
        raise TypeError(f"cannot make a Tensor from data of kind {host.dtype} "
                        "(it must hold only real numbers)")
    host = _cast(host, _dtypes.resolve(dtype) if dtype is not None else np.float32)
    return move(host, backend.check_device(device) if device is not None else backend.default_device())


def _check_grad_dtype(dtype: np.dtype, requires_grad: bool) -> None:
    """Only float tensors can require a gradient (an int or bool value has no derivative)."""
    if requires_grad and dtype.kind != "f":
        raise RuntimeError(f"only floating-point tensors can require gradients, this one has dtype {dtype}; "
                           "make it with dtype=float32 (or call .float())")


def _pick(where: str, dim: Any, axis: Any) -> Any:
    """The axis given as PyTorch's dim= or NumPy's axis= (not both)."""
    if dim is not None and axis is not None:
        raise TypeError(f"{where}: give dim or axis, not both")
    return dim if dim is not None else axis


class _Size(int):
    """The number of elements (NumPy's t.size), also callable as PyTorch's t.size(dim=None)."""

    def __new__(cls, shape: tuple, count: int) -> _Size:
        size = int.__new__(cls, count)
        size.shape = shape
        return size

    def __call__(self, dim: int | None = None) -> Any:
        """The shape, or the size of dimension `dim`."""
        if dim is None:
            return self.shape
        if not isinstance(dim, (int, np.integer)) or not -len(self.shape) <= dim < max(len(self.shape), 1):
            raise IndexError(f"size: dimension {dim} is out of range for shape {self.shape}")
        return self.shape[dim]


def is_integer(value: Any) -> bool:
    """True for a Python or NumPy integer that is not a bool: what an axis, a size or a seed must be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _flag(value: Any, what: str) -> bool:
    """A True/False setting as a bool; anything else (a string, a number) is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _keep(keepdims: Any, keepdim: Any, where: str) -> bool:
    """NumPy's keepdims or PyTorch's keepdim, each a real bool."""
    if type(keepdims) is bool and type(keepdim) is bool:  # the common case: no message to build
        return keepdims or keepdim
    return _flag(keepdims, f"{where}: keepdims") or _flag(keepdim, f"{where}: keepdim")


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
        grad = K.SUM(grad, axis=tuple(axes))
    # (a sum over leading axes alone, a bias's, has the operand's shape already: no reshaped view)
    return grad if grad.shape == shape else grad.reshape(shape)


class Tensor:
    """An n-dimensional array (float32/64, int32/64 or bool) on "cpu" or "cuda" that records the
    operations applied to it (float tensors only take part in gradients)."""

    # _grad is written by the engine directly; .grad is the checked property users assign.
    # _counter is the storage's VersionCounter, shared by aliases; None until one is needed.
    __slots__ = ("array", "requires_grad", "_grad", "_ctx", "_retains_grad", "_counter", "__weakref__")
    __array_ufunc__ = None  # NumPy defers to our reflected operators (array + tensor -> Tensor)

    def __init__(self, data: Any, requires_grad: bool = False, device: str | None = None,
                 dtype: Any = None) -> None:
        requires_grad = _flag(requires_grad, "Tensor: requires_grad")  # bool("no") would be True
        self.array = _as_array(data, device, dtype)
        _check_grad_dtype(self.array.dtype, requires_grad)
        self.requires_grad = requires_grad
        self._grad: Tensor | None = None
        self._ctx = None
        self._retains_grad = False
        # a tensor made from a tensor's own array shares its storage, hence its version counter
        self._counter = (data._version_counter() if isinstance(data, Tensor) and self.array is data.array
                         else None)

    @classmethod
    def _from_array(cls, array: Any, requires_grad: bool = False) -> Tensor:
        """Wrap a backend array as is (the fast path ops use)."""
        t = cls.__new__(cls)
        t.array, t.requires_grad, t._grad, t._ctx, t._retains_grad = array, requires_grad, None, None, False
        t._counter = None
        return t

    # ---- factories --------------------------------------------------------------------------
    @staticmethod
    def _factory(host: np.ndarray, device: str | None, requires_grad: bool) -> Tensor:
        _check_grad_dtype(host.dtype, requires_grad)
        device = backend.check_device(device) if device is not None else backend.default_device()
        return Tensor._from_array(move(host, device), requires_grad)

    @staticmethod
    def _filled(fill: str, shape: tuple, dtype: Any, device: str | None, requires_grad: bool) -> Tensor:
        """zeros or ones made on the device itself (no host copy); a failed allocation says its size."""
        shape, dtype = Tensor._shape(shape), _dtypes.resolve(dtype)
        _check_grad_dtype(dtype, requires_grad)
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
        if not all(is_integer(n) and n >= 0 for n in shape):
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
        if not all(is_integer(k) and k >= 0 for k in (n, n if m is None else m)):
            raise ValueError(f"eye: sizes are non-negative integers, got n={n!r}, m={m!r}")
        return Tensor._factory(np.eye(n, m, dtype=_dtypes.resolve(dtype)), device, requires_grad)

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
        """The number of elements; t.size() (PyTorch's spelling) gives the shape, t.size(d) one dimension."""
        return _Size(self.array.shape, self.array.size)

    def numel(self) -> int:
        """The number of elements."""
        return self.array.size

    @property
    def dtype(self) -> np.dtype:
        """float32, float64, int32, int64 or bool."""
        return self.array.dtype

    def is_floating_point(self) -> bool:
        """True for float32 and float64 tensors (the only ones that can require a gradient)."""
        return self.array.dtype.kind == "f"

    @property
    def device(self) -> str:
        """"cpu" or "cuda"."""
        array = self.array
        return "cpu" if type(array) is np.ndarray else backend.device_of(array)

    @property
    def grad(self) -> Tensor | None:
        """The gradient backward() accumulated here (None before any)."""
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if value is not None:
            self._check_same_kind(value, "grad")
            if value is self:
                raise RuntimeError("a tensor cannot be its own .grad")
        self._grad = value

    def _check_same_kind(self, value: Any, what: str) -> None:
        """Raise unless `value` is a Tensor with this tensor's shape, device and dtype."""
        if not isinstance(value, Tensor):
            raise TypeError(f"assigning .{what}: expected a Tensor (or None) of shape {self.shape}, "
                            f"{self.dtype}, on {self.device!r}; got {type(value).__name__} "
                            "(wrap arrays with tg.Tensor(..., device=..., dtype=...))")
        if value.shape != self.shape:
            raise ValueError(f"assigning .{what}: the tensor has shape {self.shape}, the value has "
                             f"shape {value.shape}")
        if value.device != self.device:
            raise backend.DeviceError(f"assigning .{what}: the tensor of shape {self.shape} is on "
                                      f"{self.device!r}, the value on {value.device!r}")
        if value.dtype != self.dtype:
            raise TypeError(f"assigning .{what}: the tensor of shape {self.shape} is {self.dtype}, the "
                            f"value {value.dtype}")

    @property
    def data(self) -> Tensor:
        """A detached alias: the same storage and version counter, outside any graph."""
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        self._check_same_kind(value, "data")
        counter = value._version_counter()
        # the new counter starts above both old versions: graphs that saw either refuse backward()
        counter.version = max(counter.version, self._version)
        self.array, self._counter = value.array, counter
        self._bump_version()

    @property
    def _version(self) -> int:
        """How many in-place changes this tensor's storage has seen (shared by all its aliases)."""
        counter = self._counter
        return 0 if counter is None else counter.version

    def _version_counter(self) -> VersionCounter:
        """The storage's version counter, made on first need (an alias is about to share it)."""
        counter = self._counter
        if counter is None:
            counter = self._counter = VersionCounter()
        return counter

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
        device_checks.host_read("numpy()", self.array)
        device_checks.raise_pending()
        return self.array.copy() if self.device == "cpu" else self.array.get()

    def item(self) -> Any:
        """The value of a one-element tensor as a Python number (float, int or bool, by dtype)."""
        if self.array.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        device_checks.host_read("item()", self.array)
        device_checks.raise_pending()
        return self.array.reshape(()).item()

    def _scalar(self, what: str) -> Any:
        if self.array.size != 1:
            raise RuntimeError(f"{what} of a tensor with {self.array.size} elements (shape {self.shape}) is "
                               "ambiguous: only one-element tensors convert; use .any() or .all() on a mask")
        device_checks.host_read(what, self.array)
        device_checks.raise_pending()
        return self.array.reshape(()).item()

    def __bool__(self) -> bool:
        return bool(self._scalar("the truth value"))

    def __float__(self) -> float:
        return float(self._scalar("float()"))

    def __int__(self) -> int:
        return int(self._scalar("int()"))

    def __index__(self) -> int:
        if self.array.dtype.kind not in "iu":
            raise TypeError(f"only integer tensors can be used as an index, this one has dtype {self.dtype}")
        return int(self._scalar("an index"))

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
        """The same values (shared memory and version counter), cut from the graph."""
        alias = Tensor._from_array(self.array)
        alias._counter = self._version_counter()
        return alias

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set requires_grad in place (leaves only) and return self."""
        requires_grad = _flag(requires_grad, "requires_grad_: requires_grad")
        if self._ctx is not None and not requires_grad:
            raise RuntimeError("requires_grad can only be turned off on a leaf tensor; use detach()")
        _check_grad_dtype(self.array.dtype, requires_grad)
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
        """Note an in-place change of the values: graphs that recorded the old ones refuse backward().

        Every in-place writer calls this (optimizers, nn.init, load_state_dict, .data = ...); the
        count lives on the storage, so every alias and view of it sees the change.
        """
        counter = self._counter
        if counter is None:
            counter = self._counter = VersionCounter()
        counter.version += 1
        in_place.changes += 1

    @staticmethod
    def _bump_versions(tensors: list) -> None:
        """_bump_version for each of `tensors` (an optimizer's parameters), in one call."""
        for tensor in tensors:
            counter = tensor._counter
            if counter is None:
                counter = tensor._counter = VersionCounter()
            counter.version += 1
        in_place.changes += len(tensors)

    def _check_writable(self, what: str) -> None:
        """ValueError naming `what` when the values cannot be written in place (read-only or broadcast)."""
        if not is_writable(self.array):
            raise ValueError(f"{what}: the tensor of shape {self.shape} ({self.dtype}) is read-only "
                             "(e.g. made from np.broadcast_to or a read-only array); copy it first")

    def to(self, *args: Any, device: str | None = None, dtype: Any = None) -> Tensor:
        """This tensor on a device and/or in a dtype: to("cuda"), to(tg.float64), to("cpu", tg.int64).

        The same tensor when nothing changes; differentiable (between float dtypes, and devices).
        """
        for arg in args:
            if isinstance(arg, str) and arg.split(":")[0] in ("cpu", "cuda"):
                if device is not None:
                    raise TypeError(f"to: two devices given ({device!r} and {arg!r})")
                device = arg
            elif dtype is None:
                dtype = arg
            else:
                raise TypeError(f"to: takes a device and/or a dtype, got {args!r}")
        out = self
        if dtype is not None:
            out = out._cast_to(_dtypes.resolve(dtype, what="to: dtype"))
        if device is not None:
            device = backend.check_device(device)
            if device != out.device:
                out = ops.ToDevice.apply(out, device=device)
        return out

    def _cast_to(self, dtype: np.dtype) -> Tensor:
        """This tensor in `dtype`: recorded between float dtypes, a plain copy (no gradient) otherwise."""
        if dtype == self.array.dtype:
            return self
        if dtype.kind == "f" and self.array.dtype.kind == "f":
            return ops.Cast.apply(self, dtype=dtype)
        return Tensor._from_array(ops.cast(self.array, dtype))

    def cpu(self) -> Tensor:
        """This tensor on the CPU."""
        return self.to("cpu")

    def cuda(self) -> Tensor:
        """This tensor on the GPU."""
        return self.to("cuda")

    def backward(self, gradient: Any = None, retain_graph: bool | None = None, create_graph: bool = False,
                 inputs: Any = None, *, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's .grad, walking the graph in reverse order.

        create_graph=True records the backward pass itself, so each .grad can be differentiated
        again (retain_graph then defaults to True); inputs= accumulates into those tensors only.
        `grad=` is the older name of `gradient`.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: "
                               "no input of its graph has requires_grad=True")
        if grad is not None:
            if gradient is not None:
                raise TypeError("backward(): pass the gradient once, as gradient= (grad= is its older name)")
            gradient = grad
        grad = gradient
        if create_graph is not False or inputs is not None:  # else the fast path below, unchanged
            create_graph = _flag(create_graph, "backward: create_graph")
            from .autograd.functional import _backward_into_grad
            if create_graph or inputs is not None:
                _backward_into_grad(self, gradient, retain_graph, create_graph, inputs)
                return
        retain_graph = bool(retain_graph)
        array = self.array
        if grad is None:
            if array.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output; this tensor "
                                   f"has shape {self.shape}: reduce it (e.g. .sum()) or pass gradient=")
            device = self.device
            seed = _ones_seed(device, array.shape, array.dtype)
            seed_is_ours = device == "cpu"  # a fresh array; the GPU one is cached and reused
        else:
            seed_is_ours = False  # it may share memory with the caller's array
            seed = _as_array(grad, self.device, array.dtype)
            if seed.shape != array.shape:
                raise ValueError(f"backward(): grad has shape {seed.shape}, the tensor has {self.shape}")
        order = _topological_order(self)
        _hooks.end_of_backward.clear()  # left over from a backward() that raised
        if _diagnostics.debug.enabled:
            _diagnostics.before_backward(order)
        if isinstance(array, np.ndarray) and not K.quiet.depth:
            with K.silenced_numpy():  # one errstate for the whole pass, not one per kernel
                _run_backward(order, seed, retain_graph, seed_is_ours)
        else:  # on the GPU, or inside an enclosing errstate already
            _run_backward(order, seed, retain_graph, seed_is_ours)
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
            if self.array.dtype.kind != "f" and isinstance(other, numbers.Integral):
                return other if isinstance(other, (bool, np.bool_)) else int(other)  # integer arithmetic
            value = _real(other, "operand")
            if abs(value) > _FLOAT32_MAX and self.array.dtype == np.float32:
                # rounded here, silently (to ±inf): a kernel's own conversion of it would warn
                with np.errstate(over="ignore"):
                    value = float(np.float32(value))
            return value
        return Tensor(other, device=self.device, dtype=self.dtype if not hasattr(other, "dtype")
                      or other.dtype not in FLOAT_DTYPES else None)

    def _binary(self, op: type, a: Any, b: Any) -> Tensor:
        if self.array.dtype.kind != "f":  # int or bool: PyTorch's result dtype first
            a, b = _promoted(op.__name__.lower(), a, b, floating=op is ops.Div)
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
        return self._binary(ops.Sub, self, self._subtrahend(other))

    def __rsub__(self, other: Any) -> Tensor:
        return self._binary(ops.Sub, self._subtrahend(other), self)

    def _subtrahend(self, other: Any) -> Any:
        """The other operand of -, which (as in PyTorch) must not be a bool or a bool tensor."""
        if isinstance(other, (bool, np.bool_)) or isinstance(other, Tensor) and other.array.dtype.kind == "b":
            raise TypeError("subtraction (-) of bool tensors is not supported; use ^ or logical_xor()")
        return self._operand(other)

    def __mul__(self, other: Any) -> Tensor:
        return self._binary(ops.Mul, self, self._operand(other))

    def __rmul__(self, other: Any) -> Tensor:
        return self._binary(ops.Mul, self._operand(other), self)

    def __truediv__(self, other: Any) -> Tensor:
        return self._binary(ops.Div, self, self._operand(other))

    def __rtruediv__(self, other: Any) -> Tensor:
        return self._binary(ops.Div, self._operand(other), self)

    def __neg__(self) -> Tensor:
        if self.array.dtype.kind == "b":
            raise TypeError("negation (-) of a bool tensor is not supported; use ~ or logical_not()")
        return ops.Neg.apply(self)

    def __pow__(self, exponent: Any) -> Tensor:
        if isinstance(exponent, Tensor):
            return self.pow(exponent)
        if not isinstance(exponent, numbers.Real) or isinstance(exponent, np.ndarray):
            raise TypeError(f"** takes a real scalar exponent or a Tensor, got {type(exponent).__name__}")
        if self.array.dtype.kind != "f" and isinstance(exponent, (numbers.Integral, np.integer)):
            return self._integer_power(int(exponent))
        return ops.Pow.apply(self._floating(), exponent=_real(exponent, "** exponent"))

    def _integer_power(self, exponent: int) -> Tensor:
        """An int (or bool: int64) tensor to a non-negative int power, in integers as PyTorch computes
        it: by repeated squaring (a few multiplications)."""
        if exponent < 0:
            raise ValueError(f"** of a {self.dtype} tensor: integers to negative integer powers are not "
                             "allowed; call .float() first")
        base = self if self.array.dtype.kind != "b" else self.long()
        result = None
        while True:
            if exponent & 1:
                result = base if result is None else result * base
            exponent >>= 1
            if not exponent:
                break
            base = base * base
        return result if result is not None else _ones_of(base)

    def __rpow__(self, base: Any) -> Tensor:
        if not isinstance(base, numbers.Real) or isinstance(base, np.ndarray):
            return NotImplemented
        return ops.PowTensor.apply(_real(base, "** base"), self._floating())

    def pow(self, exponent: Any) -> Tensor:
        """self ** exponent; a Tensor exponent is broadcast and gets a gradient too (results are float)."""
        if not isinstance(exponent, Tensor):
            return self ** exponent
        a, b = _promoted("pow", self._floating(), exponent, floating=True)
        return self._binary(ops.PowTensor, a, b)

    def _floating(self) -> Tensor:
        """self, or for an int/bool tensor its float32 copy (exp, log, ... of integers are float32)."""
        return self if self.array.dtype.kind == "f" else Tensor._from_array(ops.cast(self.array, np.float32))

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
        return ops.Exp.apply(self._floating())

    def log(self) -> Tensor:
        """Natural logarithm, elementwise."""
        return ops.Log.apply(self._floating())

    def sqrt(self) -> Tensor:
        """Square root, elementwise."""
        return ops.Sqrt.apply(self._floating())

    def relu(self) -> Tensor:
        """max(self, 0), elementwise (gradient 0 at 0)."""
        return ops.ReLU.apply(self)

    def sigmoid(self) -> Tensor:
        """1 / (1 + e ** -self), elementwise, without overflow."""
        return ops.Sigmoid.apply(self._floating())

    def tanh(self) -> Tensor:
        """Hyperbolic tangent, elementwise."""
        return ops.Tanh.apply(self._floating())

    # ---- reductions -------------------------------------------------------------------------
    def _axes(self, axis: Any) -> tuple | None:
        if axis is None:
            return None
        if type(axis) is tuple and len(axis) == 1:  # (a,): as a alone
            axis = axis[0] if type(axis[0]) is int else axis
        if type(axis) is int:  # the common case: one axis, in range
            ndim = self.array.ndim
            if -ndim <= axis < ndim:
                return (axis % ndim,)
        if not is_integer(axis) and not isinstance(axis, (tuple, list)):
            raise TypeError(f"axis must be None, an int or a tuple of ints, got {type(axis).__name__}")
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        normalized = []
        for a in axes:
            if isinstance(a, (bool, np.bool_)):  # True is an int to Python, never an axis
                raise TypeError(f"axis must be an int, got {type(a).__name__} {a!r}")
            if not isinstance(a, (int, np.integer)) or not -self.ndim <= a < self.ndim:
                raise ValueError(f"axis {a} is out of range for a tensor of shape {self.shape}")
            normalized.append(int(a) % self.ndim)
        if len(set(normalized)) != len(normalized):
            raise ValueError(f"repeated axis in {axis}")
        return tuple(sorted(normalized))

    def sum(self, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
            keepdim: bool = False) -> Tensor:
        """Sum over `axis` (or dim; all axes when None); bool and int tensors sum to int64."""
        axes, keep = self._axes(_pick("sum", dim, axis)), _keep(keepdims, keepdim, "sum")
        if self.array.dtype.kind != "f":  # counting: no gradient, int64 as in PyTorch
            return Tensor._from_array(K.SUM(ops.cast(self.array, np.int64), axis=axes, keepdims=keep))
        return ops.Sum.apply(self, axis=axes, keepdims=keep)

    def mean(self, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
             keepdim: bool = False) -> Tensor:
        """Mean over `axis` (or dim; all axes when None)."""
        axes, keep = self._axes(_pick("mean", dim, axis)), _keep(keepdims, keepdim, "mean")
        if self.array.dtype.kind != "f":
            raise TypeError(f"mean of a {self.dtype} tensor: the mean needs a float dtype; "
                            "call .float() first")
        count = self.array.size if axes is None else math.prod(self.shape[a] for a in axes)
        scale = 1.0 / count if count else math.nan  # the mean of nothing is NaN, as in PyTorch and NumPy
        return ops.Sum.apply(self, axis=axes, keepdims=keep, scale=scale)

    def var(self, dim: Any = None, unbiased: bool = True, keepdim: bool = False, *,
            correction: float | None = None, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Variance over dim (all axes when None), dividing by n - correction (1 unless unbiased=False)."""
        axes, keep = self._axes(_pick("var", dim, axis)), _keep(keepdims, keepdim, "var")
        x = self._floating()
        count = self.size if axes is None else math.prod(self.shape[a] for a in axes)
        if count == 0:
            raise ValueError(f"var over an empty axis (tensor of shape {self.shape})")
        if correction is None:
            correction = 1 if unbiased else 0
        deviation = x - x.mean(axis=axes, keepdims=True)
        # n - correction <= 0 divides by 0 (inf or NaN), as in PyTorch
        return (deviation * deviation).sum(axis=axes, keepdims=keep) / max(count - correction, 0)

    def std(self, dim: Any = None, unbiased: bool = True, keepdim: bool = False, *,
            correction: float | None = None, axis: Any = None, keepdims: bool = False) -> Tensor:
        """Standard deviation: the square root of var() (same arguments)."""
        return self.var(dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims).sqrt()

    def max(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None,
            keepdims: bool = False) -> Any:
        """The maximum: max() over everything; max(dim) (an int, or dim=) gives (values, indices) as
        PyTorch does; max(axis=...) (NumPy's spelling, ints or tuples) gives the values only; max(tensor)
        is maximum(tensor). The gradient is shared evenly between tied maxima (by index for max(dim))."""
        if isinstance(dim, Tensor):
            return self.maximum(dim)
        return self._extreme("max", dim, _keep(keepdims, keepdim, "max"), axis)

    def min(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None,
            keepdims: bool = False) -> Any:
        """The minimum, with the same forms as max()."""
        if isinstance(dim, Tensor):
            return self.minimum(dim)
        return self._extreme("min", dim, _keep(keepdims, keepdim, "min"), axis)

    def _extreme(self, name: str, dim: Any, keep: bool, axis: Any) -> Any:
        if dim is not None and axis is not None:
            raise TypeError(f"{name}: give dim or axis, not both")
        if isinstance(dim, (int, np.integer)) and not isinstance(dim, (bool, np.bool_)):
            indices = self._arg_extreme(name, dim, True)
            key = _gather_key(indices.array, self._axes(dim)[0])
            values = ops.Index.apply(self, key=key, advanced=True)
            if not keep:
                values, indices = values.squeeze(dim), indices.squeeze(dim)
            return ValuesIndices(values, indices)
        axes = self._axes(dim if dim is not None else axis)
        shape = self.array.shape
        if axes is None:
            empty = self.array.size == 0
        else:
            empty = False
            for a in axes:
                empty = empty or shape[a] == 0
        if empty:
            raise ValueError(f"{name} over an empty axis (tensor of shape {self.shape})")
        if self.array.dtype.kind != "f":  # no gradient, and the rows' identities (±inf) are float-only
            array = getattr(self.array, name)(axis=axes, keepdims=keep)
            return Tensor._from_array(array_module(self.device).asarray(array))
        return (ops.Max if name == "max" else ops.Min).apply(self, axis=axes, keepdims=keep)

    def any(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        """True where any element (along dim, or of the whole tensor) is nonzero, as a bool tensor."""
        return self.ne(0).sum(dim=dim, keepdim=keepdim) > 0

    def all(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        """True where every element (along dim, or of the whole tensor) is nonzero, as a bool tensor."""
        return self.eq(0).sum(dim=dim, keepdim=keepdim) == 0

    def argmax(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None,
               keepdims: bool = False) -> Tensor:
        """The int64 index of the maximum along dim (of the flattened tensor when None); first of ties."""
        return self._arg_extreme("max", _pick("argmax", dim, axis), _keep(keepdims, keepdim, "argmax"))

    def argmin(self, dim: Any = None, keepdim: bool = False, *, axis: Any = None,
               keepdims: bool = False) -> Tensor:
        """The int64 index of the minimum along dim (of the flattened tensor when None); first of ties."""
        return self._arg_extreme("min", _pick("argmin", dim, axis), _keep(keepdims, keepdim, "argmin"))

    def _arg_extreme(self, name: str, dim: Any, keep: bool) -> Tensor:
        if dim is not None and not isinstance(dim, (int, np.integer)):
            raise TypeError(f"arg{name}: dim must be an int or None, got {type(dim).__name__}")
        axis = None if dim is None else self._axes(dim)[0]
        if self.size == 0 or (axis is not None and self.shape[axis] == 0):
            raise ValueError(f"arg{name} over an empty axis (tensor of shape {self.shape})")
        array = self.array.astype(np.int8) if self.array.dtype.kind == "b" else self.array
        found = getattr(array, "arg" + name)(axis=axis).astype(np.int64, copy=False)
        if keep:
            found = found.reshape((1,) * self.ndim if axis is None else self.shape[:axis] + (1,)
                                  + self.shape[axis + 1:])
        return Tensor._from_array(array_module(self.device).asarray(found))

    def logsumexp(self, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
                  keepdim: bool = False) -> Tensor:
        """log(sum(exp(self))) over `axis` (or dim), without overflow: the maximum is shifted out first."""
        axes, keepdims = self._axes(_pick("logsumexp", dim, axis)), _keep(keepdims, keepdim, "logsumexp")
        if (self.size == 0 and axes is None) or (axes is not None and any(self.shape[a] == 0 for a in axes)):
            raise ValueError(f"logsumexp over an empty axis (tensor of shape {self.shape})")
        x = self._floating()
        # NOTE: the shift is a constant (detached): it cancels out of the value and the gradient.
        shift = Tensor._from_array(K.FINITE_OR_ZERO(x.detach().max(axis=axes, keepdims=True).array))
        total = (x - shift).exp().sum(axis=axes, keepdims=keepdims).log()
        return total + shift.reshape(total.shape)

    # ---- shape ------------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> Tensor:
        """The same values in a new shape (one dimension may be -1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        for n in shape:
            if type(n) is not int:
                break
        else:
            if shape == self.array.shape:  # already this shape (plain ints): nothing to record
                return self
        # NOTE: checked here, not left to NumPy, which takes any negative size (-2) for -1 and bools as ints
        if not all(is_integer(n) and n >= -1 for n in shape) or list(shape).count(-1) > 1:
            raise ValueError(f"reshape: a shape is non-negative integers with at most one -1, got {shape} "
                             f"(for a tensor of shape {self.shape})")
        new_shape = tuple(int(n) for n in shape)
        known = math.prod(n for n in new_shape if n != -1)
        size = self.array.size
        if -1 in new_shape:  # the one size that makes the count right (NumPy refuses when none or many)
            if known == 0 or size % known:
                raise ValueError(f"reshape: cannot reshape a tensor of shape {self.shape} "
                                 f"({size} elements) into {shape}")
            new_shape = tuple(size // known if n == -1 else n for n in new_shape)
        elif known != size:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {self.shape} "
                             f"({size} elements) into {shape}")
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
        if (not all(is_integer(a) and -self.ndim <= a < self.ndim for a in axes)
                or sorted(a % self.ndim for a in axes) != list(range(self.ndim))):
            raise ValueError(f"transpose: axes {axes} are not a permutation of a {self.ndim}-d tensor")
        return ops.Transpose.apply(self, axes=tuple(int(a) % self.ndim for a in axes))

    def expand(self, *shape: int) -> Tensor:
        """A broadcast view of this tensor in a larger shape (NumPy broadcasting rules)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not all(is_integer(n) and n >= 0 for n in shape):
            raise ValueError(f"expand: a shape is non-negative integers, got {shape}")
        try:
            if np.broadcast_shapes(self.shape, shape) != tuple(shape):
                raise ValueError
        except ValueError:
            raise ValueError(f"expand: cannot broadcast shape {self.shape} to {shape}") from None
        if tuple(shape) == self.shape:
            return self
        return ops.Expand.apply(self, shape=tuple(shape))

    broadcast_to = expand

    def view(self, *shape: Any) -> Tensor:
        """The same values in a new shape (PyTorch's name for reshape; one dimension may be -1)."""
        return self.reshape(*shape)

    def permute(self, *dims: int) -> Tensor:
        """The dimensions reordered: result dimension i is dimension dims[i] of self."""
        if not dims:
            raise ValueError(f"permute: give an order of the {self.ndim} dimensions")
        return self.transpose(*dims)

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
        if math.isnan(low) or math.isnan(high):
            raise ValueError(f"clip: bounds must not be NaN, got min={min} and max={max}")
        if low > high:
            raise ValueError(f"clip: min {low} is larger than max {high}")
        return ops.Clip.apply(self, low=low, high=high)

    clamp = clip

    def maximum(self, other: Any) -> Tensor:
        """Elementwise larger of self and other (broadcast); ties halve the gradient, NaN gives both all."""
        return self._binary(ops.Maximum, self, self._operand(other))

    def minimum(self, other: Any) -> Tensor:
        """Elementwise smaller of self and other (broadcast); ties halve the gradient, NaN gives both all."""
        return self._binary(ops.Minimum, self, self._operand(other))

    def _compare(self, row: Any, a: Any, b: Any) -> Tensor:
        """A bool tensor (no gradient) from a comparison or logical row, with binary-op broadcasting."""
        a, b = _promoted(row.name, a, b, keep_floats=False)
        try:
            return Tensor._from_array(row(*(v.array if isinstance(v, Tensor) else v for v in (a, b))))
        except ValueError:
            shape = lambda v: v.shape if isinstance(v, Tensor) else "scalar"  # noqa: E731
            raise ValueError(f"{row.name}: cannot broadcast shapes {shape(a)} and {shape(b)}") from None

    def _comparable(self, other: Any) -> Any:
        """other as an operand of == or !=, or None when it is not something a tensor compares with."""
        if isinstance(other, (Tensor, numbers.Real, list, tuple, np.ndarray)) or backend.is_cupy_array(other):
            return self._operand(other)
        return None

    def __eq__(self, other: Any) -> Any:
        operand = self._comparable(other)
        return NotImplemented if operand is None else self._compare(K.EQUAL, self, operand)

    def __ne__(self, other: Any) -> Any:
        operand = self._comparable(other)
        return NotImplemented if operand is None else self._compare(K.NOT_EQUAL, self, operand)

    __hash__ = object.__hash__  # tensors stay usable as dict keys and set members, by identity

    def __gt__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER, self, self._operand(other))

    def __ge__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER_EQUAL, self, self._operand(other))

    def __lt__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER, self._operand(other), self)

    def __le__(self, other: Any) -> Tensor:
        return self._compare(K.GREATER_EQUAL, self._operand(other), self)

    def eq(self, other: Any) -> Tensor:
        """self == other, elementwise, as a bool tensor."""
        return self._compare(K.EQUAL, self, self._operand(other))

    def ne(self, other: Any) -> Tensor:
        """self != other, elementwise, as a bool tensor."""
        return self._compare(K.NOT_EQUAL, self, self._operand(other))

    def gt(self, other: Any) -> Tensor:
        """self > other, elementwise, as a bool tensor."""
        return self > other

    def ge(self, other: Any) -> Tensor:
        """self >= other, elementwise, as a bool tensor."""
        return self >= other

    def lt(self, other: Any) -> Tensor:
        """self < other, elementwise, as a bool tensor."""
        return self < other

    def le(self, other: Any) -> Tensor:
        """self <= other, elementwise, as a bool tensor."""
        return self <= other

    # ---- logical and bitwise ops (bool and integer tensors) ---------------------------------
    def logical_and(self, other: Any) -> Tensor:
        """Elementwise 'both nonzero', as a bool tensor."""
        return self._compare(K.LOGICAL_AND, self, self._operand(other))

    def logical_or(self, other: Any) -> Tensor:
        """Elementwise 'either nonzero', as a bool tensor."""
        return self._compare(K.LOGICAL_OR, self, self._operand(other))

    def logical_xor(self, other: Any) -> Tensor:
        """Elementwise 'exactly one nonzero', as a bool tensor."""
        return self._compare(K.LOGICAL_XOR, self, self._operand(other))

    def logical_not(self) -> Tensor:
        """Elementwise 'is zero', as a bool tensor."""
        return Tensor._from_array(K.LOGICAL_NOT(self.array))

    def _bitwise(self, row: Any, a: Any, b: Any) -> Tensor:
        a, b = _promoted(row.name, a, b, keep_floats=False)
        for v in (a, b):
            if isinstance(v, Tensor) and v.dtype.kind == "f" or isinstance(v, float):
                raise TypeError(f"{row.name} (& | ^) needs bool or integer tensors, got dtype "
                                f"{v.dtype if isinstance(v, Tensor) else 'float'}; use logical_and/or/xor")
        return self._compare(row, a, b)

    def __and__(self, other: Any) -> Tensor:
        return self._bitwise(K.BITWISE_AND, self, self._operand(other))

    def __rand__(self, other: Any) -> Tensor:
        return self._bitwise(K.BITWISE_AND, self._operand(other), self)

    def __or__(self, other: Any) -> Tensor:
        return self._bitwise(K.BITWISE_OR, self, self._operand(other))

    def __ror__(self, other: Any) -> Tensor:
        return self._bitwise(K.BITWISE_OR, self._operand(other), self)

    def __xor__(self, other: Any) -> Tensor:
        return self._bitwise(K.BITWISE_XOR, self, self._operand(other))

    def __rxor__(self, other: Any) -> Tensor:
        return self._bitwise(K.BITWISE_XOR, self._operand(other), self)

    def __invert__(self) -> Tensor:
        kind = self.array.dtype.kind
        if kind == "f":
            raise TypeError(f"~ needs a bool or integer tensor, got dtype {self.dtype}; use logical_not()")
        return Tensor._from_array((K.LOGICAL_NOT if kind == "b" else K.BITWISE_NOT)(self.array))

    def log_softmax(self, dim: int | None = None, *, axis: int | None = None) -> Tensor:
        """log(softmax(self)) along dim (or axis; the last by default), computed stably as
        (x - max) - log(sum(exp(x - max)))."""
        axes = self._axes(_pick("log_softmax", dim, axis) if dim is not None or axis is not None else -1)
        x = self._floating()
        # NOTE: the max is detached: subtracting any constant leaves the result (and gradient) unchanged.
        # (x - max) - log(sum(exp(x - max))), its ops applied directly: their operands are float
        # tensors of matching shapes, so the operators' checks and promotions have nothing to do
        shifted = ops.Sub.apply(x, x.detach().max(axis=axes, keepdims=True))
        total = ops.Sum.apply(ops.Exp.apply(shifted), axis=axes, keepdims=True)
        return ops.Sub.apply(shifted, ops.Log.apply(total))

    def softmax(self, dim: int | None = None, *, axis: int | None = None) -> Tensor:
        """exp(self) / sum(exp(self)) along dim (or axis; the last by default), shifted by the (detached)
        max so exp cannot overflow."""
        axes = self._axes(_pick("softmax", dim, axis) if dim is not None or axis is not None else -1)
        x = self._floating()
        e = (x - x.detach().max(axis=axes, keepdims=True)).exp()
        return e / e.sum(axis=axes, keepdims=True)

    def squeeze(self, dim: Any = None, *, axis: Any = None) -> Tensor:
        """Remove dimensions of size 1 (all of them, or those in dim / axis)."""
        axis = _pick("squeeze", dim, axis)
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
        if not is_integer(axis) or not -self.ndim - 1 <= axis <= self.ndim:
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
        merged = math.prod(self.shape[start:end + 1])
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

    # ---- in place ---------------------------------------------------------------------------
    # Written into this tensor's memory (the same array object); every alias sees the change and
    # graphs that saved the old values refuse backward(). On a tensor in a graph the op is recorded.
    def add_(self, other: Any, *, alpha: Any = 1) -> Tensor:
        """self += alpha * other, in place (other broadcast to self's shape)."""
        return inplace.binary(self, "add", _scaled(other, alpha, "add_"))

    def sub_(self, other: Any, *, alpha: Any = 1) -> Tensor:
        """self -= alpha * other, in place."""
        return inplace.binary(self, "sub", _scaled(other, alpha, "sub_"))

    def mul_(self, other: Any) -> Tensor:
        """self *= other, in place."""
        return inplace.binary(self, "mul", other)

    def div_(self, other: Any) -> Tensor:
        """self /= other, in place (float tensors only: the quotient is a float)."""
        return inplace.binary(self, "div", other)

    def __iadd__(self, other: Any) -> Tensor:
        return inplace.binary(self, "add", other)

    def __isub__(self, other: Any) -> Tensor:
        return inplace.binary(self, "sub", other)

    def __imul__(self, other: Any) -> Tensor:
        return inplace.binary(self, "mul", other)

    def __itruediv__(self, other: Any) -> Tensor:
        return inplace.binary(self, "div", other)

    def neg_(self) -> Tensor:
        """self = -self, in place."""
        return inplace.neg(self)

    def pow_(self, exponent: Any) -> Tensor:
        """self = self ** exponent, in place (a number, or a tensor broadcast to self's shape)."""
        return inplace.pow_(self, exponent)

    def clamp_(self, min: float | None = None, max: float | None = None) -> Tensor:
        """Limit the values to [min, max] in place (either bound may be None)."""
        return inplace.clamp(self, min, max, "clamp_")

    def clip_(self, min: float | None = None, max: float | None = None) -> Tensor:
        """Limit the values to [min, max] in place (clamp_'s other name)."""
        return inplace.clamp(self, min, max, "clip_")

    def fill_(self, value: Any) -> Tensor:
        """Set every element to value (a number or a 0-d tensor), in place."""
        return inplace.fill(self, value)

    def zero_(self) -> Tensor:
        """Set every element to 0, in place."""
        return inplace.fill(self, 0)

    def copy_(self, source: Any) -> Tensor:
        """Copy source's values into this tensor (broadcast to its shape, cast to its dtype, moved to its
        device); the gradient flows back to source."""
        return inplace.copy(self, source)

    def __setitem__(self, key: Any, value: Any) -> None:
        """self[key] = value, in place: every index __getitem__ takes, incl. bool masks; value broadcast."""
        inplace.setitem(self, key, value)

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

    # ---- dtype casts (last in the class: their names would hide the builtins float, int, bool) --
    def float(self) -> Tensor:
        """This tensor as float32 (differentiable from float64)."""
        return self._cast_to(_dtypes.float32)

    def double(self) -> Tensor:
        """This tensor as float64 (differentiable from float32)."""
        return self._cast_to(_dtypes.float64)

    def long(self) -> Tensor:
        """This tensor as int64 (floats are truncated toward zero; no gradient)."""
        return self._cast_to(_dtypes.int64)

    def int(self) -> Tensor:
        """This tensor as int32 (floats are truncated toward zero; no gradient)."""
        return self._cast_to(_dtypes.int32)

    def bool(self) -> Tensor:
        """This tensor as bool (nonzero is True; no gradient)."""
        return self._cast_to(_dtypes.bool_)


def _promoted(where: str, a: Any, b: Any, floating: bool = False,
              keep_floats: bool = True) -> tuple[Any, Any]:
    """a and b (Tensors or Python numbers) in the dtype PyTorch gives their result (float32 with
    `floating` where that would be an integer); with keep_floats, float tensors are left as they
    are for Function.apply to cast (recorded, so their gradient flows)."""
    tensors = [v for v in (a, b) if isinstance(v, Tensor)]
    if len(tensors) == 2 and tensors[0].device != tensors[1].device:
        raise backend.DeviceError(f"{where}: tensors are on different devices: {tensors[0].device!r} "
                                  f"(shape {tensors[0].shape}) and {tensors[1].device!r} (shape "
                                  f"{tensors[1].shape}); move one with .to(device)")
    dtype = _dtypes.promote_all(t.array.dtype for t in tensors)
    for v in (a, b):
        if not isinstance(v, Tensor):
            dtype = _dtypes.with_scalar(dtype, v)
    if floating and dtype.kind != "f":
        dtype = _dtypes.float32
    if where == "sub" and any(t.array.dtype.kind == "b" for t in tensors):
        raise TypeError("subtraction (-) of bool tensors is not supported; use ^ or logical_xor()")

    def convert(v: Any) -> Any:
        if isinstance(v, Tensor):
            kind = v.array.dtype.kind
            if v.array.dtype == dtype or (kind == "f" and keep_floats):
                return v
            return Tensor._from_array(ops.cast(v.array, dtype))
        return float(v) if dtype.kind == "f" else int(v) if dtype.kind in "iu" else bool(v)

    return convert(a), convert(b)


def _scaled(other: Any, alpha: Any, where: str) -> Any:
    """alpha * other for add_/sub_ (other itself when alpha is 1)."""
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{where}: alpha must be a real number, got {type(alpha).__name__}")
    if alpha == 1 and not isinstance(alpha, float):
        return other
    if isinstance(other, (Tensor, numbers.Real)) and not isinstance(other, np.ndarray):
        return other * alpha
    raise TypeError(f"{where}: with alpha, other must be a Tensor or a number, got {type(other).__name__}")


def _ones_of(tensor: Tensor) -> Tensor:
    """Ones of a tensor's shape, dtype and device."""
    return Tensor._from_array(array_module(tensor.device).ones(tensor.shape, tensor.dtype))


def _gather_key(indices: Any, axis: int) -> tuple:
    """An index key picking, along `axis`, the element `indices` (keepdims shape) names in each line."""
    xp = array_module("cpu" if type(indices) is np.ndarray else "cuda")
    shape = indices.shape
    return tuple(indices if i == axis else
                 xp.arange(n, dtype=np.int64).reshape((1,) * i + (n,) + (1,) * (len(shape) - i - 1))
                 for i, n in enumerate(shape))


def _topological_order(root: Tensor, *more_roots: Tensor) -> list:
    """Tensors of the roots' graph that need a gradient, each after all its inputs (no recursion)."""
    # NOTE: tensors go into the set as they are: a Tensor hashes by identity (its __eq__ is
    # elementwise, but sets and dicts compare identity first and equal hashes mean the same object)
    order, visited = [], set()
    stack = [(root, False)]
    if more_roots:  # several outputs (tg.grad): one walk over all of them
        stack = [(r, False) for r in (*reversed(more_roots), root)]
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


def _run_backward(order: list, seed: Any, retain_graph: bool, seed_is_ours: bool = False) -> None:
    """Apply each node's chain rule, outputs before inputs, summing gradients that meet."""
    grads = {order[-1]: seed}  # tensor -> its gradient so far (tensors hash by identity)
    # ids of the memory roots some other owner holds (the caller's seed, a .grad already handed
    # out, what a user Function returned): a .grad made from one of them must be a copy
    held = set() if seed_is_ours else {id(memory_root(seed))}
    check_anomalies = anomaly_mode.enabled
    for node in reversed(order):
        g = grads.pop(node, None)
        if g is None:
            continue
        ctx = node._ctx
        if ctx is None:
            _accumulate(node, g, held)
            if _hooks.post_accumulate:
                _hooks.run_post_accumulate(node)
            continue
        if node._retains_grad:
            _accumulate(node, g, held)
        if _hooks.post_accumulate:
            _hooks.backward_nodes += 1
        input_grads = ctx.backward(g)
        if ctx.user_defined:
            input_grads = _checked_gradients(ctx, g, input_grads)
            held.update(id(memory_root(grad)) for grad in input_grads if grad is not None)
        if check_anomalies:
            anomaly.check_backward(ctx, g, input_grads)
        for parent, needed, parent_grad in zip(ctx.inputs, ctx.needs_input_grad, input_grads):
            if not needed or parent_grad is None:
                continue
            array = parent.array
            if parent_grad.shape != array.shape:
                if not ctx.broadcasts_inputs:
                    index = next(i for i, g in enumerate(input_grads) if g is parent_grad)
                    raise RuntimeError(f"{ctx.name}.backward returned a gradient of shape "
                                       f"{parent_grad.shape} for input {index} of shape {array.shape}")
                parent_grad = _sum_to_shape(parent_grad, array.shape)
            if parent_grad.dtype is not array.dtype and parent_grad.dtype != array.dtype:
                parent_grad = _cast(parent_grad, array.dtype)
            previous = grads.get(parent)
            grads[parent] = parent_grad if previous is None else K.ADD(previous, parent_grad)
        if not retain_graph:
            ctx.release()


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "strides")


def _checked_gradients(ctx: Any, gy: Any, grads: Any) -> list:
    """A user Function's gradients, one per input, each checked against its input; else a clear error."""
    name, inputs = ctx.name, ctx.inputs
    if _is_array(grads) and not isinstance(grads, Tensor) and len(inputs) == 1:
        grads = (grads,)  # one input, one gradient returned bare
    if isinstance(grads, list) and not all(g is None or _is_array(g) for g in grads):
        odd = next(g for g in grads if g is not None and not _is_array(g))
        raise TypeError(f"{name}.backward returned a list holding {type(odd).__name__}: it must return a "
                        f"tuple with one gradient array (or None) per input of forward ({len(inputs)})")
    if not isinstance(grads, (tuple, list)):
        raise TypeError(f"{name}.backward returned {type(grads).__name__}: it must return a tuple with one "
                        f"gradient array (or None) per input of forward ({len(inputs)})")
    grads = list(grads)
    if len(grads) < len(inputs) or any(g is not None for g in grads[len(inputs):]):
        raise RuntimeError(f"{name}.backward returned {len(grads)} gradients for {len(inputs)} inputs: "
                           "it must return one per input of forward (None for those needing none)")
    grads = grads[:len(inputs)]
    for index, (parent, needed, grad) in enumerate(zip(inputs, ctx.needs_input_grad, grads)):
        if not needed:
            grads[index] = None
            continue
        where = f"{name}.backward: the gradient for input {index} (shape {parent.shape}, {parent.dtype})"
        if grad is None:
            raise RuntimeError(f"{where} is None, but that input requires a gradient")
        if isinstance(grad, Tensor):
            raise TypeError(f"{where} is a Tensor; backward works on arrays: return its .array")
        if not _is_array(grad):
            raise TypeError(f"{where} is a {type(grad).__name__}; it must be an array on "
                            f"{parent.device!r} (e.g. xp.full(shape, value))")
        if type(grad) is not type(parent.array):
            raise backend.DeviceError(f"{where} is a {type(grad).__module__}.{type(grad).__name__} "
                                      f"array; the input is on {parent.device!r}")
        if grad.dtype != parent.dtype and grad.dtype != gy.dtype:
            raise TypeError(f"{where} has dtype {grad.dtype}; it must be {parent.dtype}")
        if grad.shape != parent.shape:
            raise RuntimeError(f"{where} has shape {grad.shape}; it must have the input's shape "
                               f"{parent.shape}")
    return grads


# backward's ones seeds on the GPU, by (shape, dtype), least recently used dropped first (a seed
# dropped here is no longer shared, so it may become a .grad as any other array)
SEEDS = 32
_seeds = LRU(SEEDS)


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


def is_ones_seed(array: Any) -> bool:
    """True for the shared ones array that backward() without a gradient starts from on the GPU."""
    return array is _seeds.peek((array.shape, array.dtype))


def _accumulate(tensor: Tensor, grad: Any, held: set) -> None:
    """Add grad into tensor.grad. A first gradient is kept as it is only when no one else holds its
    memory (`held`: ids of memory roots handed out); later accumulations make new arrays."""
    if tensor._grad is None:
        root = id(grad if grad.base is None else memory_root(grad))
        # a broadcast view (stride 0) would be read-only and bigger than it looks: materialise it
        if root in held or 0 in grad.strides:
            grad = grad.copy()
        else:
            held.add(root)
    else:
        grad = K.ADD(tensor._grad.array, grad)
    # the .grad tensor, made here as Tensor._from_array makes it
    kept = tensor._grad = Tensor.__new__(Tensor)
    kept.array, kept.requires_grad, kept._grad, kept._ctx, kept._retains_grad = grad, False, None, None, False
    kept._counter = None


from . import diagnostics as _diagnostics  # noqa: E402
from . import hooks as _hooks  # noqa: E402
from . import inplace, ops  # noqa: E402
from . import kernels as K  # noqa: E402  (the op modules import Tensor)
