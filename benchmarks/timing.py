"""Timers: wall clock around N calls plus a device sync for steps, CUDA events for kernels."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits until all work queued on `device` has finished."""
    if device == "cpu":
        return lambda: None
    import cupy

    # device-wide, so it also waits for PyTorch's streams and any stream a captured graph uses
    return cupy.cuda.runtime.deviceSynchronize


def warm_up(fn: Callable[[], Any], calls: int, sync: Callable[[], None]) -> None:
    """Run fn a few times (CuPy compiles kernels and pools fill on first use), then sync."""
    for _ in range(calls):
        fn()
    sync()


def seconds_per_call(fns: dict[str, Callable[[], Any]], calls: int, repeats: int,
                     sync: Callable[[], None]) -> dict[str, float]:
    """Median over repeats of (`calls` calls, then sync) / calls, for each function.

    The functions take turns within each repeat, so a slow drift of the machine (clocks,
    other load) shows up in all of them alike rather than in whichever ran last.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def _event_pair(library: str) -> tuple[Any, Any, Callable[[], float]]:
    """Start and stop CUDA events of `library` ("cupy" or "torch") and a reader of seconds between them."""
    if library == "torch":
        import torch

        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        return start, stop, lambda: start.elapsed_time(stop) / 1e3
    import cupy

    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    return start, stop, lambda: cupy.cuda.get_elapsed_time(start, stop) / 1e3


def gpu_seconds_per_call(fns: dict[str, tuple[Callable[[], Any], str]], calls: int,
                         repeats: int) -> dict[str, float]:
    """Median over repeats of GPU time per call, between CUDA events around `calls` calls.

    Each entry is (function, library): events come from the library that launches the work, so
    they sit on the stream that work runs on.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, library) in fns.items():
            start, stop, elapsed = _event_pair(library)
            start.record()
            for _ in range(calls):
                fn()
            stop.record()
            stop.synchronize()
            samples[name].append(elapsed() / calls)
    return {name: statistics.median(values) for name, values in samples.items()}
