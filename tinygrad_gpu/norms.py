"""Layer normalisation over the last axis as one primitive: the op under nn.functional.layer_norm.

`LayerNorm` takes a (rows, n) array and normalises each row: y = (x - mean) * rstd * w + b with
rstd = 1 / sqrt(var + eps) and the biased variance, computed as the mean of (x - mean)² (two
passes over the row, as PyTorch does, not E[x²] - E[x]²). Each row's mean and rstd are kept for
backward, whose input gradient is gx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with
g = gy * w and xhat = (x - mean) * rstd; the weight and bias gradients are column sums.

On the CPU both directions are the NumPy twins below. On the GPU the forward is one launch that
reads x once and writes y once (a row stays in registers, or is read again from cache), the
input gradient one launch, and the weight and bias gradients one more (two for many rows: per
chunk of rows, then the chunks added).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from .backend import array_module, device_of
from .caches import LRU
from .function import Function
from .launch import Prepared
from .memory import out_of_memory


class LayerNorm(Function):
    """(rows, n) -> (rows, n): each row normalised to mean 0 and variance 1, then scaled by
    `weight` and shifted by `bias` (each an (n,) array, or None)."""

    def forward(self, x, weight, bias, eps):
        xp = array_module(device_of(x))
        x = xp.ascontiguousarray(x)
        weight = None if weight is None else xp.ascontiguousarray(weight)
        bias = None if bias is None else xp.ascontiguousarray(bias)
        if xp is np:
            with K.silenced_numpy():  # inf and NaN follow IEEE rules quietly, as on the GPU
                y, mean, rstd = layer_norm_twin(x, weight, bias, eps)
        else:
            y, mean, rstd = _gpu_forward(x, weight, bias, eps)
        self.x, self.weight, self.mean, self.rstd, self.eps = x, weight, mean, rstd, eps
        self.has_bias = bias is not None
        return y

    def backward(self, gy):
        need_x, need_w, need_b = self.needs_input_grad
        need_w = need_w and self.weight is not None
        need_b = need_b and self.has_bias
        xp = array_module(device_of(gy))
        gy = xp.ascontiguousarray(gy)
        if xp is np:
            with K.silenced_numpy():
                return layer_norm_backward_twin(self.x, self.weight, self.mean, self.rstd, gy,
                                                need_x, need_w, need_b)
        return _gpu_backward(self.x, self.weight, self.mean, self.rstd, gy, need_x, need_w, need_b)

    def backward_graph(self, gy: Any) -> tuple:
        """The same gradients in closed form, as recorded tensor ops (differentiable again)."""
        x, weight, bias = self.inputs
        need_x, need_w, need_b = self.needs_input_grad
        mean = x.mean(axis=1, keepdims=True)
        centered = x - mean
        rstd = 1.0 / ((centered * centered).mean(axis=1, keepdims=True) + self.eps).sqrt()
        xhat = centered * rstd
        gx = gw = gb = None
        if need_x:
            g = gy * weight if weight is not None else gy
            gx = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
        if need_w and weight is not None:
            gw = (gy * xhat).sum(axis=0)
        if need_b and bias is not None:
            gb = gy.sum(axis=0)
        return gx, gw, gb


# ---- the NumPy twins: the formulas, and the reference for the GPU kernels ----------------------
def _row_mean(a: np.ndarray) -> np.ndarray:
    """Each row's mean, kept as a column (np.mean's float32 sum, without its warning for n = 0)."""
    return a.sum(axis=1, keepdims=True) / a.dtype.type(a.shape[1])


def layer_norm_twin(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None,
                    eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, and per row the mean and rstd, of a (rows, n) array (float32 stays float32)."""
    mean = _row_mean(x)
    centered = x - mean
    var = _row_mean(centered * centered)
    rstd = x.dtype.type(1) / np.sqrt(var + x.dtype.type(eps))
    y = centered  # in place from here on: the same values, fewer passes over memory
    y *= rstd
    if weight is not None:
        y *= weight
    if bias is not None:
        y += bias
    return y, mean.reshape(-1), rstd.reshape(-1)


def layer_norm_backward_twin(x: np.ndarray, weight: np.ndarray | None, mean: np.ndarray, rstd: np.ndarray,
                             gy: np.ndarray, need_x: bool = True, need_w: bool = True,
                             need_b: bool = True) -> tuple:
    """(gx, gw, gb), each None where not asked for (or where there is no weight)."""
    mean, rstd = mean[:, None], rstd[:, None]
    xhat = (x - mean) * rstd
    gx = gw = gb = None
    if need_x:
        g = gy * weight if weight is not None else gy
        gx = rstd * (g - _row_mean(g) - xhat * _row_mean(g * xhat))
    if need_w and weight is not None:
        gw = (gy * xhat).sum(axis=0)
    if need_b:
        gb = gy.sum(axis=0)
    return gx, gw, gb


