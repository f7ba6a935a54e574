"""A standard training step reads nothing back to the host.

On the GPU each step is captured into a CUDA graph by tg.jit: stream capture forbids device-to-host
copies, so a capture that succeeds proves the step has none. On the CPU the same steps run with the
device-side checks on their device path and the sync debug mode set to "error", so any of the
library's host read points (Tensor.item/numpy/tolist/bool/float, copies to the host, mask
indexing) raises.
"""

import warnings

import numpy as np
import pytest

import tinygrad_gpu as tg
import tinygrad_gpu.nn.functional as F
from tinygrad_gpu import device_checks

N, FEATURES, CLASSES = 8, 5, 3


def _classes(rng):
    return rng.integers(0, CLASSES, N)


# each loss: (name, its output width, the loss of (output, target), a target maker)
_WEIGHTS: dict = {}


def _class_weight(out):
    """The class weights, made once per device and dtype outside any step (a copy from the host
    inside a captured step is refused, as it must be)."""
    key = (out.device, out.dtype)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = tg.Tensor([1.0, 2.0, 0.5], device=out.device, dtype=out.dtype)
    return _WEIGHTS[key]


LOSSES = {
    "mse": (1, lambda out, t: F.mse_loss(out, t), lambda rng: rng.standard_normal((N, 1))),
    "l1": (1, lambda out, t: F.l1_loss(out, t), lambda rng: rng.standard_normal((N, 1))),
    "huber": (1, lambda out, t: F.huber_loss(out, t, delta=0.5), lambda rng: rng.standard_normal((N, 1))),
    "smooth_l1": (1, lambda out, t: F.smooth_l1_loss(out, t, beta=0.5),
                  lambda rng: rng.standard_normal((N, 1))),
    "bce": (1, lambda out, t: F.binary_cross_entropy(out.sigmoid(), t), lambda rng: rng.random((N, 1))),
    "bce_with_logits": (1, lambda out, t: F.binary_cross_entropy_with_logits(out, t),
                        lambda rng: rng.random((N, 1))),
    "kl_div": (CLASSES, lambda out, t: F.kl_div(out.log_softmax(axis=1), t, reduction="batchmean"),
               lambda rng: np.full((N, CLASSES), 1.0 / CLASSES)),
    "nll": (CLASSES, lambda out, t: F.nll_loss(out.log_softmax(axis=1), t), _classes),
    "cross_entropy": (CLASSES, lambda out, t: F.cross_entropy(out, t), _classes),
    "cross_entropy_weight": (CLASSES, lambda out, t: F.cross_entropy(out, t, weight=_class_weight(out)),
                             _classes),
    "cross_entropy_ignore_index": (CLASSES, lambda out, t: F.cross_entropy(out, t, ignore_index=1), _classes),
    # the fused primitive's other reductions: the per-row losses, and gy read per row on the device
    "cross_entropy_sum": (CLASSES, lambda out, t: F.cross_entropy(out, t, reduction="sum"), _classes),
    "cross_entropy_none": (CLASSES, lambda out, t: (F.cross_entropy(out, t, reduction="none") ** 2).mean(),
                           _classes),
    "cross_entropy_label_smoothing": (CLASSES, lambda out, t: F.cross_entropy(
        out, t, label_smoothing=0.1, ignore_index=2), _classes),
}

OPTIMIZERS = {
    "sgd": lambda p: tg.optim.SGD(p, lr=0.05),
    "sgd_momentum": lambda p: tg.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda p: tg.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: tg.optim.Adam(p, lr=1e-2),
    "adam_amsgrad": lambda p: tg.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: tg.optim.AdamW(p, lr=1e-2),
    "rmsprop": lambda p: tg.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    "adagrad": lambda p: tg.optim.Adagrad(p, lr=1e-2),
}

CASES = [(loss, "adam") for loss in LOSSES] + [("cross_entropy", opt) for opt in OPTIMIZERS]


def make_step(device, loss_name, optimizer_name):
    """A closure step in PyTorch's CUDA-graph recipe style (static input buffers, no arguments), and
    its learning-rate schedule (stepped between steps: a captured step cannot change settings)."""
    width, loss_of, make_target = LOSSES[loss_name]
    rng = np.random.default_rng(0)
    tg.manual_seed(0)
    model = tg.nn.Sequential(tg.nn.Linear(FEATURES, 16, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(16, width, device=device))
    opt = OPTIMIZERS[optimizer_name](model.parameters())
    scheduler = tg.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x = tg.Tensor(rng.standard_normal((N, FEATURES)), device=device)
    target = make_target(rng)
    y = tg.tensor(target, device=device) if target.dtype.kind == "i" else tg.Tensor(target, device=device)

    def step():
        opt.zero_grad()
        loss = loss_of(model(x), y)
        loss.backward()
        tg.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    return step, scheduler


@pytest.fixture
def reads_forbidden(monkeypatch):
    """Device-path checks on the CPU, and every library host read an error, for the block's steps."""
    monkeypatch.setattr(device_checks, "DEFER_ON_CPU", True)
    yield
    tg.set_sync_debug_mode("default")


@pytest.mark.parametrize("loss_name,optimizer_name", CASES)
def test_cpu_step_reads_nothing_back(reads_forbidden, loss_name, optimizer_name):
    step, scheduler = make_step("cpu", loss_name, optimizer_name)
    tg.set_sync_debug_mode("error")
    losses = []
    for _ in range(3):
        losses.append(step())
        scheduler.step()
    tg.set_sync_debug_mode("default")
    assert all(np.isfinite(loss.item()) for loss in losses)


def test_the_cpu_guard_catches_a_read(reads_forbidden):
    step, _ = make_step("cpu", "cross_entropy", "sgd")
    tg.set_sync_debug_mode("error")
    with pytest.raises(RuntimeError, match=r"item\(\) reads a numpy array of shape \(\) back to the host"):
        step().item()
    x = tg.Tensor(np.ones(3), device="cpu")
    with pytest.raises(RuntimeError, match="a boolean mask index reads"):
        x[x > 0]
    tg.set_sync_debug_mode("warn")
    with pytest.warns(UserWarning, match=r"numpy\(\) reads"):
        x.numpy()


def test_sync_debug_mode_is_validated():
    with pytest.raises(ValueError, match="mode must be one of"):
        tg.set_sync_debug_mode("loud")
    tg.set_sync_debug_mode(1)
    assert tg.get_sync_debug_mode() == 1
    tg.set_sync_debug_mode("default")
    assert tg.get_sync_debug_mode() == 0


@pytest.mark.skipif(not tg.cuda_available(), reason="CuPy with a CUDA GPU is not available")
@pytest.mark.parametrize("loss_name,optimizer_name", CASES)
def test_gpu_step_is_captured_so_it_reads_nothing_back(loss_name, optimizer_name):
    raw, scheduler = make_step("cuda", loss_name, optimizer_name)
    step = tg.jit(raw)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tg.CaptureWarning)  # the assertion below names the reason
        for _ in range(4):
            losses.append(step())
            scheduler.step()
    assert step.captured, step.reason
    assert np.isfinite(losses[-1].item())
