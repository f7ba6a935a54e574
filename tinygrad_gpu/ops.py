"""The differentiable primitives: forward and backward side by side, on raw arrays.

Tensors (or Python numbers) are positional arguments; settings such as `axis` are keywords.
Each backward returns one gradient per positional input (None where none is needed).
The engine sums a gradient back to its input's shape, so broadcasting ops return it unreduced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from .backend import array_module, device_of, move
from .function import Function


def _swap_last(a: Any) -> Any:
    return a.swapaxes(-1, -2)


def _is_transposed(a: Any) -> bool:
    """True for a 2-D view whose columns are contiguous (the transpose of a contiguous matrix)."""
    return a.ndim == 2 and a.flags.f_contiguous and not a.flags.c_contiguous


# ---- elementwise primitives ------------------------------------------------------------------
class ElementwiseOp(Function):
    """A primitive that is one kernel row forward and, per input, one row (or a pass-through) backward.

    Subclasses only declare: `row` (its inputs are the op's tensor inputs, then its `settings`),
    and `grads`, one rule per input: "gy" passes the gradient through; (row, names) computes it
    from names among the forward row's inputs, "y" (the output) and "gy". The declarations are
    the whole op: forward and backward below follow them, and tg.fuse reads them to generate a
    single kernel for a chain of such ops.
    """

    row: K.Elementwise
    broadcasts_inputs = True  # gradients come in the output's shape; the engine un-broadcasts them
    settings: tuple[str, ...] = ()  # keyword settings passed to the row after the inputs
    grads: tuple = ()
    _saved: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._saved = frozenset(n for rule in cls.grads if isinstance(rule, tuple) for n in rule[1]
                               if n != "gy")
        cls.saves_output = "y" in cls._saved

    def forward(self, *inputs, **settings):
        args = inputs + tuple(settings[name] for name in self.settings)
        y = self.row(*args)
        for name, value in zip(self.row.input_names, args):
            if name in self._saved:
                setattr(self, name, value)  # saved for backward (released after it)
        if "y" in self._saved:
            self.y = y
        return y

    def backward(self, gy):
        grads = []
        for needed, rule in zip(self.needs_input_grad, self.grads):
            if not needed:
                grads.append(None)
            elif rule == "gy":
                grads.append(gy)
            else:
                grad_row, names = rule
                grads.append(grad_row(*(gy if n == "gy" else getattr(self, n) for n in names)))
        return grads


class Add(ElementwiseOp):
    row, grads = K.ADD, ("gy", "gy")


class Sub(ElementwiseOp):
    row, grads = K.SUB, ("gy", (K.NEG, ("gy",)))


class Mul(ElementwiseOp):
    row, grads = K.MUL, ((K.MUL, ("gy", "b")), (K.MUL, ("gy", "a")))


class Div(ElementwiseOp):
    row, grads = K.DIV, ((K.DIV, ("gy", "b")), (K.DIV_BWD_DIVISOR, ("a", "b", "gy")))


class Neg(ElementwiseOp):
    row, grads = K.NEG, ((K.NEG, ("gy",)),)


class Pow(ElementwiseOp):
    row, settings, grads = K.POW, ("exponent",), ((K.POW_BWD, ("x", "gy", "p")),)


class PowTensor(ElementwiseOp):
    """x ** p with a tensor exponent: both get a gradient."""

    row, grads = K.POW_TENSOR, ((K.POW_BWD_BASE, ("x", "p", "gy")), (K.POW_BWD_EXPONENT, ("x", "p", "gy")))


class Exp(ElementwiseOp):
    row, grads = K.EXP, ((K.MUL, ("gy", "y")),)


class Log(ElementwiseOp):
    row, grads = K.LOG, ((K.DIV, ("gy", "x")),)


class Sqrt(ElementwiseOp):
    row, grads = K.SQRT, ((K.SQRT_BWD, ("y", "gy")),)


class ReLU(ElementwiseOp):
    row, grads = K.RELU, ((K.RELU_BWD, ("y", "gy")),)


class Sigmoid(ElementwiseOp):
    row, grads = K.SIGMOID, ((K.SIGMOID_BWD, ("y", "gy")),)


class Tanh(ElementwiseOp):
    row, grads = K.TANH, ((K.TANH_BWD, ("y", "gy")),)


class LeakyReLU(ElementwiseOp):
    row, settings, grads = K.LEAKY_RELU, ("slope",), ((K.LEAKY_RELU_BWD, ("x", "gy", "slope")),)


class ELU(ElementwiseOp):
    row, settings, grads = K.ELU, ("alpha",), ((K.ELU_BWD, ("x", "gy", "alpha")),)


class SiLU(ElementwiseOp):
    row, grads = K.SILU, ((K.SILU_BWD, ("x", "gy")),)


class Softplus(ElementwiseOp):
    row, settings = K.SOFTPLUS, ("beta", "threshold")
    grads = ((K.SOFTPLUS_BWD, ("x", "gy", "beta", "threshold")),)


class GELU(ElementwiseOp):
    row, grads = K.GELU, ((K.GELU_BWD, ("x", "gy")),)


class GELUTanh(ElementwiseOp):
    row, grads = K.GELU_TANH, ((K.GELU_TANH_BWD, ("x", "gy")),)


# ---- reductions -----------------------------------------------------------------------------
def _kept_shape(shape: tuple, axis: tuple | None) -> tuple:
    """The shape a reduction over `axis` has with keepdims=True."""
    if axis is None:
        return (1,) * len(shape)
    return tuple(1 if i in axis else n for i, n in enumerate(shape))


class Sum(Function):
    """sum(x) * scale over `axis`; mean is the sum scaled by 1/n, in one node and one launch."""

    def forward(self, x, axis=None, keepdims=False, scale=1.0):
        self.shape, self.axis, self.scale = x.shape, axis, scale
        return K.SUM(x, axis=axis, keepdims=keepdims, scale=scale)

    def backward(self, gy):
        # the engine broadcasts nothing forward, so spread gy over the summed axes here
        gy = gy.reshape(_kept_shape(self.shape, self.axis))
        if self.scale != 1.0:
            gy = K.MUL(gy, self.scale)
        return (_broadcast(gy, self.shape),)


class Max(Function):
    """The maximum over `axis`; the gradient is shared evenly between the elements equal to it."""

    row = K.MAX
    saves_output = True  # m, the output (or its reshape)

    def forward(self, x, axis=None, keepdims=False):
        self.x, self.axis = x, axis
        self.m = self.row(x, axis=axis, keepdims=True)
        if keepdims:
            return self.m
        return self.m.reshape(tuple(n for i, n in enumerate(x.shape) if axis is not None and i not in axis))

    def backward(self, gy):
        mask = K.MAX_MASK(self.x, self.m)
        count = K.SUM(mask, axis=self.axis, keepdims=True)
        return (K.MAX_BWD(mask, gy.reshape(self.m.shape), count),)


class Min(Max):
    """The minimum over `axis`, with max's gradient rule."""

    row = K.MIN


# ---- shape ----------------------------------------------------------------------------------
def _broadcast(a: Any, shape: tuple) -> Any:
    return array_module(device_of(a)).broadcast_to(a, shape)


class Reshape(Function):
    may_view_input = True

    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, gy):
        return (gy.reshape(self.shape),)


