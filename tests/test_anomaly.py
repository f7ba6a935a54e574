"""detect_anomaly(): the first NaN or inf raises, naming the op, the pass and the user line."""

import inspect
import threading

import numpy as np
import pytest

import tinygrad_gpu as tg


def _here(offset=0):
    """'this_file:line' of the caller's line plus `offset`."""
    caller = inspect.currentframe().f_back
    return f"{caller.f_code.co_filename}:{caller.f_lineno + offset}"


def test_off_by_default_and_nan_passes_silently(device):
    assert not tg.is_anomaly_enabled()
    x = tg.Tensor([-1.0, 1.0], device=device, requires_grad=True)
    y = x.log()
    y.sum().backward()
    assert np.isnan(y.numpy()[0]) and "_created_at" not in vars(y.grad_fn)


def test_forward_nan_names_op_and_user_line(device):
    x = tg.Tensor([-1.0, 1.0], device=device, requires_grad=True)
    with tg.detect_anomaly():
        assert tg.is_anomaly_enabled()
        line = _here(2)
        with pytest.raises(tg.AnomalyError) as info:
            x.log()
    message = str(info.value)
    assert "Log produced NaN in its forward" in message and "its inputs were finite" in message
    assert line in message and "x.log()" in message
    assert not tg.is_anomaly_enabled()


def test_forward_inf_is_reported_too(device):
    with tg.detect_anomaly(), pytest.raises(tg.AnomalyError, match="Exp produced inf in its forward"):
        tg.Tensor([1e3], device=device).exp()


def test_line_is_the_users_not_the_librarys(device):
    model = tg.nn.Sequential(tg.nn.Linear(2, 2, device=device), tg.nn.ReLU())
    bad_input = tg.Tensor([[np.inf, 0.0]], device=device)
    with tg.detect_anomaly():
        line = _here(2)
        with pytest.raises(tg.AnomalyError) as info:
            model(bad_input)
    assert "MatMul produced" in str(info.value) and "an input already held NaN or inf" in str(info.value)
    assert line in str(info.value) and "tinygrad_gpu" + "/nn.py" not in str(info.value)


def test_backward_nan_names_op_and_the_line_that_created_it(device):
    x = tg.Tensor([0.0, 4.0], device=device, requires_grad=True)
    with tg.detect_anomaly():
        line = _here(1)
        root = x.sqrt()  # finite forward; its derivative at 0 is infinite
        loss = (root * 3.0).sum()
        with pytest.raises(tg.AnomalyError) as info:
            loss.backward()
    message = str(info.value)
    assert "Sqrt produced inf in its backward (gradient for input 0, shape (2,))" in message
    assert "incoming gradient was finite" in message and line in message and "x.sqrt()" in message


def test_backward_of_a_graph_built_outside_the_mode_still_names_the_op(device):
    x = tg.Tensor([0.0], device=device, requires_grad=True)
    loss = x.sqrt().sum()
    with tg.detect_anomaly(), pytest.raises(tg.AnomalyError, match="Sqrt.*forward ran outside"):
        loss.backward()


def test_finite_training_step_runs_unchanged(device):
    tg.manual_seed(0)
    x = tg.Tensor(np.ones((4, 3)), device=device)
    model = tg.nn.Sequential(tg.nn.Linear(3, 4, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(4, 1, device=device))
    with tg.detect_anomaly():
        loss = tg.nn.MSELoss()(model(x), np.zeros((4, 1)))
        loss.backward()
    assert np.isfinite(loss.item()) and all(p.grad is not None for p in model.parameters())


def test_mode_nests_and_works_as_decorator(device):
    @tg.detect_anomaly()
    def inside():
        return tg.is_anomaly_enabled()

    with tg.detect_anomaly():
        with tg.detect_anomaly(False):
            assert not tg.is_anomaly_enabled()
            tg.Tensor([-1.0], device=device).log()  # not checked
        assert tg.is_anomaly_enabled()
    assert inside() and not tg.is_anomaly_enabled()


def test_mode_is_thread_local(device):
    seen = {}

    def other_thread():
        seen["enabled"] = tg.is_anomaly_enabled()
        seen["value"] = tg.Tensor([-1.0], device=device).log().numpy()  # must not raise here

    with tg.detect_anomaly():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert tg.is_anomaly_enabled()
    assert seen["enabled"] is False and np.isnan(seen["value"][0])
    assert issubclass(tg.AnomalyError, RuntimeError)


def test_a_captured_step_runs_eagerly_under_anomaly_mode(device, monkeypatch):
    from tinygrad_gpu.jit import capture_state

    monkeypatch.setattr(capture_state, "active", True)  # as while tg.jit records a CUDA graph
    with tg.detect_anomaly(), pytest.raises(tg.CaptureError, match="runs eagerly"):
        tg.Tensor([1.0], device=device) * 2
