"""Training-step jobs: the XOR step (eager and captured), the big MLP step, the 1000-wide layer.

Every implementation starts from the same weights (ours, drawn with tg.manual_seed, copied into
PyTorch and the hand-written code); the warm-up steps double as a check that all of them still
hold the same parameters afterwards, so a fast but wrong path cannot slip into the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from handwritten import HandNetwork, hand_layer_step
from report import Row
from timing import Timings, seconds_per_call, synchronizer, warm_up

import tinygrad_gpu as tg

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
XOR_Y = np.array([[0], [1], [1], [0]], np.float32)
XOR_WIDTHS = (2, 4, 1)
XOR_LR = 0.1
MLP_LR = 0.01
AGREEMENT_RTOL = 1e-4  # largest parameter difference allowed, relative to the largest parameter


@dataclass
class Context:
    """What every job needs: the device, PyTorch (when usable there), repeat counts, a notes list."""

    device: str
    torch: Any  # the torch module, or None
    torch_device: str | None  # where PyTorch runs for this device, or None when it cannot
    quick: bool
    notes: list[str]

    @property
    def sync(self) -> Callable[[], None]:
        """Waits for the device's queued work."""
        return synchronizer(self.device)

    @property
    def hand_name(self) -> str:
        """The hand-written baseline's name on this device."""
        return "numpy" if self.device == "cpu" else "cupy"


@dataclass
class Impl:
    """One implementation of a step, with a way to read its parameters back for the agreement check."""

    step: Callable[[], Any]
    parameters: Callable[[], list[np.ndarray]] | None = None
    steps_taken: int = 0  # steps its set-up already ran (PyTorch's graph warms up before capture)
    wrapper: Any = None  # the tg.jit object, to ask whether it captured a graph


# ---- the three implementations of an MLP training step ------------------------------------------
def ours_network(widths: tuple[int, ...], head: str, device: str, seed: int = 0) -> tg.nn.Sequential:
    """Linear/ReLU layers of the given widths (then a Sigmoid when head == "sigmoid"), seeded."""
    tg.manual_seed(seed)
    layers: list[tg.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(tg.nn.Linear(n_in, n_out, device=device))
        if i < len(widths) - 2:
            layers.append(tg.nn.ReLU())
    if head == "sigmoid":
        layers.append(tg.nn.Sigmoid())
    return tg.nn.Sequential(*layers)


def ours_training(model: tg.nn.Sequential, x: np.ndarray, y: np.ndarray, lr: float, device: str,
                  jit: bool = False) -> Impl:
    """Our library's step: zero_grad, forward, MSE, backward, SGD; through tg.jit when asked."""
    opt = tg.optim.SGD(model.parameters(), lr=lr)
    inputs, targets = tg.Tensor(x, device=device), tg.Tensor(y, device=device)
    return ours_step(model, opt, tg.nn.MSELoss(), inputs, targets, jit)


def ours_step(model: tg.nn.Module, opt: Any, loss_fn: Any, inputs: tg.Tensor, targets: tg.Tensor,
              jit: bool) -> Impl:
    """Our training step of `model` on fixed inputs, eager or through tg.jit."""

    def train_step(inputs: tg.Tensor, targets: tg.Tensor) -> tg.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        opt.step()
        return loss

    run = tg.jit(train_step) if jit else train_step
    return Impl(lambda: run(inputs, targets), lambda: [p.numpy() for p in model.parameters()],
                wrapper=run if jit else None)


def torch_network(torch: Any, initial: list[np.ndarray], head: str, device: str) -> Any:
    """The PyTorch twin of ours_network, holding the given initial parameters."""
    layers = []
    for i in range(0, len(initial), 2):
        weight, bias = initial[i], initial[i + 1]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], device=device)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        layers.append(linear)
        if i < len(initial) - 2:
            layers.append(torch.nn.ReLU())
    if head == "sigmoid":
        layers.append(torch.nn.Sigmoid())
    return torch.nn.Sequential(*layers)


