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


class Timings(dict):
    """Seconds per call for each function (the median over repeats), with every repeat's figure
    kept in `samples` for paired comparisons."""

    def __init__(self, samples: dict[str, list[float]]) -> None:
        super().__init__((name, statistics.median(values)) for name, values in samples.items())
        self.samples = samples

    def paired(self, name: str, reference: str) -> float | None:
        """The median over repeats of name's time / reference's time within the same repeat; None
        when either was not timed. The two ran back to back in each repeat, so a slow spell of the
        machine (other load, clocks) that spans both cancels out of the ratio."""
        if name not in self.samples or reference not in self.samples:
            return None
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[reference]))


def seconds_per_call(fns: dict[str, Callable[[], Any]], calls: int, repeats: int,
                     sync: Callable[[], None]) -> Timings:
    """Median over repeats of (`calls` calls, then sync) / calls, for each function.

    The functions take turns within each repeat, so a slow drift of the machine (clocks,
    other load) shows up in all of them alike rather than in whichever ran last; ratios between
    them come from Timings.paired.
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
    return Timings(samples)


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
