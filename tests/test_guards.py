"""Guards against silent mistakes: in-place changes after save, freed graphs, debug_mode warnings."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import diagnostics


def _xor(device):
    x = tg.Tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)
    y = tg.Tensor([[0], [1], [1], [0]], device=device)
    model = tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(4, 1, device=device))
    return x, y, model


# ---- version counters -----------------------------------------------------------------------
def test_optimizer_step_before_backward_names_tensor_op_and_versions(device):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    loss = (w * tg.Tensor([3.0, 4.0], device=device)).sum()
    loss.backward(retain_graph=True)
    tg.optim.SGD([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match=r"a leaf tensor of shape \(2,\) \(float32\) was changed in place "
                                           r"after Mul saved it for backward \(input 0\): it is now at "
                                           r"version 1, the graph recorded version 0.*optimizer.step\(\)"):
        loss.backward()


def test_load_state_dict_before_backward_names_the_parameter(device):
    x, y, model = _xor(device)
    loss = tg.nn.MSELoss()(model(x), y)
    model.load_state_dict({name: p.numpy() + 1 for name, p in model.named_parameters()})
    with pytest.raises(RuntimeError, match=r"parameter '\d\.(weight|bias)' of shape .* changed in place"):
        loss.backward()


@pytest.mark.skipif(not tg.cuda_available(), reason="moving a module needs a second device")
def test_module_to_before_backward_raises():
    x, y, model = _xor("cpu")
    loss = tg.nn.MSELoss()(model(x), y)
    model.to("cuda")
    with pytest.raises(RuntimeError, match="Module.to"):
        loss.backward()


def test_in_place_steps_between_iterations_are_fine(device):
    x, y, model = _xor(device)
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        loss = tg.nn.MSELoss()(model(x), y)
        loss.backward()
        opt.step()
    assert all(p._version == 3 for p in model.parameters())
    assert loss.grad_fn is not None and loss._version == 0  # ops never bump versions


def test_second_backward_names_the_op_and_retain_graph(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    loss = x.exp().sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"saved values of Sum were freed .*retain_graph=True"):
        loss.backward()


# ---- debug mode -----------------------------------------------------------------------------
def test_debug_mode_warns_when_gradients_accumulate_across_steps(device):
    x, y, model = _xor(device)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    with tg.debug_mode():
        tg.nn.MSELoss()(model(x), y).backward()
        opt.step()  # the mistake: no zero_grad() before the next backward
        with pytest.warns(tg.DebugWarning, match=r"gradient of parameter '\d\.(weight|bias)'.* and 3 more "
                                                 r"leaf tensor\(s\).*no zero_grad\(\) in between"):
            tg.nn.MSELoss()(model(x), y).backward()
    assert not diagnostics.debug.enabled


def test_debug_mode_warns_when_losses_keep_their_graphs_alive(device):
    x, y, model = _xor(device)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    running_loss = 0.0
    with tg.debug_mode(), pytest.warns(tg.DebugWarning, match=r"running_loss \+= loss"):
        for _ in range(diagnostics.LEAK_STEPS + 2):
            opt.zero_grad()
            loss = tg.nn.MSELoss()(model(x), y)
            loss.backward()
            opt.step()
            running_loss += loss  # the mistake: keeps every step's loss and its graph
    assert isinstance(running_loss, tg.Tensor)


def test_debug_mode_is_quiet_on_a_correct_loop(device):
    x, y, model = _xor(device)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    running_loss, previous = 0.0, None
    tg.debug_mode()  # the plain call switches the mode on until switched off
    try:
        for _ in range(3 * diagnostics.LEAK_STEPS):
            opt.zero_grad()
            loss = tg.nn.MSELoss()(model(x), y)
            loss.backward()
            opt.step()
            running_loss += loss.item()
            previous = loss  # one earlier loss kept: constant, not growing
        w = tg.Tensor([1.0], device=device, requires_grad=True)
        (w * 2).sum().backward()
        w.grad = tg.Tensor([0.0], device=device)  # a gradient set by hand is not ours: no warning
        (w * 2).sum().backward()
    finally:
        tg.debug_mode(False)
    assert previous is not None and np.isfinite(running_loss)
    assert not diagnostics.debug.enabled


def test_adam_step_before_backward_is_refused(device):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    loss = (w * w).sum()
    loss.backward(retain_graph=True)
    tg.optim.Adam([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match="changed in place"):
        loss.backward()
