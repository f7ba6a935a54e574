"""The eager CPU step's host work: a small training step stays cheap, and the shortcuts it takes
(NumPy scalars for shared settings, one derived error state) change no result."""

import sys
import warnings

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels as K

# Python-level calls of one eager XOR step (2-4-1 MLP, MSE, SGD) on the CPU. About 106 today;
# a step that does per-call work again (messages, look-ups, wrappers) goes over.
XOR_STEP_CALL_BUDGET = 125


def _xor_step():
    model = tg.nn.Sequential(tg.nn.Linear(2, 4, device="cpu"), tg.nn.ReLU(),
                             tg.nn.Linear(4, 1, device="cpu"), tg.nn.Sigmoid())
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = tg.nn.MSELoss()
    x = tg.Tensor(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32), device="cpu")
    y = tg.Tensor(np.array([[0], [1], [1], [0]], np.float32), device="cpu")

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def test_an_eager_cpu_training_step_stays_within_its_call_budget():
    step = _xor_step()
    for _ in range(3):  # traces, compiled twins and optimizer state made first
        step()
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        step()
    finally:
        sys.setprofile(None)
    assert 0 < calls <= XOR_STEP_CALL_BUDGET, f"{calls} Python calls per step"


def _spy_on_sgd_twin(monkeypatch):
    seen = []
    original = K.SGD_STEP.inplace_twin

    def spy(grad, lr, weight_decay, param):
        seen.append((lr, weight_decay))
        return original(grad, lr, weight_decay, param)

    monkeypatch.setattr(K.SGD_STEP, "inplace_twin", spy)
    return seen


def test_foreach_on_numpy_reads_shared_settings_once_as_numpy_scalars(monkeypatch):
    seen = _spy_on_sgd_twin(monkeypatch)
    params = [np.ones(3, np.float32), np.ones((2, 2), np.float32)]
    grads = [np.full(3, 2, np.float32), np.full((2, 2), 4, np.float32)]
    lr, weight_decay = np.asarray(np.float32(0.5)), np.asarray(np.float32(0))
    K.SGD_STEP.foreach({"grad": grads, "param": params}, {"lr": lr, "weight_decay": weight_decay})
    assert len(seen) == 2 and all(type(v) is np.float32 for pair in seen for v in pair)
    # the same arithmetic as with the 0-d arrays themselves
    np.testing.assert_array_equal(params[0], np.float32(1) - lr * grads[0])
    np.testing.assert_array_equal(params[1], np.float32(1) - lr * grads[1])


def test_foreach_passes_the_settings_buffers_while_a_tape_wraps_the_rows(monkeypatch):
    seen = _spy_on_sgd_twin(monkeypatch)
    plain = K.Elementwise.__call__

    def recorded(self, *args, **kwargs):  # what tg.jit's CPU tape installs while it records
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(K.Elementwise, "__call__", recorded)
    lr, weight_decay = np.asarray(np.float32(0.5)), np.asarray(np.float32(0))
    K.SGD_STEP.foreach({"grad": [np.ones(3, np.float32)], "param": [np.ones(3, np.float32)]},
                       {"lr": lr, "weight_decay": weight_decay})
    assert seen == [(lr, weight_decay)] and seen[0][0] is lr  # the buffer a schedule rewrites


def test_a_jitted_cpu_step_follows_a_schedule_and_matches_the_eager_one():
    def make():
        tg.manual_seed(0)
        w = tg.Tensor(np.linspace(-1, 1, 6).reshape(2, 3), device="cpu", requires_grad=True)
        opt = tg.optim.SGD([w], lr=0.1, weight_decay=0.01)
        return w, opt, tg.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    x = tg.Tensor(np.arange(6, dtype=np.float64).reshape(3, 2), device="cpu")
    w_jit, opt_jit, schedule_jit = make()
    w_eager, opt_eager, schedule_eager = make()

    def train(w, opt):
        opt.zero_grad()
        ((w @ x) ** 2).mean().backward()
        opt.step()

    step = tg.jit(lambda inputs: train(w_jit, opt_jit))
    for _ in range(5):
        step(x)
        schedule_jit.step()
        train(w_eager, opt_eager)
        schedule_eager.step()
    assert step.captured, step.reason
    np.testing.assert_array_equal(w_jit.numpy(), w_eager.numpy())


def test_silenced_blocks_nest_and_give_back_the_error_state_they_found():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with K.silenced_numpy():
            np.log(np.zeros(2))
            with K.silenced_numpy():
                np.float32(1) / np.zeros(2, np.float32)
            np.exp(np.array([1000.0]))
        with pytest.raises(RuntimeWarning, match="divide by zero"):
            np.log(np.zeros(2))
    with np.errstate(over="raise"):
        with K.silenced_numpy():
            np.exp(np.array([1000.0]))
        with pytest.raises(FloatingPointError):
            np.exp(np.array([1000.0]))
    with np.errstate(invalid="raise"):  # a new base state: its own silenced state, then back
        with K.silenced_numpy():
            np.sqrt(np.array([-1.0]))
        with pytest.raises(FloatingPointError):
            np.sqrt(np.array([-1.0]))
