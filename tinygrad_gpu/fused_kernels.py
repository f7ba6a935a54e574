"""One-launch GPU kernels for fused programs (tg.fuse) with a matrix product at the head or a
sum at the tail.

A Linear layer with its bias and activation, traced by tg.fuse, is a product z = a @ b (or
a @ b.T) and a chain out = f(z, e0, e1, ...) whose other operands e_p broadcast to z's shape
(m, n). For small products the GPU forward runs one thread per output element: its dot product,
then the chain. The backward is one block: each thread recomputes z and the chain at its elements
and applies the chain's gradient rules (the gradients for z and for every e_p go to shared
memory); then the block forms a's and b's gradients from z's and sums each e_p's gradient over
the axes it was broadcast along. Larger products, up to the tiled GEMM's limit (tiled_gemm.py),
run forward as that kernel with the chain applied to its sums (z kept for backward), and
backward as one grouped launch: blocks of the tiled GEMM for a's and b's gradients, reading
d(out)/dz * gy where they load it, and blocks summing each e_p's gradient (a bias's). Beyond
that, cuBLAS and the chain's rows (fusion.py). How a program runs is decided once per operand
layout and kept with the program (a plan), so a layer's next call only launches.

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
from .launch import Prepared

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
    return a if a._c_contiguous else cupy_module().ascontiguousarray(a)


def forward_plan(program: Any, a: Any, b: Any, transpose_b: bool, chain_args: list) -> tuple:
    """How the GPU runs the forward of a program with a product at its head, for operands laid
    out as these: ("small", kernel, grid, copy, constants) for one thread per output,
    ("tiled", kernel, grid, copy, constants) for the tiled GEMM, or ("other",) for cuBLAS and
    the chain's row. Decided once per layout (the program fixes the shapes), then kept."""
    key = (a.strides, b.strides, tuple(e.strides for e in chain_args),
           cupy_module().cuda.runtime.getDevice())
    plans = _per_program(program, "forward_plans")
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _forward_plan(program, a, b, transpose_b, chain_args)
    return plan