# ---- the GPU kernels ----------------------------------------------------------------------------
# A row of n elements is handled by `threads` threads: one warp for rows up to WARP_ROW_MAX, else
# a whole block. Thread t loads vectors t, t + threads, ... of the row (consecutive threads,
# consecutive addresses), 16 bytes at a time (float4 / double2) when n and every pointer allow it.
# The sizes are compiled in, so the loops over a thread's `items` unroll and, when they fit
# (CACHE_ELEMENTS a thread), the loaded values stay in registers between the passes over the row;
# longer rows are read again from L1/L2, so memory still sees one read of x.
_HEADER = r"""
typedef {ctype} T; typedef {vtype} V;
constexpr long long n = {n};                  // elements per row
constexpr long long vectors = {vectors};      // loads per row: n / vec
constexpr int vec = {vec};                    // elements per load (V holds vec T)
constexpr int threads = {threads};            // threads per row: 32 (one warp) or the whole block
constexpr int items = {items};                // loads per thread: ceil(vectors / threads)
constexpr bool cached = {cached};             // a thread's loads stay in registers between passes
constexpr bool has_weight = {has_weight}, has_bias = {has_bias};

__device__ __forceinline__ T& at(V& v, int l) {{ return reinterpret_cast<T*>(&v)[l]; }}

// the sum of v over every thread of the row, the same value in each: every lane of the warp (and
// every thread of the block) takes part, also those that loaded nothing (they add 0)
__device__ __forceinline__ T row_sum(T v) {{
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threads == 32) return v;
  __shared__ T partial[32];
  __syncthreads();  // the previous call's readers are done with `partial`
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < threads / 32; ++w) total += partial[w];  // the same order in every thread
  return total;
}}

// rows handed out so that a warp (a block) holds one row at a time; the loop bound is uniform
// across the threads of a row, as row_sum needs
#define FOR_EACH_ROW(row) \
  const int t = threads == 32 ? (int)(threadIdx.x & 31) : (int)threadIdx.x; \
  const long long rows_per_block = blockDim.x / threads; \
  for (long long row = (long long)blockIdx.x * rows_per_block + threadIdx.x / threads; row < rows; \
       row += (long long)gridDim.x * rows_per_block)
"""

_FORWARD = r"""
extern "C" __global__ void tg_layer_norm(const T* __restrict__ x, const T* __restrict__ weight,
                                         const T* __restrict__ bias, T* __restrict__ y,
                                         T* __restrict__ mean_out, T* __restrict__ rstd_out,
                                         long long rows, T eps) {{
  const V* w = reinterpret_cast<const V*>(weight);
  const V* b = reinterpret_cast<const V*>(bias);
  FOR_EACH_ROW(row) {{
    const V* in = reinterpret_cast<const V*>(x + row * n);
    V* out = reinterpret_cast<V*>(y + row * n);
    V kept[cached ? items : 1];
    T sum = 0;
    {unroll}
    for (int k = 0; k < items; ++k) {{
      const long long j = (long long)k * threads + t;
      if (j < vectors) {{
        V v = in[j];
        if (cached) kept[cached ? k : 0] = v;
        for (int l = 0; l < vec; ++l) sum += at(v, l);
      }}
    }}
    const T mean = row_sum(sum) / (T)n;
    T squares = 0;  // the variance from the deviations (a second pass), not E[x^2] - mean^2
    {unroll}
    for (int k = 0; k < items; ++k) {{
      const long long j = (long long)k * threads + t;
      if (j < vectors) {{
        V v = cached ? kept[cached ? k : 0] : in[j];
        for (int l = 0; l < vec; ++l) {{ const T d = at(v, l) - mean; squares += d * d; }}
      }}
    }}
    const T rstd = (T)1 / sqrt(row_sum(squares) / (T)n + eps);
    if (t == 0) {{ mean_out[row] = mean; rstd_out[row] = rstd; }}
    {unroll}
    for (int k = 0; k < items; ++k) {{
      const long long j = (long long)k * threads + t;
      if (j < vectors) {{
        V v = cached ? kept[cached ? k : 0] : in[j];
        V wv = v, bv = v;
        if (has_weight) wv = w[j];
        if (has_bias) bv = b[j];
        for (int l = 0; l < vec; ++l) {{
          T o = (at(v, l) - mean) * rstd;
          if (has_weight) o = o * at(wv, l);
          if (has_bias) o = o + at(bv, l);
          at(v, l) = o;
        }}
        out[j] = v;
      }}
    }}
  }}
}}
"""

