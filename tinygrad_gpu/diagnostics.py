"""Guards and reports for the silent mistakes: in-place changes after save, gradients accumulated
without zero_grad(), graphs kept alive across steps, and what a graph holds in memory."""

from __future__ import annotations

import gc
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

from .backend import device_of
from .function import memory_root as _memory_root


class DebugWarning(UserWarning):
    """A likely mistake noticed by tg.debug_mode(): the code runs, but probably not as meant."""


# ---- naming tensors in messages -------------------------------------------------------------
def parameter_name(tensor: Any) -> str | None:
    """The dotted name of `tensor` in a live Module (the longest, i.e. from the outermost), or None."""
    from .nn import Module  # late: nn imports tensor, which imports this module

    best = None
    for obj in gc.get_objects():  # only on error and warning paths: costs nothing otherwise
        if issubclass(type(obj), Module):  # type(): never triggers a proxy object's __getattr__
            for name, param in obj.named_parameters():
                if param is tensor and (best is None or len(name) > len(best)):
                    best = name
    return best


def describe(tensor: Any) -> str:
    """A tensor for people: its parameter name when it has one, its shape and dtype."""
    name = parameter_name(tensor)
    kind = f"parameter '{name}'" if name else ("a leaf tensor" if tensor.is_leaf else "a tensor")
    return f"{kind} of shape {tensor.shape} ({tensor.dtype})"


# ---- in-place change after save -------------------------------------------------------------
def _saves(node: Any, tensor: Any) -> bool:
    """True when one of the node's saved arrays shares memory with the tensor's array."""
    root = _memory_root(tensor.array)
    return any(_memory_root(value) is root for value in vars(node).values() if _is_array(value))


def check_in_place_changes(node: Any) -> None:
    """Raise a RuntimeError if a tensor input of `node` changed version since the node was recorded."""
    from .function import in_place
    from .tensor import Tensor

    tensors = [(index, t) for index, t in enumerate(node.inputs) if isinstance(t, Tensor)]
    for (index, tensor), recorded in zip(tensors, node.input_versions):
        if tensor._version != recorded:
            how = "saved it for backward" if _saves(node, tensor) else "took it as input"
            raise RuntimeError(
                f"backward(): {describe(tensor)} was changed in place after {node.name} {how} "
                f"(input {index}): it is now at version {tensor._version}, the graph recorded version "
                f"{recorded}, so the gradient would mix old and new values. optimizer.step(), the "
                "tg.nn.init functions, load_state_dict(), assigning .data and Module.to() change tensors "
                "in place (and every alias of their memory, e.g. detach() or a view): call backward() "
                "before them, or run the forward pass again after them.")
    saved_output = getattr(node, "output_version", None)  # (the output's counter, its version then)
    if saved_output is not None and saved_output[0].version != saved_output[1]:
        raise RuntimeError(
            f"backward(): the output of {node.name} was changed in place after {node.name} saved it for "
            f"backward: it is now at version {saved_output[0].version}, the graph recorded version "
            f"{saved_output[1]}, so the gradient would use the new values. Change a copy instead "
            "(y = y * 2 rather than y.mul_(2)), or call backward() before the in-place change.")
    node.changes_seen = in_place.changes  # the changes were elsewhere: no need to look again


# ---- debug mode -----------------------------------------------------------------------------
LEAK_STEPS = 5  # warn when the live graph count grew on this many backward() calls in a row


class _DebugState:
    enabled = False  # process-wide: backward() on any thread is watched

    def reset(self) -> None:
        self.written: dict[int, tuple] = {}  # id(leaf) -> (ref(leaf), ref(grad our backward left))
        self.roots: dict[int, weakref.ref] = {}  # id(root) -> ref(root), for roots still alive
        self.alive_history: list[int] = []
        self.leak_warned = self.accumulation_warned = False  # each warning once per activation


debug = _DebugState()
debug.reset()


