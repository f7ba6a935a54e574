"""Higher-order gradients: create_graph, tg.grad, autograd.functional and gradgradcheck, per primitive."""


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_gpu as tg
import tinygrad_gpu.nn.functional as F
from tinygrad_gpu import ops
from tinygrad_gpu.autograd import functional as AF
from tinygrad_gpu.function import Function


def away_from_zero(shape, seed=0, low=0.4, high=1.4):
    """Values of random sign with magnitude in [low, high]: no kinks of relu/abs/max nearby."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def positive(shape, seed=0, low=0.5, high=1.5):
    return np.random.default_rng(seed).uniform(low, high, shape)


def distinct(shape, seed=0):
    """Values that differ by at least 0.1 from each other (max/min/pool have no ties)."""
    values = np.random.default_rng(seed).permutation(np.prod(shape)) * 0.1 - 0.05 * np.prod(shape) + 0.025
    return values.reshape(shape).astype(np.float64)


def t(array, device, grad=True):
    return tg.Tensor(np.asarray(array, np.float64), device=device, requires_grad=grad)


squared_difference = tg.fuse(lambda a, b: (a - b) * (a - b))
fused_mean = tg.fuse(lambda a, b: ((a * b).tanh()).mean())

def az(shape, seed, low=0.4, high=1.4, scale=1.0):
    """A maker of a float64 tensor of values away from zero (see away_from_zero)."""
    return lambda d: t(away_from_zero(shape, seed, low, high) * scale, d)


def pos(shape, seed, low=0.5, high=1.5):
    return lambda d: t(positive(shape, seed, low, high), d)


def dis(shape, seed, offset=0.0):
    return lambda d: t(distinct(shape, seed) + offset, d)


# name -> (function of tensors, input makers (device -> tensor)[, gradgradcheck options])
CASES = {
    "add": (lambda a, b: a + b, [az((2, 3), 1), az((3,), 2)]),
    "sub": (lambda a, b: (a - b) * a, [az((2, 3), 1), az((1, 3), 2)]),
    "mul": (lambda a, b: a * b * a, [az((2, 3), 1), az((2, 1), 2)]),
    "div": (lambda a, b: a / b, [az((2, 3), 1), pos((2, 3), 2)]),
    "rdiv": (lambda a: 2.0 / a, [pos((4,), 1)]),
    "neg": (lambda a: -a * a, [az((3,), 1)]),
    "pow": (lambda a: a ** 2.5, [pos((2, 3), 1)]),
    "pow_int": (lambda a: a ** 3, [az((4,), 1)]),
    "pow_tensor": (lambda a, p: a ** p, [pos((2, 3), 1), pos((2, 3), 2)]),
    "rpow": (lambda p: 2.0 ** p, [az((4,), 1)]),
    "exp": (lambda a: a.exp(), [az((2, 3), 1)]),
    "log": (lambda a: a.log(), [pos((2, 3), 1)]),
    "sqrt": (lambda a: a.sqrt(), [pos((2, 3), 1)]),
    "relu": (lambda a: a.relu() * a, [az((2, 3), 1)]),
    "sigmoid": (lambda a: a.sigmoid(), [az((2, 3), 1)]),
    "tanh": (lambda a: a.tanh(), [az((2, 3), 1)]),
    "leaky_relu": (lambda a: F.leaky_relu(a, 0.1) * a, [az((2, 3), 1)]),
    "elu": (lambda a: F.elu(a, 0.7), [az((2, 3), 1)]),
    "silu": (lambda a: F.silu(a), [az((2, 3), 1)]),
    "softplus": (lambda a: F.softplus(a, beta=2.0, threshold=2.0), [az((2, 3), 1)]),
    "gelu": (lambda a: F.gelu(a), [az((2, 3), 1)]),
    "gelu_tanh": (lambda a: F.gelu(a, approximate="tanh"), [az((2, 3), 1)]),
    "abs": (lambda a: a.abs() * a, [az((2, 3), 1)]),
    "clip": (lambda a: a.clip(-1.0, 1.0) * a, [az((3, 3), 3, 0.2, 2.0)]),
    "maximum": (lambda a, b: a.maximum(b) * a, [dis((2, 3), 1), dis((2, 3), 2, 0.05)]),
    "minimum": (lambda a, b: a.minimum(b) * b, [dis((2, 3), 1), dis((2, 3), 2, 0.05)]),
    "where": (lambda a, b: tg.where(a > 0, a * b, b * b), [az((2, 3), 1), az((2, 3), 2)]),
    "sum": (lambda a: a.sum(axis=1) ** 2, [az((2, 3), 1)]),
    "mean": (lambda a: a.mean() * a, [az((2, 3), 1)]),
    "max": (lambda a: a.max(dim=1).values ** 2, [dis((2, 3), 1)]),
    "min": (lambda a: a.min() * a, [dis((2, 3), 1)]),
    "reshape_transpose": (lambda a: (a.reshape(3, 2).T * a) ** 2, [az((2, 3), 1)]),
    "expand": (lambda a: a.expand(3, 4) * a.expand(3, 4), [az((3, 1), 1)]),
    "matmul": (lambda a, b: (a @ b) ** 2, [az((2, 3), 1), az((3, 4), 2)]),
    "matmul_batched": (lambda a, b: (a @ b).tanh(), [az((2, 2, 3), 1), az((3, 2), 2)]),
    "matmul_vector": (lambda a, b: (a @ b) ** 2, [az((3,), 1), az((3, 2), 2)]),
    "linear": (lambda x, w, b: (x @ w.T + b).tanh(), [az((4, 3), 1), az((2, 3), 2), az((2,), 3)]),
    # through float32: differences of eps 1e-2 (the first gradients are linear here, so exact)
    "cast": (lambda a: a.to(tg.float32).to(tg.float64) * a, [az((2, 3), 1)], dict(eps=1e-2, atol=1e-4)),
    "index_basic": (lambda a: a[1:, ::2] ** 2, [az((3, 4), 1)]),
    "index_advanced": (lambda a: a[tg.tensor([0, 2, 0], device=a.device)] ** 2, [az((3, 2), 1)]),
    "cat": (lambda a, b: tg.cat([a * b, b], dim=0) ** 2, [az((2, 3), 1), az((2, 3), 2)]),
    "stack": (lambda a, b: tg.stack([a, b * a], dim=1) ** 2, [az((3,), 1), az((3,), 2)]),
    "softmax": (lambda a: a.softmax(dim=1), [az((2, 3), 1)]),
    "log_softmax": (lambda a: a.log_softmax(dim=-1), [az((2, 3), 1)]),
    "logsumexp": (lambda a: a.logsumexp(dim=0), [az((2, 3), 1)]),
    "var_std": (lambda a: a.var(dim=1) + a.std(), [az((2, 3), 1)]),
    "mse_loss": (lambda a, b: F.mse_loss(a * a, b), [az((2, 3), 1), az((2, 3), 2)]),
    "cross_entropy": (lambda a: F.cross_entropy(a, tg.Tensor(np.array([2, 0]), device=a.device)),
                      [az((2, 3), 1)]),
    "bce": (lambda p, q: F.binary_cross_entropy(p, q), [pos((2, 3), 1, 0.2, 0.8), pos((2, 3), 2, 0.2, 0.8)]),
    "bce_with_logits": (lambda x, q: F.binary_cross_entropy_with_logits(x * x, q),
                        [az((2, 3), 1), pos((2, 3), 2, 0.2, 0.8)]),
    "conv2d": (lambda x, w: F.conv2d(x, w, padding=1).tanh(),
               [az((1, 2, 4, 4), 1), az((2, 2, 3, 3), 2, scale=0.3)]),
    # the node a Sequential of Conv2d and ReLU runs (ReLU fused into the convolution)
    "conv2d_relu": (lambda x, w, b: F._conv2d(x, w, b, 1, 1, 1, 1, relu=True) * x[:, :1],
                    [dis((1, 1, 4, 4), 5, 1.0), az((2, 1, 3, 3), 6, scale=0.3), az((2,), 7)]),
    "max_pool2d": (lambda x: F.max_pool2d(x * x, 2), [dis((1, 1, 4, 4), 1, 10.0)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2, padding=1) ** 2, [az((1, 1, 4, 4), 1)]),
    "pad": (lambda x: F.pad(x, (1, 2)) ** 2, [az((2, 3), 1)]),
    "conv2d_strided": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, dilation=2).tanh(),
                       [az((1, 2, 5, 5), 1), az((2, 2, 2, 2), 2, scale=0.3), az((2,), 3)]),
    "max_pool2d_padded": (lambda x: F.max_pool2d(x * x, 3, stride=2, padding=1),
                          [dis((1, 2, 4, 4), 4, 10.0)]),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, 2) ** 2, [az((1, 1, 4, 4), 1)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (3,), w, b), [az((2, 3), 1), az((3,), 2), az((3,), 3)]),
    "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                   [az((4, 2), 1), az((2,), 2), az((2,), 3)]),
    "embedding": (lambda w: F.embedding(tg.tensor([[0, 2], [2, 1]], device=w.device), w, padding_idx=1) ** 2,
                  [az((3, 2), 1)]),
    "nll_loss": (lambda a: F.nll_loss(a.log_softmax(dim=1), tg.tensor([1, 0], device=a.device),
                                      weight=tg.tensor([0.5, 2.0, 1.0], device=a.device, dtype=a.dtype)),
                 [az((2, 3), 1)]),
    "l1_huber_smooth_l1": (lambda a, b: F.l1_loss(a, b) + F.huber_loss(a, b, delta=0.5)
                           + F.smooth_l1_loss(a * a, b, beta=0.5), [az((2, 3), 1), az((2, 3), 2)]),
    "kl_div": (lambda a, b: F.kl_div(a.log_softmax(dim=1), b.softmax(dim=1), reduction="batchmean"),
               [az((2, 3), 1), az((2, 3), 2)]),
    "fuse_chain": (lambda a, b: squared_difference(a, b) * a, [az((2, 3), 1), az((2, 3), 2)]),
    "fuse_mean": (lambda a, b: fused_mean(a, b), [az((2, 3), 1), az((2, 3), 2)]),
    # one input of the fused node made from the other: each gets its own partial derivative only
    "fuse_dependent_inputs": (lambda a: squared_difference(a, (a * 2.0).tanh()), [az((2, 3), 1)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradgradcheck_every_primitive(device, name):
    """Second derivatives of every primitive (and composed losses) match finite differences."""
    fn, makers, *options = CASES[name]
    assert tg.gradgradcheck(fn, [make(device) for make in makers], **(options[0] if options else {}))


def library_functions():
    """Every Function subclass the library defines, in any module (new ops included as they land)."""
    found, stack = [], [Function]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            if not sub.user_defined:
                found.append(sub)
    return found


def test_gradgradcheck_across_devices():
    """ToDevice: a graph that moves between the CPU and the GPU differentiates twice."""
    if not tg.cuda_available():
        pytest.skip("needs a GPU")
    x = t(away_from_zero((2, 3), 1), "cpu")
    assert tg.gradgradcheck(lambda a: ((a.to("cuda") * a.to("cuda")).tanh()).to("cpu") * a, [x])


def test_every_library_function_has_a_recorded_backward():
    """Each differentiable primitive defines a recorded backward: a backward_graph, or (elementwise)
    a graph_grads of its own, or a declaration that its slopes are piecewise constant."""
    missing = []
    for cls in library_functions():
        if cls in (ops.ElementwiseOp, ops.PairOp):  # the abstract bases
            continue
        if issubclass(cls, (ops.ElementwiseOp, ops.PairOp)):
            own = "graph_grads" if issubclass(cls, ops.ElementwiseOp) else "backward_graph"
            base = ops.ElementwiseOp if issubclass(cls, ops.ElementwiseOp) else ops.PairOp
            rules = cls.grads if issubclass(cls, ops.ElementwiseOp) else ("pair",)
            if (getattr(cls, own) is getattr(base, own) and not cls.piecewise_linear
                    and any(rule != "gy" for rule in rules)):
                missing.append(cls.__name__)
        elif not callable(getattr(cls, "backward_graph", None)):
            missing.append(cls.__name__)
    assert len(library_functions()) > 40
    assert not missing, f"no recorded backward (create_graph=True cannot differentiate them twice): {missing}"


def test_a_smooth_op_without_a_rule_refuses_create_graph(monkeypatch):
    """A new smooth elementwise op that forgot its graph_grads is an error, not a wrong constant slope."""
    monkeypatch.delattr(ops.Tanh, "graph_grads")
    x = t([0.5], "cpu")
    with pytest.raises(RuntimeError, match="Tanh has no recorded gradient rule"):
        tg.grad(x.tanh().sum(), x, create_graph=True)
    monkeypatch.delattr(ops.BinaryCrossEntropyWithLogits, "backward_graph")
    with pytest.raises(RuntimeError, match="BinaryCrossEntropyWithLogits has no recorded gradient rule"):
        tg.grad(F.binary_cross_entropy_with_logits(x, t([1.0], "cpu", False)), x, create_graph=True)


def test_linear_module_with_activation_second_order(device):
    """A Linear layer (its fused forward) with an activation: an input-gradient penalty's gradient
    w.r.t. the layer's parameters equals the one of the same composition written out."""
    tg.manual_seed(3)
    layer = tg.nn.Linear(3, 2, device=device, dtype=tg.float64)
    x0 = away_from_zero((4, 3), 5)

    def penalty_of(w, b):
        x = t(x0, device)
        g, = tg.grad((x @ w.T + b).tanh().sum(), x, create_graph=True)
        return (g * g).sum()

    assert tg.gradgradcheck(penalty_of, [t(p.numpy(), device) for p in layer.parameters()])
    x = t(x0, device)
    g, = tg.grad(layer(x).tanh().sum(), x, create_graph=True)
    (g * g).sum().backward()
    w2, b2 = (t(p.numpy(), device) for p in layer.parameters())
    penalty_of(w2, b2).backward()
    np.testing.assert_allclose(layer.weight.grad.numpy(), w2.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad.numpy(), b2.grad.numpy(), rtol=1e-10, atol=1e-12)