class Transpose(Function):
    may_view_input = True

    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        inverse = [0] * len(self.axes)
        for position, axis in enumerate(self.axes):
            inverse[axis] = position
        return (gy.transpose(inverse),)


class Expand(Function):
    broadcasts_inputs = may_view_input = True

    def forward(self, x, shape):
        return _broadcast(x, shape)

    def backward(self, gy):
        return (gy,)  # the engine sums it back to the input's shape


# ---- linear algebra and devices -------------------------------------------------------------
class MatMul(Function):
    """a @ b, or a @ b.T with transpose_b=True (a Linear layer's x @ W.T, W's gradient in W's layout)."""

    broadcasts_inputs = True  # batched operands: gradients in the broadcast batch shape

    def forward(self, a, b, transpose_b=False):
        self.a, self.b, self.transpose_b = a, b, transpose_b
        return matmul_product(a, b, transpose_b)

    def backward(self, gy):
        return matmul_gradients(self.a, self.b, self.transpose_b, gy, *self.needs_input_grad)


def matmul_product(a: Any, b: Any, transpose_b: bool) -> Any:
    """a @ b, or a @ b.T with transpose_b (b in its own layout, no copy)."""
    return K.matmul(a, _swap_last(b) if transpose_b else b)


def matmul_gradients(a: Any, b: Any, transpose_b: bool, gy: Any, need_a: bool,
                     need_b: bool) -> tuple[Any, Any]:
    """The gradients of a @ b (a @ b.T with transpose_b) for gy, each in its operand's layout."""
    b_used = _swap_last(b) if transpose_b else b
    ga = gb = None
    if need_a:
        ga = (_swap_last(K.matmul(b_used, _swap_last(gy))) if _is_transposed(a)
              else K.matmul(gy, _swap_last(b_used)))
    if need_b:
        if transpose_b:
            gb = K.matmul(_swap_last(gy), a)
        elif _is_transposed(b):
            # for x @ W.T written out, compute W's gradient in W's own layout: after the
            # transpose's backward it is a contiguous array again
            gb = _swap_last(K.matmul(_swap_last(gy), a))
        else:
            gb = K.matmul(_swap_last(a), gy)
    return ga, gb


class Cast(Function):
    """x in another float dtype; the gradient comes back in x's dtype."""

    def forward(self, x, dtype):
        self.source = x.dtype
        return cast(x, dtype)

    def backward(self, gy):
        return (cast(gy, self.source),)


def cast(array: Any, dtype: Any) -> Any:
    """array.astype(dtype); out-of-range values (float64 to float32, NaN to int) convert silently,
    as they do on the GPU."""
    if type(array) is np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return array.astype(dtype)
    return array.astype(dtype)


