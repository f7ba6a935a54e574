"""Kernel launches with little host work: the driver's launch, its arguments packed into a kept buffer.

A CuPy RawKernel call spends several microseconds of host time per launch (argument objects,
device queries, allocations) and a training step launches dozens of kernels, so on small networks
the host, not the GPU, sets the pace. `Prepared` wraps a compiled kernel and launches it through
cuLaunchKernel: the argument values go into a buffer kept per argument layout, by one
struct.pack_into, and the driver reads them through a pointer array made once for that buffer. The
driver copies the values at launch, so the buffer is free again when the call returns (one buffer
set per thread).
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import cupy_module

_SLOT = 8  # bytes per argument: every kernel parameter here is at most 8 bytes wide
_INTEGER_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
_UNSIGNED_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class _Local(threading.local):
    def __init__(self) -> None:
        self.layouts: dict[tuple, tuple] = {}  # argument types -> (struct, pointer kinds, buffers)
        self.devices: set[int] = set()  # devices whose context this thread has made current


_local = _Local()


def _code(kind: type, array_type: type) -> tuple[str, bool]:
    """(the struct code of an argument of this type in its 8-byte slot, whether it is an array)."""
    if issubclass(kind, array_type):
        return "Q", True
    if kind is bool or issubclass(kind, np.bool_):
        return "?7x", False
    if kind is int:  # as CuPy passes a Python int: 64 bits
        return "q", False
    if kind is float:
        return "d", False
    if issubclass(kind, np.generic):
        dtype = np.dtype(kind)
        table = {"i": _INTEGER_CODES, "u": _UNSIGNED_CODES, "f": {4: "f", 8: "d"}}.get(dtype.kind)
        if table is not None and dtype.itemsize in table:
            return table[dtype.itemsize] + "x" * (_SLOT - dtype.itemsize), False
    raise TypeError(f"a kernel argument of type {kind.__name__} cannot be passed to a prepared launch")


def _layout(kinds: tuple) -> tuple:
    """The packer, which arguments are arrays, the value buffer, the driver's pointer array (held
    here so that its address stays valid) and that address."""
    array_type = cupy_module().ndarray
    codes, arrays = zip(*(_code(kind, array_type) for kind in kinds)) if kinds else ((), ())
    packer = struct.Struct("<" + "".join(codes))
    values = ctypes.create_string_buffer(max(packer.size, _SLOT))
    base = ctypes.addressof(values)
    pointers = (ctypes.c_void_p * max(len(kinds), 1))(*[base + _SLOT * i for i in range(len(kinds))])
    return packer, arrays, values, pointers, ctypes.addressof(pointers)


class Prepared:
    """A compiled kernel called as a RawKernel is, `kernel(grid, block, args, shared_mem=0)`, but
    launched through the driver with pre-packed arguments (arrays, NumPy scalars, Python numbers)."""

    __slots__ = ("_function_of", "_functions", "name")

    def __init__(self, function_of: Callable[[], Any], name: str) -> None:
        # function_of() gives the cupy Function for the current device (compiling or loading once)
        self._function_of = function_of
        self._functions: dict[int, Any] = {}  # device -> its cupy Function (kept: it holds the module)
        self.name = name

    @classmethod
    def kernel(cls, source: str, name: str, **options: Any) -> Prepared:
        """A RawKernel of `source`'s function `name`, prepared (compiled on first launch per device)."""
        raw = cupy_module().RawKernel(source, name, **options)
        return cls(lambda: raw.kernel, name)

    @classmethod
    def from_module(cls, module: Any, name: str) -> Prepared:
        """The function `name` of a RawModule, prepared."""
        return cls(lambda: module.get_function(name).kernel, name)

    def __call__(self, grid: tuple | int, block: tuple | int, args: tuple, shared_mem: int = 0) -> None:
        api = _api or _load_api()
        device = api[0]()
        local = _local
        if device not in local.devices:
            # the driver's launch needs the device's context current in this thread, which the
            # runtime (CuPy's other calls) makes only on first use: make it so now
            api[3](device)
            local.devices.add(device)
        function = self._functions.get(device)
        if function is None:
            function = self._functions[device] = self._function_of()
        kinds = tuple(map(type, args))
        layout = local.layouts.get(kinds)
        if layout is None:
            layout = local.layouts[kinds] = _layout(kinds)
        packer, arrays, values, _, address = layout
        packer.pack_into(values, 0, *[a.data.ptr if is_array else a for a, is_array in zip(args, arrays)])
        if type(grid) is tuple and len(grid) == 1 and type(block) is tuple and len(block) == 1:
            (gx,), gy, gz, (bx,), by, bz = grid, 1, 1, block, 1, 1  # the common 1-D launch
        else:
            (gx, gy, gz), (bx, by, bz) = _dims(grid), _dims(block)
        api[1](function.ptr, gx, gy, gz, bx, by, bz, shared_mem, api[2]().ptr, address, 0)


def _dims(size: tuple | int) -> tuple[int, int, int]:
    """A grid or block size as its three dimensions."""
    if type(size) is int:
        return size, 1, 1
    size = tuple(size)
    return size + (1,) * (3 - len(size))


_api: tuple | None = None  # (current device id, the driver's launch, the current stream, set device)


def _load_api() -> tuple:
    global _api
    cp = cupy_module()
    from cupy_backends.cuda.api import driver

    _api = (cp.cuda.runtime.getDevice, driver.launchKernel, cp.cuda.get_current_stream,
            cp.cuda.runtime.setDevice)
    return _api
