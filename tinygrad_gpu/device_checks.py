"""Checks on device-resident values that never stall the device, the way CUDA device-side asserts work.

A value check (class labels in range, index arrays in bounds) on a GPU array would need a read
back to the host, which waits for the GPU and cannot be captured into a CUDA graph. Instead the
check runs on the device and records the first bad value into a small error buffer on that
device; the error is raised, as the error the immediate check would raise, at the next point where
the host reads anything (`.item()`, `.numpy()`, `tolist`, `bool`/`float`, `print`, `tg.save` /
`tg.load`, `tg.synchronize()`). Host arrays (and every CPU array) are checked at once: there is no
stall to avoid. `DEFER_ON_CPU = True` sends CPU arrays through the deferred path too, so that
path runs (and is tested) without a GPU.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from .backend import array_module, device_of

DEFER_ON_CPU = False  # tests set this to run the device path with NumPy arrays

_lock = threading.Lock()
_buffers: dict[str, Any] = {}  # device -> int64 [check id (0: no error yet), bad value's bits]
_checks: list[tuple[type, str, str]] = [(RuntimeError, "", "")]  # id -> (error class, message, kind)
_check_ids: dict[tuple, int] = {}
_armed: set[str] = set()  # devices whose buffer may hold an error not raised yet
_SYNC_MODES = {"default": 0, "warn": 1, "error": 2}
_sync_mode = 0


def set_sync_debug_mode(mode: int | str) -> None:
    """Report reads of device values back to the host (each one waits for the device): "default"
    (0) says nothing, "warn" (1) warns, "error" (2) raises RuntimeError. As PyTorch's
    torch.cuda.set_sync_debug_mode; a training step that reads nothing runs under "error"."""
    global _sync_mode
    if isinstance(mode, str) and mode in _SYNC_MODES:
        _sync_mode = _SYNC_MODES[mode]
    elif isinstance(mode, int) and not isinstance(mode, bool) and mode in (0, 1, 2):
        _sync_mode = mode
    else:
        raise ValueError(f"set_sync_debug_mode: mode must be one of 'default', 'warn', 'error' "
                         f"(or 0, 1, 2), got {mode!r}")


def get_sync_debug_mode() -> int:
    """The current sync debug mode: 0 (default), 1 (warn) or 2 (error)."""
    return _sync_mode


def host_read(what: str, array: Any) -> None:
    """Every library read of a device array back to the host passes here first: under the sync debug
    mode it warns or raises, naming `what` reads."""
    if _sync_mode and deferred(array):
        message = (f"{what} reads a {type(array).__module__.split('.')[0]} array of shape "
                   f"{getattr(array, 'shape', ())} back to the host, which waits for the device "
                   "(set_sync_debug_mode is on)")
        if _sync_mode == 2:
            raise RuntimeError(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def deferred(array: Any) -> bool:
    """Whether a check of `array` runs on its device and raises later (not at once)."""
    return DEFER_ON_CPU or type(array) is not np.ndarray


def _buffer(device: str) -> Any:
    buffer = _buffers.get(device)
    if buffer is None:  # made once and never replaced: captured graphs write to this address
        buffer = _buffers[device] = array_module(device).zeros(2, np.int64)
    return buffer


def _check_id(error: type, message: str, kind: str) -> int:
    key = (error, message, kind)
    with _lock:
        index = _check_ids.get(key)
        if index is None:
            index = _check_ids[key] = len(_checks)
            _checks.append(key)
    return index


def record_first_bad(bad: Any, values: Any, error: type, message: str) -> None:
    """On the device: if any of the mask `bad` is set and no error is recorded yet, record the
    first such element of `values`. `message` holds `{value}` where the bad value goes."""
    device = device_of(values)
    xp = array_module(device)
    kind = "f" if values.dtype.kind == "f" else "i"
    check = _check_id(error, message, kind)
    buffer = _buffer(device)
    flat_bad, flat_values = bad.reshape(-1), values.reshape(-1)
    first = xp.argmax(flat_bad)  # the first True (0 when none)
    found = flat_bad[first]
    value = flat_values[first]
    # the value's bits in an int64 slot: floats keep their exact value (NaN and inf included)
    bits = xp.asarray(value, np.float64).view(np.int64) if kind == "f" else xp.asarray(value, np.int64)
    fresh = xp.logical_and(found, buffer[0] == 0)
    buffer[1] = xp.where(fresh, bits, buffer[1])
    buffer[0] = xp.where(fresh, check, buffer[0])
    _armed.add(device)


def raise_pending() -> None:
    """Raise the first error a device-side check recorded since the last host read, if any.

    This reads the error buffers back (a synchronisation), so it runs only where the host reads
    anyway; it is cheap when no deferred check ran.
    """
    if not _armed:
        return
    for device in list(_armed):
        buffer = _buffers[device]
        check, bits = (int(v) for v in (buffer if type(buffer) is np.ndarray else buffer.get()))
        _armed.discard(device)
        if not check:
            continue
        buffer[...] = 0  # in place: captured graphs keep writing to this buffer
        error, message, kind = _checks[check]
        value = np.int64(bits).view(np.float64).item() if kind == "f" else bits
        raise error(message.format(value=_shown(value)) + " (found by a device-side check of an earlier "
                    "operation; raised at this read of results back to the host)")


def discard_pending() -> None:
    """Forget any error the device-side checks recorded and nobody read back (test isolation)."""
    for device in list(_armed):
        _buffers[device][...] = 0
    _armed.clear()


def synchronize() -> None:
    """Wait for the GPU to finish its queued work, then raise any error its device-side checks found."""
    from .backend import cuda_available, cupy_module

    if cuda_available():
        cupy_module().cuda.get_current_stream().synchronize()
    raise_pending()


def _shown(value: Any) -> Any:
    """A whole float label or index shown as the integer it stands for."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _recorded(bad: Any, array: Any, error: type, message: str) -> Any:
    record_first_bad(bad, array, error, message)
    # the step goes on until the next read: a bad value becomes 0, which indexes (and casts) safely
    return array_module(device_of(array)).where(bad, array.dtype.type(0), array)


def check_in_range(array: Any, low: int, high: int, error: type, message: str) -> Any:
    """Every element of the integer or float array lies in [low, high); else `error(message)`, with
    `{value}` in `message` replaced by the first value outside. Immediate for host arrays,
    recorded on the device (raised at the next host read) for device arrays. Returns the array,
    where a deferred check has set bad values to 0."""
    if array.size == 0:
        return array
    if deferred(array):
        bad = (array < low) | (array >= high)
        if array.dtype.kind == "f":
            bad = bad | (array != array)
        return _recorded(bad, array, error, message)
    smallest, largest = array.min(), array.max()
    value = smallest if smallest < low else largest if largest >= high else None
    if value is None and array.dtype.kind == "f" and np.isnan(array).any():
        value = np.nan
    if value is not None:
        raise error(message.format(value=_shown(value.item() if hasattr(value, "item") else value)))
    return array


def check_whole(array: Any, error: type, message: str) -> Any:
    """Every element of the float array is a finite whole number; else `error(message)` with the first
    other value as `{value}`. Immediate for host arrays, deferred for device arrays (returned with
    bad values set to 0)."""
    if array.size == 0 or array.dtype.kind != "f":
        return array
    xp = array_module(device_of(array))
    bad = ~((array == xp.round(array)) & xp.isfinite(array))
    if deferred(array):
        return _recorded(bad, array, error, message)
    if bad.any():
        raise error(message.format(value=array[bad].ravel()[0].item()))
    return array
