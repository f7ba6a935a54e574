"""Differential test: random short programs run through tinygrad_gpu and through PyTorch (CPU).

Hypothesis draws a program over the public op set: a few float64 input tensors, then a chain of
steps, each an op of OPS applied to values made so far (broadcasting binary ops, unary ops,
reductions, shape ops, indexing, comparisons, where/cat/stack, losses). Every step runs on both
sides; their forward values must agree, and where PyTorch raises, we must raise the exception
class EXPECTED_ERRORS maps it to. At the end a weighted sum of every float value is the loss, and
every input's gradient must agree.

    DIFFERENTIAL_EXAMPLES=2000 pytest tests/test_differential.py    # more programs
    HYPOTHESIS_PROFILE=thorough pytest tests/test_differential.py   # 2000 new random programs

Ops that need a feature not in this tree yet (bool tensors, elementwise `==`, argmax) are in the
table with `needs=`; they run wherever the feature is present (DIFFERENTIAL_REQUIRE_ALL=1 makes a
missing feature a failure instead of a skip).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_gpu as tg
import tinygrad_gpu.nn.functional as F

torch = pytest.importorskip("torch")

EXAMPLES = int(os.environ.get("DIFFERENTIAL_EXAMPLES")
               or (2000 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 100))
RTOL, ATOL = 1e-9, 1e-12  # float64 on both sides; only summation order may differ

# What we raise where PyTorch raises: (torch's class, a pattern of its message, our class).
# The first row that matches decides. PyTorch reports a shape mismatch as RuntimeError; we raise
# ValueError (a bad argument value), and an axis out of range is a ValueError here too.
EXPECTED_ERRORS: list[tuple[type, str, type]] = [
    (IndexError, r"Dimension out of range|dimension specified as", ValueError),
    (IndexError, r"", IndexError),
    (RuntimeError, r"", ValueError),
    (ValueError, r"", ValueError),
    (TypeError, r"", TypeError),
]


def expected_error(error: Exception) -> type:
    """Our exception class for the one PyTorch raised."""
    for torch_class, pattern, ours in EXPECTED_ERRORS:
        if isinstance(error, torch_class) and re.search(pattern, str(error)):
            return ours
    raise AssertionError(f"PyTorch raised {type(error).__name__}: {error}; add it to EXPECTED_ERRORS")


# ---- features the op table may need -------------------------------------------------------------
def _has_bool_tensors() -> bool:
    try:
        return (tg.Tensor([1.0]) > 0).dtype == np.bool_
    except Exception:
        return False


def _has_elementwise_eq() -> bool:
    try:
        result = tg.Tensor([1.0, 2.0]) == tg.Tensor([1.0, 3.0])
        return isinstance(result, tg.Tensor) and result.numpy().tolist() == [True, False]
    except Exception:
        return False


FEATURES: dict[str, bool] = {
    "bool tensors": _has_bool_tensors(),
    "elementwise ==": _has_elementwise_eq(),
    "argmax": hasattr(tg.Tensor, "argmax"),
}
REQUIRE_ALL = bool(os.environ.get("DIFFERENTIAL_REQUIRE_ALL"))


# ---- values: one per side ----------------------------------------------------------------------
@dataclass
class Value:
    """A value of the program, as our tensor and as PyTorch's."""

    name: str
    ours: Any
    theirs: Any

    @property
    def is_float(self) -> bool:
        """True for floating values (the differentiable ones)."""
        return self.theirs.is_floating_point()

    @property
    def shape(self) -> tuple:
        """The shape, as a tuple."""
        return tuple(self.theirs.shape)

    def array(self) -> np.ndarray:
        """PyTorch's value as a NumPy array (a copy)."""
        return self.theirs.detach().numpy().copy()


class Skip(Exception):
    """The drawn step does not apply here (a kink, a domain edge): draw no step."""


@dataclass
class Op:
    """One entry of the op table: `build(draw, program)` returns (text, ours(), theirs())."""

    name: str
    build: Callable
    needs: str | None = None


