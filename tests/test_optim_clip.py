"""tg.nn.utils.clip_grad_norm_ / clip_grad_value_ against torch.nn.utils, in place and without host reads."""

import math

import numpy as np
import pytest

import tinygrad_gpu as tg

torch = pytest.importorskip("torch")
VALUES = [np.linspace(-2, 3, 12).reshape(3, 4), np.array([0.5, -7.0, 0.25]), np.array([[1e-3]])]


def with_gradients(device, scale=1.0, dtype=np.float64):
    ours = [tg.Tensor(v, device=device, dtype=dtype, requires_grad=True) for v in VALUES]
    theirs = [torch.tensor(v, requires_grad=True) for v in VALUES]
    for k, (p, q) in enumerate(zip(ours, theirs)):
        g = scale * (VALUES[k] + k)
        p.grad = tg.Tensor(g, device=device, dtype=dtype)
        q.grad = torch.tensor(g)
    return ours, theirs


@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0, 3.0])
@pytest.mark.parametrize("max_norm", [1e-9, 0.5, 5.0, 1e6])
def test_clip_grad_norm_matches_torch(device, norm_type, max_norm):
    ours, theirs = with_gradients(device)
    buffers = [p.grad.array for p in ours]
    total = tg.nn.utils.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total, tg.Tensor) and total.shape == () and total.device == device
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    for p, q, buffer in zip(ours, theirs, buffers):
        assert p.grad.array is buffer  # scaled in place
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-300)


def test_clip_grad_norm_reads_nothing_back(device, monkeypatch):
    ours, _ = with_gradients(device, dtype=np.float32)

    def no_host_read(*args):
        raise AssertionError("clip_grad_norm_ read a value back to the host")

    monkeypatch.setattr(tg.Tensor, "item", no_host_read)
    monkeypatch.setattr(tg.Tensor, "numpy", no_host_read)
    monkeypatch.setattr(tg.Tensor, "__float__", no_host_read, raising=False)
    total = tg.nn.utils.clip_grad_norm_(ours, 1.0)
    assert total.dtype == np.float32
    monkeypatch.undo()
    expected = math.sqrt(sum(float(((v + k) ** 2).sum()) for k, v in enumerate(VALUES)))
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_clip_grad_norm_skips_missing_gradients_and_checks_nonfinite(device):
    ours, theirs = with_gradients(device)
    ours[1].grad, theirs[1].grad = None, None
    total = tg.nn.utils.clip_grad_norm_(ours, 0.1)
    assert total.item() == pytest.approx(torch.nn.utils.clip_grad_norm_(theirs, 0.1).item(), rel=1e-12)
    assert ours[1].grad is None
    empty = tg.Tensor(np.zeros(2), device=device, requires_grad=True)
    assert tg.nn.utils.clip_grad_norm_([empty], 1.0).item() == 0.0
    ours[0].grad = tg.Tensor(np.full((3, 4), np.inf), device=device)
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is inf"):
        tg.nn.utils.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        tg.nn.utils.clip_grad_norm_(ours, "big")
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        tg.nn.utils.clip_grad_norm_(ours, 1.0, norm_type=0)


def test_clip_grad_norm_of_one_tensor_and_mixed_dtypes(device):
    p = tg.Tensor(np.ones(4), device=device, dtype=np.float32, requires_grad=True)
    q = tg.Tensor(np.ones(2), device=device, dtype=np.float64, requires_grad=True)
    p.grad = tg.Tensor(np.full(4, 3.0), device=device, dtype=np.float32)
    q.grad = tg.Tensor(np.full(2, 4.0), device=device, dtype=np.float64)
    total = tg.nn.utils.clip_grad_norm_([p, q], 1.0)
    assert total.dtype == np.float64 and total.item() == pytest.approx(math.sqrt(36 + 32))
    assert p.grad.dtype == np.float32
    np.testing.assert_allclose(p.grad.numpy(), 3.0 / math.sqrt(68), rtol=1e-6)
    alone = tg.Tensor(np.ones(2), device=device, requires_grad=True)
    alone.grad = tg.Tensor(np.array([3.0, 4.0]), device=device)
    assert tg.nn.utils.clip_grad_norm_(alone, 10.0).item() == pytest.approx(5.0)


def test_clip_grad_value_matches_torch(device):
    ours, theirs = with_gradients(device)
    buffers = [p.grad.array for p in ours]
    tg.nn.utils.clip_grad_value_(ours, 1.5)
    torch.nn.utils.clip_grad_value_(theirs, 1.5)
    for p, q, buffer in zip(ours, theirs, buffers):
        assert p.grad.array is buffer
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        tg.nn.utils.clip_grad_value_(ours, -1.0)


def test_clipping_inside_a_captured_step_matches_eager(device):
    results = []
    for use_jit in (False, True):
        tg.manual_seed(4)
        model = tg.nn.Linear(3, 2, device=device)
        opt = tg.optim.SGD(model.parameters(), lr=0.1)
        x = tg.Tensor(np.arange(15.0).reshape(5, 3), device=device)

        def raw(x, model=model, opt=opt):
            opt.zero_grad()
            loss = (model(x) ** 2).mean()
            loss.backward()
            norm = tg.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            return norm

        step = tg.jit(raw) if use_jit else raw
        norms = [step(x).item() for _ in range(5)]
        results.append((norms, [p.numpy() for p in model.parameters()]))
        if use_jit and device == "cuda":
            assert step.captured, step.reason
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