_BACKWARD = r"""
// gx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = gy * weight, xhat = (x - mean) * rstd
extern "C" __global__ void tg_layer_norm_backward(const T* __restrict__ x, const T* __restrict__ weight,
                                                  const T* __restrict__ mean_in,
                                                  const T* __restrict__ rstd_in, const T* __restrict__ gy,
                                                  T* __restrict__ gx, long long rows) {{
  const V* w = reinterpret_cast<const V*>(weight);
  FOR_EACH_ROW(row) {{
    const V* xs = reinterpret_cast<const V*>(x + row * n);
    const V* gys = reinterpret_cast<const V*>(gy + row * n);
    V* out = reinterpret_cast<V*>(gx + row * n);
    const T mean = mean_in[row], rstd = rstd_in[row];
    V kept_x[cached ? items : 1], kept_g[cached ? items : 1];
    T sum_g = 0, sum_gxhat = 0;
    {unroll}
    for (int k = 0; k < items; ++k) {{
      const long long j = (long long)k * threads + t;
      if (j < vectors) {{
        V xv = xs[j], gv = gys[j];
        if (cached) {{ kept_x[cached ? k : 0] = xv; kept_g[cached ? k : 0] = gv; }}
        V wv = xv;
        if (has_weight) wv = w[j];
        for (int l = 0; l < vec; ++l) {{
          const T g = has_weight ? at(gv, l) * at(wv, l) : at(gv, l);
          sum_g += g;
          sum_gxhat += g * ((at(xv, l) - mean) * rstd);
        }}
      }}
    }}
    const T mean_g = row_sum(sum_g) / (T)n;
    const T mean_gxhat = row_sum(sum_gxhat) / (T)n;
    {unroll}
    for (int k = 0; k < items; ++k) {{
      const long long j = (long long)k * threads + t;
      if (j < vectors) {{
        V xv = cached ? kept_x[cached ? k : 0] : xs[j];
        V gv = cached ? kept_g[cached ? k : 0] : gys[j];
        V wv = xv;
        if (has_weight) wv = w[j];
        for (int l = 0; l < vec; ++l) {{
          const T g = has_weight ? at(gv, l) * at(wv, l) : at(gv, l);
          const T xhat = (at(xv, l) - mean) * rstd;
          at(gv, l) = rstd * (g - mean_g - xhat * mean_gxhat);
        }}
        out[j] = gv;
      }}
    }}
  }}
}}
"""

_AFFINE = r"""
// the weight and bias gradients, sum over rows of gy * xhat and of gy: one thread per column (a
// warp reads 32 neighbours of one row), rows cut into chunks side by side (blockIdx.y); each chunk
// writes its partial sums to partial[chunk][0][column] (weight) and [1][column] (bias)
extern "C" __global__ void tg_layer_norm_affine(const T* __restrict__ x, const T* __restrict__ mean_in,
                                                const T* __restrict__ rstd_in, const T* __restrict__ gy,
                                                T* __restrict__ partial, long long rows, long long chunk) {{
  const long long begin = (long long)blockIdx.y * chunk;
  const long long end = begin + chunk < rows ? begin + chunk : rows;
  for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < n;
       c += (long long)gridDim.x * blockDim.x) {{
    T sum_w = 0, sum_b = 0;
    for (long long r = begin; r < end; ++r) {{
      const T g = gy[r * n + c];
      sum_w += g * ((x[r * n + c] - mean_in[r]) * rstd_in[r]);
      sum_b += g;
    }}
    partial[(long long)blockIdx.y * 2 * n + c] = sum_w;
    partial[((long long)blockIdx.y * 2 + 1) * n + c] = sum_b;
  }}
}}
"""

WARP_ROW_MAX = 1024  # rows up to this many elements: one warp each (8 rows a block of 256)
CACHE_ELEMENTS = 32  # per thread and array (16 for float64 in backward, which keeps two arrays)
_WARP_BLOCK = 256
_COLUMN_THREADS = 256
# one kernel per direction, dtype, row length and layout: a model meets a handful
_kernels = LRU(64)


