"""The fused cross-entropy primitive (losses.CrossEntropy): against the composed path it replaces,
PyTorch, finite differences; its label checks (at once for host labels, on the device otherwise);
its edges (N = 1, C = 1, a large C, -inf rows, every label ignored); and what it launches.

Tests taking `device` run on the CPU (through the NumPy twin) and, on a GPU machine, through the
CUDA kernels too.
"""

import warnings

import numpy as np
import pytest
from conftest import training_step

import tinygrad_gpu as tg
import tinygrad_gpu.nn.functional as F
from tinygrad_gpu import device_checks, explain, kernels, losses

try:
    import torch
except ImportError:  # PyTorch is an optional oracle
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
needs_gpu = pytest.mark.skipif(not tg.cuda_available(), reason="CuPy with a CUDA GPU is not available")

DTYPES = [np.float32, np.float64]
REDUCTIONS = ["mean", "sum", "none"]
# (rtol, atol) of the fused path against another computation of the same math
TOLERANCE = {np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-14)}


@pytest.fixture
def deferred(monkeypatch):
    """Device labels checked on the device on the CPU too (the path a GPU takes)."""
    monkeypatch.setattr(device_checks, "DEFER_ON_CPU", True)
    yield
    device_checks.discard_pending()


def data(n, c, dtype, seed=0, ignore_index=-100, ignored=0.0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    labels = rng.integers(0, c, n)
    if ignore_index is not None:
        labels[rng.random(n) < ignored] = ignore_index
    return logits, labels


def loss_and_grad(fn, logits, device, gy_seed=1):
    """The loss of fn(x) and d(sum of loss * random weights)/dx, as NumPy arrays."""
    x = tg.Tensor(logits, device=device, requires_grad=True)
    loss = fn(x)
    weights = np.random.default_rng(gy_seed).uniform(0.5, 1.5, loss.shape).astype(logits.dtype)
    (loss * tg.Tensor(weights, device=device)).sum().backward()
    return loss.numpy(), x.grad.numpy(), loss


def composed(x, labels, reduction="mean", ignore_index=-100):
    """Today's composed path: log_softmax, then nll_loss."""
    return F.nll_loss(x.log_softmax(axis=-1), labels, reduction=reduction, ignore_index=ignore_index)


def fused(x, labels, reduction="mean", ignore_index=-100):
    return F.cross_entropy(x, labels, reduction=reduction, ignore_index=ignore_index)


# ---- which calls take the fused path -----------------------------------------------------------
def test_the_common_case_is_one_node(device):
    x = tg.Tensor(np.zeros((4, 3)), device=device, requires_grad=True)
    for labels in ([0, 1, 2, 0], (0, 1, 2, 0), np.array([0, 1, 2, 0], np.int32),
                   tg.tensor([0, 1, 2, 0], device="cpu"), tg.tensor([0, 1, 2, 0], device=device),
                   np.array([0, 1, 2, 0], np.uint8)):
        for reduction in REDUCTIONS:
            loss = F.cross_entropy(x, labels, reduction=reduction)
            assert type(loss.grad_fn) is losses.CrossEntropy and loss.grad_fn.inputs == (x,)
    assert F.cross_entropy(x[0], 2).grad_fn.name == "CrossEntropy"
    assert F.cross_entropy(x, [0, 1, 2, 0], ignore_index=None).grad_fn.name == "CrossEntropy"


def test_everything_else_keeps_the_composed_path(device):
    x = tg.Tensor(np.zeros((4, 3)), device=device, requires_grad=True)
    others = [
        lambda: F.cross_entropy(x, [0, 1, 2, 0], weight=[1.0, 2.0, 3.0]),
        lambda: F.cross_entropy(x, [0, 1, 2, 0], label_smoothing=0.1),
        lambda: F.cross_entropy(x, np.full((4, 3), 1 / 3)),  # probabilities
        lambda: F.cross_entropy(x, tg.Tensor([0.0, 1.0, 2.0, 0.0], device=device)),  # whole floats
        lambda: F.cross_entropy(x.reshape(2, 3, 2), [[0, 1], [2, 0]]),  # (N, C, d)
    ]
    for other in others:
        assert type(other().grad_fn) is not losses.CrossEntropy


def test_the_fused_node_is_labelled_for_viz_and_explain(device):
    x = tg.Tensor(np.zeros((2, 3)), device=device, requires_grad=True)
    loss = F.cross_entropy(x, [0, 2])
    assert "CrossEntropy" in tg.viz.to_dot(loss)
    assert explain.kernel_of(loss) == "CrossEntropy"
    assert repr(loss).endswith("grad_fn=<CrossEntropy>)")


# ---- the same math as the composed path, PyTorch and finite differences ----------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n,c,ignore_index,ignored", [
    (7, 5, -100, 0.0), (13, 4, -100, 0.4), (9, 6, 2, 0.3), (1, 3, -100, 0.0), (6, 1, -100, 0.0),
    (40, 33, 0, 0.5), (8, 4, None, 0.0),
])
def test_fused_agrees_with_the_composed_path(device, dtype, reduction, n, c, ignore_index, ignored):
    logits, labels = data(n, c, dtype, seed=n + c, ignore_index=ignore_index, ignored=ignored)
    labels = tg.tensor(labels, device=device)
    want, want_grad, _ = loss_and_grad(lambda x: composed(x, labels, reduction, ignore_index), logits, device)
    got, got_grad, loss = loss_and_grad(lambda x: fused(x, labels, reduction, ignore_index), logits, device)
    assert type(loss.grad_fn) is losses.CrossEntropy
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got_grad, want_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_label_ignored(device, dtype):
    """0 / 0 = NaN for "mean" (as PyTorch), 0 for "sum", zeros for "none"; the gradient is 0 (as
    PyTorch; the composed path gives NaN there)."""
    logits, _ = data(5, 4, dtype)
    labels = tg.tensor([-100] * 5, device=device)
    for reduction, expected in (("mean", np.nan), ("sum", 0.0), ("none", np.zeros(5))):
        got, grad, _ = loss_and_grad(lambda x, r=reduction: fused(x, labels, r), logits, device)
        np.testing.assert_array_equal(got, np.asarray(expected, dtype))
        np.testing.assert_array_equal(grad, np.zeros((5, 4), dtype))
    want = composed(tg.Tensor(logits, device=device), labels)
    assert np.isnan(want.item())


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index,ignored", [(-100, 0.0), (-100, 0.3), (1, 0.3), (-100, 1.0)])
def test_fused_matches_pytorch(device, dtype, reduction, ignore_index, ignored):
    logits, labels = data(11, 6, dtype, seed=3, ignore_index=ignore_index, ignored=ignored)
    got, got_grad, loss = loss_and_grad(
        lambda x: fused(x, tg.tensor(labels, device=device), reduction, ignore_index), logits, device)
    assert type(loss.grad_fn) is losses.CrossEntropy
    theirs = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(theirs, torch.tensor(labels), reduction=reduction,
                                             ignore_index=ignore_index)
    weights = np.random.default_rng(1).uniform(0.5, 1.5, want.shape).astype(dtype)
    (want * torch.tensor(weights)).sum().backward()
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(got_grad, theirs.grad.numpy(), rtol=rtol, atol=atol)


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_an_unbatched_row_matches_pytorch(device, reduction):
    logits = np.random.default_rng(4).standard_normal(5)
    got, got_grad, loss = loss_and_grad(lambda x: F.cross_entropy(x, 3, reduction=reduction), logits, device)
    assert type(loss.grad_fn) is losses.CrossEntropy and got.shape == ()
    theirs = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(theirs, torch.tensor(3), reduction=reduction)
    (want * float(np.random.default_rng(1).uniform(0.5, 1.5, ()))).backward()
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(got_grad, theirs.grad.numpy(), rtol=1e-12, atol=1e-15)
    # an ignored unbatched label
    ignored = F.cross_entropy(tg.Tensor(logits, device=device), 3, reduction=reduction, ignore_index=3)
    assert np.isnan(ignored.item()) if reduction == "mean" else ignored.item() == 0.0


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_finite_rows_match_pytorch(device, reduction):
    """A row of -inf counted gives NaN (as PyTorch and the composed path); ignored, it adds 0 to the
    loss and NaN to its gradient row (as PyTorch); a -inf logit of the label gives +inf."""
    inf = np.inf
    logits = np.array([[-inf, -inf, -inf], [0.0, 1.0, 2.0], [-inf, -inf, -inf], [1.0, -inf, 0.5],
                       [2.0, 0.0, -inf]])
    labels = np.array([0, 1, -100, 0, 2])
    x = tg.Tensor(logits, device=device, requires_grad=True)
    loss = F.cross_entropy(x, labels, reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    theirs = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(theirs, torch.tensor(labels), reduction=reduction)
    (want.sum() if reduction == "none" else want).backward()
    np.testing.assert_allclose(loss.numpy(), want.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), theirs.grad.numpy(), rtol=1e-12)


