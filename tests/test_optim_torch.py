"""Optimizers against torch.optim over 100 steps; parameter groups; all-or-nothing steps; lr = 0."""

import numpy as np
import pytest

import tinygrad_gpu as tg

torch = pytest.importorskip("torch")

START = [np.array([1.0, -2.0, 0.5, 0.1]), np.array([[0.3, -0.7], [1.5, 0.0]]), np.array([0.2, -0.4, 2.0])]


def gradient(index, values):
    """The gradient of a fixed smooth loss, different per parameter: a**4/4, 3 b**2/2, sin(c)."""
    return [values**3, 3.0 * values, np.cos(values)][index]


def run_both(device, name, groups_settings, defaults, steps=100):
    """Train our optimizer and torch's side by side on START; return both parameter lists."""
    ours = [tg.Tensor(v.copy(), device=device, dtype=np.float64, requires_grad=True) for v in START]
    theirs = [torch.tensor(v.copy(), requires_grad=True) for v in START]
    if groups_settings is None:
        opt, topt = getattr(tg.optim, name)(ours, **defaults), getattr(torch.optim, name)(theirs, **defaults)
    else:  # parameter 0 alone, parameters 1 and 2 together, each group with its own settings
        split = lambda ps: [ps[:1], ps[1:]]  # noqa: E731
        opt = getattr(tg.optim, name)(
            [{"params": ps, **s} for ps, s in zip(split(ours), groups_settings)], **defaults
        )
        topt = getattr(torch.optim, name)(
            [{"params": ps, **s} for ps, s in zip(split(theirs), groups_settings)], **defaults
        )
    for _ in range(steps):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            p.grad = tg.Tensor(gradient(i, p.numpy()), device=device)
            q.grad = torch.tensor(gradient(i, q.detach().numpy()))
        opt.step()
        topt.step()
    return opt, ours, theirs