class Program:
    """The values so far, the device, and the text of every step (for failure messages)."""

    def __init__(self, device: str, draw: Callable) -> None:
        self.device, self.draw, self.values, self.lines = device, draw, [], []
        self.inputs: list[Value] = []  # the leaves, made at the start or by a step (a new operand)
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))

    def pick(self, floats: bool = True, ndim_min: int = 0) -> Value:
        """One of the values so far (a floating one unless floats=False); never an empty one.

        Empty tensors (a mask selecting nothing, an empty slice) are made and compared, but not
        used further: a mean or loss over no elements is NaN in PyTorch and a ValueError here.
        """
        pool = [v for v in self.values if (v.is_float or not floats) and len(v.shape) >= ndim_min
                and v.theirs.numel() > 0]
        if not pool:
            raise Skip
        return self.draw(st.sampled_from(pool), label="operand")

    def ours(self, array: np.ndarray) -> tg.Tensor:
        """A constant of ours (float64, or bool) on the program's device."""
        dtype = None if array.dtype == np.bool_ else "float64"
        if array.dtype == np.bool_ and not FEATURES["bool tensors"]:
            return array  # where and indexing take bool arrays
        return tg.Tensor(array, device=self.device, dtype=dtype)

    def floats(self, shape: tuple, low: float = -3.0, high: float = 3.0) -> np.ndarray:
        """Random float64 data."""
        return self.rng.uniform(low, high, shape)

    def message(self) -> str:
        """The program so far, one step a line."""
        return "\n".join("  " + line for line in self.lines)


def broadcastable_shape(draw: Callable, shape: tuple, program: Program) -> tuple:
    """A shape that broadcasts with `shape` (some axes 1, some leading axes dropped); rarely any shape."""
    if draw(st.integers(0, 9), label="any shape") == 0:
        return random_shape(draw)
    drop = draw(st.integers(0, len(shape)), label="drop")
    return tuple(1 if draw(st.booleans(), label="to 1") else n for n in shape[drop:])


def random_shape(draw: Callable) -> tuple:
    """A small shape of 1 to 3 axes."""
    return tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3), label="shape"))


def away_from(array: np.ndarray, points: list[float], margin: float = 1e-3) -> None:
    """Skip the step when an element sits at a kink (where the two may pick different subgradients)."""
    for point in points:
        if np.any(np.abs(array - point) < margin):
            raise Skip


# ---- the op table -------------------------------------------------------------------------------
def binary(name: str, symbol: str, fn: Callable, domain: Callable | None = None,
           theirs: Callable | None = None, numbers: bool = True) -> Op:
    """A broadcasting binary op; the right side is a value, a new input or a Python number."""
    ours = fn
    theirs = theirs or fn

    def build(draw, p: Program):
        a = p.pick()
        kinds = ["value", "input"] + (["number", "number on the left"] if numbers else [])
        kind = draw(st.sampled_from(kinds), label="rhs")
        if kind == "value":
            b = p.pick()
        elif kind == "input":
            b = new_input(p, broadcastable_shape(draw, a.shape, p))
        else:
            number = draw(st.sampled_from([-1.5, -0.5, 0.75, 2.0, 3.0]), label="number")
            if kind == "number":
                if domain:
                    domain(a.array(), np.array(number))
                return (f"{a.name} {symbol} {number}", lambda: ours(a.ours, number),
                        lambda: theirs(a.theirs, number))
            if domain:
                domain(np.array(number), a.array())
            return (f"{number} {symbol} {a.name}", lambda: ours(number, a.ours),
                    lambda: theirs(number, a.theirs))
        if domain:
            try:
                left, right = np.broadcast_arrays(a.array(), b.array())
            except ValueError:
                left = right = None  # shapes that do not broadcast: both must raise
            if left is not None:
                domain(left, right)
        return f"{a.name} {symbol} {b.name}", lambda: ours(a.ours, b.ours), lambda: theirs(a.theirs, b.theirs)

    return Op(name, build)


def divisor_away_from_zero(_, divisor):
    if np.any(np.abs(divisor) < 0.1):
        raise Skip


def no_ties(left, right):
    away_from(left - right, [0.0])


