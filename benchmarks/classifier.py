"""Classifier jobs: an MLP classifier's training step at three sizes, eager and captured.

The step is written as a user writes it, on both sides: an nn.Sequential of Linear+ReLU layers,
Adam(lr=1e-3), cross_entropy on int64 labels; opt.zero_grad, forward, loss, backward, opt.step.
Ours and PyTorch start from the same weights (ours, drawn with tg.manual_seed, copied into
PyTorch). After the warm-up steps both must hold the same parameters and have returned the same
loss from the last of them, so a fast but wrong path cannot slip into the table.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from report import Row
from timing import Timings, seconds_per_call, warm_up
from training import (
    Context,
    Impl,
    classifier_ours_training,
    classifier_torch_training,
    mismatch,
    ours_network,
    torch_network,
    warm_up_and_check,
)

import tinygrad_gpu as tg

# name -> (layer widths, batch); the last width is the number of classes
SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((64, 128, 128, 10), 64),
    "MNIST": ((784, 512, 512, 10), 128),
    "wide": ((1024, 4096, 4096, 10), 512),
}
# The wide step is ~60 GFLOP plus Adam over 21M parameters: about a second a step on one CPU
# thread, so its warm-up and repeats alone would take most of a minute. It runs on the GPU only.
CPU_SIZES = ("digits", "MNIST")
LR = 1e-3
EAGER_STEPS = 3  # warm-up steps before the agreement check
# tg.jit runs two steps eagerly, then captures the third and replays it (the CPU tape records the
# third, checks itself against eager on the fourth); PyTorch's graph takes 3 steps before capture:
# the fifth, whose loss is compared, is a replay on every side
CAPTURED_STEPS = 5
# The parameter check is Adam's (training.disagreements with the initial parameters): the difference
# in L2 norm per tensor, as a share of how far the steps moved it. Ours vs PyTorch on the CPU after 5
# steps: <= 4e-5 for digits and MNIST, ~3e-3 for wide (elements whose gradient is near Adam's eps
# move by what rounding decides); a wrong update shows as its own error in that share.
MOVE_RTOL = 2e-2
LOSS_RTOL = 1e-3  # relative difference allowed between the losses of the last warm-up step (<= 3e-5 seen)
# targets on ours / the peer's time, per device and size (none where a size is missing)
EAGER_TARGETS = {"cuda": {"digits": 0.4, "MNIST": 0.4, "wide": 0.8}, "cpu": {"MNIST": 1.0}}
CAPTURED_TARGETS: dict[str, dict[str, float]] = {"cuda": {"digits": 0.8, "MNIST": 0.8, "wide": 1.0},
                                                 "cpu": {}}
# (calls, repeats) per device and size: (quick, full)
COUNTS = {  # (calls, repeats): many short repeats, so the paired per-repeat ratios have many samples
    ("cuda", "eager"): {"digits": ((20, 3), (50, 15)), "MNIST": ((20, 3), (50, 15)),
                        "wide": ((5, 3), (10, 15))},
    ("cuda", "captured"): {"digits": ((50, 3), (100, 15)), "MNIST": ((50, 3), (100, 15)),
                           "wide": ((10, 3), (25, 15))},
    ("cpu", "eager"): {"digits": ((50, 5), (100, 15)), "MNIST": ((10, 5), (10, 21))},
    ("cpu", "captured"): {"digits": ((50, 5), (100, 15)), "MNIST": ((10, 5), (10, 21))},
}


def classifier_data(widths: tuple[int, ...], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random inputs and int64 class labels for the given widths."""
    rng = np.random.default_rng(6)
    return (rng.standard_normal((batch, widths[0]), dtype=np.float32),
            rng.integers(0, widths[-1], batch, dtype=np.int64))


def _name(size: str, kind: str) -> str:
    widths, batch = SIZES[size]
    return f"classifier {'-'.join(map(str, widths))} ({size}), batch {batch}, Adam, {kind}"


def _unit(ctx: Context, size: str) -> str:
    """Milliseconds for the steps that take them, microseconds for the others."""
    return "ms" if size == "wide" or (ctx.device == "cpu" and size == "MNIST") else "us"


def _counts(ctx: Context, kind: str, size: str) -> tuple[int, int]:
    quick, full = COUNTS[("cuda" if ctx.device == "cuda" else "cpu", kind)][size]
    return quick if ctx.quick else full


def _sizes(ctx: Context, job: str) -> tuple[str, ...]:
    if ctx.device == "cuda":
        return tuple(SIZES)
    ctx.notes.append(f"{job}: the wide size ({'-'.join(map(str, SIZES['wide'][0]))}) runs on the GPU "
                     "only (about a second a step on the CPU)")
    return CPU_SIZES


