"""Find the op whose backward is wrong: re-check every node of a graph on the inputs it saw."""

from __future__ import annotations

import linecache
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import ops
from .backend import move
from .function import diagnosis
from .tensor import Tensor, _sum_to_shape

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NOT_CHECKED = (ops.ToDevice,)  # moves data between devices; its local check would need a GPU


def _user_line() -> str:
    """file:line and source of the first caller outside this package (the line that made the node)."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is None:
        return "?"
    filename, line = frame.f_code.co_filename, frame.f_lineno
    source = linecache.getline(filename, line).strip()
    shown = os.path.relpath(filename) if not os.path.relpath(filename).startswith("..") else filename
    return f"{shown}:{line}" + (f": {source}" if source else "")


@dataclass
class _Record:
    node: Any
    arrays: list  # the forward's positional arguments, arrays copied to host float64
    params: dict
    where: str


@dataclass
class NodeFinding:
    """One input of one node whose local backward disagrees with finite differences."""

    position: int  # the node's index in creation order (a topological order) within the graph
    op: str
    where: str  # the user line that created the node
    input_index: int
    input_shape: tuple
    output_shape: tuple
    element: tuple | None = None
    analytic: float = 0.0
    numeric: float = 0.0
    differing: int = 0
    checked: int = 0
    broadcast_from: tuple | None = None  # shape of the gradient the engine summed back, if it did
    error: str = ""  # set when the backward could not even be evaluated

    def __str__(self) -> str:
        head = (f"  #{self.position} {self.op}, created at {self.where}\n"
                f"    input {self.input_index}: shape {self.input_shape} -> output {self.output_shape}")
        if self.error:
            return f"{head}: {self.error}"
        text = (f"{head}; element {self.element}: analytic {self.analytic!r} vs numeric {self.numeric!r} "
                f"({self.differing} of {self.checked} checked elements differ)")
        if self.broadcast_from is not None:
            text += (f"\n    broadcast reduction involved: backward returned shape {self.broadcast_from}, "
                     f"which the engine summed to the input's shape {self.input_shape}")
        return text


@dataclass
class GradientReport:
    """The result of diagnose_gradients: every node checked, and those whose backward is wrong."""

    checked: int
    findings: list[NodeFinding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every checked node's backward agrees with finite differences."""
        return not self.findings

    def __str__(self) -> str:
        skipped = f" ({', '.join(self.skipped)} not checked)" if self.skipped else ""
        if self.ok:
            return (f"diagnose_gradients: all {self.checked} nodes of the graph agree with finite "
                    f"differences on the inputs they saw{skipped}. If the whole function still fails a "
                    "gradient check, look for values that leave the graph (.numpy(), .item(), detach()).")
        ops_named = ", ".join(dict.fromkeys(f.op for f in self.findings))
        lines = [f"diagnose_gradients: {len(self.findings)} input(s) of {ops_named} disagree with finite "
                 f"differences ({self.checked} nodes checked{skipped}):"]
        return "\n".join(lines + [str(f) for f in self.findings])


def _run(cls: type, arrays: list, params: dict, needs: tuple) -> tuple[Any, Any]:
    """A fresh node of the same class, its forward run on `arrays`."""
    node = cls()
    node.needs_input_grad, node.inputs = needs, ()
    return node, node.forward(*arrays, **params)


