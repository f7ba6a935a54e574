"""The CPU tape behind tg.jit: record the array work of one step, then replay it without the engine.

While a step runs for recording, every piece of array work at the top level is noted with the
very arrays it read and wrote: op forwards (Function.apply), their backwards (as the engine calls
them), kernel-table rows and reductions the engine and the optimizers call (gradient sums,
un-broadcasting, foreach updates), the engine's gradient casts and copies, and class-label
preparation. A replay calls the same functions
on the same arrays and copies each result into the array recorded for it, so later work finds its
inputs where it found them while recording; graph building, topological order, version checks and
Tensor objects are skipped. Work outside those points would be frozen at its recorded value, so a
tape is trusted only after one replay reproduces, bit for bit, the eager run of the same call
(parameters, optimizer state and outputs); otherwise the step stays eager and says why.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import function, hooks, indexing, kernels
from .nn import functional as nn_functional
from .nn import utils as nn_utils
from .optim import optimizer as optimizer_module


class _Recording(threading.local):
    entries: list | None = None  # the tape being written by this thread, else None
    depth = 0  # > 0 inside recorded work: what it calls is replayed by replaying it
    problem: str | None = None  # why this recording cannot be trusted, once known
    touched: list | None = None  # every array the recorded work read or wrote
    bindings: list | None = None  # (leaf, its .grad tensor) as the recorded step left them
    early: list | None = None  # work that depends only on the inputs, replayed first (it may diverge)
    produced: set | None = None  # ids of the memory roots of arrays the recorded work made


_recording = _Recording()
tensor_module = importlib.import_module(".tensor", __package__)  # tg.tensor is the factory function
_patch_lock = threading.RLock()


class TapeError(RuntimeError):
    """The step did something a CPU tape cannot replay."""


class Diverged(RuntimeError):
    """A replay found the step taking another path than the recorded one (e.g. no label ignored now)."""


def _arrays(value: Any) -> Iterator[np.ndarray]:
    """The NumPy arrays in a value (tensors, tuples, lists and dicts searched)."""
    from .tensor import Tensor

    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, Tensor):
        yield value.array
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _arrays(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item)


def _target(value: Any, what: str) -> tuple[Any, bool]:
    """The array a replay copies a fresh result into, and whether it is a read-only view's owner."""
    from .tensor import Tensor

    array = value.array if isinstance(value, Tensor) else value
    if not isinstance(array, np.ndarray):
        raise TapeError(f"{what} gave a {type(array).__name__}, not an array")
    if array.flags.writeable:
        return array, False
    root = function.memory_root(array)
    if array.base is None or not root.flags.writeable:
        raise TapeError(f"{what} gave a read-only array")
    # a broadcast view: what it shows is its owner, so the replay refreshes the owner
    return root, True


def _copier(recorded: Any, what: str) -> Callable[[Any], None]:
    """A function copying a fresh result into the arrays recorded for it (same structure)."""
    from .tensor import Tensor

    if isinstance(recorded, tuple):
        parts = [_copier(item, what) for item in recorded]

        def copy_all(fresh: Any) -> None:
            for part, item in zip(parts, fresh):
                part(item)
        return copy_all
    if recorded is None:
        def expect_none(fresh: Any) -> None:
            if fresh is not None:
                raise Diverged(f"{what} gave a result where the recorded call gave None")
        return expect_none
    target, through_owner = _target(recorded, what)
    copyto, memory_root, ndarray, dtype = np.copyto, function.memory_root, np.ndarray, target.dtype

    def copy(fresh: Any) -> None:
        if isinstance(fresh, Tensor):
            fresh = fresh.array
        if fresh is None:
            raise Diverged(f"{what} gave None where the recorded call gave a result")
        if through_owner:
            fresh = memory_root(fresh)
            if fresh.shape != target.shape:
                raise Diverged(f"{what} gave a view of another array than the recorded call")
        if fresh is not target:
            copyto(target, fresh)

    if through_owner:
        return copy

    def copy_array(fresh: Any) -> None:
        # the common case first: an array of the target's dtype, assigned (what copyto does for
        # one dtype, without its dispatch); anything else goes through the checks above
        if type(fresh) is ndarray and fresh.dtype is dtype:
            if fresh is not target:
                target[...] = fresh
        else:
            copy(fresh)
    return copy_array


