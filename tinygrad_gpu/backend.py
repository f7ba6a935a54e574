"""Devices: "cuda" runs on CuPy, "cpu" runs on NumPy. CuPy is imported lazily."""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

from .memory import out_of_memory

DEVICES = ("cpu", "cuda")
_INSTALL_HINT = (
    "install the CuPy extra matching your CUDA toolkit, e.g. "
    "`pip install 'tinygrad_gpu[cuda13]'` (or `[cuda12]`)"
)

_cupy: Any = None
_cupy_ndarray: Any = None  # cupy.ndarray once CuPy is in use: the fast test in device_of
_cuda_checked = False
_cuda_problem: str | None = None


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or devices were mixed."""


def _probe_cuda() -> None:
    global _cupy, _cupy_ndarray, _cuda_checked, _cuda_problem
    if _cuda_checked:
        return
    _cuda_checked = True
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        _cuda_problem = f"CuPy could not be imported ({exc.__class__.__name__}: {exc})"
        return
    try:
        available = cupy.cuda.is_available()
    except Exception as exc:
        available, _cuda_problem = False, f"CUDA could not be queried ({exc})"
    if not available:
        _cuda_problem = _cuda_problem or "CuPy imported, but it sees no CUDA GPU"
        return
    _cupy, _cupy_ndarray = cupy, cupy.ndarray


def cuda_available() -> bool:
    """True when CuPy imports and sees a CUDA GPU."""
    _probe_cuda()
    return _cupy is not None


def cupy_module() -> Any:
    """The cupy module, or a DeviceError that says why the GPU cannot be used."""
    _probe_cuda()
    if _cupy is None:
        raise DeviceError(f"device 'cuda' is not available: {_cuda_problem}; {_INSTALL_HINT}")
    return _cupy


def check_device(device: str) -> str:
    """Validate a device name ("cpu" or "cuda", "cuda:0" accepted) and return its canonical form."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    name = device.lower()
    if name in ("cuda:0", "gpu"):
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    if name == "cuda":
        cupy_module()
    return name


def default_device() -> str:
    """The device new tensors go to: $TINYGRAD_GPU_DEVICE if set, else "cuda" where usable, else "cpu"."""
    wanted = os.environ.get("TINYGRAD_GPU_DEVICE")
    if wanted:
        return check_device(wanted)
    return "cuda" if cuda_available() else "cpu"


def device_of(array: Any) -> str:
    """The device an array lives on: "cpu" for a NumPy array (or subclass), "cuda" for a CuPy array."""
    # NOTE: decided by what the array is, never by elimination: anything else is not a device array
    if type(array) is _cupy_ndarray:
        return "cuda"
    if isinstance(array, np.ndarray):
        return "cpu"
    if is_cupy_array(array):
        return "cuda"
    raise TypeError(f"{type(array).__module__}.{type(array).__name__} is neither a NumPy nor a CuPy array")


def plain_array(array: Any, what: str) -> Any:
    """A NumPy subclass as a plain ndarray in memory: np.matrix keeps its 2-D values, a memmap is read.

    A masked array is a TypeError starting with `what`: a tensor has no mask, and quietly using
    the values hidden under it would be wrong. Anything else comes back as it is.
    """
    if not isinstance(array, np.ndarray) or type(array) is np.ndarray:
        return array
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(f"{what} a masked array (a tensor has no mask); pass array.filled(value) "
                        "to choose what the masked elements become")
    return np.array(array)  # subok=False: a plain ndarray owning its values


def array_module(device: str) -> Any:
    """numpy for "cpu", cupy for "cuda"."""
    return np if device == "cpu" else cupy_module()


def is_cupy_array(obj: Any) -> bool:
    """True for a cupy.ndarray, without importing CuPy when it is not loaded."""
    return type(obj).__module__.startswith("cupy") and hasattr(obj, "__cuda_array_interface__")


def move(array: Any, device: str) -> Any:
    """The array on `device`; the same object when it is already there."""
    if device_of(array) == device:
        return array
    if device == "cpu":
        from . import device_checks  # a read back to the host: raise what the device found

        device_checks.host_read("a copy to the cpu", array)
        device_checks.raise_pending()
        return array.get()
    try:
        return cupy_module().asarray(array)
    except MemoryError as error:
        raise out_of_memory(error, "cuda", "copy to cuda", array.nbytes) from error


def loaded_library(stem: str, fallbacks: tuple[str, ...]) -> Any:
    """The shared library `stem` (e.g. "libcublas") as ctypes.CDLL: the copy this process already
    mapped (the one CuPy uses, so both share its state), else the first of `fallbacks` that loads."""
    path = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rsplit("/", 1)[-1].strip().startswith(stem + ".so"):
                    path = line[line.index("/"):].strip()
                    break
    except OSError:  # no /proc here: the library path decides
        pass
    for candidate in ([path] if path else []) + list(fallbacks):
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    raise DeviceError(f"{stem} could not be loaded (looked for the copy CuPy uses and for "
                      f"{', '.join(fallbacks)} on the library path)")
