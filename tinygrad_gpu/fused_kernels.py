"""One-launch GPU kernels for fused programs (tg.fuse) with a matrix product at the head or a
sum at the tail.

A Linear layer with its bias and activation, traced by tg.fuse, is a product z = a @ b (or
a @ b.T) and a chain out = f(z, e0, e1, ...) whose other operands e_p broadcast to z's shape
(m, n). For small products the GPU forward runs one thread per output element: its dot product,
then the chain. The backward is one block: each thread recomputes z and the chain at its elements
and applies the chain's gradient rules (the gradients for z and for every e_p go to shared
memory); then the block forms a's and b's gradients from z's and sums each e_p's gradient over
the axes it was broadcast along. Larger products take cuBLAS and the chain's rows (fusion.py).

A loss such as mean((p - y) ** 2) is a chain followed by a sum over all elements: for a small
one, one block evaluates the chain and sums it in the same launch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from .backend import cupy_module

FORWARD_WORK = K.SMALL_MATMUL_WORK  # m*n*k up to this: the one-launch forward (cuBLAS beyond)
BACKWARD_WORK = 1 << 16  # m*n*k up to this: the one-block backward
REDUCE_SIZE = 1 << 16  # elements up to this: chain and sum in one block (the row, then a sum beyond)
SHARED_BYTES = 48 * 1024  # the shared memory a block may use without opting in
_THREADS = 256


def _fits(a: Any, b: Any, transpose_b: bool, chain_args: list, work_limit: int) -> bool:
    dtype = a.dtype
    if dtype not in (np.float32, np.float64) or b.dtype != dtype:
        return False
    if any(e.dtype != dtype or e.ndim > 2 for e in chain_args):
        return False
    m, n, k = _product_shape(a, b, transpose_b)
    return 0 < m * n and m * n * max(k, 1) <= work_limit


def forward_fits(a: Any, b: Any, transpose_b: bool, chain_args: list) -> bool:
    """True when the product and chain run as one launch (small enough; inside a CUDA graph
    capture also larger ones, since cuBLAS cannot be captured)."""
    limit = K.CAPTURE_MATMUL_WORK if K.capture_state.active else FORWARD_WORK
    return _fits(a, b, transpose_b, chain_args, limit)


def _broadcast_strides(e: Any, shape: tuple[int, int]) -> tuple[np.int64, np.int64]:
    """Element strides that read e as if broadcast to `shape` (0 along broadcast axes)."""
    padded = (1,) * (2 - e.ndim) + e.shape
    strides = (0,) * (2 - e.ndim) + tuple(s // e.itemsize for s in e.strides)
    return tuple(np.int64(stride if size == full else 0)
                 for size, full, stride in zip(padded, shape, strides))


def _product_shape(a: Any, b: Any, transpose_b: bool) -> tuple[int, int, int]:
    return a.shape[0], (b.shape[0] if transpose_b else b.shape[1]), a.shape[1]


def forward(program: Any, a: Any, b: Any, transpose_b: bool, chain_args: list) -> Any:
    """out = chain(a @ b (or a @ b.T), *chain_args) in one launch, one thread per output element."""
    cp = cupy_module()
    a, b = cp.ascontiguousarray(a), cp.ascontiguousarray(b)
    m, n, k = _product_shape(a, b, transpose_b)
    kernel = _kernel(program, ("forward", a.dtype.char, transpose_b))
    out = cp.empty((m, n), a.dtype)
    strides = [s for e in chain_args for s in _broadcast_strides(e, (m, n))]
    blocks = min(4096, -(-(m * n) // _THREADS))
    kernel((blocks,), (_THREADS,), (a, b, *chain_args, out, np.int32(m), np.int32(n), np.int32(k),
                                    *strides))
    return out


def backward(program: Any, inputs: tuple, gy: Any, needed: tuple[bool, ...]) -> tuple | None:
    """Every input's gradient in one single-block launch; None when the product is too large."""
    cp = cupy_module()
    ia, ib, transpose_b = program.head
    a, b = cp.ascontiguousarray(inputs[ia]), cp.ascontiguousarray(inputs[ib])
    chain = program.chain_tensors
    chain_args = [inputs[k] for k in chain]
    m, n, k = _product_shape(a, b, transpose_b)
    chain_needed = tuple(needed[p] for p in chain)
    shared = (1 + sum(chain_needed)) * m * n * a.itemsize
    if not _fits(a, b, transpose_b, chain_args, BACKWARD_WORK) or shared > SHARED_BYTES:
        return None
    kernel = _kernel(program, ("backward", a.dtype.char, transpose_b, needed[ia], needed[ib],
                               chain_needed))
    grads: list[Any] = [None] * len(needed)
    outputs = []
    if needed[ia]:
        grads[ia] = cp.empty(a.shape, a.dtype)
        outputs.append(grads[ia])
    if needed[ib]:
        grads[ib] = cp.empty(b.shape, b.dtype)
        outputs.append(grads[ib])
    sizes = []
    for p, e, need in zip(chain, chain_args, chain_needed):
        if need:
            grads[p] = cp.empty(e.shape, e.dtype)
            outputs.append(grads[p])
            rows_cols = (1,) * (2 - e.ndim) + e.shape
            sizes += [np.int32(rows_cols[0]), np.int32(rows_cols[1])]
    strides = [s for e in (*chain_args, gy) for s in _broadcast_strides(e, (m, n))]
    kernel((1,), (_THREADS,), (a, b, *chain_args, gy, *outputs, np.int32(m), np.int32(n),
                               np.int32(k), *strides, *sizes), shared_mem=shared)
    return tuple(grads)


