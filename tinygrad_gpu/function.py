"""Function: one differentiable primitive, and the code that records it in the graph."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import anomaly
from .anomaly import anomaly_mode
from .backend import DeviceError, device_of
from .dtypes import promote_all
from .scopes import ThreadSwitch


class _GradMode(threading.local):
    enabled = True  # each thread starts with recording on


grad_mode = _GradMode()


class _Recording(threading.local):
    tape: list | None = None  # while tg.fuse traces a function: (op class, args, settings, output)


recording = _Recording()


class no_grad(ThreadSwitch):
    """Context manager (and decorator) under which no operation is recorded (per thread)."""

    state, value = grad_mode, False


class _Diagnosis(threading.local):
    recorder = None  # while diagnose_gradients runs a forward: called with (node, arrays, params)


diagnosis = _Diagnosis()


class _InPlace:
    changes = 0  # in-place changes so far, by any tensor: a node that saw the same count needs no check


in_place = _InPlace()


class VersionCounter:
    """How often a storage was changed in place; one object shared by every tensor aliasing it."""

    __slots__ = ("version",)

    def __init__(self) -> None:
        self.version = 0


def memory_root(array: Any) -> Any:
    """The array that owns the memory behind `array` (itself when it is not a view)."""
    base = getattr(array, "base", None)
    while base is not None and hasattr(base, "nbytes"):
        array, base = base, getattr(base, "base", None)
    return array


def is_writable(array: Any) -> bool:
    """False for arrays NumPy marks read-only and for broadcast views (several elements, one address)."""
    if not getattr(array.flags, "writeable", True):
        return False
    return not any(stride == 0 and n > 1 for stride, n in zip(array.strides, array.shape))


_PACKAGE = __name__.split(".")[0]


def is_grad_enabled() -> bool:
    """True when operations on this thread are being recorded."""
    return grad_mode.enabled


class Function:
    """A node of the graph: `forward` on raw arrays, `backward` returning one gradient per input.

    Subclasses keep what backward needs as attributes of `self`; the engine drops them after
    backward (unless `retain_graph=True`), which frees the saved arrays. The contract, checked
    for subclasses outside the library: forward returns one float array on its inputs' device;
    backward returns a tuple with, per positional input, None (when `needs_input_grad` is False
    for it) or an array of exactly that input's shape, dtype and device.

    Under backward(create_graph=True) the engine calls `backward_graph(self, gy)` instead: the
    same gradients computed with Tensor ops from the Tensors in `self.inputs`, so that they are
    recorded and can be differentiated again. Every library op has one; a user Function without
    it raises a clear error there (its first-order gradients keep working everywhere).
    """

    __slots__ = ("inputs", "needs_input_grad", "released", "input_versions", "changes_seen", "__dict__")

    # True for the library's ops whose backward may return a gradient in the broadcast shape of
    # the output: the engine sums it back to the input's shape. Any other shape mismatch is an error.
    broadcasts_inputs = False
    # True for ops whose output may be a view of input 0's memory: it then shares that storage's
    # version counter, so an in-place change through either is seen by graphs using the other.
    may_view_input = False
    # True for ops whose backward reads their own output (exp, sigmoid, ...): the node records the
    # output's version, so changing the output in place makes backward() raise, as for inputs.
    # None: look whether forward kept it (the default for Functions defined outside the library).
    saves_output: bool | None = False
    # Functions defined outside the library get their forward and backward results checked
    # (type, device, dtype, shape, count); the library's own ops skip those checks.
    user_defined = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.user_defined = cls.__module__.split(".")[0] != _PACKAGE
        if cls.user_defined and "saves_output" not in cls.__dict__:
            cls.saves_output = None

    def forward(self, *args: Any, **params: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_output: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def tape_forward(self, *arrays: Any, **params: Any) -> Callable[[], Any] | None:
        """forward on these very arrays as a function of no arguments, prepared once for a CPU
        tape's replays; None (the default): each replay calls forward."""
        return None

    def tape_backward(self, grad_output: Any) -> Callable[[], Any] | None:
        """backward for this very gradient array as a function of no arguments (after the forward's
        replay), prepared once for a CPU tape's replays; None (the default): each calls backward."""
        return None

    @property
    def name(self) -> str:
        """The op's name, as shown in reprs and error messages."""
        return type(self).__name__

    def release(self) -> None:
        """Forget saved arrays and graph edges: this node cannot be backpropagated again."""
        self.__dict__.clear()
        self.inputs = ()
        self.released = True

    @classmethod
    def apply(cls, *args: Any, **params: Any) -> _tensor.Tensor:
        """Run forward on the arrays behind `args` and record the node when a gradient is needed."""
        Tensor = _tensor.Tensor
        # one pass over the arguments: per argument its array and whether it needs a gradient,
        # per tensor its version
        arrays, needs, versions = [], [], []
        first = None  # the first tensor's array: every other one should match its device and dtype
        uniform = True
        for arg in args:
            if isinstance(arg, Tensor):
                array = arg.array
                if first is None:
                    first = array
                elif type(array) is not type(first) or (array.dtype is not first.dtype
                                                       and array.dtype != first.dtype):
                    uniform = False
                arrays.append(array)
                needs.append(arg.requires_grad)
                counter = arg._counter
                versions.append(0 if counter is None else counter.version)
            else:
                arrays.append(arg)
                needs.append(False)
        if not uniform:  # the rare case: mixed devices (an error) or mixed dtypes (promoted)
            arrays = cls._common_dtype(args, arrays)
        node = cls()
        result = node.forward(*arrays, **params)
        if cls.user_defined:
            result = _checked_forward_result(cls, arrays, result)
        if anomaly_mode.enabled:
            anomaly.check_forward(node, arrays, result)
        # the output tensor, made here as Tensor._from_array makes it (one call less per op)
        out = Tensor.__new__(Tensor)
        out.array, out._grad, out._ctx, out._retains_grad, out._counter = result, None, None, False, None
        out.requires_grad = True in needs and grad_mode.enabled
        if cls.may_view_input and memory_root(result) is memory_root(arrays[0]):
            out._counter = args[0]._version_counter()
        if recording.tape is not None:
            recording.tape.append((cls, args, params, out))
        if out.requires_grad:
            node.inputs = args
            node.needs_input_grad = tuple(needs)
            node.released = False
            # backward() compares these with the tensor inputs' versions then, to catch in-place changes
            node.input_versions, node.changes_seen = versions, in_place.changes
            out._ctx = node
            saves_output = cls.saves_output
            if saves_output is None:  # the node may know after forward (e.g. a fused chain)
                saves_output = node.__dict__.get("keeps_output")
            if saves_output or (saves_output is None and _holds_array(node, result)):
                counter = out._counter
                if counter is None:  # a new output (not a view sharing its input's counter)
                    counter = out._counter = VersionCounter()
                node.output_version = (counter, counter.version)
            if diagnosis.recorder is not None:
                diagnosis.recorder(node, arrays, params)
        return out

    @classmethod
    def _common_dtype(cls, args: tuple, arrays: list) -> list:
        """`arrays` cast to the widest dtype among the tensors; DeviceError for tensors on two devices."""
        Tensor = _tensor.Tensor
        tensors = [arg for arg in args if isinstance(arg, Tensor)]
        first = tensors[0]
        for other in tensors[1:]:
            if other.device != first.device:
                raise DeviceError(
                    f"{cls.__name__}: tensors are on different devices: {first.device!r} "
                    f"(shape {first.shape}) and {other.device!r} (shape {other.shape}); "
                    "move one with .to(device)")
        # PyTorch's promotion: float64 with float32 gives float64, a float with an int or bool the float
        dtype = promote_all(t.dtype for t in tensors)
        return [a.astype(dtype) if hasattr(a, "dtype") and a.dtype != dtype else a for a in arrays]


