"""Modules, the MSE loss and the optimizer."""

import numpy as np
import pytest

import tinygrad_gpu as tg


def xor_model(device):
    return tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.ReLU(),
                            tg.nn.Linear(4, 1, device=device), tg.nn.Sigmoid())


def test_linear_shapes_and_initialisation(device):
    layer = tg.nn.Linear(16, 3, device=device)
    assert layer.weight.shape == (3, 16) and layer.bias.shape == (3,)
    bound = 1 / np.sqrt(16)
    for p in (layer.weight, layer.bias):
        values = p.numpy()
        assert p.requires_grad and np.all(np.abs(values) <= bound) and values.std() > 0
    x = tg.Tensor(np.random.default_rng(0).standard_normal((5, 16)), device=device)
    expected = x.numpy() @ layer.weight.numpy().T + layer.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5)
    assert tg.nn.Linear(4, 2, bias=False).bias is None


def test_linear_gradients(device):
    layer = tg.nn.Linear(3, 2, device=device, dtype=np.float64)
    x = tg.Tensor(np.random.default_rng(1).standard_normal((4, 3)), device=device, requires_grad=True)
    assert tg.gradcheck(lambda x, w, b: (x @ w.T + b).tanh(), [x, layer.weight, layer.bias])


def test_linear_rejects_wrong_input_width(device):
    with pytest.raises(ValueError, match=r"Linear\(2, 4\).*last dimension is 2.*\(4, 3\)"):
        tg.nn.Linear(2, 4, device=device)(tg.Tensor(np.ones((4, 3)), device=device))


def test_parameters_are_recursive_and_ordered(device):
    model = xor_model(device)
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p.shape for p in model.parameters()] == [(4, 2), (4,), (1, 4), (1,)]
    assert sum(p.size for p in model.parameters()) == 17


def test_state_dict_round_trip_and_validation(device):
    model, other = xor_model(device), xor_model(device)
    other.load_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
    for (_, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    before = [p.numpy() for p in other.parameters()]
    bad = {k: v.numpy() for k, v in model.state_dict().items()}
    bad["2.weight"] = np.zeros((4, 1), np.float32)
    bad["0.bias"] = np.full(4, 7, np.float32)
    with pytest.raises(ValueError, match=r"2.weight.*\(4, 1\).*\(1, 4\)"):
        other.load_state_dict(bad)
    for p, old in zip(other.parameters(), before):  # nothing changed, not even 0.bias
        np.testing.assert_array_equal(p.numpy(), old)
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"0.weight": before[0]})


def test_zero_grad_and_module_to(device):
    model = tg.nn.Sequential(tg.nn.Linear(2, 3))
    tg.nn.MSELoss()(model(tg.Tensor(np.ones((1, 2)))), tg.Tensor(np.zeros((1, 3)))).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    params = model.parameters()
    assert model.to(device) is model
    assert all(p.device == device for p in model.parameters()) and model.parameters() == params


def test_mse_loss_value_gradient_and_shape_check(device):
    pred = tg.Tensor([[0.5], [0.2]], device=device, dtype=np.float64, requires_grad=True)
    target = tg.Tensor([[1.0], [0.0]], device=device, dtype=np.float64)
    loss = tg.nn.MSELoss()(pred, target)
    assert loss.item() == pytest.approx((0.25 + 0.04) / 2)
    assert tg.nn.functional.mse_loss(pred, target, reduction="sum").item() == pytest.approx(0.29)
    assert tg.gradcheck(lambda p: tg.nn.functional.mse_loss(p, target), [pred])
    with pytest.raises(ValueError, match=r"mse_loss: input shape \(2, 1\) and target shape \(2,\)"):
        tg.nn.MSELoss()(pred, tg.Tensor([1.0, 0.0], device=device))


def test_sgd_step_matches_the_update_rule_in_place(device):
    p = tg.Tensor([1.0, -2.0], device=device, requires_grad=True)
    storage = p.array
    opt = tg.optim.SGD([p], lr=0.1, weight_decay=0.01)
    (p * p).sum().backward()
    opt.step()
    assert p.array is storage
    old = np.array([1.0, -2.0])
    np.testing.assert_allclose(p.numpy(), old - 0.1 * (2 * old + 0.01 * old), rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_follows_pytorch_rule(device, nesterov):
    p = tg.Tensor([1.0, -2.0, 0.5], device=device, dtype=np.float64, requires_grad=True)
    opt = tg.optim.SGD([p], lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    ref, buf = np.array([1.0, -2.0, 0.5]), None
    for _ in range(5):
        opt.zero_grad()
        (p ** 4).sum().backward()
        opt.step()
        g = 4 * ref ** 3 + 0.1 * ref
        buf = g if buf is None else 0.9 * buf + g
        ref = ref - 0.05 * (g + 0.9 * buf if nesterov else buf)
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-12)


def test_optimizer_validates_its_arguments(device):
    with pytest.raises(ValueError, match="empty"):
        tg.optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="requires_grad"):
        tg.optim.SGD([tg.Tensor([1.0])], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        tg.optim.SGD([tg.Tensor([1.0], requires_grad=True)], lr=-1)


def test_xor_learns_with_the_readme_loop(device):
    tg.manual_seed(0)
    x = tg.Tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)
    y = tg.Tensor([[0], [1], [1], [0]], device=device)
    model = tg.nn.Sequential(tg.nn.Linear(2, 8, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(8, 1, device=device), tg.nn.Sigmoid())
    opt = tg.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loss_fn = tg.nn.MSELoss()
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.01


def test_weight_gradients_are_contiguous(device):
    layer = tg.nn.Linear(3, 5, device=device)
    x = tg.Tensor(np.random.default_rng(0).standard_normal((4, 3)), device=device, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad.array.flags.c_contiguous
    np.testing.assert_allclose(layer.weight.grad.numpy(), np.ones((5, 4)) @ x.numpy(), rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), np.ones((4, 5)) @ layer.weight.numpy(), rtol=1e-5)
