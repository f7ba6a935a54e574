"""The CNN benchmark jobs run end to end (small sizes) and their agreement checks pass."""

import pytest
from bench_helpers import import_benchmarks, quick_context


@pytest.fixture(scope="module")
def bench():
    return import_benchmarks("bandwidth", "cnn", "training")


@pytest.mark.parametrize("with_torch", [True, False])
def test_conv_and_lenet_rows(device, bench, monkeypatch, with_torch):
    _, cnn, training = bench
    monkeypatch.setattr(cnn, "CONV_SHAPE", (2, 4, 6, 6))
    monkeypatch.setattr(cnn, "LENET_BATCH", 8)
    ctx = quick_context(training, device, with_torch)
    rows = cnn.conv_layer(ctx) + cnn.lenet_eager(ctx) + cnn.lenet_captured(ctx)
    assert [row.job.split(",")[0] for row in rows] == ["conv 3x3 4->4", "LeNet step"] + (
        ["LeNet step"] if device == "cuda" else [])
    for row in rows:
        assert row.problem == "" and row.ours > 0, (row, ctx.notes)
        assert ("torch" in row.peers or "torch graph" in row.peers) == (ctx.torch_device is not None)
    if device == "cuda":
        assert any("tg.jit captured: " in note for note in ctx.notes)
    else:
        assert any("CUDA graphs exist on the GPU only" in note for note in ctx.notes)


def test_a_wrong_result_is_flagged(device, bench, monkeypatch):
    """The conv job compares outputs and gradients: a broken layer shows MISMATCH, not a time."""
    _, cnn, training = bench
    import tinygrad_gpu as tg

    monkeypatch.setattr(cnn, "CONV_SHAPE", (2, 4, 6, 6))
    real_conv2d = tg.nn.functional._conv2d  # what Conv2d runs
    monkeypatch.setattr(tg.nn.functional, "_conv2d", lambda *args, **kw: real_conv2d(*args, **kw) * 1.01)
    ctx = quick_context(training, device, True)
    if ctx.torch_device is None:
        pytest.skip("PyTorch cannot run on this device")
    (row,) = cnn.conv_layer(ctx)
    assert row.problem == "MISMATCH" and any("differ in the output" in note for note in ctx.notes)


def test_reduction_rows(device, bench):
    bandwidth, _, training = bench
    ctx = quick_context(training, device, True)
    rows = bandwidth.reductions(ctx, 64 * 1024 + 5)  # rounded down to whole rows of 1024
    assert len(rows) == 4 and all(row.problem == "" and row.ours > 0 for row in rows), ctx.notes
    assert all("copy" in row.peers and row.ratio_kind == "percent" for row in rows)
    assert rows[0].job == "max over the last axis of 64x1024 float32"
    ceiling = 100.0 if device == "cuda" else 10_000.0  # TB/s, GB/s: no memory is faster
    assert all(0 < rate < ceiling for row in rows for rate in (row.ours, *row.peers.values()))
