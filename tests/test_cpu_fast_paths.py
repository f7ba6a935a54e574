"""The eager CPU step's shortcuts give what the general paths give (same tensors, same errors)."""

import numpy as np
import pytest

import tinygrad_gpu as tg


def test_reshape_to_the_same_shape_is_the_tensor_itself_and_bools_are_still_refused():
    t = tg.Tensor(np.arange(6.0).reshape(2, 3), device="cpu", requires_grad=True)
    assert t.reshape(2, 3) is t and t.reshape((2, 3)) is t and t.reshape(-1, 3) is t
    with pytest.raises(ValueError, match="reshape"):
        t.reshape(True, 6)
    with pytest.raises(ValueError, match="reshape"):
        t.reshape(2, -2)


def test_one_axis_given_as_int_tuple_or_negative_reduces_alike():
    t = tg.Tensor(np.arange(12.0).reshape(3, 4), device="cpu")
    for axis in (1, (1,), -1, (-1,), [1]):
        np.testing.assert_array_equal(t.sum(axis=axis).numpy(), [6.0, 22.0, 38.0])
        np.testing.assert_array_equal(t.max(axis=axis, keepdims=True).numpy(), [[3.0], [7.0], [11.0]])
    for bad in (True, (True,), 2, (2,)):
        with pytest.raises((TypeError, ValueError)):
            t.sum(axis=bad)
    with pytest.raises(ValueError, match="empty"):
        tg.Tensor(np.zeros((2, 0)), device="cpu").max(axis=1)


def test_a_fused_function_called_with_changing_shapes_uses_the_right_program():
    square = tg.fuse(lambda a, b: (a - b) * (a - b))
    for n in (3, 5, 3, 5, 1):
        a, b = np.arange(n, dtype=np.float32), np.ones(n, np.float32)
        np.testing.assert_array_equal(square(tg.Tensor(a), tg.Tensor(b)).numpy(), (a - b) ** 2)


def test_sequential_calls_a_linear_whose_call_is_its_own():
    calls = []

    class Logged(tg.nn.Linear):
        def __call__(self, *args, **kwargs):
            calls.append(args[0].shape)
            return super().__call__(*args, **kwargs)

    model = tg.nn.Sequential(Logged(2, 3, device="cpu"), tg.nn.ReLU())
    model(tg.Tensor(np.ones((4, 2), np.float32), device="cpu"))
    assert calls == [(4, 2)]


def test_mse_loss_names_a_bad_reduction():
    x = tg.Tensor(np.ones(3), device="cpu")
    for bad in ("average", None, ["mean"]):
        with pytest.raises(ValueError, match="reduction"):
            tg.nn.functional.mse_loss(x, x, reduction=bad)


def test_losses_called_outside_a_module_warn_about_nothing():
    import warnings

    logits = tg.Tensor(np.array([[1e30, -1e30, np.inf]], np.float32), device="cpu", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tg.nn.functional.nll_loss(logits.log_softmax(axis=1), [0]).backward()
        tg.nn.functional.l1_loss(logits, tg.Tensor(np.zeros((1, 3), np.float32), device="cpu"))


def test_forward_products_may_be_column_major_but_gradients_keep_their_parameters_layout():
    """A forward product on the CPU may come out column-major (the faster layout for OpenBLAS);
    the values are NumPy's, and every parameter's gradient stays row-major like the parameter."""
    rng = np.random.default_rng(4)
    tg.manual_seed(1)
    model = tg.nn.Sequential(tg.nn.Linear(40, 64, device="cpu"), tg.nn.ReLU(),
                             tg.nn.Linear(64, 48, device="cpu"), tg.nn.ReLU(),
                             tg.nn.Linear(48, 5, device="cpu"))
    x = rng.standard_normal((8, 40)).astype(np.float32)
    out = model(tg.Tensor(x, device="cpu"))
    h = x
    for layer in (model[0], model[2], model[4]):
        h = h @ layer.weight.numpy().T + layer.bias.numpy()
        h = np.maximum(h, 0) if layer is not model[4] else h
    np.testing.assert_allclose(out.numpy(), h, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad.array.flags.c_contiguous, name
