"""bool / int32 / int64 tensors, casts, promotion, and PyTorch's spellings (dim=, view, factories, ...)."""

import numpy as np
import pytest

import tinygrad_gpu as tg


def test_dtype_names_and_aliases():
    assert tg.float32 == np.float32 and tg.float64 == np.float64 and tg.int32 == np.int32
    assert tg.int64 == np.int64 and tg.bool == np.bool_
    assert tg.long == tg.int64 and tg.float == tg.float32 and tg.double == tg.float64 and tg.int == tg.int32


def test_tensor_infers_dtypes_as_torch_tensor_does(device):
    assert tg.tensor([1, 2], device=device).dtype == tg.int64
    assert tg.tensor([True, False], device=device).dtype == tg.bool
    assert tg.tensor([1.5, 2], device=device).dtype == tg.float32
    assert tg.tensor(3, device=device).shape == ()
    for dtype in (np.int32, np.int64, np.bool_, np.float64):
        array = np.zeros(3, dtype)
        made = tg.tensor(array, device=device)
        assert made.dtype == dtype and made.device == device
    source = np.arange(3)
    copy = tg.tensor(source, device="cpu")
    source[0] = 7
    assert copy.tolist() == [0, 1, 2]  # a copy, as torch.tensor makes
    assert tg.tensor([1, 2], dtype=tg.float64, device=device).dtype == tg.float64


def test_Tensor_keeps_making_float32_from_python_data_and_integer_arrays(device):
    assert tg.Tensor([1, 2], device=device).dtype == tg.float32
    assert tg.Tensor(np.arange(3), device=device).dtype == tg.float32
    assert tg.Tensor(np.array([True]), device=device).dtype == tg.float32
    assert tg.Tensor([1, 2], dtype=tg.int32, device=device).dtype == tg.int32
    assert tg.Tensor([1], device=device).is_floating_point() and not tg.tensor([1]).is_floating_point()


def test_only_float_tensors_can_require_grad(device):
    for make in (lambda: tg.tensor([1, 2], requires_grad=True, device=device),
                 lambda: tg.Tensor([1, 2], dtype=tg.int64, requires_grad=True, device=device),
                 lambda: tg.zeros(2, dtype=tg.bool, requires_grad=True, device=device),
                 lambda: tg.arange(3, requires_grad=True, device=device),
                 lambda: tg.tensor([1, 2], device=device).requires_grad_()):
        with pytest.raises(RuntimeError, match="only floating-point tensors can require gradients"):
            make()


def test_casts_and_their_gradients(device):
    x = tg.Tensor([1.7, -2.5], device=device, requires_grad=True)
    assert x.long().tolist() == [1, -2] and x.long().dtype == tg.int64 and not x.long().requires_grad
    assert x.int().dtype == tg.int32 and x.bool().tolist() == [True, True]
    assert x.float() is x and x.to(tg.float32) is x
    wide = x.double()
    assert wide.dtype == tg.float64 and wide.requires_grad
    (wide * wide).sum().backward()
    assert x.grad.dtype == tg.float32
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy(), rtol=1e-6)
    assert x.to(device, tg.float64).dtype == tg.float64
    assert x.to(dtype=tg.int64, device=device).tolist() == [1, -2]
    assert tg.tensor([0, 3], device=device).to(tg.bool).tolist() == [False, True]
    with pytest.raises(TypeError, match="to: dtype float16 is not supported"):
        x.to(np.float16)