class debug_mode:
    """Warn (tg.DebugWarning) about gradients accumulated without zero_grad() and graphs kept alive.

    Call it to switch the mode for the process (`tg.debug_mode()`, `tg.debug_mode(False)`), or use it
    as a context manager that restores the previous setting on exit (`with tg.debug_mode(): ...`).
    """

    def __init__(self, enabled: bool = True) -> None:
        self._previous = debug.enabled
        if enabled and not debug.enabled:
            debug.reset()
        debug.enabled = bool(enabled)

    def __enter__(self) -> debug_mode:
        return self

    def __exit__(self, *exc: Any) -> None:
        debug.enabled = self._previous


def _forget(table: dict, key: int) -> Any:
    """A weakref callback that drops table[key] if it still belongs to the dead object."""
    def callback(ref: weakref.ref) -> None:
        entry = table.get(key)
        if entry is ref or (isinstance(entry, tuple) and entry[0] is ref):
            del table[key]
    return callback


def before_backward(order: list) -> None:
    """Warn when a leaf's gradient from an earlier backward() is still there to be added to."""
    stale = []
    for tensor in order:
        if tensor._ctx is None and tensor.grad is not None:
            entry = debug.written.get(id(tensor))
            if entry is not None and entry[0]() is tensor and entry[1]() is tensor.grad:
                stale.append(tensor)
    if stale and not debug.accumulation_warned:
        debug.accumulation_warned = True
        more = f" and {len(stale) - 1} more leaf tensor(s)" if len(stale) > 1 else ""
        warnings.warn(
            f"backward(): the gradient of {describe(stale[0])}{more} is being added to the gradient an "
            "earlier backward() left there, with no zero_grad() in between. In a training loop call "
            "optimizer.zero_grad() (or model.zero_grad()) before each backward(); if you accumulate on "
            "purpose (several losses, micro-batches), this warning is expected.", DebugWarning, stacklevel=3)


def after_backward(root: Any, order: list) -> None:
    """Remember which gradients this backward() left, and warn when graphs pile up across steps."""
    written = debug.written
    for tensor in order:
        if tensor._ctx is None and tensor.grad is not None:
            key = id(tensor)
            written[key] = (weakref.ref(tensor, _forget(written, key)), weakref.ref(tensor.grad))
    roots = debug.roots
    if id(root) not in roots:
        roots[id(root)] = weakref.ref(root, _forget(roots, id(root)))
    history = debug.alive_history
    history.append(len(roots))
    del history[:-(LEAK_STEPS + 1)]
    growing = len(history) > LEAK_STEPS and all(a < b for a, b in zip(history, history[1:]))
    if growing and not debug.leak_warned:
        debug.leak_warned = True
        warnings.warn(
            f"backward(): {len(roots)} tensors that backward() was called on are still alive, one more "
            f"after each of the last {LEAK_STEPS} calls; each keeps its graph and everything that graph "
            "references. Usually a loss is kept across steps (`running_loss += loss`, "
            "`losses.append(loss)`): keep `loss.item()` or `loss.detach()` instead.",
            DebugWarning, stacklevel=3)


# ---- what a graph keeps alive ---------------------------------------------------------------
def _is_array(value: Any) -> bool:
    return hasattr(value, "nbytes") and hasattr(value, "dtype") and hasattr(value, "shape")


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


@dataclass
class HeldBuffer:
    """One memory buffer a graph keeps alive, and the nodes that hold it (as inputs or saved)."""

    shape: tuple  # of the whole buffer (holders may see a view of it)
    dtype: str
    device: str
    nbytes: int  # the whole buffer
    leaf: bool  # it is a leaf tensor's array (a parameter or input data): it lives on anyway
    held_by: list[str]  # "#node Op (attribute)" for each holder, node 0 being the op that made the tensor
    key: int = field(default=0, repr=False, compare=False)  # id() of the buffer, to match it to a tensor


