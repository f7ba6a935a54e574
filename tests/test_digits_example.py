"""examples/digits.py: a short run learns the digits; the command line reports and plots."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (the dev extra)")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.py"


@pytest.fixture(scope="module")
def digits():
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_run_learns_the_digits(device, digits):
    history = digits.train(epochs=10, seed=0, device=device, quiet=True)
    assert history["device"] == device and len(history["test_accuracy"]) == 10
    assert history["test_accuracy"][-1] > 0.93  # the full 30-epoch run reaches about 0.97-0.98
    assert history["train_loss"][-1] < history["train_loss"][0] / 4
    counts = digits.confusion_matrix(history["y_test"], history["predictions"])
    assert counts.sum() == len(history["y_test"]) == 360
    assert np.trace(counts) == round(history["test_accuracy"][-1] * 360)


def test_the_split_is_seeded_and_stratified(digits):
    x_train, x_test, y_train, y_test = digits.load_data(seed=3)
    again = digits.load_data(seed=3)
    np.testing.assert_array_equal(y_test, again[3])
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64) and x_train.max() <= 1.0
    assert set(np.bincount(y_test)) <= {35, 36, 37}  # every class in proportion


def test_command_line_reports_and_plots(digits, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "digits.png"
    digits.main(["--device", "cpu", "--epochs", "2", "--quiet", "--plot", str(target)])
    out = capsys.readouterr().out
    assert "device cpu: test accuracy" in out and f"wrote {target}" in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000