def torch_training(torch: Any, initial: list[np.ndarray], head: str, x: np.ndarray, y: np.ndarray,
                   lr: float, device: str, graph: bool = False) -> Impl:
    """PyTorch's eager step, or the whole step captured with torch.cuda.graph (the documented recipe)."""
    model = torch_network(torch, initial, head, device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    inputs, targets = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return torch_step(torch, model, opt, torch.nn.MSELoss(), inputs, targets, graph)


def torch_step(torch: Any, model: Any, opt: Any, loss_fn: Any, inputs: Any, targets: Any,
               graph: bool) -> Impl:
    """A PyTorch training step of `model`, eager or captured whole as one CUDA graph."""
    parameters = lambda: [p.detach().cpu().numpy() for p in model.parameters()]

    def train_step(inputs: Any, targets: Any) -> Any:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        opt.step()
        return loss

    if not graph:
        return Impl(lambda: train_step(inputs, targets), parameters)
    # warm up on a side stream, then capture the whole step from static inputs
    static_inputs, static_targets = inputs.clone(), targets.clone()
    warmups = 3
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            train_step(static_inputs, static_targets)
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(cuda_graph):
        static_loss = loss_fn(model(static_inputs), static_targets)
        static_loss.backward()
        opt.step()

    def replay() -> Any:
        # new inputs go into the captured buffers, as tg.jit does with its arguments
        static_inputs.copy_(inputs)
        static_targets.copy_(targets)
        cuda_graph.replay()
        return static_loss  # overwritten by each replay, as tg.jit's outputs are

    return Impl(replay, parameters, steps_taken=warmups)


def classifier_ours_training(model: tg.nn.Module, x: np.ndarray, labels: np.ndarray, lr: float, device: str,
                             jit: bool = False) -> Impl:
    """Our classification step: zero_grad, forward, cross_entropy on int64 labels, backward, Adam(lr);
    through tg.jit when asked."""
    opt = tg.optim.Adam(model.parameters(), lr=lr)
    inputs = tg.Tensor(x, device=device)
    targets = tg.Tensor(np.asarray(labels, np.int64), device=device, dtype="int64")
    return ours_step(model, opt, tg.nn.functional.cross_entropy, inputs, targets, jit)


def classifier_torch_training(torch: Any, model: Any, x: np.ndarray, labels: np.ndarray, lr: float,
                              device: str, graph: bool = False) -> Impl:
    """PyTorch's twin of classifier_ours_training for `model` (already on `device`): eager, or the
    whole step as one CUDA graph with Adam(capturable=True)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=graph)
    inputs = torch.from_numpy(x).to(device)
    targets = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    return torch_step(torch, model, opt, torch.nn.functional.cross_entropy, inputs, targets, graph)


def hand_training(initial: list[np.ndarray], head: str, x: np.ndarray, y: np.ndarray, lr: float,
                  device: str) -> Impl:
    """The hand-written NumPy / CuPy step."""
    xp = np if device == "cpu" else tg.backend.cupy_module()
    network = HandNetwork(initial, x, y, lr, head, xp)
    return Impl(network.step, network.parameters)


# ---- running and checking ------------------------------------------------------------------------
def disagreements(impls: dict[str, Impl], reference: str, initial: list[np.ndarray] | None = None,
                  rtol: float = AGREEMENT_RTOL) -> dict[str, float]:
    """Implementations whose parameters differ from the reference's beyond `rtol`, and by how much.

    The difference is the largest one of any element, relative to the largest parameter; or, given
    the `initial` parameters, per tensor the L2 norm of the difference relative to how far the
    reference's steps moved that tensor, the largest over tensors. Adam at large widths needs the
    latter: it divides each gradient by its own magnitude, so an element whose gradient is near eps
    (1e-8) moves by a share of lr that rounding decides, and such elements drift apart over the
    steps though every gradient agrees to ~1e-9."""
    expected = impls[reference].parameters()
    scale = max(float(np.abs(p).max()) for p in expected)
    found = {}
    for name, impl in impls.items():
        if name == reference or impl.parameters is None:
            continue
        got = impl.parameters()
        if initial is None:
            difference = max(float(np.abs(a - b).max()) for a, b in zip(got, expected)) / scale
        else:
            difference = max(_share_of_move(a, b, start) for a, b, start in zip(got, expected, initial))
        if not difference <= rtol:  # NaN counts as a disagreement
            found[name] = difference
    return found


def _share_of_move(got: np.ndarray, expected: np.ndarray, start: np.ndarray) -> float:
    """|got - expected| / |expected - start| in L2 norm (0 where neither moved, inf where only got did)."""
    moved = float(np.linalg.norm((expected - start).astype(np.float64)))
    apart = float(np.linalg.norm((got - expected).astype(np.float64)))
    return apart / moved if moved else (0.0 if apart == 0.0 else float("inf"))


def _difference_text(difference: float, initial: list[np.ndarray] | None) -> str:
    """A difference from disagreements, said as it was measured."""
    if initial is None:
        return f"max difference {difference:.2e} of the largest parameter"
    return f"difference {difference:.2e} of how far the steps moved them, L2 norm of the worst tensor"


def loss_value(loss: Any) -> float:
    """A step's returned loss (ours or PyTorch's, on any device) as a float; NaN when it returned none."""
    return float("nan") if loss is None else float(loss.item())


def warm_up_and_check(ctx: Context, job: str, impls: dict[str, Impl], steps: int, reference: str, *,
                      initial: list[np.ndarray] | None = None, rtol: float = AGREEMENT_RTOL,
                      loss_rtol: float | None = None) -> dict[str, float]:
    """Bring every implementation to `steps` steps from the same start, then compare parameters
    (see disagreements for `initial` and `rtol`); with `loss_rtol`, also the loss each returned from
    its last warm-up step, relative to the reference's."""
    losses: dict[str, float] = {}
    for name, impl in impls.items():
        remaining = max(steps - impl.steps_taken, 0)
        if loss_rtol is None:
            warm_up(impl.step, remaining, ctx.sync)
            continue
        warm_up(impl.step, remaining - 1, ctx.sync)
        # an implementation whose set-up already took every step has no loss to show: NaN, a mismatch
        losses[name] = loss_value(impl.step()) if remaining else float("nan")
        ctx.sync()
    differ = disagreements(impls, reference, initial, rtol)
    for name, difference in differ.items():
        ctx.notes.append(f"{job}: {name} parameters differ from {reference} after {steps} steps "
                         f"({_difference_text(difference, initial)}); its time is not "
                         "comparable")
    for name, loss in losses.items():
        if name == reference:
            continue
        expected = losses[reference]
        difference = abs(loss - expected) / abs(expected) if expected else abs(loss)
        if not difference <= loss_rtol:  # NaN counts as a disagreement
            differ[name] = max(differ.get(name, 0.0), difference)
            ctx.notes.append(f"{job}: the losses at step {steps} differ: {name} {loss:.6g}, {reference} "
                             f"{expected:.6g} (relative difference {difference:.2e}); the time of {name} "
                             "is not comparable")
    return differ


