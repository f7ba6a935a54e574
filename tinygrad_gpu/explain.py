"""One training step of a small Sequential MLP, recorded for people.

`explain_step` runs the step op by op, as the seed guide draws it (forward, loss, backward,
update), and keeps a host copy of every matrix with the kernel and device that produced it. It
also builds the graph training really records (the fused nodes of Sequential and the losses),
and measures with `graph_memory` what each phase holds in memory. The terminal walk of
examples/xor.py and the HTML page of `tg.viz.explain_html` are both drawn from this record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import kernels as K
from . import ops
from .diagnostics import GraphMemory, _memory_root, graph_memory
from .function import no_grad
from .fusion import FusedOp
from .nn import functional as F
from .nn.modules import Activation, CrossEntropyLoss, Linear, MSELoss, Sequential
from .optim import Optimizer
from .tensor import Tensor

_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
PHASES = ("forward + loss", "backward (peak)", "after backward", "after update")


def subscript(name: str, k: int) -> str:
    """W₁ for ("W", 1)."""
    return name + str(k).translate(_SUBSCRIPT)


@dataclass
class Matrix:
    """One boxed matrix: a host copy of a tensor's values, its name, and the kernel that produced it."""

    name: str
    values: np.ndarray
    device: str
    kernel: str
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple:
        """The tensor's shape."""
        return tuple(self.values.shape)

    @property
    def dtype(self) -> str:
        """The tensor's dtype name."""
        return str(self.values.dtype)


@dataclass
class GraphPicture:
    """A recorded graph as nodes and edges: leaf tensors, ops, Python constants and the output."""

    title: str
    nodes: list[dict]  # {"label", "detail", "kind": "param" | "data" | "op" | "const" | "output"}
    edges: list[tuple[int, int]]  # (from node, to node), in the direction the data flows


@dataclass
class MemoryRow:
    """One buffer on the device: what it is, its size, and in which phases it is alive."""

    name: str
    kind: str  # parameter, data, graph, gradient, optimizer state
    shape: tuple
    dtype: str
    nbytes: int
    alive: tuple[bool, ...]  # per entry of PHASES
    held_by: str = ""


@dataclass
class StepRecord:
    """Everything one explained training step produced (see explain_step)."""

    device: str
    forward: list[Matrix]
    loss: list[Matrix]
    backward: list[Matrix]
    update: list[tuple[Matrix, Matrix, Matrix]]  # (before, gradient, after) per parameter
    optimizer: str
    update_kernel: str
    lr: float
    loss_value: float
    loss_after: float
    output_after: Matrix
    memory: list[MemoryRow]
    fused_memory: GraphMemory
    conceptual_memory: GraphMemory
    conceptual_graph: GraphPicture
    fused_graph: GraphPicture
    layers: list[dict]  # the network for drawing: {"kind": "linear", "weight", "bias"} or {"kind": "relu"}...
    loss_name: str
    loss_tensor: Tensor | None = None  # the op-by-op loss, its graph kept when keep_graph=True
    tensors: dict[str, Tensor] = field(default_factory=dict)  # the walk's named tensors

    def matrix(self, name: str) -> Matrix:
        """The boxed matrix called `name` (the first one, searching the phases in order)."""
        for m in self.forward + self.loss + self.backward + [m for row in self.update for m in row]:
            if m.name == name:
                return m
        raise KeyError(f"StepRecord: no matrix named {name!r}")

    @property
    def peak_bytes(self) -> int:
        """The largest of the phases' totals in the memory table."""
        return max(self.phase_bytes)

    @property
    def phase_bytes(self) -> list[int]:
        """Bytes alive in each phase of PHASES."""
        return [sum(r.nbytes for r in self.memory if r.alive[i]) for i in range(len(PHASES))]


# ---- which kernel made a tensor -------------------------------------------------------------
def kernel_of(t: Tensor) -> str:
    """The op (and kernel row, or fused node) that produced `t`, in words."""
    ctx = t.grad_fn
    if ctx is None:
        return "leaf tensor (no kernel)"
    if isinstance(ctx, ops.ElementwiseOp):
        return f"{ctx.name} · row {type(ctx).row.name}"
    if isinstance(ctx, FusedOp):
        return f"{ctx.name} · one fused node"
    if isinstance(ctx, ops.MatMul):
        return "MatMul · " + ("cuBLAS" if t.device == "cuda" else "np.matmul")
    return ctx.name


