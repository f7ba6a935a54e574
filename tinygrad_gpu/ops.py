"""The differentiable primitives: forward and backward side by side, on raw arrays.

Tensors (or Python numbers) are positional arguments; settings such as `axis` are keywords.
Each backward returns one gradient per positional input (None where none is needed).
The engine sums a gradient back to its input's shape, so broadcasting ops return it unreduced.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from . import kernels as K
from .backend import array_module, device_of, move
from .function import Function

if TYPE_CHECKING:
    from .tensor import Tensor


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
    # True when every gradient rule is gy times a piecewise-constant slope (the slope's own
    # derivative is 0 almost everywhere), so create_graph may take the slope as a constant
    piecewise_linear = False
    _saved: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._saved = frozenset(n for rule in cls.grads if isinstance(rule, tuple) for n in rule[1]
                               if n != "gy")
        cls.saves_output = "y" in cls._saved

    def forward(self, *inputs, **settings):
        args = inputs + tuple(settings[name] for name in self.settings) if self.settings else inputs
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

    def backward_graph(self, gy: Tensor) -> tuple:
        """The gradients as recorded tensor ops (create_graph=True), so they can be differentiated again."""
        grads = self.graph_grads(gy, *self.inputs)
        return tuple(g if needed else None for g, needed in zip(grads, self.needs_input_grad))

    def graph_grads(self, gy: Tensor, *inputs: Any) -> tuple:
        """Per input, gy times the local slope, the slope taken as a constant: right only for the
        ops declared `piecewise_linear` (ReLU, abs, clip, ...), whose slope has derivative 0 almost
        everywhere, and for pass-through rules. Smooth ops override this with their derivative
        written in tensor ops."""
        if not self.piecewise_linear and any(rule != "gy" for rule in self.grads):
            raise RuntimeError(f"{self.name} has no recorded gradient rule: it needs a graph_grads method "
                               "(its derivative in tensor ops) to be differentiated twice")
        grads = []
        for rule, needed in zip(self.grads, self.needs_input_grad):
            if not needed or rule == "gy":
                grads.append(gy if needed else None)
                continue
            grad_row, names = rule
            slope = grad_row(*(_ones_like(gy) if n == "gy" else getattr(self, n) for n in names))
            grads.append(gy * _constant(slope))
        return tuple(grads)


class Add(ElementwiseOp):
    row, grads = K.ADD, ("gy", "gy")


class Sub(ElementwiseOp):
    row, grads = K.SUB, ("gy", (K.NEG, ("gy",)))

    def graph_grads(self, gy, a, b):
        return gy, -gy


class Mul(ElementwiseOp):
    row, grads = K.MUL, ((K.MUL, ("gy", "b")), (K.MUL, ("gy", "a")))

    def graph_grads(self, gy, a, b):
        return gy * b, gy * a


class Div(ElementwiseOp):
    row, grads = K.DIV, ((K.DIV, ("gy", "b")), (K.DIV_BWD_DIVISOR, ("a", "b", "gy")))

    def graph_grads(self, gy, a, b):
        return gy / b, -gy * (a / b) / b


class Neg(ElementwiseOp):
    row, grads = K.NEG, ((K.NEG, ("gy",)),)

    def graph_grads(self, gy, x):
        return (-gy,)


class Pow(ElementwiseOp):
    row, settings, grads = K.POW, ("exponent",), ((K.POW_BWD, ("x", "gy", "p")),)

    def graph_grads(self, gy, x):
        if self.p == 0:  # x**0 is constant (see POW_BWD)
            return (gy * 0.0,)
        return (gy * (Pow.apply(x, exponent=self.p - 1) * self.p),)


class PowTensor(ElementwiseOp):
    """x ** p with a tensor exponent: both get a gradient."""

    row, grads = K.POW_TENSOR, ((K.POW_BWD_BASE, ("x", "p", "gy")), (K.POW_BWD_EXPONENT, ("x", "p", "gy")))

    def graph_grads(self, gy, x, p):
        need_x, need_p = self.needs_input_grad
        # the rows' conventions (0 where p == 0, resp. where x == 0 and p >= 0) as constant masks
        gx = gy * (PowTensor.apply(x, p - 1.0) * p) * _mask(self.p != 0, gy) if need_x else None
        gp = None
        if need_p:
            log_x = x.log() if isinstance(x, _tensor.Tensor) else math.log(x)
            gp = gy * (PowTensor.apply(x, p) * log_x)
            zero_at = (self.x == 0) & (self.p >= 0)  # no .any(): that would read back from the GPU
            gp = Where.apply(zero_at.astype(gy.dtype), 0.0, gp)
        return gx, gp


class Exp(ElementwiseOp):
    row, grads = K.EXP, ((K.MUL, ("gy", "y")),)

    def graph_grads(self, gy, x):
        return (gy * x.exp(),)


class Log(ElementwiseOp):
    row, grads = K.LOG, ((K.DIV, ("gy", "x")),)

    def graph_grads(self, gy, x):
        return (gy / x,)


class Sqrt(ElementwiseOp):
    row, grads = K.SQRT, ((K.SQRT_BWD, ("y", "gy")),)

    def graph_grads(self, gy, x):
        y = x.sqrt()
        return (gy / (y + y),)


class ReLU(ElementwiseOp):
    row, grads = K.RELU, ((K.RELU_BWD, ("y", "gy")),)
    piecewise_linear = True


class Sigmoid(ElementwiseOp):
    row, grads = K.SIGMOID, ((K.SIGMOID_BWD, ("y", "gy")),)

    def graph_grads(self, gy, x):
        s = x.sigmoid()
        return (gy * (s * (1.0 - s)),)


class Tanh(ElementwiseOp):
    row, grads = K.TANH, ((K.TANH_BWD, ("y", "gy")),)

    def graph_grads(self, gy, x):
        t = x.tanh()
        return (gy * (1.0 - t * t),)


class LeakyReLU(ElementwiseOp):
    row, settings, grads = K.LEAKY_RELU, ("slope",), ((K.LEAKY_RELU_BWD, ("x", "gy", "slope")),)
    piecewise_linear = True


class ELU(ElementwiseOp):
    row, settings, grads = K.ELU, ("alpha",), ((K.ELU_BWD, ("x", "gy", "alpha")),)

    def graph_grads(self, gy, x):
        positive = _mask(self.x > 0, gy)
        # exp only of x <= 0 (no overflow where the positive branch is taken)
        return (gy * (positive + (1.0 - positive) * (x.clip(max=0.0).exp() * self.alpha)),)


class SiLU(ElementwiseOp):
    row, grads = K.SILU, ((K.SILU_BWD, ("x", "gy")),)

    def graph_grads(self, gy, x):
        s = x.sigmoid()
        return (gy * (s * (1.0 + x * (1.0 - s))),)


class Softplus(ElementwiseOp):
    row, settings = K.SOFTPLUS, ("beta", "threshold")
    grads = ((K.SOFTPLUS_BWD, ("x", "gy", "beta", "threshold")),)

    def graph_grads(self, gy, x):
        linear = _mask(self.x * self.beta > self.threshold, gy)  # softplus is x there: slope 1
        return (gy * (linear + (1.0 - linear) * (x * self.beta).sigmoid()),)


class GELU(ElementwiseOp):
    row, grads = K.GELU, ((K.GELU_BWD, ("x", "gy")),)

    def graph_grads(self, gy, x):
        return (gy * GELUSlope.apply(x),)


class GELUSlope(Function):
    """GELU's derivative Φ(x) + x φ(x) as a node of its own (Φ needs erf, which no tensor op has);
    its derivative is φ(x) (2 - x²)."""

    def forward(self, x):
        self.x = x
        return K.GELU_BWD(x, array_module(device_of(x)).ones(x.shape, x.dtype))

    def backward(self, gy):
        return tuple(g.array for g in self.backward_graph(_constant(gy), _constant(self.x)))

    def backward_graph(self, gy: Tensor, x: Tensor | None = None) -> tuple:
        """gy φ(x) (2 - x²), recorded."""
        x = self.inputs[0] if x is None else x
        square = x * x
        return (gy * ((square * -0.5).exp() * (_INV_SQRT_2PI * (2.0 - square))),)


class GELUTanh(ElementwiseOp):
    row, grads = K.GELU_TANH, ((K.GELU_TANH_BWD, ("x", "gy")),)

    def graph_grads(self, gy, x):
        c = math.sqrt(2.0 / math.pi)
        t = ((x + x * x * x * 0.044715) * c).tanh()
        slope = (1.0 + t) * 0.5 + x * (1.0 - t * t) * ((1.0 + x * x * 0.134145) * (0.5 * c))
        return (gy * slope,)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy spread over the summed axes, recorded."""
        gy = Reshape.apply(gy, shape=_kept_shape(self.shape, self.axis))
        if self.scale != 1.0:
            gy = gy * self.scale
        return (Expand.apply(gy, shape=self.shape),)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy times the constant share of each extreme element, recorded."""
        mask = K.MAX_MASK(self.x, self.m)
        share = K.MAX_BWD(mask, _ones_like(self.m), K.SUM(mask, axis=self.axis, keepdims=True))
        return (Reshape.apply(gy, shape=self.m.shape) * _constant(share),)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy in the input's shape, recorded."""
        return (Reshape.apply(gy, shape=self.shape),)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy with the inverse permutation, recorded."""
        inverse = [0] * len(self.axes)
        for position, axis in enumerate(self.axes):
            inverse[axis] = position
        return (Transpose.apply(gy, axes=tuple(inverse)),)


class Expand(Function):
    broadcasts_inputs = may_view_input = True

    def forward(self, x, shape):
        return _broadcast(x, shape)

    def backward(self, gy):
        return (gy,)  # the engine sums it back to the input's shape

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy as it is (the engine sums it back, recorded)."""
        return (gy,)


