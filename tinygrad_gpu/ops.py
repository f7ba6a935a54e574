"""The differentiable primitives: forward and backward side by side, on raw arrays.

Tensors (or Python numbers) are positional arguments; settings such as `axis` are keywords.
Each backward returns one gradient per positional input (None where none is needed).
The engine sums a gradient back to its input's shape, so broadcasting ops return it unreduced.
"""

from __future__ import annotations

from typing import Any

from . import kernels as K
from .backend import array_module, device_of, move
from .function import Function


def _swap_last(a: Any) -> Any:
    return a.swapaxes(-1, -2)


def _is_transposed(a: Any) -> bool:
    """True for a 2-D view whose columns are contiguous (the transpose of a contiguous matrix)."""
    return a.ndim == 2 and a.flags.f_contiguous and not a.flags.c_contiguous


# ---- binary arithmetic ----------------------------------------------------------------------
class Add(Function):
    def forward(self, a, b):
        return K.ADD(a, b)

    def backward(self, gy):
        return gy, gy


class Sub(Function):
    def forward(self, a, b):
        return K.SUB(a, b)

    def backward(self, gy):
        return gy, (K.NEG(gy) if self.needs_input_grad[1] else None)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return K.MUL(a, b)

    def backward(self, gy):
        ga = K.MUL(gy, self.b) if self.needs_input_grad[0] else None
        gb = K.MUL(gy, self.a) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return K.DIV(a, b)

    def backward(self, gy):
        ga = K.DIV(gy, self.b) if self.needs_input_grad[0] else None
        gb = K.DIV_BWD_DIVISOR(self.a, self.b, gy) if self.needs_input_grad[1] else None
        return ga, gb


# ---- unary elementwise ----------------------------------------------------------------------
class Neg(Function):
    def forward(self, x):
        return K.NEG(x)

    def backward(self, gy):
        return (K.NEG(gy),)


class Pow(Function):
    def forward(self, x, exponent):
        self.x, self.exponent = x, exponent
        return K.POW(x, exponent)

    def backward(self, gy):
        return (K.POW_BWD(self.x, gy, self.exponent),)


class Exp(Function):
    def forward(self, x):
        self.y = K.EXP(x)
        return self.y

    def backward(self, gy):
        return (K.MUL(gy, self.y),)


class Log(Function):
    def forward(self, x):
        self.x = x
        return K.LOG(x)

    def backward(self, gy):
        return (K.DIV(gy, self.x),)


class Sqrt(Function):
    def forward(self, x):
        self.y = K.SQRT(x)
        return self.y

    def backward(self, gy):
        return (K.SQRT_BWD(self.y, gy),)


class ReLU(Function):
    def forward(self, x):
        self.y = K.RELU(x)
        return self.y

    def backward(self, gy):
        return (K.RELU_BWD(self.y, gy),)


class Sigmoid(Function):
    def forward(self, x):
        self.y = K.SIGMOID(x)
        return self.y

    def backward(self, gy):
        return (K.SIGMOID_BWD(self.y, gy),)


class Tanh(Function):
    def forward(self, x):
        self.y = K.TANH(x)
        return self.y

    def backward(self, gy):
        return (K.TANH_BWD(self.y, gy),)


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
    def forward(self, x, axis=None, keepdims=False):
        self.x, self.axis = x, axis
        self.m = K.MAX(x, axis=axis, keepdims=True)
        if keepdims:
            return self.m
        return self.m.reshape(tuple(n for i, n in enumerate(x.shape) if axis is not None and i not in axis))

    def backward(self, gy):
        mask = K.EQUAL_MASK(self.x, self.m)
        count = K.SUM(mask, axis=self.axis, keepdims=True)
        return (K.MAX_BWD(mask, gy.reshape(self.m.shape), count),)


# ---- shape ----------------------------------------------------------------------------------
def _broadcast(a: Any, shape: tuple) -> Any:
    return array_module(device_of(a)).broadcast_to(a, shape)


