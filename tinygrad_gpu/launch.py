"""Kernel launches with little host work: the driver's launch, its arguments packed into a kept buffer.

A CuPy RawKernel call spends several microseconds of host time per launch (argument objects,
device queries, allocations) and a training step launches dozens of kernels, so on small networks
the host, not the GPU, sets the pace. `Prepared` wraps a compiled kernel and launches it through
cuLaunchKernel: the argument values go into a buffer kept per argument layout, by one
struct.pack_into, and the driver reads them through a pointer array made once for that buffer. The
driver copies the values at launch, so the buffer is free again when the call returns (one buffer
set per thread).

Inside a CUDA graph being captured, each prepared kernel is launched with programmatic dependent
launch (Hopper and later): the next kernel's blocks are scheduled while the one before finishes,
which shortens the time between two small dependent kernels. Every prepared kernel
is compiled to begin by waiting for the grid it follows (`griddepcontrol.wait`, a no-op when it
was launched the ordinary way), so it reads nothing its predecessor has not finished writing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import re
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .backend import cupy_module

_SLOT = 8  # bytes per argument: every kernel parameter here is at most 8 bytes wide
_INTEGER_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
_UNSIGNED_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


# The first statement of every prepared kernel: wait until the grid this one follows has finished
# and its writes are visible, then let the grid after this one be scheduled (both no-ops before sm_90
# and when the launch was an ordinary one, which starts only after its predecessor finished)
AWAIT_PREVIOUS = r"""
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define TG_AWAIT_PREVIOUS() asm volatile("griddepcontrol.wait;" ::: "memory"); \
                            asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define TG_AWAIT_PREVIOUS()
#endif
"""


def awaiting(source: str, names: tuple[str, ...]) -> tuple[str, bool]:
    """`source` with TG_AWAIT_PREVIOUS() as the first statement of each kernel in `names`, and
    whether every one of them was found (a kernel not found is launched the ordinary way)."""
    found = True
    for name in names:
        start = re.search(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?" + re.escape(name)
                          + r"\s*\(", source)
        if start is None:
            found = False
            continue
        brace = source.index("{", start.end()) + 1
        source = source[:brace] + " TG_AWAIT_PREVIOUS();" + source[brace:]
    return AWAIT_PREVIOUS + source, found


class _Chaining(threading.local):
    active = False  # True while this thread captures a graph: prepared launches chain


_chaining = _Chaining()


@contextlib.contextmanager
def chained_launches() -> Iterator[None]:
    """Within: this thread's prepared launches let the kernel after them start early (for a graph
    being captured, whose replays then run back-to-back kernels closer together)."""
    outer = _chaining.active
    _chaining.active = True
    try:
        yield
    finally:
        _chaining.active = outer


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

    __slots__ = ("_function_of", "_functions", "name", "awaits")

    def __init__(self, function_of: Callable[[], Any], name: str, awaits: bool = False) -> None:
        # function_of() gives the cupy Function for the current device (compiling or loading once)
        self._function_of = function_of
        self._functions: dict[int, Any] = {}  # device -> its cupy Function (kept: it holds the module)
        self.name = name
        self.awaits = awaits  # whether the kernel begins with TG_AWAIT_PREVIOUS() (may be chained)

    @classmethod
    def kernel(cls, source: str, name: str, **options: Any) -> Prepared:
        """A RawKernel of `source`'s function `name`, prepared (compiled on first launch per device)."""
        source, awaits = awaiting(source, (name,))
        raw = cupy_module().RawKernel(source, name, **options)
        return cls(lambda: raw.kernel, name, awaits)

    @classmethod
    def module(cls, source: str, *names: str) -> tuple[Prepared, ...]:
        """The functions `names` of a RawModule compiled from `source`, prepared."""
        source, awaits = awaiting(source, names)
        module = cupy_module().RawModule(code=source)
        return tuple(cls(functools.partial(lambda name: module.get_function(name).kernel, name), name, awaits)
                     for name in names)

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
        if _chaining.active and self.awaits and device in _chainable_devices():
            _launch_chained(function.ptr, gx, gy, gz, bx, by, bz, shared_mem, api[2]().ptr, address)
            return
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


# ---- chained launches: cuLaunchKernelEx with the programmatic-stream-serialization attribute ----
_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: an id, padding, a 64-byte union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("allowed", ctypes.c_int),
                ("rest", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)),
                ("count", ctypes.c_uint)]


# [cuLaunchKernelEx, a pointer to the attribute, the attribute, the devices that chain] once loaded
_chained: list = []


def _chainable_devices() -> frozenset | set:
    """The devices (ids) whose kernels can be chained: compute capability 9.0 or later, with a driver
    that has cuLaunchKernelEx."""
    if not _chained:
        _load_chained()
    return _chained[3]


def _load_chained() -> None:
    cp = cupy_module()
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        launch = driver.cuLaunchKernelEx
    except (OSError, AttributeError):  # no driver library by that name, or one without the call
        _chained[:] = [None, None, None, frozenset()]
        return
    launch.restype = ctypes.c_int
    launch.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    attribute = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, allowed=1)  # read only
    devices = {d for d in range(cp.cuda.runtime.getDeviceCount())
               if int(cp.cuda.Device(d).compute_capability) >= 90}
    _chained[:] = [launch, ctypes.pointer(attribute), attribute, devices]


def _launch_chained(function: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int,
                    shared_mem: int, stream: int, address: int) -> None:
    """One launch that lets the next kernel in the stream be scheduled before this one ends."""
    launch, attributes = _chained[0], _chained[1]
    # a configuration per launch (captures are one-off, and threads may capture at once)
    config = _LaunchConfig((gx, gy, gz), (bx, by, bz), shared_mem, stream, attributes, 1)
    status = launch(ctypes.byref(config), function, address, None)
    if status:
        from cupy_backends.cuda.api import driver

        driver.check_status(status)  # raises CUDADriverError naming the status
