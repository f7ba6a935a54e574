"""tg.fuse never crashes: released fused nodes still name themselves, every float constant
survives code generation, methods and keyword arguments work."""

import gc
import re
import weakref

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import fused_kernels
from tinygrad_gpu.fusion import FusedOp


def leaf(array, device, dtype=np.float64):
    return tg.Tensor(np.array(array, dtype), device=device, requires_grad=True)


# ---- a released node keeps its name ------------------------------------------------------------
class Clipped(tg.nn.Activation):
    """A custom activation built on clip(min=0)."""

    function = staticmethod(lambda x: x.clip(min=0.0))


def _graphs(device):
    """Losses whose graphs hold fused nodes of every kind (product head, sum tail, plain chain)."""
    tg.manual_seed(1)
    x = tg.Tensor(np.random.default_rng(0).standard_normal((4, 3)), device=device)
    target = tg.Tensor(np.zeros((4, 2)), device=device)
    linear = tg.nn.Linear(3, 2, device=device)
    model = tg.nn.Sequential(tg.nn.Linear(3, 5, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(5, 2, device=device), Clipped())
    chain = tg.fuse(lambda a: (a * 2.0).sigmoid())
    yield "linear+mse", tg.nn.MSELoss()(linear(x), target)
    yield "sequential", tg.nn.MSELoss()(model(x), target)
    yield "chain", chain(leaf(np.ones((2, 2)), device)).sum()


def _nodes(loss):
    """Every node of the graph behind loss (before backward releases them)."""
    found, stack = [], [loss]
    while stack:
        ctx = stack.pop().grad_fn
        if ctx is not None and ctx not in found:
            found.append(ctx)
            stack.extend(t for t in ctx.inputs if isinstance(t, tg.Tensor))
    return found


@pytest.mark.parametrize("case", ["linear+mse", "sequential", "chain"])
def test_a_released_fused_node_still_names_itself(device, case):
    loss = dict(_graphs(device))[case]
    nodes = _nodes(loss)
    names = [node.name for node in nodes]
    assert any(isinstance(node, FusedOp) for node in nodes)
    loss.backward()
    assert all(node.released for node in nodes)
    assert [node.name for node in nodes] == names  # every node, fused or not
    assert f"grad_fn=<{loss.grad_fn.name}>" in repr(loss)
    print(loss)
    assert "released by backward()" in tg.viz.to_dot(loss)
    assert tg.graph_memory(loss).nodes == 0
    name = re.escape(loss.grad_fn.name)
    with pytest.raises(RuntimeError, match=f"a second time.*{name}.*retain_graph=True"):
        loss.backward()


def test_a_fused_node_is_named_while_it_lives(device):
    out = tg.nn.Linear(3, 2, device=device)(leaf(np.ones((2, 3)), device))
    assert out.grad_fn.name == "Fused(MatMul→Add)"
    assert "Fused(MatMul→Add)" in tg.viz.to_dot(out)


# ---- constants -----------------------------------------------------------------------------------
AWKWARD = [np.inf, -np.inf, np.nan, -0.0, 0.0, 1e39, -1e39, 3.4028235e38, 3.4028236e38, 1e308,
           1e-39, 1e-45, 5e-324, 1e-300, 2.2250738585072014e-308, 0.1, 1 / 3, -7.25]
# chains in which a constant takes part: as an operand, a clip bound, an exponent
CONSTANT_CHAINS = {
    "mul": lambda t, c: t * c,
    "add_sub": lambda t, c: (t + c) - c,
    "rdiv": lambda t, c: c / t,
    "clip_min": lambda t, c: t.clip(min=c) * 2.0,
    "clip_max": lambda t, c: t.clip(max=c) * 2.0,
    "rsub_relu": lambda t, c: (c - t).relu(),
}


def _same_values(got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    np.testing.assert_array_equal(got, expected)  # NaN where NaN is
    assert np.array_equal(np.signbit(got), np.signbit(expected)) or np.isnan(expected).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chain", CONSTANT_CHAINS)
def test_every_float_constant_survives_fusion(device, dtype, chain):
    fn = CONSTANT_CHAINS[chain]
    values = np.array([-2.5, -0.0, 0.0, 0.75, 3.0], dtype)
    for c in AWKWARD:
        if chain in ("clip_min", "clip_max") and np.isnan(c):
            continue  # clip refuses a NaN bound
        eager_x, fused_x = leaf(values, device, dtype), leaf(values, device, dtype)
        expected = fn(eager_x, c)
        got = tg.fuse(lambda t, c=c: fn(t, c))(fused_x)
        assert isinstance(got.grad_fn, FusedOp), c
        assert got.dtype == expected.dtype
        _same_values(got.numpy(), expected.numpy())
        expected.backward(tg.Tensor(np.ones(5), device=device, dtype=dtype))
        got.backward(tg.Tensor(np.ones(5), device=device, dtype=dtype))
        _same_values(fused_x.grad.numpy(), eager_x.grad.numpy())


def test_clip_after_a_linear_in_a_sequential(device):
    tg.manual_seed(2)
    model = tg.nn.Sequential(tg.nn.Linear(3, 4, device=device), Clipped())
    x = tg.Tensor(np.random.default_rng(3).standard_normal((5, 3)), device=device)
    out = model(x)
    assert isinstance(out.grad_fn, FusedOp) and "Clip" in out.grad_fn.name
    linear = model[0]
    by_hand = (x @ linear.weight.T + linear.bias).clip(min=0.0)
    np.testing.assert_allclose(out.numpy(), by_hand.numpy(), rtol=1e-6)


def _sources(program):
    """Every CUDA source generated for a program: its rows, and the one-launch kernels
    (generated here as text only: compiling them needs a GPU)."""
    sources = [program.forward_row.body, program.backward_row((True,) * program.n_inputs)[0].body]
    for dtype in "fd":
        if program.head is not None:
            count = len(program.chain_inputs) - 1
            strides = ((0, 1),) * count
            sources.append(fused_kernels._forward_source(program, dtype, True, (4, 3, 2), strides)[0])
            sources.append(fused_kernels._backward_source(
                program, dtype, True, (4, 3, 2), strides + ((3, 1),), True, True, (True,) * count,
                ((3,),) * count)[0])
        if program.reduces:
            sources.append(fused_kernels._sum_source(program, dtype, ("f",) * program.n_inputs)[0])
    return sources


def _programs(fused):
    return [p for p in (fused._programs.get(k) for k in fused._programs.keys()) if p is not None]


SOURCE_CHAINS = {
    # clip refuses a NaN bound, so its NaN constant is a factor (the bound stays -inf)
    "clip": (lambda t, c: (t.clip(min=c) if c == c else t.clip(max=float("inf"))) * c, [(3,)]),
    "linear_head": (lambda x, w, b, c: (x @ w + b) * c, [(4, 2), (2, 3), (3,)]),
    "mean_tail": (lambda a, b, c: ((a - b) * c).mean(), [(4,), (4,)]),
}


@pytest.mark.parametrize("chain", SOURCE_CHAINS)
def test_constants_reach_cuda_kernels_as_exact_parameters(chain):
    fn, shapes = SOURCE_CHAINS[chain]
    for c in AWKWARD:
        fused = tg.fuse(lambda *ts, c=c: fn(*ts, c))
        with np.errstate(all="ignore"):
            fused(*(leaf(np.ones(s), "cpu") for s in shapes))
        (program,) = _programs(fused)
        assert float(c).hex() in {v.hex() for v in program.constants}
        for source in _sources(program):
            # no literal of any constant: they are parameters, declared T and passed by value
            assert "tg_c0" in source and not re.search(r"\b(inf|nan|INFINITY|NAN)\b", source)
            assert c == 0 or not np.isfinite(c) or repr(abs(c)) not in source
        for dtype in (np.float32, np.float64):
            with np.errstate(over="ignore"):
                expected = np.array(c).astype(dtype)
            given = program.constant_args(np.dtype(dtype))[list(map(float.hex, program.constants))
                                                           .index(float(c).hex())]
            assert type(given) is dtype
            assert np.array(given).tobytes() == expected.tobytes() or np.isnan(c)


def test_one_chain_at_many_shapes_is_one_kernel():
    fused = tg.fuse(lambda a, b: ((a - b) ** 2).mean())  # the mean's 1/n changes with the shape
    for n in range(2, 40):  # (n = 1: a sum, no scale)
        fused(leaf(np.ones(n), "cpu"), leaf(np.zeros(n), "cpu"))
    programs = _programs(fused)
    assert len({p.constants for p in programs}) == len(programs) == 38
    assert len({p.forward_row.name for p in programs}) == 1
    assert len({p.backward_row((True, True))[0].name for p in programs}) == 1


# ---- methods and keyword arguments ----------------------------------------------------------------
class Scaler:
    def __init__(self, scale):
        self.scale = scale

    @tg.fuse
    def apply(self, x, *, shift=0.0):
        return x * self.scale + shift


def test_fuse_on_a_method_is_bound_per_instance(device):
    x = leaf([1.0, 2.0], device)
    a, b = Scaler(2.0), Scaler(3.0)
    np.testing.assert_allclose(a.apply(x).numpy(), [2.0, 4.0])
    np.testing.assert_allclose(b.apply(x).numpy(), [3.0, 6.0])  # its own trace, its own constant
    np.testing.assert_allclose(Scaler(5.0).apply(x).numpy(), [5.0, 10.0])  # a temporary instance
    assert isinstance(a.apply(x).grad_fn, FusedOp)
    assert Scaler.apply(a, x).numpy().tolist() == [2.0, 4.0]  # through the class, as a plain function


def test_fuse_does_not_keep_instances_alive(device):
    x = leaf([1.0, 2.0], device)
    states = Scaler.__dict__["apply"]._per_instance
    gc.collect()
    before = len(states)
    instance = Scaler(2.0)
    instance.apply(x)
    assert len(states) == before + 1
    ref = weakref.ref(instance)
    del instance
    gc.collect()
    assert ref() is None
    assert len(states) == before


def test_fuse_takes_keyword_arguments(device):
    x = leaf([1.0, 2.0], device)
    y = leaf([3.0, 4.0], device)
    fused = tg.fuse(lambda a, b, scale=1.0: (a - b) * scale)
    np.testing.assert_allclose(fused(x, b=y).numpy(), [-2.0, -2.0])
    np.testing.assert_allclose(fused(x, b=y, scale=3.0).numpy(), [-6.0, -6.0])
    np.testing.assert_allclose(fused(a=y, b=x).numpy(), [2.0, 2.0])
    out = fused(x, y, scale=0.5)
    assert isinstance(out.grad_fn, FusedOp)
    out.sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [-0.5, -0.5])
    np.testing.assert_allclose(Scaler(2.0).apply(x, shift=1.0).numpy(), [3.0, 5.0])


def test_fuse_refuses_instances_without_weak_references():
    class Slotted:
        __slots__ = ()

        @tg.fuse
        def apply(self, x):
            return x * 2.0

    with pytest.raises(TypeError, match="weak references.*__weakref__"):
        Slotted().apply(leaf([1.0], "cpu"))


def test_cuda_gradient_assigns_first_contributions():
    # 0 + (-0.0) is +0.0: the first contribution to a gradient is assigned, as the twins do, so
    # the CUDA backward keeps a -0.0 gradient's sign; later ones are added
    fused = tg.fuse(lambda a: a * a * -0.0)
    fused(leaf([1.0], "cpu"))
    (program,) = _programs(fused)
    source, _ = program.gradient_source()
    assert source.count("g_in0 = tg_r;") == 1 and source.count("g_in0 += tg_r;") == 1
    assert "g_v0 = tg_r;" in source and "g_v0 +=" not in source