# ---- the API ---------------------------------------------------------------------------------
def test_backward_create_graph_gives_differentiable_grads(device):
    x = t([1.0, 2.0, 3.0], device)
    (x ** 3).sum().backward(create_graph=True)
    assert x.grad.requires_grad and x.grad.grad_fn is not None
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 12.0, 27.0])
    g = x.grad
    x.grad = None
    g.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 12.0, 18.0])


def test_backward_keeps_grad_alias_and_plain_path(device):
    x = t([1.0, 2.0], device)
    (x * x).backward(grad=tg.Tensor([1.0, 1.0], device=device, dtype=tg.float64))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])
    assert x.grad.grad_fn is None and not x.grad.requires_grad
    x.grad = None
    (x * x).backward(tg.Tensor([1.0, 2.0], device=device, dtype=tg.float64))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 8.0])
    with pytest.raises(TypeError, match="once"):
        (x * x).backward(tg.ones(2, dtype=tg.float64), grad=tg.ones(2, dtype=tg.float64))


def test_create_graph_retains_graph_by_default(device):
    x = t([1.0, 2.0], device)
    y = (x.exp() * x).sum()
    y.backward(create_graph=True)
    first = x.grad.numpy().copy()
    y.backward(create_graph=True)  # the graph was kept
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)
    z = (x * x).sum()
    z.backward(create_graph=True, retain_graph=False)
    with pytest.raises(RuntimeError, match="second time"):
        z.backward()


