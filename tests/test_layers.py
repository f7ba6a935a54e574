"""Conv2d, pooling, norms, dropout, the new activations and losses: against finite differences and,
where PyTorch is importable, against PyTorch's numbers (forward, every gradient, running statistics)."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tests.conftest import to_numpy

F = tg.nn.functional
rng = np.random.default_rng(0)


def _t(array, device, grad=True):
    return tg.Tensor(array, device=device, dtype=np.float64, requires_grad=grad)


def _against_torch(ours, theirs, arrays, device):
    """Run both with float64 copies of `arrays`; compare outputs and every input's gradient."""
    torch = pytest.importorskip("torch")
    mine = [_t(a, device) for a in arrays]
    refs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, ty = ours(*mine), theirs(*refs)
    np.testing.assert_allclose(to_numpy(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    seed = rng.standard_normal(ty.shape)
    y.backward(seed)
    ty.backward(torch.tensor(seed))
    for a, b in zip(mine, refs):
        np.testing.assert_allclose(to_numpy(a.grad), b.grad.numpy(), rtol=1e-9, atol=1e-12)


IMAGES = rng.standard_normal((2, 3, 9, 8))
CONV_CASES = {
    "plain": (dict(), (4, 3, 3, 3)),
    "stride 2, padding 1, dilation 2": (dict(stride=2, padding=1, dilation=2), (4, 3, 3, 3)),
    "rectangular kernel and padding": (dict(padding=(1, 0), stride=(1, 2)), (5, 3, 3, 2)),
    "groups": (dict(groups=3, padding=1), (6, 1, 3, 3)),
    "same, even kernel": (dict(padding="same"), (2, 3, 4, 4)),
    "1x1": (dict(), (7, 3, 1, 1)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch's note about its own copy
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(device, case):
    torch = pytest.importorskip("torch")
    settings, weight_shape = CONV_CASES[case]
    weight, bias = rng.standard_normal(weight_shape), rng.standard_normal(weight_shape[0])
    _against_torch(
        lambda x, w, b: F.conv2d(x, w, b, **settings),
        lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **settings),
        [IMAGES, weight, bias],
        device,
    )


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_with_fused_relu_matches_torch(device, case):
    """The node a Sequential of Conv2d and ReLU runs: conv, bias and ReLU, and their gradients."""
    torch = pytest.importorskip("torch")
    settings, weight_shape = CONV_CASES[case]
    weight, bias = rng.standard_normal(weight_shape), rng.standard_normal(weight_shape[0])
    options = dict(dict(stride=1, padding=0, dilation=1, groups=1), **settings)
    _against_torch(
        lambda x, w, b: F._conv2d(x, w, b, options["stride"], options["padding"], options["dilation"],
                                  options["groups"], relu=True),
        lambda x, w, b: torch.relu(torch.nn.functional.conv2d(x, w, b, **settings)),
        [IMAGES, weight, bias],
        device,
    )


def test_sequential_runs_conv_and_relu_as_one_node_unless_hooked(device):
    conv, relu = tg.nn.Conv2d(3, 4, 3, padding=1, device=device), tg.nn.ReLU()
    model = tg.nn.Sequential(conv, relu)
    x = tg.Tensor(IMAGES.astype(np.float32), device=device)
    fused = model(x)
    assert fused._ctx.name == "Convolution"
    np.testing.assert_allclose(fused.numpy(), np.maximum(conv(x).numpy(), 0), rtol=1e-6, atol=1e-6)
    seen = []
    relu.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert model(x)._ctx.name == "ReLU" and seen == [fused.shape]  # the hook sees the ReLU run


def test_conv2d_unbatched_and_gradcheck(device):
    x, w = _t(rng.standard_normal((2, 5, 4)), device), _t(rng.standard_normal((3, 2, 2, 3)), device)
    assert F.conv2d(x, w, padding=1).shape == (3, 6, 4)
    assert tg.gradcheck(lambda x, w: F.conv2d(x, w, stride=2, padding=1), [x, w])


def test_conv2d_errors_name_the_shapes(device):
    x = tg.Tensor.zeros(1, 3, 5, 5, device=device)
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(x, tg.Tensor.zeros(2, 2, 3, 3, device=device))
    with pytest.raises(ValueError, match="too small"):
        F.conv2d(x, tg.Tensor.zeros(2, 3, 7, 7, device=device))
    with pytest.raises(ValueError, match="4-d"):
        F.conv2d(tg.Tensor.zeros(5, 5, device=device), tg.Tensor.zeros(2, 3, 3, 3, device=device))


POOL_CASES = {
    "max 2": ("max_pool2d", (2,), {}),
    "max 3 stride 2 padding 1": ("max_pool2d", (3, 2, 1), {}),
    "max dilation": ("max_pool2d", (2,), {"dilation": 2, "stride": 1}),
    "avg 3 stride 2 padding 1": ("avg_pool2d", (3, 2, 1), {}),
    "avg without padding counted": ("avg_pool2d", (3, 2, 1), {"count_include_pad": False}),
    "avg divisor": ("avg_pool2d", (2,), {"divisor_override": 3}),
    "adaptive 1": ("adaptive_avg_pool2d", (1,), {}),
    "adaptive uneven": ("adaptive_avg_pool2d", ((4, 3),), {}),
    "adaptive even": ("adaptive_avg_pool2d", ((3, 2),), {}),
}


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_torch(device, case):
    torch = pytest.importorskip("torch")
    name, args, kwargs = POOL_CASES[case]
    _against_torch(
        lambda x: getattr(F, name)(x, *args, **kwargs),
        lambda x: getattr(torch.nn.functional, name)(x, *args, **kwargs),
        [IMAGES],
        device,
    )


def test_max_pool_gives_a_tie_to_one_element(device):
    torch = pytest.importorskip("torch")
    tied = np.round(IMAGES)  # many equal values per window
    _against_torch(
        lambda x: F.max_pool2d(x, 2), lambda x: torch.nn.functional.max_pool2d(x, 2), [tied], device
    )


def test_batch_norm_training_and_running_stats_match_torch(device):
    torch = pytest.importorskip("torch")
    ours = tg.nn.BatchNorm2d(3, momentum=0.3, dtype=np.float64, device=device)
    theirs = torch.nn.BatchNorm2d(3, momentum=0.3, dtype=torch.float64)
    for step in range(3):
        x = rng.standard_normal((4, 3, 5, 5)) * (step + 1) + step
        _against_torch(lambda x: ours(x), lambda x: theirs(x), [x], device)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(to_numpy(getattr(ours, name)), getattr(theirs, name).numpy(), rtol=1e-12)
    assert int(to_numpy(ours.num_batches_tracked)) == 3
    ours.eval()
    theirs.eval()
    _against_torch(lambda x: ours(x), lambda x: theirs(x), [IMAGES], device)


def test_batch_norm_cumulative_average_and_1d(device):
    torch = pytest.importorskip("torch")
    ours = tg.nn.BatchNorm1d(4, momentum=None, dtype=np.float64, device=device)
    theirs = torch.nn.BatchNorm1d(4, momentum=None, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal((6, 4))
        _against_torch(lambda x: ours(x), lambda x: theirs(x), [x], device)
    np.testing.assert_allclose(to_numpy(ours.running_var), theirs.running_var.numpy(), rtol=1e-12)
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_layer_norm_matches_torch(device):
    torch = pytest.importorskip("torch")
    w, b = rng.standard_normal((9, 8)), rng.standard_normal((9, 8))
    _against_torch(
        lambda x, w, b: F.layer_norm(x, (9, 8), w, b),
        lambda x, w, b: torch.nn.functional.layer_norm(x, (9, 8), w, b),
        [IMAGES, w, b],
        device,
    )


ACTIVATIONS = {
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), "leaky_relu", {"negative_slope": 0.2}),
    "elu": (lambda x: F.elu(x, 0.7), "elu", {"alpha": 0.7}),
    "silu": (F.silu, "silu", {}),
    "softplus": (lambda x: F.softplus(x, 2.0, 3.0), "softplus", {"beta": 2.0, "threshold": 3.0}),
    "gelu": (F.gelu, "gelu", {}),
    "gelu tanh": (lambda x: F.gelu(x, "tanh"), "gelu", {"approximate": "tanh"}),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_torch_and_gradcheck(device, name):
    torch = pytest.importorskip("torch")
    ours, theirs, kwargs = ACTIVATIONS[name]
    x = rng.uniform(-4, 4, (5, 7))
    _against_torch(ours, lambda t: getattr(torch.nn.functional, theirs)(t, **kwargs), [x], device)
    assert tg.gradcheck(ours, [_t(x, device)])


@pytest.mark.parametrize(
    "module", [tg.nn.LeakyReLU(0.3), tg.nn.GELU("tanh"), tg.nn.SiLU(), tg.nn.ELU(), tg.nn.Softplus(beta=2.0)]
)
def test_activation_after_linear_is_fused_and_equal(device, module):
    tg.manual_seed(1)
    model = tg.nn.Sequential(tg.nn.Linear(3, 4, device=device, dtype=np.float64), module)
    x = _t(rng.standard_normal((5, 3)), device, grad=False)
    fused = model(x)
    assert "Fused" in fused.grad_fn.name
    layer = model[0]
    unfused = module(x @ layer.weight.T + layer.bias)
    np.testing.assert_allclose(to_numpy(fused), to_numpy(unfused), rtol=1e-12)


LOSSES = {
    "l1": (F.l1_loss, "l1_loss", {}),
    "huber": (lambda x, t: F.huber_loss(x, t, delta=0.7), "huber_loss", {"delta": 0.7}),
    "smooth l1": (lambda x, t: F.smooth_l1_loss(x, t, beta=0.5), "smooth_l1_loss", {"beta": 0.5}),
    "smooth l1 beta 0": (lambda x, t: F.smooth_l1_loss(x, t, beta=0.0), "smooth_l1_loss", {"beta": 0.0}),
    "huber sum": (lambda x, t: F.huber_loss(x, t, "sum"), "huber_loss", {"reduction": "sum"}),
}


@pytest.mark.parametrize("name", LOSSES)
def test_regression_losses_match_torch(device, name):
    torch = pytest.importorskip("torch")
    ours, theirs, kwargs = LOSSES[name]
    x, t = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    _against_torch(ours, lambda a, b: getattr(torch.nn.functional, theirs)(a, b, **kwargs), [x, t], device)


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_kl_div_matches_torch(device, log_target, reduction):
    torch = pytest.importorskip("torch")
    log_q = np.log(rng.dirichlet(np.ones(5), 4))
    target = rng.dirichlet(np.ones(5), 4)
    target = np.log(target) if log_target else target
    ours = tg.nn.KLDivLoss(reduction, log_target=log_target)
    theirs = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)
    _against_torch(ours, theirs, [log_q, target], device)


def test_kl_div_zero_target_contributes_zero(device):
    log_q = _t(np.log([[0.5, 0.5]]), device)
    assert F.kl_div(log_q, _t([[1.0, 0.0]], device, False), reduction="sum").item() == pytest.approx(
        np.log(2)
    )


def test_bce_with_logits_pos_weight_and_weight_match_torch(device):
    torch = pytest.importorskip("torch")
    x, t = rng.standard_normal((4, 3)) * 5, rng.integers(0, 2, (4, 3)).astype(float)
    pos, weight = np.array([0.5, 2.0, 3.0]), rng.uniform(0, 2, (4, 3))
    ours = tg.nn.BCEWithLogitsLoss(weight=_t(weight, device, False), pos_weight=_t(pos, device, False))
    theirs = torch.nn.BCEWithLogitsLoss(weight=torch.tensor(weight), pos_weight=torch.tensor(pos))
    _against_torch(lambda x: ours(x, _t(t, device, False)), lambda x: theirs(x, torch.tensor(t)), [x], device)


def test_dropout_train_eval_and_seed(device):
    x = tg.Tensor.ones(1000, device=device, dtype=np.float64, requires_grad=True)
    drop = tg.nn.Dropout(0.25)
    tg.manual_seed(3)
    first = to_numpy(drop(x))
    tg.manual_seed(3)
    assert np.array_equal(first, to_numpy(drop(x)))  # seeded: the same mask again
    assert set(np.unique(first)) == {0.0, 1.0 / 0.75}
    assert 0.15 < np.mean(first == 0) < 0.35
    drop(x).sum().backward()
    assert set(np.unique(to_numpy(x.grad))) <= {0.0, 1.0 / 0.75}
    assert drop.eval()(x) is x
    with pytest.raises(ValueError, match="probability"):
        tg.nn.Dropout(1.5)


def test_pad_matches_torch(device):
    torch = pytest.importorskip("torch")
    _against_torch(
        lambda x: F.pad(x, (1, 2, 0, 3), value=0.5),
        lambda x: torch.nn.functional.pad(x, (1, 2, 0, 3), value=0.5),
        [IMAGES],
        device,
    )


# ---- layers as modules, PyTorch's parameter names and init ---------------------------------------
def test_layers_use_torch_parameter_names_and_shapes():
    torch = pytest.importorskip("torch")
    pairs = [
        (tg.nn.Conv2d(3, 6, 3, groups=3), torch.nn.Conv2d(3, 6, 3, groups=3)),
        (tg.nn.BatchNorm2d(5), torch.nn.BatchNorm2d(5)),
        (tg.nn.LayerNorm((4, 2)), torch.nn.LayerNorm((4, 2))),
    ]
    for ours, theirs in pairs:
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
            k: tuple(v.shape) for k, v in theirs.state_dict().items()
        }


def test_conv2d_init_bound():
    conv = tg.nn.Conv2d(4, 8, (3, 2), groups=2)
    bound = 1 / np.sqrt(2 * 3 * 2)
    assert np.abs(conv.weight.numpy()).max() <= bound and np.abs(conv.weight.numpy()).max() > 0.8 * bound


def test_small_cnn_trains(device):
    tg.manual_seed(0)
    model = tg.nn.Sequential(
        tg.nn.Conv2d(1, 4, 3, padding=1, device=device),
        tg.nn.BatchNorm2d(4, device=device),
        tg.nn.ReLU(),
        tg.nn.MaxPool2d(2),
        tg.nn.Dropout(0.1),
        tg.nn.Flatten(),
        tg.nn.Linear(16, 2, device=device),
    )
    x = tg.Tensor(rng.standard_normal((16, 1, 4, 4)), device=device)
    labels = (to_numpy(x).reshape(16, -1).mean(1) > 0).astype(np.int64)
    opt = tg.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(x), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


LABELS = np.array([0, 3, -100, 2, 1, -100])
CE_CASES = {
    "plain": ({}, LABELS),
    "class weights": ({"weight": [1.5, 1.0, 2.0, 0.5]}, LABELS),
    "label smoothing": ({"label_smoothing": 0.2}, LABELS),
    "weights and smoothing, sum": (
        {"weight": [1.5, 1.0, 2.0, 0.5], "label_smoothing": 0.3, "reduction": "sum"},
        LABELS,
    ),
    "ignore another index": ({"ignore_index": 2}, np.array([0, 3, 2, 2, 1, 0])),
    "probabilities, smoothed and weighted": (
        {"weight": [1.5, 1.0, 2.0, 0.5], "label_smoothing": 0.1},
        rng.dirichlet(np.ones(4), 6),
    ),
    "none": ({"reduction": "none", "label_smoothing": 0.1}, LABELS),
}


@pytest.mark.parametrize("case", CE_CASES)
def test_cross_entropy_options_match_torch(device, case):
    torch = pytest.importorskip("torch")
    kwargs, target = CE_CASES[case]
    theirs_kwargs = {
        k: torch.tensor(v, dtype=torch.float64) if k == "weight" else v for k, v in kwargs.items()
    }
    ours_kwargs = {k: np.array(v) if k == "weight" else v for k, v in kwargs.items()}
    ours_target = tg.Tensor(target, device=device, dtype=np.float64) if target.dtype.kind == "f" else target
    _against_torch(
        lambda x: F.cross_entropy(x, ours_target, **ours_kwargs),
        lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(target), **theirs_kwargs),
        [rng.standard_normal((6, 4))],
        device,
    )


def test_nll_loss_spatial_with_weights_matches_torch(device):
    torch = pytest.importorskip("torch")
    labels, weight = np.array([[0, 1, -100], [3, 2, 1]]), np.array([1.5, 1.0, 2.0, 0.5])
    loss = tg.nn.NLLLoss(weight=tg.Tensor(weight, device=device, dtype=np.float64))
    _against_torch(
        lambda x: loss(x.log_softmax(axis=1), labels),
        lambda x: torch.nn.NLLLoss(weight=torch.tensor(weight))(x.log_softmax(1), torch.tensor(labels)),
        [rng.standard_normal((2, 4, 3))],
        device,
    )


def test_cross_entropy_every_label_ignored_is_nan(device):
    x = tg.Tensor.zeros(2, 3, device=device, requires_grad=True)
    assert np.isnan(F.cross_entropy(x, [-100, -100]).item())
