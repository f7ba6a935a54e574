"""The backward pass behind tg.grad and backward(create_graph=True / inputs=...).

The plain `Tensor.backward()` keeps its own fast loop over raw arrays (tensor.py). This one walks
the same graph, but can (a) hand the gradients back instead of accumulating them into `.grad`,
(b) restrict accumulation to some tensors and (c) with `create_graph=True` run every node's
`backward_graph`, its chain rule written in tensor ops, so the gradients are recorded and can be
differentiated again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import anomaly, ops
from .. import hooks as _hooks
from .. import kernels as K
from ..anomaly import anomaly_mode
from ..backend import DeviceError, array_module
from ..function import grad_mode, memory_root
from ..tensor import Tensor, _accumulate, _cast, _checked_gradients, _sum_to_shape, _topological_order


def gradients(outputs: Sequence[Tensor], seeds: Sequence[Tensor], inputs: Sequence[Tensor], *,
              retain_graph: bool | None = None, create_graph: bool = False,
              allow_unused: bool = False, where: str = "grad", local: bool = False) -> tuple:
    """d(sum of outputs·seeds)/d(input) for each input, as tensors; `.grad` is left alone.

    With `local` the walk stops at the inputs (each one's partial derivative along the paths
    that avoid the others): what a node's own backward needs when it re-runs its composition.
    """
    found = run_backward(outputs, seeds, retain_graph=create_graph if retain_graph is None else retain_graph,
                         create_graph=create_graph, wanted=inputs, accumulate=False, local=local)
    seed_memory = {id(memory_root(seed.array)) for seed in seeds}
    result = []
    for index, tensor in enumerate(inputs):
        grad = found.get(id(tensor))
        if grad is None and not allow_unused:
            raise RuntimeError(f"{where}: input {index} (shape {tensor.shape}) does not reach the outputs, "
                               "so it has no gradient; pass allow_unused=True to get None for it")
        if grad is not None and not isinstance(grad, Tensor):
            # a broadcast view, or the caller's own grad_outputs passed through: a copy of its own
            owned = 0 not in grad.strides and id(memory_root(grad)) not in seed_memory
            grad = Tensor._from_array(grad if owned else grad.copy())
        result.append(grad)
    return tuple(result)


def run_backward(outputs: Sequence[Tensor], seeds: Sequence[Tensor], *, retain_graph: bool,
                 create_graph: bool, wanted: Sequence[Tensor] | None, accumulate: bool,
                 local: bool = False) -> dict:
    """Walk the graph from `outputs` (gradients `seeds`); return {id(tensor): gradient} for `wanted`.

    With `accumulate`, leaves (or, when given, the `wanted` tensors) also get their `.grad`. With
    `create_graph` gradients are recorded tensors, otherwise raw arrays (the fast path's work).
    """
    wanted_ids = None if wanted is None else {id(t) for t in wanted}
    boundary = wanted_ids if local else set()
    order = _order_within(outputs, boundary) if local else _topological_order(*outputs)
    useful = _leading_to(order, wanted_ids)
    grads: dict = {}
    held: set = set()  # memory roots someone else holds: a .grad made from one must be a copy
    for out, seed in zip(outputs, seeds):
        seed = seed if create_graph else seed.array
        held.add(id(memory_root(seed.array if create_graph else seed)))
        previous = grads.get(out)
        grads[out] = seed if previous is None else _add(previous, seed, create_graph)
    found: dict = {}
    previous_mode = grad_mode.enabled
    grad_mode.enabled = create_graph  # what backward_graph does is recorded exactly when asked for
    try:
        with _quiet_numpy():
            for node in reversed(order):
                g = grads.pop(node, None)
                if g is None:
                    continue
                is_wanted = wanted_ids is not None and id(node) in wanted_ids
                if is_wanted:
                    found[id(node)] = g
                ctx = None if id(node) in boundary else node._ctx
                into_grad = is_wanted if wanted_ids is not None else ctx is None or node._retains_grad
                if accumulate and into_grad:
                    _accumulate_any(node, g, held, create_graph)
                    if ctx is None and _hooks.post_accumulate:
                        _hooks.run_post_accumulate(node)
                if ctx is None or (useful is not None and not _feeds(ctx, useful)):
                    continue  # nothing wanted lies behind this node
                _propagate(ctx, g, grads, useful, create_graph, held)
                if not retain_graph:
                    ctx.release()
    finally:
        grad_mode.enabled = previous_mode
    return found


def _order_within(outputs: Sequence[Tensor], boundary: set) -> list:
    """Like the engine's topological order, but the tensors in `boundary` count as leaves."""
    order: list = []
    visited: set = set()
    stack = [(out, False) for out in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in visited:  # tensors hash by identity
            continue
        visited.add(node)
        ctx = node._ctx
        if ctx is None or id(node) in boundary:
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((parent, False) for parent, needed in zip(ctx.inputs, ctx.needs_input_grad)
                     if needed and parent not in visited)
    return order


def _feeds(ctx: Any, useful: set) -> bool:
    """True when an input of the node that needs a gradient leads to a wanted tensor."""
    return any(needed and id(parent) in useful for parent, needed in zip(ctx.inputs, ctx.needs_input_grad))


def _leading_to(order: list, wanted_ids: set | None) -> set | None:
    """The ids of the tensors some wanted tensor depends on (None: every tensor is useful)."""
    if wanted_ids is None:
        return None
    useful = set()
    for node in order:  # inputs before the tensors made from them
        ctx = node._ctx
        if id(node) in wanted_ids or (ctx is not None and _feeds(ctx, useful)):
            useful.add(id(node))
    return useful


def _propagate(ctx: Any, g: Any, grads: dict, useful: set | None, create_graph: bool, held: set) -> None:
    """Run one node's chain rule and add what it gives each input to that input's gradient."""
    if create_graph:
        input_grads = _graph_gradients(ctx, g)
    else:
        input_grads = ctx.backward(g)
        if ctx.user_defined:
            input_grads = _checked_gradients(ctx, g, input_grads)
            held.update(id(memory_root(grad)) for grad in input_grads if grad is not None)
    if anomaly_mode.enabled:
        anomaly.check_backward(ctx, getattr(g, "array", g),
                               [getattr(x, "array", x) for x in input_grads])
    for index, (parent, needed, parent_grad) in enumerate(zip(ctx.inputs, ctx.needs_input_grad, input_grads)):
        if not needed or parent_grad is None or (useful is not None and id(parent) not in useful):
            continue
        array = parent.array
        if parent_grad.shape != array.shape:
            if not ctx.broadcasts_inputs:
                raise RuntimeError(f"{ctx.name}.backward returned a gradient of shape "
                                   f"{tuple(parent_grad.shape)} for input {index} of shape {array.shape}")
            parent_grad = _unbroadcast(parent_grad, array.shape) if create_graph else \
                _sum_to_shape(parent_grad, array.shape)
        if parent_grad.dtype != array.dtype:
            parent_grad = (ops.Cast.apply(parent_grad, dtype=array.dtype) if create_graph
                           else _cast(parent_grad, array.dtype))
        previous = grads.get(parent)
        grads[parent] = parent_grad if previous is None else _add(previous, parent_grad, create_graph)


def _graph_gradients(ctx: Any, g: Tensor) -> tuple:
    """A node's gradients as recorded tensor ops (its `backward_graph`), checked for user Functions."""
    backward_graph = getattr(ctx, "backward_graph", None)
    if backward_graph is None:
        raise RuntimeError(
            f"backward(create_graph=True) through {ctx.name}: this Function has no differentiable "
            "backward, so its gradient cannot be differentiated again. Give it a method "
            "backward_graph(self, gy) that computes the same gradients as backward with Tensor ops "
            "(self.inputs are the forward's arguments), or compose it from tensor ops")
    try:
        grads = backward_graph(g)
    except anomaly.AnomalyError as error:  # raised by an op of the recorded rule: name the node too
        raise anomaly.AnomalyError(f"in the recorded backward of {ctx.name} (create_graph=True): {error}") \
            from None
    if ctx.user_defined:
        grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) != len(ctx.inputs):
            raise RuntimeError(f"{ctx.name}.backward_graph returned {len(grads)} gradients for "
                               f"{len(ctx.inputs)} inputs: it must return one per input (None where none)")
        for index, (parent, needed, grad) in enumerate(zip(ctx.inputs, ctx.needs_input_grad, grads)):
            if needed and not (isinstance(grad, Tensor) and grad.shape == parent.shape):
                got = type(grad).__name__ + (f" of shape {grad.shape}" if isinstance(grad, Tensor) else "")
                raise TypeError(f"{ctx.name}.backward_graph: the gradient for input {index} must be a "
                                f"Tensor of shape {parent.shape}, got {got}")
    return grads


def _unbroadcast(grad: Tensor, shape: tuple) -> Tensor:
    """Undo broadcasting as recorded ops: sum over the axes the operand had as 1 or did not have."""
    extra = grad.ndim - len(shape)
    axes = [*range(extra)] + [extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1]
    if axes:
        grad = ops.Sum.apply(grad, axis=tuple(axes), keepdims=True)
    return grad if grad.shape == shape else ops.Reshape.apply(grad, shape=shape)


def _add(a: Any, b: Any, create_graph: bool) -> Any:
    return ops.Add.apply(a, b) if create_graph else K.ADD(a, b)


def _accumulate_any(tensor: Tensor, grad: Any, held: set, create_graph: bool) -> None:
    """Add a gradient into tensor.grad: a raw array as plain backward does, or a recorded tensor."""
    if not create_graph:
        _accumulate(tensor, grad, held)
        return
    if tensor._grad is not None:
        tensor._grad = ops.Add.apply(tensor._grad, grad)
        return
    root = id(memory_root(grad.array))
    if root in held or 0 in grad.array.strides:
        grad = ops.Mul.apply(grad, 1.0)  # a recorded copy: .grad owns its memory
    else:
        held.add(root)
    tensor._grad = grad


class _quiet_numpy:
    """NumPy's floating-point warnings off for the pass (as plain backward does), unless already off."""

    def __enter__(self) -> None:
        self._inner = K.silenced_numpy() if not K.quiet.depth else None
        if self._inner is not None:
            self._inner.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._inner is not None:
            self._inner.__exit__(*exc)


def as_seed(value: Any, like: Tensor, where: str) -> Tensor:
    """A gradient for `like`: ones for a scalar output when None, else a checked tensor."""
    if value is None:
        if like.array.size != 1:
            raise RuntimeError(f"{where}: the output has shape {like.shape}; a non-scalar output needs a "
                               "gradient (grad_outputs / gradient) of its shape")
        return Tensor._from_array(array_module(like.device).ones(like.shape, like.dtype))
    if not isinstance(value, Tensor):
        value = Tensor(value, device=like.device, dtype=like.dtype)
    if value.shape != like.shape:
        raise ValueError(f"{where}: the gradient has shape {value.shape}, the output has {like.shape}")
    if value.device != like.device:
        raise DeviceError(f"{where}: the gradient is on {value.device!r}, the output on {like.device!r}")
    if value.dtype != like.dtype:
        value = value.to(like.dtype)
    return value
