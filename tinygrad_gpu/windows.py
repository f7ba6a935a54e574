"""Sliding windows over the last two axes (im2col): the one primitive under Conv2d and pooling.

`Unfold` copies every kh×kw window of a padded (N, C, H, W) array into a (C, kh, kw, N, OH, OW)
array. Read as a (C·kh·kw, N·OH·OW) matrix, the windows make a convolution one matrix product
(cuBLAS on the GPU) and a max pool one reduction over the window axes.

On the CPU, forward is one strided view plus one copy; backward (col2im) adds each of the kh·kw
window positions back with a strided in-place add (overlapping windows sum, as they must), or
copies once when the windows tile the input. On the GPU each direction is one launch: a gather
kernel per output element, which sums the window positions covering an input element in the
CPU's order (no atomics, so results repeat bit for bit).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from . import ops
from .backend import array_module, device_of
from .caches import LRU
from .function import Function
from .launch import Prepared


def pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints as a checked (height, width) pair, each >= minimum."""
    if type(value) is tuple and len(value) == 2:  # the common case (a layer's own settings): quick
        h, w = value
        if type(h) is int and type(w) is int and h >= minimum and w >= minimum:
            return value
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

    def place(self, shape: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> tuple:
        """Note the input's (N, C, H, W) shape and the window settings with the output's OH, OW
        (what backward and Fold need); returns those settings."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
        oh, ow = output_size(shape[2], kh, sh, ph, dh), output_size(shape[3], kw, sw, pw, dw)
        self.shape, self.settings = shape, (kernel, stride, padding, dilation, oh, ow)
        return self.settings

    def forward(self, x, kernel, stride, padding, dilation, fill=0.0):
        xp = array_module(device_of(x))
        settings = self.place(x.shape, kernel, stride, padding, dilation)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), oh, ow = settings
        n, c = x.shape[:2]
        if xp is not np:
            return _gpu_unfold(x, settings, fill)
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
        if xp is not np:
            return (_gpu_fold(gy, self.shape, self.settings),)
        if (sh, sw) == (kh, kw) and (dh, dw) == (1, 1) and (oh * kh, ow * kw) == (h + 2 * ph, w + 2 * pw):
            # windows that tile the padded input exactly (the usual pooling): one copy, no adds
            tiles = np.ascontiguousarray(gy.transpose(3, 0, 4, 1, 5, 2)).reshape(n, c, oh * kh, ow * kw)
            return (np.ascontiguousarray(tiles[:, :, ph:ph + h, pw:pw + w]) if ph or pw else tiles,)
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


# ---- the GPU's two launches -----------------------------------------------------------------------
# `i` walks each kernel's output in C order. The sizes and window settings are compiled in as
# constants: the divisions that turn an index into coordinates become multiplications, and a
# launch passes two arrays only. The index arithmetic is 32-bit whenever every index fits.
# Unfold writes `per` neighbouring outputs of a window row per index (a 16- or 8-byte vector store
# when the row length allows), so the index arithmetic and the stores are a quarter as many.
_UNFOLD_BODY = """
    const index_t at = (index_t)i * per;
    const index_t ox = at % ow, oy = (at / ow) % oh, n = (at / (ow * oh)) % batch;
    const index_t window = at / (ow * oh * batch);  /* (c, ki, kj) */
    const index_t kj = window % kw, ki = (window / kw) % kh, c = window / (kw * kh);
    const index_t y = oy * sh + ki * dh - ph;
    const bool row_inside = y >= 0 && y < h;
    const index_t row = ((n * channels + c) * h + y) * w;
    T v[per];
    #pragma unroll
    for (int u = 0; u < per; ++u) {
        const index_t x = (ox + u) * sw + kj * dw - pw;
        v[u] = (row_inside && x >= 0 && x < w) ? image[row + x] : fill;
    }
    STORE
"""
_FOLD_BODY = """
    const index_t at = (index_t)i;
    const index_t x = at % w, y = (at / w) % h, c = (at / (w * h)) % channels, n = at / (w * h * channels);
    T acc = 0;
    for (index_t ki = 0; ki < kh; ++ki) {
        const index_t ty = y + ph - ki * dh;  /* the window row oy with oy * sh == ty covers y */
        if (ty < 0 || ty % sh != 0 || ty / sh >= oh) continue;
        for (index_t kj = 0; kj < kw; ++kj) {
            const index_t tx = x + pw - kj * dw;
            if (tx < 0 || tx % sw != 0 || tx / sw >= ow) continue;
            acc += columns[((((c * kh + ki) * kw + kj) * batch + n) * oh + ty / sh) * ow + tx / sw];
        }
    }
    out = acc;
"""
# Max pooling reads each window straight from the image: the first maximum in window order (ki,
# kj), a NaN counting as the maximum (the first NaN wins), exactly as the CPU's reduction and argmax
# find it; positions beyond the edges hold `fill` (-inf). Backward gathers for each input element
# the gy of every window whose first maximum it is, in the fold's window order.
_WINDOW_TOP = """
            T top = 0; index_t best = 0;
            for (index_t qi = 0; qi < kh; ++qi) {
                const index_t y = oy * sh + qi * dh - ph;
                for (index_t qj = 0; qj < kw; ++qj) {
                    const index_t x = ox * sw + qj * dw - pw;
                    const T v = (y >= 0 && y < h && x >= 0 && x < w) ? image[plane + y * w + x] : fill;
                    const index_t q = qi * kw + qj;
                    if (q == 0 || (top == top && (v > top || v != v))) { top = v; best = q; }
                }
            }
"""
_POOL_MAX_BODY = """
    const index_t at = (index_t)i;
    const index_t ox = at % ow, oy = (at / ow) % oh, plane = (at / (ow * oh)) * h * w;
""" + _WINDOW_TOP + """
    out = top;
"""
_POOL_MAX_GRAD_BODY = """
    const index_t at = (index_t)i;
    const index_t x0 = at % w, y0 = (at / w) % h, image_plane = at / (w * h);
    const index_t plane = image_plane * h * w;
    T acc = 0;
    for (index_t ki = 0; ki < kh; ++ki) {
        const index_t ty = y0 + ph - ki * dh;
        if (ty < 0 || ty % sh != 0 || ty / sh >= oh) continue;
        const index_t oy = ty / sh;
        for (index_t kj = 0; kj < kw; ++kj) {
            const index_t tx = x0 + pw - kj * dw;
            if (tx < 0 || tx % sw != 0 || tx / sw >= ow) continue;
            const index_t ox = tx / sw;
""" + _WINDOW_TOP + """
            if (best == ki * kw + kj) acc += gy[(image_plane * oh + oy) * ow + ox];
        }
    }
    grad = acc;
"""
_SIZE_NAMES = ("batch", "channels", "h", "w", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "oh", "ow")
# name -> (parameters, body) of the kernels whose sizes are compiled in; a body that writes one
# element per index names it (`out`, `grad`), bound to the output's element i
_KERNELS = {
    "unfold": ("const T* __restrict__ image, T fill, T* __restrict__ out", _UNFOLD_BODY),
    "fold": ("const T* __restrict__ columns, T* __restrict__ tg_out",
             "T& out = tg_out[i];" + _FOLD_BODY),
    "pool_max": ("const T* __restrict__ image, T fill, T* __restrict__ tg_out",
                 "T& out = tg_out[i];" + _POOL_MAX_BODY),
    "pool_max_grad": ("const T* __restrict__ image, const T* __restrict__ gy, T fill, "
                      "T* __restrict__ tg_grad", "T& grad = tg_grad[i];" + _POOL_MAX_GRAD_BODY),
}
# one kernel per direction and set of sizes: a training loop meets a handful (batch sizes, layers)
_gpu_kernels = LRU(256)


def _gpu_kernel(name: str, sizes: tuple[int, ...], elements: int, dtype: Any, per: int = 1) -> Any:
    """The `name` kernel of _KERNELS for these sizes and dtype, its index arithmetic wide enough for
    `elements` (unfold: writing `per` outputs per index); launched by _run."""
    key = (name, sizes, per, dtype.char)
    kernel = _gpu_kernels.get(key)
    if kernel is None:
        bits = 32 if elements < 2**31 else 64
        constants = "".join(f"const index_t {size} = {value};\n" for size, value in zip(_SIZE_NAMES, sizes))
        params, body = _KERNELS[name]
        if name == "unfold":
            vector = {(4, 4): "float4", (4, 2): "float2", (8, 2): "double2"}.get((dtype.itemsize, per))
            store = (f"*reinterpret_cast<{vector}*>(&out[at]) = make_{vector}("
                     + ", ".join(f"v[{u}]" for u in range(per)) + ");" if vector
                     else "for (int u = 0; u < per; ++u) out[at + u] = v[u];")
            body = body.replace("STORE", store)
        kernel_name = f"tg_{name}_i{bits}{'' if per == 1 else f'_x{per}'}"
        source = f"""
typedef {K._ctype(dtype)[0]} T;
typedef {'int' if bits == 32 else 'long long'} index_t;
const int per = {per};
{constants}
extern "C" __global__ void {kernel_name}({params}, long long tg_n) {{
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < tg_n;
       i += (long long)gridDim.x * blockDim.x) {{
    {body}
  }}
}}
"""
        kernel = _gpu_kernels[key] = Prepared.kernel(source, kernel_name)
    return kernel


_THREADS = 256
_MAX_BLOCKS = 1 << 16  # beyond this many blocks of work, each thread takes several indices


def _run(kernel: Any, n: int, *args: Any) -> None:
    """Launch a window kernel over indices 0..n-1 (one thread per index, striding beyond the grid)."""
    kernel((min(-(-n // _THREADS), _MAX_BLOCKS),), (_THREADS,), (*args, np.int64(n)))


def _sizes(shape: tuple, settings: tuple) -> tuple[int, ...]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), oh, ow = settings
    n, c, h, w = shape
    return n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow


def _gpu_unfold(x: Any, settings: tuple, fill: float) -> Any:
    """(C, kh, kw, N, OH, OW) windows of x in one launch; `fill` beyond the edges."""
    cp = array_module("cuda")
    (kh, kw), _, _, _, oh, ow = settings
    n, c = x.shape[:2]
    out = cp.empty((c, kh, kw, n, oh, ow), x.dtype)
    if out.size == 0:
        return out
    per = next(p for p in ((4, 2, 1) if x.itemsize == 4 else (2, 1)) if ow % p == 0)
    kernel = _gpu_kernel("unfold", _sizes(x.shape, settings), max(out.size, x.size), x.dtype, per)
    _run(kernel, out.size // per, cp.ascontiguousarray(x), x.dtype.type(fill), out)
    return out


def _gpu_fold(gy: Any, shape: tuple, settings: tuple) -> Any:
    """The (N, C, H, W) gradient of the windows' input, each element gathered in one launch."""
    cp = array_module("cuda")
    out = cp.empty(shape, gy.dtype)
    if out.size:
        kernel = _gpu_kernel("fold", _sizes(shape, settings), max(out.size, gy.size), gy.dtype)
        _run(kernel, out.size, cp.ascontiguousarray(gy), out)
    return out


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


