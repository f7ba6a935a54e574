"""Misuse of the public API: a clear error of the class PyTorch or NumPy would raise, nothing changed."""

import numpy as np
import pytest

import tinygrad_gpu as tg
import tinygrad_gpu.nn.functional as F
from tinygrad_gpu import backend


# ---- NumPy subclasses: the device is what the array is --------------------------------------
def test_a_memmap_is_read_into_a_plain_array(tmp_path, device):
    np.save(tmp_path / "a.npy", np.arange(6.0).reshape(2, 3))
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    t = tg.Tensor(mapped, device=device, requires_grad=True)
    assert t.device == device and type(t.array) is not np.memmap
    (t * 2).sum().backward()
    np.testing.assert_array_equal(t.numpy(), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(t.grad.numpy(), np.full((2, 3), 2.0))


def test_a_memmap_on_the_default_device_is_not_taken_for_a_gpu_array(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPU_DEVICE", "cpu")
    np.save(tmp_path / "a.npy", np.ones(3, np.float32))
    t = tg.Tensor(np.load(tmp_path / "a.npy", mmap_mode="r"))
    assert t.device == "cpu" and type(t.array) is np.ndarray and t.array.flags.writeable
    assert (t + 1).numpy().tolist() == [2.0, 2.0, 2.0]


def test_a_read_only_array_is_copied_so_the_tensor_can_be_updated(device):
    source = np.ones(3, np.float32)
    source.flags.writeable = False
    for data in (source, np.broadcast_to(np.ones(3, np.float32), (2, 3))):
        w = tg.Tensor(data, device=device, requires_grad=True)
        opt = tg.optim.SGD([w], lr=0.5)
        (w * w).sum().backward()
        opt.step()
        np.testing.assert_array_equal(w.numpy(), np.zeros(data.shape))
        assert (data == 1).all()


def test_np_matrix_becomes_a_plain_two_dimensional_array(device):
    matrix = np.array([[1.0, 2.0], [3.0, 4.0]]).view(np.matrix)  # np.matrix() itself warns
    t = tg.Tensor(matrix, device=device)
    assert t.device == device and t.shape == (2, 2)
    assert t.sum(axis=0).shape == (2,)  # a matrix would have kept two dimensions
    if device == "cpu":
        assert type(t.array) is np.ndarray


def test_a_masked_array_is_refused(device):
    masked = np.ma.masked_array([1.0, 2.0], mask=[False, True])
    with pytest.raises(TypeError, match="masked array.*filled"):
        tg.Tensor(masked, device=device)
    assert tg.Tensor(masked.filled(0.0), device=device).tolist() == [1.0, 0.0]
    t = tg.Tensor(np.ones((2, 3)), device=device)
    labels = np.ma.masked_array([0, 1], mask=[False, True])
    with pytest.raises(TypeError, match="cannot index with a masked array"):
        t[labels]
    with pytest.raises(TypeError, match="class labels from a masked array"):
        F.cross_entropy(t, labels)


def test_device_of_names_what_it_does_not_know():
    assert backend.device_of(np.zeros(2)) == "cpu"
    assert backend.device_of(np.zeros(2).view(np.matrix)) == "cpu"
    with pytest.raises(TypeError, match="neither a NumPy nor a CuPy array"):
        backend.device_of([1.0, 2.0])


# ---- tensors from data ------------------------------------------------------------------------
def test_a_list_of_one_element_tensors_becomes_a_tensor_of_their_values(device):
    a = tg.Tensor(1.0, device=device, requires_grad=True)
    b = tg.Tensor([2.0], device=device)
    t = tg.Tensor([a, b, 3.0], device=device)
    assert t.tolist() == [1.0, 2.0, 3.0] and t.shape == (3,)
    assert not t.requires_grad and t.grad_fn is None  # values copied, no graph, as torch.tensor does
    assert tg.Tensor([[a], [b]], device=device).shape == (2, 1)
    with pytest.raises(ValueError, match="one-element tensors"):
        tg.Tensor([tg.Tensor([1.0, 2.0], device=device)], device=device)


# ---- axes, flags and shapes ------------------------------------------------------------------
def test_keepdims_must_be_a_bool(device):
    t = tg.Tensor(np.ones((2, 3)), device=device)
    for method in ("sum", "mean", "max", "logsumexp"):
        with pytest.raises(TypeError, match=f"{method}: keepdims must be True or False"):
            getattr(t, method)(axis=1, keepdims="no")
    assert t.sum(axis=1, keepdims=np.bool_(True)).shape == (2, 1)


def test_bools_are_not_axes(device):
    t = tg.Tensor(np.ones((2, 3)), device=device)
    for axis in (True, False, (0, True), [np.bool_(False)]):
        with pytest.raises(TypeError, match="axis"):
            t.sum(axis=axis)
    with pytest.raises(TypeError, match="axis"):
        t.softmax(True)
    for call in (lambda: t.unsqueeze(True), lambda: t.transpose(True, False),
                 lambda: tg.cat([t, t], axis=True), lambda: tg.stack([t, t], axis=True)):
        with pytest.raises(ValueError, match="axis|axes"):
            call()


def test_bools_are_not_sizes(device):
    for call in (lambda: tg.Tensor.zeros(True, 2, device=device), lambda: tg.Tensor.eye(True, device=device),
                 lambda: tg.Tensor(np.ones((1, 3)), device=device).expand(True, 3)):
        with pytest.raises(ValueError, match="non-negative integers"):
            call()
    assert tg.Tensor.eye(2, np.int32(3), device=device).shape == (2, 3)


def test_reshape_takes_only_minus_one_as_a_negative_size(device):
    t = tg.Tensor(np.arange(6.0), device=device)
    for shape in ((-2, 3), (-1, -1), (True, 6), (2.0, 3)):
        with pytest.raises(ValueError, match="reshape"):
            t.reshape(*shape)
    assert t.reshape(-1, 3).shape == (2, 3)


def test_cat_and_stack_refuse_a_single_tensor(device):
    t = tg.Tensor(np.ones((2, 2)), device=device)
    for join in (tg.cat, tg.stack):
        with pytest.raises(TypeError, match="expects a sequence"):
            join(t)
    assert tg.cat((t, t)).shape == (4, 2)


def test_requires_grad_takes_a_bool(device):
    t = tg.Tensor([1.0], device=device)
    for value in ("yes", 1, None):
        with pytest.raises(TypeError, match="requires_grad"):
            t.requires_grad_(value)
    assert not t.requires_grad
    assert t.requires_grad_().requires_grad
    with pytest.raises(TypeError, match="Tensor: requires_grad"):
        tg.Tensor([1.0], device=device, requires_grad="no")  # bool("no") is True


# ---- settings ---------------------------------------------------------------------------------
def test_gradcheck_validates_its_tolerances(device):
    x = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    for name, value, error in (("eps", 0, ValueError), ("eps", -1e-6, ValueError),
                               ("eps", float("nan"), ValueError), ("atol", -1.0, ValueError),
                               ("rtol", float("inf"), ValueError), ("atol", "1e-5", TypeError),
                               ("eps", None, TypeError), ("rtol", 10**400, ValueError)):
        with pytest.raises(error, match=f"gradcheck: {name}"):
            tg.gradcheck(lambda v: v * v, [x], **{name: value})
    assert x.grad is None  # validated before anything ran
    assert tg.gradcheck(lambda v: v * v, [x], atol=0.0, rtol=1e-3)


def test_constant_refuses_what_is_not_a_number(device):
    w = tg.Tensor([1.0, 2.0], device=device)
    for value in (None, "1", [1.0]):
        with pytest.raises(TypeError, match="constant_: value"):
            tg.nn.init.constant_(w, value)
    assert w.tolist() == [1.0, 2.0]
    assert tg.nn.init.constant_(w, 3).tolist() == [3.0, 3.0]


def test_manual_seed_takes_integers_as_pytorch_does():
    for seed in ("a", 1.5, None, True):
        with pytest.raises(TypeError, match="manual_seed"):
            tg.manual_seed(seed)
    for seed in (-2**63 - 1, 2**64):
        with pytest.raises(ValueError, match="manual_seed"):
            tg.manual_seed(seed)
    tg.manual_seed(-1)  # a negative seed is its 64-bit two's complement
    first = tg.Tensor.randn(3, device="cpu").tolist()
    tg.manual_seed(2**64 - 1)
    assert tg.Tensor.randn(3, device="cpu").tolist() == first
    tg.manual_seed(np.int64(5))


def test_optimizer_load_state_dict_refuses_a_state_that_is_not_a_dict(device):
    w = tg.Tensor([1.0], device=device, requires_grad=True)
    opt = tg.optim.SGD([w], lr=0.5, momentum=0.9)
    state = opt.state_dict()
    for bad in ([], None, "state"):
        with pytest.raises(ValueError, match="'state' to be a dict"):
            opt.load_state_dict({"state": bad, "param_groups": state["param_groups"]})
    assert opt.lr == 0.5


# ---- no_grad as decorator, with and without parentheses ---------------------------------------
def test_no_grad_decorates_with_or_without_parentheses(device):
    x = tg.Tensor([1.0], device=device, requires_grad=True)

    @tg.no_grad
    def bare(v):
        return v * 2

    @tg.no_grad()
    def called(v):
        return v * 2

    assert not bare(x).requires_grad and not called(x).requires_grad and bare.__name__ == "bare"
    with tg.no_grad():
        assert not (x * 2).requires_grad
    assert (x * 2).requires_grad and tg.is_grad_enabled()

    @tg.detect_anomaly
    def checked():
        return tg.is_anomaly_enabled()

    assert checked() and not tg.is_anomaly_enabled()
    with tg.detect_anomaly(False):
        assert not tg.is_anomaly_enabled()


# ---- empty batches ----------------------------------------------------------------------------
def test_cross_entropy_of_an_empty_batch_matches_pytorch(device):
    torch = pytest.importorskip("torch")
    logits = tg.Tensor(np.zeros((0, 3)), device=device, requires_grad=True)
    labels = np.zeros(0, np.int64)
    for reduction in ("mean", "sum", "none"):
        got = F.cross_entropy(logits, labels, reduction=reduction)
        want = torch.nn.functional.cross_entropy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long),
                                                 reduction=reduction)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    F.cross_entropy(logits, labels).backward()
    assert logits.grad.shape == (0, 3)


def test_mean_over_nothing_is_nan_and_max_over_a_non_empty_axis_works(device):
    t = tg.Tensor(np.zeros((2, 0)), device=device)
    assert np.isnan(t.mean().item())
    assert np.isnan(t.mean(axis=1).numpy()).all() and t.mean(axis=1).shape == (2,)
    assert tg.Tensor(np.zeros((0, 3)), device=device).max(axis=1).shape == (0,)
    with pytest.raises(ValueError, match="max over an empty axis"):
        t.max(axis=1)
    fused = tg.fuse(lambda a, b: ((a - b) ** 2).mean())  # a NaN constant inside a fused chain
    assert np.isnan(fused(t, t).item())
