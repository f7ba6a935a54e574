"""tg.jit: methods, keyword arguments, steps that close over their tensors, and the eager fallback."""

import gc
import importlib
import warnings
import weakref

import numpy as np
import pytest

import tinygrad_gpu as tg

jit_module = importlib.import_module("tinygrad_gpu.jit")  # tg.jit is the decorator

XS = [[0, 0], [0, 1], [1, 0], [1, 1]]
YS = [[0], [1], [1], [0]]


class Trainer:
    """A model, its optimizer and a jitted step as a method."""

    def __init__(self, device, seed=3):
        tg.manual_seed(seed)
        self.model = tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.Tanh(),
                                      tg.nn.Linear(4, 1, device=device))
        self.opt = tg.optim.SGD(self.model.parameters(), lr=0.1)

    def eager_step(self, x, *, target):
        self.opt.zero_grad()
        loss = tg.nn.MSELoss()(self.model(x), target)
        loss.backward()
        self.opt.step()
        return loss

    step = tg.jit(eager_step)


def test_jit_on_a_method_with_a_keyword_argument(device):
    eager, jitted = Trainer(device), Trainer(device)
    other = Trainer(device, seed=5)
    x, y = tg.Tensor(XS, device=device), tg.Tensor(YS, device=device)
    for i in range(6):
        expected = eager.eager_step(x, target=y).item()
        assert jitted.step(x, target=y).item() == pytest.approx(expected, rel=1e-5, abs=1e-7), i
        other.step(x, target=y)  # its own warm-up and graph
    bound = Trainer.__dict__["step"]._per_instance.get(jitted, "step")
    assert bound.captured and bound.calls >= 3
    for a, b in zip(eager.model.parameters(), jitted.model.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-7)


def test_jit_does_not_keep_instances_alive(device):
    states = Trainer.__dict__["step"]._per_instance
    gc.collect()
    before = len(states)
    trainer = Trainer(device)
    trainer.step(tg.Tensor(XS, device=device), target=tg.Tensor(YS, device=device))
    assert len(states) == before + 1
    ref = weakref.ref(trainer)
    del trainer
    gc.collect()
    assert ref() is None and len(states) == before


def test_jit_keyword_arguments_of_a_function(device):
    w = tg.Tensor([[1.0], [2.0]], device=device, requires_grad=True)
    step = tg.jit(lambda x, scale=1.0: ((x @ w) * scale).sum())
    x = tg.Tensor(XS, device=device)
    results = [step(x, scale=2.0).item() for _ in range(4)]
    assert results == [12.0] * 4
    assert step.captured, step.reason  # a CUDA graph, or the CPU tape


def test_a_step_without_arguments_is_seen_and_captured_on_the_gpu(device, monkeypatch):
    trainer, eager = Trainer(device), Trainer(device)
    x, y = tg.Tensor(XS, device=device), tg.Tensor(YS, device=device)  # static buffers it closes over
    seen = []
    original = jit_module._DeviceWatch.append
    monkeypatch.setattr(jit_module._DeviceWatch, "append",
                        lambda self, entry: (seen.append(entry[0]), original(self, entry)))

    @tg.jit
    def step():
        return trainer.eager_step(x, target=y)

    for i in range(6):
        expected = eager.eager_step(x, target=y).item()
        assert step().item() == pytest.approx(expected, rel=1e-5, abs=1e-7), i
    assert seen  # the warm-up saw the ops of the tensors the step closes over
    assert step.on_gpu == (device == "cuda")
    assert step.captured and step.reason is None


def test_a_step_that_cannot_be_captured_runs_eagerly_with_one_warning():
    if tg.cuda_available():
        pytest.skip("on a GPU this step would be captured")
    trainer, eager = Trainer("cpu"), Trainer("cpu")
    x, y = tg.Tensor(XS), tg.Tensor(YS)
    step = tg.jit(lambda: trainer.eager_step(x, target=y))
    step()
    step.on_gpu = True  # as if the warm-up had touched the GPU; the capture then fails here
    eager.eager_step(x, target=y)
    with pytest.warns(tg.CaptureWarning, match="runs eagerly") as caught:
        for _ in range(5):
            assert step().item() == pytest.approx(eager.eager_step(x, target=y).item(), rel=1e-6)
    assert len([w for w in caught if issubclass(w.category, tg.CaptureWarning)]) == 1
    assert not step.captured and "cuda" in step.reason


def test_a_cpu_step_is_replayed_from_its_tape_without_a_warning():
    w = tg.Tensor([1.0, 2.0], device="cpu", requires_grad=True)
    step = tg.jit(lambda: (w * w).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [step().item() for _ in range(4)] == [5.0] * 4
    assert step.captured and step.reason is None and not step.on_gpu


def test_a_captured_step_refuses_other_keywords():
    if not tg.cuda_available():
        pytest.skip("needs a GPU")
    w = tg.Tensor([[1.0], [2.0]], device="cuda", requires_grad=True)
    step = tg.jit(lambda x=None, z=None: ((x if x is not None else z) @ w).sum())
    x = tg.Tensor(XS, device="cuda")
    for _ in range(4):
        assert step(x=x).item() == 6.0
    assert step.captured
    with pytest.raises(ValueError, match="keywords"):
        step(z=x)
