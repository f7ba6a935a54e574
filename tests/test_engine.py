"""The engine: accumulation, shared nodes, no_grad, retain_graph, deep graphs, bad calls."""

import threading

import numpy as np
import pytest

import tinygrad_gpu as tg


def test_gradients_accumulate_until_cleared(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6, 6])
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3, 3])


def test_node_used_twice_gets_both_contributions(device):
    x = tg.Tensor([2.0, -1.0], device=device, requires_grad=True)
    y = x * x + x  # x feeds two ops; y = x^2 + x
    z = y * y      # y feeds one op twice
    z.sum().backward()
    xv = np.array([2.0, -1.0])
    np.testing.assert_allclose(x.grad.numpy(), 2 * (xv ** 2 + xv) * (2 * xv + 1), rtol=1e-6)


def test_no_grad_records_nothing_and_is_thread_local(device):
    x = tg.Tensor([1.0], device=device, requires_grad=True)
    seen = {}

    def other_thread():
        seen["enabled"] = tg.is_grad_enabled()
        seen["requires_grad"] = (x * 2).requires_grad

    with tg.no_grad():
        y = x * 2
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert not y.requires_grad and y.grad_fn is None
    assert seen == {"enabled": True, "requires_grad": True}
    assert tg.is_grad_enabled()


def test_no_grad_as_decorator(device):
    @tg.no_grad()
    def double(t):
        return t * 2

    assert not double(tg.Tensor([1.0], device=device, requires_grad=True)).requires_grad


def test_second_backward_needs_retain_graph(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    loss = (x.exp() * 2).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp([1.0, 2.0]), rtol=1e-6)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_saved_arrays_are_released_after_backward(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    y = x.exp()
    node = y.grad_fn
    y.sum().backward()
    assert node.released and not vars(node)


def test_deep_chain_has_no_recursion_limit(device):
    x = tg.Tensor([1.0], device=device, requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y + 1.0
    y.backward(tg.Tensor([1.0], device=device))
    assert x.grad.item() == 1.0


def test_backward_needs_a_scalar_or_a_gradient(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2).backward()
    (x * 2).backward(np.array([1.0, 10.0], np.float32))
    np.testing.assert_allclose(x.grad.numpy(), [2, 20])
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(3, np.float32))


def test_backward_without_requires_grad_raises(device):
    with pytest.raises(RuntimeError, match="does not require grad"):
        tg.Tensor([1.0], device=device).sum().backward()


def test_retain_grad_keeps_intermediate_gradients(device):
    x = tg.Tensor([1.0, -2.0], device=device, requires_grad=True)
    h = (x * 3).retain_grad()
    h.relu().sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), [1, 0])
    np.testing.assert_allclose(x.grad.numpy(), [3, 0])


def test_broadcast_gradients_are_summed_to_operand_shape(device):
    a = tg.Tensor(np.ones((3, 1)), device=device, requires_grad=True)
    b = tg.Tensor(np.arange(4.0), device=device, requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (4,)
    np.testing.assert_allclose(a.grad.numpy(), [[6], [6], [6]])
    np.testing.assert_allclose(b.grad.numpy(), [3, 3, 3, 3])


def test_detach_cuts_the_graph(device):
    x = tg.Tensor([1.0], device=device, requires_grad=True)
    y = (x * 2).detach()
    assert not y.requires_grad and y.is_leaf
    z = (x * y).sum()
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2])


def test_failed_op_leaves_operands_untouched(device):
    a = tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    b = tg.Tensor(np.ones((4,)), device=device, requires_grad=True)
    (a.sum() * 2).backward()
    before = a.grad.numpy()
    with pytest.raises(ValueError, match=r"add: cannot broadcast shapes \(2, 3\) and \(4,\)"):
        a + b
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4,\)"):
        a @ b
    np.testing.assert_array_equal(a.numpy(), np.ones((2, 3)))
    np.testing.assert_array_equal(a.grad.numpy(), before)
    assert b.grad is None


def test_cross_device_ops_name_both_devices():
    if not tg.cuda_available():
        pytest.skip("needs a GPU")
    a = tg.Tensor([1.0], device="cpu")
    b = tg.Tensor([1.0], device="cuda")
    with pytest.raises(RuntimeError, match="'cpu'.*'cuda'"):
        a + b


def test_to_device_is_differentiable(device):
    x = tg.Tensor([1.0, 2.0], device="cpu", requires_grad=True)
    y = x.to(device) * 2
    assert y.device == device
    y.sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), [2, 2])
