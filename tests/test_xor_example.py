"""examples/xor.py: it learns, and --explain prints the numbers an independent NumPy step gives."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import tinygrad_gpu as tg

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "xor.py"
_spec = importlib.util.spec_from_file_location("xor_example", EXAMPLE)
xor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xor)

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
Y = np.array([[0], [1], [1], [0]], dtype=np.float64)
# The seed guide's weights, typed in again here so that the test does not trust the example's copy.
SEED_WEIGHTS = {"W₁": [[0.5, 0.3], [0.4, 0.6], [0.2, 0.1], [0.3, 0.4]], "b₁": [0.1, 0.2, 0.1, 0.0],
                "W₂": [[0.3, 0.4, 0.2, 0.5]], "b₂": [0.1]}


def read_boxes(text, title):
    """The numbers printed inside each box titled `title` (at least one), as arrays of rows."""
    lines = text.splitlines()
    head = f"┌─ {title} ─"
    hits = [(i, line.index(head)) for i, line in enumerate(lines) if head in line]
    assert hits, f"no box titled {title!r}"
    boxes = []
    for top, left in hits:
        right = lines[top].index("┐", left)
        rows = []
        for line in lines[top + 1:]:
            cell = line[left:right + 1]
            if cell.startswith("└"):
                break
            assert cell.startswith("│") and cell.endswith("│"), f"box {title!r} is broken at {line!r}"
            rows.append([float(v) for v in cell[1:-1].split()])
        boxes.append(np.array(rows))
    return boxes


def numpy_first_step(W1, b1, W2, b2, lr):
    """The first SGD step of the XOR network, written out independently in float64 NumPy."""
    z1 = X @ W1.T + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ W2.T + b2
    y_hat = 1 / (1 + np.exp(-z2))
    diff = y_hat - Y
    loss = np.mean(diff ** 2)
    g_y_hat = 2 * diff / diff.size
    g_z2 = g_y_hat * y_hat * (1 - y_hat)
    g_a1 = g_z2 @ W2
    mask = (z1 > 0).astype(float)
    g_z1 = g_a1 * mask
    grads = {"W₁": g_z1.T @ X, "b₁": g_z1.sum(0), "W₂": g_z2.T @ a1, "b₂": g_z2.sum(0)}
    old = {"W₁": W1, "b₁": b1, "W₂": W2, "b₂": b2}
    new = {name: old[name] - lr * grads[name] for name in old}
    z1_new = np.maximum(X @ new["W₁"].T + new["b₁"], 0) @ new["W₂"].T + new["b₂"]
    loss_after = np.mean((1 / (1 + np.exp(-z1_new)) - Y) ** 2)
    boxes = {"X": X, "Z₁": z1, "A₁": a1, "Z₂": z2, "ŷ": y_hat, "diff = ŷ − Y": diff,
             "squared": diff ** 2, "sum": np.sum(diff ** 2), "loss": loss, "∂L/∂ŷ": g_y_hat,
             "∂L/∂Z₂": g_z2, "∂L/∂A₁": g_a1, "ReLU mask": mask, "∂L/∂Z₁": g_z1}
    for name in old:
        boxes.update({name: old[name], f"{name} before": old[name], f"∂L/∂{name}": grads[name],
                      f"{name} after": new[name]})
    return boxes, loss, loss_after


def check_explained_step(text, weights, lr):
    expected, loss, loss_after = numpy_first_step(*(np.array(weights[k], dtype=np.float64)
                                                   for k in ("W₁", "b₁", "W₂", "b₂")), lr)
    for title, values in expected.items():
        for printed in read_boxes(text, title):  # a gradient is shown in phases 3 and 4
            # 4 decimals are printed (4 significant digits for tiny numbers): half a unit of the last
            np.testing.assert_allclose(printed.ravel(), np.ravel(values), rtol=1e-3, atol=6e-5,
                                       err_msg=f"box {title}")
    assert f"Loss before {loss:.6f}  →  after {loss_after:.6f}" in text
    assert "= 17 numbers" in text
    for heading in ("PHASE 1: FORWARD", "PHASE 2: LOSS", "PHASE 3: BACKWARD", "PHASE 4: PARAMETER UPDATE",
                    "RESULT AFTER", "MEMORY ON"):
        assert heading in text
    return expected


def test_explain_with_the_seed_guide_weights_matches_numpy(device, capsys):
    result = xor.main(["--explain", "--init", "seed", "--epochs", "3", "--quiet", "--device", device])
    text = capsys.readouterr().out
    expected = check_explained_step(text, SEED_WEIGHTS, lr=0.1)
    # the true first forward pass of the seed guide's network (its drawing shows other numbers)
    np.testing.assert_allclose(expected["ŷ"].ravel(), [0.557, 0.686, 0.675, 0.782], atol=5e-4)
    assert abs(expected["loss"] - 0.2818) < 5e-5
    assert len(result["history"]) == 3 and abs(result["history"][0] - 0.2818) < 5e-5


def test_explain_with_spread_weights_matches_numpy(device, capsys):
    # a start where some ReLUs are off, so the mask and the stopped gradients are exercised
    model = xor.build_model(4, "spread", 0, "cpu")
    weights = dict(zip(["W₁", "b₁", "W₂", "b₂"], (p.numpy().astype(np.float64) for p in model.parameters())))
    xor.main(["--explain", "--epochs", "2", "--quiet", "--seed", "0", "--device", device])
    text = capsys.readouterr().out
    expected = check_explained_step(text, weights, lr=0.5)
    assert 0 < expected["ReLU mask"].sum() < 16
    assert f"{int(16 - expected['ReLU mask'].sum())} of 16 entries of Z₁ are ≤ 0" in text


def test_explain_memory_table_counts_live_bytes(device, capsys):
    xor.main(["--explain", "--epochs", "2", "--quiet", "--device", device])
    text = capsys.readouterr().out
    table = text[text.index("MEMORY ON"):]

    def row(label):
        line = next(line for line in table.splitlines() if line.strip("│ ").startswith(label))
        return line.strip("│ ").split()[-2:]

    assert row("Parameters") == ["68", "B"]  # (8 + 4 + 4 + 1) float32
    assert row("Gradients") == ["68", "B"]
    assert row("Training data") == ["48", "B"]
    # A₁ (ReLU output, also MatMul's input) 64 + ŷ 16 + diff 16 + the sum 4; Z₁, Z₂ are not kept
    assert row("Saved by the graph for backward") == ["100", "B"]
    assert row("A₁ (MatMul.a, ReLU.y)") == ["64", "B"]
    assert row("Z₁, Z₂: not kept")[-1] == "outputs)"
    assert row("Total") == ["284", "B"]
    if device == "cuda":
        assert "CuPy memory pool" in table


def test_default_training_learns_xor(device, capsys):
    result = xor.main(["--quiet", "--device", device])
    text = capsys.readouterr().out
    assert result["learned"] and result["loss"] < 1e-3, text
    np.testing.assert_allclose(result["predictions"], Y.ravel(), atol=0.05)
    assert len(result["history"]) == 1000 and result["history"][-1] < result["history"][0]
    assert "learned XOR" in text and "time per epoch" in text
    rows = [line.split() for line in text.splitlines() if line.lstrip().startswith("[")]
    assert [float(row[-2]) for row in rows] == pytest.approx(result["predictions"], abs=1e-4)


def test_seed_guide_weights_do_not_learn_with_the_guides_settings(device, capsys):
    result = xor.main(["--init", "seed", "--quiet", "--device", device])
    text = capsys.readouterr().out
    assert not result["learned"] and 0.2499 < result["loss"] < 0.2505
    assert "did NOT learn XOR" in text
    assert "predictions [0.557, 0.686, 0.675, 0.782] and loss 0.2818" in text
    assert "all 4 hidden units are active" in text


def test_losses_come_to_the_host_only_every_n_epochs(monkeypatch, capsys):
    reads = []
    real = xor.losses_to_host
    monkeypatch.setattr(xor, "losses_to_host", lambda losses: reads.append(len(losses)) or real(losses))
    items = []
    real_item = tg.Tensor.item
    monkeypatch.setattr(tg.Tensor, "item", lambda self: items.append(1) or real_item(self))
    result = xor.main(["--epochs", "120", "--sync-every", "50", "--quiet", "--device", "cpu"])
    assert reads == [50, 50, 20] and len(result["history"]) == 120
    assert len(items) <= 2  # the final loss only, not one per step


def test_progress_without_tqdm_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(xor, "have_module", lambda name: name != "tqdm")
    xor.main(["--epochs", "100", "--sync-every", "10", "--device", "cpu"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("epoch")]
    assert len(lines) == 10 and lines[-1].split()[1] == "100/100"


def test_plot_and_graph_files(device, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot, graph = tmp_path / "loss.png", tmp_path / "graph.dot"
    xor.main(["--epochs", "30", "--device", device, "--plot", str(plot), "--graph", str(graph)])  # with a bar
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dot = graph.read_text(encoding="utf-8")
    for label in ("W₁", "b₂", "MatMul", "ReLU", "Sigmoid", "grad 4×2", "loss"):
        assert label in dot
    explained = tmp_path / "explained.dot"
    xor.main(["--explain", "--epochs", "2", "--quiet", "--device", device, "--graph", str(explained)])
    assert "→ A₁: 4×4" in explained.read_text(encoding="utf-8")


def test_bad_options_are_refused(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        xor.main(["--init", "seed", "--hidden", "8"])
    assert "--init seed needs --hidden 4" in capsys.readouterr().err
    monkeypatch.setattr(xor, "have_module", lambda name: name != "matplotlib")
    with pytest.raises(SystemExit):
        xor.main(["--plot", "loss.png"])
    assert "--plot needs matplotlib" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        xor.main(["--device", "tpu"])
    assert "--device: unknown device 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--lr", "nan"], "--lr and --momentum must be finite"), (["--momentum", "inf"], "must be finite"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--graph", "g.xyz"], "--graph g.xyz: cannot tell the format"),
    (["--graph", "missing-directory/g.dot"], "does not exist"),
    (["--plot", "loss.xyz"], "--plot loss.xyz: cannot tell the format")])
def test_bad_values_are_usage_errors_before_training(options, message, capsys, monkeypatch, tmp_path):
    if "--plot" in options:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        xor.main([*options, "--quiet"])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
