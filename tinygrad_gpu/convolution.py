"""Conv2d (groups=1) as one graph node: unfold the windows, one matrix product, bias (and a ReLU
when a Sequential puts one right after the layer), (N, C, H, W) out.

The math is functional.conv2d's composition (im2col, then a product with the weights viewed as a
(C_out, C_in·kh·kw) matrix), run inside one node so that a step pays for one node instead of a
dozen reshapes, transposes and adds. Backward is three products: the weights' (gy · windowsᵀ), the
bias's row sums of gy and the windows' (weightsᵀ · gy, folded back onto the input).

On the GPU, products small enough for the tiled kernel (tiled_gemm) run as tiled kernels that read
and write the (N, C, H, W) layout directly: forward stores the output image by image with the bias
(and ReLU) applied; backward reads gy in that layout (masked by the ReLU's output where fused),
gets the weights' and the bias's gradients from one product split over the long N·OH·OW axis
(the bias as one more column of ones) whose partial tiles a second launch adds in a fixed order,
and the windows' gradient from a third. Larger products go through cuBLAS on reordered copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import kernels as K
from . import ops, tiled_gemm
from .backend import array_module, cupy_module, device_of
from .caches import LRU
from .function import Function
from .launch import Prepared
from .windows import Fold, Unfold

# ---- GPU kernels ----------------------------------------------------------------------------------
# gy of a (N, C, H, W) output read as the (C, N·H·W) matrix the products use, through the ReLU's
# output where one is fused (the table's relu_bwd row: y <= 0 stops the gradient, NaN passes)
_GRAD_AT = """
__device__ __forceinline__ T tg_grad_at(const T* __restrict__ gy, const T* __restrict__ y, long long c,
                                        long long j, long long channels, long long positions) {
  const long long image = j / positions, at = (image * channels + c) * positions + (j - image * positions);
  return TG_RELU && y[at] <= (T)0 ? (T)0 : gy[at];
}
"""
# after a cuBLAS product: out[n, o, p] = product[o, n * P + p] + bias[o], then ReLU if asked
_TO_IMAGES_BODY = """
    const long long image = i / (rows * positions), row = (i / positions) % rows;
    T z = product[row * columns + image * positions + i % positions] + bias[row];
    out = (relu && !(z > (T)0 || z != z)) ? (T)0 : z;
"""
_kernels = LRU(64)  # (kind, dtype, tile, depth, relu, ...) -> compiled kernel


def _gpu_to_images(product: Any, bias: Any, images: int, relu: bool) -> Any:
    """The (rows, images·P) product as (images, rows, P), with bias[row] added (zeros when None)."""
    cp = cupy_module()
    kernel = _kernels.get("to_images")
    if kernel is None:
        kernel = _kernels["to_images"] = cp.ElementwiseKernel(
            "raw T product, raw T bias, int64 rows, int64 positions, int64 columns, bool relu", "T out",
            _TO_IMAGES_BODY, "tg_conv_to_images")
    rows, columns = product.shape
    if bias is None:
        bias = cp.zeros(rows, product.dtype)
    out = cp.empty((images, rows, columns // images), product.dtype)
    kernel(product, bias, rows, columns // images, columns, relu, out)
    return out


def _tiled_kernel(key: tuple, name: str, dtype: Any, relu: bool, params: str, tile: tuple,
                  loop: Callable[[], str], store: str, prelude: str = "") -> Any:
    """A tiled product kernel of tiled_gemm's shape that reads gy through tg_grad_at (ReLU masked or
    not); `loop` makes its loop_source, only when the kernel is not compiled yet."""
    kernel = _kernels.get(key)
    if kernel is None:
        head = f"#define TG_RELU {int(relu)}\n{_GRAD_AT}"
        source = tiled_gemm.kernel_source(name, dtype.itemsize, params, tile, loop(), store, prelude, head)
        kernel = _kernels[key] = Prepared.kernel(source, name)
    return kernel


def _weights_kernel(dtype: Any, tile: tuple, depth: int, relu: bool) -> Any:
    """Partial (C_out x C_in·kh·kw [+1]) products of gy and the windows over one slice of N·OH·OW
    per blockIdx.z; column tg_weights (when present) multiplies by ones: the bias's row sums."""
    bm, bn = tile
    return _tiled_kernel(
        ("weights", dtype.char, tile, depth, relu), f"tg_conv_weights_{bm}x{bn}x{depth}{'_relu' * relu}",
        dtype, relu,
        "const T* __restrict__ tg_gy, const T* __restrict__ tg_y, const T* __restrict__ tg_cols, "
        "T* __restrict__ tg_out, int tg_m, int tg_n, int tg_weights, long long tg_np, long long tg_p, "
        "long long tg_chunk", tile,
        lambda: tiled_gemm.loop_source(
            bm, bn, depth, True, True, dtype.itemsize,
            a_at="tg_grad_at(tg_gy, tg_y, {row}, tg_kbase + {inner}, tg_m, tg_p)",
            b_at="({col} < tg_weights ? tg_cols[(long long){col} * tg_np + tg_kbase + {inner}] : (T)1)"),
        "tg_out[(long long)blockIdx.z * tg_m * tg_n + tg_idx] = tg_z;",
        prelude="const long long tg_kbase = (long long)blockIdx.z * tg_chunk;\n"
                "  const int tg_k = (int)min(tg_chunk, tg_np - tg_kbase);")


