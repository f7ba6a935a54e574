"""examples/digits_cnn.py: a short run learns the digits; the command line reports and plots."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits examples need scikit-learn (the dev extra)")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits_cnn.py"


@pytest.fixture(scope="module")
def digits_cnn():
    spec = importlib.util.spec_from_file_location("digits_cnn_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_run_learns_the_digits(device, digits_cnn):
    history = digits_cnn.train(epochs=4, seed=0, device=device, quiet=True)
    assert history["device"] == device and len(history["test_accuracy"]) == 4
    assert history["test_accuracy"][-1] > 0.9  # the full 20-epoch run reaches about 99.5%
    assert history["train_loss"][-1] < history["train_loss"][0] / 2
    assert len(history["predictions"]) == len(history["y_test"]) == 360
    # OneCycleLR: the rate rises from 3e-3 / 25 near its 3e-3 peak, then ends far below the start
    rates = history["lr"]
    assert 3e-3 / 2 < max(rates) <= 3e-3 * (1 + 1e-9) and rates[-1] < 3e-3 / 25 / 10


def test_eval_mode_is_deterministic_and_train_mode_is_not(device, digits_cnn):
    """Dropout and batch statistics act in train() only: evaluate() sees the same logits twice."""
    import tinygrad_gpu as tg

    tg.manual_seed(0)
    model = digits_cnn.build_model(4, 8, 0.5, device)
    x = tg.Tensor(np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32), device=device)
    model.train()
    assert not np.array_equal(model(x).numpy(), model(x).numpy())
    model.eval()
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    y = np.arange(6)
    from digits import evaluate  # the helper digits_cnn reports with (loading it put examples/ on the path)

    _, accuracy, predictions = evaluate(model, x, y)
    assert not model.training and accuracy == float((predictions == y).mean())
    model.train()
    evaluate(model, x, y)
    assert model.training  # evaluate gives the mode back


def test_random_shifts_move_whole_images_by_at_most_one_pixel(digits_cnn):
    rng = np.random.default_rng(0)
    images = rng.random((200, 8, 8)).astype(np.float32)
    shifted = digits_cnn.random_shifts(images, np.random.default_rng(1))
    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    seen = set()
    for image, moved in zip(padded, shifted):
        offsets = [(dy, dx) for dy in range(3) for dx in range(3)
                   if np.array_equal(image[dy:dy + 8, dx:dx + 8], moved)]
        assert len(offsets) == 1  # exactly one placement of the padded image gives the shifted one
        seen.add(offsets[0])
    assert len(seen) == 9  # every shift in [-1, 1]² occurs
    np.testing.assert_array_equal(digits_cnn.random_shifts(images, rng, max_shift=0), images)


def test_command_line_reports_and_plots(digits_cnn, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "digits_cnn.png"
    digits_cnn.main(["--device", "cpu", "--epochs", "2", "--channels", "4", "--hidden", "16", "--quiet",
                    "--plot", str(target)])
    out = capsys.readouterr().out
    assert "device cpu: test accuracy" in out and "after 2 epochs" in out and f"wrote {target}" in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_target_passes_options():
    """`make digits-cnn DIGITS_CNN_ARGS=...` hands the options to the example."""
    done = subprocess.run(["make", "-n", "digits-cnn", "DIGITS_CNN_ARGS=--device cpu --epochs 3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    assert "examples/digits_cnn.py --device cpu --epochs 3" in done.stdout, done.stdout
