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

import math
from typing import Any

import numpy as np

from . import kernels as K
from . import tiled_gemm
from .backend import cupy_module
from .caches import LRU

FORWARD_WORK = 1 << 16  # m*n*k up to this: one thread per output (the tiled kernel beyond)
BACKWARD_WORK = 1 << 16  # m*n*k up to this: the one-block backward
REDUCE_SIZE = 1 << 16  # elements up to this: chain and sum in one block (the row, then a sum beyond)
SHARED_BYTES = 48 * 1024  # the shared memory a block may use without opting in
# compiled one-launch kernels per traced program (by dtype, operand strides and which gradients
# are needed), least recently used dropped first
KERNELS_PER_PROGRAM = 8
_THREADS = 256


def _fits(a: Any, b: Any, transpose_b: bool, chain_args: list, work_limit: int) -> bool:
    dtype = a.dtype
    if dtype.char not in "fd" or b.dtype != dtype:
        return False
    for e in chain_args:
        if e.dtype != dtype or e.ndim > 2:
            return False
    m, n, k = _product_shape(a, b, transpose_b)
    return 0 < m * n and m * n * max(k, 1) <= work_limit


def forward_fits(a: Any, b: Any, transpose_b: bool, chain_args: list) -> bool:
    """True when the product and chain are small enough to run as one launch (cuBLAS beyond)."""
    return _fits(a, b, transpose_b, chain_args, FORWARD_WORK)


def tiled_plan(a: Any, b: Any, transpose_b: bool, chain_args: list) -> tuple | None:
    """The tiled GEMM's plan when the product and chain run as one launch of it (None: cuBLAS)."""
    if not _fits(a, b, transpose_b, chain_args, tiled_gemm.TILED_WORK):
        return None
    m, n, k = _product_shape(a, b, transpose_b)
    return tiled_gemm.plan(m, n, k, a.itemsize)