def _check_node(record: _Record, position: int, eps: float, atol: float, rtol: float,
                max_elements: int, rng: np.random.Generator) -> list[NodeFinding]:
    cls, arrays, params = type(record.node), record.arrays, record.params
    needs = tuple(record.node.needs_input_grad)
    fresh, out = _run(cls, arrays, params, needs)
    out = np.asarray(out, dtype=np.float64)
    weights = rng.uniform(0.5, 1.5, out.shape)
    grads = fresh.backward(weights.copy())
    grads = grads if isinstance(grads, (tuple, list)) else (grads,)
    findings = []
    for index, (x, needed) in enumerate(zip(arrays, needs)):
        if not needed or not isinstance(x, np.ndarray):
            continue
        finding = NodeFinding(position, cls.__name__, record.where, index, x.shape, out.shape)
        grad = grads[index] if index < len(grads) else None
        if grad is None:
            finding.error = "backward returned None for an input that needs a gradient"
            findings.append(finding)
            continue
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != x.shape:
            finding.broadcast_from = grad.shape
            try:
                grad = _sum_to_shape(grad, x.shape)
            except (ValueError, IndexError):
                finding.error = f"backward returned a gradient of shape {grad.shape} for this input"
                findings.append(finding)
                continue
        elements = list(np.ndindex(*x.shape))
        if len(elements) > max_elements:  # a sample keeps big nodes cheap
            picked = rng.choice(len(elements), max_elements, replace=False)
            elements = [elements[i] for i in sorted(picked)]
        analytic, numeric = np.empty(len(elements)), np.empty(len(elements))
        for k, element in enumerate(elements):
            values = []
            for step in (eps, -eps):
                probe = list(arrays)
                probe[index] = x.copy()
                probe[index][element] += step
                values.append(float(np.sum(np.asarray(_run(cls, probe, params, needs)[1]) * weights)))
            numeric[k] = (values[0] - values[1]) / (2 * eps)
            analytic[k] = grad[element]
        bad = ~np.isclose(analytic, numeric, rtol=rtol, atol=atol)
        if bad.any():
            worst = int(np.argmax(np.where(bad, np.abs(analytic - numeric), -1.0)))
            finding.element = tuple(int(i) for i in elements[worst])
            finding.analytic, finding.numeric = float(analytic[worst]), float(numeric[worst])
            finding.differing, finding.checked = int(bad.sum()), len(elements)
            findings.append(finding)
    return findings


def diagnose_gradients(fn: Callable[..., Tensor], inputs: Sequence[Any], eps: float = 1e-6,
                       atol: float = 1e-5, rtol: float = 1e-3, max_elements: int = 256) -> GradientReport:
    """Check each node's own backward against central differences on the inputs that node saw.

    `fn(*inputs)` runs once in float64 on its device while every node records its input arrays,
    keyword settings and creating line; then each node is re-run alone on the host through the
    NumPy twins. Up to `max_elements` elements per node input are probed (a random sample beyond).
    """
    inputs64 = [Tensor(t.numpy().astype(np.float64), device=t.device, requires_grad=t.requires_grad)
                if isinstance(t, Tensor) else t for t in inputs]
    records: dict[int, _Record] = {}

    def record(node: Any, arrays: list, params: dict) -> None:
        host = [move(a, "cpu").astype(np.float64) if hasattr(a, "dtype") else a for a in arrays]
        records[id(node)] = _Record(node, host, dict(params), _user_line())

    previous, diagnosis.recorder = diagnosis.recorder, record
    try:
        out = fn(*inputs64)
    finally:
        diagnosis.recorder = previous
    if not isinstance(out, Tensor):
        raise TypeError(f"diagnose_gradients: fn must return a Tensor, got {type(out).__name__}")
    if out.grad_fn is None:
        raise ValueError("diagnose_gradients: fn's result has no graph to check; give at least one input "
                         "with requires_grad=True (and do not run fn under no_grad)")
    in_graph, stack = set(), [out]
    while stack:
        ctx = stack.pop()._ctx
        if ctx is not None and id(ctx) not in in_graph:
            in_graph.add(id(ctx))
            stack.extend(t for t in ctx.inputs if isinstance(t, Tensor))
    graph = [r for key, r in records.items() if key in in_graph]  # creation order: inputs first
    report = GradientReport(checked=0)
    rng = np.random.default_rng(1234)
    with np.errstate(all="ignore"):
        for position, rec in enumerate(graph):
            if isinstance(rec.node, _NOT_CHECKED):
                report.skipped.append(f"#{position} {rec.node.name}")
                continue
            report.checked += 1
            report.findings += _check_node(rec, position, eps, atol, rtol, max_elements, rng)
    return report
