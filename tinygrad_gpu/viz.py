"""Seeing what the library did: the recorded graph as Graphviz DOT, and matrices drawn as boxes.

The graph behind a tensor exists only until backward() runs: backward releases every node it
walks through (their saved arrays and their links to inputs), so call `to_dot` / `draw` before
backward, or run backward with `retain_graph=True`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backend import is_cupy_array
from .tensor import Tensor

RENDERED_FORMATS = ("svg", "png", "pdf")


# ---- the graph as DOT -----------------------------------------------------------------------
def _shape_text(shape: tuple) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


def _tensor_text(t: Tensor) -> str:
    return f"{_shape_text(t.shape)} {t.dtype} {t.device}"


def _quote(text: str) -> str:
    """A DOT string literal; newlines become DOT's centred line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(tensor: Tensor, names: Mapping[str, Tensor] | None = None) -> str:
    """Graphviz DOT text of the graph that produced `tensor`: one node per op and per leaf tensor.

    Leaves (boxes) show shape, dtype, device and, once backward has filled it, the gradient's
    shape; ops (ellipses) show their name and the tensor they produced. `names` labels tensors,
    e.g. `{"W1": layer.weight}`. Example: `print(tg.viz.to_dot((a * b + c).sum()))`.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"to_dot takes a Tensor, got {type(tensor).__name__}")
    name_of = {id(t): name for name, t in (names or {}).items()}
    node_ids: dict[Any, str] = {}  # id(leaf tensor or Function) -> DOT node id
    lines = ["digraph tinygrad_gpu {", "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10];']
    edges: list[str] = []

    def new_node(key: Any, label: str, style: str) -> str:
        node_ids[key] = f"n{len(node_ids)}"
        lines.append(f"  {node_ids[key]} [label={_quote(label)}, {style}];")
        return node_ids[key]

    def node_for(t: Tensor) -> str:
        """The DOT id of the leaf or op that produced t (creating nodes on first sight)."""
        ctx = t.grad_fn
        key = id(t) if ctx is None else id(ctx)
        if key in node_ids:
            return node_ids[key]
        if ctx is None:
            label = "\n".join(filter(None, [
                name_of.get(id(t), "leaf"), _tensor_text(t),
                "requires_grad" if t.requires_grad else "",
                f"grad {_shape_text(t.grad.shape)}" if t.grad is not None else ""]))
            fill = "lightblue" if t.requires_grad else "lightgrey"
            return new_node(key, label, f'shape=box, style=filled, fillcolor="{fill}"')
        output = _tensor_text(t) if id(t) not in name_of else f"{name_of[id(t)]}: {_tensor_text(t)}"
        label = "\n".join(filter(None, [
            ctx.name, "→ " + output,
            f"grad {_shape_text(t.grad.shape)}" if t.grad is not None else "",
            "released by backward()" if ctx.released else ""]))
        node = new_node(key, label, "shape=ellipse")
        # iterative walk: a long chain of ops must not hit Python's recursion limit
        pending.append(ctx)
        return node

    pending: list[Any] = []
    root = node_for(tensor)
    while pending:
        ctx = pending.pop()
        for position, parent in enumerate(ctx.inputs):
            if isinstance(parent, Tensor):
                source = node_for(parent)
            else:  # a Python number taking part in the op, e.g. the 0.25 of a mean over 4 values
                source = new_node((id(ctx), position), f"{parent:g}", "shape=plaintext")
            edges.append(f"  {source} -> {node_ids[id(ctx)]};")
    if tensor.grad_fn is not None:
        output = new_node(id(tensor), name_of.get(id(tensor), "output") + "\n" + _tensor_text(tensor),
                          'shape=box, style="rounded,filled", fillcolor="lightyellow"')
        edges.append(f"  {root} -> {output};")
    return "\n".join(lines + edges + ["}"]) + "\n"


def draw(tensor: Tensor, path: str | Path, names: Mapping[str, Tensor] | None = None) -> Path:
    """Write the graph behind `tensor` to `path` (.dot, or .svg/.png/.pdf rendered by Graphviz).

    Rendering needs the `graphviz` Python package and Graphviz's `dot` program; without them the
    DOT text is written next to `path` (same name, suffix .dot) and a message says how to render
    it. Returns the path of the file written. Draw before backward() (or with retain_graph=True).
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("dot", "gv", *RENDERED_FORMATS):
        raise ValueError(f"draw: cannot tell the format from {path.name!r}; "
                         f"end the name in .dot, .{', .'.join(RENDERED_FORMATS)}")
    text = to_dot(tensor, names)
    if fmt in ("dot", "gv"):
        path.write_text(text, encoding="utf-8")
        return path
    problem = _renderer_problem()
    if problem is None:
        import graphviz

        path.write_bytes(graphviz.Source(text).pipe(format=fmt))
        return path
    dot_path = path.with_suffix(".dot")
    dot_path.write_text(text, encoding="utf-8")
    print(f"{problem}; wrote {dot_path} instead. Render it with: dot -T{fmt} {dot_path} -o {path}")
    return dot_path