def test_backward_inputs_restricts_accumulation(device):
    a, b = t([1.0, 2.0], device), t([3.0, 4.0], device)
    (a * b).sum().backward(inputs=[a])
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 4.0])
    assert b.grad is None
    (a * b).sum().backward(inputs=b)
    np.testing.assert_allclose(b.grad.numpy(), [1.0, 2.0])
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 4.0])


def test_backward_inputs_may_be_a_non_leaf(device):
    a = t([1.0, 2.0], device)
    h = a * 3.0
    (h * h).sum().backward(inputs=[h])
    np.testing.assert_allclose(h.grad.numpy(), [6.0, 12.0])
    assert a.grad is None


def test_grad_returns_tuple_and_leaves_dot_grad_alone(device):
    a, b = t([1.0, 2.0], device), t([3.0, 4.0], device)
    ga, gb = tg.grad((a * b).sum(), (a, b))
    np.testing.assert_allclose(ga.numpy(), [3.0, 4.0])
    np.testing.assert_allclose(gb.numpy(), [1.0, 2.0])
    assert a.grad is None and b.grad is None
    assert not ga.requires_grad
    assert tg.autograd.grad is tg.grad


def test_grad_non_scalar_needs_grad_outputs(device):
    a = t([1.0, 2.0], device)
    with pytest.raises(RuntimeError, match="non-scalar output needs a gradient"):
        tg.grad(a * a, a)
    g, = tg.grad(a * a, a, grad_outputs=tg.Tensor([1.0, 0.5], device=device, dtype=tg.float64))
    np.testing.assert_allclose(g.numpy(), [2.0, 2.0])


def test_grad_unused_input(device):
    a, b = t([1.0], device), t([2.0], device)
    with pytest.raises(RuntimeError, match="allow_unused"):
        tg.grad((a * a).sum(), [a, b])
    ga, gb = tg.grad((a * a).sum(), [a, b], allow_unused=True)
    assert gb is None
    np.testing.assert_allclose(ga.numpy(), [2.0])


def test_grad_errors_name_the_problem(device):
    a = t([1.0], device)
    c = t([1.0], device, grad=False)
    with pytest.raises(RuntimeError, match="input 0 .* does not require grad"):
        tg.grad((a * 2.0).sum(), c)
    with pytest.raises(RuntimeError, match="output 0 .* does not require grad"):
        tg.grad(c.sum(), a)
    with pytest.raises(TypeError, match="must be Tensors"):
        tg.grad((a * 2.0).sum(), [np.ones(1)])
    with pytest.raises(ValueError, match="shape"):
        tg.grad(a * 2.0, a, grad_outputs=tg.ones(2, dtype=tg.float64, device=device))


