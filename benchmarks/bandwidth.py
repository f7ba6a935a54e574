"""Job 4: memory bandwidth of one elementwise op (ReLU) and one reduction (sum) over a large array.

ReLU moves 8 bytes per float32 element (read + write), sum 4 (read); a device-to-device copy,
which moves 8, is the yardstick: the targets ask for at least 90% of its speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from report import Row
from timing import gpu_seconds_per_call, seconds_per_call, synchronizer, warm_up
from training import Context

import tinygrad_gpu as tg


def _gpu_seconds(ctx: Context, elements: int, calls: int, repeats: int) -> tuple[dict, dict]:
    """Seconds per call of each ReLU and each sum implementation on the GPU, from CUDA events."""
    cp = tg.backend.cupy_module()
    x = cp.random.standard_normal(elements, dtype=cp.float32)
    out = cp.empty_like(x)
    ours = tg.Tensor(x)  # shares x's memory
    plain_relu = cp.ElementwiseKernel("T x", "T y", "y = x > (T)0 ? x : (T)0", "plain_relu")
    plain_sum = cp.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0", "plain_sum")
    relu: dict[str, tuple[Callable[[], Any], str]] = {"ours": (ours.relu, "cupy")}
    total: dict[str, tuple[Callable[[], Any], str]] = {"ours": (ours.sum, "cupy")}
    if ctx.torch_device:
        torch = ctx.torch
        torch_x = torch.randn(elements, device=ctx.torch_device)
        relu["torch"] = (lambda: torch.relu(torch_x), "torch")
        total["torch"] = (lambda: torch.sum(torch_x), "torch")
    relu["elementwise kernel"] = (lambda: plain_relu(x, out), "cupy")
    relu["copy"] = (lambda: cp.copyto(out, x), "cupy")  # contiguous, same dtype: cudaMemcpyAsync
    total["cupy.sum"] = (x.sum, "cupy")
    total["reduction kernel"] = (lambda: plain_sum(x), "cupy")
    sync = synchronizer("cuda")
    for fn, _ in [*relu.values(), *total.values()]:
        warm_up(fn, 3, sync)  # compiles kernels, fills the memory pools
    return gpu_seconds_per_call(relu, calls, repeats), gpu_seconds_per_call(total, calls, repeats)


def _release_gpu_memory(ctx: Context) -> None:
    """Hand the pools' cached blocks back to the driver (the arrays died with _gpu_seconds' frame)."""
    tg.backend.cupy_module().get_default_memory_pool().free_all_blocks()
    if ctx.torch_device:
        ctx.torch.cuda.empty_cache()


def _cpu_seconds(ctx: Context, elements: int, calls: int, repeats: int) -> tuple[dict, dict]:
    """Seconds per call of each ReLU and each sum implementation on the CPU, by wall clock."""
    x = np.random.default_rng(3).standard_normal(elements, dtype=np.float32)
    out = np.empty_like(x)
    ours = tg.Tensor(x, device="cpu")  # shares x's memory
    relu: dict[str, Callable[[], Any]] = {"ours": ours.relu}
    total: dict[str, Callable[[], Any]] = {"ours": ours.sum}
    if ctx.torch_device:
        torch_x = ctx.torch.from_numpy(x)
        relu["torch"] = lambda: ctx.torch.relu(torch_x)
        total["torch"] = lambda: ctx.torch.sum(torch_x)
    relu["numpy"] = lambda: np.maximum(x, 0, out=out)
    relu["copy"] = lambda: np.copyto(out, x)
    total["numpy"] = x.sum
    sync = synchronizer("cpu")
    for fn in [*relu.values(), *total.values()]:
        warm_up(fn, 2, sync)
    return seconds_per_call(relu, calls, repeats, sync), seconds_per_call(total, calls, repeats, sync)


def bandwidth(ctx: Context, elements: int) -> list[Row]:
    """ReLU (bytes read + written) and sum (bytes read), ours vs peers, as a share of copy speed."""
    if ctx.device == "cuda":
        relu, total = _gpu_seconds(ctx, elements, *((10, 3) if ctx.quick else (20, 7)))
        _release_gpu_memory(ctx)
        unit, scale = "TB/s", 1e12
    else:
        relu, total = _cpu_seconds(ctx, elements, *((3, 3) if ctx.quick else (5, 5)))
        unit, scale = "GB/s", 1e9
    nbytes = 4 * elements
    relu_rate = {name: 2 * nbytes / t / scale for name, t in relu.items()}
    sum_rate = {name: nbytes / t / scale for name, t in total.items()}
    sum_rate["copy"] = relu_rate["copy"]
    target = (">=", 90.0) if ctx.device == "cuda" else None
    size = f"{elements / 2**20:g}M" if elements % 2**20 == 0 else f"{elements:,}"
    return [
        Row(f"ReLU over {size} float32 (read+write)", unit, relu_rate.pop("ours"), relu_rate,
            reference="copy", ratio_kind="percent", target=target),
        Row(f"sum over {size} float32 (read)", unit, sum_rate.pop("ours"), sum_rate,
            reference="copy", ratio_kind="percent", target=target),
    ]


# ---- reductions over one axis and layer norm, as a share of copy speed --------------------------
ROW = 1024  # the length of the reduced axis (a transformer's hidden size)


def _reduction_cases(ctx: Context, elements: int) -> tuple[dict, dict[str, int]]:
    """case -> {implementation: function returning its result}, and the bytes each case must move.

    Every case reads the whole array once; layer norm also writes an array of the same size.
    """
    rows = elements // ROW
    if ctx.device == "cuda":
        xp = tg.backend.cupy_module()
        x = xp.random.standard_normal((rows, ROW), dtype=xp.float32)
    else:
        xp = np
        x = np.random.default_rng(3).standard_normal((rows, ROW), dtype=np.float32)
    columns = x.reshape(ROW, rows)  # the same memory seen as (1024, rows): reduce over the first axis
    # on the given device, sharing x's memory (a NumPy array would otherwise go to the default device)
    ours, ours_columns = tg.Tensor(x, device=ctx.device), tg.Tensor(columns, device=ctx.device)
    own = "cupy" if ctx.device == "cuda" else "numpy"
    cases: dict[str, dict[str, Callable[[], Any]]] = {
        f"max over the last axis of {rows}x{ROW}": {"ours": lambda: ours.max(axis=-1),
                                                   own: lambda: x.max(axis=-1)},
        f"max over the first axis of {ROW}x{rows}": {"ours": lambda: ours_columns.max(axis=0),
                                                    own: lambda: columns.max(axis=0)},
        f"mean over the last axis of {rows}x{ROW}": {"ours": lambda: ours.mean(axis=-1),
                                                    own: lambda: x.mean(axis=-1)},
        f"layer_norm over the last axis of {rows}x{ROW}": {
            "ours": lambda: tg.nn.functional.layer_norm(ours, ROW)},
    }
    if ctx.torch_device:
        torch = ctx.torch
        torch_x = torch.from_dlpack(x) if ctx.device == "cuda" else torch.from_numpy(x)  # shares memory
        torch_columns = torch_x.reshape(ROW, rows)
        functions = (lambda: torch.amax(torch_x, dim=-1), lambda: torch.amax(torch_columns, dim=0),
                     lambda: torch.mean(torch_x, dim=-1),
                     lambda: torch.nn.functional.layer_norm(torch_x, (ROW,)))
        for implementations, fn in zip(cases.values(), functions):
            implementations["torch"] = fn
    out = xp.empty_like(x)
    copy = (lambda: xp.copyto(out, x))
    nbytes = {name: 4 * elements * (2 if name.startswith("layer_norm") else 1) for name in cases}
    return {name: {**impls, "copy": copy} for name, impls in cases.items()}, nbytes


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, tg.Tensor):
        return value.numpy()
    if hasattr(value, "detach"):  # a PyTorch tensor
        return value.detach().cpu().numpy()
    return value.get() if hasattr(value, "get") else np.asarray(value)  # CuPy or NumPy


def reductions(ctx: Context, elements: int) -> list[Row]:
    """Max and mean over one axis and layer norm, ours vs PyTorch, as bytes moved per second vs copy."""
    elements -= elements % ROW
    cases, nbytes = _reduction_cases(ctx, elements)
    if ctx.device == "cuda":
        calls, repeats = (10, 3) if ctx.quick else (20, 7)
        unit, scale = "TB/s", 1e12
    else:
        calls, repeats = (3, 3) if ctx.quick else (5, 5)
        unit, scale = "GB/s", 1e9
    sync = synchronizer(ctx.device)
    rows = []
    for name, impls in cases.items():
        for fn in impls.values():
            warm_up(fn, 2, sync)  # compiles kernels, fills the pools
        results = {impl: _as_numpy(fn()) for impl, fn in impls.items() if impl != "copy"}
        expected = results.get("torch", results.get("cupy", results.get("numpy")))
        problem = ""
        if expected is None:
            ctx.notes.append(f"{name}: nothing to compare ours with")
        else:
            magnitude = max(float(np.abs(expected).max()), 1.0)
            difference = float(np.abs(results["ours"] - expected).max()) / magnitude
            if not difference <= 1e-4:
                problem = "MISMATCH"
                ctx.notes.append(f"{name}: ours differs from the reference by {difference:.2e}")
        del results
        if ctx.device == "cuda":
            # CUDA events from the library that launches the work, on its stream
            timed = {impl: (fn, "torch" if impl == "torch" else "cupy") for impl, fn in impls.items()}
            seconds = gpu_seconds_per_call(timed, calls, repeats)
        else:
            seconds = seconds_per_call(impls, calls, repeats, sync)
        rate = {impl: nbytes[name] / t / scale for impl, t in seconds.items()}
        rate["copy"] = 8 * elements / seconds["copy"] / scale  # a copy reads and writes every element
        rows.append(Row(f"{name} float32", unit, rate.pop("ours"), rate, reference="copy",
                        ratio_kind="percent", target=(">=", 80.0) if ctx.device == "cuda" else None,
                        problem=problem))
    if ctx.device == "cuda":
        _release_gpu_memory(ctx)
    ctx.notes.append("reductions: bytes moved are the input read once (layer_norm: read once and written "
                     "once), whatever the implementation does internally")
    return rows