_SUM_SOURCE = """
extern "C" __global__ void tg_conv_weights_sum(const T* __restrict__ parts, T* __restrict__ weights_grad,
                                               T* __restrict__ bias_grad, int m, int n, int weights,
                                               int splits) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= m * n) return;
  T acc = parts[e];
  for (int z = 1; z < splits; ++z) acc += parts[(long long)z * m * n + e];  /* slices in order */
  const int i = e / n, j = e - i * n;
  if (j < weights) weights_grad[i * weights + j] = acc; else bias_grad[i] = acc;
}
"""


def _sum_kernel(dtype: Any) -> Any:
    key = ("sum", dtype.char)
    kernel = _kernels.get(key)
    if kernel is None:
        source = f"typedef {K._ctype(dtype)[0]} T;\n{_SUM_SOURCE}"
        kernel = _kernels[key] = Prepared.kernel(source, "tg_conv_weights_sum")
    return kernel


def _windows_kernel(dtype: Any, tile: tuple, depth: int, a_rows: bool, relu: bool) -> Any:
    """weightᵀ (C_in·kh·kw x C_out, strided) times gy read in its (N, C, H, W) layout."""
    bm, bn = tile
    return _tiled_kernel(
        ("windows", dtype.char, tile, depth, a_rows, relu),
        f"tg_conv_windows_{bm}x{bn}x{depth}{'_relu' * relu}", dtype, relu,
        "const T* __restrict__ tg_a, const T* __restrict__ tg_gy, const T* __restrict__ tg_y, "
        "T* __restrict__ tg_out, int tg_m, int tg_n, int tg_k, long long tg_sa0, long long tg_sa1, "
        "long long tg_p", tile,
        lambda: tiled_gemm.loop_source(bm, bn, depth, a_rows, False, dtype.itemsize,
                                       b_at="tg_grad_at(tg_gy, tg_y, {inner}, {col}, tg_k, tg_p)"),
        "tg_out[tg_idx] = tg_z;")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _weight_grads_plan(gy: Any, has_y: bool, columns: Any, bias: bool) -> tuple | None:
    """(kernel, its grid, splits, chunk, the sum's grid) for these shapes; None when the product is
    too big for the tiled kernel. Kept per shapes: a training step meets the same ones each time."""
    key = (gy.shape, gy.dtype.char, has_y, columns.shape, bias)
    plan = _weight_plans.get(key, _NO_PLAN)
    if plan is not _NO_PLAN:
        return plan
    out_channels = gy.shape[1]
    weights = columns.shape[0]
    long = columns.shape[1]  # N·OH·OW: the product's inner axis, split between blocks
    n = weights + bias
    if out_channels * n * long > tiled_gemm.TILED_WORK:
        plan = None
    else:
        tile = tiled_gemm.tile_for(out_channels, n)
        depth = tiled_gemm.depth_for(tile, long, gy.itemsize)
        blocks = _ceil(out_channels, tile[0]) * _ceil(n, tile[1])
        # enough slices for two blocks per multiprocessor, each a whole number of the loop's steps
        splits = max(1, min(_ceil(2 * tiled_gemm.multiprocessors(), blocks), _ceil(long, depth), 65535))
        chunk = _ceil(_ceil(long, splits), depth) * depth
        splits = _ceil(long, chunk)
        plan = (_weights_kernel(gy.dtype, tile, depth, has_y),
                (_ceil(n, tile[1]), _ceil(out_channels, tile[0]), splits), splits, np.int64(chunk),
                (_ceil(out_channels * n, 256),))
    _weight_plans[key] = plan
    return plan


