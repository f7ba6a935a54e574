"""The digits MLP of examples/digits.py trained data-parallel: one process per GPU, gradients averaged.

    python examples/ddp_mlp.py --nproc-per-node 2        # restarts itself through the launcher
    python -m tinygrad_gpu.distributed.run --nproc-per-node 2 examples/ddp_mlp.py
    python examples/ddp_mlp.py                           # one process (any device), for comparison

Every rank sees its own slice of each epoch's shuffle (DistributedSampler) with batch
global_batch / world_size, so the union of the ranks' batches is the one-process batch: the runs
reach the same test accuracy. Each rank prints its throughput; rank 0 evaluates and saves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import tinygrad_gpu as tg
from tinygrad_gpu.nn.parallel import DistributedDataParallel
from tinygrad_gpu.utils.data import DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits import build_model, evaluate, load_data  # noqa: E402  (the same data and model)


def train(epochs: int = 30, global_batch: int = 32, lr: float = 2e-3, hidden: int = 128, seed: int = 0,
          device: str | None = None) -> dict[str, Any]:
    """Train on this rank's shards (the whole set when alone); returns accuracy and throughput."""
    world, rank = tg.distributed.get_world_size(), tg.distributed.get_rank()
    if global_batch % world:
        raise ValueError(f"--global-batch {global_batch} must be a multiple of the {world} processes")
    device = "cuda" if world > 1 else (device or tg.default_device())
    tg.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    x_train, x_test, y_train, y_test = load_data(seed)
    x_train_t = tg.Tensor(x_train, device=device)
    model = build_model(hidden, device)
    net = DistributedDataParallel(model) if world > 1 else model
    opt = tg.optim.Adam(model.parameters(), lr=lr)
    loss_fn = tg.nn.CrossEntropyLoss()
    sampler = DistributedSampler(len(x_train), seed=seed)
    batch = global_batch // world
    samples, start = 0, time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = sampler.indices()
        for first in range(0, len(order), batch):
            rows = order[first:first + batch]
            opt.zero_grad()
            loss = loss_fn(net(x_train_t[rows]), y_train[rows])
            loss.backward()
            opt.step()
            samples += len(rows)
        final_loss = loss.item()  # waits for the GPU: the time below is real
    seconds = time.perf_counter() - start
    result = {"rank": rank, "world_size": world, "samples_per_s": samples / seconds, "train_loss": final_loss,
              "model": model}
    if tg.distributed.is_main_process():
        _, result["test_accuracy"], _ = evaluate(model, tg.Tensor(x_test, device=device), y_test)
    return result


def launcher_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that restarts this script with one process per GPU."""
    return [sys.executable, "-m", "tinygrad_gpu.distributed.run", "--nproc-per-node", str(nproc),
            os.path.abspath(__file__), *argv]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, join the process group when launched, train, report."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc-per-node", type=int, default=0,
                        help="restart through the launcher with this many processes (GPUs)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=32, help="samples per step over all ranks")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--device", default=None, help="one process only: cpu or cuda")
    parser.add_argument("--save", metavar="PATH", help="write the trained model there (rank 0)")
    args = parser.parse_args(argv)
    if args.nproc_per_node and "RANK" not in os.environ:
        rest = [a for i, a in enumerate(argv) if not (a.startswith("--nproc-per-node") or
                                                       (i and argv[i - 1] == "--nproc-per-node"))]
        os.execv(sys.executable, launcher_command(args.nproc_per_node, rest))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        tg.distributed.init_process_group("nccl")
    result = train(args.epochs, args.global_batch, args.lr, device=args.device)
    print(f"rank {result['rank']}/{result['world_size']}: {result['samples_per_s']:,.0f} samples/s, "
          f"final batch loss {result['train_loss']:.4f}", flush=True)
    if tg.distributed.is_main_process():
        print(f"test accuracy {result['test_accuracy']:.4f}")
    if args.save and tg.distributed.is_main_process():  # one writer; every rank could load it
        tg.save(result["model"].state_dict(), args.save)
    if tg.distributed.is_initialized():
        tg.distributed.barrier()  # the checkpoint is complete before any rank goes on
        tg.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