def _kernel(program: Any, key: tuple) -> Any:
    kernels = program.__dict__.setdefault("gpu_kernels", {})
    if key not in kernels:
        build = {"forward": _forward_source, "backward": _backward_source, "sum": _sum_source}[key[0]]
        source, name = build(program, *key[1:])
        kernels[key] = cupy_module().RawKernel(source, name)
    return kernels[key]


def _b_at(transpose_b: bool, row: str, inner: str) -> str:
    """b's element multiplying a[i, q] for output column `row` (b is (n, k) when transposed)."""
    return f"tg_b[{row} * tg_k + {inner}]" if transpose_b else f"tg_b[{inner} * tg_n + {row}]"


def _load_chain(program: Any, count: int) -> str:
    """The chain's inputs at element (tg_i, tg_j): its tensors, then the product tg_z."""
    loads = "".join(f"T in{p} = tg_e{p}[tg_i * tg_e{p}_si + tg_j * tg_e{p}_sj]; " for p in range(count))
    return loads + f"T in{count} = tg_z; "


def _dot(transpose_b: bool) -> str:
    return ("T tg_z = (T)0; for (int tg_q = 0; tg_q < tg_k; ++tg_q) "
            f"tg_z += tg_a[(long long)tg_i * tg_k + tg_q] * {_b_at(transpose_b, 'tg_j', 'tg_q')};")