def _note(entry: Callable[[], None], *values: Any, result: Any = None, early: bool = False) -> None:
    (_recording.early if early else _recording.entries).append(entry)
    for value in values:
        _recording.touched.extend(_arrays(value))
    for array in _arrays(result):
        _recording.touched.append(array)
        _recording.produced.add(id(function.memory_root(array)))


def _made_here(value: Any) -> bool:
    """Whether an array in `value` was made by the recorded work (not an input or a constant)."""
    return any(id(function.memory_root(a)) in _recording.produced for a in _arrays(value))


def _recorded_call(original: Callable[..., Any], what: Callable[..., str],
                   early: bool = False, direct: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """`original` wrapped to note itself on the tape when called at the top level of a recording.

    An `early` function (one whose result's layout can depend on the data, e.g. whether any label
    is ignored) is replayed before everything else, so that a replay taking another path stops
    before it changed anything; it must read only the step's inputs and constants. `direct`, given
    the call's arguments, may return a function of no arguments doing what the call does for them
    in a replay (NumPy operands, NumPy's warnings off), chosen once here rather than every replay."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _recording.entries is None or _recording.depth:
            return original(*args, **kwargs)
        _recording.depth += 1
        try:
            result = original(*args, **kwargs)
        finally:
            _recording.depth -= 1
        run = direct(*args, **kwargs) if direct is not None else None
        if run is None:
            def run() -> Any:
                return original(*args, **kwargs)
        if "out" in kwargs and kwargs["out"] is not None:  # writes in place: replay it as it is
            _note(run, args, kwargs)
            return result
        try:
            copy = _copier(result, what(*args))
        except TapeError as exc:
            _recording.problem = _recording.problem or str(exc)
            return result
        if early and _made_here((args, kwargs)):
            _recording.problem = _recording.problem or (
                f"{what(*args)} reads values computed inside the step; pass them in as inputs")
        _note(lambda: copy(run()), args, kwargs, result=result, early=early)
        return result
    return wrapper


def _recorded_apply(original: Callable[..., Any]) -> Callable[..., Any]:
    """Function.apply, noting the op's forward (and arming its backward) at the top level."""
    def apply(cls: type, *args: Any, **params: Any) -> Any:
        if _recording.entries is None or _recording.depth:
            return original(cls, *args, **params)
        _recording.depth += 1
        try:
            out = original(cls, *args, **params)
        finally:
            _recording.depth -= 1
        _note_forward(cls, args, params, out)
        return out
    return apply


def _note_forward(cls: type, args: tuple, params: dict, out: Any) -> None:
    from .tensor import Tensor

    arrays = [a.array if isinstance(a, Tensor) else a for a in args]
    tensors = [a for a in arrays if isinstance(a, np.ndarray)]
    if any(a.dtype != tensors[0].dtype for a in tensors):  # apply promoted them: so does the replay
        dtypes = [getattr(a, "dtype", None) for a in cls._common_dtype(args, list(arrays))]
        given = arrays

        def promoted() -> list:
            return [a.astype(d) if d is not None and a.dtype != d else a for a, d in zip(given, dtypes)]
    else:
        promoted = None  # the recorded arrays as they are
    try:
        copy = _copier(out.array, f"{cls.__name__}.forward")
    except TapeError as exc:
        _recording.problem = _recording.problem or str(exc)
        return
    node = out._ctx
    forward = cls.forward
    if node is None:  # nothing saved for a backward: a fresh node each replay
        if promoted is None:
            _note(lambda: copy(forward(cls(), *arrays, **params)), arrays, params, result=out)
        else:
            _note(lambda: copy(forward(cls(), *promoted(), **params)), arrays, params, result=out)
        return
    state: dict = {}  # what backward needs, taken just before the engine frees it
    node.backward = _recorded_backward(node, cls, state)
    # the call bound once (its arguments are the recorded arrays), unless dtypes are promoted
    run = None
    if promoted is None:
        run = node.tape_forward(*arrays, **params) or functools.partial(forward, node, *arrays, **params)

    def replay_forward() -> None:
        if node.released:  # freed by the recording's backward: restored once (replays free nothing)
            slots = state.get("__slots__", {})
            for name, value in slots.items():
                setattr(node, name, value)
            node.__dict__.update((k, v) for k, v in state.items() if k != "__slots__")
            node.released = False
        copy(run() if run is not None else forward(node, *promoted(), **params))
    _note(replay_forward, arrays, params, result=out)


_NODE_SLOTS = ("inputs", "needs_input_grad", "input_versions", "changes_seen")  # what release() resets


def _recorded_backward(node: Any, cls: type, state: dict) -> Callable[[Any], Any]:
    backward = cls.backward

    def recorded(grad_output: Any) -> Any:
        state.update((k, v) for k, v in node.__dict__.items() if k != "backward")
        state["__slots__"] = {name: getattr(node, name) for name in _NODE_SLOTS if hasattr(node, name)}
        _recording.depth += 1
        try:
            grads = backward(node, grad_output)
        finally:
            _recording.depth -= 1
        if _recording.entries is None:  # backward after the recording ended: nothing to note
            return grads
        try:
            copy = _copier(tuple(grads), f"{cls.__name__}.backward")
        except TapeError as exc:
            _recording.problem = _recording.problem or str(exc)
            return grads

        run = node.tape_backward(grad_output) or functools.partial(backward, node, grad_output)

        def replay_backward() -> None:  # the forward's replay has just refreshed what it saved
            copy(run())
        _note(replay_backward, grad_output, state, result=grads)
        return grads
    return recorded


def _recorded_accumulate(original: Callable[..., Any]) -> Callable[..., Any]:
    """The engine's first gradient of a leaf: when it keeps a copy, the replay copies again."""
    def accumulate(tensor: Any, grad: Any, held: set) -> None:
        first = tensor._grad is None
        original(tensor, grad, held)
        if _recording.entries is None or _recording.depth or not first:
            return  # a later gradient is summed by a recorded row (K.ADD)
        _recording.bindings.append((tensor, tensor._grad))
        kept = tensor._grad.array
        if kept is not grad and isinstance(grad, np.ndarray):
            _note(lambda: np.copyto(kept, grad), grad, result=kept)
    return accumulate


def _refused(original: Callable[..., Any], why: str) -> Callable[..., Any]:
    """`original`, noting while recording that the tape cannot replay what it does."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        if _recording.entries is not None:
            _recording.problem = _recording.problem or why
        return original(*args, **kwargs)
    return refuse


def _setting_changed(original: Callable[..., Any]) -> Callable[..., Any]:
    def refresh(group: Any) -> None:
        if _recording.entries is not None:
            _recording.problem = _recording.problem or (
                "an optimizer setting changed inside the step (e.g. a scheduler step); change settings "
                "outside the jitted function")
        original(group)
    return refresh


@contextlib.contextmanager
def _patched() -> Iterator[None]:
    """The recording points installed (for this thread's recording; other threads pass through)."""
    rows = (kernels.Elementwise, kernels.Reduction)
    with _patch_lock:
        saved = [(cls, "__call__", cls.__dict__["__call__"]) for cls in rows]
        saved += [(function.Function, "apply", function.Function.__dict__["apply"]),
                  (indexing, "class_labels", indexing.class_labels),
                  (nn_functional, "_label_weights", nn_functional._label_weights),
                  (optimizer_module.ParamGroup, "_refresh", optimizer_module.ParamGroup._refresh),
                  (tensor_module, "_accumulate", tensor_module._accumulate),
                  (tensor_module, "_cast", tensor_module._cast),
                  (nn_utils, "_store", nn_utils._store),
                  (nn_functional, "_update_running_stats", nn_functional._update_running_stats),
                  (hooks, "run_post_accumulate", hooks.run_post_accumulate),
                  (hooks, "run_end_of_backward", hooks.run_end_of_backward)]
        try:
            for cls in rows:
                cls.__call__ = _recorded_call(cls.__dict__["__call__"], lambda row, *a: f"row {row.name}",
                                              direct=cls.numpy_form)
            apply = function.Function.__dict__["apply"].__func__
            function.Function.apply = classmethod(_recorded_apply(apply))
            indexing.class_labels = _recorded_call(indexing.class_labels, lambda *a: "class labels",
                                                   early=True)
            nn_functional._label_weights = _recorded_call(nn_functional._label_weights,
                                                          lambda *a: "label weights")
            optimizer_module.ParamGroup._refresh = _setting_changed(optimizer_module.ParamGroup._refresh)
            tensor_module._accumulate = _recorded_accumulate(tensor_module._accumulate)
            tensor_module._cast = _recorded_call(tensor_module._cast, lambda *a: "a gradient's cast")
            # in-place writes outside the rows: replayed as they are
            nn_utils._store = _recorded_call(nn_utils._store, lambda *a: "a clipped gradient's store")
            nn_functional._update_running_stats = _recorded_call(nn_functional._update_running_stats,
                                                                 lambda *a: "batch_norm's running statistics")
            hooks.run_post_accumulate = _refused(hooks.run_post_accumulate,
                                                 "gradient hooks run inside the step")
            hooks.run_end_of_backward = _refused(hooks.run_end_of_backward,
                                                 "backward callbacks run inside the step")
            yield
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)


class Tape:
    """The recorded array work of one step, replayed by calling it."""

    Diverged = Diverged  # what a replay raises when the step takes another path (tg.jit catches it)

    def __init__(self, entries: list, touched: list, bindings: list) -> None:
        self.entries, self.bindings = entries, bindings
        unique: dict[int, np.ndarray] = {}
        for array in touched:
            unique.setdefault(id(array), array)
        self.touched = unique  # id -> array, each held (so ids stay unique while the tape lives)

    def __call__(self) -> None:
        with kernels.silenced_numpy():
            for entry in self.entries:
                entry()
        for leaf, grad in self.bindings:  # .grad shows the buffers the replay wrote (zero_grad may have
            leaf._grad = grad  # set it to None, an eager call may have replaced it)


def record(call: Callable[[], Any]) -> tuple[Any, Tape | None, str | None]:
    """Run `call` once, eagerly, recording its array work: (its result, the tape or None, why not)."""
    if _recording.entries is not None:
        return call(), None, "a tg.jit step runs inside another one being recorded"
    if function.anomaly_mode.enabled or function.diagnosis.recorder is not None:
        # their checks run per op, and a replay runs none
        return call(), None, "anomaly detection or gradient diagnosis is on"
    with _patched():
        _recording.entries, _recording.problem, _recording.touched, _recording.bindings = [], None, [], []
        _recording.early, _recording.produced = [], set()
        try:
            result = call()
            entries = _recording.early + _recording.entries
            problem, touched, bindings = _recording.problem, _recording.touched, _recording.bindings
        finally:
            _recording.entries = _recording.problem = _recording.touched = _recording.bindings = None
            _recording.early = _recording.produced = None
    if not entries:
        problem = problem or "the step does no array work"
    return result, (None if problem else Tape(entries, touched, bindings)), problem


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def check(tape: Tape, recorded_result: Any,
          call: Callable[[], Any]) -> tuple[Any, Tape | None, str | None, bool]:
    """Trust `tape` only if replaying it does what running `call` eagerly does, bit for bit.

    The tape is replayed from the current state, the state is put back, and `call` runs eagerly
    (recording again: that recording, bound to the arrays the step's tensors now hold, is the tape
    kept). The arrays both recordings touched (parameters, optimizer state, inputs) and the outputs
    must come out equal. Returns the eager result, the tape to keep or None, why not, and whether
    the kept tape is trusted (not when the replay took another path: the new one is checked next).
    """
    before = {key: array.copy() for key, array in tape.touched.items() if array.flags.writeable}
    diverged = False
    try:
        tape()
    except Diverged:
        replay_problem, diverged = None, True
    except Exception as exc:  # noqa: BLE001 - the eager run below decides what the user sees
        replay_problem = f"its replay raised {type(exc).__name__}: {exc}"
    else:
        replay_problem = None
    replayed = {key: tape.touched[key].copy() for key in before}
    replayed_outputs = [array.copy() for array in _arrays(recorded_result)]
    for key, array in before.items():
        np.copyto(tape.touched[key], array)
    result, again, problem = record(call)
    if problem or again is None:
        return result, None, problem, False
    if replay_problem:
        return result, None, replay_problem, False
    if diverged:
        return result, again, None, False
    outputs = list(_arrays(result))
    shared = [key for key in replayed if key in again.touched]
    if len(again.entries) != len(tape.entries):
        return result, None, "the step does different work from one call to the next", False
    if (len(outputs) != len(replayed_outputs)
            or not all(_same(a, b) for a, b in zip(outputs, replayed_outputs))
            or not all(_same(replayed[key], tape.touched[key]) for key in shared)):
        return result, None, ("replaying its recorded work does not reproduce the eager step (it does "
                              "array work the CPU tape does not see)"), False
    return result, again, None, True
