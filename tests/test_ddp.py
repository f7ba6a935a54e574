"""DistributedDataParallel's reducer on the CPU, with simulated ranks in one process."""

import numpy as np
import pytest
from distributed_helpers import SimulatedGroup

import tinygrad_gpu as tg
from tinygrad_gpu.nn.parallel import DistributedDataParallel, plan_buckets


def mlp(seed, dtype=np.float64, sizes=(6, 16, 16, 3), device="cpu"):
    tg.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers += [tg.nn.Linear(sizes[i], sizes[i + 1], device="cpu"), tg.nn.Tanh()]
    model = tg.nn.Sequential(*layers[:-1])
    for p in model.parameters():
        p.array = p.array.astype(dtype)
    return model.to(device)


def replicas(world_size, dtype=np.float64, device="cpu", **kwargs):
    """One DDP model per simulated rank, each initialised differently: construction must broadcast."""
    group = SimulatedGroup(world_size)
    ddps = [DistributedDataParallel(mlp(seed=10 + r, dtype=dtype, device=device),
                                    process_group=group.rank(r), **kwargs)
            for r in range(world_size)]
    group.flush()
    return group, ddps


def test_construction_broadcasts_rank_0_parameters():
    group, ddps = replicas(3)
    reference = mlp(seed=10)
    for ddp in ddps:
        for (name, p), q in zip(ddp.module.named_parameters(), reference.parameters()):
            np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    assert [kind for kind, _ in group.completed] == ["broadcast"] * 6


def test_bucket_plan_is_reverse_registration_order_capped_by_size():
    sizes = [100, 10, 200, 20]
    f32 = [np.float32] * 4
    assert plan_buckets(sizes, f32, cap_bytes=10_000) == [[3, 2, 1, 0]]
    assert plan_buckets(sizes, f32, cap_bytes=880) == [[3, 2], [1, 0]]
    assert plan_buckets(sizes, f32, cap_bytes=1) == [[3], [2], [1], [0]]  # oversized: one each
    assert plan_buckets(sizes, [np.float32, np.float32, np.float64, np.float64], 10_000) == [[3, 2], [1, 0]]
    _, ddps = replicas(1, bucket_cap_mb=(16 * 16 + 16) * 8 / 2**20)
    # a cap of 272 float64 items: 4.* (51 items) + 2.bias (16), then 2.weight (256) + 0.bias (16)
    assert ddps[0].bucket_plan == [["4.bias", "4.weight", "2.bias"], ["2.weight", "0.bias"], ["0.weight"]]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_two_ranks_with_half_batches_match_one_process_with_the_whole_batch(device, optimizer, loss, dtype,
                                                                              tolerance):
    # on the GPU this runs the reducer's stream and event path, with the collectives simulated
    world, batch, steps = 2, 16, 50
    group, ddps = replicas(world, dtype=dtype, device=device, bucket_cap_mb=0.001)  # several buckets
    single = mlp(seed=10, dtype=dtype, device=device)
    if device == "cuda":
        tolerance = max(tolerance, 1e-4 if dtype == np.float32 else 1e-9)
    make = {"sgd": lambda ps: tg.optim.SGD(ps, lr=0.05, momentum=0.9),
            "adam": lambda ps: tg.optim.Adam(ps, lr=0.01)}[optimizer]
    criterion = tg.nn.MSELoss() if loss == "mse" else tg.nn.CrossEntropyLoss()
    optimizers = [make(d.parameters()) for d in ddps]
    reference = make(single.parameters())
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = rng.normal(size=(batch, 6)).astype(dtype)
        y = (rng.normal(size=(batch, 3)).astype(dtype) if loss == "mse"
             else rng.integers(0, 3, size=batch))
        for r, (ddp, opt) in enumerate(zip(ddps, optimizers)):
            part = slice(r * batch // world, (r + 1) * batch // world)
            opt.zero_grad()
            criterion(ddp(tg.Tensor(x[part], dtype=dtype, device=device)),
                      tg.Tensor(y[part], device=device)).backward()
        group.flush()  # the all-reduces of every rank complete together
        for opt in optimizers:
            opt.step()
        reference.zero_grad()
        criterion(single(tg.Tensor(x, dtype=dtype, device=device)), tg.Tensor(y, device=device)).backward()
        reference.step()
    for ddp in ddps:
        for (name, p), q in zip(ddp.module.named_parameters(), single.parameters()):
            np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=tolerance, atol=tolerance, err_msg=name)


