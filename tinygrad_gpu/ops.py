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
        self.x = x  # the derivative is computed from x (see kernels.SIGMOID_BWD)
        return K.SIGMOID(x)

    def backward(self, gy):
        return (K.SIGMOID_BWD(self.x, gy),)


class Tanh(Function):
    def forward(self, x):
        self.x = x  # the derivative is computed from x (see kernels.TANH_BWD)
        return K.TANH(x)

    def backward(self, gy):
        return (K.TANH_BWD(self.x, gy),)


# ---- reductions -----------------------------------------------------------------------------
def _kept_shape(shape: tuple, axis: tuple | None) -> tuple:
    """The shape a reduction over `axis` has with keepdims=True."""
    if axis is None:
        return (1,) * len(shape)
    return tuple(1 if i in axis else n for i, n in enumerate(shape))


class Sum(Function):
    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axis = x.shape, axis
        return K.SUM(x, axis=axis, keepdims=keepdims)

    def backward(self, gy):
        # the engine broadcasts nothing forward, so spread gy over the summed axes here
        gy = gy.reshape(_kept_shape(self.shape, self.axis))
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
        ga = K.matmul(gy, _swap_last(self.b)) if self.needs_input_grad[0] else None
        gb = K.matmul(_swap_last(self.a), gy) if self.needs_input_grad[1] else None
        return ga, gb


class ToDevice(Function):
    def forward(self, x, device):
        self.source = device_of(x)
        return move(x, device)

    def backward(self, gy):
        return (move(gy, self.source),)