def _broadcast_strides(e: Any) -> tuple[int, int]:
    """Element strides (row, column) that read e (at most 2-D) as if broadcast to the product's
    shape: 0 along an axis of size 1 or absent."""
    shape, strides, size = e.shape, e.strides, e.itemsize
    if len(shape) == 2:
        return (strides[0] // size if shape[0] != 1 else 0, strides[1] // size if shape[1] != 1 else 0)
    if len(shape) == 1:
        return (0, strides[0] // size if shape[0] != 1 else 0)
    return (0, 0)


def _product_shape(a: Any, b: Any, transpose_b: bool) -> tuple[int, int, int]:
    return a.shape[0], (b.shape[0] if transpose_b else b.shape[1]), a.shape[1]


def _contiguous(a: Any) -> Any:
    return a if a.flags.c_contiguous else cupy_module().ascontiguousarray(a)


# Sizes and strides are compiled into each kernel (a program is traced per shape anyway): the
# launch passes pointers only, which is most of what a launch costs the host.
def forward(program: Any, a: Any, b: Any, transpose_b: bool, chain_args: list) -> Any:
    """out = chain(a @ b (or a @ b.T), *chain_args) in one launch, one thread per output element."""
    a, b = _contiguous(a), _contiguous(b)
    m, n, k = _product_shape(a, b, transpose_b)
    strides = tuple(_broadcast_strides(e) for e in chain_args)
    kernel = _kernel(program, ("forward", a.dtype.char, transpose_b, (m, n, k), strides))
    out = cupy_module().empty((m, n), a.dtype)
    kernel((min(4096, -(-(m * n) // _THREADS)),), (_THREADS,),
           (a, b, *chain_args, out, *program.constant_args(a.dtype)))
    return out


def tiled_forward(program: Any, a: Any, b: Any, transpose_b: bool, chain_args: list,
                  chosen: tuple) -> tuple[Any, Any]:
    """(chain(z, *chain_args), z) for z = a @ b (or a @ b.T), in one launch of the tiled GEMM
    (`chosen`: its tiled_plan) with the chain applied to its sums; z is what backward's rows need."""
    cp = cupy_module()
    a, b = _contiguous(a), _contiguous(b)
    m, n, k = _product_shape(a, b, transpose_b)
    strides = tuple(_broadcast_strides(e) for e in chain_args)
    tile, depth = chosen
    kernel = _kernel(program, ("tiled", a.dtype.char, transpose_b, (m, n, k), strides, tile, depth))
    out, z = cp.empty((m, n), a.dtype), cp.empty((m, n), a.dtype)
    kernel((-(-n // tile[1]), -(-m // tile[0])), (tiled_gemm.THREADS,),
           (a, b, *chain_args, out, z, *program.constant_args(a.dtype)))
    return out, z


def backward(program: Any, inputs: tuple, gy: Any, needed: tuple[bool, ...]) -> tuple | None:
    """Every input's gradient in one single-block launch; None when the product is too large."""
    cp = cupy_module()
    ia, ib, transpose_b = program.head
    a, b = _contiguous(inputs[ia]), _contiguous(inputs[ib])
    chain = program.chain_tensors
    chain_args = [inputs[k] for k in chain]
    m, n, k = _product_shape(a, b, transpose_b)
    chain_needed = tuple(needed[p] for p in chain)
    shared = (1 + sum(chain_needed)) * m * n * a.itemsize
    if not _fits(a, b, transpose_b, chain_args, BACKWARD_WORK) or shared > SHARED_BYTES:
        return None
    strides = tuple(_broadcast_strides(e) for e in (*chain_args, gy))
    grad_shapes = tuple(e.shape for e, need in zip(chain_args, chain_needed) if need)
    kernel = _kernel(program, ("backward", a.dtype.char, transpose_b, (m, n, k), strides,
                               needed[ia], needed[ib], chain_needed, grad_shapes))
    grads: list[Any] = [None] * len(needed)
    if needed[ia]:
        grads[ia] = cp.empty(a.shape, a.dtype)
    if needed[ib]:
        grads[ib] = cp.empty(b.shape, b.dtype)
    for p, e, need in zip(chain, chain_args, chain_needed):
        if need:
            grads[p] = cp.empty(e.shape, e.dtype)
    outputs = [grads[i] for i in (ia, ib, *chain) if grads[i] is not None]
    kernel((1,), (_THREADS,), (a, b, *chain_args, gy, *outputs, *program.constant_args(a.dtype)),
           shared_mem=shared)
    return tuple(grads)


def _kernel(program: Any, key: tuple) -> Any:
    kernels = program.__dict__.get("gpu_kernels")
    if kernels is None:
        kernels = program.gpu_kernels = LRU(KERNELS_PER_PROGRAM)
    kernel = kernels.get(key)
    if kernel is None:
        build = {"forward": _forward_source, "tiled": _tiled_source, "backward": _backward_source,
                 "sum": _sum_source}[key[0]]
        source, name = build(program, *key[1:])
        kernel = kernels[key] = cupy_module().RawKernel(source, name)
    return kernel


def _constants(sizes: tuple[int, int, int], strides: tuple, names: list[str]) -> str:
    """The product's sizes and each operand's (row, column) element strides, as constants."""
    m, n, k = sizes
    lines = [f"const int tg_m = {m}, tg_n = {n}, tg_k = {k};"]
    lines += [f"const long long {name}_si = {si}, {name}_sj = {sj};"
              for name, (si, sj) in zip(names, strides)]
    return " ".join(lines)


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


def _forward_source(program: Any, dtype_char: str, transpose_b: bool, sizes: tuple,
                    strides: tuple) -> tuple[str, str]:
    count = len(program.chain_inputs) - 1
    name = f"tg_{program.forward_row.name}_mm"
    params = ["const T* __restrict__ tg_a", "const T* __restrict__ tg_b"]
    params += [f"const T* __restrict__ tg_e{p}" for p in range(count)]
    params += ["T* __restrict__ tg_out"]
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
extern "C" __global__ void {name}({", ".join(params)}{program.constant_params}) {{
  {_constants(sizes, strides, [f"tg_e{p}" for p in range(count)])}
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


def _tiled_source(program: Any, dtype_char: str, transpose_b: bool, sizes: tuple, strides: tuple,
                  tile: tuple[int, int], depth: int) -> tuple[str, str]:
    count = len(program.chain_inputs) - 1
    bm, bn = tile
    name = f"tg_{program.forward_row.name}_tiled"
    params = ["const T* __restrict__ tg_a", "const T* __restrict__ tg_b"]
    params += [f"const T* __restrict__ tg_e{p}" for p in range(count)]
    params += ["T* __restrict__ tg_out", "T* __restrict__ tg_zs"]
    m, n, k = sizes
    # a is (m, k) row-major; b is (n, k) row-major when transposed, else (k, n)
    b_strides = (1, k) if transpose_b else (n, 1)
    store = (f"{_load_chain(program, count)} {program.values_source()}"
             f" tg_out[tg_idx] = v{program.output}; tg_zs[tg_idx] = tg_z;")
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
extern "C" __global__ void __launch_bounds__({tiled_gemm.THREADS})
{name}({", ".join(params)}{program.constant_params}) {{
  {_constants(sizes, strides, [f"tg_e{p}" for p in range(count)])}
  const long long tg_sa0 = {k}, tg_sa1 = 1, tg_sb0 = {b_strides[0]}, tg_sb1 = {b_strides[1]};
  {tiled_gemm.loop_source(bm, bn, depth, True, transpose_b, np.dtype(dtype_char).itemsize)}
  {tiled_gemm.store_source(bm, bn, store)}
}}
"""
    return source, name


def _backward_source(program: Any, dtype_char: str, transpose_b: bool, sizes: tuple, strides: tuple,
                     need_a: bool, need_b: bool, chain_needed: tuple[bool, ...],
                     grad_shapes: tuple) -> tuple[str, str]:
    count = len(program.chain_inputs) - 1
    name = f"tg_{program.forward_row.name}_mm_bwd"
    wanted = [p for p in range(count) if chain_needed[p]]
    params = ["const T* __restrict__ tg_a", "const T* __restrict__ tg_b"]
    params += [f"const T* __restrict__ tg_e{p}" for p in range(count)]
    params.append("const T* __restrict__ tg_gy")
    params += (["T* __restrict__ tg_ga"] if need_a else []) + (["T* __restrict__ tg_gb"] if need_b else [])
    params += [f"T* __restrict__ tg_ge{p}" for p in wanted]
    constants = _constants(sizes, strides, [f"tg_e{p}" for p in range(count)] + ["tg_gy"])
    for p, shape in zip(wanted, grad_shapes):  # e_p's own shape as (rows, columns)
        rows, cols = (1,) * (2 - len(shape)) + tuple(shape)
        constants += f" const int tg_e{p}_rows = {rows}, tg_e{p}_cols = {cols};"
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
extern "C" __global__ void {name}({", ".join(params)}{program.constant_params}) {{
  {constants}
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
    first = chain_args[0]
    dtype, shape = first.dtype, ()
    if dtype.char not in "fd":
        return False
    for e in chain_args:
        if e.dtype != dtype:
            return False
        if e.ndim:
            if not shape:
                shape = e.shape
            if e.shape != shape or not e.flags.c_contiguous:
                return False
    return 0 < math.prod(shape) <= REDUCE_SIZE


def chain_sum(program: Any, chain_args: list) -> tuple[Any, tuple]:
    """(sum of the chain over all elements as a 0-d array, the chain's output shape), one launch."""
    shape = next((e.shape for e in chain_args if e.ndim), ())
    modes = tuple("z" if e.ndim == 0 else "f" for e in chain_args)
    kernel = _kernel(program, ("sum", chain_args[0].dtype.char, modes))
    out = cupy_module().empty((), chain_args[0].dtype)
    kernel((1,), (_THREADS,), (*chain_args, out, np.int64(math.prod(shape)),
                               *program.constant_args(out.dtype)))
    return out, shape


def _sum_source(program: Any, dtype_char: str, modes: tuple[str, ...]) -> tuple[str, str]:
    name = f"tg_{program.forward_row.name}_sum"
    params = [f"const T* __restrict__ tg_in{p}" for p in range(len(modes))]
    loads = "".join(f"T in{p} = tg_in{p}[{'tg_idx' if mode == 'f' else '0'}]; "
                    for p, mode in enumerate(modes))
    params += ["T* __restrict__ tg_out", "long long tg_size"]
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
extern "C" __global__ void {name}({", ".join(params)}{program.constant_params}) {{
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
