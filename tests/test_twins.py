"""check_twins' machinery on the CPU: ULP distances, tolerances, and catching planted drift."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels, twins


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ulp_distance_counts_representable_numbers(dtype):
    one = dtype(1.0)
    up = np.nextafter(one, dtype(2.0))
    assert twins.ulp_distance(one, up) == 1
    assert twins.ulp_distance(np.nextafter(up, dtype(2.0)), one) == 2
    assert twins.ulp_distance(dtype(0.0), dtype(-0.0)) == 0
    smallest = np.nextafter(dtype(0.0), dtype(1.0))
    assert twins.ulp_distance(-smallest, smallest) == 2  # across zero
    assert twins.ulp_distance(np.finfo(dtype).max, dtype(np.inf)) == 1
    assert twins.ulp_distance(-np.finfo(dtype).max, np.finfo(dtype).max) > 1e9  # no overflow
    a, b = np.array([np.nan, np.nan, 1.0], dtype), np.array([np.nan, 1.0, 1.0], dtype)
    distances = twins.ulp_distance(a, b)
    assert distances.tolist() == [0.0, np.inf, 0.0]


def test_ulp_distance_refuses_mixed_dtypes():
    with pytest.raises(TypeError, match="float32 or two float64"):
        twins.ulp_distance(np.float32(1.0), np.float64(1.0))


def test_tolerances_follow_the_kernel_body():
    assert twins.tolerance(kernels.ADD).ulps == twins.DEFAULT_ULPS
    assert not twins.tolerance(kernels.ADD).fused
    assert twins.tolerance(kernels.EXP).ulps == twins.TRANSCENDENTAL_ULPS
    assert twins.tolerance(kernels.TANH_BWD).fused  # gy * (1 - y * y): the GPU may fuse
    assert not twins.tolerance(kernels.DIV_BWD_DIVISOR).fused  # only a unary minus
    assert twins.tolerance(kernels.SUM).summed and not twins.tolerance(kernels.MAX).summed
    assert twins.reads_outputs(kernels.SGD_STEP) and not twins.reads_outputs(kernels.EXP)


def test_extreme_cases_cover_limits_and_every_combination():
    label, arrays = list(twins.elementwise_cases(kernels.POW, np.float32, np.random.default_rng(0)))[-1]
    assert len(arrays) == 1 and "extremes" in label  # p is a scalar, x the one array
    values = arrays[0]
    assert np.isnan(values).any() and np.isinf(values).any() and (values < 0).any()
    assert np.finfo(np.float32).max in values
    _, pairs = list(twins.elementwise_cases(kernels.ADD, np.float32, np.random.default_rng(0)))[-1]
    assert pairs[0].size == len(twins.extreme_values(np.float32)) ** 2


def test_twin_against_itself_agrees_on_every_row():
    for name in ("add", "pow", "tanh_bwd", "sgd_momentum_step", "sum", "max"):
        result = twins.check_row(kernels.ROWS[name], np.float32, run=twins.twin_runner)
        assert result.ok and result.max_ulp == 0, result


def _drifting(change):
    def run(row, args, outs, **reduction):
        return [change(r.copy()) for r in twins.twin_runner(row, args, outs, **reduction)]
    return run


def test_drift_beyond_tolerance_is_caught():
    ten_ulps = _drifting(lambda r: np.where(np.isfinite(r), r * np.float32(1 + 10 * 2.0 ** -23), r))
    result = twins.check_row(kernels.EXP, np.float32, run=ten_ulps)
    assert not result.ok and result.max_ulp >= 9 and "GPU" in result.example


def test_overflow_and_nan_mismatches_are_caught():
    # the classic drift: a GPU sigmoid/exp that clamps instead of overflowing, or loses a NaN
    clamped = twins.check_row(kernels.EXP, np.float32, run=_drifting(
        lambda r: np.where(np.isposinf(r), np.finfo(np.float32).max, r)))
    lost_nan = twins.check_row(kernels.SUM, np.float64,
                               run=_drifting(lambda r: np.where(np.isnan(r), 0.0, r)))
    assert not clamped.ok and "inf" in clamped.example
    assert not lost_nan.ok and "nan" in lost_nan.example


def test_fused_multiply_add_is_within_tolerance():
    def fused(row, args, outs, **reduction):  # gy * fma(-y, y, 1): 1 - y*y rounded once, as on the GPU
        y, gy = args
        with np.errstate(all="ignore"):
            return [gy * (1 - y.astype(np.float64) ** 2).astype(np.float32)]
    assert twins.check_row(kernels.TANH_BWD, np.float32, run=fused).ok


def test_report_table_and_exit_code(monkeypatch, capsys):
    ok = twins.check_row(kernels.ADD, np.float32, run=twins.twin_runner)
    bad = twins.check_row(kernels.EXP, np.float32, run=_drifting(lambda r: r * 2))
    table = str(twins.TwinReport([ok, bad]))
    assert "add" in table and "FAIL" in table and "exp (float32), worst" in table
    monkeypatch.setattr(twins, "cuda_available", lambda: False)
    assert twins.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        twins.main(["no_such_row"])
    assert "no kernel rows named ['no_such_row']" in capsys.readouterr().err


@pytest.mark.skipif(tg.cuda_available(), reason="checks the message on a machine without a GPU")
def test_check_twins_needs_a_gpu():
    with pytest.raises(tg.DeviceError, match="not available"):
        tg.check_twins()


@pytest.mark.parametrize("name", ["greater", "equal", "logical_and", "logical_not", "bitwise_xor",
                                  "bitwise_not", "pow_tensor", "pow_bwd_exponent", "min"])
def test_bool_and_integer_rows_are_checked_in_each_of_their_dtypes(name):
    row = kernels.ROWS[name]
    for dtype in twins.row_dtypes(row):
        result = twins.check_row(row, dtype, run=twins.twin_runner)
        assert result.ok and result.elements > 0, result


def test_comparison_rows_declare_integer_and_bool_dtypes():
    assert np.dtype(np.int64) in twins.row_dtypes(kernels.GREATER)
    assert np.dtype(np.bool_) in twins.row_dtypes(kernels.EQUAL)
    assert twins.row_dtypes(kernels.ADD) == [np.dtype(np.float32), np.dtype(np.float64)]
    assert list(twins.extreme_values(np.bool_)) == [False, True]
    assert np.iinfo(np.int32).min in twins.extreme_values(np.int32)


def test_a_comparison_giving_numbers_instead_of_bools_is_caught():
    # the old 0/1 float mask: right values, wrong dtype
    as_floats = _drifting(lambda r: r.astype(np.float32))
    result = twins.check_row(kernels.GREATER, np.float32, run=as_floats)
    assert not result.ok and "float32" in result.example
    flipped = twins.check_row(kernels.EQUAL, np.int64, run=_drifting(lambda r: ~r))
    assert not flipped.ok and "GPU" in flipped.example