CASES = [
    ("SGD", None, dict(lr=0.01)),
    ("SGD", None, dict(lr=0.01, momentum=0.9)),
    ("SGD", None, dict(lr=0.01, momentum=0.9, dampening=0.5, weight_decay=0.01)),
    ("SGD", None, dict(lr=0.01, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("SGD", [dict(lr=0.05, momentum=0.5), dict(nesterov=True, momentum=0.9)], dict(lr=0.01)),
    ("Adam", None, dict(lr=0.01)),
    ("Adam", None, dict(lr=0.02, amsgrad=True, weight_decay=0.05, betas=(0.8, 0.99))),
    ("Adam", [dict(amsgrad=True), dict(lr=0.003, betas=(0.5, 0.9), eps=1e-4)], dict(lr=0.01)),
    ("AdamW", None, dict(lr=0.01, amsgrad=True)),
    ("AdamW", [dict(weight_decay=0.0), dict(weight_decay=0.3, amsgrad=True)], dict(lr=0.02)),
    ("RMSprop", None, dict(lr=0.001)),
    ("RMSprop", None, dict(lr=0.001, centered=True)),
    ("RMSprop", None, dict(lr=0.001, momentum=0.9)),
    ("RMSprop", None, dict(lr=0.001, centered=True, momentum=0.5, weight_decay=0.1, alpha=0.9, eps=1e-6)),
    ("RMSprop", [dict(centered=True), dict(momentum=0.7, lr=0.01)], dict(lr=0.002)),
    ("Adagrad", None, dict(lr=0.1)),
    ("Adagrad", None, dict(lr=0.1, lr_decay=0.01)),
    ("Adagrad", None, dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.5, eps=1e-6)),
    # (torch starts every group's sum at the constructor's initial_accumulator_value; ours uses the group's)
    (
        "Adagrad",
        [dict(lr_decay=0.1), dict(weight_decay=0.1, eps=1e-6)],
        dict(lr=0.05, initial_accumulator_value=0.3),
    ),
]


@pytest.mark.parametrize("name,groups,defaults", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_100_steps_follow_torch_optim(device, name, groups, defaults):
    _, ours, theirs = run_both(device, name, groups, defaults)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "name,groups,defaults",
    [CASES[4], CASES[7], CASES[14], CASES[18]],
    ids=["SGD", "Adam", "RMSprop", "Adagrad"],
)
def test_state_dict_matches_torch_layout_and_resumes(device, name, groups, defaults):
    opt, ours, theirs = run_both(device, name, groups, defaults, steps=5)
    saved = opt.state_dict()
    mine = {i: sorted(entry) for i, entry in saved["state"].items()}
    topt = getattr(torch.optim, name)(
        [{"params": theirs[:1], **groups[0]}, {"params": theirs[1:], **groups[1]}], **defaults
    )
    for q in theirs:
        q.grad = torch.ones_like(q)
    topt.step()
    reference = {
        i: sorted(k for k, v in entry.items() if v is not None)
        for i, entry in topt.state_dict()["state"].items()
    }
    assert mine == reference
    assert [g["params"] for g in saved["param_groups"]] == [[0], [1, 2]]
    # a fresh optimizer loading the snapshot continues exactly as the original
    copies = [tg.Tensor(p.numpy(), device=device, requires_grad=True) for p in ours]
    split = [{"params": copies[:1], **groups[0]}, {"params": copies[1:], **groups[1]}]
    other = getattr(tg.optim, name)(split, **defaults)
    other.load_state_dict(saved)
    for _ in range(3):
        for i, (p, q) in enumerate(zip(ours, copies)):
            p.grad = tg.Tensor(gradient(i, p.numpy()), device=device)
            q.grad = tg.Tensor(gradient(i, q.numpy()), device=device)
        opt.step()
        other.step()
    for p, q in zip(ours, copies):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


# ---- parameter groups --------------------------------------------------------------------------
def _params(device, count=2):
    return [tg.Tensor(v.copy(), device=device, requires_grad=True) for v in START[:count]]


def test_param_groups_are_dicts_with_defaults_filled_in(device):
    a, b = _params(device)
    opt = tg.optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[0]["momentum"] == 0.0
    assert opt.param_groups[1]["params"][0] is b
    c = tg.Tensor([1.0], device=device, requires_grad=True)
    opt.add_param_group({"params": [c], "weight_decay": 0.1})
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["lr"] == 0.1
    with pytest.raises(ValueError, match="already in another group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(AttributeError, match="different lr values"):
        _ = opt.lr
    opt.lr = 0.2  # sets every group
    assert [g["lr"] for g in opt.param_groups] == [0.2] * 3
    with pytest.raises(ValueError, match="learning rate must be >= 0"):
        opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        opt.param_groups[0]["nesterov"] = True
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["nesterov"] is False


def test_the_constructor_names_what_it_was_given(device):
    a, b = _params(device)
    with pytest.raises(TypeError, match="not both"):
        tg.optim.SGD([a, {"params": [b]}], lr=0.1)
    with pytest.raises(TypeError, match="got a single dict"):
        tg.optim.SGD({"params": [a]}, lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        tg.optim.Adam([{"params": []}])


def test_single_group_settings_read_as_attributes(device):
    opt = tg.optim.Adam(_params(device), lr=0.01, betas=(0.8, 0.9))
    assert opt.lr == 0.01 and opt.betas == (0.8, 0.9) and opt.amsgrad is False
    opt.lr = 0.5
    assert opt.param_groups[0]["lr"] == 0.5
    params = opt.param_groups[0]["params"]
    assert opt.state[params[0]] == {}
    (params[0] ** 2).sum().backward()
    opt.step()
    assert sorted(opt.state[params[0]]) == ["exp_avg", "exp_avg_sq", "step"] and opt.state[params[1]] == {}


def test_zero_grad_set_to_none_false_zeros_in_place(device):
    a, b = _params(device)
    opt = tg.optim.SGD([a, b], lr=0.1)
    ((a * a).sum() + b.sum()).backward()
    buffer = a.grad.array
    opt.zero_grad(set_to_none=False)
    assert a.grad.array is buffer and not a.grad.numpy().any() and not b.grad.numpy().any()
    opt.zero_grad()
    assert a.grad is None and b.grad is None


# ---- lr = 0 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_a_zero_learning_rate_is_allowed_and_changes_nothing(device, name):
    params = _params(device)
    opt = getattr(tg.optim, name)(params, lr=0.0)
    for _ in range(3):
        opt.zero_grad()
        ((params[0] ** 2).sum() + (params[1] ** 2).sum()).backward()
        opt.step()
    for p, start in zip(params, START):
        np.testing.assert_array_equal(p.numpy(), start)


def test_a_cosine_schedule_may_end_at_zero(device):
    params = _params(device)
    opt = tg.optim.SGD(params, lr=0.1, momentum=0.9)
    schedule = tg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    for _ in range(4):
        opt.zero_grad()
        (params[0] ** 2).sum().backward()
        opt.step()
        schedule.step()
    assert opt.lr == pytest.approx(0.0, abs=1e-18)
    before = params[0].numpy()
    opt.zero_grad()
    (params[0] ** 2).sum().backward()
    opt.step()  # a zero rate: momentum alone would move it, but lr multiplies the whole step
    np.testing.assert_allclose(params[0].numpy(), before, atol=1e-6)


# ---- all or nothing ------------------------------------------------------------------------------
OPTIMIZERS = {
    "SGD": lambda ps: tg.optim.SGD(ps, lr=0.1, momentum=0.9),
    "SGD-plain": lambda ps: tg.optim.SGD(ps, lr=0.1),
    "Adam": lambda ps: tg.optim.Adam(ps, lr=0.1, amsgrad=True),
    "AdamW": lambda ps: tg.optim.AdamW(ps, lr=0.1),
    "RMSprop": lambda ps: tg.optim.RMSprop(ps, lr=0.1, centered=True, momentum=0.5),
    "Adagrad": lambda ps: tg.optim.Adagrad(ps, lr=0.1),
}


def _broken(kind, device):
    good = tg.Tensor(np.ones(3), device=device, dtype=np.float64, requires_grad=True)
    if kind == "read-only":
        bad = tg.Tensor(np.ones((2, 3)), device="cpu", requires_grad=True)
        bad.array.setflags(write=False)  # read-only memory (the constructor copies read-only input)
        good = tg.Tensor(np.ones(3), device="cpu", dtype=np.float64, requires_grad=True)
        bad.grad = tg.Tensor(np.ones((2, 3)), device="cpu")
    else:
        bad = tg.Tensor(np.ones((2, 3)), device=device, dtype=np.float64, requires_grad=True)
        wrong = {"shape": (np.ones(6), np.float64), "dtype": (np.ones((2, 3)), np.float32)}[kind]
        gradient = tg.Tensor(wrong[0], device=device, dtype=wrong[1])
        with pytest.raises((TypeError, ValueError)):  # assigning .grad refuses it already ...
            bad.grad = gradient
        bad._grad = gradient  # ... so it is planted in the engine's slot: the step checks again
    good.grad = tg.Tensor(np.full(3, 0.5), device=good.device, dtype=np.float64)
    return good, bad


@pytest.mark.parametrize(
    "kind,message",
    [
        ("read-only", "is read-only"),
        ("shape", "must match the parameter"),
        ("dtype", "must match the parameter"),
    ],
)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_step_that_cannot_update_every_parameter_updates_none(device, name, kind, message):
    good, bad = _broken(kind, device)
    opt = OPTIMIZERS[name]([good, bad])
    version = good._version
    with pytest.raises(ValueError, match=message + ".*nothing was updated"):
        opt.step()
    np.testing.assert_array_equal(good.numpy(), np.ones(3))
    assert opt.state_dict()["state"] == {} and good._version == version


def test_load_state_dict_refuses_a_malformed_state_and_changes_nothing(device):
    params = _params(device)
    opt = tg.optim.Adam(params, lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        ((params[0] ** 2).sum() + (params[1] ** 2).sum()).backward()
        opt.step()
    before = opt.state_dict()
    for bad, message in [
        ({"state": [], "param_groups": before["param_groups"]}, "'state' to be a dict"),
        ({"state": {}, "param_groups": before["param_groups"] * 2}, "2 parameter groups"),
        ({"state": {}, "param_groups": "x"}, "list of dicts"),
        ({"state": {0: {"step": 1}}, "param_groups": before["param_groups"]}, "must have the keys"),
        (
            {"state": {}, "param_groups": [dict(before["param_groups"][0], amsgrad="yes")]},
            "amsgrad must be True or False",
        ),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"] and opt.steps == [2, 2]
    np.testing.assert_array_equal(
        tg.Tensor(after["state"][0]["exp_avg"]).numpy(), tg.Tensor(before["state"][0]["exp_avg"]).numpy()
    )


def test_an_older_checkpoint_without_the_new_settings_loads(device):
    params = _params(device)
    opt = tg.optim.SGD(params, lr=0.1, momentum=0.9)
    state = opt.state_dict()
    del state["param_groups"][0]["dampening"]  # written before SGD had dampening
    opt.load_state_dict(state)
    assert opt.param_groups[0]["dampening"] == 0.0


def test_settings_cannot_change_inside_a_captured_step(device, monkeypatch):
    from tinygrad_gpu.jit import capture_state

    params = _params(device)
    opt = tg.optim.SGD(params, lr=0.1, momentum=0.9)
    ((params[0] ** 2).sum() + (params[1] ** 2).sum()).backward()
    opt.step()  # the settings' device copies exist from here on
    lr_buffer = opt.param_groups[0].device_scalars(params[0].array)["lr"]
    monkeypatch.setattr(capture_state, "active", True)  # as while tg.jit records a CUDA graph
    with pytest.raises(tg.CaptureError, match="a setting changed inside a captured step"):
        opt.param_groups[0]["lr"] = 0.5
    opt.param_groups[0]["lr"] = 0.1  # the same value writes nothing: allowed
    monkeypatch.setattr(capture_state, "active", False)
    assert opt.lr == 0.1 and float(lr_buffer) == pytest.approx(0.1)
    opt.lr = 0.25  # outside a capture: written in place into the same buffer
    assert opt.param_groups[0].device_scalars(params[0].array)["lr"] is lr_buffer
    assert float(lr_buffer) == 0.25
    with pytest.raises(KeyError, match="cannot be removed"):
        del opt.param_groups[0]["momentum"]


def test_a_group_first_updated_inside_a_capture_refuses(device, monkeypatch):
    from tinygrad_gpu.jit import capture_state

    params = _params(device)
    opt = tg.optim.SGD(params, lr=0.1)
    (params[0] ** 2).sum().backward()
    monkeypatch.setattr(capture_state, "active", True)
    with pytest.raises(tg.CaptureError, match="keeps its settings in device memory"):
        opt.step()
    monkeypatch.setattr(capture_state, "active", False)
    np.testing.assert_array_equal(params[0].numpy(), START[0])
