"""Threads: two models trained at once give the results of training them one after the other."""

import sys
import threading

import numpy as np

import tinygrad_gpu as tg


def build(seed, device):
    """A model, its optimizer and its data, all determined by `seed`."""
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = tg.Tensor(rng.standard_normal((16, 4)), device=device)
    y = tg.Tensor(rng.uniform(0, 1, (16, 1)), device=device)
    model = tg.nn.Sequential(tg.nn.Linear(4, 8, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(8, 1, device=device), tg.nn.Sigmoid())
    return model, tg.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), x, y


def train(run, steps, device):
    """Train in place; every step also makes a NaN that is no part of the loss (see the test)."""
    model, opt, x, y = run
    for _ in range(steps):
        opt.zero_grad()
        loss = tg.nn.MSELoss()(model(x), y)
        loss.backward()
        opt.step()
        tg.Tensor([-1.0], device=device).log()  # would raise if another thread's anomaly mode leaked
    return [p.numpy() for p in model.parameters()] + [loss.numpy()]


def test_two_threads_training_at_once_match_one_after_the_other(device):
    steps = 200
    sequential = [train(build(seed, device), steps, device) for seed in (1, 2)]

    runs = [build(seed, device) for seed in (1, 2)]
    results, errors = [None, None], []
    stop = threading.Event()
    flips = {"no_grad": 0, "anomalies": 0}
    start = threading.Barrier(3)

    def worker(index):
        try:
            start.wait()
            results[index] = train(runs[index], steps, device)
        except BaseException as exc:  # reported below: an exception in a thread would vanish
            errors.append(exc)

    def meddler():  # turns no_grad and anomaly mode on and off in its own thread all along
        start.wait()
        bad = tg.Tensor([-1.0], device=device, requires_grad=True)
        while not stop.is_set():
            with tg.no_grad():
                assert not (bad * 2).requires_grad
                flips["no_grad"] += 1
            with tg.detect_anomaly():
                try:
                    bad.log()
                except tg.AnomalyError:
                    flips["anomalies"] += 1

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so that the steps really interleave
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
        other = threading.Thread(target=meddler)
        for thread in threads + [other]:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        other.join()
    finally:
        sys.setswitchinterval(previous)
    assert not errors, errors
    assert flips["no_grad"] > 0 and flips["anomalies"] == flips["no_grad"]
    for got, expected in zip(results, sequential):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
