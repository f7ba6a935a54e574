"""The cheaper forms of NumPy twins compute what the plain forms compute, bit for bit.

An in-place twin (optimizer rows) is only a cheaper way to run the same formula on the CPU (no
temporary per operation, blocks of elements kept in cache), and the twins' select (np.where by bit
masks on large arrays) only a cheaper way to pick the same values: every operation, operand order
and rounding must be the plain form's, so that eager steps, the CPU tape and checkpoints give the
same numbers whichever form ran. The comparison is of the bits (NaN payloads and signed zeros
included).
"""

import itertools
import math

import numpy as np
import pytest

from tinygrad_gpu import kernels, twins

INPLACE_ROWS = sorted(name for name, row in kernels.ROWS.items() if getattr(row, "inplace_twin", None))
# the settings each scalar parameter is tried with (the usual values, and zero where a branch depends on it)
SETTINGS = {"lr": (1e-3, 0.1), "step": (1.0, 10.0), "beta1": (0.9,), "beta2": (0.999,),
            "log_beta1": (math.log(0.9),), "log_beta2": (math.log(0.999),), "eps": (1e-8,),
            "weight_decay": (0.0, 0.01), "momentum": (0.0, 0.9), "dampening": (0.0, 0.1),
            "nesterov": (0.0, 1.0), "alpha": (0.99,), "lr_decay": (0.0, 0.01), "value": (1.0,)}
# sizes below and above the in-place threshold, one not a whole number of blocks
SHAPES = [(3,), (7, 5), (kernels.INPLACE_BLOCK + 1000,), (300, 257)]
EXTREMES = (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 1e-300, 1e38, -1e-30, 3.0)


def _bits(array):
    return array.view(np.uint32 if array.dtype == np.float32 else np.uint64)


def _operands(row, dtype, shape, extremes, order, seed):
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in [n for n in row.input_names if n not in row.scalars] + row.output_names:
        values = rng.standard_normal(shape).astype(dtype)
        if name in twins.SECOND_MOMENTS or name in ("square_avg", "state_sum"):
            values = np.abs(values)
        if extremes:
            flat = values.reshape(-1)
            picks = rng.integers(0, flat.size, size=min(12, flat.size))
            with np.errstate(over="ignore"):
                flat[picks] = np.array(rng.choice(EXTREMES, size=picks.size)).astype(dtype)
        arrays[name] = np.asfortranarray(values) if order == "F" else values
    return arrays


def _scalar(value, kind, dtype):
    return {"python": float(value), "numpy": dtype(value), "0-d": np.asarray(dtype(value))}[kind]


def _run(row, inplace, dtype, shape, settings, kind, extremes, order):
    arrays = _operands(row, dtype, shape, extremes, order, seed=1)
    outputs = tuple(arrays[name] for name in row.output_names)
    for step in range(3):  # a few updates: each one reads what the last one wrote
        args = [arrays[name] if name not in row.scalars else
                (np.asarray(dtype(settings[name] + step)) if name == "step"
                 else _scalar(settings[name], kind, dtype)) for name in row.input_names]
        with kernels.silenced_numpy():
            if inplace:
                row.inplace_twin(*args, *outputs)
            else:
                results = row.twin(*args, *outputs)
                for target, value in zip(outputs, results if len(outputs) > 1 else (results,)):
                    np.copyto(target, value)
        for name in row.input_names:  # a new gradient for the next update
            if name not in row.scalars and name not in row.output_names:
                arrays[name] *= dtype(0.5)
    return outputs


def _settings_grid(row):
    names = [n for n in row.scalars if n != "step"]
    for values in itertools.product(*(SETTINGS[n] for n in names)):
        settings = dict(zip(names, values))
        settings["step"] = 1.0
        yield settings


