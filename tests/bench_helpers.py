"""What the benchmark tests share: importing the benchmark modules and a quick run's context."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmarks(*names):
    """The benchmark modules `names` (benchmarks/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(BENCHMARKS))


def quick_context(training, device, with_torch):
    """A --quick run's context on `device`, with PyTorch beside ours when asked (skips without it)."""
    torch = pytest.importorskip("torch") if with_torch else None
    torch_device = device if torch is not None and (device == "cpu" or torch.cuda.is_available()) else None
    return training.Context(device, torch, torch_device, quick=True, notes=[])