def backward_kernel(ctx: Any, index: int) -> str:
    """The backward rule of node `ctx` that computes the gradient of its input `index`, in words."""
    if isinstance(ctx, ops.ElementwiseOp):
        rule = type(ctx).grads[index]
        if rule == "gy":
            return f"{ctx.name} backward · passes the gradient on"
        return f"{ctx.name} backward · row {rule[0].name}"
    if isinstance(ctx, ops.MatMul):
        return "MatMul backward · matmul"
    return f"{ctx.name} backward"


def update_kernel(optimizer: Any) -> str:
    """The kernel row an optimizer's step() runs, in words."""
    row = getattr(type(optimizer), "_ROW", None)
    if row is None and hasattr(optimizer, "momentum"):
        row = K.SGD_MOMENTUM_STEP if optimizer.momentum else K.SGD_STEP
    launches = "one launch per device and dtype (foreach) on the GPU, a NumPy twin on the CPU"
    return f"{type(optimizer).__name__}.step() · row {row.name}, {launches}" if row is not None \
        else f"{type(optimizer).__name__}.step()"


def _host(t: Any) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.numpy()
    return t.get() if hasattr(t, "get") else np.asarray(t)


# ---- graphs as pictures ---------------------------------------------------------------------
def graph_picture(root: Tensor, names: Mapping[str, Tensor], title: str) -> GraphPicture:
    """The graph behind `root` as nodes and edges (the same walk as viz.to_dot)."""
    name_of = {id(t): name for name, t in names.items()}
    nodes: list[dict] = []
    edges: list[tuple[int, int]] = []
    index: dict[int, int] = {}

    def add(label: str, detail: str, kind: str) -> int:
        nodes.append({"label": label, "detail": detail, "kind": kind})
        return len(nodes) - 1

    def node_for(t: Tensor) -> int:
        ctx = t.grad_fn
        key = id(t) if ctx is None else id(ctx)
        if key not in index:
            shape = "×".join(map(str, t.shape)) or "scalar"
            if ctx is None:
                index[key] = add(name_of.get(id(t), "leaf"), shape, "param" if t.requires_grad else "data")
            else:
                index[key] = add(ctx.name, "→ " + (f"{name_of[id(t)]} " if id(t) in name_of else "") + shape,
                                 "op")
                pending.append(ctx)
        return index[key]

    pending: list[Any] = []
    top = node_for(root)
    while pending:
        ctx = pending.pop()
        for parent in ctx.inputs:
            if isinstance(parent, Tensor):
                source = node_for(parent)
            else:  # a Python number taking part in the op, e.g. the 1/n of a mean
                source = add(f"{parent:g}", "constant", "const")
            edges.append((source, index[id(ctx)]))
    if root.grad_fn is not None:
        edges.append((top, add(name_of.get(id(root), "output"), "×".join(map(str, root.shape)) or "scalar",
                               "output")))
    return GraphPicture(title, nodes, edges)


# ---- the step -------------------------------------------------------------------------------
def _layer_plan(model: Any) -> list[Any]:
    if not isinstance(model, Sequential):
        raise TypeError(f"explain_step: takes a tg.nn.Sequential of Linear layers and activations, "
                        f"got {type(model).__name__}")
    layers = list(model.layers)
    for layer in layers:
        if not isinstance(layer, (Linear, Activation)):
            raise TypeError(f"explain_step: the Sequential may hold only Linear layers and activations "
                            f"(ReLU, Sigmoid, Tanh), got {type(layer).__name__}")
    if not any(isinstance(layer, Linear) for layer in layers):
        raise TypeError("explain_step: the Sequential has no Linear layer")
    return layers


def _loss_kind(loss: Any) -> str:
    if isinstance(loss, MSELoss) or loss == "mse":
        return "mse"
    if isinstance(loss, CrossEntropyLoss) or loss == "cross_entropy":
        return "cross_entropy"
    raise ValueError(f"explain_step: loss must be 'mse', 'cross_entropy', tg.nn.MSELoss() or "
                     f"tg.nn.CrossEntropyLoss(), got {loss!r}")


def _loss_of(kind: str, output: Tensor, y: Any) -> Tensor:
    return F.mse_loss(output, y) if kind == "mse" else F.cross_entropy(output, y)


