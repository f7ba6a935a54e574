"""cuBLAS GEMM through a handle of our own, callable while a stream is captured into a CUDA graph.

CuPy's cuBLAS wrappers refuse to run while a stream is capturing (its setStream checks), so a
step with a matmul could not become a graph. Here the cuBLAS library that CuPy already loaded is
called through ctypes, with one handle per device. cuBLAS resets a handle's workspace on every
cublasSetStream, and a captured GEMM must not allocate one of its own, so each stream gets a
workspace we own, set right after the stream; the math mode (TF32 off unless CUPY_TF32=1, CuPy's
switch) is set on every call, as PyTorch does. Row-major operands map onto column-major cuBLAS
by computing C^T = B^T A^T; transposed views (e.g. the weight in x @ W.T) become the operation
flag instead of a copy.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

from .backend import DeviceError, cupy_module, loaded_library

WORKSPACE_BYTES = 32 << 20  # what cuBLAS asks for on Hopper for its fastest kernels (PyTorch's size)
_OP_N, _OP_T = 0, 1
_DEFAULT_MATH, _TF32_MATH = 0, 3
_STATUS = {1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH",
           11: "MAPPING_ERROR", 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED"}

_library: Any = None
_handles: dict[int, int] = {}  # device id -> cublasHandle_t
_stream_set: dict[int, int] = {}  # device id -> the stream its handle was last given
_workspaces: dict[tuple[int, int], Any] = {}  # (device id, stream) -> workspace array


def _find_library() -> Any:
    """The libcublas CuPy loaded (so both use one copy)."""
    from cupy_backends.cuda.libs import cublas  # noqa: F401 - loads libcublas into the process

    return loaded_library("libcublas", ("libcublas.so.13", "libcublas.so.12", "libcublas.so"))


def _declare(lib: Any) -> Any:
    p, i, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    for name, args in {
        "cublasCreate_v2": [ctypes.POINTER(p)],
        "cublasSetStream_v2": [p, p],
        "cublasSetWorkspace_v2": [p, p, ctypes.c_size_t],
        "cublasSetMathMode": [p, i],
        "cublasSgemm_v2": [p, i, i, i, i, i, p, p, i, p, i, p, p, i],
        "cublasDgemm_v2": [p, i, i, i, i, i, p, p, i, p, i, p, p, i],
        "cublasSgemmStridedBatched": [p, i, i, i, i, i, p, p, i, ll, p, i, ll, p, p, i, ll, i],
        "cublasDgemmStridedBatched": [p, i, i, i, i, i, p, p, i, ll, p, i, ll, p, p, i, ll, i],
    }.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, ctypes.c_int
    return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise DeviceError(f"cuBLAS {what} failed: CUBLAS_STATUS_{_STATUS.get(status, status)}")


# alpha = 1, beta = 0 in both precisions, kept alive for the library's whole life (read on the host
# at call time, so a captured graph holds the values, not these addresses)
_ONE_ZERO = {np.dtype(np.float32): (ctypes.c_float(1.0), ctypes.c_float(0.0)),
             np.dtype(np.float64): (ctypes.c_double(1.0), ctypes.c_double(0.0))}


def _handle_for(cp: Any, stream: int) -> tuple[Any, int]:
    """The library and this device's handle, set to `stream` with that stream's own workspace."""
    device = cp.cuda.runtime.getDevice()
    handle = _handles.get(device)
    if handle is None:
        prepare()
        handle = _handles[device]
    if _stream_set.get(device) != stream:
        workspace = _workspaces.get((device, stream))
        if workspace is None:
            workspace = _workspaces[(device, stream)] = cp.empty(WORKSPACE_BYTES, np.uint8)
        _check(_library.cublasSetStream_v2(handle, stream or None), "cublasSetStream")
        _check(_library.cublasSetWorkspace_v2(handle, workspace.data.ptr, WORKSPACE_BYTES),
               "cublasSetWorkspace")
        _stream_set[device] = stream
    math = _TF32_MATH if os.environ.get("CUPY_TF32") == "1" else _DEFAULT_MATH
    _check(_library.cublasSetMathMode(handle, math), "cublasSetMathMode")
    return _library, handle


def prepare() -> None:
    """Load cuBLAS and create this device's handle now (e.g. before a stream capture begins)."""
    global _library
    cp = cupy_module()
    if _library is None:
        _library = _declare(_find_library())
    device = cp.cuda.runtime.getDevice()
    if device not in _handles:
        raw = ctypes.c_void_p()
        _check(_library.cublasCreate_v2(ctypes.byref(raw)), "cublasCreate")
        _handles[device] = raw.value