def test_integer_arithmetic_stays_integer_where_torch_does(device):
    torch = pytest.importorskip("torch")
    a_values, b_values = [5, -3, 7], [2, 4, -2]
    a, b = tg.tensor(a_values, device=device), tg.tensor(b_values, device=device)
    ta, tb = torch.tensor(a_values), torch.tensor(b_values)
    small = tg.tensor(np.array(b_values, np.int32), device=device)
    cases = [(a + b, ta + tb), (a - b, ta - tb), (a * b, ta * tb), (a / b, ta / tb), (a + 1, ta + 1),
             (2 * a, 2 * ta), (a + 0.5, ta + 0.5), (a * 1.5, ta * 1.5), (-a, -ta),
             (a + small, ta + torch.tensor(b_values, dtype=torch.int32)),
             (small * 2, torch.tensor(b_values, dtype=torch.int32) * 2),
             (a + tg.Tensor([0.5, 0.5, 0.5], device=device), ta + torch.tensor([0.5, 0.5, 0.5])),
             (a * tg.tensor([1.0, 2.0, 3.0], dtype=tg.float64, device=device),
              ta * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)),
             (tg.tensor([True, False], device=device) + 1, torch.tensor([True, False]) + 1),
             (a.exp(), ta.exp()), (a ** 2, ta ** 2), (a ** 0, ta ** 0), (a ** 0.5, ta ** 0.5),
             (small ** 3, torch.tensor(b_values, dtype=torch.int32) ** 3),
             (tg.tensor([True, False], device=device) ** 2, torch.tensor([True, False]) ** 2)]
    for ours, theirs in cases:
        assert str(ours.dtype) == str(theirs.dtype).replace("torch.", ""), (ours, theirs)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_mixing_int_and_float_keeps_the_float_gradient(device):
    w = tg.Tensor([1.0, 2.0], device=device, requires_grad=True)
    counts = tg.tensor([3, 4], device=device)
    (w * counts).sum().backward()
    assert w.grad.dtype == tg.float32 and w.grad.tolist() == [3.0, 4.0]


def test_logical_and_bitwise_ops(device):
    p, q = tg.tensor([True, True, False], device=device), tg.tensor([True, False, False], device=device)
    assert (p & q).tolist() == [True, False, False] and (p | q).tolist() == [True, True, False]
    assert (p ^ q).tolist() == [False, True, False] and (~p).tolist() == [False, False, True]
    assert (p & q).dtype == tg.bool and (True & q).tolist() == [True, False, False]
    x = tg.Tensor([0.0, 2.0, -1.0], device=device)
    assert x.logical_and(p).tolist() == [False, True, False]
    assert tg.logical_or(x, q).tolist() == [True, True, True]
    assert x.logical_xor(q).tolist() == [True, True, True]
    assert tg.logical_not(x).tolist() == [True, False, False]
    i = tg.tensor([6, 5], device=device)
    assert (i & 3).tolist() == [2, 1] and (i | 1).tolist() == [7, 5] and (i ^ i).tolist() == [0, 0]
    assert (~i).tolist() == [-7, -6] and (i & 3).dtype == tg.int64
    with pytest.raises(TypeError, match="needs bool or integer tensors, got dtype float32"):
        _ = x & p
    with pytest.raises(TypeError, match="~ needs a bool or integer tensor"):
        _ = ~x
    with pytest.raises(TypeError, match="subtraction .* of bool tensors"):
        _ = p - q


def test_where_takes_bool_conditions_and_keeps_integer_values(device):
    x = tg.Tensor([-2.0, 0.5, 3.0], device=device, requires_grad=True)
    y = tg.where(x > 0, x, 0.1 * x)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.1, 1.0, 1.0], rtol=1e-6)
    picked = tg.where(x > 0, tg.tensor([1, 2, 3], device=device), 0)
    assert picked.dtype == tg.int64 and picked.tolist() == [0, 2, 3]


def test_sums_of_bool_and_int_tensors_are_int64(device):
    x = tg.Tensor([[-1.0, 2.0], [3.0, 4.0]], device=device)
    count = (x > 0).sum()
    assert count.dtype == tg.int64 and count.item() == 3 and not count.requires_grad
    assert (x > 0).sum(dim=1).tolist() == [1, 2]
    assert tg.tensor(np.array([2, 3], np.int32), device=device).sum().dtype == tg.int64
    with pytest.raises(TypeError, match="mean of a int64 tensor"):
        tg.tensor([1, 2], device=device).mean()


def test_repr_shows_the_dtype(device):
    assert "dtype=int64" in repr(tg.tensor([1], device=device))
    assert "dtype=bool" in repr(tg.tensor([True], device=device))


