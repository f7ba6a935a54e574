"""Started by tests/test_multigpu.py through the launcher: one process per GPU, real NCCL.

Each scenario computes what DistributedDataParallel and the collectives give, and what one process
with the whole batch gives (each rank can compute that reference itself), and writes the largest
differences to <out>/<scenario>-rank<r>.json; the test reads and judges them.
"""

import json
import os
import sys

import numpy as np

import tinygrad_gpu as tg
from tinygrad_gpu.nn.parallel import DistributedDataParallel


def mlp(seed, dtype, sizes=(6, 32, 32, 3)):
    tg.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers += [tg.nn.Linear(sizes[i], sizes[i + 1]), tg.nn.Tanh()]
    model = tg.nn.Sequential(*layers[:-1])
    for p in model.parameters():
        p.array = p.array.get().astype(dtype) if hasattr(p.array, "get") else p.array.astype(dtype)
    return model.to("cuda")


def max_difference(model_a, model_b, grads=False):
    worst = 0.0
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        a, b = (p.grad, q.grad) if grads else (p, q)
        a, b = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
        worst = max(worst, float(np.max(np.abs(a - b) / (1e-3 + np.abs(b)))))
    return worst


def equivalence(rank, world):
    """50 steps of DDP with per-rank batch B/world against one model with batch B."""
    results = {}
    batch, steps = 16 * world, 50
    for dtype in (np.float64, np.float32):
        for opt_name in ("sgd", "adam"):
            for loss_name in ("mse", "cross_entropy"):
                make = {"sgd": lambda ps: tg.optim.SGD(ps, lr=0.05, momentum=0.9),
                        "adam": lambda ps: tg.optim.Adam(ps, lr=0.01)}[opt_name]
                criterion = tg.nn.MSELoss() if loss_name == "mse" else tg.nn.CrossEntropyLoss()
                ddp = DistributedDataParallel(mlp(10 + rank, dtype), bucket_cap_mb=0.004)
                single = mlp(10, dtype)
                opt, reference = make(ddp.parameters()), make(single.parameters())
                rng = np.random.default_rng(0)
                part = slice(rank * batch // world, (rank + 1) * batch // world)
                for _ in range(steps):
                    x = rng.normal(size=(batch, 6)).astype(dtype)
                    y = (rng.normal(size=(batch, 3)).astype(dtype) if loss_name == "mse"
                         else rng.integers(0, 3, size=batch))
                    opt.zero_grad()
                    prediction = ddp(tg.Tensor(x[part], device="cuda"))
                    criterion(prediction, tg.Tensor(y[part], device="cuda")).backward()
                    opt.step()
                    reference.zero_grad()
                    criterion(single(tg.Tensor(x, device="cuda")), tg.Tensor(y, device="cuda")).backward()
                    reference.step()
                results[f"{np.dtype(dtype).name}-{opt_name}-{loss_name}"] = max_difference(ddp.module, single)
    return results


def no_sync(rank, world):
    """k micro-batches, all but the last inside no_sync(), against one large batch."""
    k, micro = 3, 4
    ddp = DistributedDataParallel(mlp(10 + rank, np.float64))
    single = mlp(10, np.float64)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(world * k * micro, 6))
    y = rng.normal(size=(world * k * micro, 3))
    xs, ys = x[rank * k * micro:(rank + 1) * k * micro], y[rank * k * micro:(rank + 1) * k * micro]
    criterion = tg.nn.MSELoss()
    with ddp.no_sync():
        for j in range(k - 1):
            rows = slice(j * micro, (j + 1) * micro)
            (criterion(ddp(tg.Tensor(xs[rows], device="cuda")), tg.Tensor(ys[rows], device="cuda"))
             * (1 / k)).backward()
    (criterion(ddp(tg.Tensor(xs[-micro:], device="cuda")), tg.Tensor(ys[-micro:], device="cuda"))
     * (1 / k)).backward()
    criterion(single(tg.Tensor(x, device="cuda")), tg.Tensor(y, device="cuda")).backward()
    return {"grad_difference": max_difference(ddp.module, single, grads=True)}


class TwoHeads(tg.nn.Module):
    def __init__(self):
        self.trunk = tg.nn.Linear(4, 4, device="cuda")
        self.left = tg.nn.Linear(4, 2, device="cuda")
        self.right = tg.nn.Linear(4, 2, device="cuda")

    def forward(self, x, use_right):
        h = self.trunk(x).tanh()
        return self.right(h) if use_right else self.left(h)


