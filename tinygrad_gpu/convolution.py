"""Conv2d (groups=1) as one graph node: unfold the windows, one matrix product, bias, (N, C, H, W) out.

The math is functional.conv2d's composition (im2col, then a product with the weights viewed as a
(C_out, C_in·kh·kw) matrix), run inside one node so that a step pays for one node instead of a
dozen reshapes, transposes and adds. On the GPU a product small enough for the tiled kernel
writes the output straight in (N, C_out, OH, OW) order with the bias added as it stores (two
launches forward); a larger one goes through cuBLAS and one bias-and-reorder launch. Backward is
the same three products on either device: the weights' (gy · windowsᵀ), the windows' (weightsᵀ ·
gy, then folded back onto the input) and the bias's row sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from . import ops, tiled_gemm
from .backend import array_module, device_of
from .function import Function
from .windows import Fold, Unfold

# the GPU's bias add and reorder after a cuBLAS product: out[n, o, p] = product[o, n * P + p] + bias[o]
_TO_IMAGES_BODY = """
    const long long image = i / (rows * positions), row = (i / positions) % rows;
    out = product[row * columns + image * positions + i % positions] + bias[row];
"""
_to_images_kernel: Any = None


def _gpu_to_images(product: Any, bias: Any, images: int) -> Any:
    """The (rows, images·P) product as (images, rows, P), with bias[row] added (zeros when None)."""
    global _to_images_kernel
    cp = array_module("cuda")
    if _to_images_kernel is None:
        _to_images_kernel = cp.ElementwiseKernel(
            "raw T product, raw T bias, int64 rows, int64 positions, int64 columns", "T out",
            _TO_IMAGES_BODY, "tg_conv_to_images")
    rows, columns = product.shape
    if bias is None:
        bias = cp.zeros(rows, product.dtype)
    out = cp.empty((images, rows, columns // images), product.dtype)
    _to_images_kernel(product, cp.ascontiguousarray(bias), rows, columns // images, columns, out)
    return out


class Convolution(Function):
    """conv2d of (N, C, H, W) x with (O, C, kh, kw) weight and an optional (O,) bias (groups=1)."""

    def forward(self, x, weight, bias=None, *, stride, padding, dilation):
        xp = array_module(device_of(x))
        out_channels, channels, kh, kw = weight.shape
        unfold = self.unfold = Unfold()
        columns = unfold.forward(x, (kh, kw), stride, padding, dilation)  # (C, kh, kw, N, OH, OW)
        n, oh, ow = columns.shape[3:]
        self.columns_shape, self.weight_shape = columns.shape, weight.shape
        self.columns = columns = columns.reshape(channels * kh * kw, n * oh * ow)
        self.weight = weight = weight.reshape(out_channels, -1)
        if xp is np:
            product = K.matmul(weight, columns)
            if bias is not None:
                product = K.ADD(product, bias.reshape(-1, 1))
            return product.reshape(out_channels, n, oh, ow).transpose(1, 0, 2, 3)
        if bias is not None:
            bias = xp.ascontiguousarray(bias)
        chosen = tiled_gemm.plan_for(weight, columns)
        if chosen:
            out = tiled_gemm.gemm_images(weight, columns, oh * ow, bias, chosen)
        else:
            out = _gpu_to_images(K.matmul(weight, columns), bias, n)
        return out.reshape(n, out_channels, oh, ow)

    def backward(self, gy):
        xp = array_module(device_of(gy))
        needs = self.needs_input_grad
        # gy as (O, N·OH·OW): the output positions in the windows' column order
        gy_rows = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(gy.shape[1], -1)
        grads = [None] * len(needs)
        if needs[0]:
            windows = K.matmul(self.weight.T, gy_rows).reshape(self.columns_shape)
            grads[0] = self.unfold.backward(windows)[0]
        if needs[1]:
            grads[1] = K.matmul(gy_rows, self.columns.T).reshape(self.weight_shape)
        if len(needs) == 3 and needs[2]:
            grads[2] = K.SUM(gy_rows, axis=1)
        return tuple(grads)

    def backward_graph(self, gy: Any) -> tuple:
        """The same three products as recorded ops (the windows refolded by a recorded Fold)."""
        x, weight = self.inputs[:2]
        needs = self.needs_input_grad
        out_channels = weight.shape[0]
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
