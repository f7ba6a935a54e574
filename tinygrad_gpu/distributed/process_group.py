"""A process group over NCCL: rendezvous through a small TCP exchange, then collectives on the GPU.

Rank 0 draws NCCL's unique id and hands it to every other rank over one TCP socket on
MASTER_ADDR:MASTER_PORT; then every rank builds its communicator. Collectives are issued on the
caller's current CUDA stream (so they are ordered with the library's kernels and can be captured
into a CUDA graph); the side-stream overlap of DistributedDataParallel passes its own stream.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

import numpy as np

from .. import backend
from ..backend import DeviceError

DEFAULT_TIMEOUT = 300.0
REDUCE_OPS = ("sum", "avg", "max", "min")
# NCCL's enums (nccl.h): ncclRedOp_t and ncclDataType_t
_NCCL_OPS = {"sum": 0, "max": 2, "min": 3, "avg": 4}
_NCCL_TYPES = {np.dtype(np.int8): 0, np.dtype(np.uint8): 1, np.dtype(np.int32): 2, np.dtype(np.uint32): 3,
               np.dtype(np.int64): 4, np.dtype(np.uint64): 5, np.dtype(np.float16): 6,
               np.dtype(np.float32): 7, np.dtype(np.float64): 8}
_AVG_SINCE = 21000  # ncclAvg exists from NCCL 2.10


class DistributedError(RuntimeError):
    """A process group could not be formed, or a collective was called wrongly."""


def nccl_module() -> Any:
    """cupy.cuda.nccl, or a DeviceError naming the package that brings NCCL."""
    cp = backend.cupy_module()
    try:
        major = cp.cuda.runtime.runtimeGetVersion() // 1000
    except Exception:  # the hint below is still right for the usual installs
        major = 13
    hint = (f"install NCCL for CUDA {major}: `pip install nvidia-nccl-cu{major}` "
            f"(or `pip install 'tinygrad_gpu[cuda{major}]'`, which brings it)")
    try:
        from cupy.cuda import nccl
    except Exception as exc:
        raise DeviceError(f"the nccl backend needs NCCL, which CuPy could not load "
                          f"({exc.__class__.__name__}: {exc}); {hint}") from exc
    if not getattr(nccl, "available", False):
        raise DeviceError(f"the nccl backend needs NCCL, which CuPy could not find; {hint}")
    return nccl


# ---- rendezvous: rank 0 hands a payload (NCCL's unique id) to every other rank -----------------
def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        data += chunk
    return data


def rendezvous(addr: str, port: int, rank: int, world_size: int, payload: bytes | None,
               timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """Rank 0 sends `payload` to ranks 1..world_size-1 over TCP; every rank returns it.

    Raises DistributedError when the ranks have not all met within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    if rank == 0:
        if payload is None:
            raise ValueError("rendezvous: rank 0 must provide the payload")
        if world_size > 1:
            _serve(port, world_size, payload, deadline, timeout, addr)
        return payload
    while True:  # rank 0 may not be listening yet: retry until the deadline
        try:
            left = max(0.1, deadline - time.monotonic())
            with socket.create_connection((addr, port), timeout=left) as conn:
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                conn.sendall(struct.pack("!i", rank))
                (size,) = struct.unpack("!i", _recv_exactly(conn, 4))
                return _recv_exactly(conn, size)
        except (OSError, ConnectionError) as exc:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"init_process_group: rank {rank} could not reach rank 0 at {addr}:{port} within "
                    f"{timeout:g} s ({exc.__class__.__name__}: {exc}); is rank 0 running, and are "
                    "MASTER_ADDR/MASTER_PORT the same on every rank?") from None
            time.sleep(0.05)


def _serve(port: int, world_size: int, payload: bytes, deadline: float, timeout: float, addr: str) -> None:
    waiting = set(range(1, world_size))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", port))
        except OSError as exc:
            raise DistributedError(f"init_process_group: rank 0 cannot listen on port {port} ({exc}); "
                                   "choose another MASTER_PORT") from None
        server.listen(world_size)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DistributedError(
                    f"init_process_group: rank 0 waited {timeout:g} s on {addr}:{port} for ranks "
                    f"{sorted(waiting)} of {world_size} to join; start every rank (the launcher "
                    "`python -m tinygrad_gpu.distributed.run` does) or raise timeout=")
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    (peer,) = struct.unpack("!i", _recv_exactly(conn, 4))
                    conn.sendall(struct.pack("!i", len(payload)) + payload)
                except (OSError, ConnectionError):
                    continue  # a peer that vanished mid-handshake retries or times out itself
                waiting.discard(peer)


