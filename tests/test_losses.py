"""Classification losses: cross-entropy, NLL, binary cross-entropy (on probabilities and on logits)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpu as tg

F = tg.nn.functional

try:
    import torch
except ImportError:  # PyTorch is an optional oracle
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def leaf(array, device):
    return tg.Tensor(array, device=device, dtype=np.float64, requires_grad=True)


def reference_cross_entropy(logits, labels, reduction="mean"):
    """-log softmax(logits)[label], class axis 1, written out in NumPy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = -np.take_along_axis(log_p, np.expand_dims(labels, 1), axis=1).squeeze(1)
    return {"mean": picked.mean(), "sum": picked.sum(), "none": picked}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data())
def test_cross_entropy_matches_numpy_and_finite_differences(device, reduction, data):
    n, c = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 5))
    logits = data.draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-5, 5)))
    labels = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    got = F.cross_entropy(leaf(logits, device), labels, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), reference_cross_entropy(logits, labels, reduction), rtol=1e-10)
    assert tg.gradcheck(lambda x: F.cross_entropy(x, labels, reduction=reduction), [leaf(logits, device)])


def test_cross_entropy_accepts_lists_arrays_and_tensors_of_labels(device):
    logits = np.random.default_rng(0).standard_normal((4, 3))
    expected = reference_cross_entropy(logits, np.array([0, 2, 1, 2]))
    for labels in ([0, 2, 1, 2], np.array([0, 2, 1, 2], np.int32), tg.Tensor([0, 2, 1, 2], device=device),
                   tg.Tensor([0, 2, 1, 2], device="cpu")):
        loss = tg.nn.CrossEntropyLoss()(leaf(logits, device), labels)
        assert loss.shape == () and loss.item() == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_with_extra_dimensions_and_unbatched_input(device):
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((2, 3, 4)), rng.integers(0, 3, (2, 4))
    flat_logits = logits.transpose(0, 2, 1).reshape(-1, 3)
    expected = reference_cross_entropy(flat_logits, labels.reshape(-1), "none").reshape(2, 4)
    got = F.cross_entropy(leaf(logits, device), labels, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert tg.gradcheck(lambda x: F.cross_entropy(x, labels), [leaf(logits, device)])
    vector = logits[0, :, 0]  # one unbatched sample: classes on axis 0, a scalar label
    single = F.cross_entropy(leaf(vector, device), 2)
    assert single.shape == ()
    assert single.item() == pytest.approx(reference_cross_entropy(vector[None], np.array([2])), rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits(device):
    logits = tg.Tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], device=device, requires_grad=True)
    loss = F.cross_entropy(logits, [1, 2], reduction="none")
    np.testing.assert_allclose(loss.numpy(), [1e4, np.log(3)], rtol=1e-6)
    loss.sum().backward()
    expected_grad = [[1, -1, 0], [1 / 3, 1 / 3, -2 / 3]]
    np.testing.assert_allclose(logits.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("labels,error,message", [
    ([0, 3], IndexError, "class label 3 is out of range for 3 classes"),
    ([0, -1], IndexError, "class label -1 is out of range"),
    ([0.5, 1.0], TypeError, "class labels must be integers, got dtype float64"),
    ([0, 1, 2], ValueError, r"target shape \(3,\) does not match the expected \(2,\)"),
])
def test_cross_entropy_rejects_bad_labels_naming_shapes(device, labels, error, message):
    logits = tg.Tensor(np.zeros((2, 3)), device=device)
    with pytest.raises(error, match=message):
        F.cross_entropy(logits, labels)
    with pytest.raises(TypeError, match="whole numbers"):  # device labels: raised at the next read
        F.cross_entropy(logits, tg.Tensor([0.5, 1.0], device=device)).item()
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(logits, [0, 1], reduction="avg")


def test_nll_loss_on_log_softmax_equals_cross_entropy(device):
    logits = leaf(np.random.default_rng(2).standard_normal((5, 4)), device)
    labels = [3, 0, 0, 1, 2]
    assert F.nll_loss(logits.log_softmax(axis=1), labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-12)


@needs_torch
def test_cross_entropy_matches_pytorch(device):
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    x = leaf(logits, device)
    F.cross_entropy(x, labels).backward()
    xt = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(xt, torch.tensor(labels))
    loss.backward()
    assert F.cross_entropy(leaf(logits, device), labels).item() == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-10)


# ---- binary cross-entropy ------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy(device, reduction):
    rng = np.random.default_rng(4)
    p, t = rng.uniform(0.05, 0.95, (3, 4)), rng.uniform(0, 1, (3, 4))
    values = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    expected = {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]
    got = F.binary_cross_entropy(leaf(p, device), t, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert tg.gradcheck(lambda x, y: F.binary_cross_entropy(x, y, reduction=reduction),
                        [leaf(p, device), leaf(t, device)])
    assert tg.nn.BCELoss(reduction)(leaf(p, device), leaf(t, device)).shape == np.shape(expected)


def test_binary_cross_entropy_clamps_its_logs_at_minus_100(device):
    p = tg.Tensor([0.0, 1.0, 0.0, 1.0], device=device, requires_grad=True)
    loss = F.binary_cross_entropy(p, [1.0, 0.0, 0.0, 1.0], reduction="none")
    np.testing.assert_array_equal(loss.numpy(), [100.0, 100.0, 0.0, 0.0])
    loss.sum().backward()
    assert np.all(np.isfinite(p.grad.numpy()))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_with_logits(device, reduction):
    rng = np.random.default_rng(5)
    x, t = rng.uniform(-6, 6, (4, 3)), rng.uniform(0, 1, (4, 3))
    x[0, 0] = 0.0  # the stable form has no kink at 0
    sigmoid = 1 / (1 + np.exp(-x))
    values = -(t * np.log(sigmoid) + (1 - t) * np.log(1 - sigmoid))
    expected = {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]
    got = tg.nn.BCEWithLogitsLoss(reduction=reduction)(leaf(x, device), t)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert tg.gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
                        [leaf(x, device), leaf(t, device)])


def test_binary_cross_entropy_with_logits_is_stable_for_huge_logits(device):
    x = tg.Tensor([1000.0, -1000.0, 1000.0, -1000.0], device=device, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(x, [1.0, 0.0, 0.0, 1.0], reduction="none")
    np.testing.assert_array_equal(loss.numpy(), [0.0, 0.0, 1000.0, 1000.0])
    loss.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 1.0, -1.0])


def test_binary_losses_check_shapes(device):
    p = tg.Tensor([[0.5], [0.5]], device=device)
    for fn in (F.binary_cross_entropy, F.binary_cross_entropy_with_logits):
        with pytest.raises(ValueError, match=r"input shape \(2, 1\) and target shape \(2,\) differ"):
            fn(p, [1.0, 0.0])


@needs_torch
def test_binary_losses_match_pytorch(device):
    rng = np.random.default_rng(6)
    x, t = rng.standard_normal((5, 2)) * 3, rng.uniform(0, 1, (5, 2))
    ours = leaf(x, device)
    theirs = torch.tensor(x, requires_grad=True)
    (F.binary_cross_entropy_with_logits(ours, t) + F.binary_cross_entropy(ours.sigmoid(), t)).backward()
    tt = torch.tensor(t)
    (torch.nn.functional.binary_cross_entropy_with_logits(theirs, tt)
     + torch.nn.functional.binary_cross_entropy(theirs.sigmoid(), tt)).backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-10)