def test_grad_of_intermediate_and_several_outputs(device):
    x = t([1.0, 2.0], device)
    h = x * x
    y1, y2 = h.sum(), (h * x).sum()
    gh, = tg.grad([y1, y2], h, retain_graph=True)
    np.testing.assert_allclose(gh.numpy(), 1.0 + x.numpy())
    gx, = tg.grad([y1, y2], x)
    np.testing.assert_allclose(gx.numpy(), 2 * x.numpy() + 3 * x.numpy() ** 2)


def test_third_order(device):
    x = t([0.3, -0.7], device)
    g1, = tg.grad(x.sin().sum() if hasattr(x, "sin") else (x.tanh()).sum(), x, create_graph=True)
    g2, = tg.grad(g1.sum(), x, create_graph=True)
    g3, = tg.grad(g2.sum(), x)
    tanh = np.tanh(x.numpy())
    # d³/dx³ tanh = -2 (1 - t²)(1 - 3 t²)
    np.testing.assert_allclose(g3.numpy(), -2 * (1 - tanh ** 2) * (1 - 3 * tanh ** 2), rtol=1e-10)


def test_float32_grads_stay_float32(device):
    x = tg.Tensor([0.5, 1.5], device=device, requires_grad=True)
    g, = tg.grad((x * x.sigmoid()).sum(), x, create_graph=True)
    h, = tg.grad(g.sum(), x)
    assert g.dtype == np.float32 and h.dtype == np.float32


def test_mixed_dtype_second_order(device):
    x32 = tg.Tensor([0.5, 1.5], device=device, requires_grad=True)
    w64 = t([2.0, 3.0], device)
    g, = tg.grad((x32 * w64 * x32).sum(), x32, create_graph=True)
    assert g.dtype == np.float32
    h, = tg.grad(g.sum(), w64)
    np.testing.assert_allclose(h.numpy(), 2 * x32.numpy(), rtol=1e-6)


# ---- user Functions ----------------------------------------------------------------------------
class Cube(Function):
    def forward(self, x):
        self.x = x
        return x ** 3

    def backward(self, gy):
        return (3 * self.x ** 2 * gy,)


class CubeTwice(Cube):
    def backward_graph(self, gy):
        x, = self.inputs
        return (gy * x * x * 3.0,)


def test_user_function_without_graph_backward_raises_clearly(device):
    x = t([1.0, 2.0], device)
    g, = tg.grad(Cube.apply(x).sum(), x)  # first order works as ever
    np.testing.assert_allclose(g.numpy(), [3.0, 12.0])
    with pytest.raises(RuntimeError, match="Cube.*backward_graph"):
        tg.grad(Cube.apply(x).sum(), x, create_graph=True)


def test_user_function_with_backward_graph_is_twice_differentiable(device):
    x = t([1.0, 2.0], device)
    assert tg.gradgradcheck(lambda a: CubeTwice.apply(a), [x])


def test_user_backward_graph_is_checked(device):
    class Bad(Cube):
        def backward_graph(self, gy):
            return (self.x,)

    x = t([1.0, 2.0], device)
    with pytest.raises(TypeError, match="Bad.backward_graph: the gradient for input 0 must be a Tensor"):
        tg.grad(Bad.apply(x).sum(), x, create_graph=True)


# ---- gradgradcheck finds and names a wrong recorded rule --------------------------------------
def test_gradgradcheck_names_the_op_with_a_wrong_rule(device, monkeypatch):
    # a rule that treats tanh's slope as a constant: first derivatives right, second ones wrong
    def constant_slope(self, gy, x):
        return (gy * tg.Tensor(1.0 - np.tanh(x.numpy()) ** 2, device=x.device, dtype=x.dtype),)

    monkeypatch.setattr(ops.Tanh, "graph_grads", constant_slope)
    x = t(away_from_zero((3,), 1), device)
    with pytest.raises(tg.GradcheckError, match="gradgradcheck") as error:
        tg.gradgradcheck(lambda a: (a * 2.0).tanh(), [x])
    assert "Tanh" in str(error.value) and "derivative is wrong" in str(error.value)
    assert "Mul" not in str(error.value).split("\n", 1)[1]


def test_gradgradcheck_names_an_op_whose_recorded_value_is_wrong(monkeypatch):
    monkeypatch.setattr(ops.Sigmoid, "graph_grads", lambda self, gy, x: (gy * x.sigmoid(),))
    with pytest.raises(tg.GradcheckError, match="(?s)Sigmoid.*differs from its backward"):
        tg.gradgradcheck(lambda a: a.sigmoid(), [t([0.5, -0.5], "cpu")])


def test_gradgradcheck_validates(device):
    with pytest.raises(ValueError, match="no input"):
        tg.gradgradcheck(lambda a: a * a, [t([1.0], device, grad=False)])
    with pytest.raises(ValueError, match="grad_outputs"):
        tg.gradgradcheck(lambda a: a * a, [t([1.0], device)], grad_outputs=tg.ones(2, dtype=tg.float64))
    assert tg.gradgradcheck(lambda a: a * a * a, [t([1.0, 2.0], device)],
                            grad_outputs=tg.Tensor([1.0, -2.0], device=device, dtype=tg.float64))


# ---- autograd.functional ------------------------------------------------------------------------
def cubic(x):
    return (x * x * x).sum() + (x[0] * x[1]) * 2.0


