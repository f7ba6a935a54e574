"""Quick probe: XOR step time, ours vs PyTorch, on one device (first-look numbers)."""
import sys
import time

import numpy as np

import tinygrad_gpu as tg

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"


def sync():
    if device == "cuda":
        import cupy
        cupy.cuda.get_current_stream().synchronize()


def ours():
    tg.manual_seed(0)
    x = tg.Tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)
    y = tg.Tensor([[0], [1], [1], [0]], device=device)
    model = tg.nn.Sequential(tg.nn.Linear(2, 4, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(4, 1, device=device), tg.nn.Sigmoid())
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = tg.nn.MSELoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


def torch_step():
    import torch
    dev = "cuda" if device == "cuda" else "cpu"
    torch.manual_seed(0)
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float32, device=dev)
    y = torch.tensor([[0], [1], [1], [0]], dtype=torch.float32, device=dev)
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1),
                                torch.nn.Sigmoid()).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.MSELoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


def bench(step, n=300, reps=7):
    for _ in range(50):
        step()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        times.append((time.perf_counter() - t) / n * 1e6)
    return float(np.median(times))


print(f"ours  {device}: {bench(ours()):8.1f} us/step")
try:
    print(f"torch {device}: {bench(torch_step()):8.1f} us/step")
except ImportError:
    print("torch not installed")
