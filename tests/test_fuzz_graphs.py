"""Fuzzing: random expression graphs of the public ops, against NumPy float64 and finite differences.

Hypothesis builds a program step by step: each step applies an op to values already in the pool
(leaves or earlier results, so subexpressions are shared and leaves reused), with random shapes
that broadcast, reductions over random axes, reshapes, transposes, expands and matmuls. NumPy
computes the same program in float64 as it is drawn, which keeps values moderate and away from
kinks (ReLU at 0, tied maxima) so that finite differences are meaningful.
"""

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpu as tg

LIMIT = 100.0  # every intermediate value stays within ±LIMIT
MARGIN = 1e-2  # distance kept from kinks


def _logsumexp(a, axis, keepdims):
    m = np.max(a, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def _positive(t):
    return t * t + 0.5


# name: (ours on Tensors, NumPy on float64 arrays); parameters come as keyword arguments
UNARY = {
    "neg": (lambda t: -t, np.negative),
    "exp": (lambda t: t.exp(), np.exp),
    "log": (lambda t: _positive(t).log(), lambda a: np.log(_positive(a))),
    "sqrt": (lambda t: _positive(t).sqrt(), lambda a: np.sqrt(_positive(a))),
    "relu": (lambda t: t.relu(), lambda a: np.maximum(a, 0)),
    "sigmoid": (lambda t: t.sigmoid(), lambda a: 1 / (1 + np.exp(-a))),
    "tanh": (lambda t: t.tanh(), np.tanh),
    "pow2": (lambda t: t ** 2, lambda a: a ** 2),
    "pow3": (lambda t: t ** 3, lambda a: a ** 3),
    "pow-1.5": (lambda t: _positive(t) ** -1.5, lambda a: _positive(a) ** -1.5),
    "scale": (lambda t: 2.5 * t - 1, lambda a: 2.5 * a - 1),
}
REDUCTIONS = {
    "sum": (lambda t, axis, keepdims: t.sum(axis, keepdims), lambda a, axis, keepdims: a.sum(
        axis=axis, keepdims=keepdims)),
    "mean": (lambda t, axis, keepdims: t.mean(axis, keepdims), lambda a, axis, keepdims: a.mean(
        axis=axis, keepdims=keepdims)),
    "max": (lambda t, axis, keepdims: t.max(axis, keepdims), lambda a, axis, keepdims: a.max(
        axis=axis, keepdims=keepdims)),
    "logsumexp": (lambda t, axis, keepdims: t.logsumexp(axis, keepdims), _logsumexp),
}
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / _positive(b), lambda a, b: a / _positive(b)),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "where": (lambda a, b: tg.where(a > 0, a, b), lambda a, b: np.where(a > 0, a, b)),
}


def _softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# along one axis: (ours, NumPy)
AXISWISE = {
    "softmax": (lambda t, axis: t.softmax(axis), _softmax),
    "log_softmax": (lambda t, axis: t.log_softmax(axis), lambda a, axis: np.log(_softmax(a, axis))),
    "cat": (lambda t, axis: tg.cat([t, t * 2.0], axis), lambda a, axis: np.concatenate([a, a * 2.0], axis)),
    "stack": (lambda t, axis: tg.stack([t * 2.0, t], axis), lambda a, axis: np.stack([a * 2.0, a], axis)),
}
LEAF_VALUES = st.floats(-2, 2, allow_nan=False, allow_infinity=False)


def _draw_axis(data, ndim):
    if ndim == 0:
        return None
    return data.draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1),
                               st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
                               .map(tuple)))


def _safe(value, op, inputs, params):
    """True when the value is moderate and the op is not at a kink of its inputs."""
    if not np.all(np.abs(value) <= LIMIT):
        return False
    if op == "relu":
        return bool(np.all(np.abs(inputs[0]) > MARGIN))
    if op == "maximum":  # no ties
        return bool(np.all(np.abs(inputs[0] - inputs[1]) > MARGIN))
    if op == "where":  # the condition a > 0 must not flip under a small change of a
        return bool(np.all(np.abs(inputs[0]) > MARGIN))
    if op == "max":  # one clear maximum in every reduced slice
        a, axis = inputs[0], params["axis"]
        top = np.max(a, axis=axis, keepdims=True)
        return bool(np.all(np.sum(a >= top - MARGIN, axis=axis) == 1))
    return True


class Program:
    """Leaves plus steps; `run` evaluates it with Tensors or with NumPy arrays.

    Operands are references: ("leaf", k) or ("step", k), so leaves can be added at any time.
    """

    def __init__(self):
        self.leaves, self.steps = [], []  # step: (op name, operand references, params)

    def run(self, leaves, numpy):
        values = {("leaf", k): leaf for k, leaf in enumerate(leaves)}
        for k, (op, refs, params) in enumerate(self.steps):
            values[("step", k)] = _apply(op, [values[r] for r in refs], params, numpy)
        return values[("step", len(self.steps) - 1)]


def _apply(op, args, params, numpy):
    side = 1 if numpy else 0
    if op in UNARY:
        return UNARY[op][side](args[0])
    if op in BINARY:
        return BINARY[op][side](*args)
    if op in REDUCTIONS:
        return REDUCTIONS[op][side](args[0], params["axis"], params["keepdims"])
    if op in AXISWISE:
        return AXISWISE[op][side](args[0], params["axis"])
    a = args[0]
    if op == "matmul":
        return np.matmul(a, args[1]) if numpy else a @ args[1]
    if op == "reshape":
        return a.reshape(params["shape"])
    if op == "transpose":
        return a.transpose(params["axes"])
    if op == "expand":
        return np.broadcast_to(a, params["shape"]) if numpy else a.expand(params["shape"])
    if op == "index":
        return a[params["key"]]
    if op == "unsqueeze":
        return np.expand_dims(a, params["axis"]) if numpy else a.unsqueeze(params["axis"])
    if op == "squeeze":
        return np.squeeze(a) if numpy else a.squeeze()
    raise AssertionError(op)


