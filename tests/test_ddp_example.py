"""examples/ddp_mlp.py: alone it learns the digits; with --nproc-per-node it restarts through the launcher."""

import importlib.util
import sys
from pathlib import Path

import pytest

import tinygrad_gpu as tg

pytest.importorskip("sklearn", reason="the example needs scikit-learn (the dev extra)")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_mlp.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("ddp_mlp_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_process_learns_the_digits(device, example):
    result = example.train(epochs=8, device=device)
    assert result["world_size"] == 1 and result["samples_per_s"] > 0
    assert result["test_accuracy"] > 0.93


def test_command_line_saves_on_the_main_process(example, tmp_path, capsys):
    path = tmp_path / "digits.npz"
    example.main(["--epochs", "2", "--device", "cpu", "--save", str(path)])
    out = capsys.readouterr().out
    assert "rank 0/1:" in out and "samples/s" in out and "test accuracy" in out
    names = {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    assert set(tg.load(path, device="cpu")) == names


def test_nproc_per_node_goes_through_the_launcher(example):
    command = example.launcher_command(2, ["--epochs", "3"])
    assert command[:5] == [sys.executable, "-m", "tinygrad_gpu.distributed.run", "--nproc-per-node", "2"]
    assert command[5] == str(EXAMPLE) and command[6:] == ["--epochs", "3"]
