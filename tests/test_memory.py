"""Steady memory: graphs are freed by reference counting alone, and long training does not grow."""

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import tinygrad_gpu as tg


def small_mlp(device):
    """A model, and a function running one training step of it (returning the loss)."""
    tg.manual_seed(0)
    rng = np.random.default_rng(0)
    x = tg.Tensor(rng.standard_normal((8, 4)), device=device)
    y = tg.Tensor(rng.uniform(0, 1, (8, 1)), device=device)
    model = tg.nn.Sequential(tg.nn.Linear(4, 16, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(16, 1, device=device), tg.nn.Sigmoid())
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = tg.nn.MSELoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


class _NoCollector:
    """Within the block the cyclic garbage collector is off: only reference counting frees memory."""

    def __enter__(self):
        gc.collect()
        gc.disable()

    def __exit__(self, *exc):
        gc.enable()


def test_graph_is_freed_once_the_loss_is_dropped_after_backward(device):
    x = tg.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    with _NoCollector():
        hidden = (x * 2.0 + 3.0).log()
        saved = hidden.grad_fn.x  # an intermediate array (x * 2 + 3) the Log node saved for backward
        watch_tensor, watch_array = weakref.ref(hidden), weakref.ref(saved)
        loss = (hidden * hidden).sum()
        del hidden, saved
        assert watch_tensor() is not None  # alive: the graph holds it until backward
        loss.backward()
        assert watch_array() is None  # backward released the saved arrays at once
        del loss
        assert watch_tensor() is None


def test_graph_kept_for_a_second_backward_dies_with_its_loss(device):
    x = tg.Tensor(np.ones(3), device=device, requires_grad=True)
    with _NoCollector():
        hidden = x.exp()
        watch = weakref.ref(hidden)
        loss = hidden.tanh().sum()
        del hidden
        loss.backward(retain_graph=True)
        assert watch() is not None
        del loss
        assert watch() is None


def test_graph_dropped_without_backward_is_freed(device):
    x = tg.Tensor(np.ones(3), device=device, requires_grad=True)
    with _NoCollector():
        hidden = x * 3.0
        watch = weakref.ref(hidden)
        loss = (hidden.relu() @ hidden).sum()
        del hidden, loss
        assert watch() is None


def test_training_creates_no_reference_cycles(device):
    _, step = small_mlp(device)
    step()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds in gc.garbage, to name it
    try:
        with _NoCollector():
            for _ in range(50):
                step()
            with tg.detect_anomaly():
                step()
            found = gc.collect()
        cycles = [type(obj).__name__ for obj in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert found == 0, f"training steps left reference cycles: {cycles[:20]}"


def test_host_and_device_memory_stay_flat_over_training(device):
    _, step = small_mlp(device)
    for _ in range(2500):  # warm-up: NumPy's and the library's bounded caches fill (~70 kB here)
        step()
    pool = None
    if device == "cuda":
        import cupy

        pool = cupy.get_default_memory_pool()
    tracemalloc.start()
    try:
        for _ in range(50):  # tracemalloc's own bookkeeping settles
            step()
        host_before = tracemalloc.get_traced_memory()[0]
        device_before = pool.used_bytes() if pool else 0
        for _ in range(1500):
            loss = step()
        del loss
        host_after = tracemalloc.get_traced_memory()[0]
        device_after = pool.used_bytes() if pool else 0
    finally:
        tracemalloc.stop()
    # one leaked tensor or node per step would add well over 100 kB over 1500 steps
    assert host_after - host_before < 16 * 1024, f"host memory grew by {host_after - host_before} bytes"
    assert device_after - device_before <= 0, f"device memory grew by {device_after - device_before} bytes"


@pytest.mark.parametrize("retain", [False, True])
def test_released_graph_keeps_no_arrays(device, retain):
    x = tg.Tensor(np.ones(4), device=device, requires_grad=True)
    y = (x.exp() * x).sum()
    nodes = [y.grad_fn, y.grad_fn.inputs[0].grad_fn]
    y.backward(retain_graph=retain)
    for node in nodes:
        assert (not vars(node) and node.inputs == ()) != retain
