"""Post-accumulate-grad hooks and end-of-backward callbacks of the engine."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import hooks


def test_hook_sees_the_accumulated_gradient(device):
    w = tg.Tensor([1.0, 2.0], requires_grad=True, device=device)
    seen = []
    w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    (w * w).sum().backward()
    (w * 3.0).sum().backward()
    np.testing.assert_allclose(seen[0], [2.0, 4.0])
    np.testing.assert_allclose(seen[1], [5.0, 7.0])  # after this backward's accumulation


def test_hook_fires_once_per_backward_after_all_contributions(device):
    w = tg.Tensor([1.0], requires_grad=True, device=device)
    calls = []
    w.register_post_accumulate_grad_hook(lambda t: calls.append(float(t.grad.numpy()[0])))
    (w * 2.0 + w * 3.0 + w).sum().backward()  # three paths meet in w
    assert calls == [6.0]


def test_hooks_fire_in_reverse_registration_order_for_a_sequential_model(device):
    model = tg.nn.Sequential(tg.nn.Linear(3, 4), tg.nn.ReLU(), tg.nn.Linear(4, 2)).to(device)
    names = {id(p): n for n, p in model.named_parameters()}
    order = []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda t: order.append(names[id(t)]))
    model(tg.Tensor(np.ones((5, 3)), device=device)).sum().backward()
    # the last layer's gradients are final first: data parallelism can send them during backward
    assert sorted(order[:2]) == ["2.bias", "2.weight"] and sorted(order[2:]) == ["0.bias", "0.weight"]


def test_removed_hook_is_not_called(device):
    w = tg.Tensor([1.0], requires_grad=True, device=device)
    calls = []
    handle = w.register_post_accumulate_grad_hook(lambda t: calls.append(1))
    handle.remove()
    handle.remove()
    (w * 2.0).sum().backward()
    assert calls == []


def test_hook_needs_a_leaf_that_requires_grad():
    w = tg.Tensor([1.0], requires_grad=True, device="cpu")
    with pytest.raises(RuntimeError, match="leaf"):
        (w * 2.0).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(RuntimeError, match="requires_grad"):
        tg.Tensor([1.0]).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(TypeError, match="callable"):
        w.register_post_accumulate_grad_hook(3)


def test_end_of_backward_callback_runs_once_after_every_hook():
    a = tg.Tensor([1.0], requires_grad=True, device="cpu")
    b = tg.Tensor([2.0], requires_grad=True, device="cpu")
    events = []

    def hook(t):
        if not events or events[-1] == "end":  # the first hook of this backward
            hooks.queue_end_of_backward(lambda: events.append("end"))
        events.append("hook")

    a.register_post_accumulate_grad_hook(hook)
    b.register_post_accumulate_grad_hook(hook)
    (a * b).sum().backward()
    assert events == ["hook", "hook", "end"]
    assert not hooks.end_of_backward
    (a * b).sum().backward()
    assert events == ["hook", "hook", "end", "hook", "hook", "end"]


def test_removing_the_last_hook_restores_the_plain_backward_order():
    from tinygrad_gpu import hooks

    w = tg.Tensor([1.0, 2.0], device="cpu", requires_grad=True)
    handle = w.register_post_accumulate_grad_hook(lambda t: None)
    assert hooks.post_accumulate
    handle.remove()
    handle.remove()  # a second call does nothing
    assert not hooks.post_accumulate  # no empty entry keeps the reordering switched on
    w.register_post_accumulate_grad_hook(lambda t: None).remove()
    assert not hooks.post_accumulate