class MaxPool(Function):
    """(N, C, H, W) -> (N, C, OH, OW): the max of each window (-inf beyond the edges); the gradient
    goes to the first position holding it (PyTorch's max pooling), so ties are not split.

    One node and one launch each way on the GPU: forward reads each window from the image, and
    backward gathers, for each input element, gy of the windows whose first maximum it is (found
    again from the saved input, so forward stores no positions and inference stays one pass). On
    the CPU the windows are unfolded and reduced, and the positions found only for backward.
    """

    def forward(self, x, kernel, stride, padding, dilation):
        xp = array_module(device_of(x))
        unfold = self.unfold = Unfold()
        if xp is not np:
            settings = unfold.place(x.shape, kernel, stride, padding, dilation)
            self.x = x = xp.ascontiguousarray(x)
            out = xp.empty(x.shape[:2] + settings[4:], x.dtype)
            if out.size:
                kernel = _gpu_kernel("pool_max", _sizes(x.shape, settings), max(out.size, x.size), x.dtype)
                _run(kernel, out.size, x, x.dtype.type(-np.inf), out)
            return out
        columns = unfold.forward(x, kernel, stride, padding, dilation, fill=-np.inf)
        c, kh, kw, n, oh, ow = columns.shape
        # NaN propagates through the table's max row, and argmax in backward picks the first NaN
        self.columns = columns.reshape(c, kh * kw, n, oh, ow)
        return K.MAX(self.columns, axis=1).transpose(1, 0, 2, 3)

    def backward(self, gy):
        xp = array_module(device_of(gy))
        if xp is not np:
            out = xp.empty(self.x.shape, gy.dtype)
            if out.size:
                kernel = _gpu_kernel("pool_max_grad", _sizes(self.x.shape, self.unfold.settings),
                                     max(out.size, gy.size), gy.dtype)
                _run(kernel, out.size, self.x, xp.ascontiguousarray(gy), gy.dtype.type(-np.inf), out)
            return (out,)
        chosen = _first_maxima(self.columns)
        grad = np.where(chosen, gy.transpose(1, 0, 2, 3)[:, None], gy.dtype.type(0))
        return self.unfold.backward(grad.reshape(self.window_shape()))

    def window_shape(self) -> tuple:
        """The (C, kh, kw, N, OH, OW) shape of this pool's windows."""
        n, c = self.unfold.shape[:2]
        (kh, kw), _, _, _, oh, ow = self.unfold.settings
        return c, kh, kw, n, oh, ow

    def backward_graph(self, gy: Any) -> tuple:
        """gy at each window's first maximum (a constant one-hot mask), added back by a recorded Fold."""
        c, kh, kw, n, oh, ow = self.window_shape()
        columns = getattr(self, "columns", None)
        if columns is None:  # the GPU kept the input only: unfold it once for the mask
            columns = _gpu_unfold(self.x, self.unfold.settings, -np.inf).reshape(c, kh * kw, n, oh, ow)
        one_hot = ops._constant(_first_maxima(columns).astype(gy.dtype))
        at_maxima = ops.Reshape.apply(gy.transpose(1, 0, 2, 3), shape=(c, 1, n, oh, ow)) * one_hot
        spread = ops.Reshape.apply(at_maxima, shape=(c, kh, kw, n, oh, ow))
        return (Fold.apply(spread, shape=self.unfold.shape, settings=self.unfold.settings),)


def _first_maxima(columns: Any) -> Any:
    """(C, K, N, OH, OW) bools: True at each window's first maximum (its first NaN, if any)."""
    xp = array_module(device_of(columns))
    index = xp.argmax(columns, axis=1)[:, None]
    return xp.arange(columns.shape[1]).reshape(1, -1, 1, 1, 1) == index


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

