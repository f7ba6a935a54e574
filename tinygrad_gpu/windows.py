"""Sliding windows over the last two axes (im2col): the one primitive under Conv2d and pooling.

`Unfold` copies every kh×kw window of a padded (N, C, H, W) array into a (C, kh, kw, N, OH, OW)
array. Forward is one strided view plus one copy; backward (col2im) adds each of the kh·kw window
positions back with a strided in-place add, kh·kw adds in all (overlapping windows sum, as they
must). Read as a (C·kh·kw, N·OH·OW) matrix, the windows make a convolution one matrix product
(cuBLAS on the GPU) and a max pool one reduction over the window axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import ops
from .backend import array_module, device_of
from .function import Function


def pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints as a checked (height, width) pair, each >= minimum."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """How many windows fit along one axis (PyTorch's floor formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _as_strided(xp: Any, array: Any, shape: tuple, strides: tuple) -> Any:
    if xp is np:
        return np.lib.stride_tricks.as_strided(array, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(array, shape, strides)


class Unfold(Function):
    """(N, C, H, W) -> (C, kh, kw, N, OH, OW): every window, padded with `fill` beyond the edges."""

    def forward(self, x, kernel, stride, padding, dilation, fill=0.0):
        xp = array_module(device_of(x))
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
        n, c, h, w = x.shape
        oh, ow = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
        self.shape, self.settings = x.shape, (kernel, stride, padding, dilation, oh, ow)
        if ph or pw:
            x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        x = xp.ascontiguousarray(x)
        s = x.strides
        view = _as_strided(xp, x, (c, kh, kw, n, oh, ow),
                           (s[1], s[2] * dh, s[3] * dw, s[0], s[2] * sh, s[3] * sw))
        return xp.ascontiguousarray(view)

    def backward(self, gy):
        xp = array_module(device_of(gy))
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), oh, ow = self.settings
        n, c, h, w = self.shape
        padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), gy.dtype)
        for i in range(kh):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            for j in range(kw):
                columns = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
                padded[:, :, rows, columns] += gy[:, i, j].transpose(1, 0, 2, 3)
        if ph or pw:  # a copy: the gradient must not keep the padded buffer alive
            return (xp.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w]),)
        return (padded,)

    def backward_graph(self, gy: Any) -> tuple:
        """The windows added back (col2im) as a recorded Fold, whose own gradient is this Unfold."""
        return (Fold.apply(gy, shape=self.shape, settings=self.settings),)


class Pad(Function):
    """Constant padding of the last len(pads) axes; pads is ((before, after), ...) per axis."""

    def forward(self, x, pads, value=0.0):
        xp = array_module(device_of(x))
        self.pads = pads
        widths = ((0, 0),) * (x.ndim - len(pads)) + tuple(pads)
        return xp.pad(x, widths, constant_values=value)

    def backward(self, gy):
        lead = gy.ndim - len(self.pads)
        key = (slice(None),) * lead + tuple(slice(b, gy.shape[lead + i] - a)
                                           for i, (b, a) in enumerate(self.pads))
        return (gy[key],)

    def backward_graph(self, gy: Any) -> tuple:
        """The unpadded part of gy, as a recorded slice."""
        lead = gy.ndim - len(self.pads)
        key = (slice(None),) * lead + tuple(slice(b, gy.shape[lead + i] - a)
                                           for i, (b, a) in enumerate(self.pads))
        return (ops.Index.apply(gy, key=key, advanced=False),)


class WindowMax(Function):
    """(C, K, N, OH, OW) -> (C, N, OH, OW): the max over the K window positions; the gradient goes
    to the first position holding it (PyTorch's max pooling), so ties are not split."""

    def forward(self, columns):
        xp = array_module(device_of(columns))
        self.shape = columns.shape
        self.index = xp.argmax(columns, axis=1)[:, None]  # NaN counts as the maximum, as in NumPy
        return xp.take_along_axis(columns, self.index, axis=1)[:, 0]

    def backward(self, gy):
        xp = array_module(device_of(gy))
        positions = xp.arange(self.shape[1]).reshape(1, -1, 1, 1, 1)
        return (xp.where(positions == self.index, gy[:, None], gy.dtype.type(0)),)

    def backward_graph(self, gy: Any) -> tuple:
        """gy at each window's first maximum (a constant one-hot mask), recorded."""
        xp = array_module(gy.device)
        positions = xp.arange(self.shape[1]).reshape(1, -1, 1, 1, 1)
        c, _, n, oh, ow = self.shape
        one_hot = (positions == self.index).astype(gy.dtype)
        return (ops.Reshape.apply(gy, shape=(c, 1, n, oh, ow)) * ops._constant(one_hot),)


class Fold(Function):
    """(C, kh, kw, N, OH, OW) windows added back into (N, C, H, W): Unfold's adjoint (col2im),
    recorded when a gradient through Unfold must be differentiated again."""

    def forward(self, columns, shape, settings):
        self.settings = settings
        kernel, stride, padding, dilation, _, _ = settings
        self.unfold = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
        node = Unfold()
        node.shape, node.settings = shape, settings
        return node.backward(columns)[0]

    def backward(self, gy):
        return (Unfold().forward(gy, **self.unfold),)

    def backward_graph(self, gy: Any) -> tuple:
        """The windows of gy, as a recorded Unfold."""
        return (Unfold.apply(gy, **self.unfold),)