def test_functional_against_closed_forms(device):
    x = t([1.0, 2.0], device, grad=False)
    v = tg.Tensor([1.0, -1.0], device=device, dtype=tg.float64)
    hessian = np.array([[6.0, 2.0], [2.0, 12.0]])
    out, hv = AF.hvp(cubic, x, v)
    np.testing.assert_allclose(out.numpy(), 1 + 8 + 4)
    np.testing.assert_allclose(hv.numpy(), hessian @ [1.0, -1.0])
    np.testing.assert_allclose(AF.hessian(cubic, x).numpy(), hessian)
    _, g = AF.vjp(cubic, x)
    np.testing.assert_allclose(g.numpy(), [3 + 4, 12 + 2])
    square = lambda a: a * a  # noqa: E731
    _, jv = AF.jvp(square, x, v)
    np.testing.assert_allclose(jv.numpy(), [2.0, -4.0])
    np.testing.assert_allclose(AF.jacobian(square, x).numpy(), np.diag([2.0, 4.0]))
    assert not out.requires_grad and not hv.requires_grad


def test_functional_tuples(device):
    a, b = t([1.0, 2.0], device, grad=False), t([3.0], device, grad=False)
    f = lambda x, y: (x * y).sum() * y.sum()  # noqa: E731
    (haa, hab), (hba, hbb) = AF.hessian(f, (a, b))
    assert haa.shape == (2, 2) and hab.shape == (2, 1) and hba.shape == (1, 2) and hbb.shape == (1, 1)
    np.testing.assert_allclose(hab.numpy(), [[6.0], [6.0]])
    np.testing.assert_allclose(hbb.numpy(), [[2 * 3.0]])
    np.testing.assert_allclose(haa.numpy(), np.zeros((2, 2)))
    _, (va, vb) = AF.vjp(lambda x, y: x * y, (a, b), tg.ones(2, dtype=tg.float64, device=device))
    np.testing.assert_allclose(va.numpy(), [3.0, 3.0])
    np.testing.assert_allclose(vb.numpy(), [3.0])
    ja, jb = AF.jacobian(lambda x, y: x * y, (a, b))
    assert ja.shape == (2, 2) and jb.shape == (2, 1)


def test_functional_create_graph_keeps_the_callers_graph(device):
    w = t([0.5, -1.0], device)
    x = t([1.0, 2.0], device, grad=False)
    _, hv = AF.hvp(lambda z: ((z * w).tanh()).sum(), x, tg.ones(2, dtype=tg.float64, device=device),
                   create_graph=True)
    assert hv.requires_grad
    g, = tg.grad(hv.sum(), w)
    # numeric check of d(hv)/dw
    def hv_of(wv):
        z = x.numpy() * wv
        s = 1 - np.tanh(z) ** 2
        return np.sum(-2 * np.tanh(z) * s * wv * wv)
    eps = 1e-6
    numeric = [(hv_of(w.numpy() + eps * e) - hv_of(w.numpy() - eps * e)) / (2 * eps) for e in np.eye(2)]
    np.testing.assert_allclose(g.numpy(), numeric, rtol=1e-6)


def test_functional_constant_function_gives_zeros(device):
    x = t([1.0, 2.0], device, grad=False)
    np.testing.assert_allclose(AF.jacobian(lambda a: a.detach() * 2.0, x).numpy(), np.zeros((2, 2)))
    np.testing.assert_allclose(AF.hessian(lambda a: (a * 3.0).sum(), x).numpy(), np.zeros((2, 2)))


# ---- hypothesis properties --------------------------------------------------------------------
def smooth(x, y):
    return ((x * y).tanh() * x.sigmoid()).sum() + (x * x * y).sum() + (x.exp() * 0.1).sum()


bounded = st.floats(-1.5, 1.5, allow_nan=False, allow_infinity=False)


@given(st.lists(bounded, min_size=3, max_size=3), st.lists(bounded, min_size=3, max_size=3))
def test_hessian_is_symmetric(device, xs, ys):
    h = AF.hessian(lambda v: smooth(v[:3], v[3:]), t(xs + ys, device, grad=False)).numpy()
    np.testing.assert_allclose(h, h.T, rtol=1e-9, atol=1e-9)