# ---- spellings -----------------------------------------------------------------------------
def test_dim_and_keepdim_are_accepted_wherever_axis_and_keepdims_are(device):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    x, t = tg.Tensor(values, device=device), torch.tensor(values)
    pairs = [(x.sum(dim=1, keepdim=True), t.sum(dim=1, keepdim=True)),
             (x.mean(dim=(0, 2)), t.mean(dim=(0, 2))), (x.max(dim=2).values, t.max(dim=2).values),
             (x.min(dim=0, keepdim=True)[0], t.min(0, keepdim=True)[0]),
             (x.logsumexp(dim=1, keepdim=True), t.logsumexp(dim=1, keepdim=True)),
             (x.softmax(dim=0), t.softmax(dim=0)), (x.log_softmax(1), t.log_softmax(1)),
             (x[:, :1].squeeze(dim=1), t[:, :1].squeeze(dim=1)), (x.argmax(dim=1), t.argmax(dim=1)),
             (tg.cat([x, x], dim=2), torch.cat([t, t], dim=2)),
             (tg.stack([x, x], dim=1), torch.stack([t, t], dim=1)),
             (x.var(dim=1, keepdim=True), t.var(dim=1, keepdim=True)), (x.std(1), t.std(1)),
             (x.var(), t.var()), (x.std(dim=(0, 2), unbiased=False), t.std(dim=(0, 2), unbiased=False)),
             (x.var(2, correction=0), t.var(2, correction=0)),
             (x.var(axis=0, keepdims=True), t.var(0, keepdim=True)),
             (x.softmax(axis=1), t.softmax(1)), (x.sum(axis=0, keepdims=True), t.sum(0, keepdim=True))]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="sum: give dim or axis, not both"):
        x.sum(axis=0, dim=0)


def test_var_and_std_are_differentiable_compositions(device):
    torch = pytest.importorskip("torch")
    values = np.array([[1.0, 2.0, 4.0], [0.5, -1.0, 3.0]])
    x, t = tg.Tensor(values, device=device, requires_grad=True), torch.tensor(values, requires_grad=True)
    x.std(dim=1).sum().backward()
    t.std(dim=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)
    assert x.grad_fn is None and tg.gradcheck(lambda a: a.var(0, correction=0), [x])


def test_view_permute_size_numel(device):
    x = tg.Tensor(np.arange(24.0).reshape(2, 3, 4), device=device)
    assert x.view(6, 4).shape == (6, 4) and x.view(-1).shape == (24,) and x.view((4, 6)).shape == (4, 6)
    assert x.permute(2, 0, 1).shape == (4, 2, 3) and x.permute((1, 0, 2)).numpy()[2, 1, 3] == 23.0
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(dim=-1) == 4
    assert x.size == 24 and x.numel() == 24  # NumPy's t.size keeps working
    with pytest.raises(IndexError, match="dimension 3 is out of range"):
        x.size(3)


def test_pow_with_a_tensor_exponent_and_rpow_match_torch(device):
    torch = pytest.importorskip("torch")
    base, exponent = np.array([0.5, 2.0, 0.0, 3.0]), np.array([2.0, 0.5, 3.0, -1.0])
    x = tg.Tensor(base, device=device, requires_grad=True)
    p = tg.Tensor(exponent, device=device, requires_grad=True)
    tx, tp = torch.tensor(base, requires_grad=True), torch.tensor(exponent, requires_grad=True)
    ours, theirs = x ** p + x.pow(2.0) + 2 ** p, tx ** tp + tx.pow(2.0) + 2 ** tp
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy())
    ours.sum().backward()
    theirs.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy())
    np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy())
    assert (2 ** tg.tensor([1, 3], device=device)).tolist() == [2.0, 8.0]