def test_huge_logits_stay_exact(device):
    for dtype in DTYPES:
        logits = np.array([[1e4, 0.0, -1e4], [1000.0, 1001.0, 999.0]], dtype)
        x = tg.Tensor(logits, device=device, requires_grad=True)
        loss = F.cross_entropy(x, [1, 2], reduction="none")
        log_sum = np.log(1 + np.exp(-1.0) + np.exp(-2.0))
        np.testing.assert_allclose(loss.numpy(), [1e4, log_sum + 2.0], rtol=1e-6)
        loss.sum().backward()
        p = np.exp(np.array([-1.0, 0.0, -2.0]) - log_sum)
        np.testing.assert_allclose(x.grad.numpy(), [[1, -1, 0], p - [0, 0, 1]], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_gradcheck(device, reduction, ignore_index):
    logits, labels = data(6, 4, np.float64, seed=5, ignore_index=ignore_index, ignored=0.3, scale=1.0)
    labels = tg.tensor(labels, device=device)
    x = tg.Tensor(logits, device=device, requires_grad=True)
    assert type(fused(x, labels, reduction, ignore_index).grad_fn) is losses.CrossEntropy
    assert tg.gradcheck(lambda a: fused(a, labels, reduction, ignore_index), [x])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_second_derivatives(device, reduction):
    """backward_graph records softmax(x) - onehot, so gradients of gradients work."""
    logits, labels = data(4, 3, np.float64, seed=6, ignored=0.3, scale=1.0)
    labels = tg.tensor(labels, device=device)
    x = tg.Tensor(logits, device=device, requires_grad=True)
    assert tg.gradgradcheck(lambda a: fused(a, labels, reduction), [x])
    assert tg.gradgradcheck(lambda a: F.cross_entropy(a[0], 2, reduction=reduction), [x])


@needs_torch
def test_hessian_vector_product_matches_pytorch(device):
    logits, labels = data(4, 3, np.float64, seed=7, ignored=0.3, scale=1.0)
    v = np.random.default_rng(8).standard_normal(logits.shape)
    x = tg.Tensor(logits, device=device, requires_grad=True)
    (g,) = tg.grad(F.cross_entropy(x, tg.tensor(labels, device=device)), [x], create_graph=True)
    (hv,) = tg.grad((g * tg.Tensor(v, device=device)).sum(), [x])
    theirs = torch.tensor(logits, requires_grad=True)
    (tg_,) = torch.autograd.grad(torch.nn.functional.cross_entropy(theirs, torch.tensor(labels)), [theirs],
                                 create_graph=True)
    (want,) = torch.autograd.grad((tg_ * torch.tensor(v)).sum(), [theirs])
    np.testing.assert_allclose(g.numpy(), tg_.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(hv.numpy(), want.numpy(), rtol=1e-10, atol=1e-14)


# ---- label checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("labels,value", [([0, 3], 3), ([0, -1], -1), ([5, -2], -2), (np.array([4, 1]), 4)])
def test_host_labels_out_of_range_raise_at_once_as_before(device, labels, value):
    logits = tg.Tensor(np.zeros((2, 3)), device=device, requires_grad=True)
    message = (rf"nll_loss \(input shape \(2, 3\), dtype float64\): class label {value} is out of range "
               r"for 3 classes$")
    with pytest.raises(IndexError, match=message):
        F.cross_entropy(logits, labels)
    with pytest.raises(IndexError, match=message):
        composed(logits, labels)
    with pytest.raises(IndexError, match=message):  # a CPU tensor's labels are read for free
        F.cross_entropy(logits, tg.tensor(labels, device="cpu"))


def test_ignored_labels_are_not_range_checked(device):
    logits = tg.Tensor(np.zeros((3, 3)), device=device)
    assert F.cross_entropy(logits, [7, 1, 7], ignore_index=7).item() == pytest.approx(np.log(3))
    with pytest.raises(IndexError, match="class label 7 is out of range for 3 classes"):
        F.cross_entropy(logits, [7, 1, 7], ignore_index=-100)


def test_device_labels_out_of_range_are_raised_at_the_next_read(deferred, device):
    logits = tg.Tensor(np.zeros((5, 4)), device=device, requires_grad=True)
    labels = tg.tensor([1, -100, 7, 9, -3], device=device)
    loss = F.cross_entropy(logits, labels)  # nothing read back: nothing raised yet
    assert type(loss.grad_fn) is losses.CrossEntropy
    loss.backward()
    message = (r"nll_loss \(input shape \(5, 4\), dtype float64\): class label 7 is out of range for 4 "
               r"classes \(found by a device-side check")
    with pytest.raises(IndexError, match=message):
        loss.item()
    assert loss.item() == pytest.approx(np.log(4))  # raised once; only the good row counted
    np.testing.assert_array_equal(logits.grad.numpy()[1:], np.zeros((4, 4)))


@pytest.mark.parametrize("rows", [50, 20000])  # one block, then a grid of blocks and a second launch
def test_device_labels_out_of_range_are_found_in_any_grid(deferred, device, rows):
    labels = np.arange(rows) % 8
    labels[rows - 7], labels[rows - 3] = 11, -4  # the first bad row's label is the one reported
    loss = F.cross_entropy(tg.Tensor(np.zeros((rows, 8)), device=device), tg.tensor(labels, device=device))
    with pytest.raises(IndexError, match=rf"input shape \({rows}, 8\).*class label 11 is out of range"):
        loss.item()
    assert loss.item() == pytest.approx(np.log(8))


def test_the_first_recorded_error_is_kept(deferred, device):
    logits = tg.Tensor(np.zeros((2, 3)), device=device)
    F.cross_entropy(logits, tg.tensor([0, 5], device=device))
    F.cross_entropy(logits, tg.tensor([8, 0], device=device))
    F.cross_entropy(logits, tg.tensor([0, 0, 9], device=device)[:2])
    with pytest.raises(IndexError, match="class label 5 is out of range for 3 classes"):
        tg.synchronize()
    tg.synchronize()  # nothing left
    F.cross_entropy(logits, tg.tensor([6, 0], device=device), reduction="none")
    with pytest.raises(IndexError, match="class label 6 is out of range"):
        tg.synchronize()


def test_device_check_records_as_record_first_bad(deferred, device):
    """The buffer holds what device_checks.record_first_bad leaves for the same labels."""
    message = ("nll_loss (input shape (4, 3), dtype float64): class label {value} is out of range for 3 "
               "classes")
    labels = tg.tensor([0, 4, 2, -7], device=device)
    F.cross_entropy(tg.Tensor(np.zeros((4, 3)), device=device), labels, reduction="sum")
    got = device_checks._buffer(device).tolist()
    device_checks.discard_pending()
    array = labels.array
    device_checks.record_first_bad((array < 0) | (array >= 3), array, IndexError, message)
    assert got == device_checks._buffer(device).tolist() != [0, 0]
    device_checks.discard_pending()


# ---- edges and sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 1), (1, 7), (3, 1), (300, 3), (1, 50000), (3, 50000), (20000, 2),
                                 (20000, 8)])