def unary(name: str, ours: Callable, theirs: Callable, kinks: tuple = (), low: float | None = None) -> Op:
    """An elementwise unary op, away from its kinks and above `low` (its domain)."""

    def build(draw, p: Program):
        a = p.pick()
        array = a.array()
        away_from(array, list(kinks))
        if low is not None and np.any(array < low):
            raise Skip
        return f"{name}({a.name})", lambda: ours(a.ours), lambda: theirs(a.theirs)

    return Op(name, build)


def power(draw, p: Program):
    a = p.pick()
    exponent = draw(st.sampled_from([2, 3, 0.5, -1, 1.5]), label="exponent")
    if (not float(exponent).is_integer() and np.any(a.array() < 0.1)) or (exponent < 0 and
                                                                          np.any(np.abs(a.array()) < 0.1)):
        raise Skip
    return f"{a.name} ** {exponent}", lambda: a.ours ** exponent, lambda: a.theirs ** exponent


def axis_choice(draw, ndim: int):
    """None, an axis (sometimes out of range, or negative) or a tuple of axes."""
    kind = draw(st.sampled_from(["none", "axis", "negative", "tuple", "out of range"]), label="axis")
    if kind == "none":
        return None
    if kind == "axis":
        return draw(st.integers(0, ndim - 1), label="a")
    if kind == "negative":
        return -draw(st.integers(1, ndim), label="a")
    if kind == "tuple":
        return tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1), label="axes")))
    return ndim + draw(st.integers(0, 1), label="a")


def reduction(name: str) -> Op:
    def build(draw, p: Program):
        a = p.pick(ndim_min=1)  # PyTorch accepts axis 0 of a 0-d tensor, NumPy's rules (ours) do not
        axis = axis_choice(draw, len(a.shape))
        keepdims = draw(st.booleans(), label="keepdims")
        dim = () if axis is None else axis  # PyTorch: () means every axis
        torch_fn = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}[name]
        return (f"{a.name}.{name}(axis={axis}, keepdims={keepdims})",
                lambda: getattr(a.ours, name)(axis=axis, keepdims=keepdims),
                lambda: torch_fn(a.theirs, dim=dim, keepdim=keepdims))

    return Op(name, build)


def reshape(draw, p: Program):
    a = p.pick()
    size = int(np.prod(a.shape))
    if draw(st.integers(0, 9), label="bad size") == 0:
        shape = (size + 1,)
    else:
        factors = [d for d in range(1, size + 1) if size % d == 0]
        first = draw(st.sampled_from(factors), label="first")
        shape = (first, -1) if draw(st.booleans(), label="-1") else (first, size // first)
    return f"{a.name}.reshape({shape})", lambda: a.ours.reshape(shape), lambda: a.theirs.reshape(shape)


def transpose(draw, p: Program):
    a = p.pick()
    ndim = len(a.shape)
    axes = tuple(draw(st.permutations(range(ndim)), label="axes"))
    if ndim > 1 and draw(st.integers(0, 9), label="bad axes") == 0:
        axes = (0,) * ndim
    return f"{a.name}.transpose({axes})", lambda: a.ours.transpose(axes), lambda: a.theirs.permute(axes)


def expand(draw, p: Program):
    a = p.pick()
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=1), label="lead"))
    shape = lead + tuple(draw(st.integers(1, 3), label="n") if n == 1 else n for n in a.shape)
    if draw(st.integers(0, 9), label="bad") == 0:
        shape = lead + tuple(n + 1 for n in a.shape)
    return f"{a.name}.expand({shape})", lambda: a.ours.expand(shape), lambda: a.theirs.expand(shape)


def squeeze_unsqueeze(draw, p: Program):
    a = p.pick()
    kind = draw(st.sampled_from(["squeeze", "unsqueeze", "flatten", ".T"]), label="kind")
    if kind == "squeeze":
        return f"{a.name}.squeeze()", lambda: a.ours.squeeze(), lambda: a.theirs.squeeze()
    if kind == "flatten" and a.shape:
        start = draw(st.integers(0, len(a.shape) - 1), label="start")
        return (f"{a.name}.flatten({start})", lambda: a.ours.flatten(start),
                lambda: torch.flatten(a.theirs, start))
    if kind == ".T" and len(a.shape) == 2:  # PyTorch deprecates .T on other ranks
        return f"{a.name}.T", lambda: a.ours.T, lambda: a.theirs.T
    axis = draw(st.integers(0, len(a.shape)), label="axis")
    return f"{a.name}.unsqueeze({axis})", lambda: a.ours.unsqueeze(axis), lambda: a.theirs.unsqueeze(axis)


