"""The kernel table: every primitive is one row, its CUDA body beside its NumPy twin.

A row is built into a ``cupy.ElementwiseKernel`` / ``cupy.ReductionKernel`` on first GPU use
and dispatches on the array type: NumPy arrays (and plain Python scalars) go to the twin.
Both sides must compute the same formula; ``tests/test_kernel_twins.py`` walks every row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import cupy_module

ROWS: dict[str, Elementwise | Reduction] = {}


def _runs_on_numpy(args: tuple) -> bool:
    for arg in args:
        kind = type(arg)
        if kind is np.ndarray:
            return True
        if kind is not float and kind is not int:
            return False  # a cupy.ndarray
    return True


class Elementwise:
    """One elementwise primitive: a CUDA statement and the NumPy function computing the same."""

    def __init__(self, name: str, in_params: str, out_params: str, body: str,
                 twin: Callable[..., Any], *, scalars: tuple[str, ...] = (),
                 domain: tuple[float, float] = (-3.0, 3.0), preamble: str = "") -> None:
        self.name, self.in_params, self.out_params = name, in_params, out_params
        self.body, self.twin, self.preamble = body, twin, preamble
        self.scalars = scalars  # parameters passed as Python numbers, not arrays
        self.domain = domain  # input range the twin test draws from
        self._kernel: Any = None
        ROWS[name] = self

    @property
    def n_outputs(self) -> int:
        """How many outputs the row writes."""
        return len(self.out_params.split(","))

    def cuda_kernel(self) -> Any:
        """The compiled-on-first-use cupy.ElementwiseKernel for this row."""
        if self._kernel is None:
            cp = cupy_module()
            self._kernel = cp.ElementwiseKernel(self.in_params, self.out_params, self.body,
                                                "tg_" + self.name, preamble=self.preamble)
        return self._kernel

    def __call__(self, *args: Any, out: tuple | None = None) -> Any:
        if _runs_on_numpy(args):
            with np.errstate(all="ignore"):  # inf/NaN follow IEEE rules silently, as on the GPU
                if out is None:
                    result = self.twin(*args)
                    return np.asarray(result) if self.n_outputs == 1 else tuple(map(np.asarray, result))
                result = self.twin(*args, *out)
            for target, value in zip(out, result if len(out) > 1 else (result,)):
                np.copyto(target, value)
            return out[0] if len(out) == 1 else out
        kernel = self._kernel or self.cuda_kernel()
        return kernel(*args) if out is None else kernel(*args, *out)


class Reduction:
    """One reduction primitive: a cupy.ReductionKernel and the NumPy function computing the same."""

    def __init__(self, name: str, in_params: str, out_params: str, map_expr: str,
                 reduce_expr: str, post_map_expr: str, identity: str,
                 twin: Callable[..., Any], *, domain: tuple[float, float] = (-3.0, 3.0)) -> None:
        self.name, self.in_params, self.out_params = name, in_params, out_params
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity, self.twin, self.domain = identity, twin, domain
        self.scalars = ()
        self._kernel: Any = None
        ROWS[name] = self

    def cuda_kernel(self) -> Any:
        """The compiled-on-first-use cupy.ReductionKernel for this row."""
        if self._kernel is None:
            cp = cupy_module()
            self._kernel = cp.ReductionKernel(self.in_params, self.out_params, self.map_expr,
                                              self.reduce_expr, self.post_map_expr,
                                              self.identity, "tg_" + self.name)
        return self._kernel

    def __call__(self, x: Any, axis: int | tuple[int, ...] | None = None,
                 keepdims: bool = False) -> Any:
        if type(x) is np.ndarray:
            with np.errstate(all="ignore"):
                return np.asarray(self.twin(x, axis=axis, keepdims=keepdims))
        kernel = self._kernel or self.cuda_kernel()
        return kernel(x, axis=axis, keepdims=keepdims)


# ---------------------------------------------------------------------------------------------
# Elementwise rows.  CUDA body                                   | NumPy twin (same formula)
# ---------------------------------------------------------------------------------------------
ADD = Elementwise("add", "T a, T b", "T y", "y = a + b",
                  lambda a, b: a + b)
SUB = Elementwise("sub", "T a, T b", "T y", "y = a - b",
                  lambda a, b: a - b)
MUL = Elementwise("mul", "T a, T b", "T y", "y = a * b",
                  lambda a, b: a * b)
DIV = Elementwise("div", "T a, T b", "T y", "y = a / b",
                  lambda a, b: a / b, domain=(0.5, 3.0))
# d(a/b)/db = -a/b², written as (a/b)/b so that b² cannot overflow on its own.
DIV_BWD_DIVISOR = Elementwise("div_bwd_divisor", "T a, T b, T gy", "T gb", "gb = -gy * (a / b) / b",
                              lambda a, b, gy: -gy * (a / b) / b, domain=(0.5, 3.0))
NEG = Elementwise("neg", "T x", "T y", "y = -x",
                  lambda x: -x)
POW = Elementwise("pow", "T x, T p", "T y", "y = pow(x, p)",
                  lambda x, p: np.power(x, x.dtype.type(p)), scalars=("p",), domain=(0.5, 3.0))
# NOTE: x**0 is constant, so its gradient is 0 even at x = 0 (where p * x**(p-1) would be 0 * inf).
POW_BWD = Elementwise("pow_bwd", "T x, T gy, T p", "T gx",
                      "gx = p == 0 ? (T)0 : gy * p * pow(x, p - 1)",
                      lambda x, gy, p: (gy * 0 if p == 0
                                        else gy * x.dtype.type(p) * np.power(x, x.dtype.type(p - 1))),
                      scalars=("p",), domain=(0.5, 3.0))
EXP = Elementwise("exp", "T x", "T y", "y = exp(x)",
                  np.exp)
LOG = Elementwise("log", "T x", "T y", "y = log(x)",
                  np.log, domain=(0.1, 5.0))
SQRT = Elementwise("sqrt", "T x", "T y", "y = sqrt(x)",
                   np.sqrt, domain=(0.1, 5.0))
SQRT_BWD = Elementwise("sqrt_bwd", "T y, T gy", "T gx", "gx = gy / (y + y)",
                       lambda y, gy: gy / (y + y), domain=(0.1, 5.0))
# NOTE: ReLU's gradient at 0 is taken as 0 (PyTorch's convention); y > 0 exactly when x > 0.
RELU = Elementwise("relu", "T x", "T y", "y = x > 0 ? x : (T)0",
                   lambda x: np.where(x > 0, x, x.dtype.type(0)))
RELU_BWD = Elementwise("relu_bwd", "T y, T gy", "T gx", "gx = y > 0 ? gy : (T)0",
                       lambda y, gy: np.where(y > 0, gy, gy.dtype.type(0)))
# NOTE: overflow-free sigmoid: exp only ever sees -|x| <= 0, so it lies in (0, 1].
SIGMOID = Elementwise("sigmoid", "T x", "T y",
                      "T e = exp(-fabs(x)); y = x >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e)",
                      lambda x: (lambda e: np.where(x >= 0, 1 / (1 + e), e / (1 + e)))(np.exp(-np.abs(x))))
SIGMOID_BWD = Elementwise("sigmoid_bwd", "T y, T gy", "T gx", "gx = gy * y * ((T)1 - y)",
                          lambda y, gy: gy * y * (1 - y), domain=(0.0, 1.0))
TANH = Elementwise("tanh", "T x", "T y", "y = tanh(x)",
                   np.tanh)
TANH_BWD = Elementwise("tanh_bwd", "T y, T gy", "T gx", "gx = gy * ((T)1 - y * y)",
                       lambda y, gy: gy * (1 - y * y), domain=(-1.0, 1.0))
# max's backward: the gradient is shared evenly between all elements equal to the maximum.
EQUAL_MASK = Elementwise("equal_mask", "T x, T m", "T mask", "mask = x == m ? (T)1 : (T)0",
                         lambda x, m: (x == m).astype(x.dtype))
MAX_BWD = Elementwise("max_bwd", "T mask, T gy, T count", "T gx", "gx = mask * gy / count",
                      lambda mask, gy, count: mask * gy / count, domain=(1.0, 3.0))
# Optimizer updates, in place on the parameter (and its momentum buffer).
SGD_STEP = Elementwise("sgd_step", "T grad, T lr, T weight_decay", "T param",
                       "param -= lr * (grad + weight_decay * param)",
                       lambda grad, lr, weight_decay, param: param - lr * (grad + weight_decay * param),
                       scalars=("lr", "weight_decay"))


def _sgd_momentum_twin(grad, lr, weight_decay, momentum, nesterov, param, buf):
    g = grad + weight_decay * param
    buf = momentum * buf + g
    return param - lr * (g + momentum * buf if nesterov else buf), buf


SGD_MOMENTUM_STEP = Elementwise(
    "sgd_momentum_step", "T grad, T lr, T weight_decay, T momentum, T nesterov", "T param, T buf",
    "T g = grad + weight_decay * param; buf = momentum * buf + g;"
    " param -= lr * (nesterov != 0 ? g + momentum * buf : buf)",
    _sgd_momentum_twin, scalars=("lr", "weight_decay", "momentum", "nesterov"))

# ---------------------------------------------------------------------------------------------
# Reduction rows.  map / reduce / post-map / identity           | NumPy twin
# ---------------------------------------------------------------------------------------------
SUM = Reduction("sum", "T x", "T y", "x", "a + b", "y = a", "0",
                np.sum)
# NaN propagates (a != a), as in NumPy's max; identity is -inf.
MAX = Reduction("max", "T x", "T y", "x", "(a > b || a != a) ? a : b", "y = a",
                "__int_as_float(0xff800000)", np.max)

# ---------------------------------------------------------------------------------------------
# Selection, classification-loss and Adam rows.  CUDA body         | NumPy twin (same formula)
# ---------------------------------------------------------------------------------------------
# NOTE: |x| has gradient 0 at x = 0 (the subgradient PyTorch picks).
ABS = Elementwise("abs", "T x", "T y", "y = fabs(x)",
                  np.abs)
ABS_BWD = Elementwise("abs_bwd", "T x, T gy", "T gx", "gx = x > 0 ? gy : (x < 0 ? -gy : (T)0)",
                      lambda x, gy: np.where(x > 0, gy, np.where(x < 0, -gy, gy.dtype.type(0))))
# NaN stays NaN (both comparisons are false); the caller checks low <= high.
CLIP = Elementwise("clip", "T x, T low, T high", "T y", "y = x < low ? low : (x > high ? high : x)",
                   lambda x, low, high: np.where(x < low, x.dtype.type(low),
                                                 np.where(x > high, x.dtype.type(high), x)),
                   scalars=("low", "high"))
# NOTE: clip passes the gradient where low <= x <= high, bounds included (PyTorch's convention).
CLIP_BWD = Elementwise("clip_bwd", "T x, T gy, T low, T high", "T gx",
                       "gx = (x >= low && x <= high) ? gy : (T)0",
                       lambda x, gy, low, high: np.where((x >= low) & (x <= high), gy, gy.dtype.type(0)),
                       scalars=("low", "high"))
# maximum/minimum propagate NaN from either side, as NumPy does.
MAXIMUM = Elementwise("maximum", "T a, T b", "T y", "y = (a > b || a != a) ? a : b",
                      lambda a, b: np.where((a > b) | (a != a), a, b))
MINIMUM = Elementwise("minimum", "T a, T b", "T y", "y = (a < b || a != a) ? a : b",
                      lambda a, b: np.where((a < b) | (a != a), a, b))
# NOTE: on a tie (a == b) each operand gets half of the gradient (PyTorch's convention).
MAXIMUM_BWD = Elementwise(
    "maximum_bwd", "T a, T b, T gy", "T ga, T gb",
    "ga = a > b ? gy : (a == b ? gy * (T)0.5 : (T)0); gb = b > a ? gy : (a == b ? gy * (T)0.5 : (T)0)",
    lambda a, b, gy: (np.where(a > b, gy, np.where(a == b, gy * gy.dtype.type(0.5), gy.dtype.type(0))),
                      np.where(b > a, gy, np.where(a == b, gy * gy.dtype.type(0.5), gy.dtype.type(0)))))
MINIMUM_BWD = Elementwise(
    "minimum_bwd", "T a, T b, T gy", "T ga, T gb",
    "ga = a < b ? gy : (a == b ? gy * (T)0.5 : (T)0); gb = b < a ? gy : (a == b ? gy * (T)0.5 : (T)0)",
    lambda a, b, gy: (np.where(a < b, gy, np.where(a == b, gy * gy.dtype.type(0.5), gy.dtype.type(0))),
                      np.where(b < a, gy, np.where(a == b, gy * gy.dtype.type(0.5), gy.dtype.type(0)))))
# Comparisons give a 0/1 mask in the operands' dtype (not differentiable).
GREATER = Elementwise("greater", "T a, T b", "T y", "y = a > b ? (T)1 : (T)0",
                      lambda a, b: (a > b).astype(np.result_type(a, b)))
GREATER_EQUAL = Elementwise("greater_equal", "T a, T b", "T y", "y = a >= b ? (T)1 : (T)0",
                            lambda a, b: (a >= b).astype(np.result_type(a, b)))
# where: the mask holds the condition as 0/1 in the operands' dtype.
WHERE = Elementwise("where", "T mask, T a, T b", "T y", "y = mask != 0 ? a : b",
                    lambda mask, a, b: np.where(mask != 0, a, b))
WHERE_BWD = Elementwise("where_bwd", "T mask, T gy", "T ga, T gb",
                        "ga = mask != 0 ? gy : (T)0; gb = mask != 0 ? (T)0 : gy",
                        lambda mask, gy: (np.where(mask != 0, gy, gy.dtype.type(0)),
                                          np.where(mask != 0, gy.dtype.type(0), gy)))
# Binary cross-entropy on probabilities p, target t. NOTE: each log is clamped at -100, as PyTorch
# does, so p = 0 or 1 gives a finite loss; log1p(-p) keeps precision for small p.
def _clamped_logs(p):
    lp, lq = np.log(p), np.log1p(-p)
    low = p.dtype.type(-100)
    return np.where(lp < low, low, lp), np.where(lq < low, low, lq)


def _bce_twin(p, t):
    lp, lq = _clamped_logs(p)
    return (t - 1) * lq - t * lp


def _bce_bwd_twin(p, t, gy):
    d = (1 - p) * p
    lp, lq = _clamped_logs(p)
    return gy * (p - t) / np.where(d < 1e-12, d.dtype.type(1e-12), d), gy * (lq - lp)


_CLAMPED_LOGS = ("T lp = log(p); T lq = log1p(-p); lp = lp < (T)-100 ? (T)-100 : lp;"
                 " lq = lq < (T)-100 ? (T)-100 : lq;")
BCE = Elementwise("bce", "T p, T t", "T y", _CLAMPED_LOGS + " y = (t - (T)1) * lq - t * lp",
                  _bce_twin, domain=(0.05, 0.95))
# d/dp = (p - t) / (p (1 - p)), the denominator kept >= 1e-12 (PyTorch's EPSILON); d/dt = lq - lp.
BCE_BWD = Elementwise("bce_bwd", "T p, T t, T gy", "T gp, T gt",
                      _CLAMPED_LOGS + " T d = ((T)1 - p) * p;"
                      " gp = gy * (p - t) / (d < (T)1e-12 ? (T)1e-12 : d); gt = gy * (lq - lp)",
                      _bce_bwd_twin, domain=(0.05, 0.95))


# NOTE: with logits x: max(x, 0) - x t + log1p(exp(-|x|)); exp only sees -|x| <= 0, so no overflow.
def _bce_with_logits_twin(x, t):
    return np.where(x > 0, x, x.dtype.type(0)) - x * t + np.log1p(np.exp(-np.abs(x)))


def _bce_with_logits_bwd_twin(x, t, gy):
    e = np.exp(-np.abs(x))
    s = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return gy * (s - t), -gy * x


BCE_WITH_LOGITS = Elementwise("bce_with_logits", "T x, T t", "T y",
                              "y = (x > 0 ? x : (T)0) - x * t + log1p(exp(-fabs(x)))",
                              _bce_with_logits_twin)
# d/dx = sigmoid(x) - t (the overflow-free sigmoid of SIGMOID); d/dt = -x.
BCE_WITH_LOGITS_BWD = Elementwise(
    "bce_with_logits_bwd", "T x, T t, T gy", "T gx, T gt",
    "T e = exp(-fabs(x)); T s = x >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e); gx = gy * (s - t); gt = -gy * x",
    _bce_with_logits_bwd_twin)


# Adam / AdamW, in place on the parameter and both moment buffers. The host passes the bias
# corrections for this step: step_size = lr / (1 - beta1**t), bias_correction2_sqrt = sqrt(1 - beta2**t).
def _adam_twin(grad, beta1, beta2, eps, weight_decay, step_size, bias_correction2_sqrt,
               param, exp_avg, exp_avg_sq):
    g = grad + weight_decay * param
    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    param = param - step_size * exp_avg / (np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)
    return param, exp_avg, exp_avg_sq


ADAM_STEP = Elementwise(
    "adam_step", "T grad, T beta1, T beta2, T eps, T weight_decay, T step_size, T bias_correction2_sqrt",
    "T param, T exp_avg, T exp_avg_sq",
    "T g = grad + weight_decay * param; exp_avg += ((T)1 - beta1) * (g - exp_avg);"
    " exp_avg_sq = beta2 * exp_avg_sq + ((T)1 - beta2) * g * g;"
    " param -= step_size * exp_avg / (sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)",
    _adam_twin, scalars=("beta1", "beta2", "eps", "weight_decay", "step_size", "bias_correction2_sqrt"),
    domain=(0.0, 3.0))


# AdamW: the weight decay shrinks the parameter directly (decoupled), it never enters the moments.
def _adamw_twin(grad, lr, beta1, beta2, eps, weight_decay, step_size, bias_correction2_sqrt,
                param, exp_avg, exp_avg_sq):
    param = param * (1 - lr * weight_decay)
    return _adam_twin(grad, beta1, beta2, eps, 0.0, step_size, bias_correction2_sqrt,
                      param, exp_avg, exp_avg_sq)


ADAMW_STEP = Elementwise(
    "adamw_step",
    "T grad, T lr, T beta1, T beta2, T eps, T weight_decay, T step_size, T bias_correction2_sqrt",
    "T param, T exp_avg, T exp_avg_sq",
    "param *= (T)1 - lr * weight_decay; exp_avg += ((T)1 - beta1) * (grad - exp_avg);"
    " exp_avg_sq = beta2 * exp_avg_sq + ((T)1 - beta2) * grad * grad;"
    " param -= step_size * exp_avg / (sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)",
    _adamw_twin, domain=(0.0, 3.0),
    scalars=("lr", "beta1", "beta2", "eps", "weight_decay", "step_size", "bias_correction2_sqrt"))
