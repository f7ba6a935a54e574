"""tg.jit: capture a whole training step into a CUDA graph once, then replay it.

The first calls run eagerly (kernels compile, optimizer state is created). The next call records
the step under stream capture, allocating from a private CuPy memory pool that lives as long as
the graph; it and every later call copy their inputs into the captured buffers and launch the
graph: one host call for the whole step. On the CPU the function simply runs as is.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from . import backend
from .tensor import Tensor


class _CaptureState(threading.local):
    active = False  # True while a step is being recorded for a graph (ops avoid cuBLAS then)


capture_state = _CaptureState()


class CaptureError(RuntimeError):
    """The step did something that cannot be recorded into a CUDA graph."""


def _signature(args: tuple) -> tuple:
    return tuple((a.shape, a.dtype, a.device, a.requires_grad) if isinstance(a, Tensor) else a
                 for a in args)


class jit:
    """Wrap a step function of Tensors; on the GPU, replay it as one CUDA graph after warm-up.

    Same shapes only: a call with other shapes, dtypes or devices than the captured one raises
    ValueError. Outputs are the captured tensors themselves, overwritten by each replay. A step
    that cannot be captured (e.g. a matmul too large for the capturable kernel) keeps running
    eagerly; `captured` and `reason` say which happened.
    """

    def __init__(self, fn: Callable[..., Any], warmup: int = 2) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.warmup = fn, warmup
        self.calls = 0
        self.captured = False
        self.reason: str | None = None
        self._graph = self._stream = self._pool = None
        self._inputs: tuple = ()
        self._result: Any = None
        self._signature: tuple | None = None

    def __call__(self, *args: Any) -> Any:
        tensors = [a for a in args if isinstance(a, Tensor)]
        on_gpu = bool(tensors) and tensors[0].device == "cuda"
        if self.captured:
            return self._replay(args)
        self.calls += 1
        if not on_gpu or self.reason is not None or self.calls <= self.warmup:
            return self.fn(*args)
        return self._capture(args)

    def _capture(self, args: tuple) -> Any:
        cp = backend.cupy_module()
        # static copies of the inputs: replays read them, later calls copy into them
        inputs = tuple(Tensor._from_array(a.array.copy(), a.requires_grad) if isinstance(a, Tensor)
                       else a for a in args)
        stream = cp.cuda.Stream()
        pool = cp.cuda.MemoryPool()
        capture_state.active = True
        try:
            # CuPy captures in relaxed mode, where the private pool may still cudaMalloc; the
            # pool keeps every block the graph touches, and nothing else allocates from it
            with stream, cp.cuda.using_allocator(pool.malloc):
                stream.begin_capture()
                try:
                    result = self.fn(*inputs)
                finally:
                    graph = stream.end_capture()
        except CaptureError as exc:
            self.reason = str(exc)
        finally:
            capture_state.active = False
        if self.reason is not None:
            return self.fn(*args)
        stream.synchronize()
        self._graph, self._stream, self._pool = graph, stream, pool
        self._inputs, self._result, self._signature = inputs, result, _signature(args)
        self.captured = True
        return self._replay(args)

    def _replay(self, args: tuple) -> Any:
        signature = _signature(args)
        if signature != self._signature:
            raise ValueError(f"jit: {self.__name__} was captured for inputs {self._signature}, "
                             f"got {signature}; a captured step needs the same shapes every call")
        with self._stream:
            for static, given in zip(self._inputs, args):
                if isinstance(given, Tensor) and given.array is not static.array:
                    static.array[...] = given.array
            self._graph.launch(self._stream)
        return self._result
