"""Function: one differentiable primitive, and the code that records it in the graph."""

from __future__ import annotations

import threading
from typing import Any

from . import anomaly
from .anomaly import anomaly_mode
from .backend import DeviceError
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


def is_grad_enabled() -> bool:
    """True when operations on this thread are being recorded."""
    return grad_mode.enabled


class Function:
    """A node of the graph: `forward` on raw arrays, `backward` returning one gradient per input.

    Subclasses keep what backward needs as attributes of `self`; the engine drops them after
    backward (unless `retain_graph=True`), which frees the saved arrays.
    """

    __slots__ = ("inputs", "needs_input_grad", "released", "input_versions", "changes_seen", "__dict__")

    def forward(self, *args: Any, **params: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_output: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

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
                elif type(array) is not type(first) or array.dtype != first.dtype:
                    uniform = False
                arrays.append(array)
                needs.append(arg.requires_grad)
                versions.append(arg._version)
            else:
                arrays.append(arg)
                needs.append(False)
        if not uniform:  # the rare case: mixed devices (an error) or mixed dtypes (promoted)
            arrays = cls._common_dtype(args, arrays)
        node = cls()
        result = node.forward(*arrays, **params)
        if anomaly_mode.enabled:
            anomaly.check_forward(node, arrays, result)
        out = Tensor._from_array(result, True in needs and grad_mode.enabled)
        if recording.tape is not None:
            recording.tape.append((cls, args, params, out))
        if out.requires_grad:
            node.inputs = args
            node.needs_input_grad = tuple(needs)
            node.released = False
            # backward() compares these with the tensor inputs' versions then, to catch in-place changes
            node.input_versions, node.changes_seen = versions, in_place.changes
            out._ctx = node
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
        # mixed float32/float64 operands promote to float64, as NumPy does
        dtype = max((t.dtype for t in tensors), key=lambda d: d.itemsize)
        return [a.astype(dtype) if hasattr(a, "dtype") and a.dtype != dtype else a for a in arrays]


from . import tensor as _tensor  # noqa: E402  (tensor.py imports this module back)
