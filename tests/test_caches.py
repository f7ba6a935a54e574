"""Every cache of the package is bounded (least recently used dropped first), and results stay
right after an entry was dropped and has to be rebuilt."""

import importlib
import threading

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import caches, fused_kernels, fusion
from tinygrad_gpu import kernels as K
from tinygrad_gpu.nn import functional, modules

tensor_module = importlib.import_module("tinygrad_gpu.tensor")


def test_lru_keeps_the_most_recently_used_entries():
    lru = caches.LRU(3)
    for key in "abcd":
        lru[key] = key.upper()
    assert lru.keys() == ["b", "c", "d"] and len(lru) == 3 and "a" not in lru
    assert lru.get("b") == "B"  # now the most recent: "c" goes next
    lru["e"] = "E"
    assert lru.keys() == ["d", "b", "e"]
    assert lru.get("c", "gone") == "gone"
    with pytest.raises(ValueError, match="at least 1"):
        caches.LRU(0)


def test_lru_hands_what_it_serves_to_a_recording_graph():
    lru = caches.LRU(2)
    lru["a"] = 1
    kept = []
    caches.keep_alive.target = kept
    try:
        lru.get("a")
        lru["b"] = 2
        lru.get("missing")
    finally:
        caches.keep_alive.target = None
    assert kept == [1, 2]


def test_lru_is_safe_across_threads():
    lru = caches.LRU(8)

    def work(offset):
        for i in range(2000):
            lru[(offset, i % 20)] = i
            lru.get((offset, (i * 7) % 20))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lru) == 8


def _mse_by_hand(p, y):
    return ((p - y) ** 2).sum() * (1.0 / p.size)


def test_fused_programs_are_bounded_and_rebuilt_correctly(device):
    bound = fusion.PROGRAMS_PER_FUNCTION
    mse = functional._squared_error["mean"]
    rng = np.random.default_rng(0)
    layer = tg.nn.Linear(3, 2, device=device, dtype=np.float64)
    for batch in range(1, bound + 30):  # a new batch size every step
        x = tg.Tensor(rng.standard_normal((batch, 3)), device=device)
        loss = tg.nn.MSELoss()(layer(x), tg.Tensor(np.zeros((batch, 2)), device=device))
        loss.backward()
        assert len(mse._programs) <= bound and len(modules._affine._programs) <= bound
    layer.zero_grad()
    # batch size 1 was dropped long ago: traced again, and still right
    x = tg.Tensor(rng.standard_normal((1, 3)), device=device)
    target = tg.Tensor(np.ones((1, 2)), device=device)
    loss = tg.nn.MSELoss()(layer(x), target)
    loss.backward()
    fused_grads = [p.grad.numpy() for p in layer.parameters()]
    layer.zero_grad()
    by_hand = _mse_by_hand(x @ layer.weight.T + layer.bias, target)
    by_hand.backward()
    np.testing.assert_allclose(loss.item(), by_hand.item(), rtol=1e-12)
    for got, p in zip(fused_grads, layer.parameters()):
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-12)


def test_backward_variants_of_a_program_are_bounded(device):
    fused = tg.fuse(lambda a, b, c, d, e: a * b + c * d - e)
    arrays = [np.full(3, float(k + 1)) for k in range(5)]
    for mask in range(1, 32):  # every set of inputs that may need a gradient
        inputs = [tg.Tensor(a, device=device, requires_grad=bool(mask >> k & 1))
                  for k, a in enumerate(arrays)]
        fused(*inputs).sum().backward()
        for k, t in enumerate(inputs):
            expected = {0: arrays[1], 1: arrays[0], 2: arrays[3], 3: arrays[2], 4: -np.ones(3)}[k]
            if t.requires_grad:
                np.testing.assert_allclose(t.grad.numpy(), expected)
    (program,) = [fused._programs.get(k) for k in fused._programs.keys()]
    assert len(program._backward_rows) <= fusion.BACKWARD_VARIANTS
    assert len(program._chain_needed) <= fusion.BACKWARD_VARIANTS


def test_compiled_kernels_are_bounded_and_rebuilt_correctly(device, monkeypatch):
    assert isinstance(K._streaming_cache, caches.LRU)
    assert K._streaming_cache.maxsize == K.STREAMING_KERNELS
    small = caches.LRU(4)
    monkeypatch.setattr(K, "_streaming_cache", small)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000)
    ops = [lambda t: t.exp(), lambda t: t.tanh(), lambda t: t.sigmoid(), lambda t: t * 3.0,
           lambda t: t.abs(), lambda t: t - 1.0, lambda t: t.relu(), lambda t: -t]
    for _ in range(2):  # the second round rebuilds what the first one's later ops dropped
        for dtype in (np.float32, np.float64):
            t = tg.Tensor(x, device=device, dtype=dtype)
            for op in ops:
                expected = op(tg.Tensor(x.astype(dtype))).numpy()
                np.testing.assert_allclose(op(t).numpy(), expected, rtol=1e-6)
                assert len(small) <= 4


def test_fused_one_launch_kernels_are_bounded_per_program(device, monkeypatch):
    monkeypatch.setattr(fused_kernels, "KERNELS_PER_PROGRAM", 2)
    fused = tg.fuse(lambda x, w, e: ((x @ w) * e).tanh())
    rng = np.random.default_rng(2)
    x = tg.Tensor(rng.standard_normal((4, 3)), device=device, requires_grad=True)
    w = tg.Tensor(rng.standard_normal((3, 4)), device=device, requires_grad=True)
    wide = tg.Tensor(rng.standard_normal((4, 8)), device=device)
    views = [wide[:, :4], wide[:, :4].T, wide[:, ::2], wide[:, 4:]]  # other strides, one shape
    for _ in range(2):
        for e in views:
            x.grad = w.grad = None
            out = fused(x, w, e)
            out.sum().backward()
            got = [out.numpy(), x.grad.numpy(), w.grad.numpy()]
            x.grad = w.grad = None
            by_hand = ((x @ w) * e).tanh()
            by_hand.sum().backward()
            for a, b in zip(got, [by_hand.numpy(), x.grad.numpy(), w.grad.numpy()]):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    (program,) = [fused._programs.get(k) for k in fused._programs.keys()]
    kernels = program.__dict__.get("gpu_kernels")
    assert (kernels is None) == (device == "cpu")
    assert kernels is None or len(kernels) <= 2


def test_backward_seeds_are_bounded(device):
    seeds = tensor_module._seeds
    assert isinstance(seeds, caches.LRU) and seeds.maxsize == tensor_module.SEEDS
    for dtype in (np.float32, np.float64):
        for ndim in range(tensor_module.SEEDS + 10):  # shapes (), (1,), (1, 1), ...
            x = tg.Tensor(np.full((1,) * ndim, 2.0), device=device, dtype=dtype, requires_grad=True)
            (x * 3.0).backward()
            assert x.grad.numpy().tolist() == np.full((1,) * ndim, 3.0).tolist()
            assert len(seeds) <= tensor_module.SEEDS
    # a dropped seed that became a .grad is that tensor's own: later backward calls leave it be
    first = tg.Tensor(2.0, device=device, requires_grad=True)
    first.backward()
    other = tg.Tensor(5.0, device=device, requires_grad=True)
    (other * 4.0).backward()
    assert first.grad.item() == 1.0 and other.grad.item() == 4.0