def test_no_sync_accumulation_over_micro_batches_equals_one_large_batch(device):
    world, k, micro = 2, 3, 4
    group, ddps = replicas(world, device=device)
    single = mlp(seed=10, device=device)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(world * k * micro, 6))
    y = rng.normal(size=(world * k * micro, 3))
    criterion = tg.nn.MSELoss()
    for r, ddp in enumerate(ddps):
        shard = slice(r * k * micro, (r + 1) * k * micro)
        xs, ys = x[shard], y[shard]
        with ddp.no_sync():
            for j in range(k - 1):
                (criterion(ddp(tg.Tensor(xs[j * micro:(j + 1) * micro], device=device)),
                           tg.Tensor(ys[j * micro:(j + 1) * micro], device=device)) * (1 / k)).backward()
        assert group.calls[r] == []  # nothing was communicated inside no_sync()
        (criterion(ddp(tg.Tensor(xs[-micro:], device=device)), tg.Tensor(ys[-micro:], device=device))
         * (1 / k)).backward()
    group.flush()
    criterion(single(tg.Tensor(x, device=device)), tg.Tensor(y, device=device)).backward()
    for ddp in ddps:
        for (name, p), q in zip(ddp.module.named_parameters(), single.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


class TwoHeads(tg.nn.Module):
    def __init__(self):
        self.trunk = tg.nn.Linear(4, 4, device="cpu")
        self.left = tg.nn.Linear(4, 2, device="cpu")
        self.right = tg.nn.Linear(4, 2, device="cpu")

    def forward(self, x, use_right):
        h = self.trunk(x).tanh()
        return self.right(h) if use_right else self.left(h)


def test_a_parameter_unused_on_one_rank_gets_the_average_with_zeros_in_the_same_collectives():
    group = SimulatedGroup(2)
    models = []
    for r in range(2):
        tg.manual_seed(3)
        models.append(DistributedDataParallel(TwoHeads(), process_group=group.rank(r), bucket_cap_mb=1e-4))
    group.flush()
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    local = []
    for r, ddp in enumerate(models):  # rank 0 uses the right head, rank 1 the left one
        ddp(tg.Tensor(x, device="cpu"), r == 0).sum().backward()
        local.append({n: p.grad.numpy().copy() for n, p in ddp.module.named_parameters()
                      if p.grad is not None})
    group.flush()  # would fail if the ranks had issued different collectives
    assert models[0].unused_parameters == ["left.weight", "left.bias"]
    assert models[1].unused_parameters == ["right.weight", "right.bias"]
    for ddp in models:
        grads = {n: p.grad.numpy() for n, p in ddp.module.named_parameters()}
        np.testing.assert_allclose(grads["right.weight"], local[0]["right.weight"] / 2, rtol=1e-6)
        np.testing.assert_allclose(grads["left.bias"], local[1]["left.bias"] / 2, rtol=1e-6)
        np.testing.assert_allclose(grads["trunk.weight"],
                                   (local[0]["trunk.weight"] + local[1]["trunk.weight"]) / 2, rtol=1e-5)


def test_a_parameter_no_rank_used_gets_a_zero_gradient():
    group = SimulatedGroup(2)
    models = []
    for r in range(2):
        tg.manual_seed(3)
        models.append(DistributedDataParallel(TwoHeads(), process_group=group.rank(r)))
    group.flush()
    for ddp in models:
        ddp(tg.Tensor(np.ones((2, 4), np.float32), device="cpu"), False).sum().backward()
    group.flush()
    for ddp in models:
        assert ddp.unused_parameters == ["right.weight", "right.bias"]
        np.testing.assert_array_equal(ddp.module.right.weight.grad.numpy(), np.zeros((2, 4)))


def test_gradients_become_views_of_the_buckets_and_the_reduction_happens_during_backward():
    group, (ddp,) = replicas(1, bucket_cap_mb=1e-4)
    ddp(tg.Tensor(np.ones((2, 6)), device="cpu")).sum().backward()
    buckets = [a for kind, _, a in group.calls[0] if kind == "all_reduce"]
    assert len(buckets) == len(ddp.bucket_plan) == 6
    for p in ddp.parameters():
        assert any(np.shares_memory(p.grad.array, b) for b in buckets)


def test_buckets_are_launched_while_backward_runs_not_at_its_end():
    group, (ddp,) = replicas(1, bucket_cap_mb=1e-4)
    launched_when_first_layer_ready = []
    first = ddp.module.parameters()[0]
    first.register_post_accumulate_grad_hook(lambda t: launched_when_first_layer_ready.append(
        len(group.calls[0])))
    ddp(tg.Tensor(np.ones((2, 6)), device="cpu")).sum().backward()
    assert launched_when_first_layer_ready[0] >= 4  # the later layers' buckets were already started


def test_backward_twice_after_one_forward_is_refused():
    _, (ddp,) = replicas(1)
    out = ddp(tg.Tensor(np.ones((2, 6)), device="cpu")).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice after one forward"):
        out.backward()


def test_no_grad_forward_arms_nothing():
    group, (ddp,) = replicas(1)
    with tg.no_grad():
        ddp(tg.Tensor(np.ones((2, 6)), device="cpu"))
    assert group.calls[0] == []


def test_construction_errors_are_clear():
    group = SimulatedGroup(1)
    with pytest.raises(TypeError, match="Module"):
        DistributedDataParallel(object(), process_group=group.rank(0))
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        DistributedDataParallel(mlp(0), bucket_cap_mb=0, process_group=group.rank(0))
    with pytest.raises(ValueError, match="no parameter"):
        DistributedDataParallel(tg.nn.ReLU(), process_group=group.rank(0))
    with pytest.raises(tg.distributed.DistributedError, match="init_process_group"):
        DistributedDataParallel(mlp(0))  # no group initialised


def test_a_dropped_wrapper_releases_its_buckets_and_hooks():
    import gc
    import weakref

    from tinygrad_gpu import hooks

    group = SimulatedGroup(1)
    model = mlp(0)
    ddp = DistributedDataParallel(model, process_group=group.rank(0))
    reducer = weakref.ref(ddp._reducer)
    del ddp
    gc.collect()
    assert reducer() is None
    assert all(not hooks.post_accumulate.get(p) for p in model.parameters())
    model(tg.Tensor(np.ones((2, 6)), device="cpu")).sum().backward()  # plain backward, nothing communicated
    assert [kind for kind, _, _ in group.calls[0]] == ["broadcast"] * 6  # no all-reduce


class _WeightFirst(tg.nn.Module):
    """Two layers whose backward gives each weight before the bias registered beside it."""

    def __init__(self):
        super().__init__()
        self.first, self.second = tg.nn.Linear(4, 8, device="cpu"), tg.nn.Linear(8, 2, device="cpu")

    def forward(self, x):
        return self.second(self.first(x).relu())


def test_buckets_are_replanned_to_end_with_a_backward_node_after_the_first_synced_step(monkeypatch):
    # reverse registration order puts second.bias, second.weight, first.bias together in the first
    # bucket, so that bucket waits for the first layer; after one step it holds the second layer alone
    from tinygrad_gpu.nn import parallel

    monkeypatch.setattr(parallel, "SPLIT_BYTES", 1)  # (these buckets are far below the real size)
    group = SimulatedGroup(2)
    models = []
    for r in range(2):
        tg.manual_seed(5)
        models.append(DistributedDataParallel(_WeightFirst(), bucket_cap_mb=40 * 4 / 2**20,
                                              process_group=group.rank(r)))
    group.flush()
    before = models[0].bucket_plan
    x = tg.Tensor(np.ones((3, 4), np.float32), device="cpu")
    losses = []
    for _ in range(3):
        for ddp in models:
            ddp.zero_grad()
            ddp(x).sum().backward()
        group.flush()
        losses.append([ddp.module.second.weight.grad.numpy().copy() for ddp in models])
    after = models[0].bucket_plan
    assert before[0] == ["second.bias", "second.weight", "first.bias"]
    assert after == [["second.bias", "second.weight"], ["first.bias", "first.weight"]]
    assert models[1].bucket_plan == after
    for step in losses:  # the gradients do not change with the plan
        np.testing.assert_array_equal(step[0], losses[0][0])
        np.testing.assert_array_equal(step[1], step[0])


class _SideGroupRank:
    """A rank view of a SimulatedGroup that also offers a limited communicator (as the NCCL group does),
    recording which buckets it reduced."""

    def __init__(self, group, rank, side_calls):
        self.view = group.rank(rank)
        self.rank, self.world_size = rank, group.world_size
        self.side_calls = side_calls
        self.asked = []

    def all_reduce(self, array, op="sum", stream=None):
        self.view.all_reduce(array, op, stream)

    def broadcast(self, array, src=0, stream=None):
        self.view.broadcast(array, src, stream)

    def limited_group(self, max_ctas):
        self.asked.append(max_ctas)
        outer = self

        class Side:
            def all_reduce(self, array, op="sum", stream=None):
                outer.side_calls.append((outer.rank, array.size))
                outer.view.all_reduce(array, op, stream)

        return Side()


def test_every_bucket_but_the_last_is_reduced_on_the_limited_communicator_when_the_group_has_one():
    from tinygrad_gpu.nn import parallel

    group, side_calls = SimulatedGroup(2), []
    ranks = [_SideGroupRank(group, r, side_calls) for r in range(2)]
    ddps = [DistributedDataParallel(mlp(seed=10 + r), bucket_cap_mb=1e-4, process_group=ranks[r])
            for r in range(2)]
    group.flush()
    _, (plain,) = replicas(1, bucket_cap_mb=1e-4)
    plain.module.load_state_dict(ddps[0].module.state_dict())
    x = tg.Tensor(np.linspace(-1, 1, 12).reshape(2, 6), device="cpu")
    for ddp in ddps:
        ddp(x).sum().backward()
    group.flush()
    plain(x).sum().backward()
    sizes = [bucket.flat.size for bucket in ddps[0]._reducer.buckets]
    assert ranks[0].asked == [parallel.OVERLAP_CTAS] and len(sizes) > 1
    # each rank sent all but its last bucket through the limited communicator, in bucket order
    for rank in range(2):
        assert [size for r, size in side_calls if r == rank] == sizes[:-1]
    for (name, p), q in zip(ddps[0].module.named_parameters(), plain.module.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, err_msg=name)