def explain_step(model: Sequential, x: Tensor, y: Any, optimizer: Any, loss: Any = "mse",
                 keep_graph: bool = False, sample_notes: Sequence[str] = ()) -> StepRecord:
    """Run one training step of `model` op by op and record its four phases, graphs and memory.

    `loss` is "mse" (written out as diff, square, sum, mean) or "cross_entropy" (one op);
    `keep_graph` keeps the op-by-op graph through backward (to draw it afterwards);
    `sample_notes[i]` is printed beside row i of X. The step updates the parameters, as
    optimizer.step() does in training.
    """
    layers = _layer_plan(model)
    kind = _loss_kind(loss)
    if not isinstance(x, Tensor):
        raise TypeError(f"explain_step: x must be a Tensor, got {type(x).__name__}")
    params = list(model.parameters())
    devices = {p.device for p in params} | {x.device} | ({y.device} if isinstance(y, Tensor) else set())
    if len(devices) != 1:
        raise ValueError(f"explain_step: the model, x and y must be on one device, got {sorted(devices)}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"explain_step: optimizer must be a tg.optim optimizer, "
                        f"got {type(optimizer).__name__}")
    device = x.device

    # The graph training really records: Sequential's fused nodes and the loss's fused node.
    fused_names: dict[str, Tensor] = {"X": x}
    if isinstance(y, Tensor):
        fused_names["Y"] = y
    out, k, i = x, 0, 0
    while i < len(layers):
        layer = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, Linear):
            k += 1
            fused_names[subscript("W", k)] = layer.weight
            if layer.bias is not None:
                fused_names[subscript("b", k)] = layer.bias
            if isinstance(following, Activation):
                out, i = layer(out, following), i + 2
                fused_names[subscript("A", k)] = out
                continue
            out = layer(out)
            fused_names[subscript("Z", k)] = out
        else:
            out = layer(out)
            fused_names[subscript("A", k)] = out
        i += 1
    if isinstance(layers[-1], Activation):  # the prediction gets the guide's name
        fused_names["ŷ"] = fused_names.pop(subscript("A", k))
    real_loss = _loss_of(kind, out, y)
    fused_names["loss"] = real_loss
    fused_memory = graph_memory(real_loss)
    fused_graph = graph_picture(real_loss, fused_names, "The fused graph training builds")
    buffer_names = {id(_memory_root(t.array)): name for name, t in fused_names.items()}
    del real_loss, out

    # The same step op by op, as the guide draws it; retain_grad() keeps every gradient for phase 3.
    forward = [Matrix("X", _host(x), device, "input data (copied to the device once)", list(sample_notes))]
    names: dict[str, Tensor] = {"X": x}
    consumer: dict[int, tuple[Any, int]] = {}  # id(tensor) -> (node that used it, input index)
    trail: list[tuple[str, Any]] = []  # ("linear", (k, W, b, Z)) or ("activation", (k, Z, A, layer))
    a, k = x, 0
    for layer in layers:
        if isinstance(layer, Linear):
            k += 1
            W, b = layer.weight, layer.bias
            product = ops.MatMul.apply(a, W, transpose_b=True)  # x @ W.T, as Linear runs it
            consumer[id(a)] = consumer[id(W)] = (product.grad_fn, None)
            z = product + b if b is not None else product
            if b is not None:
                consumer[id(b)] = (z.grad_fn, 1)
            z.retain_grad()
            names.update({subscript("W", k): W, subscript("Z", k): z})
            forward.append(Matrix(subscript("W", k), _host(W), device, "parameter"))
            if b is not None:
                names[subscript("b", k)] = b
                forward.append(Matrix(subscript("b", k), _host(b), device, "parameter"))
            kernel = kernel_of(product) + (" → " + kernel_of(z) if b is not None else "")
            forward.append(Matrix(subscript("Z", k), _host(z), device, kernel))
            trail.append(("linear", (k, W, b, z)))
            a = z
        else:
            z = a
            a = layer(z).retain_grad()
            consumer[id(z)] = (a.grad_fn, 0)
            names[subscript("A", k)] = a
            trail.append(("activation", (k, z, a, layer)))
            forward.append(Matrix(subscript("A", k), _host(a), device, kernel_of(a)))
    output = a
    if isinstance(layers[-1], Activation):  # the prediction gets the guide's name
        del names[subscript("A", k)]
        names["ŷ"] = output
        forward[-1].name = "ŷ"
    output_name = "ŷ" if isinstance(layers[-1], Activation) else subscript("Z", k)

    # Phase 2: the loss; MSE written out as the guide does (tg.nn.functional.mse_loss runs it fused).
    if kind == "mse":
        if not isinstance(y, Tensor):
            y = Tensor(y, device=device, dtype=output.dtype)
        names["Y"] = y
        diff = output - y
        consumer[id(output)] = (diff.grad_fn, 0)
        squared = diff ** 2
        total = squared.sum()
        loss_t = total * (1.0 / y.size)
        loss_boxes = [Matrix("Y", _host(y), device, "targets (copied to the device once)"),
                      Matrix("diff = ŷ − Y" if output_name == "ŷ" else "diff", _host(diff), device,
                             kernel_of(diff)),
                      Matrix("squared", _host(squared), device, kernel_of(squared)),
                      Matrix("sum", _host(total), device, kernel_of(total) + " (one reduction kernel)"),
                      Matrix("loss", _host(loss_t), device, kernel_of(loss_t))]
        names.update({"diff": diff, "squared": squared, "sum": total})
    else:
        loss_t = F.cross_entropy(output, y)
        consumer[id(output)] = (loss_t.grad_fn, 0)
        labels = _host(y)
        loss_boxes = [Matrix("Y (class labels)", labels, device, "targets"),
                      Matrix("loss", _host(loss_t), device, kernel_of(loss_t))]
    names["loss"] = loss_t
    loss_value = float(loss_t.item())
    conceptual_memory = graph_memory(loss_t)
    conceptual_graph = graph_picture(loss_t, names, "The graph the guide draws (op by op)")

    # Phase 3: backward, then the gradients from the output back to the input.
    optimizer.zero_grad()  # only now: a step that failed above has changed nothing
    loss_t.backward(retain_graph=keep_graph)
    backward: list[Matrix] = []
    relus = sum(type(parts[3]).__name__ == "ReLU" for step, parts in trail if step == "activation")
    for step, parts in reversed(trail):
        if step == "activation":
            k, z, a, layer = parts
            a_name = "ŷ" if a is output and output_name == "ŷ" else subscript("A", k)
            ctx, index = consumer[id(a)]
            if a.grad is not None:
                backward.append(Matrix(f"∂L/∂{a_name}", _host(a.grad), device, backward_kernel(ctx, index)))
            if type(layer).__name__ == "ReLU":  # the condition ReLU's backward row tests, on its output
                mask = (_host(a) > 0).astype(_host(a).dtype)
                backward.append(Matrix("ReLU mask" if relus == 1 else f"ReLU mask {k}", mask,
                                       device, f"the test inside row {ops.ReLU.grads[0][0].name}: "
                                               f"{a_name} > 0"))
            backward.append(Matrix(f"∂L/∂{subscript('Z', k)}", _host(z.grad), device,
                                   backward_kernel(a.grad_fn, 0)))
        else:
            k, W, b, z = parts
            if z is output and z.grad is not None:
                ctx, index = consumer[id(z)]
                backward.append(Matrix(f"∂L/∂{subscript('Z', k)}", _host(z.grad), device,
                                       backward_kernel(ctx, index)))
            backward.append(Matrix(f"∂L/∂{subscript('W', k)}", _host(W.grad), device,
                                   backward_kernel(consumer[id(W)][0], 1)))
            if b is not None:
                backward.append(Matrix(f"∂L/∂{subscript('b', k)}", _host(b.grad), device,
                                       backward_kernel(consumer[id(b)][0], 1) + ", summed over the rows"))

    # Phase 4: the update, in place; copies keep the values before it.
    param_names = [(name, t) for name, t in names.items() if any(t is p for p in params)]
    before = {name: _host(p) for name, p in param_names}
    grads = {name: _host(p.grad) for name, p in param_names}
    memory = _memory_table(fused_memory, buffer_names, params, param_names, x, y)
    optimizer.step()
    kernel = update_kernel(optimizer)
    update = [(Matrix(f"{name} before", before[name], device, "parameter before the step"),
               Matrix(f"∂L/∂{name}", grads[name], device, "from phase 3"),
               Matrix(f"{name} after", _host(p), device, kernel)) for name, p in param_names]
    memory += _optimizer_rows(optimizer, dict(param_names))
    with no_grad():
        after = model(x)
        loss_after = float(_loss_of(kind, after, y).item())
    settings = ", ".join(f"{key} {value:g}" for key, value in optimizer.param_groups[0].items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool) and
                         (key == "lr" or value))
    draw_layers: list[dict] = []
    k = 0
    for layer in layers:
        if isinstance(layer, Linear):
            k += 1
            draw_layers.append({"kind": "linear", "weight": subscript("W", k),
                                "bias": subscript("b", k) if layer.bias is not None else None})
        else:
            draw_layers.append({"kind": type(layer).__name__.lower()})
    return StepRecord(
        device=device, forward=forward, loss=loss_boxes, backward=backward, update=update,
        optimizer=f"{type(optimizer).__name__} ({settings})", update_kernel=kernel, lr=float(optimizer.lr),
        loss_value=loss_value, loss_after=loss_after,
        output_after=Matrix(f"{output_name} after", _host(after), device, "a fresh forward pass (no_grad)"),
        memory=memory, fused_memory=fused_memory, conceptual_memory=conceptual_memory,
        conceptual_graph=conceptual_graph, fused_graph=fused_graph, layers=draw_layers,
        loss_name="MSE" if kind == "mse" else "cross-entropy", loss_tensor=loss_t, tensors=names)