def mismatch(differ: dict[str, float], names: tuple[str, ...]) -> str:
    """The row's problem text when one of `names` disagreed with the reference."""
    return "MISMATCH" if any(name in differ for name in names) else ""


# ---- jobs ----------------------------------------------------------------------------------------
def eager_step_times(ctx: Context, job: str, widths: tuple[int, ...], head: str, x: np.ndarray,
                     y: np.ndarray, lr: float, warm_up_steps: int, calls: int,
                     repeats: int) -> tuple[Timings, dict[str, float]]:
    """Seconds per eager training step of ours, PyTorch (where usable) and the hand-written code,
    from the same initial weights; and the agreement check's disagreements after warm-up."""
    model = ours_network(widths, head, ctx.device)
    initial = [p.numpy() for p in model.parameters()]
    impls = {"ours": ours_training(model, x, y, lr, ctx.device)}
    if ctx.torch_device:
        impls["torch"] = torch_training(ctx.torch, initial, head, x, y, lr, ctx.torch_device)
    impls[ctx.hand_name] = hand_training(initial, head, x, y, lr, ctx.device)
    differ = warm_up_and_check(ctx, job, impls, warm_up_steps, ctx.hand_name)
    times = seconds_per_call({name: impl.step for name, impl in impls.items()}, calls, repeats, ctx.sync)
    return times, differ