@given(st.lists(bounded, min_size=3, max_size=3), st.lists(bounded, min_size=3, max_size=3))
def test_hvp_is_the_difference_of_gradients(device, xs, vs):
    x0, v = np.array(xs), np.array(vs)
    f = lambda a: smooth(a, a.tanh())  # noqa: E731
    _, hv = AF.hvp(f, t(x0, device, grad=False), t(v, device, grad=False))
    eps = 1e-5

    def gradient(at):
        _, g = AF.vjp(f, t(at, device, grad=False))
        return g.numpy()

    numeric = (gradient(x0 + eps * v) - gradient(x0 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv.numpy(), numeric, rtol=1e-5, atol=1e-6)


@given(st.lists(bounded, min_size=4, max_size=4))
def test_jacobian_of_grad_is_hessian(device, xs):
    f = lambda a: (a[:2] * a[2:]).tanh().sum() + (a * a * a).sum()  # noqa: E731
    x = t(xs, device, grad=False)
    through_jacobian = AF.jacobian(lambda a: tg.grad(f(a), a, create_graph=True)[0], x).numpy()
    np.testing.assert_allclose(through_jacobian, AF.hessian(f, x).numpy(), rtol=1e-10, atol=1e-12)


# ---- PyTorch as the oracle ------------------------------------------------------------------------
# name -> (ours(F, a, b), theirs(torch.nn.functional, a, b)): the same formula in both libraries
TORCH_CASES = {
    "tanh_mul": (lambda F, a, b: (a * b).tanh(),) * 2,
    "sigmoid_div": (lambda F, a, b: a.sigmoid() / (b * b + 1.0),) * 2,
    "exp_log_sqrt": (lambda F, a, b: (a.exp() + (b * b + 1.0).log()) * (a * a + 1.0).sqrt(),) * 2,
    "pow": (lambda F, a, b: (a * a + 1.0) ** (b * 0.5),) * 2,
    "matmul": (lambda F, a, b: (a.reshape(2, 3) @ b.reshape(3, 2)).tanh(),) * 2,
    "relu_abs": (lambda F, a, b: a.relu() * b.abs() * a,) * 2,
    "elu_silu": (lambda F, a, b: F.elu(a) * F.silu(b),) * 2,
    "gelu_softplus": (lambda F, a, b: F.gelu(a) + F.softplus(b) + F.gelu(a * b, approximate="tanh"),) * 2,
    "softmax_logsumexp": (lambda F, a, b: a.reshape(2, 3).softmax(dim=1)
                          * b.reshape(2, 3).logsumexp(dim=1).reshape(2, 1),) * 2,
    "mse": (lambda F, a, b: F.mse_loss(a.tanh(), b),) * 2,
    "bce_logits": (lambda F, a, b: F.binary_cross_entropy_with_logits(a, b.sigmoid()),) * 2,
    "bce": (lambda F, a, b: F.binary_cross_entropy(a.sigmoid(), b.sigmoid()),) * 2,
    "cross_entropy": (lambda F, a, b: F.cross_entropy(a.reshape(2, 3) * b.reshape(2, 3),
                                                      tg.Tensor(np.array([1, 2]), device=a.device)),
                      lambda F, a, b: F.cross_entropy(a.reshape(2, 3) * b.reshape(2, 3),
                                                      __import__("torch").tensor([1, 2]))),
    "max_mean_var": (lambda F, a, b: a.reshape(2, 3).max(dim=1).values * b.mean() + b.var(),) * 2,
    "min_sum_std": (lambda F, a, b: a.reshape(3, 2).min(dim=0).values.sum() * b.std() * a.sum(),) * 2,
    "leaky_clip_abs": (lambda F, a, b: F.leaky_relu(a, 0.2) * b.clamp(-0.9, 0.9) * (a * b).abs(),) * 2,
    "maximum_minimum": (lambda F, a, b: a.maximum(b) * a.minimum(b * 0.5) * b,) * 2,
    "where": (lambda F, a, b: __import__("tinygrad_gpu").where(a > 0, a * b, b.exp()),
              lambda F, a, b: __import__("torch").where(a > 0, a * b, b.exp())),
    "cat_stack_index": (lambda F, a, b: __import__("tinygrad_gpu").cat([a * b, b.exp()])[2:9:2] ** 2,
                        lambda F, a, b: __import__("torch").cat([a * b, b.exp()])[2:9:2] ** 2),
    "transpose_expand": (lambda F, a, b: (a.reshape(2, 3).T
                                          * b.reshape(1, 6)[:, :3].reshape(3, 1)).tanh(),) * 2,
    "batched_matmul": (lambda F, a, b: (a.reshape(2, 1, 3) @ b.reshape(3, 2)).sigmoid(),) * 2,
    "layer_norm": (lambda F, a, b: F.layer_norm(a.reshape(2, 3) * b.reshape(2, 3), (3,)),) * 2,
    "log_softmax_kl": (lambda F, a, b: F.kl_div(a.reshape(2, 3).log_softmax(dim=1),
                                                b.reshape(2, 3).softmax(dim=1), reduction="batchmean"),) * 2,
    "huber_smooth_l1": (lambda F, a, b: F.huber_loss(a * b, b, delta=0.7)
                        + F.smooth_l1_loss(a, b * b, beta=0.3),) * 2,
    "softplus_threshold": (lambda F, a, b: F.softplus(a * b, beta=3.0, threshold=1.0),) * 2,
    "sqrt_rdiv_pow": (lambda F, a, b: (a * a + 0.5).sqrt() / (b * b + 1.0) + 2.0 ** a
                      + (b * b + 1.0) ** -1.5,) * 2,
    "avg_pool": (lambda F, a, b: F.avg_pool2d((a * b).reshape(1, 1, 2, 3), 2, stride=1).tanh(),) * 2,
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_second_derivatives_match_pytorch(device, name):
    torch = pytest.importorskip("torch")
    ours, theirs = TORCH_CASES[name]
    a0, b0 = distinct((6,), 1) * 0.3, away_from_zero((6,), 2)
    weights = np.random.default_rng(7).uniform(0.5, 1.5, (6,))
    a, b = t(a0, device), t(b0, device)
    out = ours(F, a, b)
    ga, gb = tg.grad(out.sum(), (a, b), create_graph=True)
    second = tg.grad((ga * t(weights, device, False)).sum() + (gb * gb).sum(), (a, b))
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a0, b0))
    tga, tgb = torch.autograd.grad(theirs(torch.nn.functional, ta, tb).sum(), (ta, tb), create_graph=True)
    tsecond = torch.autograd.grad((tga * torch.tensor(weights)).sum() + (tgb * tgb).sum(), (ta, tb))
    for mine, reference in zip(second, tsecond):
        np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-9, atol=1e-11)


def test_conv_pool_second_derivatives_match_pytorch(device):
    torch = pytest.importorskip("torch")
    x0, w0 = away_from_zero((1, 2, 5, 5), 1), away_from_zero((3, 2, 3, 3), 2) * 0.3
    x, w = t(x0, device), t(w0, device)
    out = F.max_pool2d(F.conv2d(x, w, padding=1).tanh(), 2)
    gx, = tg.grad(out.sum(), x, create_graph=True)
    gw, = tg.grad((gx * gx).sum(), w)
    tx, tw = torch.tensor(x0, requires_grad=True), torch.tensor(w0, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(tx, tw, padding=1).tanh(), 2)
    tgx, = torch.autograd.grad(tout.sum(), tx, create_graph=True)
    tgw, = torch.autograd.grad((tgx * tgx).sum(), tw)
    np.testing.assert_allclose(gw.numpy(), tgw.numpy(), rtol=1e-9, atol=1e-11)