def _memory_table(fused: GraphMemory, buffer_names: dict[int, str], params: list[Tensor],
                  param_names: list[tuple[str, Tensor]], x: Tensor, y: Any) -> list[MemoryRow]:
    """Rows for the parameters, the data, what the training graph holds and the gradients."""
    name_of = {id(p): name for name, p in param_names}
    rows = [MemoryRow(name_of.get(id(p), "parameter"), "parameter", p.shape, str(p.array.dtype),
                      int(p.array.nbytes), (True,) * 4) for p in params]
    for name, t in (("X", x), ("Y", y)):
        if isinstance(t, Tensor):
            rows.append(MemoryRow(name, "data", t.shape, str(t.array.dtype), int(t.array.nbytes),
                                  (True,) * 4))
    for buffer in fused.buffers:
        if buffer.leaf:
            continue  # a parameter's or the data's own: counted above
        name = buffer_names.get(buffer.key, "")
        rows.append(MemoryRow(name or "saved for backward", "graph", buffer.shape, buffer.dtype,
                              buffer.nbytes, (True, True, False, False), "; ".join(buffer.held_by)))
    rows += [MemoryRow(f"∂L/∂{name_of.get(id(p), '?')}", "gradient", p.shape, str(p.array.dtype),
                       int(p.array.nbytes), (False, True, True, True)) for p in params]
    return rows