# ---- linear algebra and devices -------------------------------------------------------------
class MatMul(Function):
    """a @ b, or a @ b.T with transpose_b=True (a Linear layer's x @ W.T, W's gradient in W's layout)."""

    broadcasts_inputs = True  # batched operands: gradients in the broadcast batch shape

    def forward(self, a, b, transpose_b=False):
        self.a, self.b, self.transpose_b = a, b, transpose_b
        return matmul_product(a, b, transpose_b)

    def backward(self, gy):
        return matmul_gradients(self.a, self.b, self.transpose_b, gy, *self.needs_input_grad)

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy @ b.T and a.T @ gy (b's own layout with transpose_b), as recorded products."""
        a, b = self.inputs
        need_a, need_b = self.needs_input_grad
        ga = MatMul.apply(gy, b, transpose_b=not self.transpose_b) if need_a else None
        gb = None
        if need_b:
            gb = MatMul.apply(_swapped(gy), a) if self.transpose_b else MatMul.apply(_swapped(a), gy)
        return ga, gb


def _swapped(t: Tensor) -> Tensor:
    """t with its last two axes swapped, recorded."""
    axes = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return Transpose.apply(t, axes=axes)


def matmul_product(a: Any, b: Any, transpose_b: bool) -> Any:
    """a @ b, or a @ b.T with transpose_b (b in its own layout, no copy); the product's layout
    is the fastest one."""
    return K.matmul(a, _swap_last(b) if transpose_b else b, any_layout=True)


def matmul_gradients(a: Any, b: Any, transpose_b: bool, gy: Any, need_a: bool,
                     need_b: bool) -> tuple[Any, Any]:
    """The gradients of a @ b (a @ b.T with transpose_b) for gy, each in its operand's layout."""
    b_used = b.swapaxes(-1, -2) if transpose_b else b
    ga = gb = None
    if need_a:
        # (b_used with its last axes swapped is b itself when transpose_b: the same view, no call)
        ga = (_swap_last(K.matmul(b_used, gy.swapaxes(-1, -2))) if _is_transposed(a)
              else K.matmul(gy, b if transpose_b else b_used.swapaxes(-1, -2)))
    if need_b:
        if transpose_b:
            gb = K.matmul(gy.swapaxes(-1, -2), a)
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

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy cast back to the input's dtype, recorded."""
        return (Cast.apply(gy, dtype=self.source),)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy moved back to the input's device, recorded."""
        return (ToDevice.apply(gy, device=self.source),)


# ---- selection, indexing, joining and classification losses ---------------------------------
class Abs(ElementwiseOp):
    row, grads = K.ABS, ((K.ABS_BWD, ("x", "gy")),)
    piecewise_linear = True


class Clip(ElementwiseOp):
    row, settings, grads = K.CLIP, ("low", "high"), ((K.CLIP_BWD, ("x", "gy", "low", "high")),)
    piecewise_linear = True


class PairOp(Function):
    """A primitive of two operands whose backward is one row giving both gradients at once
    (so it is not an ElementwiseOp, and tg.fuse does not take it)."""

    row: K.Elementwise
    grad_row: K.Elementwise  # (a, b, gy) -> (ga, gb)
    broadcasts_inputs = True
    piecewise_linear = False  # as ElementwiseOp's: True lets create_graph take the slopes as constants

    def forward(self, a, b):
        self.a, self.b = a, b
        return self.row(a, b)

    def backward(self, gy):
        ga, gb = self.grad_row(self.a, self.b, gy)
        return (ga if self.needs_input_grad[0] else None), (gb if self.needs_input_grad[1] else None)

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy times each operand's slope taken as a constant (right for maximum and minimum, which
        are piecewise linear); the losses override it with their derivatives in tensor ops."""
        if not self.piecewise_linear:
            raise RuntimeError(f"{self.name} has no recorded gradient rule: it needs a backward_graph method "
                               "(its derivatives in tensor ops) to be differentiated twice")
        slopes = self.grad_row(self.a, self.b, _ones_like(gy))
        return tuple(gy * _constant(slope) if needed else None
                     for slope, needed in zip(slopes, self.needs_input_grad))


class Maximum(PairOp):
    row, grad_row, piecewise_linear = K.MAXIMUM, K.MAXIMUM_BWD, True


class Minimum(PairOp):
    row, grad_row, piecewise_linear = K.MINIMUM, K.MINIMUM_BWD, True


class Where(Function):
    """mask is a 0/1 array in the operands' dtype; it gets no gradient."""

    broadcasts_inputs = True

    def forward(self, mask, a, b):
        self.mask = mask
        return K.WHERE(mask, a, b)

    def backward(self, gy):
        ga, gb = K.WHERE_BWD(self.mask, gy)
        return None, (ga if self.needs_input_grad[1] else None), (gb if self.needs_input_grad[2] else None)

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy where the mask holds (for a), elsewhere (for b), recorded."""
        _, need_a, need_b = self.needs_input_grad
        return (None, Where.apply(self.mask, gy, 0.0) if need_a else None,
                Where.apply(self.mask, 0.0, gy) if need_b else None)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy scattered into zeros of the input's shape, recorded (its own gradient is gy[key])."""
        return (IndexAdd.apply(gy, shape=self.shape, key=self.key, advanced=self.advanced),)


