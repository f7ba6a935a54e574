"""Train the seed guide's XOR network (2 -> 4 ReLU -> 1 sigmoid, MSE loss, SGD) and show how it learns.

  python examples/xor.py                      learn XOR on the default device
  python examples/xor.py --explain            the four phases of the first step, with the real numbers
  python examples/xor.py --init seed          start from the seed guide's weights (see what happens)
  python examples/xor.py --plot loss.png --graph graph.svg
  python examples/xor.py --explain --html xor.html   the same walk as a page, with the training history

With the defaults (init spread, lr 0.5, momentum 0.9, 1000 epochs) the network learns XOR:
loss < 0.001 and every prediction within 0.05 of its target, for each seed 0-199 we tried.

The loss stays on the device during training and is read back to the host only every
--sync-every epochs (one transfer for all the losses since the last read), so the GPU is not
made to wait at each step.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from typing import Any

import numpy as np

import tinygrad_gpu as tg
from tinygrad_gpu.backend import array_module, check_device, cupy_module, is_cupy_array
from tinygrad_gpu.viz import RENDERED_FORMATS, beside, matrix_box

INPUTS = [[0, 0], [0, 1], [1, 0], [1, 1]]
TARGETS = [[0], [1], [1], [0]]
# The seed guide's initial weights, in the layout of tg.nn.Linear (weight is out x in).
SEED_GUIDE_WEIGHTS = {
    "0.weight": [[0.5, 0.3], [0.4, 0.6], [0.2, 0.1], [0.3, 0.4]],
    "0.bias": [0.1, 0.2, 0.1, 0.0],
    "2.weight": [[0.3, 0.4, 0.2, 0.5]],
    "2.bias": [0.1],
}
# Defaults per initialisation. "seed" replays the seed guide's own settings (SGD, lr 0.1).
DEFAULTS = {
    "spread": {"lr": 0.5, "momentum": 0.9, "epochs": 1000},
    "linear": {"lr": 0.5, "momentum": 0.9, "epochs": 1000},
    "seed": {"lr": 0.1, "momentum": 0.0, "epochs": 1000},
}
LEARNED_LOSS, LEARNED_ERROR = 1e-3, 0.05  # what "learned XOR" means here
HTML_SNAPSHOTS = 100  # epochs whose weights --html records for its slider


# ---- set-up ---------------------------------------------------------------------------------
def have_module(name: str) -> bool:
    """True when an optional package (tqdm, matplotlib) can be imported."""
    return importlib.util.find_spec(name) is not None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the per-initialisation defaults filled in."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda where CuPy sees a GPU, else cpu)")
    parser.add_argument("--init", choices=list(DEFAULTS), default="spread", help=(
        "initial weights. spread (default): the hidden units start at evenly spread directions "
        "(a random rotation), |w| = 1, bias 0.1, so none starts dead and no two start alike; "
        "linear: tg.nn.Linear's own uniform init (with 4 hidden units about 1 seed in 4 gets "
        "stuck); seed: the seed guide's exact weights (needs --hidden 4)"))
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs, one full-batch step each (default: 1000)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: 0.5; 0.1 with --init seed)")
    parser.add_argument("--momentum", type=float, default=None,
                        help="SGD momentum (default: 0.9; 0 with --init seed)")
    parser.add_argument("--hidden", type=int, default=4, help="hidden units (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial weights (default: 0)")
    parser.add_argument("--sync-every", type=int, default=50, metavar="N",
                        help="read the losses back to the host every N epochs (default: 50)")
    parser.add_argument("--plot", metavar="FILE.png", help="plot the loss curve (needs matplotlib)")
    parser.add_argument("--graph", metavar="FILE",
                        help="draw the first step's graph: .svg/.png (needs Graphviz) or .dot")
    parser.add_argument("--explain", action="store_true",
                        help="print the four phases of the first training step with the real numbers")
    parser.add_argument("--html", metavar="FILE.html", help=(
        "write the seed guide as one self-contained page drawn from this run: the four phases of the "
        "first step, the network, memory, both graphs and the training history (needs Jinja2)"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only the result")
    args = parser.parse_args(argv)
    for name, value in DEFAULTS[args.init].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.init == "seed" and args.hidden != 4:
        parser.error("--init seed needs --hidden 4: the seed guide's W1 is 4x2")
    if args.epochs < 1 or args.hidden < 1 or args.sync_every < 1 or args.lr <= 0 or args.momentum < 0:
        parser.error("--epochs, --hidden and --sync-every must be >= 1, --lr > 0 and --momentum >= 0")
    if args.html and not have_module("jinja2"):
        parser.error("--html needs Jinja2, which is not installed: pip install 'tinygrad_gpu[viz]'")
    if not math.isfinite(args.lr) or not math.isfinite(args.momentum):
        parser.error(f"--lr and --momentum must be finite numbers, got {args.lr} and {args.momentum}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.plot and not have_module("matplotlib"):
        parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    # output files are checked now, not after training: a typo must not cost the whole run
    if args.plot:
        check_output(parser, "--plot", args.plot, plot_formats())
    if args.graph:
        check_output(parser, "--graph", args.graph, ("dot", "gv", *RENDERED_FORMATS))
    try:
        args.device = check_device(args.device) if args.device else tg.default_device()
    except (tg.DeviceError, ValueError, TypeError) as exc:
        parser.error(f"--device: {exc}")
    return args


def plot_formats() -> tuple[str, ...]:
    """The file suffixes matplotlib can save a figure as."""
    from matplotlib.figure import Figure

    return tuple(Figure().canvas.get_supported_filetypes())


def check_output(parser: argparse.ArgumentParser, option: str, path: str, formats: tuple[str, ...]) -> None:
    """A usage error unless `path` names a known format in a directory that exists."""
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if suffix not in formats:
        parser.error(f"{option} {path}: cannot tell the format from the name; end it in ."
                     + ", .".join(formats))
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        parser.error(f"{option} {path}: the directory {directory} does not exist")


def spread_weights(hidden: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Initial weights whose hidden units point in evenly spread directions, all alive at the start."""
    angles = rng.uniform(0, 2 * math.pi) + np.arange(hidden) * (2 * math.pi / hidden)
    return {
        "0.weight": np.stack([np.cos(angles), np.sin(angles)], axis=1),
        "0.bias": np.full(hidden, 0.1),  # > 0: every unit is active on input (0, 0) at first
        "2.weight": rng.uniform(-0.5, 0.5, (1, hidden)),
        "2.bias": np.zeros(1),
    }


