"""examples/second_order.py: Newton-CG beats SGD on XOR, and the gradient penalty falls."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "second_order.py"
_spec = importlib.util.spec_from_file_location("second_order_example", EXAMPLE)
second_order = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(second_order)


def test_newton_cg_reaches_the_target_in_few_iterations(device):
    iterations, loss = second_order.newton_cg(device)
    assert iterations < 30 and loss < second_order.TARGET_LOSS


def test_sgd_needs_far_more_epochs(device):
    epochs, loss = second_order.sgd(device, max_epochs=300)
    assert epochs == 300 and loss > second_order.TARGET_LOSS  # not there after hundreds of epochs


def test_gradient_penalty_falls(device):
    history = second_order.gradient_penalty_training(device, epochs=300)
    penalties = [penalty for _, _, penalty in history]
    assert penalties[-1] < 0.5 * penalties[0]
    assert all(later < earlier for earlier, later in zip(penalties[1:], penalties[2:]))


def test_main_prints_both_parts(capsys):
    assert second_order.main(["--device", "cpu", "--sgd-epochs", "100", "--penalty-epochs", "100"]) == 0
    out = capsys.readouterr().out
    assert "Newton-CG (Hessian-vector products):" in out and "SGD (lr 0.5, momentum 0.9):" in out
    assert "epoch  100: mse" in out