@pytest.mark.parametrize("name", INPLACE_ROWS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inplace_twin_gives_the_expression_twins_bits(name, dtype):
    row = kernels.ROWS[name]
    for settings, shape, kind, extremes, order in itertools.product(
            _settings_grid(row), SHAPES, ("python", "numpy", "0-d"), (False, True), ("C", "F")):
        if order == "F" and len(shape) < 2:
            continue
        expected = _run(row, False, dtype, shape, settings, kind, extremes, order)
        got = _run(row, True, dtype, shape, settings, kind, extremes, order)
        for output, a, b in zip(row.output_names, expected, got):
            assert np.array_equal(_bits(a), _bits(b)), (
                f"{name} {np.dtype(dtype)} {shape} {settings} ({kind} scalars, extremes={extremes}, "
                f"order {order}): {output} differs")


@pytest.mark.parametrize("name", [n for n in INPLACE_ROWS if n.startswith("adam")])
def test_inplace_adam_twin_with_operands_it_cannot_take_in_place(name):
    # scalars wider than the parameters, and a gradient that is the parameter itself: the
    # expression twin's arithmetic (wider intermediates; every input read before any write)
    row = kernels.ROWS[name]
    size = kernels.INPLACE_MIN_SIZE + 3
    scalars = [np.float64(v) for v in (1e-3, 1.0, 0.9, 0.999, math.log(0.9), math.log(0.999), 1e-8, 0.01)]
    for alias in (False, True):
        rng = np.random.default_rng(2)
        arrays = [np.abs(rng.standard_normal(size)).astype(np.float32)
                  for _ in range(1 + len(row.output_names))]
        expected = [a.copy() for a in arrays]
        if alias:
            arrays[0], expected[0] = arrays[1], expected[1]
        with kernels.silenced_numpy():
            results = row.twin(expected[0], *scalars, *expected[1:])
            for target, value in zip(expected[1:], results):
                np.copyto(target, value)
            row.inplace_twin(arrays[0], *scalars, *arrays[1:])
        for a, b in zip(expected[1:], arrays[1:]):
            assert np.array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [5, kernels.SELECT_MIN_SIZE + 7])
def test_select_picks_the_bits_np_where_picks(dtype, size):
    rng = np.random.default_rng(4)
    condition_source, a, b = (rng.standard_normal(size).astype(dtype) for _ in range(3))
    count = min(size, len(EXTREMES))
    for values in (condition_source, a, b):
        values[:count] = np.array(EXTREMES[:count]).astype(dtype)
    condition = condition_source > 0
    zero_d = [np.array(v, dtype) for v in (0.0, -0.0, np.nan, 2.5)]  # (as the twins pass numbers)
    for first in (a, dtype(0.0), dtype(-0.0), dtype(np.nan), dtype(2.5), *zero_d):
        expected = np.where(condition, first, b)
        got = kernels._select(condition, first, b)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(_bits(got), _bits(expected))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (4, 1), (70, 90)])
def test_relu_and_sigmoid_twins_match_their_formulas(dtype, shape):
    # (their numbers are 0-d arrays of the operand's dtype, their selects bit masks on large arrays)
    rng = np.random.default_rng(5)
    y, gy = (np.asarray(rng.standard_normal(shape) * 40).astype(dtype) for _ in range(2))
    for values in (y, gy):
        count = min(values.size, len(EXTREMES))
        values.reshape(-1)[:count] = np.array(EXTREMES[:count]).astype(dtype)
    with kernels.silenced_numpy():
        e = np.exp(-np.abs(y))
        expected = {"relu": np.maximum(y, y.dtype.type(0)),
                    "relu_bwd": np.where(y <= 0, gy.dtype.type(0), gy),
                    "sigmoid": np.where(y >= 0, 1 / (1 + e), e / (1 + e)),
                    "sigmoid_bwd": gy * y * (1 - y)}
        got = {"relu": kernels.RELU.twin(y), "relu_bwd": kernels.RELU_BWD.twin(y, gy),
               "sigmoid": kernels.SIGMOID.twin(y), "sigmoid_bwd": kernels.SIGMOID_BWD.twin(y, gy)}
    for name, value in got.items():
        value, wanted = np.asarray(value), np.asarray(expected[name])
        assert value.dtype == wanted.dtype and value.shape == wanted.shape, name
        assert np.array_equal(_bits(value), _bits(wanted)), name


def test_relu_twin_keeps_integer_dtypes():
    x = np.array([-2, 0, 3], np.int64)
    assert kernels.RELU.twin(x).dtype == np.int64 and kernels.RELU.twin(x).tolist() == [0, 0, 3]