_weight_plans = LRU(64)
_NO_PLAN = object()


def _gpu_weight_grads(gy: Any, y: Any, columns: Any, weight_shape: tuple, bias: bool) -> tuple | None:
    """(weight gradient, bias gradient or None) from gy in (N, C, H, W), two launches; None when
    the product is too big for the tiled kernel."""
    plan = _weight_grads_plan(gy, y is not None, columns, bias)
    if plan is None:
        return None
    kernel, grid, splits, chunk, sum_grid = plan
    out_channels = gy.shape[1]
    weights, n = columns.shape[0], columns.shape[0] + bias
    cp = cupy_module()
    parts = cp.empty((splits, out_channels, n), gy.dtype)
    kernel(grid, (tiled_gemm.THREADS,),
           (gy, gy if y is None else y, columns, parts, np.int32(out_channels), np.int32(n),
            np.int32(weights), np.int64(columns.shape[1]), np.int64(gy.shape[2] * gy.shape[3]), chunk))
    weight_grad = cp.empty(weight_shape, gy.dtype)
    bias_grad = cp.empty(out_channels, gy.dtype) if bias else weight_grad
    _sum_kernel(gy.dtype)(sum_grid, (256,),
                          (parts, weight_grad, bias_grad, np.int32(out_channels), np.int32(n),
                           np.int32(weights), np.int32(splits)))
    return weight_grad, bias_grad if bias else None


