"""Learning-rate schedules against torch.optim.lr_scheduler; rates kept in device memory."""

import math

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import kernels as K

torch = pytest.importorskip("torch")
S, TS = tg.optim.lr_scheduler, torch.optim.lr_scheduler


def two_groups(device, library, name="SGD", **settings):
    """An optimizer with two parameter groups (lr 0.1 and 0.03) in `library` (tg or torch)."""
    if library is torch:
        params = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    else:
        params = [
            tg.Tensor(np.zeros(2), device=device, requires_grad=True),
            tg.Tensor(np.zeros(3), device=device, requires_grad=True),
        ]
    return getattr(library.optim, name)(
        [{"params": params[:1]}, {"params": params[1:], "lr": 0.03}], lr=0.1, **settings
    )


def with_sequential(lib, opt):
    sched = lib.optim.lr_scheduler
    warmup = sched.LinearLR(opt, start_factor=0.1, total_iters=10)
    return sched.SequentialLR(
        opt, [warmup, sched.CosineAnnealingLR(opt, T_max=90, eta_min=1e-4)], milestones=[10]
    )


SCHEDULES = {
    "StepLR": lambda lib, opt: lib.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5),
    "MultiStepLR": lambda lib, opt: lib.optim.lr_scheduler.MultiStepLR(opt, [5, 20, 20, 60], gamma=0.3),
    "ExponentialLR": lambda lib, opt: lib.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97),
    "CosineAnnealingLR": lambda lib, opt: lib.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=30, eta_min=0.001
    ),
    "CosineToZero": lambda lib, opt: lib.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100),
    "LambdaLR": lambda lib, opt: lib.optim.lr_scheduler.LambdaLR(
        opt, [lambda e: 0.95**e, lambda e: 1 / (1 + e)]
    ),
    "LinearLR": lambda lib, opt: lib.optim.lr_scheduler.LinearLR(
        opt, start_factor=0.2, end_factor=0.9, total_iters=40
    ),
    "OneCycleLR": lambda lib, opt: lib.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.5, 0.2], total_steps=101),
    "OneCycleLR-linear-3": lambda lib, opt: lib.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=0.4,
        epochs=10,
        steps_per_epoch=11,
        anneal_strategy="linear",
        three_phase=True,
        pct_start=0.25,
    ),
    "SequentialLR": with_sequential,
}


def _step_both(opt, topt):
    opt.step()  # (no gradients: nothing moves, but torch wants its optimizer stepped first)
    topt.step()


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_100_steps_of_rates_follow_torch(device, name, optimizer):
    settings = {"momentum": 0.9} if optimizer == "SGD" else {}
    opt, topt = (
        two_groups(device, tg, optimizer, **settings),
        two_groups(device, torch, optimizer, **settings),
    )
    ours, theirs = SCHEDULES[name](tg, opt), SCHEDULES[name](torch, topt)
    key = "momentum" if optimizer == "SGD" else "betas"
    for step in range(100):
        np.testing.assert_allclose(
            ours.get_last_lr(), theirs.get_last_lr(), rtol=1e-12, atol=1e-15, err_msg=f"step {step}"
        )
        np.testing.assert_allclose(
            [g["lr"] for g in opt.param_groups], [g["lr"] for g in topt.param_groups], rtol=1e-12, atol=1e-15
        )
        for g, t in zip(opt.param_groups, topt.param_groups):  # OneCycleLR cycles momentum / beta1
            np.testing.assert_allclose(g[key], t[key], rtol=1e-12)
        _step_both(opt, topt)
        ours.step()
        theirs.step()


def test_reduce_on_plateau_follows_torch_with_a_scripted_metric(device):
    opt, topt = two_groups(device, tg), two_groups(device, torch)
    settings = dict(factor=0.5, patience=2, threshold=0.01, cooldown=1, min_lr=[0.01, 0.005])
    ours, theirs = S.ReduceLROnPlateau(opt, **settings), TS.ReduceLROnPlateau(topt, **settings)
    metrics = [1.0, 0.9, 0.95, 0.9, 0.91, 0.89, 0.89, 0.7, 0.71, 0.72, 0.73, 0.74] * 8 + [0.5, 0.6, 0.6, 0.6]
    rates = []
    for k, metric in enumerate(metrics):
        _step_both(opt, topt)
        # a 0-d tensor works as well as a number
        ours.step(tg.Tensor(metric, device=device) if k % 2 else metric)
        theirs.step(metric)
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
        rates.append(ours.get_last_lr()[0])
    assert len(set(rates)) > 3  # it did reduce, several times, down to the floor
    assert rates[-1] == 0.01
    max_mode = S.ReduceLROnPlateau(opt, mode="max", threshold_mode="abs", patience=0)
    tmax = TS.ReduceLROnPlateau(topt, mode="max", threshold_mode="abs", patience=0)
    for metric in [1.0, 2.0, 1.5, 1.5, 3.0, 2.0]:
        max_mode.step(metric)
        tmax.step(metric)
        assert max_mode.get_last_lr() == pytest.approx(tmax.get_last_lr(), rel=1e-12)
    with pytest.raises(TypeError, match="metric must be a number"):
        max_mode.step("loss")


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "SequentialLR", "LinearLR"])
def test_state_dict_round_trip_mid_schedule(device, name):
    def build():
        opt = two_groups(device, tg, "Adam")
        return opt, SCHEDULES[name](tg, opt)

    opt, sched = build()
    for _ in range(37):
        opt.step()
        sched.step()
    saved = (opt.state_dict(), sched.state_dict())
    expected = []
    for _ in range(20):
        opt.step()
        sched.step()
        expected.append((sched.get_last_lr(), [g["betas"] for g in opt.param_groups]))
    other_opt, other = build()
    other_opt.load_state_dict(saved[0])
    other.load_state_dict(saved[1])
    got = []
    for _ in range(20):
        other_opt.step()
        other.step()
        got.append((other.get_last_lr(), [g["betas"] for g in other_opt.param_groups]))
    assert got == expected