def _draw_step(data, program, pool):
    """Draw one op, its operands (references into `pool`) and its parameters; None to skip."""
    kind = data.draw(st.sampled_from(["unary", "binary", "reduce", "axiswise", "shape", "matmul"]))
    latest = ("step", len(program.steps) - 1)
    # half the time continue from the latest result, so chains grow deep as well as wide
    ref = latest if latest in pool and data.draw(st.booleans()) else data.draw(st.sampled_from(sorted(pool)))
    a = pool[ref]
    if kind == "unary":
        return data.draw(st.sampled_from(sorted(UNARY))), [ref], {}
    if kind == "binary":
        partners = sorted(r for r, b in pool.items() if _broadcasts(a.shape, b.shape))  # ref included
        other = data.draw(st.sampled_from(partners))
        operands = data.draw(st.sampled_from([[ref, other], [other, ref]]))
        return data.draw(st.sampled_from(sorted(BINARY))), operands, {}
    if kind == "reduce":
        params = {"axis": _normalized(_draw_axis(data, a.ndim), a.ndim), "keepdims": data.draw(st.booleans())}
        return data.draw(st.sampled_from(sorted(REDUCTIONS))), [ref], params
    if kind == "axiswise":
        if a.ndim == 0:
            return None
        axis = data.draw(st.integers(-a.ndim, a.ndim - 1))
        return data.draw(st.sampled_from(sorted(AXISWISE))), [ref], {"axis": axis}
    if kind == "shape":
        choice = data.draw(st.sampled_from(["flatten", "column", "reverse", "transpose", "expand",
                                            "index", "unsqueeze", "squeeze"]))
        if choice == "index":
            if a.ndim == 0:
                return None
            start = data.draw(st.integers(0, a.shape[0] - 1))
            key = data.draw(st.sampled_from([start, slice(start, None), (Ellipsis, slice(None, 1)),
                                             (slice(None, None, -1),)]))
            return "index", [ref], {"key": key}
        if choice == "unsqueeze":
            return "unsqueeze", [ref], {"axis": data.draw(st.integers(-a.ndim - 1, a.ndim))}
        if choice == "squeeze":
            return "squeeze", [ref], {}
        if choice == "transpose":
            return "transpose", [ref], {"axes": tuple(data.draw(st.permutations(range(a.ndim))))}
        if choice == "expand":
            shape = tuple(data.draw(st.sampled_from([1, 2])) if n == 1 else n for n in a.shape)
            return "expand", [ref], {"shape": ((2,) if data.draw(st.booleans()) else ()) + shape}
        shape = {"flatten": (-1,), "column": (a.size, 1), "reverse": a.shape[::-1]}[choice]
        return "reshape", [ref], {"shape": shape}
    if a.ndim == 0:
        return None
    partners = sorted(r for r, b in pool.items() if _matmul_ok(a.shape, b.shape))
    if not partners or data.draw(st.booleans()):  # a fresh leaf of a fitting shape
        inner = a.shape[-1]
        shape = data.draw(st.sampled_from([(inner,), (inner, data.draw(st.integers(1, 3)))]))
        program.leaves.append(data.draw(hnp.arrays(np.float64, shape, elements=LEAF_VALUES)))
        pool[("leaf", len(program.leaves) - 1)] = program.leaves[-1]
        return "matmul", [ref, ("leaf", len(program.leaves) - 1)], {}
    return "matmul", [ref, data.draw(st.sampled_from(partners))], {}


def _broadcasts(x, y):
    try:
        np.broadcast_shapes(x, y)
        return True
    except ValueError:
        return False


def _matmul_ok(x, y):
    if not x or not y:
        return False
    rows = y[0] if len(y) == 1 else y[-2]
    return x[-1] == rows and _broadcasts(x[:-2], y[:-2])


def _normalized(axis, ndim):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else axis
    return tuple(sorted(a % ndim for a in axes))


@given(data=st.data())
def test_random_graphs_match_numpy_and_finite_differences(device, data):
    program = Program()
    for _ in range(data.draw(st.integers(1, 3))):
        shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3))
        program.leaves.append(data.draw(hnp.arrays(np.float64, shape, elements=LEAF_VALUES)))
    pool = {("leaf", k): leaf for k, leaf in enumerate(program.leaves)}
    for _ in range(data.draw(st.integers(2, 10))):
        step = _draw_step(data, program, pool)
        if step is None:
            continue
        op, refs, params = step
        inputs = [pool[r] for r in refs]
        with np.errstate(all="ignore"):
            value = np.asarray(_apply(op, inputs, params, numpy=True), dtype=np.float64)
        if _safe(value, op, inputs, params):
            pool[("step", len(program.steps))] = value
            program.steps.append((op, refs, params))
    assume(program.steps)
    expected = program.run(program.leaves, numpy=True)
    leaves = [tg.Tensor(leaf, device=device, dtype=np.float64, requires_grad=True) for leaf in program.leaves]
    result = program.run(leaves, numpy=False)
    assert result.shape == np.shape(expected) and result.dtype == np.float64
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-9, atol=1e-9)
    assert tg.gradcheck(lambda *ts: program.run(ts, numpy=False), leaves)