def unused(rank, world):
    """Rank 0 uses the right head, the others the left one: the average counts zeros for the unused."""
    tg.manual_seed(3)
    ddp = DistributedDataParallel(TwoHeads(), bucket_cap_mb=1e-4)
    x = tg.Tensor(np.random.default_rng(2).normal(size=(5, 4)), device="cuda", dtype=np.float32)
    ddp(x, rank == 0).sum().backward()
    expected = {n: np.zeros(p.shape) for n, p in ddp.module.named_parameters()}
    for r in range(world):  # every rank's local gradients, recomputed here
        tg.manual_seed(3)
        local = TwoHeads()
        local(x, r == 0).sum().backward()
        for n, p in local.named_parameters():
            if p.grad is not None:
                expected[n] += p.grad.numpy() / world
    worst = max(float(np.max(np.abs(p.grad.numpy() - expected[n]))) for n, p in ddp.module.named_parameters())
    return {"grad_difference": worst, "unused": ddp.unused_parameters}


def collectives(rank, world):
    """all_reduce (sum, avg, max, min; a strided view too), broadcast, all_gather, barrier."""
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    mine = base + 10 * rank
    every = [base + 10 * r for r in range(world)]
    errors = {}
    for op, expected in (("sum", sum(every)), ("avg", sum(every) / world), ("max", every[-1]),
                         ("min", every[0])):
        t = tg.Tensor(mine, device="cuda")
        tg.distributed.all_reduce(t, op=op)
        errors[op] = float(np.max(np.abs(t.numpy() - expected)))
    t = tg.Tensor(mine.T.copy(), device="cuda").transpose()  # a strided view
    tg.distributed.all_reduce(t)
    errors["strided"] = float(np.max(np.abs(t.numpy() - sum(every))))
    t = tg.Tensor(mine.astype(np.float64), device="cuda")
    tg.distributed.broadcast(t, src=world - 1)
    errors["broadcast"] = float(np.max(np.abs(t.numpy() - every[-1])))
    gathered = [tg.Tensor(np.zeros((2, 3), np.float32), device="cuda") for _ in range(world)]
    tg.distributed.all_gather(gathered, tg.Tensor(mine, device="cuda"))
    errors["all_gather"] = max(float(np.max(np.abs(g.numpy() - e))) for g, e in zip(gathered, every))
    tg.distributed.barrier()
    return errors


def captured(rank, world):
    """A DDP step under tg.jit (one CUDA graph with the NCCL calls) against the same step eagerly."""
    out = {}
    models = []
    for use_jit in (False, True):
        ddp = DistributedDataParallel(mlp(10 + rank, np.float32), bucket_cap_mb=0.004)
        opt = tg.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        criterion = tg.nn.MSELoss()

        def step(x, y, ddp=ddp, opt=opt, criterion=criterion):
            opt.zero_grad()
            loss = criterion(ddp(x), y)
            loss.backward()
            opt.step()
            return loss

        runner = tg.jit(step) if use_jit else step
        rng = np.random.default_rng(5 + rank)
        for _ in range(8):
            runner(tg.Tensor(rng.normal(size=(8, 6)), device="cuda", dtype=np.float32),
                   tg.Tensor(rng.normal(size=(8, 3)), device="cuda", dtype=np.float32))
        models.append(ddp.module)
        if use_jit:
            out["captured"], out["reason"] = runner.captured, runner.reason
    out["difference"] = max_difference(models[1], models[0])
    return out


def checkpoint(rank, world, directory):
    """Rank 0 saves, every rank loads what it saved."""
    model = mlp(10 + rank, np.float32)
    DistributedDataParallel(model)  # every rank now holds rank 0's parameters
    path = os.path.join(directory, "model.npz")
    if tg.distributed.is_main_process():
        tg.save(model.state_dict(), path)
    tg.distributed.barrier()
    other = mlp(99, np.float32)
    other.load_state_dict(tg.load(path))
    return {"difference": max_difference(other, model)}


def main():
    directory, scenarios = sys.argv[1], sys.argv[2].split(",")
    tg.distributed.init_process_group("nccl", timeout=120)
    rank, world = tg.distributed.get_rank(), tg.distributed.get_world_size()
    if "fail" in scenarios:
        tg.distributed.barrier()
        if rank == world - 1:
            raise RuntimeError(f"rank {rank} fails on purpose")
        tg.distributed.barrier()  # the others wait in NCCL until the launcher stops them
    for name in scenarios:
        if name == "fail":
            continue
        args = (rank, world, directory) if name == "checkpoint" else (rank, world)
        result = {"world_size": world, "rank": rank, **globals()[name](*args)}
        with open(os.path.join(directory, f"{name}-rank{rank}.json"), "w") as f:
            json.dump(result, f)
    tg.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
