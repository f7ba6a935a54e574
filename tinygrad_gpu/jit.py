"""tg.jit: capture a whole training step into a CUDA graph once, then replay it.

The first calls run eagerly (kernels compile, optimizer state is created). The next call records
the step under stream capture, allocating from a private CuPy memory pool that lives as long as
the graph. The graph reads the captured call's own input tensors where they are, so a replay on
those tensors (refilled in place, or unchanged) is one host call for the whole step. The first
call with other tensors records the step once more from buffers of its own: that graph's first
node copies the inputs into them, reading where they are from a small pointer table in device
memory (an 8-bytes-per-input update when the caller passes other arrays than last time).
Whether a step runs on the GPU is learnt from what its warm-up calls touched (every op's tensors,
those it closes over included), so a step taking no arguments is captured too. On the CPU the
step is recorded as a tape of its array work instead (tape.py) and, once one replay has matched
the eager step bit for bit, replayed without the Python engine. A step that cannot be captured
runs eagerly, says why in `reason`, and warns once (CaptureWarning).
"""

from __future__ import annotations

import functools
import threading
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from . import backend, blas, caches, device_checks, kernels, launch
from .function import recording
from .tensor import Tensor


class _CaptureState(threading.local):
    active = False  # True while a step is being recorded for a graph (ops avoid host reads then)


capture_state = _CaptureState()


class CaptureError(RuntimeError):
    """The step did something that cannot be recorded into a CUDA graph."""


class CaptureWarning(RuntimeWarning):
    """A step could not be captured into a CUDA graph: it keeps running eagerly (see `reason`)."""


def _signature(args: tuple) -> tuple:
    return tuple((a.shape, a.dtype, a.device, a.requires_grad) if isinstance(a, Tensor) else a
                 for a in args)


class _DeviceWatch(list):
    """Stands where tg.fuse's tape goes during a warm-up call: every recorded op reports to it, so
    it learns whether the step touched the GPU (through arguments or tensors it closes over)."""

    def __init__(self, outer: list | None) -> None:
        super().__init__()
        self.outer = outer  # an enclosing watcher or trace still sees every op
        self.on_gpu = False

    def append(self, entry: tuple) -> None:
        """Note the op's output device (never kept: the watcher holds no tensor)."""
        if not self.on_gpu:
            self.on_gpu = type(entry[3].array) is not np.ndarray
        if self.outer is not None:
            self.outer.append(entry)


def _graph_replay(graph: Any, stream: Any) -> Callable[[], None]:
    """A call launching `graph` on `stream` with the least host work (straight to cudaGraphLaunch),
    then marking the device-side check buffer for a look at the next read when the graph writes it
    (it does only if the buffer existed when the step was captured)."""
    from cupy_backends.cuda.api import runtime

    graph_launch, executable, stream_pointer = runtime.graphLaunch, graph.graphExec, stream.ptr
    if "cuda" not in device_checks._buffers:
        return functools.partial(graph_launch, executable, stream_pointer)
    armed = device_checks._armed

    def replay() -> None:
        graph_launch(executable, stream_pointer)
        armed.add("cuda")  # the graph reran its device-side checks: the next read looks

    return replay