def test_sizes(device, dtype, n, c):
    """One row, one class, many rows (one block, then several: rows grid-strided and the partial
    results summed by a second launch), a long row (the warp loops)."""
    logits, labels = data(n, c, dtype, seed=n, ignored=0.2)
    labels = tg.tensor(labels, device=device)
    for reduction in REDUCTIONS:
        want, want_grad, _ = loss_and_grad(lambda x, r=reduction: composed(x, labels, r), logits,
                                             device)
        got, got_grad, _ = loss_and_grad(lambda x, r=reduction: fused(x, labels, r), logits, device)
        if reduction == "mean" and (labels.numpy() == -100).all():
            want_grad = np.zeros_like(want_grad)  # PyTorch's (the composed path gives NaN)
        rtol, atol = TOLERANCE[dtype]
        np.testing.assert_allclose(got, want, rtol=rtol * 10, atol=atol)
        np.testing.assert_allclose(got_grad, want_grad, rtol=rtol * 10, atol=atol)


def test_strided_logits_and_label_dtypes(device):
    rng = np.random.default_rng(9)
    wide = tg.Tensor(rng.standard_normal((5, 8)), device=device, requires_grad=True)
    logits = wide[:, ::2]  # not contiguous
    for dtype in (np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64):
        labels = np.array([0, 3, 1, 2, 2], dtype)
        loss = F.cross_entropy(logits, tg.tensor(labels, device=device)
                               if np.dtype(dtype) in (np.int32, np.int64) else labels)
        assert type(loss.grad_fn) is losses.CrossEntropy
        want = composed(logits, labels.astype(np.int64))
        assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    loss.backward()
    expected = tg.grad(composed(wide[:, ::2], labels.astype(np.int64)), [wide])[0]
    np.testing.assert_allclose(wide.grad.numpy(), expected.numpy(), rtol=1e-12, atol=1e-15)