def test_module_level_factories_follow_torch_signatures(device):
    torch = pytest.importorskip("torch")
    pairs = [(tg.zeros(2, 3, device=device), torch.zeros(2, 3)),
             (tg.ones((2,), dtype=tg.int64, device=device), torch.ones((2,), dtype=torch.int64)),
             (tg.full((2, 2), 7, device=device), torch.full((2, 2), 7)),
             (tg.full((2,), 1.5, device=device), torch.full((2,), 1.5)),
             (tg.full((1,), True, device=device), torch.full((1,), True)),
             (tg.arange(5, device=device), torch.arange(5)), (tg.arange(1, 2, 0.25, device=device),
                                                            torch.arange(1, 2, 0.25)),
             (tg.arange(10, 0, -3, device=device), torch.arange(10, 0, -3)),
             (tg.linspace(0, 1, 5, device=device), torch.linspace(0, 1, 5)),
             (tg.zeros_like(tg.tensor([1, 2], device=device)), torch.zeros_like(torch.tensor([1, 2]))),
             (tg.ones_like(tg.Tensor([1.0], device=device), dtype=tg.float64),
              torch.ones_like(torch.tensor([1.0]), dtype=torch.float64)),
             (tg.full_like(tg.tensor([1, 2], device=device), 4), torch.full_like(torch.tensor([1, 2]), 4))]
    for ours, theirs in pairs:
        assert ours.device == device and str(ours.dtype) == str(theirs.dtype).replace("torch.", "")
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)
    r = tg.randn(3, 2, device=device, requires_grad=True)
    assert r.shape == (3, 2) and r.requires_grad and r.dtype == tg.float32
    assert tg.rand(4, dtype=tg.float64, device=device).dtype == tg.float64
    with pytest.raises(TypeError, match="randn: dtype int64 is not supported"):
        tg.randn(2, dtype=tg.int64)
    with pytest.raises(ValueError, match="arange: step must not be zero"):
        tg.arange(0, 3, 0)


def test_labels_for_losses_may_be_int_tensors(device):
    logits = tg.Tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], device=device, requires_grad=True)
    for dtype in (tg.int32, tg.int64):
        labels = tg.tensor([0, 2], dtype=dtype, device=device)
        loss = tg.nn.functional.cross_entropy(logits, labels)
        same = tg.nn.functional.nll_loss(logits.log_softmax(dim=1), labels)
        assert loss.item() == pytest.approx(same.item())
        assert loss.item() == pytest.approx(tg.nn.functional.cross_entropy(logits, [0, 2]).item())


DTYPE_NAMES = ["float32", "float64", "int32", "int64", "bool"]
OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
             "/": lambda a, b: a / b, "<": lambda a, b: a < b, "==": lambda a, b: a == b,
             "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b, "&": lambda a, b: a & b,
             "|": lambda a, b: a | b, "^": lambda a, b: a ^ b}


@pytest.mark.parametrize("op", sorted(OPERATORS))
@pytest.mark.parametrize("left", DTYPE_NAMES)
def test_every_dtype_pair_and_python_number_follows_torch(device, op, left):
    torch = pytest.importorskip("torch")
    values = {"bool": [True, False, True], "int32": [3, -2, 0], "int64": [5, 4, -7],
              "float32": [1.5, -2.0, 0.0], "float64": [0.25, 3.0, -1.0]}
    fn = OPERATORS[op]
    for right in DTYPE_NAMES + [2, 0.5, True]:
        if isinstance(right, str):
            ours_b, theirs_b = (tg.tensor(values[right], dtype=getattr(tg, right), device=device),
                                torch.tensor(values[right], dtype=getattr(torch, right)))
        else:
            ours_b, theirs_b = right, right
        ours_a = tg.tensor(values[left], dtype=getattr(tg, left), device=device)
        theirs_a = torch.tensor(values[left], dtype=getattr(torch, left))
        for swap in (False, True):
            try:
                theirs = fn(theirs_b, theirs_a) if swap else fn(theirs_a, theirs_b)
            except (RuntimeError, TypeError):
                with pytest.raises((TypeError, RuntimeError)):
                    fn(ours_b, ours_a) if swap else fn(ours_a, ours_b)
                continue
            ours = fn(ours_b, ours_a) if swap else fn(ours_a, ours_b)
            assert str(ours.dtype) == str(theirs.dtype).replace("torch.", ""), (left, op, right, swap)
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6,
                                       err_msg=f"{left} {op} {right}")


def test_softmax_functions_and_modules_take_dim(device):
    x = tg.Tensor([[1.0, 2.0], [3.0, 5.0]], device=device)
    by_rows = x.softmax(axis=0).numpy()
    F = tg.nn.functional
    for got in (F.softmax(x, dim=0), F.softmax(x, axis=0), tg.nn.Softmax(dim=0)(x), tg.nn.Softmax(0)(x),
                tg.nn.LogSoftmax(dim=0)(x).exp(), F.log_softmax(x, 0).exp()):
        np.testing.assert_allclose(got.numpy(), by_rows, rtol=1e-6)
    np.testing.assert_allclose(tg.nn.Softmax()(x).numpy(), x.softmax(-1).numpy())
