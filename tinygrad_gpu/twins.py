"""Every kernel-table row on the GPU against its NumPy twin, on ordinary and extreme inputs.

`tg.check_twins()` returns a TwinReport (print it for the table); `python -m tinygrad_gpu.check_twins`
prints the table and exits 1 when a row is outside its tolerance, 0 otherwise (also, after saying
so, on a machine without a GPU, where there is nothing to compare).
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels
from .backend import cuda_available, cupy_module

DTYPES = (np.float32, np.float64)
DEFAULT_ULPS = 2  # correctly rounded arithmetic on both sides: equal up to a rounding
TRANSCENDENTAL_ULPS = 8  # CUDA's and NumPy's exp/log/pow/tanh each carry a few ULPs of error
FUSED_SLACK = 4  # in eps * sum|inputs|: the GPU may fuse a*b+c into one rounding, NumPy never does
TRANSCENDENTAL = re.compile(r"\b(exp|expm1|log|log1p|log2|log10|pow|tanh|sinh|cosh|sin|cos|tan|erfc?|"
                            r"atan2?|asin|acos|cbrt|rsqrt)\s*\(")
BINARY_ADD_SUB = re.compile(r"[\w)]\s*[-+]=?\s*[\w(]")
ULP_OVERRIDES: dict[str, int] = {}  # rows that need a tolerance other than the rule above
# Adam divides by sqrt(v) + eps: the rounding of m and v is amplified beyond one fused a*b+c, so
# these rows get this many eps of the inputs' magnitude instead of FUSED_SLACK.
# RMSprop and Adagrad divide by a square root the same way.
ADAPTIVE_ROWS = ("adam_step", "adamw_step", "adam_amsgrad_step", "adamw_amsgrad_step", "rmsprop_step",
                 "rmsprop_momentum_step", "rmsprop_centered_step", "rmsprop_centered_momentum_step",
                 "adagrad_step")
SLACK_OVERRIDES: dict[str, float] = dict.fromkeys(ADAPTIVE_ROWS, 64)
# the centered forms subtract the squared mean gradient from the mean square: where the two are
# close, the roundings of either side (the GPU fuses a*b+c) are amplified by their ratio
SLACK_OVERRIDES.update(rmsprop_centered_step=4096, rmsprop_centered_momentum_step=4096)
ULP_OVERRIDES.update(dict.fromkeys(ADAPTIVE_ROWS, 16))  # the update's own roundings: /, sqrt, /, *
ADAM_ROWS = frozenset(ADAPTIVE_ROWS)
# the optimizer state that holds squares (negative values lie outside the rows' domain)
SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"})
# CuPy compiles float32 kernels with flush-to-zero: a product or quotient that would be subnormal
# is 0 on the GPU. An element also passes when it equals the twin on inputs whose magnitude is
# below FTZ_INPUT (their products are subnormal) flushed to 0 ...
FTZ_INPUT = 1e-30
# ... and, for rows whose body forms a quotient that may be subnormal (a / b or gy / count with a
# huge divisor), when the
# GPU gives NaN where the twin gives an infinity that came from an infinite input (inf * 0).
# Products whose factor (an exp, a pow) may be subnormal behave alike: the GPU flushes the factor.
FTZ_QUOTIENT_ROWS = frozenset({"div_bwd_divisor", "max_bwd", "pow_bwd_base", "pow_bwd_exponent", "elu_bwd"})
SCALAR_VALUES: dict[str, tuple[float, ...]] = {
    "p": (0.0, 0.5, 0.75, 2.0, 3.0, -1.5),  # pow: zero, roots, integer powers of negative bases
    "nesterov": (0.0, 1.0),
    "low": (-1.0,),
    "high": (1.0,),
    "step": (1.0, 10.0),  # Adam's count, and the logs of its usual betas: real bias corrections
    "log_beta1": (math.log(0.9),),
    "log_beta2": (math.log(0.999),),
    "slope": (0.01, -0.5),  # leaky_relu: PyTorch's default, and a negative slope
    "alpha": (1.0, 0.5),  # elu
    "beta": (1.0, 2.0),  # softplus
    "threshold": (20.0, 1.0),
}
ELEMENTS_PER_CASE = 1024
MAX_GRID = 65536  # extreme-value combinations beyond this are sampled


def ulp_distance(a: Any, b: Any) -> np.ndarray:
    """How many representable floats lie between a and b, elementwise (float64 result).

    +0 and -0 are 0 apart, as are two NaNs; a NaN and a number are inf apart; the largest finite
    value and inf are 1 apart. Both arguments must have the same float dtype.
    """
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"ulp_distance needs two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    bits = np.int32 if a.dtype == np.float32 else np.int64
    magnitude = np.iinfo(bits).max

    def ordered(x: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(x).view(bits).astype(np.int64)
        return np.where(raw < 0, -(raw & magnitude), raw)  # sign-magnitude -> one integer line

    ka, kb = ordered(a), ordered(b)
    high, low = np.maximum(ka, kb).astype(np.uint64), np.minimum(ka, kb).astype(np.uint64)
    distance = (high - low).astype(np.float64)  # modulo 2**64: exact, even across zero in float64
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    distance[nan_a & nan_b] = 0.0
    distance[nan_a ^ nan_b] = np.inf
    return distance


# ---- inputs ---------------------------------------------------------------------------------
def _params(spec: str) -> list[tuple[str, str]]:
    return [tuple(p.split()[-2:]) for p in spec.split(",")]  # (type, name)


def reads_outputs(row: Any) -> bool:
    """True for rows that update their outputs in place (the twin takes the outputs as arguments)."""
    try:
        parameters = inspect.signature(row.twin).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: takes the inputs only
        return False
    positional = [p for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                               p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > len(_params(row.in_params))


def extreme_values(dtype: Any) -> np.ndarray:
    """Zeros of both signs, ±1, ±1e3, tiny and huge magnitudes, the float limits, ±inf and NaN
    (for integers: 0, ±1, ±1e3 and the limits; for bool: both values)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.array([False, True])
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return np.array([0, 1, -1, 2, -3, 1000, -1000, limits.min, limits.max], dtype=dtype)
    info = np.finfo(dtype)
    return np.array([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e3, -1e3, 1e-3, info.tiny, -info.tiny,
                     info.max, -info.max, np.inf, -np.inf, np.nan], dtype=dtype)


