"""CNN jobs: one 3x3 conv layer forward+backward, and a LeNet-size training step (eager and captured).

Ours and PyTorch start from the same weights (ours, drawn with tg.manual_seed, copied into
PyTorch). The conv job compares the output and every gradient; the LeNet jobs compare the
parameters after the warm-up steps, so a fast but wrong path cannot slip into the table.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from report import Row
from timing import seconds_per_call, warm_up
from training import (
    Context,
    Impl,
    classifier_ours_training,
    classifier_torch_training,
    mismatch,
    warm_up_and_check,
)

import tinygrad_gpu as tg

CONV_SHAPE = (64, 64, 32, 32)  # batch, channels in = out, height, width
CONV_RTOL = 1e-4  # largest difference allowed, relative to the largest magnitude of each result
LENET_BATCH = 128
LENET_LR = 1e-3


# ---- one 3x3 convolution layer, forward and backward --------------------------------------------
def _conv_implementations(ctx: Context) -> dict[str, tuple[Callable[[], None], Callable[[], list]]]:
    """name -> (forward+backward of a 3x3 conv 64->64 with padding 1, a reader of out, dx, dw, db)."""
    n, c, h, w = CONV_SHAPE
    rng = np.random.default_rng(4)
    host_x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    host_grad = rng.standard_normal((n, c, h, w), dtype=np.float32)
    tg.manual_seed(0)
    layer = tg.nn.Conv2d(c, c, 3, padding=1, device=ctx.device)
    x = tg.Tensor(host_x, device=ctx.device, requires_grad=True)
    grad = tg.Tensor(host_grad, device=ctx.device)
    ours_out: list = []

    def ours() -> None:
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        out.backward(grad)
        ours_out[:] = [out]

    impls = {"ours": (ours, lambda: [ours_out[0].numpy(), x.grad.numpy(), layer.weight.grad.numpy(),
                                     layer.bias.grad.numpy()])}
    if ctx.torch_device:
        torch = ctx.torch
        torch_layer = torch.nn.Conv2d(c, c, 3, padding=1, device=ctx.torch_device)
        with torch.no_grad():
            torch_layer.weight.copy_(torch.from_numpy(layer.weight.numpy()))
            torch_layer.bias.copy_(torch.from_numpy(layer.bias.numpy()))
        torch_x = torch.from_numpy(host_x).to(ctx.torch_device).requires_grad_()
        torch_grad = torch.from_numpy(host_grad).to(ctx.torch_device)
        torch_out: list = []

        def torch_step() -> None:
            torch_layer.zero_grad(set_to_none=True)
            torch_x.grad = None
            out = torch_layer(torch_x)
            out.backward(torch_grad)
            torch_out[:] = [out]

        impls["torch"] = (torch_step, lambda: [t.detach().cpu().numpy() for t in
                                               (torch_out[0], torch_x.grad, torch_layer.weight.grad,
                                                torch_layer.bias.grad)])
    return impls


def conv_layer(ctx: Context) -> list[Row]:
    """A 3x3 conv 64->64 on 64 images of 32x32, fp32 (TF32 off on both sides), forward+backward."""
    n, c, h, w = CONV_SHAPE
    job = f"conv 3x3 {c}->{c}, {h}x{w}, batch {n}, fwd+bwd"
    # a ~1 ms step: three calls would leave the first call's host time showing
    calls, repeats = ((10, 3) if ctx.quick else (20, 7)) if ctx.device == "cuda" else \
        ((1, 3) if ctx.quick else (2, 5))
    impls = _conv_implementations(ctx)
    for step, _ in impls.values():
        warm_up(step, 2, ctx.sync)  # compiles kernels, fills the pools, picks cuDNN's algorithms
    problem = ""
    if "torch" in impls:
        results = {name: read() for name, (_, read) in impls.items()}
        for label, ours, theirs in zip(("output", "input grad", "weight grad", "bias grad"),
                                       results["ours"], results["torch"]):
            difference = float(np.abs(ours - theirs).max()) / float(np.abs(theirs).max())
            if not difference <= CONV_RTOL:
                problem = "MISMATCH"
                ctx.notes.append(f"{job}: ours and torch differ in the {label} by {difference:.2e} of its "
                                 "largest magnitude; the time is not comparable")
    else:
        ctx.notes.append(f"{job}: no PyTorch to compare results with")
    times = seconds_per_call({name: step for name, (step, _) in impls.items()}, calls, repeats, ctx.sync)
    # forward, input gradient and weight gradient are one (C_out x C_in*9) x (C_in*9 x N*H*W) product each
    flops = 3 * 2 * c * c * 9 * n * h * w
    ctx.notes.append(f"{job}: TFLOP/s achieved: "
                     + ", ".join(f"{name} {flops / t / 1e12:.3g}" for name, t in times.items()))
    ms = {name: t * 1e3 for name, t in times.items()}
    return [Row(job, "ms", ms.pop("ours"), ms, reference="torch",
                target=("<=", 0.8) if ctx.device == "cuda" else None, problem=problem,
                paired_ratio=times.paired("ours", "torch"))]


# ---- the LeNet-size training step ----------------------------------------------------------------
def lenet_ours(device: str) -> tg.nn.Sequential:
    """conv(1->6, 5)-ReLU-maxpool2, conv(6->16, 5)-ReLU-maxpool2, flatten, linear 400->120-ReLU->10."""
    nn = tg.nn
    tg.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 5, device=device), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5, device=device), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(400, 120, device=device), nn.ReLU(),
                         nn.Linear(120, 10, device=device))


def lenet_torch(torch: Any, initial: list[np.ndarray], device: str) -> Any:
    """PyTorch's twin of lenet_ours, holding the given initial parameters."""
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 10))
    with torch.no_grad():
        for parameter, value in zip(model.parameters(), initial, strict=True):
            parameter.copy_(torch.from_numpy(value))
    return model.to(device)