def _holds_array(node: Function, array: Any) -> bool:
    """True when the node saved `array` (or a view of its memory) among its attributes, or in a list
    or tuple of them."""
    root = memory_root(array)
    for value in vars(node).values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if item is array or (hasattr(item, "strides") and memory_root(item) is root):
                return True
    return False


def _checked_forward_result(cls: type, arrays: list, result: Any) -> Any:
    """A user Function's forward result, which must be one float array on its inputs' device."""
    Tensor = _tensor.Tensor
    if isinstance(result, np.generic):  # NumPy reductions give scalars: make them 0-d arrays
        result = np.asarray(result)
    first = next((a for a in arrays if hasattr(a, "dtype") and hasattr(a, "shape")), None)
    if isinstance(result, Tensor):
        raise TypeError(f"{cls.__name__}.forward returned a Tensor; forward works on arrays: return "
                        "its .array (or compute on the arrays it was given)")
    if not (hasattr(result, "dtype") and hasattr(result, "shape") and hasattr(result, "strides")):
        raise TypeError(f"{cls.__name__}.forward returned {type(result).__name__}, not an array: it must "
                        "return one float32 or float64 array on its inputs' device")
    if first is not None and type(result) is not type(first):
        raise DeviceError(f"{cls.__name__}.forward returned a {type(result).__module__}."
                          f"{type(result).__name__} for inputs on {device_of(first)!r}: it must "
                          "return an array on its inputs' device")
    if result.dtype not in _tensor.FLOAT_DTYPES:
        raise TypeError(f"{cls.__name__}.forward returned an array of dtype {result.dtype}: it must return "
                        "float32 or float64 (cast it with .astype)")
    return result


from . import tensor as _tensor  # noqa: E402  (tensor.py imports this module back)
