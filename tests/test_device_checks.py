"""Device-side checks: bad labels and indices on the device raise at the next host read, not at once.

`device_checks.DEFER_ON_CPU` sends NumPy arrays down the device path, so the deferred logic runs here
on the CPU exactly as it runs with CuPy arrays on the GPU.
"""

import numpy as np
import pytest

import tinygrad_gpu as tg
import tinygrad_gpu.nn.functional as F
from tinygrad_gpu import device_checks


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    """Tensors made without a device go to the CPU here, also where the suite runs on the GPU."""
    monkeypatch.setenv("TINYGRAD_GPU_DEVICE", "cpu")


@pytest.fixture
def deferred(monkeypatch):
    """Device-resident checks defer on the CPU too; nothing pending leaks into other tests."""
    monkeypatch.setattr(device_checks, "DEFER_ON_CPU", True)
    yield
    try:
        device_checks.raise_pending()
    except (IndexError, TypeError):
        pass


def test_bad_label_is_raised_at_the_next_read_naming_loss_and_value(deferred, device):
    logits = tg.Tensor(np.zeros((3, 4)), device=device, requires_grad=True)
    labels = tg.tensor([1, 7, 9], device=device)
    loss = F.cross_entropy(logits, labels)  # no error yet: nothing was read back
    loss.backward()
    message = r"nll_loss \(input shape \(3, 4\).*class label 7 is out of range for 4 classes"
    with pytest.raises(IndexError, match=message):
        loss.item()
    assert np.isfinite(loss.item())  # raised once: the buffer is clear again


@pytest.mark.parametrize("read", [
    lambda t: t.numpy(), lambda t: t.tolist(), lambda t: float(t), lambda t: bool(t), repr,
    lambda t: tg.synchronize(),
])
def test_every_host_read_raises_the_pending_error(deferred, device, read):
    logits = tg.Tensor(np.zeros((2, 3)), device=device)
    loss = F.nll_loss(logits, tg.Tensor(np.array([-1, 0]), device=device))
    with pytest.raises(IndexError, match="nll_loss.*class label -1 is out of range for 3 classes"):
        read(loss)


def test_save_and_load_raise_the_pending_error(deferred, tmp_path):
    logits = tg.Tensor(np.zeros((2, 3)))
    F.cross_entropy(logits, tg.Tensor(np.array([0, 3])))
    with pytest.raises(IndexError, match="class label 3"):
        tg.save({"w": logits}, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()
    tg.save({"w": logits}, tmp_path / "c.npz")
    F.cross_entropy(logits, tg.Tensor(np.array([0, 3])))
    with pytest.raises(IndexError, match="class label 3"):
        tg.load(tmp_path / "c.npz")


def test_the_first_bad_value_is_kept(deferred):
    logits = tg.Tensor(np.zeros((2, 3)))
    F.cross_entropy(logits, tg.Tensor(np.array([0, 5])))
    F.cross_entropy(logits, tg.Tensor(np.array([8, 0])))
    with pytest.raises(IndexError, match="class label 5"):
        tg.synchronize()
    tg.synchronize()  # nothing left


def test_non_whole_float_labels_are_a_type_error(deferred):
    logits = tg.Tensor(np.zeros((2, 3)))
    loss = F.cross_entropy(logits, tg.Tensor(np.array([0.5, 1.0])))
    with pytest.raises(TypeError, match=r"class labels must be whole numbers, got values such as 0\.5"):
        loss.item()
    loss = F.cross_entropy(logits, tg.Tensor(np.array([np.nan, 1.0])))
    with pytest.raises(TypeError, match="whole numbers, got values such as nan"):
        loss.item()


def test_ignore_index_does_not_read_and_still_counts_right(deferred):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 4))
    labels = np.array([0, -100, 3, -100, 1])
    deferred_loss = F.cross_entropy(tg.Tensor(values), tg.Tensor(labels), label_smoothing=0.1).item()
    device_checks.DEFER_ON_CPU = False
    immediate_loss = F.cross_entropy(tg.Tensor(values), tg.Tensor(labels), label_smoothing=0.1).item()
    assert deferred_loss == pytest.approx(immediate_loss, rel=1e-12)
    device_checks.DEFER_ON_CPU = True
    bad = F.cross_entropy(tg.Tensor(values), tg.Tensor(np.array([0, -100, 4, -100, 1])))
    with pytest.raises(IndexError, match="class label 4"):
        bad.item()


def test_out_of_range_index_tensor_is_raised_later(deferred, device):
    x = tg.Tensor(np.arange(6.0).reshape(3, 2), device=device)
    picked = x[tg.tensor([0, 5], device=device)]
    with pytest.raises(IndexError, match=r"index 5 is out of range for axis 0 of size 3"):
        picked.numpy()
    picked = x[:, tg.tensor([-3], device=device)]
    with pytest.raises(IndexError, match=r"index -3 is out of range for axis 1 of size 2"):
        picked.numpy()
    np.testing.assert_array_equal(x[tg.tensor([-1], device=device)].numpy(), [[4.0, 5.0]])


def test_host_checks_stay_immediate(device):
    logits = tg.Tensor(np.zeros((2, 3)), device=device)
    with pytest.raises(IndexError, match="class label 3 is out of range for 3 classes"):
        F.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(IndexError, match="class label 3"):
        F.cross_entropy(logits, tg.Tensor(np.array([0, 3])))  # a CPU tensor is read for free