class IndexAdd(Function):
    """Zeros of `shape` with gy added at `key` (repeated indices add up): Index's adjoint."""

    def forward(self, gy, shape, key, advanced):
        self.key, self.advanced = key, advanced
        node = Index()
        node.shape, node.dtype, node.key, node.advanced = shape, gy.dtype, key, advanced
        return node.backward(gy)[0]

    def backward(self, ggx):
        return (array_module(device_of(ggx)).asarray(ggx[self.key]),)

    def backward_graph(self, ggx: Tensor) -> tuple:
        """ggx[key], recorded."""
        return (Index.apply(ggx, key=self.key, advanced=self.advanced),)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """Each input's slice of gy, recorded."""
        grads, start = [], 0
        for needed, size in zip(self.needs_input_grad, self.sizes):
            piece = (slice(None),) * self.axis + (slice(start, start + size),)
            grads.append(Index.apply(gy, key=piece, advanced=False) if needed else None)
            start += size
        return tuple(grads)


class BinaryCrossEntropy(PairOp):
    row, grad_row = K.BCE, K.BCE_BWD

    def backward_graph(self, gy: Tensor) -> tuple:
        """BCE_BWD's formulas (clamped logs, denominator >= 1e-12) in tensor ops."""
        p, t = self.inputs
        need_p, need_t = self.needs_input_grad
        gp = gy * (p - t) / ((1.0 - p) * p).clip(min=1e-12) if need_p else None
        gt = None
        if need_t:
            gt = gy * ((1.0 - p).log().clip(min=-100.0) - p.log().clip(min=-100.0))
        return gp, gt


