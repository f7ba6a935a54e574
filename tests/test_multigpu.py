"""DistributedDataParallel and the collectives over NCCL on two or more GPUs (`make test-multigpu`).

The workers run in their own processes, started by the launcher; see tests/multigpu_worker.py.
"""

import json
import os
import subprocess
import sys
import time

import pytest

import tinygrad_gpu as tg

pytestmark = pytest.mark.multigpu
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multigpu_worker.py")
SCENARIOS = ("equivalence", "no_sync", "unused", "collectives", "captured", "checkpoint")
FLOAT64_TOLERANCE, FLOAT32_TOLERANCE = 1e-9, 1e-3  # relative (against 1e-3 + |value|), after 50 steps


def gpu_count():
    if not tg.cuda_available():
        return 0
    from tinygrad_gpu.backend import cupy_module
    return cupy_module().cuda.runtime.getDeviceCount()


WORLD = min(gpu_count(), 4)
needs_gpus = pytest.mark.skipif(WORLD < 2, reason="needs two or more GPUs (make test-multigpu)")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(directory, scenarios, timeout=400):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TINYGRAD_GPU_DEVICE", None)
    command = [sys.executable, "-m", "tinygrad_gpu.distributed.run", "--nproc-per-node", str(WORLD),
               "--master-port", str(free_port()), WORKER, str(directory), ",".join(scenarios)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # the launcher stops its workers: no GPU is left busy
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"the workers did not finish within {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multigpu")
    run = launch(directory, SCENARIOS)
    assert run.returncode == 0, run.stdout + run.stderr

    def read(name):
        return [json.loads((directory / f"{name}-rank{r}.json").read_text()) for r in range(WORLD)]

    return read


@needs_gpus
def test_ddp_on_several_gpus_matches_one_process_with_the_whole_batch(results):
    for rank_result in results("equivalence"):
        for key, difference in rank_result.items():
            if "-" not in key:
                continue
            tolerance = FLOAT64_TOLERANCE if key.startswith("float64") else FLOAT32_TOLERANCE
            assert difference < tolerance, (rank_result["rank"], key, difference)


@needs_gpus
def test_no_sync_accumulation_equals_one_large_batch(results):
    for r in results("no_sync"):
        assert r["grad_difference"] < FLOAT64_TOLERANCE


@needs_gpus
def test_unused_parameters_average_with_zeros(results):
    for r in results("unused"):
        assert r["grad_difference"] < 1e-5
        expected = ["left.weight", "left.bias"] if r["rank"] == 0 else ["right.weight", "right.bias"]
        assert r["unused"] == expected


@needs_gpus
def test_collectives(results):
    for r in results("collectives"):
        for key in ("sum", "avg", "max", "min", "strided", "broadcast", "all_gather"):
            assert r[key] < 1e-5, (r["rank"], key, r[key])


@needs_gpus
def test_a_captured_ddp_step_replays_like_the_eager_one(results):
    for r in results("captured"):
        assert r["captured"] or r["reason"], "an uncaptured step must say why"
        assert r["difference"] < FLOAT32_TOLERANCE


@needs_gpus
def test_checkpoint_saved_on_rank_0_loads_everywhere(results):
    for r in results("checkpoint"):
        assert r["difference"] == 0


@needs_gpus
def test_a_failing_rank_ends_the_job_quickly_with_its_traceback(tmp_path):
    start = time.monotonic()
    run = launch(tmp_path, ["fail"], timeout=120)
    assert time.monotonic() - start < 60
    assert run.returncode != 0
    assert f"RuntimeError: rank {WORLD - 1} fails on purpose" in run.stderr.split("failed with")[-1]


@needs_gpus
def test_init_times_out_clearly_when_a_rank_is_missing(tmp_path):
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), PYTHONPATH=ROOT)
    code = "import tinygrad_gpu as tg; tg.distributed.init_process_group(timeout=2)"
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert run.returncode != 0 and "DistributedError" in run.stderr and "ranks [1] of 2" in run.stderr