class jit:
    """Wrap a step function of Tensors; on the GPU, replay it as one CUDA graph after warm-up.

    Arguments may be positional or keyword; a step may also take none and close over its tensors
    (model, optimizer, static input buffers), as in PyTorch's CUDA-graph recipe. The graph reads
    the tensors of the call it was captured in; given other ones, it is captured once more from
    buffers of its own that each call copies its inputs into. Same shapes only:
    a call with other shapes, dtypes, devices or keywords than the captured one raises ValueError
    (one captured graph per step, per instance for a method). Outputs are the captured tensors
    themselves, overwritten by each replay (as with CUDA graphs: copy what you keep). On the CPU
    the step's array work is recorded and replayed instead (bit-identical to eager; settings
    such as opt.lr changed outside the step are followed). A step that cannot be captured (e.g.
    an optimizer creating its state during capture) keeps running eagerly; `captured` and `reason`
    say which happened, and a CaptureWarning is issued once. `on_gpu` says whether the warm-up calls
    touched the GPU (with warmup=0 only the arguments tell).
    """

    def __init__(self, fn: Callable[..., Any], warmup: int = 2, *, method: bool = False) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.warmup = fn, warmup
        self.method = method  # a copy for one instance: the first argument is that instance
        self._per_instance = caches.PerInstance(lambda: jit(fn, warmup, method=True))
        self.on_gpu = False  # whether a warm-up call touched the GPU
        self._kept: list = []  # kernels and programs the captured graph launches: never unloaded
        self.calls = 0
        self.captured = False
        self.reason: str | None = None
        self._graph = self._stream = self._pool = None
        self._inputs: tuple = ()
        self._result: Any = None
        self._signature: tuple | None = None  # (layout, per value its shape, dtype, device...)
        self._layout: tuple = ()  # (how many values are positional, the keywords' names)
        self._copy_kernel: Any = None
        self._table = self._table_pointers = None  # device array of source pointers, and its content
        self._seen: tuple = ()  # (array, requires_grad) of the last call's tensors: same signature
        self._tape: Any = None  # the CPU tape (checked against eager once before it is trusted)
        # the graph reads the captured call's tensors in place: per value (the value, its array);
        # None once the graph copies its inputs (or before capture)
        self._alias: tuple | None = None
        self._forget_stream: Any = None  # drops the graph's cuBLAS workspace (weakref.finalize)
        self._launch: Callable[[], None] | None = None  # one replay of the captured graph
        self._fast: Callable[[], None] | None = None  # _launch, for a call by position on those tensors

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """On an instance, the step bound to it (each instance has its own warm-up and graph)."""
        if instance is None:
            return self
        return types.MethodType(self._per_instance.get(instance, self.__name__), instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast = self._fast
        if fast is not None and not kwargs and self._aliases(args):
            fast()  # the usual replay: the captured call's own tensors again, one launch
            return self._result
        if self.captured and self._graph is None and not kwargs and not self.method:
            # a CPU tape replay of a step called by position: the usual call, taken directly
            return self._replay_tape(None, args, (len(args), ()))
        fn = self.fn
        if self.method:  # the instance is held by the caller's bound method only, never here
            fn, args = functools.partial(fn, args[0]), args[1:]
        names = tuple(sorted(kwargs))
        given = args + tuple(kwargs[n] for n in names)
        layout = (len(args), names)  # which values are positional, which keywords

        def call(*values: Any) -> Any:
            return fn(*values[:len(args)], **dict(zip(names, values[len(args):])))

        if self.captured:
            if self._graph is None:
                return self._replay_tape(call, given, layout)
            if self._alias is not None:
                if self._aliases(given) and layout == self._layout:
                    self._launch()
                    return self._result
                # other tensors than the captured call's: the graph cannot read them in place
                self._check_signature(given, layout, "captured")
                self._drop_graph()
                return self._capture(call, given, layout, alias=False)
            return self._replay(given, layout)
        self.calls += 1
        if self.reason is not None:
            return call(*given)
        if any(isinstance(a, Tensor) and a.device == "cuda" for a in given):
            self.on_gpu = True
        if self.calls <= self.warmup:
            watch = _DeviceWatch(recording.tape)
            recording.tape = watch
            try:
                result = call(*given)
            finally:
                recording.tape = watch.outer
                self.on_gpu |= watch.on_gpu
            outputs = result if isinstance(result, (tuple, list)) else (result,)
            self.on_gpu |= any(isinstance(t, Tensor) and t.device == "cuda" for t in outputs)
            return result
        if not self.on_gpu:  # nothing on the GPU: the CPU records the step's array work
            return self._record_tape(call, given, layout)
        return self._capture(call, given, layout, alias=True)

    def _aliases(self, given: tuple) -> bool:
        """Whether `given` are the captured call's values: its tensors, holding the same arrays."""
        alias = self._alias
        if len(given) != len(alias):
            return False
        for value, (kept, array, requires_grad) in zip(given, alias):
            if value is not kept:
                if array is not None or type(value) is not type(kept) or value != kept:
                    return False
            elif array is not None and (value.array is not array or value.requires_grad != requires_grad):
                return False
        return True

    def _drop_graph(self) -> None:
        """Forget the captured graph (its memory goes with it) before capturing the step anew."""
        self._stream.synchronize()  # its last replay done before its memory and workspace go
        if self._forget_stream is not None:
            self._forget_stream()
        self._graph = self._stream = self._pool = self._alias = self._forget_stream = None
        self._launch = self._fast = None
        self._kept, self._seen, self.captured = [], (), False

    def _record_tape(self, call: Callable[..., Any], args: tuple, layout: tuple) -> Any:
        from . import tape  # the tape patches optimizer code, which imports this module

        if self._tape is None:  # record; the next call checks the tape against eager
            inputs = tuple(Tensor._from_array(a.array.copy(), a.requires_grad) if isinstance(a, Tensor)
                           else a for a in args)
            if any(isinstance(a, Tensor) and type(a.array) is not np.ndarray for a in inputs):
                return self._give_up("an input is not a CPU array", call, args)
            result, recorded, problem = tape.record(lambda: call(*inputs))
            if problem:
                return self._give_up(problem, None, result)
            self._tape, self._inputs, self._result = recorded, inputs, result
            self._signature, self._layout = (layout, _signature(args)), layout
            return result
        self._copy_into_inputs(args, layout)
        result, recorded, problem, trusted = tape.check(self._tape, self._result, lambda: call(*self._inputs))
        if problem:
            self._tape = None
            return self._give_up(problem, None, result)
        self._tape, self._result, self.captured = recorded, result, trusted
        return result

    def _give_up(self, problem: str, call: Callable[..., Any] | None, result: Any) -> Any:
        """Say once why the CPU tape is not used; `call(*result)` runs the step when it has not run."""
        self.reason = f"the CPU tape cannot replay it: {problem}"
        warnings.warn(f"jit: {self.__name__} runs eagerly: {self.reason}", CaptureWarning, stacklevel=4)
        return call(*result) if call is not None else result

    def _copy_into_inputs(self, args: tuple, layout: tuple) -> None:
        """The given values into the recorded input buffers (same signature as recorded, or ValueError)."""
        self._check_signature(args, layout, "recorded")
        for static, given in zip(self._inputs, args):
            if isinstance(given, Tensor) and given.array is not static.array:
                static.array[...] = given.array  # same shape and dtype (the signature says so)

    def _replay_tape(self, call: Callable[..., Any] | None, args: tuple, layout: tuple) -> Any:
        """Replay the CPU tape on `args`; `call` (None: self.fn, for positional arguments) runs the step
        eagerly when the replay finds it taking another path."""
        self._copy_into_inputs(args, layout)
        try:
            self._tape()
        except self._tape.Diverged:  # another path this time (found in the forward, before any update):
            # this call runs eagerly; the tape stays for the next ones
            return (call or self.fn)(*self._inputs)
        return self._result

    def _capture(self, call: Callable[..., Any], args: tuple, layout: tuple, alias: bool) -> Any:
        """Record the step into a graph and run it; with `alias` the graph reads `args` in place,
        else static copies of them that each replay refills."""
        kept: list = []  # what the caches hand out while recording: the graph launches it
        outer_keep = caches.keep_alive.target
        stream = None
        try:
            cp = backend.cupy_module()
            # the graph's inputs: the given tensors themselves, or static copies that replays refill
            inputs = args if alias else tuple(
                Tensor._from_array(a.array.copy(), a.requires_grad) if isinstance(a, Tensor) else a
                for a in args)
            kernels.prepare_foreach()  # counters a counted optimizer step uses: not the graph's pool
            stream = cp.cuda.Stream()
            pool = cp.cuda.MemoryPool()
            capture_state.active = True
            caches.keep_alive.target = kept
            # CuPy captures in relaxed mode, where the private pool may still cudaMalloc; the
            # pool keeps every block the graph touches, and nothing else allocates from it
            with stream, cp.cuda.using_allocator(pool.malloc), launch.chained_launches():
                copy_inputs = (lambda: None) if alias else self._input_copier(inputs)
                blas.prepare()  # the cuBLAS handle exists before capture (its workspace: pool)
                stream.begin_capture()
                try:
                    copy_inputs()
                    result = call(*inputs)
                finally:
                    graph = stream.end_capture()
        except Exception as exc:  # noqa: BLE001 - whatever stops the capture, the step still runs
            self.reason = str(exc) if isinstance(exc, CaptureError) else f"{type(exc).__name__}: {exc}"
        finally:
            capture_state.active = False
            caches.keep_alive.target = outer_keep
        if self.reason is not None:
            if stream is not None:
                blas.forget_stream(stream.ptr)
            warnings.warn(f"jit: {self.__name__} cannot be captured into a CUDA graph and runs "
                          f"eagerly: {self.reason}", CaptureWarning, stacklevel=3)
            return call(*args)
        stream.synchronize()
        self._graph, self._stream, self._pool, self._kept = graph, stream, pool, kept
        # the graph's GEMMs use this stream's cuBLAS workspace: it goes when the graph does
        self._forget_stream = weakref.finalize(self, blas.forget_stream, stream.ptr)
        self._inputs, self._result = inputs, result
        self._signature = (layout, _signature(args))
        self._layout = layout
        self.captured = True
        self._launch = _graph_replay(graph, stream)
        if alias:
            self._alias = tuple((a, a.array, a.requires_grad) if isinstance(a, Tensor) else (a, None, None)
                                for a in args)
            if not self.method and not layout[1]:
                self._fast = self._launch
            self._launch()
            return result
        return self._replay(args, layout)

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

    def _same_as_last_call(self, args: tuple, layout: tuple) -> bool:
        """The very arrays of the last call (held, so not reused): its signature still holds."""
        if len(args) != len(self._seen) or layout != self._layout:
            return False
        for given, seen in zip(args, self._seen):
            if isinstance(given, Tensor):
                if given.array is not seen[0] or given.requires_grad != seen[1]:
                    return False
            elif given is not seen and given != seen:
                return False
        return True

    def _check_signature(self, args: tuple, layout: tuple, how: str) -> None:
        """ValueError unless `args` match the signature the step was `how` ("captured", "recorded")
        for; the check is skipped when they are the very values of the last call."""
        if self._same_as_last_call(args, layout):
            return
        signature = (layout, _signature(args))
        if signature != self._signature:
            raise ValueError(f"jit: {self.__name__} was {how} for inputs {self._signature[1]} "
                             f"(keywords {self._signature[0][1]}), got {signature[1]} (keywords "
                             f"{layout[1]}); a {how} step needs the same shapes every call")
        self._seen = tuple((a.array, a.requires_grad) if isinstance(a, Tensor) else a for a in args)

    def _replay(self, args: tuple, layout: tuple) -> Any:
        self._check_signature(args, layout, "captured")
        with self._stream:
            pointers = []
            for static, given in zip(self._inputs, args):
                if not isinstance(given, Tensor):
                    continue
                source = given.array
                if not source._c_contiguous:  # a strided view: copied here, onto itself in the graph
                    static.array[...] = source
                    source = static.array
                pointers.append(source.data.ptr)
            if pointers and tuple(pointers) != self._table_pointers:  # stream-ordered after earlier replays
                self._table.set(np.array(pointers, np.uint64), stream=self._stream)
                self._table_pointers = tuple(pointers)
        self._launch()  # on its own stream: ordered after the table's update
        return self._result