def _forward_plan(program: Any, a: Any, b: Any, transpose_b: bool, chain_args: list) -> tuple:
    copy = not (a._c_contiguous and b._c_contiguous)
    m, n, k = _product_shape(a, b, transpose_b)
    strides = tuple(_broadcast_strides(e) for e in chain_args)
    if forward_fits(a, b, transpose_b, chain_args):
        kernel = _kernel(program, ("forward", a.dtype.char, transpose_b, (m, n, k), strides))
        return "small", kernel, (min(4096, -(-(m * n) // _THREADS)),), copy, program.constant_args(a.dtype)
    chosen = None if program.reduces else tiled_plan(a, b, transpose_b, chain_args)
    if not chosen:
        return ("other",)
    tile, depth = chosen
    kernel = _kernel(program, ("tiled", a.dtype.char, transpose_b, (m, n, k), strides, tile, depth))
    return "tiled", kernel, (-(-n // tile[1]), -(-m // tile[0])), copy, program.constant_args(a.dtype)


# Sizes and strides are compiled into each kernel (a program is traced per shape anyway): the
# launch passes pointers only, which is most of what a launch costs the host.
def forward(plan: tuple, a: Any, b: Any, chain_args: list, shape: tuple[int, int]) -> Any:
    """out = chain(a @ b (or a @ b.T), *chain_args), of `shape`, in one launch of a "small"
    plan: one thread per output element."""
    _, kernel, grid, copy, constants = plan
    if copy:
        a, b = _contiguous(a), _contiguous(b)
    out = cupy_module().empty(shape, a.dtype)
    kernel(grid, (_THREADS,), (a, b, *chain_args, out, *constants))
    return out


def tiled_forward(plan: tuple, a: Any, b: Any, chain_args: list, shape: tuple[int, int]) -> tuple[Any, Any]:
    """(chain(z, *chain_args), z) for z = a @ b (or a @ b.T), of `shape`, in one launch of a
    "tiled" plan: the tiled GEMM with the chain applied to its sums; z is what backward's rows need."""
    cp = cupy_module()
    _, kernel, grid, copy, constants = plan
    if copy:
        a, b = _contiguous(a), _contiguous(b)
    out, z = cp.empty(shape, a.dtype), cp.empty(shape, a.dtype)
    kernel(grid, (tiled_gemm.THREADS,), (a, b, *chain_args, out, z, *constants))
    return out, z


def tiled_backward(program: Any, inputs: tuple, chain_args: list, gy: Any,
                   needed: tuple[bool, ...]) -> tuple | None:
    """Every input's gradient of a Linear-shaped node, out = chain(z, *e) with z = a @ b.T (or
    a @ b), in one launch: blocks of the tiled GEMM form a's gradient (gz @ b) and b's (gz.T @ a,
    or a.T @ gz), computing gz = d(out)/dz * gy where they read it, and further blocks sum each
    e's gradient over the rows it was broadcast along (a bias), or write it whole. `chain_args`
    are the chain's tensors with the saved product z last. None when the node does not have that
    shape or a product is too large for the tiled kernel (then the chain's row, cuBLAS and the
    engine's sums do it). Decided once per layout of the operands (the program fixes their
    shapes), then launched from the kept plan."""
    ia, ib, _ = program.head
    a, b = inputs[ia], inputs[ib]
    key = (needed, gy.shape, gy.strides, gy.dtype.char, a.strides, b.strides,
           tuple(e.strides for e in chain_args), cupy_module().cuda.runtime.getDevice())
    plans = _per_program(program, "tiled_backward_plans")
    plan = plans.get(key, False)
    if plan is False:
        plan = plans[key] = _tiled_backward_plan(program, inputs, chain_args, gy, needed)
    if plan is None:
        return None
    kernel, blocks, shapes, copy, constants = plan
    cp = cupy_module()
    if copy:
        a, b = _contiguous(a), _contiguous(b)
    dtype = gy.dtype
    grads: list[Any] = [None] * len(needed)
    outputs = []
    for i, shape in shapes:
        grads[i] = out = cp.empty(shape, dtype)
        outputs.append(out)
    kernel((blocks,), (tiled_gemm.THREADS,), (a, b, *chain_args, gy, *outputs, *constants))
    return tuple(grads)


def _tiled_backward_plan(program: Any, inputs: tuple, chain_args: list, gy: Any,
                         needed: tuple[bool, ...]) -> tuple | None:
    """(kernel, blocks, (input index, gradient shape) in kernel order, whether a or b needs a
    contiguous copy, constants) for tiled_backward, or None when it does not apply."""
    ia, ib, transpose_b = program.head
    a, b, z = inputs[ia], inputs[ib], chain_args[-1]
    dtype = a.dtype
    if program.reduces or dtype.char not in "fd" or b.dtype != dtype or gy.dtype != dtype \
            or z.dtype != dtype or a.ndim != 2 or b.ndim != 2 or gy.ndim > 2:
        return None
    (m, k), n = a.shape, b.shape[0] if transpose_b else b.shape[1]
    if z.shape != (m, n) or not z._c_contiguous or gy.shape not in ((m, n), (1, n), (n,), ()) \
            or m * n * k == 0:
        return None
    chain = program.chain_tensors
    es = chain_args[:-1]
    chain_needed = tuple(needed[p] for p in chain)
    kinds = []  # per e whose gradient is needed: summed over the rows ("rows") or whole ("whole")
    for e, need in zip(es, chain_needed):
        if e.dtype != dtype or e.ndim > 2:
            return None
        if need:
            if e.shape in ((n,), (1, n)):
                kinds.append("rows")
            elif e.shape == (m, n):
                kinds.append("whole")
            else:
                return None
    need_a, need_b = needed[ia], needed[ib]
    plan_a = tiled_gemm.plan(m, k, n, dtype.itemsize) if need_a else None
    b_shape = (n, k) if transpose_b else (k, n)
    plan_b = tiled_gemm.plan(*b_shape, m, dtype.itemsize) if need_b else None
    if (need_a and plan_a is None) or (need_b and plan_b is None):
        return None
    strides = tuple(_broadcast_strides(e) for e in (*es, gy))
    kernel, blocks = _kernel(program, ("tiled_backward", dtype.char, transpose_b, (m, n, k), strides,
                                       plan_a, plan_b, chain_needed, tuple(kinds)))
    shapes = ([(ia, (m, k))] if need_a else []) + ([(ib, b_shape)] if need_b else [])
    shapes += [(p, e.shape) for p, e, need in zip(chain, es, chain_needed) if need]
    copy = not (a._c_contiguous and b._c_contiguous)
    return kernel, blocks, shapes, copy, program.constant_args(dtype)


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


def _per_program(program: Any, name: str) -> LRU:
    """The program's own cache `name` (compiled kernels, launch plans), made on first use."""
    cache = program.__dict__.get(name)
    if cache is None:
        cache = program.__dict__[name] = LRU(KERNELS_PER_PROGRAM)
    return cache


def _kernel(program: Any, key: tuple) -> Any:
    kernels = _per_program(program, "gpu_kernels")
    kernel = kernels.get(key)
    if kernel is None:
        build = {"forward": _forward_source, "tiled": _tiled_source, "backward": _backward_source,
                 "tiled_backward": _tiled_backward_source, "sum": _sum_source}[key[0]]
        source, name, *extra = build(program, *key[1:])
        kernel = Prepared.kernel(source, name)
        kernel = kernels[key] = (kernel, *extra) if extra else kernel
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
    itemsize = np.dtype(dtype_char).itemsize
    prelude = (f"{_constants(sizes, strides, [f'tg_e{p}' for p in range(count)])}\n  const long long "
               f"tg_sa0 = {k}, tg_sa1 = 1, tg_sb0 = {b_strides[0]}, tg_sb1 = {b_strides[1]};")
    source = tiled_gemm.kernel_source(name, itemsize, ", ".join(params) + program.constant_params, (bm, bn),
                                      tiled_gemm.loop_source(bm, bn, depth, True, transpose_b, itemsize),
                                      store, prelude)
    return source, name


def _gemm_role(chosen: tuple, product: tuple[int, int, int], a_read: tuple[str, bool],
               b_read: tuple[str, bool], out: str, itemsize: int) -> tuple[str, int, int]:
    """(code, blocks, shared elements) of the blocks of a grouped launch that compute the tiled
    product `out` (m x n) = A (m x k) @ B (k x n), each operand read by (expression, whether its
    k axis is the contiguous one): the code runs when tg_block is below its block count, and
    otherwise takes that count off tg_block."""
    (bm, bn), bk = chosen
    m, n, k = product
    across = -(-n // bn)
    count = across * -(-m // bm)
    loop = tiled_gemm.loop_source(bm, bn, bk, a_read[1], b_read[1], itemsize, a_at=a_read[0],
                                  b_at=b_read[0], declare_shared=False)
    code = f"""
  if (tg_block < {count}) {{
    const int tg_m = {m}, tg_n = {n}, tg_k = {k};
    const int tg_bx = tg_block % {across}, tg_by = tg_block / {across};
    {loop}
    {tiled_gemm.store_source(bm, bn, f"{out}[tg_idx] = tg_z;")}
    return;
  }}
  tg_block -= {count};"""
    return code, count, tiled_gemm.shared_size(bm, bn, bk)


def _tiled_backward_source(program: Any, dtype_char: str, transpose_b: bool, sizes: tuple, strides: tuple,
                           plan_a: tuple | None, plan_b: tuple | None, chain_needed: tuple[bool, ...],
                           kinds: tuple[str, ...]) -> tuple[str, str, int]:
    rows, cols, depth = sizes
    itemsize = np.dtype(dtype_char).itemsize
    count = len(program.chain_inputs) - 1
    wanted = [p for p in range(count) if chain_needed[p]]
    name = f"tg_{program.forward_row.name}_tiled_bwd"
    constants = " ".join(f"constexpr long long {e}_si = {si}, {e}_sj = {sj};" for e, (si, sj)
                         in zip([f"tg_e{p}" for p in range(count)] + ["tg_gy"], strides))
    inputs = [f"const T* __restrict__ tg_e{p}" for p in range(count)]
    inputs += ["const T* __restrict__ tg_zs", "const T* __restrict__ tg_gy"]
    constant_names = "".join(f", {param.split()[-1]}" for param in program.constant_params.split(",")[1:])
    gradient, _ = program.gradient_source()
    fields = ["gz"] + [f"ge{p}" for p in wanted]
    results = f"tg_out.gz = g_in{count}; " + "".join(f"tg_out.ge{p} = g_in{p}; " for p in wanted)
    chain_call = ("tg_chain({i}, {j}, " + "".join(f"tg_e{p}, " for p in range(count))
                  + "tg_zs, tg_gy" + constant_names + ")")
    params = ["const T* __restrict__ tg_in_x", "const T* __restrict__ tg_in_w"] + inputs
    params += (["T* __restrict__ tg_gx"] if plan_a else []) + (["T* __restrict__ tg_gw"] if plan_b else [])
    params += [f"T* __restrict__ tg_ge{p}" for p in wanted]
    roles, blocks, shared = [], 0, 0
    # x's gradient (rows x depth) is gz @ w (w read as cols x depth), summed over the columns;
    # w's is gz.T @ x (cols x depth) or, for x @ w, x.T @ gz (depth x cols), summed over the rows
    gz_rows = chain_call.format(i="{row}", j="{inner}") + ".gz"
    w_at = ("tg_in_w[(long long){inner} * %d + {col}]" if transpose_b
            else "tg_in_w[(long long){col} * %d + {inner}]") % (depth if transpose_b else cols)
    x_at = f"tg_in_x[(long long){{inner}} * {depth} + {{col}}]"
    x_t_at = f"tg_in_x[(long long){{inner}} * {depth} + {{row}}]"
    roles_gemm = [(plan_a, (rows, depth, cols), (gz_rows, True), (w_at, not transpose_b), "tg_gx")]
    if transpose_b:
        gz_columns = chain_call.format(i="{inner}", j="{row}") + ".gz"
        roles_gemm.append((plan_b, (cols, depth, rows), (gz_columns, False), (x_at, False), "tg_gw"))
    else:
        gz_as_b = chain_call.format(i="{inner}", j="{col}") + ".gz"
        roles_gemm.append((plan_b, (depth, cols, rows), (x_t_at, False), (gz_as_b, False), "tg_gw"))
    for chosen, product, a_read, b_read, out in roles_gemm:
        if chosen:
            code, count_g, size = _gemm_role(chosen, product, a_read, b_read, out, itemsize)
            roles.append(code)
            blocks, shared = blocks + count_g, max(shared, size)
    threads = tiled_gemm.THREADS
    for p, kind in zip(wanted, kinds):
        if kind == "rows":  # a bias: one thread per column adds its rows in order
            count_e = -(-cols // threads)
            body = f"""
    int tg_j = tg_block * {threads} + threadIdx.x;
    if (tg_j < {cols}) {{
      T tg_s = {chain_call.format(i="0", j="tg_j")}.ge{p};
      for (int tg_i = 1; tg_i < {rows}; ++tg_i) tg_s += {chain_call.format(i="tg_i", j="tg_j")}.ge{p};
      tg_ge{p}[tg_j] = tg_s;
    }}"""
        else:
            count_e = -(-(rows * cols) // threads)
            at = chain_call.format(i=f"(int)(tg_e / {cols})", j=f"(int)(tg_e % {cols})")
            body = f"""
    long long tg_e = (long long)tg_block * {threads} + threadIdx.x;
    if (tg_e < {rows * cols}) tg_ge{p}[tg_e] = {at}.ge{p};"""
        roles.append(f"""
  if (tg_block < {count_e}) {{{body}
    return;
  }}
  tg_block -= {count_e};""")
        blocks += count_e
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
{constants}
struct tg_grads {{ {" ".join(f"T {f};" for f in fields)} }};
__device__ __forceinline__ tg_grads
tg_chain(int tg_i, int tg_j, {", ".join(inputs)}{program.constant_params}) {{
  T tg_z = tg_zs[(long long)tg_i * {cols} + tg_j];
  {_load_chain(program, count)}
  T gy = tg_gy[tg_i * tg_gy_si + tg_j * tg_gy_sj];
  {gradient}
  tg_grads tg_out; {results}
  return tg_out;
}}
extern "C" __global__ void __launch_bounds__({threads})
{name}({", ".join(params)}{program.constant_params}) {{
  {tiled_gemm.shared_declaration(max(shared, 1))}
  int tg_block = blockIdx.x;
  {"".join(roles)}
}}
"""
    return source, name, blocks


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
            if e.shape != shape or not e._c_contiguous:
                return False
    return 0 < math.prod(shape) <= REDUCE_SIZE


def chain_sum(program: Any, chain_args: list, seed_needed: tuple[bool, ...] | None = None) -> tuple:
    """(sum of the chain over all elements as a 0-d array, the chain's output shape, the seed
    gradients or None), one launch. With `seed_needed` (which chain inputs need a gradient) the
    launch also writes those gradients for a backward starting here from gy = 1, as the backward
    row would compute them; None when an input needing one is 0-d (its gradient is a sum)."""
    shape = next((e.shape for e in chain_args if e.ndim), ())
    modes = tuple("z" if e.ndim == 0 else "f" for e in chain_args)
    outputs: tuple = ()
    slot: list = []
    if seed_needed is not None and not any(n and m == "z" for n, m in zip(seed_needed, modes)):
        outputs, slot = program.gradient_outputs(seed_needed)
    kernel = _kernel(program, ("sum", chain_args[0].dtype.char, modes, outputs))
    cp = cupy_module()
    dtype = chain_args[0].dtype
    out = cp.empty((), dtype)
    written = [cp.empty(shape, dtype) for _ in outputs]
    seed = (K.as_scalar(dtype, 1),) if outputs else ()
    kernel((1,), (_THREADS,), (*chain_args, out, np.int64(math.prod(shape)), *written, *seed,
                               *program.constant_args(dtype)))
    return out, shape, [written[i] for i in slot] if outputs else None


def _sum_source(program: Any, dtype_char: str, modes: tuple[str, ...],
                outputs: tuple = ()) -> tuple[str, str]:
    suffix = "".join(f"_g{k}" for k in outputs)
    name = f"tg_{program.forward_row.name}_sum{suffix}"
    params = [f"const T* __restrict__ tg_in{p}" for p in range(len(modes))]
    loads = "".join(f"T in{p} = tg_in{p}[{'tg_idx' if mode == 'f' else '0'}]; "
                    for p, mode in enumerate(modes))
    params += ["T* __restrict__ tg_out", "long long tg_size"]
    params += [f"T* __restrict__ tg_g{k}" for k in outputs]
    gradients = ""
    if outputs:  # the backward row's statements, with gy the seed's 1 (a parameter: never folded)
        params.append("T gy")
        gradients = program.gradient_statements[0] + "".join(f"tg_g{k}[tg_idx] = g_in{k}; " for k in outputs)
    source = f"""
typedef {K._ctype(np.dtype(dtype_char))[0]} T;
extern "C" __global__ void {name}({", ".join(params)}{program.constant_params}) {{
  T tg_acc = (T)0;
  for (long long tg_idx = threadIdx.x; tg_idx < tg_size; tg_idx += blockDim.x) {{
    {loads}
    {program.values_source()}
    tg_acc += v{program.output};
    {gradients}
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