def index(draw, p: Program):
    a = p.pick(ndim_min=1)
    n = a.shape[0]
    kind = draw(st.sampled_from(["int", "slice", "int array", "bool array", "two axes"]), label="index")
    if kind == "int":
        i = draw(st.integers(-n - 1, n), label="i")
        return f"{a.name}[{i}]", lambda: a.ours[i], lambda: a.theirs[i]
    if kind == "slice":
        s = slice(draw(st.integers(0, n), label="start"), draw(st.integers(0, n + 1), label="stop"),
                  draw(st.integers(1, 2), label="step"))
        return f"{a.name}[{s.start}:{s.stop}:{s.step}]", lambda: a.ours[s], lambda: a.theirs[s]
    if kind == "int array":
        rows = draw(st.lists(st.integers(-n, n), min_size=1, max_size=4), label="rows")  # n: out of range
        return (f"{a.name}[{rows}]", lambda: a.ours[np.array(rows)],
                lambda: a.theirs[torch.tensor(rows)])
    if kind == "bool array":
        mask = p.rng.uniform(size=a.shape) < 0.5
        return (f"{a.name}[<bool mask {mask.astype(int).tolist()}>]", lambda: a.ours[mask],
                lambda: a.theirs[torch.from_numpy(mask)])
    if len(a.shape) < 2:
        raise Skip
    j = draw(st.integers(0, a.shape[1] - 1), label="j")
    return f"{a.name}[:, {j}]", lambda: a.ours[:, j], lambda: a.theirs[:, j]


def mask_index(draw, p: Program):
    """Indexing with a comparison's result, a bool tensor (needs bool tensors)."""
    a = p.pick(ndim_min=1)
    threshold = draw(st.sampled_from([-1.0, 0.0, 0.5]), label="threshold")
    away_from(a.array(), [threshold])
    return (f"{a.name}[{a.name} > {threshold}]", lambda: a.ours[a.ours > threshold],
            lambda: a.theirs[a.theirs > threshold])


def comparison(symbol: str, fn: Callable, needs: str = "bool tensors") -> Op:
    def build(draw, p: Program):
        a = p.pick()
        b = p.pick() if draw(st.booleans(), label="value") else None
        if b is None:
            number = draw(st.sampled_from([-1.0, 0.0, 0.5]), label="number")
            away_from(a.array(), [number])
            return f"{a.name} {symbol} {number}", lambda: fn(a.ours, number), lambda: fn(a.theirs, number)
        return f"{a.name} {symbol} {b.name}", lambda: fn(a.ours, b.ours), lambda: fn(a.theirs, b.theirs)

    return Op(f"{symbol}", build, needs)


def where(draw, p: Program):
    a, b = p.pick(), p.pick()
    masks = [v for v in p.values if not v.is_float and v.theirs.dtype == torch.bool]
    if masks and draw(st.booleans(), label="mask value"):
        cond = draw(st.sampled_from(masks), label="cond")
        return (f"where({cond.name}, {a.name}, {b.name})", lambda: tg.where(cond.ours, a.ours, b.ours),
                lambda: torch.where(cond.theirs, a.theirs, b.theirs))
    mask = np.asarray(p.rng.uniform(size=broadcastable_shape(draw, a.shape, p)) < 0.5)
    return (f"where(<bool mask {mask.astype(int).tolist()}>, {a.name}, {b.name})",
            lambda: tg.where(mask, a.ours, b.ours),
            lambda: torch.where(torch.from_numpy(mask), a.theirs, b.theirs))