def build_model(hidden: int, init: str, seed: int, device: str) -> tg.nn.Sequential:
    """The seed guide's network, Linear(2, hidden) -> ReLU -> Linear(hidden, 1) -> Sigmoid."""
    tg.manual_seed(seed)
    model = tg.nn.Sequential(tg.nn.Linear(2, hidden, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(hidden, 1, device=device), tg.nn.Sigmoid())
    if init == "spread":
        model.load_state_dict(spread_weights(hidden, np.random.default_rng(seed)))
    elif init == "seed":
        model.load_state_dict(SEED_GUIDE_WEIGHTS)
    return model


# ---- training -------------------------------------------------------------------------------
class Progress:
    """A tqdm bar showing the latest loss; plain prints where tqdm is missing; nothing when quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet, self.bar = total, 0, quiet, None
        self.next_print = 0
        if not quiet and have_module("tqdm"):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="training", unit="epoch")

    def update(self, epochs: int, loss: float) -> None:
        """Record `epochs` more epochs done, the last of which had `loss`."""
        self.done += epochs
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
            self.bar.update(epochs)
        elif not self.quiet and (self.done >= self.next_print or self.done == self.total):
            print(f"  epoch {self.done:>6}/{self.total}  loss {loss:.6f}")
            self.next_print = self.done + max(1, self.total // 10)

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


def losses_to_host(losses: list[tg.Tensor]) -> list[float]:
    """Many scalar losses still on the device, brought to the host in one transfer."""
    stacked = array_module(losses[0].device).stack([loss.array for loss in losses])
    return tg.Tensor(stacked).numpy().tolist()


def train(model: tg.nn.Module, x: tg.Tensor, y: tg.Tensor, optimizer: tg.optim.SGD, epochs: int,
          sync_every: int, progress: Progress) -> list[float]:
    """Run `epochs` full-batch SGD steps; returns each step's loss (before its update)."""
    loss_fn = tg.nn.MSELoss()
    history: list[float] = []
    pending: list[tg.Tensor] = []  # losses not yet read back
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        pending.append(loss.detach())
        if len(pending) == sync_every or epoch == epochs - 1:
            history += losses_to_host(pending)
            progress.update(len(pending), history[-1])
            pending.clear()
    return history


def names_for_graph(model: tg.nn.Sequential, x: tg.Tensor, y: tg.Tensor) -> dict[str, tg.Tensor]:
    """Labels for the leaves of the XOR graph."""
    return {"X": x, "Y": y, "W₁": model[0].weight, "b₁": model[0].bias,
            "W₂": model[2].weight, "b₂": model[2].bias}


def draw_graph(loss: tg.Tensor, path: str, names: dict[str, tg.Tensor]) -> None:
    """Draw the graph behind `loss` and say where it went (a .dot file where Graphviz is missing)."""
    written = tg.viz.draw(loss, path, names=names)
    print(f"graph of the first step written to {written}")


def plain_first_step(model: tg.nn.Sequential, x: tg.Tensor, y: tg.Tensor, optimizer: tg.optim.SGD,
                     graph_path: str) -> float:
    """One training step that draws its graph (kept alive through backward to show the gradients)."""
    optimizer.zero_grad()
    loss = tg.nn.MSELoss()(model(x), y)
    loss.backward(retain_graph=True)
    draw_graph(loss, graph_path, {**names_for_graph(model, x, y), "loss": loss})
    optimizer.step()
    return loss.item()


# ---- --explain: the four phases of the first step -------------------------------------------
def shape_text(shape: tuple) -> str:
    """4×2 for a (4, 2) shape, "scalar" for ()."""
    return "×".join(map(str, shape)) if shape else "scalar"


def box(item: Any, title: str, notes: list[str] | tuple = ()) -> list[str]:
    """A recorded matrix (or a tensor) as a box; the footer: its shape, device and the op that made it."""
    if isinstance(item, tg.Tensor):
        made_by = f" · {item.grad_fn.name}" if item.grad_fn else ""
        footer = f"{shape_text(item.shape)} {item.device}{made_by}"
        return matrix_box(item, title, footer, notes)
    footer = f"{shape_text(item.shape)} {item.device}"
    if item.kernel.split(" ·")[0] not in ("parameter", "input data (copied to the device once)"):
        footer += f" · {item.kernel.split(' · ')[0]}"
    return matrix_box(item.values, title, footer, notes)


def phase(title: str) -> None:
    """A phase heading, as in the seed guide."""
    width = 78
    print("\n┌" + "─" * width + "┐")
    print("│  " + title.ljust(width - 2) + "│")
    print("└" + "─" * width + "┘\n")


def show(lines: list[str], indent: str = "  ") -> None:
    """Print a block of lines, indented."""
    print("\n".join(indent + line for line in lines))


def arrow_down(text: str) -> None:
    """A downward arrow with its label."""
    show(["      │", f"      │  {text}", "      ▼"])


def saved_arrays(root: tg.Tensor) -> list[tuple[str, Any]]:
    """(op.attribute, array) for every array the graph behind `root` keeps for its backward."""
    found, seen, stack = [], set(), [root]
    while stack:
        ctx = stack.pop().grad_fn
        if ctx is None or id(ctx) in seen:
            continue
        seen.add(id(ctx))
        for attribute, value in vars(ctx).items():
            if isinstance(value, np.ndarray) or is_cupy_array(value):
                found.append((f"{ctx.name}.{attribute}", value))
        stack += [t for t in ctx.inputs if isinstance(t, tg.Tensor)]
    return found[::-1]  # roughly in forward order


def graph_nodes(root: tg.Tensor) -> list[str]:
    """The op names of the nodes of the graph behind `root`."""
    names, seen, stack = [], set(), [root]
    while stack:
        ctx = stack.pop().grad_fn
        if ctx is None or id(ctx) in seen:
            continue
        seen.add(id(ctx))
        names.append(ctx.name)
        stack += [t for t in ctx.inputs if isinstance(t, tg.Tensor)]
    return names


def memory_range(array: Any) -> tuple[int, int]:
    """[first byte, last byte) of the memory an array spans (views included)."""
    interface = getattr(array, "__cuda_array_interface__", None) or array.__array_interface__
    start = interface["data"][0]
    return start, start + array.nbytes


def overlaps(array: Any, other: Any) -> bool:
    """True when two arrays share memory (the same device assumed)."""
    (a0, a1), (b0, b1) = memory_range(array), memory_range(other)
    return a0 < b1 and b0 < a1


def explain_first_step(model: tg.nn.Sequential, x: tg.Tensor, y: tg.Tensor, optimizer: tg.optim.SGD,
                       args: argparse.Namespace) -> tuple[Any, list[tuple[str, str, Any]]]:
    """Run the first training step op by op (tg.viz.explain_step) and print its four phases.

    Returns the step's record and what the graph kept for backward: (name, ops, array) triples.
    """
    samples = [f"← [{a}, {b}]" for a, b in INPUTS]
    # The graph is kept through backward (4 samples: a few hundred bytes) to list what it saved.
    record = tg.viz.explain_step(model, x, y, optimizer, keep_graph=True,
                                 sample_notes=[f"{s} XOR = {t[0]}" for s, t in zip(samples, TARGETS)])
    m, device, n = record.matrix, x.device, y.size
    W2 = model[2].weight

    # Training records fewer, fused nodes (tg.fuse): say so, from the graph a training step builds.
    fused_nodes = graph_nodes(tg.nn.MSELoss()(model(x), y))
    phase(f"PHASE 1: FORWARD PROPAGATION (first step; {x.dtype} tensors on {device})")
    unfused = len(graph_nodes(record.loss_tensor))
    print(f"  This step is written out op by op, {unfused} unfused nodes, so that every "
          "intermediate is a tensor\n  to show; its backward and the memory table below are those of "
          f"this unfused graph. Training steps\n  record {len(fused_nodes)} fused nodes instead: "
          f"{', '.join(reversed(fused_nodes))}.\n")
    show(beside(box(m("X"), "X", m("X").notes), "    ", box(m("W₁"), "W₁"), "  ", box(m("b₁"), "b₁")))
    arrow_down("Z₁ = X · W₁ᵀ + b₁   (MatMul, then Add broadcasting b₁ over the rows)")
    show(beside(box(m("Z₁"), "Z₁"), "  ── ReLU: max(0, Z₁) ──▶  ", box(m("A₁"), "A₁")))
    arrow_down(f"layer 2 ({W2.shape[1]}→1, sigmoid)")
    show(beside(box(m("W₂"), "W₂"), "  ", box(m("b₂"), "b₂")))
    arrow_down("Z₂ = A₁ · W₂ᵀ + b₂,  ŷ = sigmoid(Z₂)")
    show(beside(box(m("Z₂"), "Z₂"), "  ── sigmoid ──▶  ",
                box(m("ŷ"), "ŷ", [f"{s}: target {t[0]}" for s, t in zip(samples, TARGETS)])))

    phase("PHASE 2: LOSS CALCULATION (mean squared error)")
    show(beside(box(m("diff = ŷ − Y"), "diff = ŷ − Y"), " ─ ² ─▶ ", box(m("squared"), "squared"),
                " ─ sum ─▶ ", box(m("sum"), "sum"), f" ─ × 1/{n} ─▶ ", box(m("loss"), "loss")))
    loss = record.loss_value
    print(f"\n  The sum is one reduction kernel over all {n} squared errors on {device}.")
    print(f"  Loss = {loss:.4f}: predictions are off by about {math.sqrt(loss):.2f} "
          "on average (root of the mean square).")
    kept = saved_arrays(record.loss_tensor)  # kept through backward: what the graph saved for it
    if args.graph:
        names = {name: t for name, t in record.tensors.items() if name not in ("diff", "squared", "sum")}
        draw_graph(record.loss_tensor, args.graph, names)

    phase("PHASE 3: BACKWARD PROPAGATION (the chain rule, output to input)")
    print(f"  Start: ∂L/∂ŷ = 2(ŷ − Y)/{n}, then through the sigmoid: ∂L/∂Z₂ = ∂L/∂ŷ ⊙ ŷ(1 − ŷ)\n")
    show(beside(box(m("∂L/∂ŷ"), "∂L/∂ŷ"), "  ── ⊙ ŷ(1 − ŷ) ──▶  ", box(m("∂L/∂Z₂"), "∂L/∂Z₂")))
    arrow_down("layer 2:  ∂L/∂W₂ = ∂L/∂Z₂ᵀ · A₁,  ∂L/∂b₂ = Σ rows of ∂L/∂Z₂,  ∂L/∂A₁ = ∂L/∂Z₂ · W₂")
    show(beside(box(m("∂L/∂W₂"), "∂L/∂W₂"), "  ", box(m("∂L/∂b₂"), "∂L/∂b₂"), "    ",
                box(m("∂L/∂A₁"), "∂L/∂A₁")))
    # The mask is the condition ReLU's backward kernel tests, on the output ReLU saved (A₁).
    mask = m("ReLU mask")
    arrow_down("layer 1:  ∂L/∂Z₁ = ∂L/∂A₁ ⊙ ReLU'(Z₁);  ReLU' is 1 where A₁ > 0, else 0")
    show(beside(box(mask, "ReLU mask"), "  ── ∂L/∂A₁ ⊙ mask ──▶  ", box(m("∂L/∂Z₁"), "∂L/∂Z₁")))
    dead = int(mask.values.size - mask.values.sum())
    print(f"\n  {dead} of {mask.values.size} entries of Z₁ are ≤ 0: their gradient is stopped (× 0).")
    arrow_down("∂L/∂W₁ = ∂L/∂Z₁ᵀ · X,  ∂L/∂b₁ = Σ rows of ∂L/∂Z₁")
    show(beside(box(m("∂L/∂W₁"), "∂L/∂W₁"), "  ", box(m("∂L/∂b₁"), "∂L/∂b₁")))
    params = ["W₁", "b₁", "W₂", "b₂"]
    sizes = [m(f"∂L/∂{name}").values.size for name in params]
    counts = " + ".join(f"{size} ({name})" for name, size in zip(params, sizes))
    print(f"\n  Gradients computed: {counts} = {sum(sizes)} numbers, one per parameter, each in its .grad")

    phase(f"PHASE 4: PARAMETER UPDATE (SGD, α = {args.lr:g}, momentum {args.momentum:g})")
    print("  θ_new = θ_old − α · ∂L/∂θ, in place (on a GPU one launch updates all parameters)")
    if args.momentum:
        print("  (with momentum the first step is the same: the velocity starts as the gradient)")
    print()
    for before, grad, after in record.update:
        show(beside(box(before, before.name), f"  − {args.lr:g} ×  ", box(grad, grad.name),
                    "  =  ", box(after, after.name)))
        print()
    print("  Before and after the update (a fresh forward pass with the new weights):\n")
    show(beside(box(m("ŷ"), "ŷ before"), "  ──▶  ",
                box(record.output_after, "ŷ after", [f"vs target {t[0]}" for t in TARGETS])))
    change = "down" if record.loss_after < loss else "UP"
    print(f"\n  Loss before {loss:.6f}  →  after {record.loss_after:.6f}  ({change})")

    # Name each saved array after the tensor it is, or the tensor whose memory it views.
    tensors = record.tensors
    names = {id(tensors[name].array): name for name in ("A₁", "Z₁", "Z₂", "ŷ", "diff", "squared", "sum")}
    counted = [("X", x.array), ("Y", y.array)] + [(name, tensors[name].array) for name in params]
    described = []
    for ops_attribute, array in kept:
        owner = names.get(id(array))
        if owner is None:  # the data itself, a parameter, or a view of one: counted elsewhere
            owner = next((name if array is other else f"view of {name}"
                          for name, other in counted if overlaps(array, other)), "unnamed")
        described.append((owner, ops_attribute, array))
    record.loss_tensor = None  # the graph kept for the list above is no longer needed
    return record, described


def print_memory(model: tg.nn.Module, x: tg.Tensor, y: tg.Tensor,
                 kept: list[tuple[str, str, Any]]) -> None:
    """The memory table: bytes of parameters, gradients, data and what the graph keeps for backward."""
    params = list(zip(["W₁", "b₁", "W₂", "b₂"], model.parameters()))
    rows: list[tuple[str, str]] = []

    def section(title: str, items: list[tuple[str, Any]]) -> int:
        total = sum(array.nbytes for _, array in items)
        rows.append((title, f"{total} B"))
        rows.extend((f"  {name} {shape_text(a.shape)} {a.dtype}", f"{a.nbytes} B") for name, a in items)
        return total

    total = section("Parameters", [(name, p.array) for name, p in params])
    total += section("Gradients (.grad)", [(f"∂L/∂{name}", p.grad.array)
                                           for name, p in params if p.grad is not None])
    total += section("Training data", [("X", x.array), ("Y", y.array)])
    # Each array once, however many ops keep it; the data and views of parameters are counted above.
    own: dict[int, tuple[str, list[str], Any]] = {}
    elsewhere = []
    for owner, ops_attribute, array in kept:
        if owner in ("X", "Y", "W₁", "b₁", "W₂", "b₂") or owner.startswith("view of"):
            elsewhere.append(f"{owner} ({ops_attribute})")
        else:
            own.setdefault(id(array), (owner, [], array))[1].append(ops_attribute)
    total += section("Saved by the graph for backward",
                     [(f"{owner} ({', '.join(sorted(ops))})", array) for owner, ops, array in own.values()])
    if elsewhere:
        rows.append(("  " + ", ".join(sorted(elsewhere)), "0 B"))
    not_kept = [name for name in ("Z₁", "Z₂") if name not in {owner for owner, _, _ in kept}]
    if not_kept:
        rows.append((f"  {', '.join(not_kept)}: not kept (ReLU's and sigmoid's backward use their outputs)",
                     ""))
    rows.append(("Total", f"{total} B"))
    if x.device == "cuda":
        pool = cupy_module().get_default_memory_pool()
        rows.append(("CuPy memory pool: bytes in use / held",
                     f"{pool.used_bytes()} / {pool.total_bytes()} B"))
    width = max(len(label) for label, _ in rows) + 2
    phase(f"MEMORY ON {x.device.upper()}, measured from the live tensors")
    print("  What the graph saves is that of the explained, unfused first step; the fused nodes of a "
          "training step\n  save less (print(tg.graph_memory(loss)) lists what a graph keeps).\n")
    show(frame([f"{label.ljust(width)}{value.rjust(10)}" for label, value in rows]))


def frame(lines: list[str]) -> list[str]:
    """Lines inside a plain box."""
    inner = max(len(line) for line in lines)
    return ["┌" + "─" * (inner + 2) + "┐"] + [f"│ {line.ljust(inner)} │" for line in lines] + \
        ["└" + "─" * (inner + 2) + "┘"]


# ---- results --------------------------------------------------------------------------------
def plot_losses(history: list[float], path: str, title: str) -> None:
    """Save the loss curve, log-scale y, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    axes.plot(range(1, len(history) + 1), history, color="tab:blue", linewidth=1.5, label="MSE loss")
    axes.axhline(LEARNED_LOSS, color="tab:gray", linestyle="--", linewidth=1,
                 label=f"{LEARNED_LOSS:g} (learned)")
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("MSE loss (log scale)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def report_seed_init(model: tg.nn.Sequential, x: tg.Tensor, first_loss: float,
                     first_predictions: np.ndarray) -> None:
    """What the seed guide's weights really do, from this run's numbers."""
    values = ", ".join(f"{p:.3f}" for p in first_predictions)
    print(f"seed guide's weights: the first forward pass gives predictions [{values}] and loss "
          f"{first_loss:.4f}\n  (the guide draws 0.12, 0.85, 0.92, 0.08 and loss 0.0124: "
          "illustrative numbers, not computed)")
    with tg.no_grad():
        z1 = x @ model[0].weight.T + model[0].bias
    active = z1.numpy() > 0
    if active.all():
        print(f"all {active.shape[1]} hidden units are active (Z₁ > 0) on all 4 inputs, so the network "
              "is an affine function\n  of its input passed through the sigmoid: no such function fits "
              "XOR (the best predicts 0.5 everywhere, loss 0.25)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (and explain) the XOR network; returns the final loss, predictions and timings."""
    args = parse_args(argv)
    device = args.device
    x = tg.Tensor(INPUTS, device=device)
    y = tg.Tensor(TARGETS, device=device)
    model = build_model(args.hidden, args.init, args.seed, device)
    optimizer = tg.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    settings = (f"2 → {args.hidden} ReLU → 1 sigmoid, MSE, SGD lr {args.lr:g} momentum {args.momentum:g}, "
                f"{args.epochs} epochs, init {args.init}, seed {args.seed}, device {device}")
    print(f"XOR: {settings}")
    if args.init == "seed":
        with tg.no_grad():
            first_predictions = model(x).numpy().ravel()

    history: list[float] = []
    kept: list[tuple[str, str, Any]] = []
    record = snapshots = None
    if args.explain:
        record, kept = explain_first_step(model, x, y, optimizer, args)
        history.append(record.loss_value)
    elif args.html:
        record = tg.viz.explain_step(model, x, y, optimizer)
        history.append(record.loss_value)
    elif args.graph:
        history.append(plain_first_step(model, x, y, optimizer, args.graph))
    timed_epochs = args.epochs - len(history)
    if args.explain:
        phase(f"TRAINING: {timed_epochs} more epochs")
    progress = Progress(timed_epochs, args.quiet)
    start = time.perf_counter()
    if timed_epochs and record is not None and args.html:
        # train in chunks between snapshots of the weights (each one reads them back to the host)
        snapshots = tg.viz.snapshots(model)
        snapshots.record(0, record.loss_value, {b.name.removesuffix(" before"): b.values
                                                for b, _, _ in record.update})
        snapshots.record(1, record.loss_after)
        ends = np.unique(np.linspace(0, timed_epochs, min(HTML_SNAPSHOTS, timed_epochs) + 1).astype(int))
        for first, last in zip(ends, ends[1:]):
            history += train(model, x, y, optimizer, int(last - first), args.sync_every, progress)
            snapshots.record(len(history), history[-1])
    elif timed_epochs:
        history += train(model, x, y, optimizer, timed_epochs, args.sync_every, progress)
    seconds = time.perf_counter() - start
    progress.close()

    with tg.no_grad():
        y_final = model(x)
        final_loss = tg.nn.MSELoss()(y_final, y).item()
    predictions = y_final.numpy().ravel()
    targets = np.array(TARGETS, dtype=float).ravel()
    learned = final_loss < LEARNED_LOSS and bool(np.all(np.abs(predictions - targets) < LEARNED_ERROR))

    if args.explain:
        phase(f"RESULT AFTER {args.epochs} EPOCHS")
        show(beside(box(y_final, "final ŷ", [f"vs target {t[0]}" for t in TARGETS])))
        print(f"\n  Loss = {final_loss:.6f}")
        print_memory(model, x, y, kept)
        print()
    print(f"{'input':>8}  {'target':>6}  {'prediction':>10}  {'error':>7}")
    for inputs, target, prediction in zip(INPUTS, targets, predictions):
        print(f"{str(inputs):>8}  {target:>6.0f}  {prediction:>10.4f}  {abs(prediction - target):>7.4f}")
    verdict = ("learned XOR:" if learned else "did NOT learn XOR: it needs") + \
        f" loss < {LEARNED_LOSS:g} and every prediction within {LEARNED_ERROR:g} of its target"
    print(f"final loss {final_loss:.6f} after {args.epochs} epochs: {verdict}")
    if args.init == "seed":
        report_seed_init(model, x, history[0], first_predictions)
    if args.html:
        tg.viz.explain_html(record, history, snapshots, path=args.html,
                            title=f"XOR, learned from this run: {settings}")
        print(f"explained page written to {args.html}")
    per_epoch = seconds / timed_epochs if timed_epochs else float("nan")
    print(f"time per epoch: {per_epoch * 1e6:.0f} µs on {device} ({timed_epochs} timed epochs in "
          f"{seconds:.3f} s, losses read back every {args.sync_every})")
    if args.plot:
        plot_losses(history, args.plot, f"XOR 2→{args.hidden}→1, lr {args.lr:g}, momentum "
                                        f"{args.momentum:g}, init {args.init}, {device}")
        print(f"loss curve written to {args.plot}")
    return {"loss": final_loss, "predictions": predictions, "learned": learned, "history": history,
            "seconds_per_epoch": per_epoch}


if __name__ == "__main__":
    main()