def elementwise_cases(row: Any, dtype: Any, rng: np.random.Generator) -> Iterable[tuple[str, list]]:
    """(label, arrays) for a row's array arguments (its outputs too, where it updates them in place)."""
    count = sum(1 for kind, name in _params(row.in_params) if name not in row.scalars)
    if reads_outputs(row):
        count += row.n_outputs
    low, high = row.domain
    width = max(high - low, 1.0)
    if np.dtype(dtype).kind == "b":  # both values, at random
        uniform = lambda a, b: [rng.integers(0, 2, ELEMENTS_PER_CASE).astype(dtype) for _ in range(count)]
    else:  # (integers: the floats truncated)
        uniform = lambda a, b: [rng.uniform(a, b, ELEMENTS_PER_CASE).astype(dtype) for _ in range(count)]
    yield f"domain [{low:g}, {high:g}]", uniform(low, high)
    yield f"around domain [{low - width:g}, {high + width:g}]", uniform(low - width, high + width)
    yield "±1e3", uniform(-1e3, 1e3)
    values = extreme_values(dtype)
    if len(values) ** count <= MAX_GRID:
        grid = np.array(list(itertools.product(values, repeat=count)), dtype=dtype).T
    else:
        grid = rng.choice(values, (count, MAX_GRID))
    yield "extremes (0, ±1e3, float limits, ±inf, NaN) in every combination", [g.copy() for g in grid]


def reduction_cases(dtype: Any, rng: np.random.Generator) -> Iterable[tuple[str, np.ndarray]]:
    """(label, 2-D array) for reduction rows: ordinary, large, and with inf/NaN planted."""
    yield "uniform [-3, 3]", rng.uniform(-3, 3, (33, 17)).astype(dtype)
    yield "±1e3", rng.uniform(-1e3, 1e3, (33, 17)).astype(dtype)
    yield "magnitudes 1e-30 .. 1e30", (rng.choice([-1, 1], (33, 17)) * 10.0 ** rng.uniform(-30, 30, (33, 17))
                                       ).astype(dtype)
    for label, special in (("an inf", np.inf), ("a -inf", -np.inf), ("a NaN", np.nan)):
        x = rng.uniform(-3, 3, (33, 17)).astype(dtype)
        x[rng.integers(33), rng.integers(17)] = special
        yield f"with {label}", x


# ---- tolerance ------------------------------------------------------------------------------
@dataclass
class Tolerance:
    """How far a row's GPU result may be from its twin's."""

    ulps: int
    fused: bool = False  # the body has a*b +- c, which the GPU may compute with one rounding
    summed: bool = False  # a reduction adding many terms, in another order on the GPU

    def __str__(self) -> str:
        return f"{self.ulps} ULP" + (" or fused a*b+c" if self.fused else "") + (
            " or summation order" if self.summed else "")