def test_runs_are_bit_identical(device):
    """Fixed-order reductions: the same inputs give the same bits."""
    logits, labels = data(5000, 10, np.float32, seed=10, ignored=0.1)
    results = []
    for _ in range(2):
        loss, grad, _ = loss_and_grad(lambda x: fused(x, tg.tensor(labels, device=device)), logits, device)
        results.append((loss.tobytes(), grad.tobytes()))
    assert results[0] == results[1]


# ---- what it launches ---------------------------------------------------------------------------------
def test_the_loss_runs_no_kernel_row_on_the_cpu(monkeypatch):
    """The whole loss (forward and backward) is the twin's work: no row or reduction of the kernel
    table runs between the logits and their gradient."""
    calls = []
    for cls in (kernels.Elementwise, kernels.Reduction):
        original = cls.__call__
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _o=original, **k: calls.append(self.name)
                            or _o(self, *a, **k))
    logits, labels = data(8, 5, np.float32)
    x = tg.Tensor(logits, requires_grad=True)
    labels = tg.tensor(labels)
    loss = F.cross_entropy(x, labels)
    loss.backward(tg.Tensor(np.float32(1.0)))
    assert calls == [] and x.grad.shape == (8, 5)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignored", [0.0, 0.3, 1.0])
def test_backward_from_the_loss_needs_no_gradient_launch(dtype, reduction, ignored):
    """A small loss's forward launch leaves d loss / dx ready for backward() from the loss itself:
    no gradient launch then, and the very bits the gradient launch gives for any other gy."""
    logits, labels = data(64, 10, dtype, ignored=ignored)
    logits[3, 2] = np.nan
    labels = tg.tensor(labels, device="cuda")
    key = (np.dtype(dtype).char, labels.array.dtype.str)
    F.cross_entropy(tg.Tensor(logits, device="cuda", requires_grad=True), labels).backward()  # compiled
    module = losses._gpu_modules.get(key)
    launched = []

    def counting(i, kernel):
        return lambda *args: launched.append(i) or kernel(*args)

    grads = []
    losses._gpu_modules[key] = tuple(counting(i, k) for i, k in enumerate(module))
    try:
        for seed in (None, tg.ones((), device="cuda", dtype=dtype)):
            launched.clear()
            x = tg.Tensor(logits, device="cuda", requires_grad=True)
            F.cross_entropy(x, labels, reduction=reduction).backward(seed)
            assert launched == ([0] if seed is None else [0, 2])  # rows; then grad unless seeded
            grads.append(x.grad.numpy())
    finally:
        losses._gpu_modules[key] = module
    np.testing.assert_array_equal(grads[0], grads[1])