def forget_stream(stream: int) -> None:
    """Drop the workspace kept for `stream` (its owner, e.g. a captured graph, is gone)."""
    for key in [key for key in _workspaces if key[1] == stream]:
        del _workspaces[key]
        if _stream_set.get(key[0]) == stream:
            del _stream_set[key[0]]


def _layout(x: Any) -> tuple[int, int] | None:
    """(operation, leading dimension) reading matrix x (r, c, row-major) as cuBLAS's column-major
    c x r matrix without a copy, or None when its strides do not allow that."""
    r, c = x.shape
    item = x.itemsize
    s0, s1 = x.strides
    if (c == 1 or s1 == item) and s0 >= 0:  # rows of consecutive elements: N, ld = row stride
        ld = s0 // item if r > 1 else c
        if ld >= max(c, 1) and (r == 1 or s0 % item == 0):
            return _OP_N, ld
    if (r == 1 or s0 == item) and s1 >= 0:  # columns of consecutive elements: T, ld = column stride
        ld = s1 // item if c > 1 else r
        if ld >= max(r, 1) and (c == 1 or s1 % item == 0):
            return _OP_T, ld
    return None


def _as_matrix(cp: Any, x: Any) -> tuple[Any, int, int]:
    layout = _layout(x)
    if layout is None:
        x = cp.ascontiguousarray(x)
        layout = _layout(x)
    return x, layout[0], layout[1]


def gemm(a: Any, b: Any) -> Any:
    """a @ b for 2-D float32/float64 CuPy arrays of one dtype, on the current stream (capturable)."""
    cp = cupy_module()
    m, k = a.shape
    n = b.shape[1]
    out = cp.empty((m, n), dtype=a.dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    a, op_a, lda = _as_matrix(cp, a)
    b, op_b, ldb = _as_matrix(cp, b)
    lib, handle = _handle_for(cp, cp.cuda.get_current_stream().ptr)
    one, zero = _ONE_ZERO[a.dtype]
    function = lib.cublasSgemm_v2 if a.dtype == np.float32 else lib.cublasDgemm_v2
    _check(function(handle, op_b, op_a, n, m, k, ctypes.byref(one), b.data.ptr, ldb,
                    a.data.ptr, lda, ctypes.byref(zero), out.data.ptr, n), "gemm")
    return out


def _batch_view(cp: Any, x: Any, batch_shape: tuple[int, ...]) -> tuple[Any, int]:
    """x's first matrix and the stride in elements from one matrix to the next over `batch_shape`
    (0 when x is one matrix broadcast to every batch entry); copies x only when its batch axes do
    not step evenly through memory."""
    lead = x.shape[:-2]
    if all(size == 1 for size in lead):
        matrix = x.reshape(x.shape[-2:])
        return (matrix if _layout(matrix) else cp.ascontiguousarray(matrix)), 0
    if lead != batch_shape:
        x = cp.ascontiguousarray(cp.broadcast_to(x, batch_shape + x.shape[-2:]))
    first = x[(0,) * len(batch_shape)]
    sizes = [size for size in x.shape[:-2] if size != 1]
    strides = [s for size, s in zip(x.shape[:-2], x.strides[:-2]) if size != 1]
    even = all(strides[i] == strides[i + 1] * sizes[i + 1] for i in range(len(sizes) - 1))
    if not even or strides[-1] <= 0 or strides[-1] % x.itemsize or _layout(first) is None:
        x = cp.ascontiguousarray(x)
        return x[(0,) * len(batch_shape)], x.shape[-2] * x.shape[-1]
    return first, strides[-1] // x.itemsize


def batched_gemm(a: Any, b: Any) -> Any:
    """a @ b for float32/float64 CuPy arrays with batch axes broadcast as NumPy does (capturable)."""
    cp = cupy_module()
    batch_shape = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    m, k = a.shape[-2:]
    n = b.shape[-1]
    count = int(np.prod(batch_shape, dtype=np.int64))
    out = cp.empty(batch_shape + (m, n), dtype=a.dtype)
    if out.size == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    first_a, stride_a = _batch_view(cp, a, batch_shape)
    first_b, stride_b = _batch_view(cp, b, batch_shape)
    op_a, lda = _layout(first_a)
    op_b, ldb = _layout(first_b)
    lib, handle = _handle_for(cp, cp.cuda.get_current_stream().ptr)
    one, zero = _ONE_ZERO[first_a.dtype]
    function = (lib.cublasSgemmStridedBatched if first_a.dtype == np.float32
                else lib.cublasDgemmStridedBatched)
    _check(function(handle, op_b, op_a, n, m, k, ctypes.byref(one), first_b.data.ptr, ldb, stride_b,
                    first_a.data.ptr, lda, stride_a, ctypes.byref(zero), out.data.ptr, n, m * n,
                    count), "batched gemm")
    return out