def tolerance(row: Any) -> Tolerance:
    """The tolerance of a row: ULP_OVERRIDES, else a few ULPs, more for transcendental functions."""
    if isinstance(row, kernels.Reduction):
        return Tolerance(ULP_OVERRIDES.get(row.name, DEFAULT_ULPS), summed="+" in row.reduce_expr)
    body = row.body
    ulps = ULP_OVERRIDES.get(row.name, TRANSCENDENTAL_ULPS if TRANSCENDENTAL.search(body) else DEFAULT_ULPS)
    return Tolerance(ulps, fused="*" in body and bool(BINARY_ADD_SUB.search(body)))


# ---- comparison -----------------------------------------------------------------------------
@dataclass
class RowResult:
    """One row and dtype: how many elements were compared, the worst errors, and the failures."""

    name: str
    dtype: str
    elements: int
    max_abs: float
    max_ulp: float
    tolerance: Tolerance
    failures: int
    example: str = ""  # the worst failing element, in words

    @property
    def ok(self) -> bool:
        """True when every element is within tolerance."""
        return self.failures == 0


def _bad_elements(got: np.ndarray, want: np.ndarray, tol: Tolerance, slack: np.ndarray) -> np.ndarray:
    """A mask of elements outside tolerance; NaN and inf must sit in the same places."""
    dtype = want.dtype
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    inf_got, inf_want = np.isinf(got), np.isinf(want)
    special_mismatch = (nan_got != nan_want) | (inf_got != inf_want) | (inf_want & (got != want))
    finite = ~(nan_want | inf_want | special_mismatch)
    with np.errstate(all="ignore"):
        error = np.where(finite, np.abs(got.astype(np.float64) - want.astype(np.float64)), 0.0)
    close = (ulp_distance(got, want) <= tol.ulps) | (error <= np.finfo(dtype).tiny)  # GPU may flush
    close |= error <= slack  # subnormals, fuse a*b+c or sum in another order
    return special_mismatch | (finite & ~close)


def _worst(bad: np.ndarray, got: np.ndarray, want: np.ndarray, inputs: list) -> str:
    ulps = ulp_distance(got, want)
    index = np.unravel_index(int(np.argmax(np.where(bad, ulps, -1.0))), bad.shape)
    where = ", ".join(f"{x[index] if np.ndim(x) else x:.6g}" for x in inputs)
    return f"inputs ({where}): GPU {got[index]!r}, twin {want[index]!r}"


def gpu_runner(row: Any, args: list, outs: list | None, **reduction: Any) -> list[np.ndarray]:
    """Run a row on the GPU (scalars stay Python numbers) and return its outputs on the host."""
    cp = cupy_module()
    on_gpu = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    if outs is not None:
        result = row(*on_gpu, out=tuple(cp.asarray(o) for o in outs))
    else:
        result = row(*on_gpu, **reduction)
    return [cp.asnumpy(r) for r in (result if isinstance(result, tuple) else (result,))]


def twin_runner(row: Any, args: list, outs: list | None, **reduction: Any) -> list[np.ndarray]:
    """Run a row through its NumPy twin (the reference check_row compares against)."""
    if outs is not None:
        result = row(*args, out=tuple(o.copy() for o in outs))
    else:
        result = row(*args, **reduction)
    return list(result) if isinstance(result, tuple) else [result]


def _flush_tiny(arrays: list) -> list:
    """Arrays with magnitudes below FTZ_INPUT set to 0 (scalars unchanged)."""
    return [np.where(np.abs(a) < FTZ_INPUT, a.dtype.type(0), a) if isinstance(a, np.ndarray) else a
            for a in arrays]