def join(name: str) -> Op:
    def build(draw, p: Program):
        first = p.pick(ndim_min=1)
        others = [first] + [p.pick() if draw(st.booleans(), label="value") else new_input(p, first.shape)
                            for _ in range(draw(st.integers(1, 2), label="count"))]
        limit = len(first.shape) + (1 if name == "stack" else 0)
        axis = draw(st.integers(-limit, limit - 1), label="axis")
        names = ", ".join(v.name for v in others)
        ours_fn, torch_fn = (tg.cat, torch.cat) if name == "cat" else (tg.stack, torch.stack)
        return (f"{name}([{names}], axis={axis})", lambda: ours_fn([v.ours for v in others], axis=axis),
                lambda: torch_fn([v.theirs for v in others], dim=axis))

    return Op(name, build)


def matmul(draw, p: Program):
    a = p.pick(ndim_min=1)
    if draw(st.booleans(), label="matching"):
        inner = a.shape[-1]
        shape = (inner,) if draw(st.booleans(), label="1-d") else (inner, draw(st.integers(1, 3), label="m"))
        b = new_input(p, shape)
    else:
        b = p.pick()
    return f"{a.name} @ {b.name}", lambda: a.ours @ b.ours, lambda: a.theirs @ b.theirs


def softmaxes(name: str) -> Op:
    def build(draw, p: Program):
        a = p.pick(ndim_min=1)
        axis = draw(st.integers(-len(a.shape), len(a.shape) - 1), label="axis")
        return (f"{a.name}.{name}(axis={axis})", lambda: getattr(a.ours, name)(axis=axis),
                lambda: getattr(torch, name)(a.theirs, dim=axis))

    return Op(name, build)


def clip(draw, p: Program):
    a = p.pick()
    low = draw(st.sampled_from([None, -1.0, 0.0]), label="min")
    high = draw(st.sampled_from([None, 0.5, 2.0]), label="max")
    away_from(a.array(), [b for b in (low, high) if b is not None])
    return (f"{a.name}.clip({low}, {high})", lambda: a.ours.clip(low, high),
            lambda: torch.clamp(a.theirs, low, high))


def mse(draw, p: Program):
    a = p.pick()
    target = p.floats(a.shape)
    reduction = draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    return (f"mse_loss({a.name}, <target>, {reduction!r})",
            lambda: F.mse_loss(a.ours, p.ours(target), reduction=reduction),
            lambda: torch.nn.functional.mse_loss(a.theirs, torch.from_numpy(target), reduction=reduction))


def class_loss(name: str) -> Op:
    def build(draw, p: Program):
        a = p.pick()
        if len(a.shape) not in (1, 2):
            raise Skip
        classes = a.shape[-1]
        count = () if len(a.shape) == 1 else (a.shape[0],)
        bad = draw(st.integers(0, 9), label="bad label") == 0  # one past the last class
        labels = np.asarray(p.rng.integers(0, classes + bad, count))
        reduction = draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
        ours_fn = F.cross_entropy if name == "cross_entropy" else F.nll_loss
        torch_fn = getattr(torch.nn.functional, name)
        return (f"{name}({a.name}, {labels.tolist()}, {reduction!r})",
                lambda: ours_fn(a.ours, labels, reduction=reduction),
                lambda: torch_fn(a.theirs, torch.from_numpy(labels), reduction=reduction))

    return Op(name, build)


def bce(draw, p: Program):
    a = p.pick()
    target = p.rng.uniform(0, 1, a.shape)
    return (f"binary_cross_entropy(sigmoid({a.name}), <target>)",
            lambda: F.binary_cross_entropy(a.ours.sigmoid(), p.ours(target)),
            lambda: torch.nn.functional.binary_cross_entropy(a.theirs.sigmoid(), torch.from_numpy(target)))


def bce_logits(draw, p: Program):
    a = p.pick()
    target = p.rng.uniform(0, 1, a.shape)
    reduction = draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    return (f"binary_cross_entropy_with_logits({a.name}, <target>, {reduction!r})",
            lambda: F.binary_cross_entropy_with_logits(a.ours, p.ours(target), reduction=reduction),
            lambda: torch.nn.functional.binary_cross_entropy_with_logits(
                a.theirs, torch.from_numpy(target), reduction=reduction))