def xor_eager(ctx: Context) -> list[Row]:
    """Job 1: the XOR training step, eager, ours vs PyTorch vs hand-written."""
    calls, repeats = (50, 3) if ctx.quick else (100, 21)
    times, differ = eager_step_times(ctx, "XOR eager", XOR_WIDTHS, "sigmoid", XOR_X, XOR_Y, XOR_LR,
                                     20, calls, repeats)
    us = {name: t * 1e6 for name, t in times.items()}
    return [Row("XOR step 2-4-1, eager", "us", us.pop("ours"), us, reference="torch",
                target=("<=", 0.5), problem=mismatch(differ, ("ours", "torch")),
                paired_ratio=times.paired("ours", "torch"))]


def xor_captured(ctx: Context) -> list[Row]:
    """Job 2: the XOR step under tg.jit: on the GPU a CUDA graph against torch.cuda.graph, on the CPU
    the replayed tape against PyTorch's eager CPU step (PyTorch has no CPU graph)."""
    on_gpu = ctx.device == "cuda"
    job = "XOR step 2-4-1, captured" if on_gpu else "XOR step 2-4-1, tg.jit (CPU tape)"
    peer = "torch graph" if on_gpu else "torch"
    calls, repeats, steps = ((200, 3) if ctx.quick else (200, 21)) + (20,)
    model = ours_network(XOR_WIDTHS, "sigmoid", ctx.device)
    initial = [p.numpy() for p in model.parameters()]
    # the hand-written eager step is the reference for the agreement check only (not timed)
    impls = {ctx.hand_name: hand_training(initial, "sigmoid", XOR_X, XOR_Y, XOR_LR, ctx.device)}
    if ctx.torch_device:
        impls[peer] = torch_training(ctx.torch, initial, "sigmoid", XOR_X, XOR_Y, XOR_LR,
                                     ctx.torch_device, graph=on_gpu)
    problem = ""
    if not hasattr(tg, "jit"):
        ctx.notes.append(f"{job}: tg.jit does not exist yet; ours not measured")
    else:
        try:  # a step that cannot be captured is a result to report, not a crash
            ours = ours_training(model, XOR_X, XOR_Y, XOR_LR, ctx.device, jit=True)
            warm_up(ours.step, steps, ctx.sync)
            ours.steps_taken = steps
            impls["ours (tg.jit)"] = ours
        except Exception as exc:
            ctx.notes.append(f"{job}: tg.jit raised {type(exc).__name__}: {exc}")
            problem = "error"
        else:
            captured = getattr(ours.wrapper, "captured", True)
            reason = getattr(ours.wrapper, "reason", None) or "no reason given"
            ctx.notes.append(f"{job}: captured: " + ("yes" if captured else f"no ({reason})"))
    differ = warm_up_and_check(ctx, "XOR captured", impls, steps, ctx.hand_name)
    timed = {name: impl.step for name, impl in impls.items() if name != ctx.hand_name}
    times = seconds_per_call(timed, calls, repeats, ctx.sync)
    us = {name: t * 1e6 for name, t in times.items()}
    return [Row(job, "us", us.pop("ours (tg.jit)", None), us, reference=peer,
                target=("<=", 0.25),  # issue 14: captured XOR at most a quarter of the peer
                problem=problem or mismatch(differ, ("ours (tg.jit)", peer)),
                paired_ratio=times.paired("ours (tg.jit)", peer))]


def mlp_step(ctx: Context, widths: tuple[int, ...], batch: int) -> list[Row]:
    """Job 3: a big MLP training step (fp32, TF32 off), ours vs PyTorch vs hand-written."""
    calls, repeats = (2, 3) if ctx.quick else (10, 5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, widths[0]), dtype=np.float32)
    y = rng.standard_normal((batch, widths[-1]), dtype=np.float32)
    times, differ = eager_step_times(ctx, "MLP", widths, "linear", x, y, MLP_LR, 3, calls, repeats)
    # forward 2·B·in·out per layer, the same again for each weight gradient and each input
    # gradient (none for the first layer: the data needs no gradient)
    products = [n_in * n_out for n_in, n_out in zip(widths, widths[1:])]
    flops = 2 * batch * (3 * sum(products) - products[0])
    tflops = ", ".join(f"{name} {flops / t / 1e12:.3g}" for name, t in times.items())
    ctx.notes.append(f"MLP: TFLOP/s achieved: {tflops}")
    ms = {name: t * 1e3 for name, t in times.items()}
    name = f"MLP step {'-'.join(map(str, widths))}, batch {batch}"
    return [Row(name, "ms", ms.pop("ours"), ms, reference="torch",
                target=("<=", 1.05) if ctx.device == "cuda" else None,
                problem=mismatch(differ, ("ours", "torch")), paired_ratio=times.paired("ours", "torch"))]


