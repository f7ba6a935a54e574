"""The MLP classifier benchmark jobs run end to end (small sizes) and their agreement checks work."""

import pytest
from bench_helpers import import_benchmarks, quick_context

import tinygrad_gpu as tg

SMALL = {"digits": ((8, 16, 16, 4), 8), "MNIST": ((12, 24, 24, 5), 16), "wide": ((16, 48, 48, 3), 32)}


@pytest.fixture(scope="module")
def bench():
    return import_benchmarks("classifier", "run", "training")


@pytest.fixture
def small(bench, monkeypatch):
    classifier, _, _ = bench
    monkeypatch.setattr(classifier, "SIZES", SMALL)
    return bench


def test_jobs_are_registered_before_the_large_arrays(bench):
    _, run, _ = bench
    jobs = list(run.JOBS)
    assert jobs.index("classifier") < jobs.index("classifier-captured") < jobs.index("bandwidth")


@pytest.mark.parametrize("with_torch", [True, False])
def test_classifier_rows(device, small, with_torch):
    classifier, _, training = small
    ctx = quick_context(training, device, with_torch)
    eager, captured = classifier.classifier_eager(ctx), classifier.classifier_captured(ctx)
    sizes = ["digits", "MNIST", "wide"] if device == "cuda" else ["digits", "MNIST"]
    assert [row.job.split("(")[1].split(")")[0] for row in eager + captured] == sizes + sizes
    kind = "captured" if device == "cuda" else "tg.jit (CPU tape)"
    assert all(row.job.endswith(", Adam, eager") for row in eager)
    assert all(f", Adam, {kind} (captured: " in row.job for row in captured)
    for row in eager + captured:
        assert row.problem == "" and row.ours > 0, (row, ctx.notes)
        assert bool(row.peers) == (ctx.torch_device is not None)
    peer = "torch graph" if device == "cuda" else "torch"
    assert all(row.reference == peer for row in captured)
    assert sum("tg.jit captured: " in note for note in ctx.notes) == len(sizes)
    targets = [row.target for row in eager + captured]
    if device == "cuda":
        assert targets == [("<=", 0.4), ("<=", 0.4), ("<=", 0.8), ("<=", 0.8), ("<=", 0.8), ("<=", 1.0)]
    else:
        assert targets == [None, ("<=", 1.0), None, None]
        assert any("runs on the GPU only" in note for note in ctx.notes)


def test_a_wrong_loss_is_flagged(device, small, monkeypatch):
    """Adam hardly notices a loss 1% too large (the update divides the gradient by its magnitude);
    the loss comparison does."""
    classifier, _, training = small
    ctx = quick_context(training, device, True)
    if ctx.torch_device is None:
        pytest.skip("PyTorch cannot run on this device")
    real = tg.nn.functional.cross_entropy
    monkeypatch.setattr(tg.nn.functional, "cross_entropy", lambda *args, **kw: real(*args, **kw) * 1.01)
    rows = classifier.classifier_eager(ctx)
    assert all(row.problem == "MISMATCH" for row in rows), ctx.notes
    assert any("the losses at step 3 differ: ours " in note for note in ctx.notes)


def test_wrong_parameters_are_flagged(device, small, monkeypatch):
    classifier, _, training = small
    ctx = quick_context(training, device, True)
    if ctx.torch_device is None:
        pytest.skip("PyTorch cannot run on this device")
    real = classifier.classifier_ours_training
    monkeypatch.setattr(classifier, "classifier_ours_training",
                        lambda model, x, y, lr, *args, **kw: real(model, x, y, lr * 1.1, *args, **kw))
    rows = classifier.classifier_eager(ctx) + classifier.classifier_captured(ctx)
    assert all(row.problem == "MISMATCH" for row in rows), ctx.notes
    assert any("parameters differ from torch" in note for note in ctx.notes)
