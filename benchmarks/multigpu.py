"""Data parallelism on several GPUs: weak scaling, PyTorch DDP side by side, all-reduce bandwidth.

`make bench-multigpu PYTHON=python3` runs, for 1, 2 and (where the machine has them) 4 GPUs:
  - ours: the wide MLP (1024-4096-4096-1024, ReLU, MSE, SGD, fp32, TF32 off, batch 4096 per GPU)
    under tg.nn.parallel.DistributedDataParallel, one process per GPU through our launcher;
  - PyTorch DDP on the same model and batch, processes started with torch.multiprocessing;
  - the all-reduce of a 256 MiB float32 buffer through tg.distributed.all_reduce and through a raw
    cupyx.distributed communicator in the same processes (bus bandwidth = bytes/time * 2(n-1)/n);
  - the fraction of the all-reduce time hidden behind backward: 1 - (DDP step - same step without
    communication, in no_sync()) / (the same buckets all-reduced alone, back to back).
One GPU runs the plain model (no wrapper) on both sides. Writes benchmarks/results/multigpu-<n>gpu.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (1024, 4096, 4096, 1024)
BATCH = 4096
BANDWIDTH_BYTES = 256 * 2**20
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.pop("CUPY_TF32", None)  # TF32 off in CuPy (its default), as in PyTorch below


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


# ---- our worker: one process per GPU, started by tinygrad_gpu.distributed.run --------------------
def ours_worker(args: argparse.Namespace) -> None:
    import cupy as cp
    import numpy as np

    import tinygrad_gpu as tg
    from tinygrad_gpu.nn.parallel import DistributedDataParallel

    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if world > 1:
        tg.distributed.init_process_group("nccl")
    else:
        cp.cuda.Device(local_rank).use()
    rank = tg.distributed.get_rank()
    tg.manual_seed(0)
    layers: list = []
    for n_in, n_out in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [tg.nn.Linear(n_in, n_out, device="cuda"), tg.nn.ReLU()]
    model = tg.nn.Sequential(*layers[:-1])
    net = DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb) if world > 1 else model
    opt = tg.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = tg.nn.MSELoss()
    rng = np.random.default_rng(rank)
    x = tg.Tensor(rng.standard_normal((BATCH, WIDTHS[0]), np.float32), device="cuda")
    y = tg.Tensor(rng.standard_normal((BATCH, WIDTHS[-1]), np.float32), device="cuda")

    def step() -> None:
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    def time_ms(fn, count: int, repeats: int = 3) -> float:
        """Median over repeats of the GPU time per call, CUDA events around `count` calls."""
        results = []
        for _ in range(repeats):
            if world > 1:
                tg.distributed.barrier()
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(count):
                fn()
            end.record()
            end.synchronize()
            results.append(cp.cuda.get_elapsed_time(start, end) / count)
        return median(results)

    for _ in range(args.warmup):
        step()
    result: dict = {"world_size": world, "step_ms": time_ms(step, args.steps)}
    if world > 1:
        with net.no_sync():
            for _ in range(2):
                step()
            result["local_step_ms"] = time_ms(step, args.steps)
        group = tg.distributed.group()
        buckets = net._reducer.buckets

        def reduce_all_buckets() -> None:
            for bucket in buckets:
                group.all_reduce(bucket.flat, "avg")

        reduce_all_buckets()
        result["allreduce_ms"] = time_ms(reduce_all_buckets, args.steps)
        result["buckets"] = len(buckets)
        exposed = max(0.0, result["step_ms"] - result["local_step_ms"])
        result["hidden_fraction"] = max(0.0, 1.0 - exposed / result["allreduce_ms"])
    throughput = tg.Tensor(np.array([BATCH / result["step_ms"] * 1e3], np.float64), device="cuda")
    per_rank = [throughput.numpy()[0]]
    if world > 1:
        gathered = [tg.Tensor(np.zeros(1), device="cuda") for _ in range(world)]
        tg.distributed.all_gather(gathered, throughput)
        per_rank = [float(t.numpy()[0]) for t in gathered]
    print(f"[ours] rank {rank}/{world}: {result['step_ms']:.2f} ms/step, "
          f"{BATCH / result['step_ms'] * 1e3:,.0f} samples/s", flush=True)
    result["per_rank_samples_per_s"] = per_rank
    result["samples_per_s"] = sum(per_rank)
    save(result, rank, args.out)  # the scaling figures survive a failure of what follows
    if world > 1:
        result.update(bandwidth(tg, cp, group, world, rank, time_ms))
        save(result, rank, args.out)
        tg.distributed.destroy_process_group()


def save(result: dict, rank: int, path: str) -> None:
    """Rank 0 writes the figures so far."""
    if rank == 0:
        with open(path, "w") as f:
            json.dump(result, f)


def bandwidth(tg, cp, group, world: int, rank: int, time_ms) -> dict:
    """Bus bandwidth of a 256 MiB float32 all-reduce: ours vs a raw cupyx.distributed communicator."""
    import numpy as np

    items = BANDWIDTH_BYTES // 4
    factor = 2 * (world - 1) / world
    t = tg.Tensor(cp.ones(items, np.float32), device="cuda")
    for _ in range(3):
        tg.distributed.all_reduce(t)
    ours = time_ms(lambda: tg.distributed.all_reduce(t), 10)
    out = {"bandwidth_ours_GBps": BANDWIDTH_BYTES / ours / 1e6 * factor}
    raw_buffer = cp.ones(items, np.float32)
    try:
        import cupyx.distributed
        port = int(os.environ["MASTER_PORT"]) + 1
        comm = cupyx.distributed.init_process_group(world, rank, host=os.environ["MASTER_ADDR"], port=port)
        raw = lambda: comm.all_reduce(raw_buffer, raw_buffer, "sum")
        out["raw_kind"] = "cupyx.distributed"
    except Exception as exc:  # measured through CuPy's NCCL binding directly instead
        out["raw_kind"] = f"cupy.cuda.nccl (cupyx.distributed failed: {type(exc).__name__}: {exc})"
        raw = lambda: group.comm.allReduce(raw_buffer.data.ptr, raw_buffer.data.ptr, items, 7, 0,
                                           cp.cuda.get_current_stream().ptr)
    for _ in range(3):
        raw()
    raw_ms = time_ms(raw, 10)
    out["bandwidth_raw_GBps"] = BANDWIDTH_BYTES / raw_ms / 1e6 * factor
    out["bandwidth_ratio"] = out["bandwidth_ours_GBps"] / out["bandwidth_raw_GBps"]
    return out


# ---- PyTorch DDP: processes started by torch.multiprocessing --------------------------------------
def torch_process(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.set_device(rank)
    if world > 1:
        torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    torch.manual_seed(0)
    layers: list = []
    for n_in, n_out in zip(WIDTHS[:-1], WIDTHS[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).cuda()
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank]) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.MSELoss()
    generator = torch.Generator(device="cuda").manual_seed(rank)
    x = torch.randn(BATCH, WIDTHS[0], device="cuda", generator=generator)
    y = torch.randn(BATCH, WIDTHS[-1], device="cuda", generator=generator)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    results = []
    for _ in range(3):
        if world > 1:
            torch.distributed.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            step()
        end.record()
        end.synchronize()
        results.append(start.elapsed_time(end) / args.steps)
    step_ms = median(results)
    print(f"[torch] rank {rank}/{world}: {step_ms:.2f} ms/step, {BATCH / step_ms * 1e3:,.0f} samples/s",
          flush=True)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"world_size": world, "step_ms": step_ms,
                       "samples_per_s": world * BATCH / step_ms * 1e3,
                       "version": torch.__version__}, f)
    if world > 1:
        torch.distributed.destroy_process_group()


def torch_worker(args: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    mp.spawn(torch_process, args=(args.nproc, free_port(), args, args.out), nprocs=args.nproc, join=True)


# ---- the driver ---------------------------------------------------------------------------------
def run_job(command: list[str], out: str, timeout: float) -> tuple[dict | None, str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TINYGRAD_GPU_DEVICE", None)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # the launcher forwards SIGTERM to its workers, then stops them
        process.communicate(timeout=60)
        figures = None
        if os.path.exists(out):
            with open(out) as f:
                figures = json.load(f)
        return figures, f"timed out after {timeout:g} s"
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    sys.stdout.write(done.stdout)
    figures = None
    if os.path.exists(out):  # what the job measured before any failure
        with open(out) as f:
            figures = json.load(f)
    if done.returncode != 0 or figures is None:
        return figures, f"exit code {done.returncode}: {done.stderr.strip()[-1500:]}"
    return figures, ""


def versions() -> dict:
    info = {"python": platform.python_version()}
    try:
        import cupy as cp
        from cupy.cuda import nccl
        info.update(cupy=cp.__version__, nccl=nccl.get_version(),
                    device=cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                    gpus=cp.cuda.runtime.getDeviceCount())
    except Exception as exc:
        info["cupy_problem"] = f"{type(exc).__name__}: {exc}"
    try:
        import torch
        info["torch"] = torch.__version__
    except Exception as exc:
        info["torch_problem"] = f"{type(exc).__name__}: {exc}"
    return info


def driver(args: argparse.Namespace) -> None:
    info = versions()
    gpus = info.get("gpus", 0)
    if gpus < 1:
        sys.exit(f"bench-multigpu needs CuPy and a GPU: {info.get('cupy_problem')}")
    sizes = [k for k in (1, 2, 4) if k <= gpus]
    rows = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for k in sizes:
            row = rows[k] = {}
            out = os.path.join(tmp, f"ours-{k}.json")
            command = [sys.executable, "-m", "tinygrad_gpu.distributed.run", "--nproc-per-node", str(k),
                       "--master-port", str(free_port()), os.path.abspath(__file__), "--worker", "ours",
                       "--out", out, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--bucket-cap-mb", str(args.bucket_cap_mb)]
            row["ours"], problem = run_job(command, out, args.timeout)
            if problem:
                row["ours_problem"] = problem
                print(f"ours on {k} GPU(s) failed: {problem}", file=sys.stderr)
            if "torch" in info:
                out = os.path.join(tmp, f"torch-{k}.json")
                command = [sys.executable, os.path.abspath(__file__), "--worker", "torch", "--nproc", str(k),
                           "--out", out, "--steps", str(args.steps), "--warmup", str(args.warmup)]
                row["torch"], problem = run_job(command, out, args.timeout)
                if problem:
                    row["torch_problem"] = problem
                    print(f"torch on {k} GPU(s) failed: {problem}", file=sys.stderr)
    report = summarize(rows, info, gpus)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", "results", f"multigpu-{gpus}gpu.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwritten to {os.path.relpath(path, ROOT)}")


def summarize(rows: dict, info: dict, gpus: int) -> dict:
    """Scaling, PyTorch ratio, bandwidth and overlap per GPU count; prints a table."""
    base = {side: (rows.get(1, {}).get(side) or {}).get("samples_per_s") for side in ("ours", "torch")}
    targets = {2: 1.95, 4: 3.8}
    figures = []
    print(f"\n{info.get('device', '?')} x{gpus}; CuPy {info.get('cupy')}, NCCL {info.get('nccl')}, "
          f"PyTorch {info.get('torch')}; wide MLP {'-'.join(map(str, WIDTHS))}, batch {BATCH}/GPU, SGD, "
          "fp32, TF32 off\n")
    header = ("GPUs", "ours ms", "torch ms", "ours/torch", "ours scaling", "target", "torch scaling",
              "hidden", "AR ms", "ours GB/s", "raw GB/s", "ours/raw")
    print(" | ".join(f"{h:>12}" for h in header))
    for k, row in rows.items():
        ours, theirs = row.get("ours") or {}, row.get("torch") or {}
        entry = {"gpus": k, "ours": ours, "torch": theirs,
                 "problems": {key: value for key, value in row.items() if key.endswith("problem")}}
        if ours and base["ours"]:
            entry["ours_scaling"] = ours["samples_per_s"] / base["ours"]
        if theirs and base["torch"]:
            entry["torch_scaling"] = theirs["samples_per_s"] / base["torch"]
        if ours and theirs:
            entry["ours_over_torch_step_time"] = ours["step_ms"] / theirs["step_ms"]
        if k in targets:
            entry["scaling_target"] = targets[k]
            entry["scaling_met"] = entry.get("ours_scaling", 0) >= targets[k]
            entry["torch_ratio_met"] = entry.get("ours_over_torch_step_time", 9) <= 1.0
            entry["bandwidth_met"] = ours.get("bandwidth_ratio", 0) >= 0.95
        figures.append(entry)

        def cell(value, fmt="{:.2f}"):
            return fmt.format(value) if isinstance(value, (int, float)) else "-"

        print(" | ".join(f"{c:>12}" for c in (
            k, cell(ours.get("step_ms")), cell(theirs.get("step_ms")),
            cell(entry.get("ours_over_torch_step_time")),
            cell(entry.get("ours_scaling")), cell(targets.get(k)), cell(entry.get("torch_scaling")),
            cell(ours.get("hidden_fraction"), "{:.0%}"), cell(ours.get("allreduce_ms")),
            cell(ours.get("bandwidth_ours_GBps"), "{:.0f}"), cell(ours.get("bandwidth_raw_GBps"), "{:.0f}"),
            cell(ours.get("bandwidth_ratio"), "{:.1%}"))))
        for name, problem in entry["problems"].items():
            print(f"    {name}: {problem[:300]}")
        if ours.get("per_rank_samples_per_s"):
            each = ", ".join(f"{v:,.0f}" for v in ours["per_rank_samples_per_s"])
            print(f"    ours per rank (samples/s): {each}")
    if gpus < 4:
        print("\n(no 4-GPU row: this machine has fewer than 4 GPUs)")
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": info, "model": {"widths": WIDTHS, "batch_per_gpu": BATCH, "optimizer": "SGD",
                                       "dtype": "float32", "tf32": False},
            "hidden_fraction_definition": "1 - max(0, step - no_sync step) / all-reduce of all buckets alone",
            "figures": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--nproc", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat (3 repeats)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--bucket-cap-mb", type=float, default=25,
                        help="DistributedDataParallel's bucket size")
    parser.add_argument("--timeout", type=float, default=240, help="seconds allowed per job")
    args = parser.parse_args()
    if args.worker == "ours":
        ours_worker(args)
    elif args.worker == "torch":
        torch_worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