# ---- the engine with create_graph: ownership, hooks, in-place checks, optimizers, jit ---------------
def test_pass_through_gradients_are_not_shared_between_grads(device):
    a, b = t([1.0, 2.0], device), t([3.0, 4.0], device)
    seed = tg.Tensor([1.0, 1.0], device=device, dtype=tg.float64)
    (a + b).backward(seed, create_graph=True)
    assert a.grad is not b.grad
    assert not np.shares_memory(a.grad.numpy(), b.grad.numpy()) if device == "cpu" else True
    assert a.grad.array is not seed.array and b.grad.array is not seed.array
    a.grad.array[...] = 0.0  # writing one .grad changes neither the other nor the caller's seed
    np.testing.assert_allclose(b.grad.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(seed.numpy(), [1.0, 1.0])


def test_broadcast_gradient_becomes_a_writable_grad(device):
    a = t([[1.0], [2.0]], device)
    a.expand(2, 3).sum().backward(create_graph=True)
    np.testing.assert_allclose(a.grad.numpy(), [[3.0], [3.0]])
    w = t([1.0, 2.0], device)
    w.sum().backward(create_graph=True)
    w.grad.array[...] = 5.0  # a materialised array, not a read-only broadcast view


def test_create_graph_accumulates_onto_existing_grad(device):
    x = t([1.0, 2.0], device)
    (x * x).sum().backward()  # plain: a constant .grad
    (x * x * x).sum().backward(create_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 3 * x.numpy() ** 2)
    g, = tg.grad(x.grad.sum(), x)
    np.testing.assert_allclose(g.numpy(), 6 * x.numpy())


def test_hooks_and_retain_grad_under_create_graph(device):
    x = t([1.0, 2.0], device)
    h = (x * 2.0).retain_grad()
    seen = []
    x.register_post_accumulate_grad_hook(lambda tensor: seen.append(tensor.grad.numpy().copy()))
    (h * h).sum().backward(create_graph=True)
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.numpy())
    assert h.grad.requires_grad
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], 8 * x.numpy())


def test_in_place_change_is_caught_before_a_double_backward(device):
    x = t([1.0, 2.0], device)
    y = (x.exp() * x).sum()
    g, = tg.grad(y, x, create_graph=True)
    with tg.no_grad():
        x.array[...] = 0.0
        x._bump_version()
    with pytest.raises(RuntimeError, match="in place|modified|changed"):
        tg.grad(g.sum(), x)


def test_create_graph_records_even_under_no_grad(device):
    x = t([1.0, 2.0], device)
    y = (x * x * x).sum()
    with tg.no_grad():
        g, = tg.grad(y, x, create_graph=True)
        assert not tg.is_grad_enabled()  # switched back after the pass
    assert g.requires_grad


def test_anomaly_mode_names_the_op_in_a_recorded_backward(device):
    x = t([0.0, 1.0], device)
    with tg.detect_anomaly():
        y = x.sqrt().sum()
        with pytest.raises(tg.AnomalyError, match="Sqrt"):
            tg.grad(y, x, create_graph=True)


def test_optimizers_step_on_graph_grads(device):
    tg.manual_seed(1)
    model = tg.nn.Sequential(tg.nn.Linear(2, 3, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(3, 1, device=device))
    for opt in (tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), tg.optim.Adam(model.parameters())):
        before = [p.numpy().copy() for p in model.parameters()]
        opt.zero_grad()
        (model(tg.randn(4, 2, device=device)) ** 2).sum().backward(create_graph=True)
        opt.step()
        assert all(not np.array_equal(b, p.numpy()) for b, p in zip(before, model.parameters()))


def make_penalised_xor(device):
    tg.manual_seed(5)
    model = tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(4, 1, device=device), tg.nn.Sigmoid())
    opt = tg.optim.Adam(model.parameters(), lr=0.01)

    def step(x, y):
        opt.zero_grad()
        x = x.detach().requires_grad_(True)
        out = model(x)
        slope, = tg.grad(out.sum(), x, create_graph=True)
        penalty = ((slope * slope).sum(dim=1).sqrt() - 1.0).pow(2).mean()
        loss = ((out - y) ** 2).mean() + 0.1 * penalty
        loss.backward()
        opt.step()
        return loss

    return model, step


def test_jit_replays_a_gradient_penalty_step(device):
    eager_model, eager_step = make_penalised_xor(device)
    jit_model, raw_step = make_penalised_xor(device)
    step = tg.jit(raw_step)
    x = tg.Tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)
    y = tg.Tensor([[0], [1], [1], [0]], device=device)
    for i in range(8):
        expected = eager_step(x, y).item()
        assert step(x, y).item() == pytest.approx(expected, rel=1e-4, abs=1e-6), f"step {i}"
    for a, b in zip(eager_model.parameters(), jit_model.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6)


def test_fused_function_inside_a_gradient_penalty(device):
    x = t(away_from_zero((2, 3), 4), device)
    w = t(away_from_zero((2, 3), 5), device)
    slope, = tg.grad(fused_mean(x, w), x, create_graph=True)
    g, = tg.grad((slope * slope).sum(), w)
    x2, w2 = t(x.numpy(), device), t(w.numpy(), device)
    slope2, = tg.grad(((x2 * w2).tanh()).mean(), x2, create_graph=True)
    g2, = tg.grad((slope2 * slope2).sum(), w2)
    np.testing.assert_allclose(g.numpy(), g2.numpy(), rtol=1e-12)


def test_plain_backward_records_nothing(device):
    x = t([1.0, 2.0], device)
    (x.sigmoid() * x).sum().backward()
    assert x.grad.grad_fn is None and not x.grad.requires_grad


