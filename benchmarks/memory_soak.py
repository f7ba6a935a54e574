"""Memory soak: train a small MLP for many steps; host and device memory must stay flat after warm-up.

    python3 benchmarks/memory_soak.py --device cuda            # 10,000 steps on the GPU
    python3 benchmarks/memory_soak.py --device cpu --steps 2000 --optimizer adam
    python3 benchmarks/memory_soak.py --device cpu --steps 1000 --warmup 300 --gradient-penalty

Host memory is what tracemalloc sees (Python objects and NumPy buffers); device memory is the
bytes CuPy's default pool has handed out ("used") and holds from the driver ("held"). The exit
status is 1 when either grew by more than --max-growth bytes between the end of warm-up and the end.
With --gradient-penalty each step adds ((d out / d x).norm() - 1)² to the loss: a second-order
step (backward(create_graph=True) inside, then backward through it).
"""

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, installed or not
import tinygrad_gpu as tg  # noqa: E402


def device_bytes(device: str) -> tuple[int, int]:
    """(used, held) bytes of CuPy's default memory pool; (0, 0) on the CPU."""
    if device != "cuda":
        return 0, 0
    import cupy

    cupy.cuda.Device().synchronize()
    pool = cupy.get_default_memory_pool()
    return pool.used_bytes(), pool.total_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the library's default)")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="SGD with momentum (default) or Adam")
    parser.add_argument("--gradient-penalty", action="store_true",
                        help="add a gradient penalty on the input (a double backward every step)")
    parser.add_argument("--max-growth", type=int, default=64 * 1024,
                        help="bytes either memory may grow by (default 64 KiB)")
    args = parser.parse_args()

    device = args.device or tg.default_device()
    tg.manual_seed(0)
    rng = np.random.default_rng(0)
    x = tg.Tensor(rng.standard_normal((args.batch, 16)), device=device)
    y = tg.Tensor(rng.uniform(0, 1, (args.batch, 1)), device=device)
    model = tg.nn.Sequential(tg.nn.Linear(16, args.hidden, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(args.hidden, args.hidden, device=device), tg.nn.Tanh(),
                             tg.nn.Linear(args.hidden, 1, device=device), tg.nn.Sigmoid())
    opt = (tg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if args.optimizer == "sgd"
           else tg.optim.Adam(model.parameters(), lr=1e-3))
    loss_fn = tg.nn.MSELoss()

    def step() -> tg.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x_in = x.detach().requires_grad_(True)

    def penalised_step() -> tg.Tensor:
        opt.zero_grad()
        out = model(x_in)
        slope, = tg.grad(out.sum(), x_in, create_graph=True)
        penalty = ((slope * slope).sum().sqrt() - 1.0) ** 2
        loss = loss_fn(out, y) + 0.1 * penalty
        loss.backward()
        opt.step()
        return loss

    if args.gradient_penalty:
        step = penalised_step  # noqa: F811

    tracemalloc.start()
    for _ in range(args.warmup):
        step()
    first_loss = step().item()
    host_before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    used_before, held_before = device_bytes(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    last_loss = loss.item()
    del loss
    elapsed = time.perf_counter() - start
    host_after, host_peak = tracemalloc.get_traced_memory()
    used_after, held_after = device_bytes(device)
    tracemalloc.stop()

    mode = ", gradient penalty" if args.gradient_penalty else ""
    print(f"device {device}, {args.optimizer}{mode}: {args.steps} steps after {args.warmup} warm-up steps "
          f"({elapsed / args.steps * 1e6:.0f} us/step with tracemalloc on); "
          f"loss {first_loss:.3g} -> {last_loss:.3g}")
    print(f"host   (tracemalloc): {host_before:,} B before, {host_after:,} B after "
          f"({host_after - host_before:+,} B), peak {host_peak:,} B")
    if device == "cuda":
        print(f"device (CuPy pool):   used {used_before:,} B before, {used_after:,} B after "
              f"({used_after - used_before:+,} B); held {held_before:,} B before, {held_after:,} B after")
    grew = max(host_after - host_before, used_after - used_before)
    print("flat" if grew <= args.max_growth else f"GREW by {grew:,} B (limit {args.max_growth:,} B)")
    return 0 if grew <= args.max_growth else 1


if __name__ == "__main__":
    raise SystemExit(main())