def _optimizer_rows(optimizer: Any, named: dict[str, Tensor]) -> list[MemoryRow]:
    """The optimizer's per-parameter buffers (momentum, Adam's moments), measured after its step."""
    rows = []
    by_id = {id(p): name for name, p in named.items()}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if hasattr(value, "nbytes") and tuple(value.shape) == p.shape:  # not step counts
                rows.append(MemoryRow(f"{key} of {by_id.get(id(p), '?')}", "optimizer state",
                                      tuple(value.shape), str(value.dtype), int(value.nbytes),
                                      (False, False, False, True)))
    return rows



# ---- the training history -------------------------------------------------------------------
def parameter_names(model: Sequential) -> dict[str, Tensor]:
    """The guide's names of a Sequential's parameters: W₁, b₁, W₂, ... in layer order."""
    named, k = {}, 0
    for layer in _layer_plan(model):
        if isinstance(layer, Linear):
            k += 1
            named[subscript("W", k)] = layer.weight
            if layer.bias is not None:
                named[subscript("b", k)] = layer.bias
    return named


class Snapshots:
    """The parameters and loss of a model at chosen epochs, for the page's slider.

    Each `record` reads the parameters back to the host (a synchronisation on the GPU): record a
    hundred epochs, not every one. Example: `snaps.record(epoch, loss)` after each chunk of training.
    """

    def __init__(self, model: Sequential) -> None:
        self.parameters = parameter_names(model)
        self.items: list[dict[str, Any]] = []

    def record(self, epoch: int, loss: float, values: Mapping[str, np.ndarray] | None = None) -> None:
        """Keep the parameters (or the given host `values` of them) as they are after `epoch` epochs."""
        values = values or {name: p.numpy() for name, p in self.parameters.items()}
        self.items.append({"epoch": int(epoch), "loss": float(loss),
                           "params": {name: np.asarray(v) for name, v in values.items()}})

    def __len__(self) -> int:
        return len(self.items)
