"""tg.jit: the captured step computes exactly what the eager step computes."""

import warnings

import numpy as np
import pytest
from conftest import training_step

import tinygrad_gpu as tg


def make_xor(device, momentum=0.0):
    tg.manual_seed(3)
    model = tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(4, 1, device=device), tg.nn.Sigmoid())
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    return model, opt, training_step(model, opt, tg.nn.MSELoss())


XS = [[0, 0], [0, 1], [1, 0], [1, 1]]
YS = [[0], [1], [1], [0]]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_jit_matches_eager_step_by_step(device, momentum):
    eager_model, _, eager_step = make_xor(device, momentum)
    jit_model, jit_opt, raw_step = make_xor(device, momentum)
    step = tg.jit(raw_step)
    x, y = tg.Tensor(XS, device=device), tg.Tensor(YS, device=device)
    for i in range(8):
        expected = eager_step(x, y).item()
        got = step(x, y).item()
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), f"step {i}"
    for (name, a), (_, b) in zip(eager_model.named_parameters(), jit_model.named_parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-4, atol=1e-7, err_msg=name)
    assert step.captured, step.reason  # a CUDA graph, or the CPU tape


def test_jit_uses_new_inputs_and_learning_rate(device):
    eager_model, eager_opt, eager_step = make_xor(device)
    _, jit_opt, raw_step = make_xor(device)
    step = tg.jit(raw_step)
    rng = np.random.default_rng(0)
    for i in range(6):
        x = tg.Tensor(rng.random((4, 2)), device=device, dtype=np.float32)
        y = tg.Tensor(rng.random((4, 1)), device=device, dtype=np.float32)
        if i == 4:
            eager_opt.lr = jit_opt.lr = 0.5
        assert step(x, y).item() == pytest.approx(eager_step(x, y).item(), rel=1e-5, abs=1e-7)


def test_jit_reads_inputs_changed_in_place_and_strided_views(device):
    _, _, eager_step = make_xor(device)
    _, _, raw_step = make_xor(device)
    step = tg.jit(raw_step)
    rng = np.random.default_rng(1)
    x = tg.Tensor(np.zeros((4, 2)), device=device, dtype=np.float32)
    y = tg.Tensor(YS, device=device)
    for i in range(8):
        values = rng.random((4, 2)).astype(np.float32)
        if i % 3 == 2:  # a transposed (non-contiguous) view instead of x
            given = tg.Tensor(values.T.copy(), device=device).T
            assert not given.array.flags.c_contiguous
        else:  # the same tensor every time, its values overwritten in place
            x.array[...] = tg.Tensor(values, device=device).array
            given = x
        assert step(given, y).item() == pytest.approx(eager_step(given, y).item(), rel=1e-5, abs=1e-7)


def test_jit_refuses_a_shape_change_after_capture():
    if not tg.cuda_available():
        pytest.skip("needs a GPU")
    _, _, raw_step = make_xor("cuda")
    step = tg.jit(raw_step)
    x, y = tg.Tensor(XS, device="cuda"), tg.Tensor(YS, device="cuda")
    for _ in range(4):
        step(x, y)
    with pytest.raises(ValueError, match="captured for inputs"):
        step(tg.Tensor(XS[:2], device="cuda"), tg.Tensor(YS[:2], device="cuda"))