def argmax(draw, p: Program):
    a = p.pick()
    axis = draw(st.sampled_from([None] + list(range(len(a.shape)))), label="axis")
    values = a.array()
    if axis is None:
        values = values.reshape(-1)
    top = np.sort(values, axis=0 if axis is None else axis)
    if top.shape[0 if axis is None else axis] > 1:  # a tie for the largest: either index is right
        away_from(np.take(top, -1, axis=0 if axis is None else axis)
                  - np.take(top, -2, axis=0 if axis is None else axis), [0.0])
    return (f"{a.name}.argmax(axis={axis})", lambda: a.ours.argmax(axis=axis),
            lambda: torch.argmax(a.theirs, dim=axis))


OPS: list[Op] = [
    binary("add", "+", lambda a, b: a + b),
    binary("sub", "-", lambda a, b: a - b),
    binary("mul", "*", lambda a, b: a * b),
    binary("div", "/", lambda a, b: a / b, divisor_away_from_zero),
    binary("maximum", "max", lambda a, b: a.maximum(b), no_ties, torch.maximum, numbers=False),
    binary("minimum", "min", lambda a, b: a.minimum(b), no_ties, torch.minimum, numbers=False),
    Op("matmul", matmul),
    Op("pow", power),
    unary("neg", lambda t: -t, lambda t: -t),
    unary("exp", lambda t: t.exp(), torch.exp),
    unary("log", lambda t: t.log(), torch.log, low=0.1),
    unary("sqrt", lambda t: t.sqrt(), torch.sqrt, low=0.1),
    unary("relu", lambda t: t.relu(), torch.relu, kinks=(0.0,)),
    unary("sigmoid", lambda t: t.sigmoid(), torch.sigmoid),
    unary("tanh", lambda t: t.tanh(), torch.tanh),
    unary("abs", lambda t: t.abs(), torch.abs, kinks=(0.0,)),
    Op("clip", clip),
    softmaxes("softmax"),
    softmaxes("log_softmax"),
    reduction("sum"),
    reduction("mean"),
    reduction("max"),
    Op("reshape", reshape),
    Op("transpose", transpose),
    Op("expand", expand),
    Op("squeeze/unsqueeze/flatten/T", squeeze_unsqueeze),
    Op("index", index),
    Op("mask index", mask_index, needs="bool tensors"),
    comparison(">", lambda a, b: a > b),
    comparison(">=", lambda a, b: a >= b),
    comparison("<", lambda a, b: a < b),
    comparison("<=", lambda a, b: a <= b),
    comparison("==", lambda a, b: a == b, needs="elementwise =="),
    Op("where", where),
    join("cat"),
    join("stack"),
    Op("mse_loss", mse),
    class_loss("cross_entropy"),
    class_loss("nll_loss"),
    Op("binary_cross_entropy", bce),
    Op("binary_cross_entropy_with_logits", bce_logits),
    Op("argmax", argmax, needs="argmax"),
]
MISSING = sorted({op.needs for op in OPS if op.needs and not FEATURES[op.needs]})
ACTIVE = [op for op in OPS if not op.needs or FEATURES[op.needs]]


def new_input(p: Program, shape: tuple) -> Value:
    """A new float64 input with requires_grad, on both sides."""
    data = p.floats(shape)
    value = Value(f"x{len(p.values)}", tg.Tensor(data, requires_grad=True, device=p.device, dtype="float64"),
                  torch.tensor(data, requires_grad=True))
    p.values.append(value)
    p.inputs.append(value)
    p.lines.append(f"{value.name} = input of shape {shape}")
    return value


# ---- running and comparing ----------------------------------------------------------------------
def assert_close(ours: Any, theirs: Any, what: str, p: Program) -> None:
    """Our value (a Tensor, an array or None) equals PyTorch's, NaN in the same places."""
    expected = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    actual = ours.numpy() if isinstance(ours, tg.Tensor) else np.asarray(ours)
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape}, PyTorch {expected.shape}\nprogram:\n{p.message()}")
    if expected.dtype == np.bool_ and FEATURES["bool tensors"]:
        assert actual.dtype == np.bool_, f"{what}: dtype {actual.dtype}, not bool\nprogram:\n{p.message()}"
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=RTOL, atol=ATOL,
                               equal_nan=True, err_msg=f"{what}\nprogram:\n{p.message()}")


