"""A shared-memory tiled GEMM of our own, for products too big for one thread per output and too
small to be worth cuBLAS's host cost.

cuBLAS spends 13-40 us of host time per call (its heuristics, then often a split-K pair of
kernels); a RawKernel launch costs a third of that. For the products of classifier-sized layers
(up to some 10^7 multiply-adds) a tiled kernel runs in a few microseconds on
the GPU, so the step is cheaper end to end. The same tile loop is the head of fused Linear
kernels (fused_kernels.py), which apply the bias and activation to the finished sums before
storing them.

Each block computes a BM x BN tile of C = A @ B with 256 threads. The threads form KG groups
that split each shared slice of k between them (so a small product still keeps every thread
busy); in a group, a thread owns a 4 x 4 patch of the tile and reads two 4-vectors from shared
memory per 16 multiply-adds, while the next step's tiles arrive in registers. At the end the
groups' partial tiles meet in shared memory and are added in group order (a fixed order: the
result does not depend on timing), and each thread finishes the elements t, t + 256, ... so the
stores are coalesced. A and B are read through element strides, so transposed views need no
copy; each tile load walks the operand's contiguous axis across neighbouring threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import cupy_module
from .caches import LRU
from .launch import Prepared

# m*n*k up to this goes to the tiled kernel; cuBLAS beyond, where its faster kernels (split over
# more blocks, pipelined) save more GPU time than its calls cost on the host
TILED_WORK = 1 << 26
MAX_ROWS = 65535 * 16  # a grid has at most 65535 rows of blocks (of at least 16 rows each)
# Each step of the k loop waits for its tiles to arrive from memory, so a step loads a deep slice
# of k: up to 128, within SHARED_BYTES of shared memory. Products that would need more than
# MAX_STEPS steps per block go to cuBLAS (it splits k over more blocks).
DEPTHS = (128, 64, 32, 16)
SHARED_BYTES = 48 * 1024  # what a block may use without opting in
MAX_STEPS = 8
THREADS = 256
# (BM, BN) tile shapes -> (KG, thread rows, thread columns) of the 4 x 4 patches: square tiles
# for most products, flat ones for products with few rows or columns
LAYOUTS = {(64, 64): (1, 16, 16), (32, 32): (4, 8, 8), (16, 64): (4, 4, 16), (64, 16): (4, 16, 4)}
TILES = tuple(LAYOUTS)

# compiled kernels: one per dtype, tile, depth and operand layout (at most 2 x 4 x 4 x 4)
_kernels: dict[tuple, Any] = {}
# (tile, depth) per product shape and device, least recently used dropped first
PLANS = 256
_plans = LRU(PLANS)
_sm_count: dict[int, int] = {}


def tile_for(m: int, n: int) -> tuple[int, int]:
    """The tile shape for an m x n product: flat when one side is at most 16, else 64 x 64 when
    both sides are that long and that still gives every multiprocessor two blocks, 32 x 32 (more,
    smaller blocks) otherwise."""
    if m <= 16:
        return 16, 64
    if n <= 16:
        return 64, 16
    if min(m, n) < 64:  # a 64-wide tile would be mostly padding
        return 32, 32
    return (64, 64) if -(-m // 64) * -(-n // 64) >= 2 * multiprocessors() else (32, 32)


def multiprocessors() -> int:
    """How many streaming multiprocessors the current GPU has."""
    cp = cupy_module()
    device = cp.cuda.runtime.getDevice()
    sms = _sm_count.get(device)
    if sms is None:
        sms = _sm_count[device] = cp.cuda.Device(device).attributes["MultiProcessorCount"]
    return sms


def depth_for(tile: tuple[int, int], k: int, itemsize: int) -> int:
    """The k extent of the shared tiles: the deepest that fits in SHARED_BYTES, no deeper than k needs."""
    fitting = [d for d in DEPTHS if shared_size(*tile, d) * itemsize <= SHARED_BYTES]
    return next((d for d in reversed(fitting) if d >= k), fitting[0])


def plan(m: int, n: int, k: int, itemsize: int) -> tuple[tuple[int, int], int] | None:
    """(tile, depth) for an m x n x k product, or None when it is cuBLAS's: more than TILED_WORK
    multiply-adds, more than MAX_STEPS steps of the k loop, or too many rows for the grid.
    Decided once per shape and device (a step asks for the same few shapes every time)."""
    if m * n * k > TILED_WORK or m > MAX_ROWS:
        return None
    key = (m, n, k, itemsize, cupy_module().cuda.runtime.getDevice())
    found = _plans.get(key, False)
    if found is False:
        tile = tile_for(m, n)
        depth = depth_for(tile, k, itemsize)
        found = _plans[key] = (tile, depth) if k <= MAX_STEPS * depth else None
    return found


PAD = 4  # extra elements per shared row: rows stay 16-byte aligned for vector reads


def shared_size(bm: int, bn: int, bk: int) -> int:
    """Elements of shared memory: the two tiles of a step, or (after the loop) the partial tiles."""
    return max(bk * (bm + PAD) + bk * (bn + PAD), LAYOUTS[(bm, bn)][0] * bm * bn)


STRIDED_A = "tg_a[(long long){row} * tg_sa0 + (long long){inner} * tg_sa1]"
STRIDED_B = "tg_b[(long long){inner} * tg_sb0 + (long long){col} * tg_sb1]"


def shared_declaration(size: int) -> str:
    """The shared buffer the loop works in, of `size` elements (at least `shared_size`'s)."""
    return f"__shared__ __align__(16) T tg_smem[{size}];"


def loop_source(bm: int, bn: int, bk: int, a_rows_contiguous: bool, b_rows_contiguous: bool,
                itemsize: int, a_at: str = STRIDED_A, b_at: str = STRIDED_B,
                declare_shared: bool = True) -> str:
    """CUDA statements that leave each group's partial sums of the tile in shared memory, for
    `store_source` to finish. They read names the enclosing code defines: tg_m, tg_n, tg_k, the
    tile's block coordinates tg_bx (columns) and tg_by (rows), and what the operand reads use:
    by default tg_a, tg_b (T*) with element strides tg_sa0, tg_sa1, tg_sb0, tg_sb1 (constants or
    parameters); `a_at` / `b_at` replace those reads by any expression of {row}, {inner} / {inner},
    {col} (e.g. a gradient computed where it is read). `*_rows_contiguous`: the operand's k axis
    (A's columns, B's rows) is its contiguous one, so tile loads run along it. Without
    `declare_shared`, the enclosing kernel declares tg_smem (shared_declaration).

    The next step's tiles are fetched into registers while this step's are multiplied, so the
    wait for memory overlaps the arithmetic."""
    groups, rows, cols = LAYOUTS[(bm, bn)]
    part = bk // groups
    a_per, b_per = bm * bk // THREADS, bk * bn // THREADS
    # A's tile is bm x bk, B's is bk x bn; consecutive threads take consecutive addresses
    a_pos = ("int tg_r = tg_t / {bk}, tg_q = tg_t % {bk};" if a_rows_contiguous
             else "int tg_r = tg_t % {bm}, tg_q = tg_t / {bm};").format(bk=bk, bm=bm)
    b_pos = ("int tg_q = tg_t % {bk}, tg_c = tg_t / {bk};" if b_rows_contiguous
             else "int tg_q = tg_t / {bn}, tg_c = tg_t % {bn};").format(bk=bk, bn=bn)

    def fetch(k0: str) -> str:
        return f"""
    #pragma unroll
    for (int tg_u = 0; tg_u < {a_per}; ++tg_u) {{
      int tg_t = threadIdx.x + tg_u * {THREADS}; {a_pos}
      int tg_row = tg_r0 + tg_r, tg_inner = {k0} + tg_q;
      tg_pa[tg_u] = (tg_row < tg_m && tg_inner < tg_k) ? {a_at.format(row="tg_row", inner="tg_inner")} : (T)0;
    }}
    #pragma unroll
    for (int tg_u = 0; tg_u < {b_per}; ++tg_u) {{
      int tg_t = threadIdx.x + tg_u * {THREADS}; {b_pos}
      int tg_inner = {k0} + tg_q, tg_col = tg_c0 + tg_c;
      tg_pb[tg_u] = (tg_inner < tg_k && tg_col < tg_n) ? {b_at.format(inner="tg_inner", col="tg_col")} : (T)0;
    }}"""

    if itemsize == 4:  # one 16-byte shared read per four values
        frag = """
      float4 tg_xv = *reinterpret_cast<const float4*>(&tg_as[tg_q][tg_ty * 4]);
      float4 tg_yv = *reinterpret_cast<const float4*>(&tg_bs[tg_q][tg_tx * 4]);
      T tg_x[4] = {tg_xv.x, tg_xv.y, tg_xv.z, tg_xv.w}, tg_y[4] = {tg_yv.x, tg_yv.y, tg_yv.z, tg_yv.w};"""
    else:
        frag = """
      T tg_x[4], tg_y[4];
      #pragma unroll
      for (int tg_ii = 0; tg_ii < 4; ++tg_ii) tg_x[tg_ii] = tg_as[tg_q][tg_ty * 4 + tg_ii];
      #pragma unroll
      for (int tg_jj = 0; tg_jj < 4; ++tg_jj) tg_y[tg_jj] = tg_bs[tg_q][tg_tx * 4 + tg_jj];"""
    return f"""
  {shared_declaration(shared_size(bm, bn, bk)) if declare_shared else ""}
  T (*tg_as)[{bm + PAD}] = reinterpret_cast<T (*)[{bm + PAD}]>(tg_smem);
  T (*tg_bs)[{bn + PAD}] = reinterpret_cast<T (*)[{bn + PAD}]>(tg_smem + {bk * (bm + PAD)});
  const int tg_group = threadIdx.x / {rows * cols}, tg_lane = threadIdx.x % {rows * cols};
  const int tg_tx = tg_lane % {cols}, tg_ty = tg_lane / {cols};
  const int tg_r0 = tg_by * {bm}, tg_c0 = tg_bx * {bn};
  T tg_acc[4][4];
  #pragma unroll
  for (int tg_ii = 0; tg_ii < 4; ++tg_ii)
    #pragma unroll
    for (int tg_jj = 0; tg_jj < 4; ++tg_jj) tg_acc[tg_ii][tg_jj] = (T)0;
  T tg_pa[{a_per}], tg_pb[{b_per}];
  {fetch("0")}
  for (int tg_k0 = 0; tg_k0 < tg_k; tg_k0 += {bk}) {{
    #pragma unroll
    for (int tg_u = 0; tg_u < {a_per}; ++tg_u) {{
      int tg_t = threadIdx.x + tg_u * {THREADS}; {a_pos}
      tg_as[tg_q][tg_r] = tg_pa[tg_u];
    }}
    #pragma unroll
    for (int tg_u = 0; tg_u < {b_per}; ++tg_u) {{
      int tg_t = threadIdx.x + tg_u * {THREADS}; {b_pos}
      tg_bs[tg_q][tg_c] = tg_pb[tg_u];
    }}
    __syncthreads();
    if (tg_k0 + {bk} < tg_k) {{ {fetch(f"(tg_k0 + {bk})")}
    }}
    #pragma unroll 8
    for (int tg_q = tg_group * {part}; tg_q < (tg_group + 1) * {part}; ++tg_q) {{{frag}
      #pragma unroll
      for (int tg_ii = 0; tg_ii < 4; ++tg_ii)
        #pragma unroll
        for (int tg_jj = 0; tg_jj < 4; ++tg_jj) tg_acc[tg_ii][tg_jj] += tg_x[tg_ii] * tg_y[tg_jj];
    }}
    __syncthreads();
  }}
  #pragma unroll
  for (int tg_ii = 0; tg_ii < 4; ++tg_ii)
    #pragma unroll
    for (int tg_jj = 0; tg_jj < 4; ++tg_jj)
      tg_smem[tg_group * {bm * bn} + (tg_ty * 4 + tg_ii) * {bn} + tg_tx * 4 + tg_jj] = tg_acc[tg_ii][tg_jj];
  __syncthreads();"""


def store_source(bm: int, bn: int, body: str) -> str:
    """CUDA statements running `body` for each element of the tile inside the product, with tg_i,
    tg_j its row and column, tg_z its sum (the groups' partial sums added in order) and
    tg_idx = tg_i * tg_n + tg_j."""
    groups = LAYOUTS[(bm, bn)][0]
    rest = "".join(f" tg_z += tg_smem[{g * bm * bn} + tg_e];" for g in range(1, groups))
    return f"""
  for (int tg_e = threadIdx.x; tg_e < {bm * bn}; tg_e += {THREADS}) {{
    int tg_i = tg_r0 + tg_e / {bn}, tg_j = tg_c0 + tg_e % {bn};
    if (tg_i < tg_m && tg_j < tg_n) {{
      T tg_z = tg_smem[tg_e];{rest}
      long long tg_idx = (long long)tg_i * tg_n + tg_j;
      {body}
    }}
  }}"""


def rows_contiguous(x: Any, inner_axis: int) -> bool:
    """Whether matrix x steps by one element along `inner_axis` (the product's k axis)."""
    return x.strides[inner_axis] == x.itemsize or x.shape[inner_axis] == 1


def plan_for(a: Any, b: Any) -> tuple[tuple[int, int], int] | None:
    """The plan for a @ b (2-D, one float dtype), or None when it goes to cuBLAS (also for
    negative strides, which cuBLAS's path copies away)."""
    if min(a.strides) < 0 or min(b.strides) < 0:
        return None
    m, k = a.shape
    return plan(m, b.shape[1], k, a.itemsize)


# The ways a kernel stores C: as the m x n matrix, or as n / tg_p images of m x tg_p (column j is
# position j % tg_p of image j / tg_p: the (N, C, H, W) output of a convolution whose columns are
# its windows image by image), with tg_bias[i] added to row i and then ReLU (the table's row:
# NaN passes) where the store's name says so.
_IMAGE_AT = "tg_out[(tg_img * tg_m + tg_i) * tg_p + (tg_j - tg_img * tg_p)]"
_RELU = "tg_z = (tg_z > (T)0 || tg_z != tg_z) ? tg_z : (T)0;"


def _image_store(bias: bool, relu: bool) -> tuple[str, str]:
    """(extra parameters, store body) of an images store, with or without bias and ReLU."""
    return ((", const T* __restrict__ tg_bias" if bias else "") + ", long long tg_p",
            ("tg_z += tg_bias[tg_i]; " if bias else "") + (_RELU if relu else "")
            + f" long long tg_img = tg_j / tg_p; {_IMAGE_AT} = tg_z;")


_STORES = {"matrix": ("", "tg_out[tg_idx] = tg_z;"),
           **{"images" + "_bias" * bias + "_relu" * relu: _image_store(bias, relu)
              for bias in (False, True) for relu in (False, True)}}


def kernel_source(name: str, itemsize: int, params: str, tile: tuple[int, int], loop: str, store: str,
                  prelude: str = "", head: str = "") -> str:
    """The CUDA source of a kernel whose blocks each compute one tile of a product: T typedef'd
    for `itemsize`, then `head` (device functions), and in the kernel `prelude` (statements the
    loop reads), the `loop` (loop_source) and the store of each element by `store` (store_source)."""
    return f"""
typedef {"float" if itemsize == 4 else "double"} T;
{head}
extern "C" __global__ void __launch_bounds__({THREADS}) {name}({params}) {{
  {prelude}
  const int tg_bx = blockIdx.x, tg_by = blockIdx.y;
  {loop}
  {store_source(*tile, store)}
}}
"""


def _kernel(dtype: Any, tile: tuple[int, int], bk: int, a_rows: bool, b_rows: bool,
            store: str = "matrix") -> Any:
    key = (dtype.char, tile, bk, a_rows, b_rows, store)
    kernel = _kernels.get(key)
    if kernel is None:
        bm, bn = tile
        suffix = "" if store == "matrix" else "_" + store
        name = f"tg_tiled_gemm_{bm}x{bn}x{bk}_{'r' if a_rows else 'c'}{'r' if b_rows else 'c'}{suffix}"
        params, body = _STORES[store]
        source = kernel_source(
            name, dtype.itemsize,
            "const T* __restrict__ tg_a, const T* __restrict__ tg_b, T* __restrict__ tg_out, int tg_m, "
            "int tg_n, int tg_k, long long tg_sa0, long long tg_sa1, long long tg_sb0, long long tg_sb1"
            + params, tile, loop_source(bm, bn, bk, a_rows, b_rows, dtype.itemsize), body)
        kernel = _kernels[key] = Prepared.kernel(source, name)
    return kernel


def _launch(a: Any, b: Any, out: Any, chosen: tuple | None, store: str, extra: tuple) -> Any:
    """Run the tiled product of a and b into `out` (storing as `store` says, with `extra` arguments)."""
    m, k = a.shape
    n = b.shape[1]
    if out.size == 0:
        return out
    size = a.itemsize
    if chosen is None:
        tile = tile_for(m, n)
        chosen = (tile, depth_for(tile, k, size))
    tile, depth = chosen
    kernel = _kernel(a.dtype, tile, depth, rows_contiguous(a, 1), rows_contiguous(b, 0), store)
    grid = (-(-n // tile[1]), -(-m // tile[0]))
    kernel(grid, (THREADS,), (a, b, out, np.int32(m), np.int32(n), np.int32(k),
                              np.int64(a.strides[0] // size), np.int64(a.strides[1] // size),
                              np.int64(b.strides[0] // size), np.int64(b.strides[1] // size)) + extra)
    return out


def gemm(a: Any, b: Any, chosen: tuple[tuple[int, int], int] | None = None) -> Any:
    """a @ b for 2-D float32/float64 CuPy arrays of one dtype (non-negative strides), as a new
    C-contiguous array, in one launch; `chosen` is plan_for(a, b) when the caller has it."""
    out = cupy_module().empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return _launch(a, b, out, chosen, "matrix", ())


def gemm_images(a: Any, b: Any, positions: int, bias: Any = None, relu: bool = False,
                chosen: tuple[tuple[int, int], int] | None = None) -> Any:
    """a @ b (m x n) stored as n / positions images of (m, positions), i.e. C's column j lands at
    position j % positions of image j // positions, plus bias[i] on row i when a bias is given and
    then ReLU when asked: a convolution's (N, C_out, H*W) output from its weights and windows, in
    one launch."""
    m, n = a.shape[0], b.shape[1]
    out = cupy_module().empty((n // positions, m, positions), dtype=a.dtype)
    store = "images" + "_bias" * (bias is not None) + "_relu" * relu
    extra = (np.int64(positions),) if bias is None else (bias, np.int64(positions))
    return _launch(a, b, out, chosen, store, extra)
