"""tg.jit on the CPU: the recorded tape replays a step bit for bit like the eager step."""

import functools
import warnings

import numpy as np
import pytest
from conftest import training_step
from test_no_host_reads import CASES, make_step

import tinygrad_gpu as tg
import tinygrad_gpu.nn.functional as F


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    """Tensors made without a device go to the CPU here, also where the suite runs on the GPU."""
    monkeypatch.setenv("TINYGRAD_GPU_DEVICE", "cpu")


def xor_trainer(seed=0):
    tg.manual_seed(seed)
    model = tg.nn.Sequential(tg.nn.Linear(2, 8), tg.nn.ReLU(), tg.nn.Linear(8, 1), tg.nn.Sigmoid())
    opt = tg.optim.Adam(model.parameters(), lr=0.05)
    return model, opt, training_step(model, opt, F.mse_loss)


def classifier_trainer(seed=0, **loss_settings):
    tg.manual_seed(seed)
    model = tg.nn.Sequential(tg.nn.Linear(6, 16), tg.nn.ReLU(), tg.nn.Linear(16, 16), tg.nn.ReLU(),
                             tg.nn.Linear(16, 4))
    opt = tg.optim.Adam(model.parameters(), lr=1e-2)

    def step(x, labels):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), labels, **loss_settings)
        loss.backward()
        tg.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    return model, opt, step


def assert_same_parameters(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert np.array_equal(p.numpy(), q.numpy()), name


def test_xor_300_steps_with_new_inputs_and_rate_changes_are_bit_identical():
    eager_model, eager_opt, eager_step = xor_trainer()
    jit_model, jit_opt, raw = xor_trainer()
    step = tg.jit(raw)
    schedules = [tg.optim.lr_scheduler.StepLR(o, step_size=50, gamma=0.5) for o in (eager_opt, jit_opt)]
    rng = np.random.default_rng(0)
    for i in range(300):
        x = tg.Tensor(rng.integers(0, 2, (4, 2)).astype(np.float32))  # new tensors every call
        y = tg.Tensor(rng.random((4, 1)).astype(np.float32))
        if i == 120:
            eager_opt.lr = jit_opt.lr = 0.02
        assert step(x, y).item() == eager_step(x, y).item(), i
        for schedule in schedules:
            schedule.step()
    assert step.captured and step.reason is None
    assert_same_parameters(eager_model, jit_model)
    for p, q in zip(eager_model.parameters(), jit_model.parameters()):
        assert np.array_equal(p.grad.numpy(), q.grad.numpy())


@pytest.mark.parametrize("loss_settings", [{}, {"ignore_index": 2, "weight": [1.0, 2.0, 0.5, 1.0]}])
def test_classifier_300_steps_are_bit_identical(loss_settings):
    eager_model, _, eager_step = classifier_trainer(**loss_settings)
    jit_model, _, raw = classifier_trainer(**loss_settings)
    step = tg.jit(raw)
    rng = np.random.default_rng(1)
    for i in range(300):
        x = tg.Tensor(rng.standard_normal((16, 6)).astype(np.float32))
        labels = tg.tensor(rng.integers(0, 4, 16))
        assert step(x, labels).item() == eager_step(x, labels).item(), i
    assert step.captured, step.reason
    assert_same_parameters(eager_model, jit_model)


def test_returned_tensors_are_the_recorded_buffers_overwritten_by_the_next_call():
    _, _, raw = xor_trainer()
    step = tg.jit(raw)
    x, y = tg.Tensor([[0.0, 1.0]] * 4), tg.Tensor([[1.0]] * 4)
    results = [step(x, y) for _ in range(6)]
    assert step.captured
    assert results[-1] is results[-2]  # the same output tensor, rewritten by each replay
    first_value = results[-1].item()
    step(x, y)
    assert results[-1].item() != first_value


def test_work_the_tape_does_not_see_keeps_the_step_eager_with_one_warning():
    w = tg.Tensor([1.0, 2.0], requires_grad=True)

    def step(x):
        doubled = tg.Tensor(x.numpy() * 2)  # a round trip through the host: not array work it records
        loss = (w * doubled).sum()
        loss.backward()
        return loss

    jitted = tg.jit(step)
    with pytest.warns(tg.CaptureWarning, match="does not reproduce the eager step") as caught:
        values = [jitted(tg.Tensor([float(i), 1.0])).item() for i in range(6)]
    assert values == [2.0 * i + 4.0 for i in range(6)]  # every call computed, none frozen
    assert len([w for w in caught if issubclass(w.category, tg.CaptureWarning)]) == 1
    assert not jitted.captured and "CPU tape" in jitted.reason


def test_a_setting_changed_inside_the_step_keeps_it_eager():
    model, opt, raw = xor_trainer()
    schedule = tg.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)

    def step(x, y):
        loss = raw(x, y)
        schedule.step()
        return loss

    jitted = tg.jit(step)
    x, y = tg.Tensor([[0.0, 1.0]] * 4), tg.Tensor([[1.0]] * 4)
    with pytest.warns(tg.CaptureWarning, match="setting changed inside the step"):
        for _ in range(5):
            jitted(x, y)
    assert opt.lr == pytest.approx(0.05 * 0.9 ** 5)


