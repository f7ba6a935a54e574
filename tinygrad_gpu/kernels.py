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
from .memory import out_of_memory

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
        try:  # free unless raised: CuPy's OutOfMemoryError becomes ours, with the pool's figures
            return kernel(*args) if out is None else kernel(*args, *out)
        except MemoryError as error:
            raise out_of_memory(error, "cuda", f"{self.name} kernel") from error


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
        try:
            return kernel(x, axis=axis, keepdims=keepdims)
        except MemoryError as error:
            raise out_of_memory(error, "cuda", f"{self.name} kernel") from error


def matmul(a: Any, b: Any) -> Any:
    """a @ b: cuBLAS on the GPU, numpy.matmul (IEEE-silent, like the twins) on the CPU."""
    if type(a) is np.ndarray:
        with np.errstate(all="ignore"):
            return np.matmul(a, b)
    try:
        return a @ b
    except MemoryError as error:
        raise out_of_memory(error, "cuda", "matmul") from error


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
                      lambda x, gy, p: (np.zeros(np.broadcast_shapes(x.shape, gy.shape), gy.dtype) if p == 0
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


# NOTE: the derivatives of sigmoid and tanh are computed from x, not from y: y * (1 - y) and 1 - y * y
# lose all relative accuracy once y rounds to ±1 (|x| > ~17 in float32), where the true values are
# still far above the smallest float. With e = exp(-|x|) <= 1 nothing can overflow or become NaN.
def _sigmoid_bwd_twin(x, gy):
    e = np.exp(-np.abs(x))
    s = 1 / (1 + e)
    return gy * (e * s) * s


SIGMOID_BWD = Elementwise("sigmoid_bwd", "T x, T gy", "T gx",
                          "T e = exp(-fabs(x)); T s = (T)1 / ((T)1 + e); gx = gy * (e * s) * s",
                          _sigmoid_bwd_twin)
TANH = Elementwise("tanh", "T x", "T y", "y = tanh(x)",
                   np.tanh)


def _tanh_bwd_twin(x, gy):  # 1 - tanh(x)**2 = 4e / (1 + e)**2 with e = exp(-2|x|)
    e = np.exp(-2 * np.abs(x))
    s = 1 / (1 + e)
    return gy * (4 * e * s) * s


TANH_BWD = Elementwise("tanh_bwd", "T x, T gy", "T gx",
                       "T e = exp((T)-2 * fabs(x)); T s = (T)1 / ((T)1 + e); gx = gy * ((T)4 * e * s) * s",
                       _tanh_bwd_twin)
# logsumexp shifts by the maximum; an infinite or NaN maximum is replaced by 0 so that x - max
# gives the right infinity (or NaN) instead of inf - inf = NaN.
FINITE_OR_ZERO = Elementwise("finite_or_zero", "T x", "T y", "y = isfinite(x) ? x : (T)0",
                             lambda x: np.where(np.isfinite(x), x, x.dtype.type(0)))
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
