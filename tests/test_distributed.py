"""tg.distributed without a GPU: the launcher (with fake workers), rendezvous, sampler, error paths."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import backend
from tinygrad_gpu.backend import DeviceError
from tinygrad_gpu.distributed import DistributedError, rendezvous
from tinygrad_gpu.utils.data import DistributedSampler, shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, body, *args, nproc=2, wait=True):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("NCCL_NVLS_ENABLE", None)
    command = [sys.executable, "-m", "tinygrad_gpu.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), str(script), *args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_launcher_sets_the_environment_of_every_rank(tmp_path):
    result = launch(tmp_path, f"""
        import os, sys
        keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "NCCL_NVLS_ENABLE"]
        with open({str(tmp_path / "env")!r} + os.environ["RANK"], "w") as f:
            f.write(" ".join(os.environ[k] for k in keys) + " " + repr(sys.argv[1:]))
    """, "--lr", "0.1", nproc=3)
    assert result.returncode == 0, result.stderr
    lines = [(tmp_path / f"env{r}").read_text() for r in range(3)]
    assert lines == [f"{r} {r} 3 3 127.0.0.1 0 ['--lr', '0.1']" for r in range(3)]


def test_a_failing_rank_stops_the_others_and_the_launcher_exits_with_its_traceback(tmp_path):
    start = time.monotonic()
    result = launch(tmp_path, """
        import os, time
        if os.environ["RANK"] == "1":
            raise ValueError("rank one cannot go on")
        time.sleep(120)
    """, nproc=3)
    assert time.monotonic() - start < 20
    assert result.returncode == 1
    assert "rank 1" in result.stderr and "failed with exit code 1" in result.stderr
    summary = result.stderr.split("failed with exit code 1")[1]
    assert "Traceback" in summary and "ValueError: rank one cannot go on" in summary


def test_signals_are_forwarded_to_every_rank(tmp_path):
    marker = tmp_path / "marker"
    process = launch(tmp_path, f"""
        import os, signal, sys, time
        def stop(signum, frame):
            open({str(marker)!r} + os.environ["RANK"], "w").write(str(signum))
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        open({str(tmp_path / "ready")!r} + os.environ["RANK"], "w").close()
        time.sleep(120)
    """, wait=False)
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)):
            assert time.monotonic() < deadline and process.poll() is None, "the workers did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == 128 + signal.SIGTERM
    for rank in (0, 1):
        assert (tmp_path / f"marker{rank}").read_text() == str(int(signal.SIGTERM))


def test_launcher_refuses_bad_arguments(tmp_path):
    script = tmp_path / "w.py"
    script.write_text("")
    run = lambda *a: subprocess.run([sys.executable, "-m", "tinygrad_gpu.distributed.run", *a],
                                    capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert "--nproc-per-node must be at least 1" in run("--nproc-per-node", "0", str(script)).stderr
    assert "does not exist" in run(str(tmp_path / "missing.py")).stderr
    assert "--node-rank" in run("--nnodes", "2", "--node-rank", "2", str(script)).stderr


def test_rendezvous_hands_rank_0s_payload_to_every_rank():
    port, results = free_port(), {}
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(
        r, rendezvous("127.0.0.1", port, r, 4, b"id" * 64 if r == 0 else None, timeout=20)))
        for r in (3, 1, 2, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {r: b"id" * 64 for r in range(4)}


def test_rendezvous_times_out_clearly_without_peers():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 0 waited 0.5 s .* ranks \[1\] of 2"):
        rendezvous("127.0.0.1", port, 0, 2, b"x", timeout=0.5)
    with pytest.raises(DistributedError, match="rank 1 could not reach rank 0"):
        rendezvous("127.0.0.1", port, 1, 2, None, timeout=0.5)
    assert time.monotonic() - start < 5


def test_init_process_group_without_launcher_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributedError, match=r"\$RANK.*tinygrad_gpu.distributed.run"):
        tg.distributed.init_process_group()
    with pytest.raises(ValueError, match="backend"):
        tg.distributed.init_process_group("gloo")
    assert not tg.distributed.is_initialized()
    assert (tg.distributed.get_rank(), tg.distributed.get_world_size()) == (0, 1)
    assert tg.distributed.is_main_process()


def test_missing_nccl_is_a_device_error_naming_the_package(monkeypatch):
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(runtimeGetVersion=lambda: 12040)))
    fake_cuda = types.ModuleType("cupy.cuda")
    fake_cuda.nccl = types.SimpleNamespace(available=False)
    monkeypatch.setattr(backend, "cupy_module", lambda: fake_cupy)
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_cuda)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(tg.DeviceError, match=r"nvidia-nccl-cu12"):
        tg.distributed.init_process_group()
    assert not tg.distributed.is_initialized()


@pytest.mark.skipif(tg.cuda_available(), reason="checks the message on a machine without CuPy or a GPU")
def test_init_process_group_without_a_gpu_is_a_device_error(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(tg.DeviceError, match="cuda"):
        tg.distributed.init_process_group()


def test_collectives_without_a_group_or_on_the_cpu_are_refused():
    t = tg.Tensor([1.0, 2.0], device="cpu")
    with pytest.raises(DistributedError, match="'cuda' tensors"):
        tg.distributed.all_reduce(t)
    with pytest.raises(ValueError, match="unknown op"):
        tg.distributed.all_reduce(t, op="prod")
    with pytest.raises(TypeError, match="Tensor"):
        tg.distributed.broadcast(np.ones(2))
    with pytest.raises(DistributedError, match="init_process_group"):
        tg.distributed.barrier()
    tg.distributed.destroy_process_group()  # nothing to destroy: no error


# ---- the sampler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("total, world", [(12, 3), (10, 4), (7, 2), (5, 8)])
def test_shards_cover_the_data_set_with_equal_lengths(total, world):
    shards = [list(DistributedSampler(total, num_replicas=world, rank=r, seed=1)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert all(len(s) == len(DistributedSampler(total, num_replicas=world, rank=0)) for s in shards)
    assert set().union(*shards) == set(range(total))
    if total % world == 0:
        assert sum(len(s) for s in shards) == total  # disjoint
    dropped = [set(DistributedSampler(total, world, r, drop_last=True)) for r in range(world)]
    assert sum(len(s) for s in dropped) == len(set().union(*dropped)) == total - total % world


def test_each_epoch_reshuffles_alike_on_every_rank():
    samplers = [DistributedSampler(range(100), num_replicas=2, rank=r, seed=7) for r in range(2)]
    epoch0 = [list(s) for s in samplers]
    for s in samplers:
        s.set_epoch(1)
    epoch1 = [list(s) for s in samplers]
    assert epoch0[0] != epoch1[0]
    for shards in (epoch0, epoch1):
        assert sorted(shards[0] + shards[1]) == list(range(100))
    assert list(DistributedSampler(6, 2, 1, shuffle=False)) == [1, 3, 5]


def test_shard_validates_its_arguments():
    assert shard(np.arange(4), 0, 2, shuffle=False).tolist() == [0, 2]
    with pytest.raises(ValueError, match="rank"):
        shard(np.arange(4), 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        DistributedSampler(4, num_replicas=0, rank=0)
    with pytest.raises(TypeError, match="sized"):
        DistributedSampler(object())


def test_save_on_the_main_process_then_load_everywhere(tmp_path):
    model = tg.nn.Linear(3, 2)
    path = tmp_path / "ckpt.pt"
    if tg.distributed.is_main_process():
        tg.save(model.state_dict(), path)
    tg.distributed.barrier() if tg.distributed.is_initialized() else None
    other = tg.nn.Linear(3, 2)
    other.load_state_dict(tg.load(path))
    np.testing.assert_array_equal(other.weight.numpy(), model.weight.numpy())


@pytest.mark.parametrize("id_type", [bytes, tuple], ids=["cupy14-bytes", "older-tuple"])
def test_nccl_group_hands_the_unique_id_over_and_calls_nccl_with_its_arguments(monkeypatch, id_type):
    """The NCCL process group against a stand-in CuPy/NCCL: what reaches NcclCommunicator."""
    from tinygrad_gpu.distributed.process_group import NcclProcessGroup

    signed = tuple((i * 37) % 256 - 128 for i in range(128))  # C chars: negative ones too
    unique_id = bytes(b % 256 for b in signed) if id_type is bytes else signed
    made, calls = {}, []

    class Communicator:
        def __init__(self, ndev, comm_id, rank):
            if not isinstance(comm_id, id_type):  # as CuPy's typed argument does
                raise TypeError(f"Argument 'commId' has incorrect type (expected {id_type.__name__})")
            made[rank] = (ndev, comm_id)

        def allReduce(self, *args):
            calls.append(("allReduce", *args))

        def broadcast(self, *args):
            calls.append(("broadcast", *args))

    nccl = types.SimpleNamespace(available=True, get_unique_id=lambda: unique_id, get_version=lambda: 21803,
                                 NcclCommunicator=Communicator)
    used = []
    stream = types.SimpleNamespace(ptr=77)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(runtimeGetVersion=lambda: 13000, getDeviceCount=lambda: 2),
        Device=lambda i: types.SimpleNamespace(use=lambda: used.append(i)),
        get_current_stream=lambda: stream))
    fake_cuda = types.ModuleType("cupy.cuda")
    fake_cuda.nccl = nccl
    monkeypatch.setattr(backend, "cupy_module", lambda: fake_cupy)
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_cuda)
    port, groups = free_port(), {}
    threads = [threading.Thread(target=lambda r=r: groups.__setitem__(
        r, NcclProcessGroup(r, 2, r, "127.0.0.1", port, timeout=20))) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == {0: (2, unique_id), 1: (2, unique_id)} and sorted(used) == [0, 1]
    array = types.SimpleNamespace(data=types.SimpleNamespace(ptr=1234), size=10, dtype=np.dtype(np.float32))
    groups[1].all_reduce(array, "avg")
    groups[0].broadcast(array, 1, stream=types.SimpleNamespace(ptr=5))
    assert calls == [("allReduce", 1234, 1234, 10, 7, 4, 77), ("broadcast", 1234, 1234, 10, 7, 1, 5)]
    with pytest.raises(DeviceError, match="LOCAL_RANK=2 but this machine has 2 GPUs"):
        NcclProcessGroup(0, 3, 2, "127.0.0.1", port, timeout=1)


def test_a_process_leaving_without_destroy_aborts_its_communicator(monkeypatch):
    """At exit NCCL's teardown must not wait for peers: the launcher has to see a failed rank exit."""
    import tinygrad_gpu.distributed as dist

    calls = []
    group = types.SimpleNamespace(abort=lambda: calls.append("abort"),
                                  destroy=lambda: calls.append("destroy"))
    monkeypatch.setattr(dist, "_group", group)
    dist._abort_at_exit()
    assert calls == ["abort"] and not dist.is_initialized()
    dist._abort_at_exit()  # nothing left to abort
    assert calls == ["abort"]


def test_per_rank_batches_together_are_the_one_process_batch():
    """What makes a data-parallel run equal to one process: batch j of every rank, united, is batch j."""
    total, world, global_batch = 96, 4, 16
    alone = shard(np.arange(total), 0, 1, seed=5, epoch=2)
    shards = [shard(np.arange(total), r, world, seed=5, epoch=2) for r in range(world)]
    per_rank = global_batch // world
    for first in range(0, total // world, per_rank):
        united = sorted(np.concatenate([s[first:first + per_rank] for s in shards]).tolist())
        j = first // per_rank
        assert united == sorted(alone[j * global_batch:(j + 1) * global_batch].tolist())