class BinaryCrossEntropyWithLogits(PairOp):
    row, grad_row = K.BCE_WITH_LOGITS, K.BCE_WITH_LOGITS_BWD

    def backward_graph(self, gy: Tensor) -> tuple:
        """gy (sigmoid(x) - t) and -gy x, recorded."""
        x, t = self.inputs
        need_x, need_t = self.needs_input_grad
        return (gy * (x.sigmoid() - t) if need_x else None), (-gy * x if need_t else None)


# ---- helpers of the recorded (create_graph) gradients ---------------------------------------
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _constant(array: Any) -> Tensor:
    """An array as a tensor outside every graph (a slope whose own derivative is zero)."""
    return _tensor.Tensor._from_array(array)


def _mask(condition: Any, like: Tensor) -> Tensor:
    """A boolean array as a constant 0/1 tensor of `like`'s dtype."""
    return _tensor.Tensor._from_array(condition.astype(like.dtype))


def _ones_like(value: Any) -> Any:
    """Ones of an array's (or tensor's) shape, dtype and device, as an array."""
    array = getattr(value, "array", value)
    return array_module(device_of(array)).ones(array.shape, array.dtype)


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

    def backward_graph(self, gy: Tensor) -> tuple:
        """The same gradients, recorded: gy with the written positions zeroed, and gy there."""
        need_x, need_v = self.needs_input_grad[:2]
        if self.mask is not None:
            kept = _constant(self.mask)
            return (gy * (1.0 - kept) if need_x else None), (gy * kept if need_v else None)
        gx = SetItem.apply(gy, 0.0, key=self.key, mask=None) if need_x else None
        gv = None
        if need_v:
            gv = gy[self.key]
            missing = len(self.value_shape) - gv.ndim  # v may have extra leading dimensions of size 1
            if missing > 0:
                gv = gv.reshape((1,) * missing + gv.shape)
        return gx, gv


from . import tensor as _tensor  # noqa: E402  (tensor.py imports this module back)