def _layout(n: int, vec: int, cache_limit: int) -> tuple[int, int, int, bool]:
    """(vectors, threads per row, loads per thread, cached) for rows of n elements."""
    vectors = n // vec
    if n <= WARP_ROW_MAX:
        threads = 32
    else:  # a block per row, about 8 loads a thread (fewer threads for shorter rows)
        threads = min(1024, max(64, 1 << (-(-vectors // 8) - 1).bit_length()))
    items = -(-vectors // threads)
    return vectors, threads, items, items * vec <= cache_limit


def _vector_width(dtype: Any, n: int, arrays: list) -> int:
    """4 (float4) / 2 (double2) when n is a multiple and every array starts 16-byte aligned, else 1."""
    width = 4 if dtype == np.float32 else 2
    if n % width or any(a.data.ptr % 16 for a in arrays if a is not None):
        return 1
    return width


def _kernel(name: str, dtype: Any, n: int, vec: int, layout: tuple, has_weight: bool = False,
            has_bias: bool = False) -> Any:
    key = (name, dtype.char, n, vec, layout, has_weight, has_bias)
    kernel = _kernels.get(key)
    if kernel is None:
        vectors, threads, items, cached = layout
        ctype = "float" if dtype == np.float32 else "double"
        vtype = ctype if vec == 1 else ("float4" if dtype == np.float32 else "double2")
        body = {"tg_layer_norm": _FORWARD, "tg_layer_norm_backward": _BACKWARD,
                "tg_layer_norm_affine": _AFFINE}[name]
        source = (_HEADER + body).format(
            ctype=ctype, vtype=vtype, n=n, vectors=vectors, vec=vec, threads=threads, items=items,
            cached=str(cached).lower(), has_weight=str(has_weight).lower(), has_bias=str(has_bias).lower(),
            unroll="#pragma unroll" if cached else "#pragma unroll 4")
        kernel = _kernels[key] = Prepared.kernel(source, name)
    return kernel


def _grid(rows: int, threads: int) -> tuple[tuple[int], tuple[int]]:
    """(blocks, threads a block) for one row per warp or per block."""
    block = _WARP_BLOCK if threads == 32 else threads
    per_block = block // threads
    return (min(-(-rows // per_block), 2**31 - 1),), (block,)


def _gpu_forward(x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """y, mean and rstd of a contiguous (rows, n) device array: one launch."""
    cp = array_module("cuda")
    rows, n = x.shape
    try:
        y = cp.empty_like(x)
        mean, rstd = cp.empty(rows, x.dtype), cp.empty(rows, x.dtype)
        if x.size == 0:  # no row, or rows of nothing (their mean and rstd are NaN, as NumPy's)
            mean.fill(np.nan)
            rstd.fill(np.nan)
            return y, mean, rstd
        vec = _vector_width(x.dtype, n, [x, y, weight, bias])
        layout = _layout(n, vec, CACHE_ELEMENTS)
        kernel = _kernel("tg_layer_norm", x.dtype, n, vec, layout, weight is not None, bias is not None)
        kernel(*_grid(rows, layout[1]), (x, x if weight is None else weight, x if bias is None else bias,
                                         y, mean, rstd, np.int64(rows), x.dtype.type(eps)))
    except MemoryError as error:
        raise out_of_memory(error, "cuda", "layer_norm kernel") from error
    return y, mean, rstd


def _gpu_backward(x: Any, weight: Any, mean: Any, rstd: Any, gy: Any, need_x: bool, need_w: bool,
                  need_b: bool) -> tuple[Any, Any, Any]:
    """(gx, gw, gb) on the device, None where not needed: one launch for gx, one or two for gw, gb."""
    cp = array_module("cuda")
    rows, n = x.shape
    gx = gw = gb = None
    try:
        if need_x:
            gx = cp.empty_like(x)
            if x.size:
                vec = _vector_width(x.dtype, n, [x, gy, gx, weight])
                cache_limit = CACHE_ELEMENTS if x.dtype == np.float32 else CACHE_ELEMENTS // 2
                layout = _layout(n, vec, cache_limit)
                kernel = _kernel("tg_layer_norm_backward", x.dtype, n, vec, layout, weight is not None)
                kernel(*_grid(rows, layout[1]), (x, x if weight is None else weight, mean, rstd, gy, gx,
                                                 np.int64(rows)))
        if need_w or need_b:
            sums = _column_sums(x, mean, rstd, gy)
            gw = sums[0] if need_w else None
            gb = sums[1] if need_b else None
    except MemoryError as error:
        raise out_of_memory(error, "cuda", "layer_norm backward kernel") from error
    return gx, gw, gb


def _column_sums(x: Any, mean: Any, rstd: Any, gy: Any) -> Any:
    """A (2, n) array: the sums over rows of gy * xhat (row 0) and of gy (row 1)."""
    cp = array_module("cuda")
    rows, n = x.shape
    if rows == 0 or n == 0:
        return cp.zeros((2, n), x.dtype)
    column_blocks = min(4096, -(-n // _COLUMN_THREADS))
    # split the rows when the columns alone leave the GPU mostly idle (as the table's column sums)
    chunks = min(-(-rows // 64), max(1, 1024 // column_blocks)) if rows > 256 else 1
    chunk = -(-rows // chunks)
    chunks = -(-rows // chunk)  # no empty chunk at the end
    partial = cp.empty((chunks, 2, n), x.dtype)
    kernel = _kernel("tg_layer_norm_affine", x.dtype, n, 1, (n, 1, 1, False))
    kernel((column_blocks, chunks), (_COLUMN_THREADS,), (x, mean, rstd, gy, partial, np.int64(rows),
                                                         np.int64(chunk)))
    return partial[0] if chunks == 1 else K.SUM(partial, axis=0)  # the chunks added: one launch
