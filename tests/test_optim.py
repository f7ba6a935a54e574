"""Adam and AdamW against PyTorch's update rule, and optimizer state saving and restoring."""

import math

import numpy as np
import pytest

import tinygrad_gpu as tg

try:
    import torch
except ImportError:  # PyTorch is an optional oracle
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

START = [np.array([1.0, -2.0, 0.5]), np.array([[0.3, -0.7], [1.5, 0.0]])]


def fixed_problem(device):
    """Two parameters and a loss whose gradient is known in closed form: sum(a**4) + 3 sum(b**2)."""
    # copies: a Tensor made from a float64 array on the CPU shares its memory
    params = [tg.Tensor(v.copy(), device=device, dtype=np.float64, requires_grad=True) for v in START]
    loss = lambda: (params[0] ** 4).sum() + (params[1] ** 2).sum() * 3.0
    gradient = lambda values: [4 * values[0] ** 3, 6 * values[1]]
    return params, loss, gradient


def reference_adam(steps, lr, betas, eps, weight_decay, decoupled):
    """PyTorch's Adam / AdamW update rule, written out from its documentation."""
    beta1, beta2 = betas
    values = [v.copy() for v in START]
    m = [np.zeros_like(v) for v in values]
    v2 = [np.zeros_like(v) for v in values]
    history = []
    for t in range(1, steps + 1):
        grads = fixed_problem("cpu")[2](values)
        for i, g in enumerate(grads):
            if decoupled:
                values[i] = values[i] * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * values[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v2[i] = beta2 * v2[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v2[i] / (1 - beta2 ** t)
            values[i] = values[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        history.append([v.copy() for v in values])
    return history


@pytest.mark.parametrize("cls,decoupled", [(tg.optim.Adam, False), (tg.optim.AdamW, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_first_ten_steps_follow_the_update_rule(device, cls, decoupled, weight_decay):
    settings = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    params, loss, _ = fixed_problem(device)
    storage = [p.array for p in params]
    opt = cls(params, **settings)
    for expected in reference_adam(10, decoupled=decoupled, **settings):
        opt.zero_grad()
        loss().backward()
        opt.step()
        for p, e in zip(params, expected):
            np.testing.assert_allclose(p.numpy(), e, rtol=1e-12, atol=1e-15)
    assert all(p.array is s for p, s in zip(params, storage))  # updated in place
    assert opt.steps == [10, 10]


@needs_torch
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_matches_torch_optim_on_a_small_network(device, name):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
    w1, b1, w2 = rng.standard_normal((3, 5)), rng.standard_normal(5), rng.standard_normal((5, 2))
    ours = [tg.Tensor(v, device=device, dtype=np.float64, requires_grad=True) for v in (w1, b1, w2)]
    theirs = [torch.tensor(v, requires_grad=True) for v in (w1, b1, w2)]
    settings = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    opt, topt = getattr(tg.optim, name)(ours, **settings), getattr(torch.optim, name)(theirs, **settings)
    xs, ys = tg.Tensor(x, device=device, dtype=np.float64), torch.tensor(x)
    for _ in range(10):
        opt.zero_grad()
        tg.nn.functional.cross_entropy((xs @ ours[0] + ours[1]).tanh() @ ours[2], y).backward()
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy((ys @ theirs[0] + theirs[1]).tanh() @ theirs[2],
                                          torch.tensor(y)).backward()
        topt.step()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("settings", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                                      dict(weight_decay=0.01)])
def test_sgd_matches_torch_optim(device, settings):
    params, loss, _ = fixed_problem(device)
    theirs = [torch.tensor(v, requires_grad=True) for v in START]
    opt, topt = tg.optim.SGD(params, lr=0.01, **settings), torch.optim.SGD(theirs, lr=0.01, **settings)
    _train(opt, loss, 10)
    _train(topt, lambda: (theirs[0] ** 4).sum() + (theirs[1] ** 2).sum() * 3.0, 10)
    for a, b in zip(params, theirs):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_adam_in_float32_stays_float32_and_close_to_the_float64_rule(device):
    p = tg.Tensor(START[0], device=device, dtype=np.float32, requires_grad=True)
    opt = tg.optim.Adam([p], lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        (p ** 4).sum().backward()
        opt.step()
    expected = reference_adam(10, lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False)
    assert p.dtype == np.float32 and opt.exp_avgs[0].dtype == np.float32
    # float32 steps (fused multiply-adds on the GPU) stay within a few float32 ULPs per step
    np.testing.assert_allclose(p.numpy(), expected[-1][0], rtol=1e-4)


@pytest.mark.parametrize("name", ["Adam", "Adagrad"])
def test_step_counts_advance_once_per_step_for_tensors_of_many_blocks(device, name):
    # on the GPU one launch counts and updates: a large tensor spans many blocks, and its count
    # must still advance by exactly one a step, as on the CPU
    rng = np.random.default_rng(5)
    starts = [rng.standard_normal(s) for s in ((700, 1500), (3,), (40, 9))]
    results = []
    for where in ("cpu", device):
        params = [tg.Tensor(a.copy(), device=where, requires_grad=True) for a in starts]
        opt = getattr(tg.optim, name)(params, lr=0.01)
        for _ in range(4):
            opt.zero_grad()
            sum((p ** 2).sum() for p in params).backward()
            opt.step()
        assert [int(state["step"]) for state in opt.state.values()] == [4, 4, 4]
        results.append([p.numpy() for p in params])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_parameters_without_gradient_are_left_alone(device):
    params, _, _ = fixed_problem(device)
    opt = tg.optim.AdamW(params)
    (params[0] ** 2).sum().backward()
    opt.step()
    assert opt.steps == [1, 0] and opt.exp_avgs[1] is None
    np.testing.assert_array_equal(params[1].numpy(), START[1])


def test_a_first_adam_update_is_not_captured_and_changes_nothing(device, monkeypatch):
    from tinygrad_gpu.jit import capture_state

    params, loss, _ = fixed_problem(device)
    opt = tg.optim.Adam(params)
    loss().backward()
    monkeypatch.setattr(capture_state, "active", True)  # as while tg.jit records a CUDA graph
    with pytest.raises(tg.CaptureError, match="creates a parameter's state on its first update"):
        opt.step()
    assert opt.steps == [0, 0] and opt.state_dict()["state"] == {}
    np.testing.assert_array_equal(params[0].numpy(), START[0])


@pytest.mark.parametrize("make", [lambda ps: tg.optim.Adam(ps, lr=0.1),
                                  lambda ps: tg.optim.SGD(ps, lr=0.1, momentum=0.9)], ids=["Adam", "SGD"])
def test_strided_and_mixed_dtype_parameters_update_like_one_at_a_time(device, make):
    def train(together):
        p32 = tg.Tensor(START[1].copy(), device=device, dtype=np.float32, requires_grad=True)
        p64 = tg.Tensor(START[0].copy(), device=device, dtype=np.float64, requires_grad=True)
        p32.array = p32.array.T  # a strided view: the multi-tensor launch falls back to one per tensor
        opts = [make([p32, p64])] if together else [make([p32]), make([p64])]
        for _ in range(3):
            for opt in opts:
                opt.zero_grad()
            ((p32 ** 2).sum() + (p64 ** 4).sum()).backward()
            for opt in opts:
                opt.step()
        return p32.numpy(), p64.numpy(), opts

    together, apart = train(True), train(False)
    for a, b in zip(together[:2], apart[:2]):
        np.testing.assert_array_equal(a, b)
    if isinstance(together[2][0], tg.optim.Adam):
        assert together[2][0].steps == [s for opt in apart[2] for s in opt.steps] == [3, 3]


def test_adam_validates_its_settings(device):
    p = [tg.Tensor([1.0], device=device, requires_grad=True)]
    with pytest.raises(ValueError, match="betas must be two numbers in"):
        tg.optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps and weight_decay must be >= 0"):
        tg.optim.AdamW(p, eps=-1.0)
    with pytest.raises(ValueError, match="learning rate must be >= 0"):
        tg.optim.Adam(p, lr=-0.1)


# ---- state_dict / load_state_dict ----------------------------------------------------------------
OPTIMIZERS = {
    "sgd": lambda params: tg.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True),
    "adam": lambda params: tg.optim.Adam(params, lr=0.01, weight_decay=0.01),
    "adamw": lambda params: tg.optim.AdamW(params, lr=0.01),
}


def _train(opt, loss, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_resumes_training_exactly(device, name):
    params, loss, _ = fixed_problem(device)
    opt = OPTIMIZERS[name](params)
    _train(opt, loss, 3)
    saved = opt.state_dict()
    snapshot = {i: {k: v if isinstance(v, int) else v.copy() for k, v in entry.items()}
                for i, entry in saved["state"].items()}
    assert sorted(saved["state"]) == [0, 1] and saved["param_groups"][0]["params"] == [0, 1]
    assert set(saved["state"][0]) == set(opt._state_keys(opt.param_groups[0]))
    resumed, resumed_loss, _ = fixed_problem(device)
    for p, q in zip(resumed, params):
        p.array[...] = q.array
    other = OPTIMIZERS[name](resumed)
    host_state = {"state": {i: {k: v if isinstance(v, int) else tg.Tensor(v).numpy() for k, v in e.items()}
                            for i, e in saved["state"].items()},
                  "param_groups": saved["param_groups"]}
    other.load_state_dict(host_state)  # NumPy arrays are accepted on any device
    _train(opt, loss, 2)
    _train(other, resumed_loss, 2)
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    as_host = lambda v: v if isinstance(v, int) else tg.Tensor(v).numpy()  # noqa: E731
    for i, entry in snapshot.items():  # the saved state was a copy: later steps left it alone
        for k, v in entry.items():
            np.testing.assert_array_equal(as_host(saved["state"][i][k]), as_host(v))


def test_state_dict_restores_settings_and_an_empty_state(device):
    params, loss, _ = fixed_problem(device)
    fresh = tg.optim.Adam(params, lr=0.5).state_dict()
    assert fresh == {"state": {}, "param_groups": [{"lr": 0.5, "betas": (0.9, 0.999), "eps": 1e-8,
                                                    "weight_decay": 0.0, "amsgrad": False,
                                                    "params": [0, 1]}]}
    opt = tg.optim.Adam(params, lr=0.01)
    _train(opt, loss, 2)
    opt.load_state_dict(fresh)
    assert opt.lr == 0.5 and opt.steps == [0, 0] and opt.exp_avgs == [None, None]


def _state_with(opt, change):
    state = opt.state_dict()
    change(state)
    return state


@pytest.mark.parametrize("change,error,message", [
    (lambda s: s.pop("state"), ValueError, "expected a dict with keys"),
    (lambda s: s["param_groups"][0].update(params=[0]), ValueError, "the state is for 1 parameters, this"),
    (lambda s: s["param_groups"][0].pop("eps"), ValueError, r"settings missing \['eps'\]"),
    (lambda s: s["param_groups"][0].update(betas=(1.5, 0.9)), ValueError, "betas must be two numbers"),
    (lambda s: s["state"][0].pop("exp_avg"), ValueError, "state of parameter 0 must have the keys"),
    (lambda s: s["state"][1].update(exp_avg=np.zeros(4)), ValueError,
     r"exp_avg of parameter 1 has shape \(4,\), the parameter has shape \(2, 2\)"),
    (lambda s: s["state"][0].update(step=0), ValueError, "step of parameter 0 must be an int >= 1"),
    (lambda s: s["state"].update({5: {}}), ValueError, "parameter index 5 is out of range"),
])
def test_load_state_dict_checks_everything_before_changing_anything(device, change, error, message):
    params, loss, _ = fixed_problem(device)
    opt = tg.optim.Adam(params, lr=0.01)
    _train(opt, loss, 2)
    bad = _state_with(opt, change)
    before = opt.state_dict()
    with pytest.raises(error, match=message):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"] and opt.steps == [2, 2]
    np.testing.assert_array_equal(tg.Tensor(after["state"][1]["exp_avg"]).numpy(),
                                  tg.Tensor(before["state"][1]["exp_avg"]).numpy())


def test_sgd_state_dict_holds_momentum_buffers(device):
    params, loss, gradient = fixed_problem(device)
    opt = tg.optim.SGD(params, lr=0.01, momentum=0.5)
    assert opt.state_dict()["state"] == {}
    _train(opt, loss, 1)
    state = opt.state_dict()
    assert state["param_groups"] == [{"lr": 0.01, "momentum": 0.5, "dampening": 0.0, "weight_decay": 0.0,
                                      "nesterov": False, "params": [0, 1]}]
    first_gradient = gradient(START)  # after one step the buffer is the first gradient
    for i in (0, 1):
        np.testing.assert_allclose(tg.Tensor(state["state"][i]["momentum_buffer"]).numpy(), first_gradient[i])
    with pytest.raises(ValueError, match=r"must have the keys \['momentum_buffer'\]"):
        opt.load_state_dict(state | {"state": {0: {"step": 1}}})
    with pytest.raises(ValueError,
                       match=r"settings missing \['momentum', 'nesterov'\], unexpected \['amsgrad', 'betas'"):
        opt.load_state_dict(tg.optim.Adam(params).state_dict())
    assert math.isclose(opt.lr, 0.01)
