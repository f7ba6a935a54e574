"""The launcher: `python -m tinygrad_gpu.distributed.run --nproc-per-node N script.py args...`.

Starts one process per GPU with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set (and NCCL_NVLS_ENABLE=0 unless the caller set it), forwards SIGINT/SIGTERM/SIGHUP
to them, and when one rank fails stops the others and exits with that rank's code, repeating the
end of its error output. Each worker's stderr passes through the launcher unchanged.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

GRACE_SECONDS = 5.0  # how long stopped workers get to exit before SIGKILL
TAIL_LINES = 60  # lines of a failed rank's stderr repeated in the summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinygrad_gpu.distributed.run",
        description="Start one training process per GPU (data parallelism over NCCL).")
    parser.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1,
                        help="processes (GPUs) on this node")
    parser.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    parser.add_argument("--node-rank", "--node_rank", type=int, default=0, help="this node's index")
    parser.add_argument("--master-addr", "--master_addr", default="127.0.0.1",
                        help="address of the node running rank 0")
    parser.add_argument("--master-port", "--master_port", type=int, default=29500,
                        help="free TCP port on the master node")
    parser.add_argument("-m", "--module", action="store_true",
                        help="run the script argument as a module (python -m)")
    parser.add_argument("script", help="the training script (or module with -m)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    return parser


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.nnodes < 1:
        parser.error(f"--nnodes must be at least 1, got {args.nnodes}")
    if not 0 <= args.node_rank < args.nnodes:
        parser.error(f"--node-rank must be in 0..{args.nnodes - 1}, got {args.node_rank}")
    if not 0 < args.master_port < 65536:
        parser.error(f"--master-port must be a TCP port (1..65535), got {args.master_port}")
    if not args.module and not os.path.exists(args.script):
        parser.error(f"script {args.script!r} does not exist")


class _Worker:
    """One rank's process, with a thread copying its stderr through and keeping the last lines."""

    def __init__(self, rank: int, command: list[str], env: dict[str, str]) -> None:
        self.rank = rank
        self.tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, start_new_session=True)
        self.reader = threading.Thread(target=self._copy_stderr, daemon=True)
        self.reader.start()

    def _copy_stderr(self) -> None:
        for line in iter(self.process.stderr.readline, b""):
            self.tail.append(line)
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signum)  # the worker and anything it started
            except ProcessLookupError:
                pass


def _stop(workers: list[_Worker], signum: int = signal.SIGTERM) -> None:
    """Signal every running worker, wait up to GRACE_SECONDS, then kill what is left."""
    for worker in workers:
        worker.signal(signum)
    deadline = time.monotonic() + GRACE_SECONDS
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.signal(signal.SIGKILL)
            worker.process.wait()


def launch(argv: Sequence[str] | None = None) -> int:
    """Run the launcher with command-line arguments argv; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    world_size = args.nnodes * args.nproc_per_node
    target = ["-m", args.script] if args.module else [args.script]
    workers: list[_Worker] = []
    received: list[int] = []
    previous = {}

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for worker in workers:
            worker.signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, forward)
    try:
        for local_rank in range(args.nproc_per_node):
            rank = args.node_rank * args.nproc_per_node + local_rank
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                       LOCAL_WORLD_SIZE=str(args.nproc_per_node), GROUP_RANK=str(args.node_rank),
                       MASTER_ADDR=args.master_addr, MASTER_PORT=str(args.master_port))
            env.setdefault("NCCL_NVLS_ENABLE", "0")
            command = [sys.executable, *target, *args.script_args]
            workers.append(_Worker(rank, command, env))
        return _supervise(workers, received)
    finally:
        _stop(workers)
        for worker in workers:
            worker.reader.join(timeout=1.0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _supervise(workers: list[_Worker], received: list[int]) -> int:
    """Wait for every worker; on the first failure stop the rest and report it."""
    running = list(workers)
    while running:
        for worker in list(running):
            code = worker.process.poll()
            if code is None:
                continue
            running.remove(worker)
            if code != 0 and not received:
                _stop(running)
                worker.reader.join(timeout=2.0)
                _report(worker, code)
                return code if code > 0 else 128 - code
        if received and running:
            _stop(running, received[-1])
            running = []
        time.sleep(0.05)
    if received:
        return 128 + received[-1]
    return 0


def _report(worker: _Worker, code: int) -> None:
    how = f"exit code {code}" if code > 0 else f"signal {signal.Signals(-code).name}"
    tail = b"".join(worker.tail).decode(errors="replace").rstrip()
    lines = [f"\n[tinygrad_gpu.distributed.run] rank {worker.rank} (pid {worker.process.pid}) failed "
             f"with {how}; the other ranks were stopped."]
    if tail:
        lines.append(f"[tinygrad_gpu.distributed.run] end of rank {worker.rank}'s error output:\n{tail}")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def main() -> None:
    """Entry point of `python -m tinygrad_gpu.distributed.run`."""
    sys.exit(launch())


if __name__ == "__main__":
    main()