def _renderer_problem() -> str | None:
    """Why the graph cannot be rendered here, or None when it can."""
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return "the graphviz Python package is not installed (pip install graphviz)"
    if shutil.which("dot") is None:
        return "Graphviz's dot program is not installed (e.g. apt-get install graphviz)"
    return None


# ---- matrices as boxes ----------------------------------------------------------------------
def format_number(value: float) -> str:
    """A number as the boxes print it: 4 decimals, or 4 significant digits when it is tiny or huge."""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.3e}"


def _is_integral(values: np.ndarray) -> bool:
    return bool(values.size) and bool(np.all(values == np.round(values))) and bool(np.all(abs(values) < 1e6))


def _host_values(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.numpy()
    if is_cupy_array(values):
        return values.get()
    return np.asarray(values)


def matrix_box(values: Any, title: str = "", footer: str = "", notes: Sequence[str] = (),
               number: Callable[[float], str] | None = None) -> list[str]:
    """Lines drawing `values` (a Tensor or array, up to 2-D shown as rows) in a box.

    `title` goes in the top border, `footer` in the bottom one, and `notes[i]` after row i.
    Numbers are printed by `number`: by default whole numbers bare (0, 1 for X and masks) when
    all of them are whole, else with `format_number`.
    """
    host = _host_values(values).astype(np.float64)
    if number is None:
        number = (lambda v: str(int(v))) if _is_integral(host) else format_number
    rows = host.reshape(1, -1) if host.ndim < 2 else host.reshape(-1, host.shape[-1])
    cells = [[number(float(v)) for v in row] for row in rows]
    width = max((len(c) for row in cells for c in row), default=1)
    texts = ["  ".join(c.rjust(width) for c in row) for row in cells]
    inner = max([len(t) + 2 for t in texts] + [len(title) + 4 if title else 0,
                                               len(footer) + 4 if footer else 0])

    def border(left: str, label: str, right: str) -> str:
        head = f"─ {label} " if label else ""
        return left + head + "─" * (inner - len(head)) + right

    lines = [border("┌", title, "┐")]
    for i, text in enumerate(texts):
        note = f" {notes[i]}" if i < len(notes) and notes[i] else ""
        lines.append("│ " + text.ljust(inner - 2) + " │" + note)
    lines.append(border("└", footer, "┘"))
    return pad(lines)


def pad(lines: Iterable[str]) -> list[str]:
    """The lines, padded with spaces to the same width (a block for `beside`)."""
    lines = list(lines)
    width = max((len(line) for line in lines), default=0)
    return [line.ljust(width) for line in lines]


def beside(*parts: list[str] | str) -> list[str]:
    """Blocks of lines placed side by side, each centred vertically; a plain string between blocks
    goes on the middle row, so `beside(box_a, "  ──ReLU──▶  ", box_b)` draws an arrow between boxes.
    """
    blocks = [pad(part) for part in parts if not isinstance(part, str)]
    height = max((len(b) for b in blocks), default=0)
    columns = []
    for part in parts:
        if isinstance(part, str):  # a connector: on the middle row, spaces elsewhere
            column = [" " * len(part)] * height
            column[(height - 1) // 2] = part
        else:
            block = pad(part)
            blank = " " * (len(block[0]) if block else 0)
            above = (height - len(block)) // 2
            column = [blank] * above + block + [blank] * (height - len(block) - above)
        columns.append(column)
    return [("".join(col[row] for col in columns)).rstrip() for row in range(height)]


# ---- the explained step as a page -----------------------------------------------------------
def explain_step(*args: Any, **kwargs: Any) -> Any:
    """Run one training step of a Sequential MLP op by op and record it (tinygrad_gpu.explain)."""
    from .explain import explain_step as record

    return record(*args, **kwargs)


def explain_html(*args: Any, **kwargs: Any) -> str:
    """The seed guide's page for a recorded step, one self-contained HTML file (needs Jinja2)."""
    from .explain_html import explain_html as render

    return render(*args, **kwargs)


def snapshots(model: Any) -> Any:
    """A recorder of the model's parameters at chosen epochs, for explain_html's slider."""
    from .explain import Snapshots

    return Snapshots(model)