@dataclass
class GraphMemory:
    """The buffers behind a tensor's graph, their total, and (on the GPU) CuPy's pool figures."""

    buffers: list[HeldBuffer]
    nodes: int
    pool: tuple[int, int] | None  # CuPy pool (used, held) bytes when the graph is on the GPU

    @property
    def total_bytes(self) -> int:
        """Bytes of all buffers the graph keeps alive, each counted once."""
        return sum(b.nbytes for b in self.buffers)

    @property
    def graph_only_bytes(self) -> int:
        """Bytes that backward() (or dropping the graph) frees: the buffers that are not leaves'."""
        return sum(b.nbytes for b in self.buffers if not b.leaf)

    def __str__(self) -> str:
        if not self.nodes:
            return "graph_memory: no graph behind this tensor (a leaf, made under no_grad, or released)"
        lines = [f"graph_memory: {self.nodes} nodes keep {len(self.buffers)} buffers alive, "
                 f"{_size(self.total_bytes)}"]
        header = ("shape", "dtype", "device", "bytes", "kind", "held by (node op: as)")
        table = [header] + [(str(b.shape), b.dtype, b.device, _size(b.nbytes), "leaf" if b.leaf else "graph",
                             "; ".join(b.held_by)) for b in self.buffers]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  " + "  ".join(cell.rjust(w) if i == 3 else cell.ljust(w)
                                          for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        lines.append(f"total {_size(self.total_bytes)}: {_size(self.graph_only_bytes)} held only by the "
                     "graph (freed by backward() or by dropping the tensor), the rest by leaf tensors "
                     "(parameters, input data), which live on anyway")
        if self.pool is not None:
            used, held = self.pool
            lines.append(f"CuPy pool: {_size(used)} in use by all live arrays, {_size(held)} held from the "
                         "driver; the difference is cached for reuse, not leaked "
                         "(cupy.get_default_memory_pool().free_all_blocks() returns it)")
        return "\n".join(lines)


def _saved_arrays(ctx: Any) -> list[tuple[str, Any]]:
    """(attribute, array) for the arrays a node keeps, also those inside a list or tuple attribute
    (a fused node keeps its inputs and, on the CPU, every step's value in lists)."""
    found = []
    for name, value in vars(ctx).items():
        if _is_array(value):
            found.append((name, value))
        elif isinstance(value, (list, tuple)):
            found += [(f"{name}[{i}]", item) for i, item in enumerate(value) if _is_array(item)]
    return found


def graph_memory(tensor: Any) -> GraphMemory:
    """A table of every buffer the graph behind `tensor` keeps alive: saved arrays and input tensors."""
    from .tensor import Tensor

    if not isinstance(tensor, Tensor):
        raise TypeError(f"graph_memory: takes a Tensor, got {type(tensor).__name__}")
    buffers: dict[int, HeldBuffer] = {}  # id(root buffer) -> entry, so each buffer counts once
    nodes = 0
    stack, seen = [tensor], {id(tensor)}
    while stack:
        ctx = stack.pop()._ctx
        if ctx is None or ctx.released:
            continue
        holders: dict[int, list[str]] = {}
        # inputs first, so that a saved array which is a leaf's own is marked as the leaf's
        held = [(f"inputs[{i}]", t.array, t.is_leaf)
                for i, t in enumerate(ctx.inputs) if isinstance(t, Tensor)]
        held += [(name, value, False) for name, value in _saved_arrays(ctx)]
        for name, array, is_leaf in held:
            root = _memory_root(array)
            if id(root) not in buffers:
                buffers[id(root)] = HeldBuffer(tuple(root.shape), str(root.dtype), device_of(root),
                                               int(root.nbytes), is_leaf, [], id(root))
            buffers[id(root)].leaf |= is_leaf
            holders.setdefault(id(root), []).append(name)
        for key, names in holders.items():
            buffers[key].held_by.append(f"#{nodes} {ctx.name}: {', '.join(names)}")
        nodes += 1
        for parent in ctx.inputs:
            if isinstance(parent, Tensor) and id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    pool = None
    if any(b.device == "cuda" for b in buffers.values()):
        from .backend import cupy_module

        cupy_pool = cupy_module().get_default_memory_pool()
        pool = (int(cupy_pool.used_bytes()), int(cupy_pool.total_bytes()))
    return GraphMemory(list(buffers.values()), nodes, pool)
