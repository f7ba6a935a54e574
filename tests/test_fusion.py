"""tg.fuse: a fused chain computes what the same ops compute one by one, values and gradients."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu.fusion import FusedOp


def leaf(array, device, dtype=np.float64):
    return tg.Tensor(np.array(array, dtype), device=device, requires_grad=True)


CHAINS = {
    "squared_error": (lambda a, b: (a - b) ** 2, [(4, 1), (4, 1)]),
    "bias_relu": (lambda z, b: (z + b).relu(), [(5, 3), (3,)]),
    "bias_sigmoid": (lambda z, b: (z + b).sigmoid(), [(5, 3), (3,)]),
    "bias_tanh": (lambda z, b: (z + b).tanh(), [(2, 5, 3), (1, 3)]),
    "shared_input": (lambda x: x * x + x.exp() / (x + 2.0) - x.tanh() * 3.0, [(3, 4)]),
    "reused_intermediate": (lambda a, b: (lambda s: s * s - s.sqrt())(a * b + 1.0), [(3, 2), (3, 2)]),
    "log_neg_div": (lambda a, b: -(a.log() / b), [(4,), (2, 4)]),
    # a matrix product at the head, its operands broadcast in several ways
    "matmul_bias_tanh": (lambda x, w, b: (x @ w + b).tanh(), [(5, 3), (3, 4), (4,)]),
    "matmul_column_scale": (lambda x, w, c: (x @ w * c).sigmoid(), [(4, 2), (2, 3), (4, 1)]),
    "matmul_full_operand": (lambda c, x, w: (x @ w - c) ** 2, [(3, 2), (3, 5), (5, 2)]),
    # products big enough for the tiled GEMM on the GPU (forward and the one-launch backward):
    # a bias summed over the rows, an operand of the product's shape, and one broadcast along
    # the columns (which the one-launch backward leaves to the chain's row and the engine)
    "linear_bias_relu_tiled": (lambda x, w, b: (x @ w + b).relu(), [(40, 48), (48, 36), (36,)]),
    "linear_residual_tanh_tiled": (lambda x, w, r: (x @ w + r).tanh(), [(40, 48), (48, 36), (40, 36)]),
    "linear_row_scale_tiled": (lambda x, w, c: (x @ w * c).sigmoid(), [(40, 48), (48, 36), (40, 1)]),
    # a sum over all elements at the tail (a loss)
    "mean_squared_error": (lambda a, b: ((a - b) ** 2).mean(), [(4, 1), (4, 1)]),
    "sum_of_exp": (lambda x, b: (x * b).exp().sum(), [(3, 4), (4,)]),
}


@pytest.mark.parametrize("name", CHAINS)
def test_fused_chain_matches_eager_ops(device, name):
    fn, shapes = CHAINS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    arrays = [rng.uniform(0.2, 2.0, s) for s in shapes]  # positive (log, sqrt), away from relu's kink
    fused = tg.fuse(fn)
    eager_inputs = [leaf(a, device) for a in arrays]
    fused_inputs = [leaf(a, device) for a in arrays]
    expected, got = fn(*eager_inputs), fused(*fused_inputs)
    assert isinstance(got.grad_fn, FusedOp)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    weights = rng.standard_normal(expected.shape)
    expected.backward(weights)
    got.backward(weights)
    for a, b in zip(eager_inputs, fused_inputs):
        assert b.grad.shape == a.shape
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert tg.gradcheck(fused, [leaf(a, device) for a in arrays])


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False),
                                   (False, False, True), (True, True, False)])
def test_fused_linear_backward_gives_exactly_the_gradients_asked_for(device, needs):
    # x, weight, bias: whichever require a gradient get the unfused ops' gradient, the rest none
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s) for s in ((50, 40), (30, 40), (30,))]
    layer = tg.nn.Linear(40, 30, device=device, dtype=np.float64)  # its product is x @ weight.T
    grads = []
    for fused in (True, False):
        inputs = [tg.Tensor(a, device=device, requires_grad=need) for a, need in zip(arrays, needs)]
        if fused:
            layer.weight, layer.bias = (tg.nn.Parameter(t, requires_grad=need)
                                        for t, need in zip(inputs[1:], needs[1:]))
            inputs[1:] = [layer.weight, layer.bias]
            out = layer(inputs[0], tg.nn.Sigmoid())
        else:
            out = (inputs[0] @ inputs[1].T + inputs[2]).sigmoid()
        out.sum().backward()
        grads.append([None if t.grad is None else t.grad.numpy() for t in inputs])
    for got, want, need in zip(*grads, needs):
        assert (got is not None) == need == (want is not None)
        if need:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_only_inputs_that_need_a_gradient_get_one(device):
    fused = tg.fuse(lambda a, b: (a - b) ** 2)
    a, b = leaf([1.0, 2.0], device), tg.Tensor([0.5, 0.5], device=device, dtype=np.float64)
    fused(a, b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [1.0, 3.0])
    assert b.grad is None


def test_float32_fused_matches_eager(device):
    fused = tg.fuse(lambda z, b: (z + b).sigmoid())
    z = tg.Tensor(np.linspace(-4, 4, 12).reshape(4, 3), device=device, dtype=np.float32,
                  requires_grad=True)
    b = tg.Tensor([0.1, -0.2, 0.3], device=device, requires_grad=True)
    out = fused(z, b)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), (z + b).sigmoid().numpy(), rtol=1e-6)


def test_not_fusible_functions_run_eagerly(device):
    outside = tg.Tensor([1.0, 2.0], device=device)
    reduces_an_axis = tg.fuse(lambda x: (x * 2).sum(axis=0))
    closes_over = tg.fuse(lambda x: x * outside)
    x = leaf([3.0, 4.0], device)
    assert reduces_an_axis(x).item() == 14.0 and not isinstance(reduces_an_axis(x).grad_fn, FusedOp)
    product_only = tg.fuse(lambda a, b: a @ b)
    a = leaf([[1.0, 2.0]], device)
    assert not isinstance(product_only(a, leaf([[1.0], [1.0]], device)).grad_fn, FusedOp)
    operand_reused = tg.fuse(lambda a, b: a @ b + a)
    np.testing.assert_allclose(operand_reused(a, leaf([[1.0, 0.0], [0.0, 1.0]], device)).numpy(),
                               [[2.0, 4.0]])
    np.testing.assert_allclose(closes_over(x).numpy(), [3.0, 8.0])
    assert not isinstance(closes_over(x).grad_fn, FusedOp)


def test_traced_again_for_new_shapes(device):
    fused = tg.fuse(lambda x: x * float(x.size))  # a constant that depends on the shape
    np.testing.assert_allclose(fused(leaf([1.0, 1.0], device)).numpy(), [2.0, 2.0])
    np.testing.assert_allclose(fused(leaf([1.0, 1.0, 1.0], device)).numpy(), [3.0, 3.0, 3.0])


def test_sequential_fuses_bias_and_activation_but_computes_the_same(device):
    tg.manual_seed(4)
    model = tg.nn.Sequential(tg.nn.Linear(3, 5, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(5, 2, device=device), tg.nn.Sigmoid())
    x = tg.Tensor(np.random.default_rng(2).standard_normal((6, 3)), device=device)
    out = model(x)
    assert isinstance(out.grad_fn, FusedOp) and "Sigmoid" in out.grad_fn.name
    layers = model.layers
    by_hand = ((x @ layers[0].weight.T + layers[0].bias).tanh() @ layers[2].weight.T
               + layers[2].bias).sigmoid()
    np.testing.assert_allclose(out.numpy(), by_hand.numpy(), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    grads = [p.grad.numpy() for p in model.parameters()]
    model.zero_grad()
    by_hand.sum().backward()
    for got, expected in zip(grads, (p.grad.numpy() for p in model.parameters())):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", None])
@pytest.mark.parametrize("batch, n_in, n_out", [(6, 3, 5), (128, 16, 32), (256, 64, 64), (600, 300, 400)])
def test_fused_linear_layer_matches_its_ops(device, batch, n_in, n_out, activation):
    # on the GPU: small (one launch each way), a backward too big for one block, the tiled GEMM
    # with the chain applied to its accumulators, and cuBLAS;
    # without an activation, z's and the bias's gradients are gy itself (no backward kernel)
    rng = np.random.default_rng(batch)
    layer = tg.nn.Linear(n_in, n_out, device=device, dtype=np.float64)
    x = tg.Tensor(rng.standard_normal((batch, n_in)), device=device, requires_grad=True)
    weights = rng.standard_normal((batch, n_out))
    out = layer(x, tg.nn.Tanh() if activation else None)
    name = "Fused(MatMul→Add→Tanh)" if activation else "Fused(MatMul→Add)"
    assert isinstance(out.grad_fn, FusedOp) and out.grad_fn.name == name
    out.backward(weights)
    fused = [t.grad.numpy() for t in (x, layer.weight, layer.bias)]
    x.grad = layer.weight.grad = layer.bias.grad = None
    by_hand = x @ layer.weight.T + layer.bias
    by_hand = by_hand.tanh() if activation else by_hand
    np.testing.assert_allclose(out.numpy(), by_hand.numpy(), rtol=1e-12, atol=1e-12)
    by_hand.backward(weights)
    for got, t in zip(fused, (x, layer.weight, layer.bias)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_fused_loss_is_one_node_and_matches_its_ops(device):
    prediction = leaf([[0.2], [0.9], [0.4]], device)
    target = tg.Tensor([[0.0], [1.0], [1.0]], device=device, dtype=np.float64)
    loss = tg.nn.functional.mse_loss(prediction, target)
    assert isinstance(loss.grad_fn, FusedOp) and loss.grad_fn.name.endswith("Sum)")
    assert loss.grad_fn.inputs == (prediction, target)
    np.testing.assert_allclose(loss.item(), (0.04 + 0.01 + 0.36) / 3, rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(prediction.grad.numpy(), [[0.4 / 3], [-0.2 / 3], [-1.2 / 3]], rtol=1e-12)


SUMMED_CHAINS = {  # chains ending in a sum over all elements, their inputs of one shape (or 0-d)
    "mean_squared_error": (lambda a, b: ((a - b) ** 2).mean(), [(7, 1), (7, 1)]),
    "exp_of_product": (lambda a, b: (a * b).exp().sum(), [(3, 5), (3, 5)]),
    "shared_input": (lambda x: (x * x + x.tanh() / (x + 3.0)).mean(), [(40, 9)]),
    "scalar_weight": (lambda w, x: (w * x).sigmoid().sum(), [(), (6, 4)]),  # w's gradient is a sum
}


@pytest.mark.skipif(not tg.cuda_available(), reason="the one-launch sum runs on the GPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,needs", [(name, needs) for name, (_, shapes) in SUMMED_CHAINS.items()
                                        for needs in ((True, True), (True, False), (False, True))
                                        [:3 if len(shapes) == 2 else 1]])
def test_backward_from_a_fused_loss_needs_no_gradient_launch(monkeypatch, dtype, name, needs):
    """A fused chain ending in a sum leaves its inputs' gradients ready after its forward launch
    on the GPU: backward() from the loss launches nothing, and gives the very bits the backward
    row gives for a gy of one that is not backward()'s own seed (and a second backward)."""
    from tinygrad_gpu import kernels

    fn, shapes = SUMMED_CHAINS[name]
    fused = tg.fuse(fn)
    rng = np.random.default_rng(len(name))
    arrays = [rng.uniform(0.5, 1.5, shape).astype(dtype) for shape in shapes]
    results = []
    for seed in ("backward's own", "given", "again"):
        inputs = [tg.Tensor(a, device="cuda", requires_grad=n) for a, n in zip(arrays, needs)]
        loss = fused(*inputs)
        assert isinstance(loss.grad_fn, FusedOp)
        calls = []
        for cls in (kernels.Elementwise, kernels.Reduction):
            original = cls.__call__
            monkeypatch.setattr(cls, "__call__", lambda self, *a, _o=original, _c=calls, **k:
                                _c.append(self.name) or _o(self, *a, **k))
        if seed == "given":
            loss.backward(tg.ones((), device="cuda", dtype=dtype))
        else:
            loss.backward(retain_graph=True)
            if seed == "again":
                for t in inputs:
                    t.grad = None
                loss.backward()  # the forward's gradients were handed out: computed anew
        monkeypatch.undo()
        zero_d_needed = any(n and not a.ndim for a, n in zip(arrays, needs))
        if seed == "backward's own" and not zero_d_needed:
            assert calls == [], calls
        else:
            assert calls, "the backward row runs"
        results.append([t.grad.numpy() if n else None for t, n in zip(inputs, needs)])
    for other in results[1:]:
        for got, want in zip(results[0], other):
            if got is not None:
                np.testing.assert_array_equal(got, want)