def _accept_explained(row: Any, got: np.ndarray, want: np.ndarray, flushed: np.ndarray,
                      inputs: list, ftz: bool) -> np.ndarray:
    """`got`, with elements explained by flush-to-zero (float32) or by inputs outside a row's
    domain replaced by the twin's value."""
    got, want, flushed = np.broadcast_arrays(np.asarray(got), np.asarray(want), np.asarray(flushed))
    same = (got == flushed) | (np.isnan(got) & np.isnan(flushed))
    if ftz and row.name in FTZ_QUOTIENT_ROWS:
        # a quotient of two inputs below the normal range is 0 on the GPU: any result may follow
        values = [np.broadcast_to(np.abs(np.asarray(a, np.float64)), got.shape) for a in inputs]
        tiny = np.finfo(np.float32).tiny
        with np.errstate(all="ignore"):
            for a, b in itertools.permutations(values, 2):
                same |= (a > 0) & np.isfinite(a) & np.isfinite(b) & (a / b < tiny)
                same |= np.isinf(a) & (np.isnan(got) | np.isnan(want))  # inf * (flushed 0)
            # a finite product with a flushed subnormal factor: 0, where exactly it is below
            # tiny times the other factor
            largest = np.maximum(np.max([np.where(np.isfinite(a), a, 0.0) for a in values], axis=0), 1.0)
            same |= (got == 0) & (np.abs(np.asarray(want, np.float64)) < tiny * largest)
    if row.name in ADAM_ROWS:
        # infinite values, or a negative second moment, are outside the adaptive optimizers'
        # domain: where NaN or inf comes out there, on either side, the two need not agree
        names = list(row.input_names) + (list(row.output_names) if len(inputs) > len(row.input_names) else [])
        outside = np.zeros(got.shape, bool)
        for name, a in zip(names, inputs):
            a = np.broadcast_to(np.asarray(a), got.shape)
            # a value whose square overflows is outside too (the centered forms subtract squares)
            with np.errstate(over="ignore"):
                outside |= np.isinf(a) | ~np.isfinite(a * a) | ((a < 0) if name in SECOND_MOMENTS else False)
        same |= outside & (np.isnan(got) | np.isnan(want) | np.isinf(got) | np.isinf(want))
    return np.where(same, want, got)


def check_row(row: Any, dtype: Any, run: Callable[..., list] = gpu_runner) -> RowResult:
    """Compare one row's `run` (the GPU by default) with its NumPy twin on all input cases."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(sum(map(ord, row.name)))
    tol = tolerance(row)
    eps = float(np.finfo(dtype).eps) if dtype.kind == "f" else 0.0
    elements = failures = 0
    max_abs = max_ulp = 0.0
    example = ""

    def record(got: np.ndarray, want: np.ndarray, slack: Any, inputs: list) -> None:
        nonlocal elements, failures, max_abs, max_ulp, example
        if np.asarray(want).dtype.kind != "f":  # bool or integer results: equal, in the same dtype
            got, want = np.asarray(got), np.asarray(want)
            elements += want.size
            if got.dtype != want.dtype or got.shape != want.shape:
                failures += want.size
                example = example or (f"GPU gives {got.dtype} of shape {got.shape}, the twin {want.dtype} "
                                      f"of shape {want.shape}")
                return
            bad = got != want
            if bad.any():
                if not failures:
                    index = np.unravel_index(int(np.argmax(bad)), bad.shape)
                    where = ", ".join(f"{x[index] if np.ndim(x) else x}" for x in inputs)
                    example = f"inputs ({where}): GPU {got[index]!r}, twin {want[index]!r}"
                failures += int(bad.sum())
            return
        got, want = np.broadcast_arrays(np.asarray(got, dtype), np.asarray(want, dtype))
        bad = _bad_elements(got, want, tol, slack)
        both_finite = np.isfinite(got) & np.isfinite(want)
        with np.errstate(all="ignore"):
            errors = np.abs(got[both_finite].astype(np.float64) - want[both_finite])
        elements += got.size
        max_abs = max(max_abs, float(errors.max(initial=0.0)))
        max_ulp = max(max_ulp, float(ulp_distance(got[both_finite], want[both_finite]).max(initial=0.0)))
        if bad.any():
            if not failures:
                example = _worst(bad, got, want, inputs)
            failures += int(bad.sum())

    with np.errstate(all="ignore"):
        if isinstance(row, kernels.Reduction):
            for _, x in reduction_cases(dtype, rng):
                for axis in (None, 0, 1):
                    want = row(x, axis=axis, keepdims=True)
                    terms = x.size // want.size
                    slack = ((math.log2(terms) + 2) * eps * np.sum(np.abs(x.astype(np.float64)), axis=axis,
                                                                  keepdims=True)) if tol.summed else 0.0
                    got = run(row, [x.copy()], None, axis=axis, keepdims=True)[0]
                    record(got, want, slack, [np.float64(x.size)])
            return RowResult(row.name, dtype.name, elements, max_abs, max_ulp, tol, failures, example)
        names = [name for _, name in _params(row.in_params)]
        scalar_names = [n for n in names if n in row.scalars]
        n_outs = row.n_outputs if reads_outputs(row) else 0
        for _, arrays in elementwise_cases(row, dtype, rng):
            for scalars in itertools.product(*(SCALAR_VALUES.get(n, (0.75,)) for n in scalar_names)):
                values = dict(zip(scalar_names, scalars))
                args, array_iter = [], iter(arrays)
                for name in names:
                    args.append(values[name] if name in values else next(array_iter))
                outs = list(array_iter) if n_outs else None
                wants = twin_runner(row, args, outs)
                gots = run(row, args, outs)
                inputs = args + (outs or [])
                ftz = dtype == np.float32  # only float32 kernels flush subnormals
                flushed = (twin_runner(row, _flush_tiny(args), _flush_tiny(outs) if outs else None)
                           if ftz else wants)
                gots = [_accept_explained(row, g, w, f, inputs, ftz) for g, w, f in zip(gots, wants, flushed)]
                # the sum of |inputs| bounds the intermediate terms a fused multiply-add may cancel
                magnitude = sum(np.abs(np.asarray(a, np.float64)) for a in inputs)
                slack = SLACK_OVERRIDES.get(row.name, FUSED_SLACK) * eps * magnitude if tol.fused else 0.0
                for got, want in zip(gots, wants):
                    record(got, want, slack, inputs)
    return RowResult(row.name, dtype.name, elements, max_abs, max_ulp, tol, failures, example)


@dataclass
class TwinReport:
    """check_twins' result: one RowResult per row and dtype; str() gives the table."""

    results: list[RowResult]

    @property
    def ok(self) -> bool:
        """True when every row agrees with its twin within tolerance."""
        return all(r.ok for r in self.results)

    def __str__(self) -> str:
        header = ("row", "dtype", "elements", "max abs err", "max ULP", "tolerance", "result")
        table = [header] + [(r.name, r.dtype, str(r.elements), f"{r.max_abs:.3g}", f"{r.max_ulp:.0f}",
                             str(r.tolerance), "ok" if r.ok else f"FAIL: {r.failures} elements")
                            for r in self.results]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        failed = [r for r in self.results if not r.ok]
        lines += [f"{r.name} ({r.dtype}), worst: {r.example}" for r in failed]
        lines.append(f"{len(self.results) - len(failed)} of {len(self.results)} row/dtype pairs agree "
                     "(max ULP and max abs err over elements finite on both sides; "
                     "NaN and inf must sit in the same places)")
        return "\n".join(lines)