# ---- the NCCL group -----------------------------------------------------------------------------
class NcclProcessGroup:
    """One NCCL communicator for this process's GPU; collectives work in place on CuPy arrays."""

    def __init__(self, rank: int, world_size: int, local_rank: int, addr: str, port: int,
                 timeout: float) -> None:
        nccl = nccl_module()
        cp = backend.cupy_module()
        count = cp.cuda.runtime.getDeviceCount()
        if not 0 <= local_rank < count:
            raise DeviceError(f"init_process_group: LOCAL_RANK={local_rank} but this machine has {count} "
                              f"GPU{'s' if count != 1 else ''}; start at most {count} processes per node")
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off (read at comm init)
        cp.cuda.Device(local_rank).use()
        unique_id = bytes(b % 256 for b in nccl.get_unique_id()) if rank == 0 else None
        received = rendezvous(addr, port, rank, world_size, unique_id, timeout)
        try:  # CuPy 14 takes the id as bytes, older releases as a tuple of C chars
            self.comm = nccl.NcclCommunicator(world_size, bytes(received), rank)
        except TypeError:
            signed = tuple(b - 256 if b > 127 else b for b in received)
            self.comm = nccl.NcclCommunicator(world_size, signed, rank)
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device_index = local_rank
        self._version = nccl.get_version()
        self._cp = cp
        self._side_comms: list[Any] = []

    def _stream_ptr(self, stream: Any) -> int:
        return (stream if stream is not None else self._cp.cuda.get_current_stream()).ptr

    def _op(self, op: str) -> int:
        if op == "avg" and self._version < _AVG_SINCE:
            raise DistributedError(f"all_reduce(op='avg') needs NCCL >= 2.10; this process has "
                                   f"{self._version}; use op='sum' and divide")
        return _NCCL_OPS[op]

    def all_reduce(self, array: Any, op: str = "sum", stream: Any = None) -> None:
        """Reduce a contiguous CuPy array across ranks, in place."""
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, _NCCL_TYPES[array.dtype],
                            self._op(op), self._stream_ptr(stream))

    def broadcast(self, array: Any, src: int = 0, stream: Any = None) -> None:
        """Overwrite a contiguous CuPy array with rank src's, in place."""
        self.comm.broadcast(array.data.ptr, array.data.ptr, array.size, _NCCL_TYPES[array.dtype], src,
                            self._stream_ptr(stream))

    def all_gather(self, out: Any, array: Any, stream: Any = None) -> None:
        """out (world_size * array.size items, contiguous) receives every rank's array in rank order."""
        self.comm.allGather(array.data.ptr, out.data.ptr, array.size, _NCCL_TYPES[array.dtype],
                            self._stream_ptr(stream))

    def barrier(self) -> None:
        """Return once every rank has reached this call."""
        token = self._cp.zeros(1, np.float32)
        self.all_reduce(token, "sum")
        self._cp.cuda.get_current_stream().synchronize()

    def limited_group(self, max_ctas: int) -> Any:
        """A second communicator over these ranks whose all-reduce kernels use at most `max_ctas` CTAs
        (for all-reduces that run beside compute), or None where NCCL cannot make one. Every rank
        must call this at the same point: it is a collective."""
        if self.world_size < 2:
            return None
        from .limited_comm import make_limited_comm

        side = make_limited_comm(self, max_ctas, self._version, _NCCL_TYPES, _NCCL_OPS, DistributedError)
        if side is not None:
            self._side_comms.append(side)
        return side

    def destroy(self) -> None:
        """Release the communicator (and any limited ones made from it)."""
        for side in self._side_comms:
            side.destroy()
        self._side_comms.clear()
        self.comm.destroy()

    def abort(self) -> None:
        """Release the communicator without waiting for the other ranks (a failing process exits)."""
        self.comm.abort()


def supported_dtype(dtype: Any) -> bool:
    """True when NCCL can reduce arrays of this dtype."""
    return np.dtype(dtype) in _NCCL_TYPES