def _layer_times(ctx: Context, device: str, torch_device: str | None, calls: int,
                 repeats: int) -> dict[str, float]:
    """Seconds per forward+backward of a 1000-wide Linear layer on a batch of 1000, per implementation."""
    width = batch = 1000
    rng = np.random.default_rng(2)
    host_x = rng.standard_normal((batch, width), dtype=np.float32)
    host_grad = np.ones((batch, width), np.float32)
    tg.manual_seed(0)
    layer = tg.nn.Linear(width, width, device=device)
    x, grad = tg.Tensor(host_x, device=device), tg.Tensor(host_grad, device=device)

    def ours() -> None:
        layer.zero_grad()
        layer(x).backward(grad)

    fns: dict[str, Callable[[], Any]] = {"ours": ours}
    weight, bias = layer.weight.numpy(), layer.bias.numpy()
    if torch_device:
        torch = ctx.torch
        torch_layer = torch.nn.Linear(width, width, device=torch_device)
        with torch.no_grad():
            torch_layer.weight.copy_(torch.from_numpy(weight))
            torch_layer.bias.copy_(torch.from_numpy(bias))
        torch_x = torch.from_numpy(host_x).to(torch_device)
        torch_grad = torch.from_numpy(host_grad).to(torch_device)

        def torch_step() -> None:
            torch_layer.zero_grad(set_to_none=True)
            torch_layer(torch_x).backward(torch_grad)

        fns["torch"] = torch_step
    xp = np if device == "cpu" else tg.backend.cupy_module()
    fns["numpy" if device == "cpu" else "cupy"] = hand_layer_step(xp, weight, bias, host_x, host_grad)
    sync = synchronizer(device)
    for fn in fns.values():
        warm_up(fn, 2, sync)
    return seconds_per_call(fns, calls, repeats, sync)


def wide_layer(ctx: Context) -> list[Row]:
    """Job 5: the seed guide's "1000-neuron network" claim: a 1000-wide layer on CPU vs GPU."""
    threads = ctx.torch.get_num_threads() if ctx.torch else None
    cpu_label = f"CPU, {threads} thread(s)" if threads else "CPU"
    cpu = _layer_times(ctx, "cpu", "cpu" if ctx.torch else None, *((2, 3) if ctx.quick else (3, 5)))
    ms = {name: t * 1e3 for name, t in cpu.items()}
    rows = [Row(f"1000-wide layer fwd+bwd, {cpu_label}", "ms", ms.pop("ours"), ms, reference="torch")]
    if not tg.cuda_available():
        ctx.notes.append("1000-wide layer: no GPU here, so only the CPU half and no speedup")
        return rows
    torch_gpu = "cuda" if ctx.torch is not None and ctx.torch.cuda.is_available() else None
    gpu = _layer_times(ctx, "cuda", torch_gpu, *((10, 3) if ctx.quick else (20, 5)))
    ms = {name: t * 1e3 for name, t in gpu.items()}
    rows.append(Row("1000-wide layer fwd+bwd, GPU", "ms", ms.pop("ours"), ms, reference="torch"))
    speedups = {name: cpu[name] / gpu[name] for name in gpu if name in cpu}
    speedups["hand-written"] = cpu["numpy"] / gpu["cupy"]
    speedups["seed claim"] = 100.0
    rows.append(Row("1000-wide layer, GPU speedup over CPU", "x", speedups.pop("ours"), speedups,
                    reference="seed claim", target=(">=", 1.0)))
    ctx.notes.append("1000-wide layer: the seed guide claims ~100 ms on CPU vs ~1 ms on GPU, a 100x speedup")
    return rows