def run_step(op: Op, p: Program) -> None:
    """Draw one step of `op`, run it on both sides, compare, and keep the result."""
    try:
        text, ours_fn, theirs_fn = op.build(p.draw, p)
    except Skip:
        return
    name = f"v{len(p.values)}"
    try:
        theirs = theirs_fn()
    except (RuntimeError, IndexError, ValueError, TypeError) as error:
        wanted = expected_error(error)
        p.lines.append(f"{text}  -> PyTorch raises {type(error).__name__}: {error}")
        try:
            ours_fn()
        except Exception as ours_error:
            assert isinstance(ours_error, wanted), (
                f"we raised {type(ours_error).__name__}: {ours_error}; expected {wanted.__name__}\n"
                f"program:\n{p.message()}")
        else:
            raise AssertionError(f"we raised nothing, expected {wanted.__name__}\nprogram:\n{p.message()}")
        return
    p.lines.append(f"{name} = {text}")
    try:
        ours = ours_fn()
    except Exception as error:
        raise AssertionError(f"we raised {type(error).__name__}: {error}; PyTorch did not\n"
                             f"program:\n{p.message()}") from error
    assert_close(ours, theirs, f"forward of {name}", p)
    if isinstance(theirs, torch.Tensor):
        p.values.append(Value(name, ours, theirs))


@pytest.mark.skipif(not ACTIVE, reason="no op")
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_random_programs_agree_with_pytorch(device, data):
    """A random program gives PyTorch's values, errors and input gradients."""
    if REQUIRE_ALL and MISSING:
        pytest.fail(f"DIFFERENTIAL_REQUIRE_ALL: this tree lacks {', '.join(MISSING)}")
    draw = data.draw
    p = Program(device, draw)
    first = new_input(p, random_shape(draw))
    for _ in range(draw(st.integers(0, 2), label="more inputs")):
        new_input(p, broadcastable_shape(draw, first.shape, p))
    for _ in range(draw(st.integers(1, 8), label="steps")):
        run_step(draw(st.sampled_from(ACTIVE), label="op"), p)

    # The loss: every float value, weighted by a fixed random array, summed.
    loss_ours, loss_theirs = None, None
    for value in p.values:
        if not (value.is_float and value.theirs.requires_grad):
            continue
        weights = p.floats(value.shape)
        term_ours = (value.ours * p.ours(weights)).sum()
        term_theirs = (value.theirs * torch.from_numpy(weights)).sum()
        loss_ours = term_ours if loss_ours is None else loss_ours + term_ours
        loss_theirs = term_theirs if loss_theirs is None else loss_theirs + term_theirs
    p.lines.append("loss = sum of (value * random weights).sum() over the float values")
    assert_close(loss_ours, loss_theirs, "loss", p)
    loss_ours.backward()
    loss_theirs.backward()
    for value in p.inputs:
        expected = value.theirs.grad if value.theirs.grad is not None else torch.zeros(value.shape)
        actual = value.ours.grad if value.ours.grad is not None else np.zeros(value.shape)
        assert_close(actual, expected, f"gradient of {value.name}", p)


def test_the_op_table_covers_the_public_op_set():
    """Every op family the differential test promises is in the table."""
    names = {op.name for op in OPS}
    for wanted in ["add", "div", "maximum", "matmul", "exp", "log", "sum", "mean", "max", "reshape",
                   "transpose", "expand", "index", "mask index", ">", "==", "where", "cat", "stack",
                   "mse_loss", "cross_entropy", "nll_loss", "binary_cross_entropy",
                   "binary_cross_entropy_with_logits", "argmax"]:
        assert wanted in names, wanted


def test_error_table():
    """PyTorch's errors map to ours through the table; an unknown one is a test failure."""
    assert expected_error(RuntimeError("The size of tensor a (3) must match")) is ValueError
    assert expected_error(IndexError("Dimension out of range (expected ...)")) is ValueError
    assert expected_error(IndexError("index 5 is out of bounds")) is IndexError
    with pytest.raises(AssertionError):
        expected_error(KeyError("x"))