class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, gy):
        return (gy.reshape(self.shape),)


class Transpose(Function):
    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        inverse = [0] * len(self.axes)
        for position, axis in enumerate(self.axes):
            inverse[axis] = position
        return (gy.transpose(inverse),)


class Expand(Function):
    def forward(self, x, shape):
        return _broadcast(x, shape)

    def backward(self, gy):
        return (gy,)  # the engine sums it back to the input's shape


# ---- linear algebra and devices -------------------------------------------------------------
class MatMul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return K.matmul(a, b)

    def backward(self, gy):
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = (_swap_last(K.matmul(self.b, _swap_last(gy))) if _is_transposed(self.a)
                  else K.matmul(gy, _swap_last(self.b)))
        if self.needs_input_grad[1]:
            # for x @ W.T, compute W's gradient in W's own layout: after the transpose's
            # backward it is a contiguous array again (one launch for the optimizer later)
            gb = (_swap_last(K.matmul(_swap_last(gy), self.a)) if _is_transposed(self.b)
                  else K.matmul(_swap_last(self.a), gy))
        return ga, gb


class ToDevice(Function):
    def forward(self, x, device):
        self.source = device_of(x)
        return move(x, device)

    def backward(self, gy):
        return (move(gy, self.source),)


# ---- selection, indexing, joining and classification losses ---------------------------------
class Abs(Function):
    def forward(self, x):
        self.x = x
        return K.ABS(x)

    def backward(self, gy):
        return (K.ABS_BWD(self.x, gy),)


class Clip(Function):
    def forward(self, x, low, high):
        self.x, self.low, self.high = x, low, high
        return K.CLIP(x, low, high)

    def backward(self, gy):
        return (K.CLIP_BWD(self.x, gy, self.low, self.high),)


class Maximum(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return K.MAXIMUM(a, b)

    def backward(self, gy):
        ga, gb = K.MAXIMUM_BWD(self.a, self.b, gy)
        return (ga if self.needs_input_grad[0] else None), (gb if self.needs_input_grad[1] else None)


class Minimum(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return K.MINIMUM(a, b)

    def backward(self, gy):
        ga, gb = K.MINIMUM_BWD(self.a, self.b, gy)
        return (ga if self.needs_input_grad[0] else None), (gb if self.needs_input_grad[1] else None)


class Where(Function):
    """mask is a 0/1 array in the operands' dtype; it gets no gradient."""

    def forward(self, mask, a, b):
        self.mask = mask
        return K.WHERE(mask, a, b)

    def backward(self, gy):
        ga, gb = K.WHERE_BWD(self.mask, gy)
        return None, (ga if self.needs_input_grad[1] else None), (gb if self.needs_input_grad[2] else None)


class Index(Function):
    """x[key] for a key already checked by the caller (ints in range, index arrays on x's device)."""

    def forward(self, x, key, advanced):
        self.shape, self.dtype, self.key, self.advanced = x.shape, x.dtype, key, advanced
        xp = array_module(device_of(x))
        return xp.asarray(x[key])  # NumPy gives a scalar, not a 0-d array, for a full integer index

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


class BinaryCrossEntropy(Function):
    def forward(self, p, t):
        self.p, self.t = p, t
        return K.BCE(p, t)

    def backward(self, gy):
        gp, gt = K.BCE_BWD(self.p, self.t, gy)
        return (gp if self.needs_input_grad[0] else None), (gt if self.needs_input_grad[1] else None)


class BinaryCrossEntropyWithLogits(Function):
    def forward(self, x, t):
        self.x, self.t = x, t
        return K.BCE_WITH_LOGITS(x, t)

    def backward(self, gy):
        gx, gt = K.BCE_WITH_LOGITS_BWD(self.x, self.t, gy)
        return (gx if self.needs_input_grad[0] else None), (gt if self.needs_input_grad[1] else None)
