"""tg.jit: capture a whole training step into a CUDA graph once, then replay it.

The first calls run eagerly (kernels compile, optimizer state is created). The next call records
the step under stream capture, allocating from a private CuPy memory pool that lives as long as
the graph. The graph's first node copies the inputs into the captured buffers, reading where
they are from a small pointer table in device memory, so a replay is one host call for the whole
step (plus a 8-bytes-per-input table update when the caller passes other arrays than last time).
On the CPU the function simply runs as is.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

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
        self._copy_kernel: Any = None
        self._table = self._table_pointers = None  # device array of source pointers, and its content
        self._seen: tuple = ()  # (array, requires_grad) of the last call's tensors: same signature

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
                copy_inputs = self._input_copier(inputs)
                stream.begin_capture()
                try:
                    copy_inputs()
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

    def _input_copier(self, inputs: tuple) -> Callable[[], None]:
        """A launch (to capture) copying each source in the pointer table into its static input."""
        cp = backend.cupy_module()
        targets = [t.array for t in inputs if isinstance(t, Tensor)]
        count = len(targets)
        self._table = cp.zeros(max(count, 1), np.uint64)
        if not count:
            return lambda: None
        # whole 4-byte words where every input's item is (any view of such a dtype is aligned)
        word, width = (("unsigned int", 4) if all(t.itemsize >= 4 for t in targets)
                       else ("unsigned char", 1))
        params = ", ".join([f"{word}* t{k}" for k in range(count)]
                           + [f"long long end{k}" for k in range(count)])
        source = f"""
extern "C" __global__ void tg_jit_copy_inputs(const unsigned long long* __restrict__ table, {params}) {{
  {word}* targets[{count}] = {{{", ".join(f"t{k}" for k in range(count))}}};
  long long ends[{count}] = {{{", ".join(f"end{k}" for k in range(count))}}};
  for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < ends[{count - 1}];
       j += (long long)gridDim.x * blockDim.x) {{
    int t = 0;
    while (ends[t] <= j) ++t;
    long long k = j - (t ? ends[t - 1] : 0);
    targets[t][k] = reinterpret_cast<const {word}*>(table[t])[k];
  }}
}}
"""
        kernel = cp.RawKernel(source, "tg_jit_copy_inputs")
        ends, total = [], 0
        for target in targets:
            total += target.nbytes // width
            ends.append(np.int64(total))
        blocks = (min(4096, max(1, -(-total // 256))),)
        return lambda: kernel(blocks, (256,), (self._table, *targets, *ends))

    def _same_as_last_call(self, args: tuple) -> bool:
        """The very arrays of the last call (held, so not reused): its signature still holds."""
        if len(args) != len(self._seen):
            return False
        for given, seen in zip(args, self._seen):
            if isinstance(given, Tensor):
                if given.array is not seen[0] or given.requires_grad != seen[1]:
                    return False
            elif given is not seen and given != seen:
                return False
        return True

    def _replay(self, args: tuple) -> Any:
        if not self._same_as_last_call(args):
            signature = _signature(args)
            if signature != self._signature:
                raise ValueError(f"jit: {self.__name__} was captured for inputs {self._signature}, "
                                 f"got {signature}; a captured step needs the same shapes every call")
            self._seen = tuple((a.array, a.requires_grad) if isinstance(a, Tensor) else a for a in args)
        with self._stream:
            pointers = []
            for static, given in zip(self._inputs, args):
                if not isinstance(given, Tensor):
                    continue
                source = given.array
                if not source.flags.c_contiguous:  # a strided view: copied here, onto itself in the graph
                    static.array[...] = source
                    source = static.array
                pointers.append(source.data.ptr)
            if tuple(pointers) != self._table_pointers:  # stream-ordered after earlier replays
                self._table.set(np.array(pointers, np.uint64), stream=self._stream)
                self._table_pointers = tuple(pointers)
            self._graph.launch(self._stream)
        return self._result
