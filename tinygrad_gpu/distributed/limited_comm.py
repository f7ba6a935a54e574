"""A second NCCL communicator over the same ranks whose kernels use only a few CTAs.

While backward runs, its matrix products fill nearly every SM, so an all-reduce kernel started
beside them (DistributedDataParallel's early buckets) finds room for only a few of its CTAs and
mostly waits for the product to end. Capped at a few CTAs, the whole all-reduce fits in the SMs
the product leaves idle and runs during it, slower on its own but hidden. CuPy's communicator
takes no configuration, so this one is made with ncclCommInitRankConfig through ctypes, on the
libnccl CuPy loaded; the unique id travels over the group's own communicator.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..backend import DeviceError, loaded_library

_CONFIG_MAGIC = 0xCAFEBEEF
_UNDEFINED_INT = -(2**31)  # NCCL_CONFIG_UNDEF_INT
_CONFIG_SINCE = 21400  # ncclCommInitRankConfig exists from NCCL 2.14


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_uint8 * 128)]


class _Config(ctypes.Structure):
    """The leading fields of ncclConfig_t; NCCL reads only `size` bytes of it, the rest default."""

    _fields_ = [("size", ctypes.c_size_t), ("magic", ctypes.c_uint), ("version", ctypes.c_uint),
                ("blocking", ctypes.c_int), ("cgaClusterSize", ctypes.c_int), ("minCTAs", ctypes.c_int),
                ("maxCTAs", ctypes.c_int), ("netName", ctypes.c_char_p), ("splitShare", ctypes.c_int)]


def _libnccl() -> Any:
    """The libnccl mapped into this process (the copy CuPy uses), with the calls declared."""
    lib = loaded_library("libnccl", ("libnccl.so.2",))
    p = ctypes.c_void_p
    lib.ncclCommInitRankConfig.argtypes = [ctypes.POINTER(p), ctypes.c_int, _UniqueId, ctypes.c_int,
                                           ctypes.POINTER(_Config)]
    lib.ncclAllReduce.argtypes = [p, p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, p, p]
    lib.ncclCommDestroy.argtypes = [p]
    for name in ("ncclCommInitRankConfig", "ncclAllReduce", "ncclCommDestroy"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


class LimitedComm:
    """All-reduce over a communicator whose kernels use at most `max_ctas` CTAs (see the module)."""

    def __init__(self, lib: Any, comm: int, types: dict, ops: dict, error: type) -> None:
        self._lib, self._comm, self._types, self._ops, self._error = lib, comm, types, ops, error

    def all_reduce(self, array: Any, op: str = "sum", stream: Any = None) -> None:
        """Reduce a contiguous CuPy array across ranks, in place, on `stream`."""
        import cupy

        ptr = (stream if stream is not None else cupy.cuda.get_current_stream()).ptr
        status = self._lib.ncclAllReduce(array.data.ptr, array.data.ptr, array.size,
                                         self._types[array.dtype], self._ops[op], self._comm, ptr or None)
        if status != 0:
            raise self._error(f"all_reduce of {array.size} {array.dtype} elements on the limited "
                              f"communicator failed: ncclAllReduce returned {status}")

    def destroy(self) -> None:
        """Release the communicator."""
        if self._comm:
            self._lib.ncclCommDestroy(self._comm)
            self._comm = 0


def make_limited_comm(group: Any, max_ctas: int, version: int, types: dict, ops: dict,
                      error: type) -> LimitedComm | None:
    """A LimitedComm over `group`'s ranks (a collective call: every rank makes it at the same point),
    or None where this NCCL cannot configure a communicator; `error` is the exception type raised
    when NCCL fails. Rank 0's unique id reaches the others through a broadcast on the group."""
    import cupy
    from cupy.cuda import nccl

    if version < _CONFIG_SINCE:
        return None
    try:  # (before the broadcast: a rank that gives up here gives up with the others, not halfway)
        lib = _libnccl()
    except (DeviceError, AttributeError):  # no libnccl to load, or one without the config API
        return None
    token = cupy.zeros(128, np.uint8)
    if group.rank == 0:
        token[...] = cupy.asarray(np.frombuffer(bytes(b % 256 for b in nccl.get_unique_id()), np.uint8))
    group.broadcast(token, 0)
    unique_id = _UniqueId()
    ctypes.memmove(ctypes.addressof(unique_id), bytes(token.get()), 128)
    config = _Config(size=ctypes.sizeof(_Config), magic=_CONFIG_MAGIC, version=version, blocking=1,
                     cgaClusterSize=_UNDEFINED_INT, minCTAs=1, maxCTAs=max_ctas, netName=None,
                     splitShare=_UNDEFINED_INT)
    comm = ctypes.c_void_p()
    status = lib.ncclCommInitRankConfig(ctypes.byref(comm), group.world_size, unique_id, group.rank,
                                        ctypes.byref(config))
    if status != 0:
        raise error(f"NCCL could not make the {max_ctas}-CTA communicator DistributedDataParallel "
                    f"reduces its early buckets on (ncclCommInitRankConfig returned {status}, "
                    f"rank {group.rank} of {group.world_size})")
    return LimitedComm(lib, comm.value, types, ops, error)