class ToDevice(Function):
    def forward(self, x, device):
        self.source = device_of(x)
        return move(x, device)

    def backward(self, gy):
        return (move(gy, self.source),)


# ---- selection, indexing, joining and classification losses ---------------------------------
class Abs(ElementwiseOp):
    row, grads = K.ABS, ((K.ABS_BWD, ("x", "gy")),)


class Clip(ElementwiseOp):
    row, settings, grads = K.CLIP, ("low", "high"), ((K.CLIP_BWD, ("x", "gy", "low", "high")),)


class PairOp(Function):
    """A primitive of two operands whose backward is one row giving both gradients at once
    (so it is not an ElementwiseOp, and tg.fuse does not take it)."""

    row: K.Elementwise
    grad_row: K.Elementwise  # (a, b, gy) -> (ga, gb)
    broadcasts_inputs = True

    def forward(self, a, b):
        self.a, self.b = a, b
        return self.row(a, b)

    def backward(self, gy):
        ga, gb = self.grad_row(self.a, self.b, gy)
        return (ga if self.needs_input_grad[0] else None), (gb if self.needs_input_grad[1] else None)


class Maximum(PairOp):
    row, grad_row = K.MAXIMUM, K.MAXIMUM_BWD


class Minimum(PairOp):
    row, grad_row = K.MINIMUM, K.MINIMUM_BWD


class Where(Function):
    """mask is a 0/1 array in the operands' dtype; it gets no gradient."""

    broadcasts_inputs = True

    def forward(self, mask, a, b):
        self.mask = mask
        return K.WHERE(mask, a, b)

    def backward(self, gy):
        ga, gb = K.WHERE_BWD(self.mask, gy)
        return None, (ga if self.needs_input_grad[1] else None), (gb if self.needs_input_grad[2] else None)


class Index(Function):
    """x[key] for a key already checked by the caller (ints in range, index arrays on x's device)."""

    may_view_input = True  # basic indexing gives a view

    def forward(self, x, key, advanced):
        self.shape, self.dtype, self.key, self.advanced = x.shape, x.dtype, key, advanced
        if not advanced and not any(k is Ellipsis for k in key):
            key = (*key, Ellipsis)  # a full integer index then gives a 0-d view, not a NumPy scalar copy
        return array_module(device_of(x)).asarray(x[key])  # (a 0-d integer index array gives a scalar)

    def backward(self, gy):
        xp = array_module(device_of(gy))
        gx = xp.zeros(self.shape, self.dtype)
        if self.advanced:
            xp.add.at(gx, self.key, gy)  # repeated indices add up, as they must
        else:
            gx[self.key] = gy
        return (gx,)


class Concatenate(Function):
    def forward(self, *arrays, axis):
        self.axis, self.sizes = axis, [a.shape[axis] for a in arrays]
        return array_module(device_of(arrays[0])).concatenate(arrays, axis=axis)

    def backward(self, gy):
        grads, start = [], 0
        for needed, size in zip(self.needs_input_grad, self.sizes):
            piece = (slice(None),) * self.axis + (slice(start, start + size),)
            grads.append(gy[piece] if needed else None)
            start += size
        return tuple(grads)


class BinaryCrossEntropy(PairOp):
    row, grad_row = K.BCE, K.BCE_BWD


class BinaryCrossEntropyWithLogits(PairOp):
    row, grad_row = K.BCE_WITH_LOGITS, K.BCE_WITH_LOGITS_BWD


# ---- in-place assignment --------------------------------------------------------------------
class SetItem(Function):
    """x with x[key] = v (with a mask instead of a key: v where the mask is 1), as a new array.

    What an in-place assignment records: x's gradient is gy with the written positions zeroed,
    v's is gy at those positions (the engine sums it back over v's broadcast dimensions).
    """

    broadcasts_inputs = True

    def forward(self, x, v, key, mask):
        self.key, self.value_shape = key, getattr(v, "shape", ())
        # a number becomes a scalar of x's dtype (a kernel argument, not a host-to-device copy)
        if not hasattr(v, "dtype") or v.dtype != x.dtype:
            v = cast(np.asarray(v), x.dtype)[()] if not hasattr(v, "dtype") else cast(v, x.dtype)
        if mask is not None:
            self.mask = mask if mask.dtype == x.dtype else mask.astype(x.dtype)
            return K.WHERE(self.mask, v, x)
        self.mask = None
        out = x.copy()
        out[key] = v
        return out

    def backward(self, gy):
        need_x, need_v = self.needs_input_grad[:2]
        if self.mask is not None:
            gv, gx = K.WHERE_BWD(self.mask, gy)
            return (gx if need_x else None), (gv if need_v else None)
        gx = gv = None
        if need_x:
            gx = gy.copy()
            gx[self.key] = 0
        if need_v:
            gv = array_module(device_of(gy)).asarray(gy[self.key])
            missing = len(self.value_shape) - gv.ndim  # v may have extra leading dimensions of size 1
            if missing > 0:
                gv = gv.reshape((1,) * missing + gv.shape)
        return gx, gv