def test_reduce_on_plateau_state_round_trip(device):
    opt = two_groups(device, tg)
    sched = S.ReduceLROnPlateau(opt, patience=1)
    for metric in [3.0, 2.0, 2.0]:
        sched.step(metric)
    saved = sched.state_dict()
    other = S.ReduceLROnPlateau(two_groups(device, tg), patience=1)
    other.load_state_dict(saved)
    assert other.best == 2.0 and other.num_bad_epochs == 1
    with pytest.raises(ValueError, match="unexpected entries"):
        other.load_state_dict({**saved, "bogus": 1})


def test_schedulers_check_their_arguments():
    opt = two_groups("cpu", tg)
    with pytest.raises(TypeError, match="is not an Optimizer"):
        S.StepLR("sgd", step_size=3)
    with pytest.raises(ValueError, match="step_size must be a positive int"):
        S.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="total_steps"):
        S.OneCycleLR(opt, max_lr=0.1)
    with pytest.raises(ValueError, match="expected 2 values for max_lr"):
        S.OneCycleLR(opt, max_lr=[0.1], total_steps=10)
    with pytest.raises(ValueError, match="one milestone fewer"):
        S.SequentialLR(opt, [S.StepLR(opt, 2)], milestones=[3])
    one_cycle = S.OneCycleLR(opt, max_lr=0.1, total_steps=2)
    one_cycle.step()
    one_cycle.step()
    with pytest.raises(ValueError, match="total_steps is 2"):
        one_cycle.step()


def test_a_schedule_rewrites_the_same_device_buffer_a_captured_step_reads(device, monkeypatch):
    """The rate a step's kernels read lives in one device buffer per group, rewritten in place."""
    from tinygrad_gpu.jit import capture_state

    seen, buffers = [], []
    original = K.SGD_MOMENTUM_STEP.foreach

    def recording(arrays, scalars):
        if arrays["param"][0] is w.array:  # the captured optimizer's calls, not the eager reference's
            buffers.append((scalars["lr"], scalars["momentum"]))
            if not capture_state.active:  # (a read-back would break a CUDA graph capture)
                seen.append((float(scalars["lr"]), float(scalars["momentum"])))
        original(arrays, scalars)

    monkeypatch.setattr(K.SGD_MOMENTUM_STEP, "foreach", recording)
    w = tg.Tensor(np.ones(3), device=device, requires_grad=True)
    opt = tg.optim.SGD([w], lr=0.1, momentum=0.9)
    schedule = S.OneCycleLR(opt, max_lr=1.0, total_steps=10)

    def train_step(x):
        opt.zero_grad()
        (w * w * x).sum().backward()
        opt.step()
        return w

    step = tg.jit(train_step)
    x = tg.Tensor(np.ones(3), device=device)
    eager = tg.Tensor(np.ones(3), device=device, requires_grad=True)
    eager_opt = tg.optim.SGD([eager], lr=0.1, momentum=0.9)
    eager_schedule = S.OneCycleLR(eager_opt, max_lr=1.0, total_steps=10)
    for _ in range(6):
        step(x)
        schedule.step()
        eager_opt.zero_grad()
        (eager * eager * x).sum().backward()
        eager_opt.step()
        eager_schedule.step()
    # one buffer per setting, never replaced: the replays of the captured step (a CUDA graph, or
    # the CPU tape, which calls the row per tensor and no longer foreach) read it
    assert len(buffers) >= 3 and all(b[0] is buffers[0][0] and b[1] is buffers[0][1] for b in buffers)
    rates = _one_cycle_rates(10)
    assert [s[0] for s in seen] == pytest.approx(rates[: len(seen)], rel=1e-6)
    assert len({s[1] for s in seen}) == len(seen)  # momentum cycles too, in the same buffer
    assert step.captured, step.reason
    # the schedule already wrote the next rate into the buffer; the captured step followed it
    assert float(buffers[0][0]) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
    np.testing.assert_allclose(w.numpy(), eager.numpy(), rtol=1e-6)


def _one_cycle_rates(total):
    w = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    sched = TS.OneCycleLR(topt, max_lr=1.0, total_steps=total)
    rates = []
    for _ in range(total - 1):
        rates.append(topt.param_groups[0]["lr"])
        topt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad"])
def test_a_captured_step_follows_a_schedule_like_an_eager_one(device, name):
    results = []
    for use_jit in (False, True):
        tg.manual_seed(3)
        model = tg.nn.Linear(3, 1, device=device)
        settings = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
        opt = getattr(tg.optim, name)(model.parameters(), lr=0.05, **settings)
        schedule = S.CosineAnnealingLR(opt, T_max=8)
        x = tg.Tensor(np.arange(12.0).reshape(4, 3) / 10, device=device)
        y = tg.Tensor(np.ones((4, 1)), device=device)

        def raw(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = tg.nn.MSELoss()(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.jit(raw) if use_jit else raw
        losses = []
        for _ in range(8):
            losses.append(step(x, y).item())
            schedule.step()
        results.append((losses, [p.numpy() for p in model.parameters()]))
        if use_jit and device == "cuda":
            assert step.captured, step.reason
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert math.isclose(opt.lr, 0.0, abs_tol=1e-12)