@needs_gpu
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("rows,totals", [(64, 0), (20000, 1)])
def test_gpu_loss_is_two_or_three_launches(reduction, rows, totals):
    # the rows kernel, for a big batch a second launch adding its blocks' results, the gradient
    logits, labels = data(rows, 10, np.float32)
    x = tg.Tensor(logits, device="cuda", requires_grad=True)
    labels = tg.tensor(labels, device="cuda")
    F.cross_entropy(x, labels, reduction=reduction).sum().backward()  # compiled and cached
    module = losses._gpu_modules.get((np.dtype(np.float32).char, labels.array.dtype.str))
    counts = [0] * len(module)

    class Counting:
        def __init__(self, i, kernel):
            self.i, self.kernel = i, kernel

        def __call__(self, *args):
            counts[self.i] += 1
            return self.kernel(*args)

    key = (np.dtype(np.float32).char, labels.array.dtype.str)
    losses._gpu_modules[key] = tuple(Counting(i, k) for i, k in enumerate(module))
    try:
        loss = F.cross_entropy(x, labels, reduction=reduction)
        assert counts == [1, totals, 0, 0]
        loss.backward(tg.ones(loss.shape, device="cuda"))
        assert counts == [1, totals, 1, 0]
    finally:
        losses._gpu_modules[key] = module


def test_a_replayed_step_still_raises_for_bad_device_labels(device):
    """Captured on the GPU (a CPU tape here): the check runs inside the replayed step."""
    tg.manual_seed(0)
    model = tg.nn.Linear(6, 4, device=device)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    jitted = tg.jit(training_step(model, opt, F.cross_entropy))
    x = tg.Tensor(np.random.default_rng(0).standard_normal((8, 6)), device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            assert np.isfinite(jitted(x, tg.tensor([0, 1, 2, 3] * 2, device=device)).item())
    assert jitted.captured, jitted.reason
    with pytest.raises(IndexError, match="class label 7 is out of range for 4 classes"):
        jitted(x, tg.tensor([0, 1, 2, 3, 7, 1, 2, 3], device=device)).item()
    assert np.isfinite(jitted(x, tg.tensor([0, 1, 2, 3] * 2, device=device)).item())


@needs_gpu
def test_source_compiles_for_every_label_dtype():
    for dtype in DTYPES:
        for label_dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64):
            assert len(losses._gpu_kernels(dtype, label_dtype)) == 4