def test_jit_captures_large_and_batched_matmuls_through_cublas():
    if not tg.cuda_available():
        pytest.skip("needs a GPU")
    tg.manual_seed(0)
    w = tg.Tensor.randn(1024, 512, device="cuda", requires_grad=True)
    v = tg.Tensor.randn(3, 64, 32, device="cuda", requires_grad=True)

    def raw(x, y):
        w.grad = v.grad = None
        loss = (x @ w).relu().sum() + ((y @ v) ** 2).mean() + (x @ w.T.T).mean()
        loss.backward()
        return loss

    step = tg.jit(raw)
    x, y = tg.Tensor.randn(256, 1024, device="cuda"), tg.Tensor.randn(3, 16, 64, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error", tg.CaptureWarning)
        for _ in range(4):
            got = step(x, y).item()
    assert step.captured and step.reason is None
    got_grads = (w.grad.numpy(), v.grad.numpy())
    want = raw(x, y).item()
    assert got == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(got_grads[0], w.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_grads[1], v.grad.numpy(), rtol=1e-5, atol=1e-5)
    x2 = tg.Tensor.randn(256, 1024, device="cuda")  # new inputs reach the captured GEMMs
    assert step(x2, y).item() == pytest.approx(raw(x2, y).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_jit_captures_adam_and_its_step_counts(device, name):
    results, params, steps = [], [], []
    for use_jit in (False, True):
        tg.manual_seed(1)
        model = tg.nn.Linear(2, 1, device=device)
        opt = getattr(tg.optim, name)(model.parameters(), lr=0.05)
        x, y = tg.Tensor(XS, device=device), tg.Tensor(YS, device=device)

        def raw(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = tg.nn.MSELoss()(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.jit(raw) if use_jit else raw
        results.append([step(x, y).item() for _ in range(8)])
        params.append([p.numpy() for p in model.parameters()])
        steps.append(opt.steps)
    # the bias corrections follow the counts in device memory: replays are not frozen at step 3
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)
    for captured, eager in zip(params[1], params[0]):
        np.testing.assert_allclose(captured, eager, rtol=1e-6)
    assert steps == [[8, 8], [8, 8]]
    if device == "cuda":
        assert step.captured, step.reason


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_captured_step_resumes_from_a_loaded_checkpoint(device, name, tmp_path):
    def build():
        tg.manual_seed(2)
        model = tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.Tanh(),
                                 tg.nn.Linear(4, 1, device=device))
        settings = {"momentum": 0.9} if name == "SGD" else {}
        opt = getattr(tg.optim, name)(model.parameters(), lr=0.05, **settings)
        return model, opt, training_step(model, opt, tg.nn.MSELoss())

    x, y = tg.Tensor(XS, device=device), tg.Tensor(YS, device=device)
    model, opt, raw = build()
    step = tg.jit(raw)
    for _ in range(4):
        step(x, y)
    tg.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "step4.npz")
    saved = tg.load(tmp_path / "step4.npz")
    for _ in range(3):
        step(x, y)
    # loading copies into the buffers the captured graph uses, so its replays resume from there
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    resumed = [step(x, y).item() for _ in range(3)]
    other, other_opt, other_step = build()
    other.load_state_dict(saved["model"])
    other_opt.load_state_dict(saved["opt"])
    expected = [other_step(x, y).item() for _ in range(3)]
    np.testing.assert_allclose(resumed, expected, rtol=1e-6)
    if name == "Adam":
        assert opt.steps == other_opt.steps == [7] * 4
    if device == "cuda":
        assert step.captured, step.reason


def test_the_graph_reads_its_tensors_in_place_until_given_others(monkeypatch):
    """Replays on the captured call's tensors read them where they are (no input copy in the
    graph); the first call with other tensors captures once more from buffers it copies into."""
    if not tg.cuda_available():
        pytest.skip("needs a GPU")
    copiers = []
    original = tg.jit._input_copier
    monkeypatch.setattr(tg.jit, "_input_copier",
                        lambda self, inputs: copiers.append(len(inputs)) or original(self, inputs))
    _, _, eager_step = make_xor("cuda")
    _, _, raw_step = make_xor("cuda")
    step = tg.jit(raw_step)
    rng = np.random.default_rng(2)
    x, y = tg.Tensor(XS, device="cuda"), tg.Tensor(YS, device="cuda")
    others = [tg.Tensor(rng.random((4, 2)), device="cuda", dtype=np.float32) for _ in range(2)]
    for i in range(12):
        if i < 6:
            x.copy_(tg.Tensor(rng.random((4, 2)), device="cuda", dtype=np.float32))  # refilled in place
            given = x
        else:
            given = others[i % 2] if i < 10 else x
        assert step(given, y).item() == pytest.approx(eager_step(given, y).item(), rel=1e-5, abs=1e-7), i
        assert step.captured == (i >= 2), i  # two warm-up calls, then the graph
        assert copiers == ([] if i < 6 else [2]), i  # captured again once, with its own buffers