def _forward_source(program: Any, dtype_char: str, transpose_b: bool) -> tuple[str, str]:
    count = len(program.chain_inputs) - 1
    name = f"tg_{program.forward_row.name}_mm"
    params = ["const T* __restrict__ tg_a", "const T* __restrict__ tg_b"]
    params += [f"const T* __restrict__ tg_e{p}" for p in range(count)]
    params += ["T* __restrict__ tg_out", "int tg_m", "int tg_n", "int tg_k"]
    params += [f"long long tg_e{p}_{axis}" for p in range(count) for axis in ("si", "sj")]
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
extern "C" __global__ void {name}({", ".join(params)}) {{
  long long tg_total = (long long)tg_m * tg_n;
  for (long long tg_idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; tg_idx < tg_total;
       tg_idx += (long long)gridDim.x * blockDim.x) {{
    int tg_i = (int)(tg_idx / tg_n), tg_j = (int)(tg_idx % tg_n);
    {_dot(transpose_b)}
    {_load_chain(program, count)}
    {program.values_source()}
    tg_out[tg_idx] = v{program.output};
  }}
}}
"""
    return source, name


def _backward_source(program: Any, dtype_char: str, transpose_b: bool, need_a: bool, need_b: bool,
                     chain_needed: tuple[bool, ...]) -> tuple[str, str]:
    count = len(program.chain_inputs) - 1
    flags = "".join("1" if f else "0" for f in (need_a, need_b, *chain_needed))
    name = f"tg_{program.forward_row.name}_mm_bwd{'t' if transpose_b else 'n'}{flags}"
    wanted = [p for p in range(count) if chain_needed[p]]
    params = ["const T* __restrict__ tg_a", "const T* __restrict__ tg_b"]
    params += [f"const T* __restrict__ tg_e{p}" for p in range(count)]
    params.append("const T* __restrict__ tg_gy")
    params += (["T* __restrict__ tg_ga"] if need_a else []) + (["T* __restrict__ tg_gb"] if need_b else [])
    params += [f"T* __restrict__ tg_ge{p}" for p in wanted]
    params += ["int tg_m", "int tg_n", "int tg_k"]
    params += [f"long long tg_e{p}_{axis}" for p in range(count) for axis in ("si", "sj")]
    params += ["long long tg_gy_si", "long long tg_gy_sj"]
    params += [f"int tg_e{p}_{axis}" for p in wanted for axis in ("rows", "cols")]
    gradient, _ = program.gradient_source()
    keep = "".join(f"tg_ge{p}_all[tg_idx] = g_in{p}; " for p in wanted)
    scratch = "".join(f"T* tg_ge{p}_all = tg_gz + {slot + 1} * tg_mn; " for slot, p in enumerate(wanted))
    stages = []
    if need_a:  # ga[i, q] = sum_j gz[i, j] * b(j, q)
        stages.append(f"""
  for (int tg_idx = threadIdx.x; tg_idx < tg_m * tg_k; tg_idx += blockDim.x) {{
    int tg_i = tg_idx / tg_k, tg_q = tg_idx % tg_k; T tg_s = (T)0;
    for (int tg_j = 0; tg_j < tg_n; ++tg_j)
      tg_s += tg_gz[tg_i * tg_n + tg_j] * {_b_at(transpose_b, 'tg_j', 'tg_q')};
    tg_ga[tg_idx] = tg_s;
  }}""")
    if need_b:  # gb(j, q) = sum_i gz[i, j] * a[i, q], in b's own layout
        position = ("int tg_j = tg_idx / tg_k, tg_q = tg_idx % tg_k;" if transpose_b
                    else "int tg_q = tg_idx / tg_n, tg_j = tg_idx % tg_n;")
        stages.append(f"""
  for (int tg_idx = threadIdx.x; tg_idx < tg_n * tg_k; tg_idx += blockDim.x) {{
    {position} T tg_s = (T)0;
    for (int tg_i = 0; tg_i < tg_m; ++tg_i) tg_s += tg_gz[tg_i * tg_n + tg_j] * tg_a[tg_i * tg_k + tg_q];
    tg_gb[tg_idx] = tg_s;
  }}""")
    for p in wanted:  # e_p's gradient: summed over the axes e_p was broadcast along
        stages.append(f"""
  for (int tg_idx = threadIdx.x; tg_idx < tg_e{p}_rows * tg_e{p}_cols; tg_idx += blockDim.x) {{
    int tg_r = tg_idx / tg_e{p}_cols, tg_c = tg_idx % tg_e{p}_cols;
    int tg_i0 = tg_e{p}_rows == 1 ? 0 : tg_r, tg_i1 = tg_e{p}_rows == 1 ? tg_m : tg_r + 1;
    int tg_j0 = tg_e{p}_cols == 1 ? 0 : tg_c, tg_j1 = tg_e{p}_cols == 1 ? tg_n : tg_c + 1;
    T tg_s = (T)0;
    for (int tg_i = tg_i0; tg_i < tg_i1; ++tg_i)
      for (int tg_j = tg_j0; tg_j < tg_j1; ++tg_j) tg_s += tg_ge{p}_all[tg_i * tg_n + tg_j];
    tg_ge{p}[tg_idx] = tg_s;
  }}""")
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
extern "C" __global__ void {name}({", ".join(params)}) {{
  extern __shared__ __align__(16) unsigned char tg_shared_bytes[];
  T* tg_gz = reinterpret_cast<T*>(tg_shared_bytes);
  const int tg_mn = tg_m * tg_n;
  {scratch}
  for (int tg_idx = threadIdx.x; tg_idx < tg_mn; tg_idx += blockDim.x) {{
    int tg_i = tg_idx / tg_n, tg_j = tg_idx % tg_n;
    {_dot(transpose_b)}
    {_load_chain(program, count)}
    T gy = tg_gy[tg_i * tg_gy_si + tg_j * tg_gy_sj];
    {gradient}
    tg_gz[tg_idx] = g_in{count}; {keep}
  }}
  __syncthreads();
  {"".join(stages)}
}}
"""
    return source, name


