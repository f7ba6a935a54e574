"""Derivatives as functions (PyTorch's torch.autograd.grad and torch.autograd.functional).

`grad` returns gradients instead of accumulating them; with create_graph=True they are recorded
tensors, so they can be differentiated again: that gives vjp, jvp (the double-backward trick),
hvp, jacobian and hessian below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .. import diagnostics as _diagnostics
from .. import hooks as _hooks
from .. import ops
from ..backend import array_module
from ..combine import stack
from ..tensor import Tensor, _topological_order
from .engine import as_seed, gradients, run_backward


def _as_tensors(value: Any, what: str, where: str) -> tuple[list[Tensor], bool]:
    """A Tensor or a sequence of them as a list, and whether it was a sequence."""
    is_sequence = isinstance(value, (tuple, list))
    items = list(value) if is_sequence else [value]
    for index, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise TypeError(f"{where}: {what} must be Tensors, got {type(item).__name__} at position {index}")
    return items, is_sequence


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
         grad_outputs: Any = None, retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool = False) -> tuple[Tensor | None, ...]:
    """The gradients of `outputs` (weighted by `grad_outputs`) w.r.t. each of `inputs`, as a tuple.

    `.grad` is not touched. A non-scalar output needs its grad_output; with create_graph=True the
    gradients are recorded, so they can be differentiated again (retain_graph defaults to it). An
    input the outputs do not depend on raises, unless allow_unused=True (then its entry is None).
    """
    outs, _ = _as_tensors(outputs, "outputs", "grad")
    ins, _ = _as_tensors(inputs, "inputs", "grad")
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs] * len(outs) if grad_outputs is None else [grad_outputs]
    grad_outputs = list(grad_outputs)
    if len(grad_outputs) != len(outs):
        raise ValueError(f"grad: {len(grad_outputs)} grad_outputs for {len(outs)} outputs")
    for index, out in enumerate(outs):
        if not out.requires_grad:
            raise RuntimeError(f"grad: output {index} (shape {out.shape}) does not require grad: no input "
                               "of its graph has requires_grad=True")
    for index, tensor in enumerate(ins):
        if not tensor.requires_grad:
            raise RuntimeError(f"grad: input {index} (shape {tensor.shape}) does not require grad")
    seeds = [as_seed(g, out, f"grad (output {i})") for i, (g, out) in enumerate(zip(grad_outputs, outs))]
    return gradients(outs, seeds, ins, retain_graph=retain_graph, create_graph=bool(create_graph),
                     allow_unused=allow_unused)


def _backward_into_grad(output: Tensor, gradient: Any, retain_graph: bool | None, create_graph: bool,
                        inputs: Any) -> None:
    """Tensor.backward with create_graph and/or inputs: accumulate into .grad through the engine."""
    wanted = None
    if inputs is not None:
        wanted, _ = _as_tensors(inputs, "inputs", "backward()")
        if not wanted:
            raise RuntimeError("backward(): inputs= is empty; leave it out to accumulate into every leaf")
        for index, tensor in enumerate(wanted):
            if not tensor.requires_grad:
                raise RuntimeError(f"backward(): inputs[{index}] (shape {tensor.shape}) does not require "
                                   "grad")
    seed = as_seed(gradient, output, "backward()")
    _hooks.end_of_backward.clear()  # left over from a backward() that raised
    order = _topological_order(output) if _diagnostics.debug.enabled else None  # for tg.debug_mode's checks
    if order is not None:
        _diagnostics.before_backward(order)
    run_backward([output], [seed], retain_graph=create_graph if retain_graph is None else bool(retain_graph),
                 create_graph=create_graph, wanted=wanted, accumulate=True)
    if _hooks.end_of_backward:
        _hooks.run_end_of_backward()
    if order is not None:
        _diagnostics.after_backward(output, order)


# ---- torch.autograd.functional --------------------------------------------------------------
def _prepare(inputs: Any, create_graph: bool, where: str) -> tuple[list[Tensor], bool]:
    """Fresh differentiable aliases of the inputs (kept in the caller's graph with create_graph)."""
    items, is_sequence = _as_tensors(inputs, "inputs", where)
    prepared = []
    for index, item in enumerate(items):
        if not item.is_floating_point():
            raise TypeError(f"{where}: input {index} has dtype {item.dtype}; derivatives need float tensors")
        if create_graph and item.requires_grad:
            prepared.append(ops.Reshape.apply(item, shape=item.shape))  # recorded: the caller's graph goes on
        else:
            prepared.append(item.detach().requires_grad_(True))
    return prepared, is_sequence


def _outputs(value: Any, where: str) -> tuple[list[Tensor], bool]:
    return _as_tensors(value, "the function's outputs", where)


def _filled(grads: Sequence[Tensor | None], like: Sequence[Tensor], create_graph: bool) -> list[Tensor]:
    """None (no dependence) as zeros; detached unless create_graph."""
    result = []
    for g, t in zip(grads, like):
        if g is None:
            g = Tensor._from_array(array_module(t.device).zeros(t.shape, t.dtype))
        result.append(g if create_graph else g.detach())
    return result


def _differentiable(outs: Sequence[Tensor]) -> list[Tensor]:
    return [o for o in outs if o.requires_grad]


def _vector(v: Any, like: list[Tensor], where: str, what: str) -> list:
    if v is None:
        return [None] * len(like)
    items = list(v) if isinstance(v, (tuple, list)) else [v]
    if len(items) != len(like):
        raise ValueError(f"{where}: {len(items)} tensors in {what} for {len(like)}")
    return [as_seed(item, t, f"{where}: {what}") for item, t in zip(items, like)]


def _shaped(values: list, is_sequence: bool) -> Any:
    return tuple(values) if is_sequence else values[0]


def _grads(outs: list[Tensor], seeds: list, ins: list[Tensor], create_graph: bool) -> list:
    """grad() over the outputs that require grad (none: no dependence at all)."""
    pairs = [(o, s) for o, s in zip(outs, seeds) if o.requires_grad]
    if not pairs:
        return [None] * len(ins)
    seeds = [as_seed(s, o, "autograd.functional") for o, s in pairs]
    return list(gradients([o for o, _ in pairs], seeds, ins, retain_graph=True, create_graph=create_graph,
                          allow_unused=True))


def vjp(func: Callable[..., Any], inputs: Any, v: Any = None, create_graph: bool = False) -> tuple[Any, Any]:
    """(func(inputs), vᵀ·J): the vector-Jacobian product; v may be omitted for a scalar output."""
    ins, in_seq = _prepare(inputs, create_graph, "vjp")
    outs, out_seq = _outputs(func(*ins), "vjp")
    seeds = _vector(v, outs, "vjp", "v")
    result = _filled(_grads(outs, seeds, ins, create_graph), ins, create_graph)
    outs = outs if create_graph else [o.detach() for o in outs]
    return _shaped(outs, out_seq), _shaped(result, in_seq)


def jvp(func: Callable[..., Any], inputs: Any, v: Any = None, create_graph: bool = False) -> tuple[Any, Any]:
    """(func(inputs), J·v): the Jacobian-vector product, by differentiating a vjp w.r.t. its vector."""
    ins, in_seq = _prepare(inputs, create_graph, "jvp")
    vs = _vector(v, ins, "jvp", "v")
    outs, out_seq = _outputs(func(*ins), "jvp")
    dummies = [Tensor._from_array(array_module(o.device).zeros(o.shape, o.dtype), requires_grad=True)
               for o in outs]
    first = _grads(outs, dummies, ins, True)  # linear in the dummies
    used = [(g, s) for g, s in zip(first, vs) if g is not None and g.requires_grad]
    if used:
        found = gradients([g for g, _ in used], [as_seed(s, g, "jvp: v") for g, s in used], dummies,
                          retain_graph=True, create_graph=create_graph, allow_unused=True)
    else:
        found = [None] * len(dummies)
    result = _filled(found, outs, create_graph)
    outs = outs if create_graph else [o.detach() for o in outs]
    return _shaped(outs, out_seq), _shaped(result, out_seq)


def _scalar_output(func: Callable[..., Any], ins: list[Tensor], where: str) -> Tensor:
    out = func(*ins)
    if not isinstance(out, Tensor) or out.array.size != 1:
        shape = out.shape if isinstance(out, Tensor) else type(out).__name__
        raise RuntimeError(f"{where}: the function must return a single-element Tensor, got {shape}")
    return out


def hvp(func: Callable[..., Any], inputs: Any, v: Any = None, create_graph: bool = False) -> tuple[Any, Any]:
    """(func(inputs), H·v) for a scalar function: the gradient's derivative along v (double backward)."""
    ins, in_seq = _prepare(inputs, create_graph, "hvp")
    vs = _vector(v, ins, "hvp", "v")
    if v is None and not all(t.array.size == 1 for t in ins):
        raise RuntimeError("hvp: v is needed unless every input has a single element")
    out = _scalar_output(func, ins, "hvp")
    first = _grads([out], [None], ins, True)
    used = [(g, s, i) for i, (g, s) in enumerate(zip(first, vs)) if g is not None and g.requires_grad]
    found = _grads([g for g, _, _ in used], [s for _, s, _ in used], ins, create_graph) if used else \
        [None] * len(ins)
    result = _filled(found, ins, create_graph)
    return (out if create_graph else out.detach()), _shaped(result, in_seq)


def _jacobian_of(outs: list[Tensor], ins: list[Tensor], create_graph: bool) -> list[list[Tensor]]:
    """Per output, per input: d out / d in of shape out.shape + in.shape, one backward pass per row."""
    table = []
    for out in outs:
        rows: list[list[Tensor]] = [[] for _ in ins]
        xp = array_module(out.device)
        for element in range(out.array.size):
            one_hot = xp.zeros(out.array.size, out.dtype)
            one_hot[element] = 1
            seed = Tensor._from_array(one_hot.reshape(out.shape))
            grads = _filled(_grads([out], [seed], ins, create_graph), ins, create_graph)
            for k, g in enumerate(grads):
                rows[k].append(g)
        table.append([(stack(r) if r else Tensor._from_array(xp.zeros((0, *t.shape), t.dtype)))
                      .reshape(*out.shape, *t.shape) for r, t in zip(rows, ins)])
    return table


def jacobian(func: Callable[..., Any], inputs: Any, create_graph: bool = False) -> Any:
    """The Jacobian: shape out.shape + in.shape; tuples (of tuples) for several inputs or outputs."""
    ins, in_seq = _prepare(inputs, create_graph, "jacobian")
    outs, out_seq = _outputs(func(*ins), "jacobian")
    table = _jacobian_of(outs, ins, create_graph)
    if not create_graph:
        table = [[j.detach() for j in row] for row in table]
    rows = [_shaped(row, in_seq) for row in table]
    return _shaped(rows, out_seq)


def hessian(func: Callable[..., Any], inputs: Any, create_graph: bool = False) -> Any:
    """The Hessian of a scalar function: shape in.shape + in.shape (a tuple of tuples for several inputs)."""
    ins, in_seq = _prepare(inputs, create_graph, "hessian")

    def gradient(*xs: Tensor) -> tuple:
        out = _scalar_output(func, list(xs), "hessian")
        return tuple(_filled(_grads([out], [None], list(xs), True), list(xs), True))

    table = _jacobian_of(list(gradient(*ins)), ins, create_graph)
    if not create_graph:
        table = [[h.detach() for h in row] for row in table]
    return _shaped([_shaped(row, in_seq) for row in table], in_seq)