def _gpu_windows_grad(gy: Any, y: Any, weight: Any) -> Any | None:
    """weightᵀ @ gy as the (C_in·kh·kw, N·OH·OW) windows' gradient, one launch; None when the
    product is cuBLAS's."""
    a = weight.T
    m, k = a.shape
    n = gy.size // gy.shape[1]
    chosen = tiled_gemm.plan(m, n, k, gy.itemsize)
    if chosen is None:
        return None
    tile, depth = chosen
    size = a.itemsize
    out = cupy_module().empty((m, n), gy.dtype)
    kernel = _windows_kernel(gy.dtype, tile, depth, tiled_gemm.rows_contiguous(a, 1), y is not None)
    kernel((_ceil(n, tile[1]), _ceil(m, tile[0])), (tiled_gemm.THREADS,),
           (a, gy, gy if y is None else y, out, np.int32(m), np.int32(n), np.int32(k),
            np.int64(a.strides[0] // size), np.int64(a.strides[1] // size),
            np.int64(gy.shape[2] * gy.shape[3])))
    return out


# ---- the node -------------------------------------------------------------------------------------
class Convolution(Function):
    """conv2d of (N, C, H, W) x with (O, C, kh, kw) weight and an optional (O,) bias (groups=1),
    followed by ReLU when `relu` is set (then the node keeps its output for backward)."""

    saves_output = None  # decided per node: a fused ReLU's gradient reads the output

    def forward(self, x, weight, bias=None, *, stride, padding, dilation, relu=False):
        xp = array_module(device_of(x))
        out_channels, channels, kh, kw = weight.shape
        unfold = self.unfold = Unfold()
        columns = unfold.forward(x, (kh, kw), stride, padding, dilation)  # (C, kh, kw, N, OH, OW)
        n, oh, ow = columns.shape[3:]
        self.columns_shape, self.weight_shape, self.keeps_output = columns.shape, weight.shape, relu
        self.columns = columns = columns.reshape(channels * kh * kw, n * oh * ow)
        self.weight = weight = weight.reshape(out_channels, -1)
        if xp is np:
            out = K.matmul(weight, columns)
            if bias is not None:
                out = K.ADD(out, bias.reshape(-1, 1))
            if relu:
                out = K.RELU(out)
            out = out.reshape(out_channels, n, oh, ow).transpose(1, 0, 2, 3)
        else:
            if bias is not None:
                bias = xp.ascontiguousarray(bias)
            chosen = tiled_gemm.plan_for(weight, columns)
            if chosen:
                out = tiled_gemm.gemm_images(weight, columns, oh * ow, bias, relu, chosen)
            else:
                out = _gpu_to_images(K.matmul(weight, columns), bias, n, relu)
            out = out.reshape(n, out_channels, oh, ow)
        self.output = out if relu else None
        return out

    def backward(self, gy):
        xp = array_module(device_of(gy))
        need_x, need_weight = self.needs_input_grad[:2]
        bias = len(self.needs_input_grad) == 3
        need_bias = bias and self.needs_input_grad[2]
        weight_grad = bias_grad = windows = None
        if xp is not np:  # the tiled kernels read gy in place; None where a product is cuBLAS's
            gy = xp.ascontiguousarray(gy)
            if need_weight or need_bias:
                found = _gpu_weight_grads(gy, self.output, self.columns, self.weight_shape, bias)
                if found is not None:
                    weight_grad, bias_grad = found
                    need_weight = need_bias = False
            if need_x:
                windows = _gpu_windows_grad(gy, self.output, self.weight)
        if need_weight or need_bias or (need_x and windows is None):
            # any device, any size: gy through the ReLU, as (O, N·OH·OW) rows, and plain products
            if self.output is not None:
                gy = K.RELU_BWD(self.output, gy)
            gy_rows = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(gy.shape[1], -1)
            if need_weight:
                weight_grad = K.matmul(gy_rows, self.columns.T).reshape(self.weight_shape)
            if need_bias:
                bias_grad = K.SUM(gy_rows, axis=1)
            if need_x and windows is None:
                windows = K.matmul(self.weight.T, gy_rows)
        needs = self.needs_input_grad
        grads = [self.unfold.backward(windows.reshape(self.columns_shape))[0] if needs[0] else None,
                 weight_grad if needs[1] else None]
        return tuple(grads + [bias_grad if needs[2] else None] if bias else grads)

    def backward_graph(self, gy: Any) -> tuple:
        """The same three products as recorded ops (the windows refolded by a recorded Fold)."""
        x, weight = self.inputs[:2]
        needs = self.needs_input_grad
        out_channels = weight.shape[0]
        if self.output is not None:  # the ReLU's gradient: a constant mask of where it passed
            gy = gy * ops._mask(~(self.output <= 0), gy)
        gy_rows = gy.transpose(1, 0, 2, 3).reshape(out_channels, -1)
        grads: list = [None] * len(needs)
        if needs[0]:
            windows = (weight.reshape(out_channels, -1).transpose(1, 0) @ gy_rows).reshape(self.columns_shape)
            grads[0] = Fold.apply(windows, shape=self.unfold.shape, settings=self.unfold.settings)
        if needs[1]:
            kernel, stride, padding, dilation, _, _ = self.unfold.settings
            columns = Unfold.apply(x, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
            grads[1] = ops.MatMul.apply(gy_rows, columns.reshape(self.columns.shape[0], -1),
                                        transpose_b=True).reshape(self.weight_shape)
        if len(needs) == 3 and needs[2]:
            grads[2] = gy_rows.sum(axis=1)
        return tuple(grads)