def reduce_fits(chain_args: list) -> bool:
    """True when a chain ending in a full sum runs as one launch: few elements, every operand
    contiguous with the output's shape or 0-d, one float dtype."""
    shape = next((e.shape for e in chain_args if e.ndim), ())
    dtype = chain_args[0].dtype
    size = int(np.prod(shape))
    return (dtype in (np.float32, np.float64) and 0 < size <= REDUCE_SIZE
            and all(e.dtype == dtype and (e.ndim == 0 or (e.shape == shape and e.flags.c_contiguous))
                    for e in chain_args))


def chain_sum(program: Any, chain_args: list) -> tuple[Any, tuple]:
    """(sum of the chain over all elements as a 0-d array, the chain's output shape), one launch."""
    cp = cupy_module()
    shape = next((e.shape for e in chain_args if e.ndim), ())
    modes = tuple("z" if e.ndim == 0 else "f" for e in chain_args)
    kernel = _kernel(program, ("sum", chain_args[0].dtype.char, modes))
    out = cp.empty((), chain_args[0].dtype)
    kernel((1,), (_THREADS,), (*chain_args, out, np.int64(int(np.prod(shape)))))
    return out, shape


def _sum_source(program: Any, dtype_char: str, modes: tuple[str, ...]) -> tuple[str, str]:
    name = f"tg_{program.forward_row.name}_sum"
    params = [f"const T* __restrict__ tg_in{p}" for p in range(len(modes))]
    loads = "".join(f"T in{p} = tg_in{p}[{'tg_idx' if mode == 'f' else '0'}]; "
                    for p, mode in enumerate(modes))
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
extern "C" __global__ void {name}({", ".join(params)}, T* __restrict__ tg_out, long long tg_size) {{
  T tg_acc = (T)0;
  for (long long tg_idx = threadIdx.x; tg_idx < tg_size; tg_idx += blockDim.x) {{
    {loads}
    {program.values_source()}
    tg_acc += v{program.output};
  }}
  for (int tg_offset = 16; tg_offset > 0; tg_offset >>= 1)
    tg_acc += __shfl_down_sync(0xffffffffu, tg_acc, tg_offset);
  __shared__ T tg_warps[{_THREADS // 32}];
  if ((threadIdx.x & 31) == 0) tg_warps[threadIdx.x >> 5] = tg_acc;
  __syncthreads();
  if (threadIdx.x < 32) {{
    tg_acc = threadIdx.x < {_THREADS // 32} ? tg_warps[threadIdx.x] : (T)0;
    for (int tg_offset = 16; tg_offset > 0; tg_offset >>= 1)
      tg_acc += __shfl_down_sync(0xffffffffu, tg_acc, tg_offset);
    if (threadIdx.x == 0) *tg_out = tg_acc;
  }}
}}
"""
    return source, name