def _impls(ctx: Context, size: str, peer: str, graph: bool,
           jit: bool) -> tuple[dict[str, Impl], list[np.ndarray]]:
    """Ours (eager or through tg.jit) and, where PyTorch runs, its step as `peer`, from the same
    weights; and those initial weights."""
    widths, batch = SIZES[size]
    x, y = classifier_data(widths, batch)
    model = ours_network(widths, "linear", ctx.device)
    initial = [p.numpy() for p in model.parameters()]
    impls: dict[str, Impl] = {}
    if ctx.torch_device:
        twin = torch_network(ctx.torch, initial, "linear", ctx.torch_device)
        impls[peer] = classifier_torch_training(ctx.torch, twin, x, y, LR, ctx.torch_device, graph=graph)
    impls["ours (tg.jit)" if jit else "ours"] = classifier_ours_training(model, x, y, LR, ctx.device, jit)
    return impls, initial


def _times(ctx: Context, impls: dict[str, Impl], kind: str, size: str) -> tuple[dict[str, float], Timings]:
    """Time per step of each implementation, in the size's unit; and the timings themselves."""
    scale = 1e3 if _unit(ctx, size) == "ms" else 1e6
    times = seconds_per_call({name: impl.step for name, impl in impls.items()}, *_counts(ctx, kind, size),
                             ctx.sync)
    return {name: t * scale for name, t in times.items()}, times


def _eager_row(ctx: Context, size: str) -> Row:
    """The eager step: ours vs PyTorch eager."""
    job = _name(size, "eager")
    impls, initial = _impls(ctx, size, "torch", graph=False, jit=False)
    differ: dict[str, float] = {}
    if "torch" in impls:
        differ = warm_up_and_check(ctx, job, impls, EAGER_STEPS, "torch", initial=initial, rtol=MOVE_RTOL,
                                   loss_rtol=LOSS_RTOL)
    else:
        warm_up(impls["ours"].step, EAGER_STEPS, ctx.sync)
    figures, times = _times(ctx, impls, "eager", size)
    bound = EAGER_TARGETS[ctx.device].get(size)
    return Row(job, _unit(ctx, size), figures.pop("ours"), figures, reference="torch",
               target=("<=", bound) if bound is not None else None, problem=mismatch(differ, ("ours",)),
               paired_ratio=times.paired("ours", "torch"))


def _captured_row(ctx: Context, size: str) -> Row:
    """GPU: tg.jit's CUDA graph vs PyTorch's whole step under torch.cuda.graph (Adam capturable);
    CPU: tg.jit's replayed tape vs PyTorch's eager CPU step (PyTorch has no CPU graph)."""
    on_gpu = ctx.device == "cuda"
    job = _name(size, "captured" if on_gpu else "tg.jit (CPU tape)")
    peer = "torch graph" if on_gpu else "torch"
    impls, initial = _impls(ctx, size, peer, graph=on_gpu, jit=True)
    ours = impls["ours (tg.jit)"]
    differ: dict[str, float] = {}
    with warnings.catch_warnings():  # the reason is printed below, once
        warnings.simplefilter("ignore", tg.CaptureWarning)
        # all but the last warm-up step here: warm_up_and_check takes it and compares its loss
        warm_up(ours.step, CAPTURED_STEPS - 1, ctx.sync)
        ours.steps_taken = CAPTURED_STEPS - 1
        if peer in impls:
            differ = warm_up_and_check(ctx, job, impls, CAPTURED_STEPS, peer, initial=initial,
                                       rtol=MOVE_RTOL, loss_rtol=LOSS_RTOL)
        else:
            warm_up(ours.step, 1, ctx.sync)
    captured = "yes" if ours.wrapper.captured else f"no ({ours.wrapper.reason or 'no reason given'})"
    print(f"  {job}, tg.jit: captured: {captured}", flush=True)
    ctx.notes.append(f"{job}: tg.jit captured: {captured}")
    figures, times = _times(ctx, impls, "captured", size)
    bound = CAPTURED_TARGETS[ctx.device].get(size)
    return Row(f"{job} (captured: {'yes' if ours.wrapper.captured else 'no'})", _unit(ctx, size),
               figures.pop("ours (tg.jit)"), figures, reference=peer,
               target=("<=", bound) if bound is not None else None,
               problem=mismatch(differ, ("ours (tg.jit)",)), paired_ratio=times.paired("ours (tg.jit)", peer))


def _rows(ctx: Context, job: str, kind: str, row: Callable[[Context, str], Row]) -> list[Row]:
    """One row per size on this device; a size that raises gives an error row, not the others' loss."""
    rows = []
    for size in _sizes(ctx, job):
        try:
            rows.append(row(ctx, size))
        except Exception as exc:  # noqa: BLE001 - reported in the table and the notes
            ctx.notes.append(f"{_name(size, kind)}: failed with {type(exc).__name__}: {exc}")
            rows.append(Row(_name(size, kind), _unit(ctx, size), None, problem="error"))
    return rows


def classifier_eager(ctx: Context) -> list[Row]:
    """The MLP classifier step at each size, eager: ours vs PyTorch eager."""
    return _rows(ctx, "classifier", "eager", _eager_row)


def classifier_captured(ctx: Context) -> list[Row]:
    """The MLP classifier step at each size under tg.jit: a CUDA graph on the GPU, the tape on the CPU."""
    kind = "captured" if ctx.device == "cuda" else "tg.jit (CPU tape)"
    return _rows(ctx, "classifier-captured", kind, _captured_row)