def lenet_data() -> tuple[np.ndarray, np.ndarray]:
    """A batch of 128 random 1x32x32 images and labels."""
    rng = np.random.default_rng(5)
    return (rng.standard_normal((LENET_BATCH, 1, 32, 32), dtype=np.float32),
            rng.integers(0, 10, LENET_BATCH))


def lenet_ours_training(model: tg.nn.Sequential, device: str, jit: bool = False) -> Impl:
    """Our step: zero_grad, forward, cross-entropy, backward, Adam; through tg.jit when asked."""
    return classifier_ours_training(model, *lenet_data(), LENET_LR, device, jit)


def lenet_torch_training(torch: Any, initial: list[np.ndarray], device: str, graph: bool = False) -> Impl:
    """PyTorch's eager step, or the whole step as one CUDA graph with Adam(capturable=True)."""
    return classifier_torch_training(torch, lenet_torch(torch, initial, device), *lenet_data(), LENET_LR,
                                     device, graph)


def _lenet_name(kind: str) -> str:
    return f"LeNet step, batch {LENET_BATCH}, Adam, {kind}"


def lenet_eager(ctx: Context) -> list[Row]:
    """The LeNet-size training step, eager: ours vs PyTorch eager."""
    job = _lenet_name("eager")
    calls, repeats = ((5, 3) if ctx.quick else (20, 7)) if ctx.device == "cuda" else \
        ((2, 3) if ctx.quick else (5, 5))
    model = lenet_ours(ctx.device)
    initial = [p.numpy() for p in model.parameters()]
    impls = {"ours": lenet_ours_training(model, ctx.device)}
    differ: dict[str, float] = {}
    if ctx.torch_device:
        impls["torch"] = lenet_torch_training(ctx.torch, initial, ctx.torch_device)
        differ = warm_up_and_check(ctx, job, impls, 3, "torch")
    else:
        warm_up(impls["ours"].step, 3, ctx.sync)
    times = seconds_per_call({name: impl.step for name, impl in impls.items()}, calls, repeats, ctx.sync)
    ms = {name: t * 1e3 for name, t in times.items()}
    return [Row(job, "ms", ms.pop("ours"), ms, reference="torch",
                target=("<=", 0.6) if ctx.device == "cuda" else None, problem=mismatch(differ, ("ours",)),
                paired_ratio=times.paired("ours", "torch"))]


def lenet_captured(ctx: Context) -> list[Row]:
    """The LeNet-size step as one CUDA graph: tg.jit vs PyTorch's captured step (GPU only)."""
    job = _lenet_name("captured")
    if ctx.device != "cuda":
        ctx.notes.append(f"{job}: CUDA graphs exist on the GPU only; not measured on {ctx.device}")
        return []
    calls, repeats, steps = ((20, 3) if ctx.quick else (100, 7)) + (5,)
    model = lenet_ours(ctx.device)
    initial = [p.numpy() for p in model.parameters()]
    impls: dict[str, Impl] = {}
    if ctx.torch_device:
        impls["torch graph"] = lenet_torch_training(ctx.torch, initial, ctx.torch_device, graph=True)
    ours = lenet_ours_training(model, ctx.device, jit=True)
    with warnings.catch_warnings():  # the reason is printed below, once
        warnings.simplefilter("ignore", tg.CaptureWarning)
        warm_up(ours.step, steps, ctx.sync)
    ours.steps_taken = steps
    impls["ours (tg.jit)"] = ours
    captured = "yes" if ours.wrapper.captured else f"no ({ours.wrapper.reason or 'no reason given'})"
    print(f"  {job}, tg.jit: captured: {captured}", flush=True)
    ctx.notes.append(f"{job}: tg.jit captured: {captured}")
    differ: dict[str, float] = {}
    if "torch graph" in impls:
        differ = warm_up_and_check(ctx, job, impls, steps, "torch graph")
    times = seconds_per_call({n: i.step for n, i in impls.items()}, calls, repeats, ctx.sync)
    us = {name: t * 1e6 for name, t in times.items()}
    return [Row(f"{job} (captured: {'yes' if ours.wrapper.captured else 'no'})", "us",
                us.pop("ours (tg.jit)"), us, reference="torch graph", target=("<=", 1.0),
                problem=mismatch(differ, ("ours (tg.jit)",)),
                paired_ratio=times.paired("ours (tg.jit)", "torch graph"))]