def check_twins(rows: Iterable[str] | None = None, dtypes: Iterable[Any] | None = None) -> TwinReport:
    """Run every kernel-table row (or those named) on the GPU and through its twin, in each dtype the
    row is meant for (or those of `dtypes` among them); needs a GPU."""
    cupy_module()  # a DeviceError saying why, where there is no GPU
    names = sorted(kernels.ROWS) if rows is None else list(rows)
    unknown = [n for n in names if n not in kernels.ROWS]
    if unknown:
        raise KeyError(f"check_twins: no kernel rows named {unknown}; rows are {sorted(kernels.ROWS)}")
    results = []
    for name in names:
        row = kernels.ROWS[name]
        types = {kind for kind, _ in _params(row.in_params) + _params(row.out_params)}
        if not types <= {"T", "bool"}:
            raise TypeError(f"check_twins: row {name} has parameter types {sorted(types)}; "
                            "only T and bool are handled")
        wanted = row_dtypes(row)
        if dtypes is not None:
            asked = {np.dtype(d) for d in dtypes}
            wanted = [d for d in wanted if d in asked]
        results += [check_row(row, dtype) for dtype in wanted]
    return TwinReport(results)


def row_dtypes(row: Any) -> list[np.dtype]:
    """The operand dtypes a row is checked in: those it declares (float32 and float64 by default)."""
    return [np.dtype(d) for d in getattr(row, "dtypes", DTYPES)]


def main(argv: list[str] | None = None) -> int:
    """The command line: print the table; 1 when a row is out of tolerance, 0 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tinygrad_gpu.check_twins", description=__doc__)
    parser.add_argument("rows", nargs="*", help="row names (default: every row of kernels.ROWS)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.rows if name not in kernels.ROWS]
    if unknown:
        parser.error(f"no kernel rows named {unknown}; rows are {sorted(kernels.ROWS)}")
    if not cuda_available():
        print("check_twins: there is no CUDA GPU here to compare the kernels with their NumPy twins; "
              "nothing was checked")
        return 0
    report = check_twins(args.rows or None)
    print(report)
    return 0 if report.ok else 1