def test_other_shapes_are_refused_after_recording():
    _, _, raw = xor_trainer()
    step = tg.jit(raw)
    x, y = tg.Tensor([[0.0, 1.0]] * 4), tg.Tensor([[1.0]] * 4)
    for _ in range(4):
        step(x, y)
    with pytest.raises(ValueError, match="recorded for inputs"):
        step(tg.Tensor([[0.0, 1.0]] * 2), tg.Tensor([[1.0]] * 2))


def test_a_replayed_step_still_raises_for_bad_labels():
    _, _, raw = classifier_trainer()
    step = tg.jit(raw)
    x = tg.Tensor(np.zeros((16, 6), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            step(x, tg.tensor([0, 1, 2, 3] * 4))
    assert step.captured
    with pytest.raises(IndexError, match="class label 7 is out of range for 4 classes"):
        step(x, tg.tensor([7, 1, 2, 3] * 4))


def test_batches_with_and_without_ignored_labels_and_batch_norm_stay_bit_identical():
    def trainer():
        tg.manual_seed(2)
        model = tg.nn.Sequential(tg.nn.Linear(6, 8), tg.nn.BatchNorm1d(8), tg.nn.ReLU(), tg.nn.Linear(8, 3))
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, training_step(model, opt, functools.partial(F.cross_entropy, ignore_index=1))

    (eager_model, eager_step), (jit_model, raw) = trainer(), trainer()
    step = tg.jit(raw)
    rng = np.random.default_rng(3)
    for i in range(40):
        x = tg.Tensor(rng.standard_normal((8, 6)).astype(np.float32))
        # every third batch ignores nothing: the replay meets both paths of the loss
        labels = tg.tensor(rng.choice([0, 2], 8) if i % 3 == 0 else rng.integers(0, 3, 8))
        assert step(x, labels).item() == eager_step(x, labels).item(), i
    assert step.captured, step.reason
    assert_same_parameters(eager_model, jit_model)
    for a, b in zip(eager_model[1].buffers(), jit_model[1].buffers()):
        assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("loss_name,optimizer_name", CASES)
def test_every_standard_step_replays_bit_identically(loss_name, optimizer_name):
    (eager_step, eager_schedule), (raw, schedule) = (make_step("cpu", loss_name, optimizer_name)
                                                     for _ in range(2))
    step = tg.jit(raw)
    for i in range(8):
        assert step().item() == eager_step().item(), i
        eager_schedule.step()
        schedule.step()
    assert step.captured, step.reason
    for a, b in zip(eager_schedule.optimizer.params, schedule.optimizer.params):
        assert np.array_equal(a.numpy(), b.numpy())


def test_anomaly_mode_keeps_the_step_eager():
    _, _, raw = xor_trainer()
    step = tg.jit(raw)
    x, y = tg.Tensor([[0.0, 1.0]] * 4), tg.Tensor([[1.0]] * 4)
    with tg.detect_anomaly(), pytest.warns(tg.CaptureWarning, match="anomaly detection"):
        for _ in range(4):
            step(x, y)
    assert not step.captured