def test_each_fused_node_replays_once_per_double_backward(device, monkeypatch):
    """A fused node's recorded backward walks its own composition only, not the graph behind it."""
    from tinygrad_gpu import fusion
    calls = []
    original = fusion.FusedOp.backward_graph
    monkeypatch.setattr(fusion.FusedOp, "backward_graph", lambda self, gy: calls.append(self.name)
                        or original(self, gy))
    tg.manual_seed(2)
    model = tg.nn.Sequential(tg.nn.Linear(3, 4, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(4, 4, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(4, 1, device=device), tg.nn.Sigmoid())
    x = tg.randn(5, 3, device=device, requires_grad=True)
    out = model(x)
    tg.grad(out.sum(), x, create_graph=True)
    assert len(calls) == 3, calls  # three Linear+activation nodes, each replayed once


def test_gradient_penalty_training_leaves_no_cycles_and_stays_flat(device):
    """tg.grad(create_graph=True) inside the loss: every step's graphs are freed by reference counting
    (no cycles, no tensor or node left behind), and the GPU pool stays flat. The byte-level soak is
    benchmarks/memory_soak.py --gradient-penalty (1,000 steps)."""
    import gc

    _, step = make_penalised_xor(device)
    x = tg.Tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)
    y = tg.Tensor([[0], [1], [1], [0]], device=device)
    for _ in range(50):
        step(x, y)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds in gc.garbage, to name it
    gc.disable()
    try:
        for _ in range(20):
            step(x, y)
        found = gc.collect()
        cycles = [type(obj).__name__ for obj in gc.garbage]
    finally:
        gc.enable()
        gc.set_debug(0)
        gc.garbage.clear()
    assert found == 0, f"gradient-penalty steps left reference cycles: {cycles[:20]}"

    def live() -> int:
        # type(), not isinstance: some modules' objects warn when their __class__ is looked up
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), (tg.Tensor, Function)))

    pool = None
    if device == "cuda":
        import cupy

        pool = cupy.get_default_memory_pool()
    before, device_before = live(), pool.used_bytes() if pool else 0
    for _ in range(200):
        step(x, y)
    after, device_after = live(), pool.used_bytes() if pool else 0
    assert after <= before, f"{after - before} tensors or nodes outlived their step"
    assert device_after - device_before <= 0, f"device memory grew by {device_after - device_before} bytes"


def test_zero_grad_in_place_detaches_a_recorded_gradient(device):
    """zero_grad(set_to_none=False) after backward(create_graph=True): the next step starts afresh."""
    w = t([1.0, 2.0], device)
    opt = tg.optim.SGD([w], lr=0.1)
    (w * w * w).sum().backward(create_graph=True)
    grad = w.grad
    assert grad.grad_fn is not None
    opt.zero_grad(set_to_none=False)
    assert w.grad is grad and grad.grad_fn is None and not grad.requires_grad
    np.testing.assert_allclose(grad.numpy(), [0.0, 0.0])
    (w * w).sum().backward(create_graph=True)
    np.testing.assert_allclose(w.grad.numpy(), [2.0, 4.0])
    g, = tg.grad(w.grad.sum(), w)  # only this step's graph: d(2w)/dw
    np.testing.assert_allclose(g.numpy(), [2.0, 2.0])


def test_functional_matches_pytorch(device):
    torch = pytest.importorskip("torch")
    TAF = torch.autograd.functional
    a0, b0 = away_from_zero((3,), 1), away_from_zero((2, 3), 2)
    v_a, v_b, v_out = away_from_zero((3,), 3), away_from_zero((2, 3), 4), away_from_zero((2,), 5)

    def f(a, b):  # written once, run by both libraries
        return ((b * a).tanh() * a).sum(dim=1) + (b * b).sum(dim=1) * a.sum()

    def scalar(a, b):
        return f(a, b).sum()

    mine = lambda *arrays: tuple(t(x, device, grad=False) for x in arrays)  # noqa: E731
    theirs = lambda *arrays: tuple(torch.tensor(x) for x in arrays)  # noqa: E731
    checks = [
        (AF.vjp(f, mine(a0, b0), t(v_out, device, False))[1],
         TAF.vjp(f, theirs(a0, b0), torch.tensor(v_out))[1]),
        (AF.jvp(f, mine(a0, b0), mine(v_a, v_b))[1], TAF.jvp(f, theirs(a0, b0), theirs(v_a, v_b))[1]),
        (AF.hvp(scalar, mine(a0, b0), mine(v_a, v_b))[1],
         TAF.hvp(scalar, theirs(a0, b0), theirs(v_a, v_b))[1]),
        (AF.jacobian(f, mine(a0, b0)), TAF.jacobian(f, theirs(a0, b0))),
        (AF.hessian(scalar, mine(a0, b0)), TAF.hessian(scalar, theirs(a0, b0))),
    ]

    def flat(value):
        if isinstance(value, (tuple, list)):
            return [x for item in value for x in flat(item)]
        return [value]

    for ours, reference in checks:
        ours, reference = flat(ours), flat(reference)
        assert len(ours) == len(reference)
        for x, r in zip(ours, reference):
            assert x.shape == tuple(r.shape)
            np.testing.assert_allclose(x.numpy(), r.numpy(), rtol=1e-10, atol=1e-12)


def test_backward_seed_with_a_graph_is_differentiated_through(device):
    x = t([1.0, 2.0], device)
    v = t([0.5, -1.0], device)
    (x * x).backward(gradient=v, create_graph=True)  # x.grad = 2 x v, a function of v too
    g, = tg.grad(x.grad.sum(), v)
    np.testing.assert_allclose(g.numpy(), 2 * x.numpy())


def test_gradgradcheck_diagnosis_skips_a_node_it_cannot_rerun(monkeypatch):
    import importlib

    gradcheck_module = importlib.import_module("tinygrad_gpu.gradcheck")  # tg.gradcheck is the function

    monkeypatch.setattr(ops.Sigmoid, "graph_grads", lambda self, gy, x: (gy * x.sigmoid(),))
    real = gradcheck_module._second_order_problem

    def failing_for_mul(cls, *args):
        if cls is ops.Mul:
            raise TypeError("cannot re-run")
        return real(cls, *args)

    monkeypatch.setattr(gradcheck_module, "_second_order_problem", failing_for_mul)
    with pytest.raises(tg.GradcheckError, match=r"(?s)Sigmoid.*Mul \(TypeError when re-run on the CPU\)"):
        tg.gradgradcheck(lambda a: (a * 2.0).sigmoid(), [t([0.5, -0.5], "cpu")])


def test_debug_mode_checks_a_create_graph_backward_too(device):
    """tg.debug_mode's accumulation warning covers backward(create_graph=True) as the plain one."""
    w = t([1.0, 2.0], device)
    with tg.debug_mode():
        (w * w).sum().backward(create_graph=True)
        with pytest.warns(tg.DebugWarning, match=r"no zero_grad\(\) in between"):
            (w * w).sum().backward(create_graph=True)
