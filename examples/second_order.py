"""Second-order training on the XOR network (2 -> 4 tanh -> 1 sigmoid, MSE loss).

  python examples/second_order.py                 both parts on the default device
  python examples/second_order.py --device cpu

(a) Newton-CG: each step solves (H + λI) d = -g by conjugate gradients, where every product H·v
    is a Hessian-vector product from tg.autograd.functional.hvp (a double backward, no Hessian
    matrix is ever formed); a backtracking line search and an adaptive damping λ keep it safe on a
    non-convex loss. It reaches loss < 1e-6 in 16 iterations, where SGD with momentum from the
    same start is still above it after 20,000 epochs (loss 5e-6; 3e-4 after 300 epochs).
(b) A gradient penalty: loss = MSE + w·mean((‖d out / d x‖ - 1)²), the input gradient taken with
    tg.grad(create_graph=True) inside the loss, so Adam differentiates through it; the penalty falls.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

import tinygrad_gpu as tg
from tinygrad_gpu.autograd.functional import hvp, vjp

X = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
Y = [[0.0], [1.0], [1.0], [0.0]]
TARGET_LOSS = 1e-6


def initial_parameters(device: str, seed: int = 0) -> list[tg.Tensor]:
    """W1 (4x2), b1, W2 (1x4), b2 in float64: hidden units at evenly spread directions, |w| = 2."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(4) * np.pi / 2 + np.pi / 4
    w1 = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    b1 = np.full(4, -0.5)
    w2 = rng.uniform(-1, 1, (1, 4))
    b2 = np.zeros(1)
    return [tg.Tensor(v, device=device, dtype=tg.float64) for v in (w1, b1, w2, b2)]


def network(x: tg.Tensor, w1: tg.Tensor, b1: tg.Tensor, w2: tg.Tensor, b2: tg.Tensor) -> tg.Tensor:
    """The XOR network's output for a batch x."""
    return ((x @ w1.T + b1).tanh() @ w2.T + b2).sigmoid()


# ---- (a) Newton-CG ---------------------------------------------------------------------------
def dot(u: list[tg.Tensor], v: list[tg.Tensor]) -> float:
    """The inner product of two parameter-shaped lists of tensors."""
    return float(sum((a * b).sum().item() for a, b in zip(u, v)))


def conjugate_gradients(apply_h: Callable[[list], list], g: list[tg.Tensor], damping: float,
                        iterations: int = 30) -> list[tg.Tensor]:
    """An approximate solution of (H + damping I) d = -g; stops at negative curvature (Steihaug)."""
    d = [t * 0.0 for t in g]
    r = [-t for t in g]
    p = list(r)
    rr = dot(r, r)
    for _ in range(iterations):
        hp = [a + b * damping for a, b in zip(apply_h(p), p)]
        curvature = dot(p, hp)
        if curvature <= 0:  # not a descent model along p: keep what we have (or the gradient)
            return d if dot(d, d) > 0 else r
        alpha = rr / curvature
        d = [a + b * alpha for a, b in zip(d, p)]
        r = [a - b * alpha for a, b in zip(r, hp)]
        rr_new = dot(r, r)
        if rr_new < 1e-20:
            break
        p = [a + b * (rr_new / rr) for a, b in zip(r, p)]
        rr = rr_new
    return d


def newton_cg(device: str, max_iterations: int = 30) -> tuple[int, float]:
    """Newton-CG from the shared start; returns (iterations, final loss)."""
    x = tg.Tensor(X, device=device, dtype=tg.float64)
    y = tg.Tensor(Y, device=device, dtype=tg.float64)

    def loss_of(*params: tg.Tensor) -> tg.Tensor:
        return ((network(x, *params) - y) ** 2).mean()

    params, damping = initial_parameters(device), 1.0
    loss = loss_of(*params).item()
    for iteration in range(1, max_iterations + 1):
        _, g = vjp(loss_of, tuple(params))
        at = tuple(params)
        d = conjugate_gradients(lambda v, at=at: list(hvp(loss_of, at, tuple(v))[1]), list(g), damping)
        slope, step = dot(g, d), 1.0
        while step > 1e-8:  # backtracking (Armijo) line search
            trial = [p + s * step for p, s in zip(params, d)]
            trial_loss = loss_of(*trial).item()
            if trial_loss <= loss + 1e-4 * step * slope:
                break
            step *= 0.5
        params, loss = trial, trial_loss
        damping = max(damping * (0.3 if step == 1.0 else 3.0), 1e-12)
        if loss < TARGET_LOSS:
            return iteration, loss
    return max_iterations, loss


def sgd(device: str, max_epochs: int = 5000) -> tuple[int, float]:
    """SGD with momentum (lr 0.5, momentum 0.9, as examples/xor.py) from the same start."""
    x = tg.Tensor(X, device=device, dtype=tg.float64)
    y = tg.Tensor(Y, device=device, dtype=tg.float64)
    params = [p.requires_grad_() for p in initial_parameters(device)]
    optimizer = tg.optim.SGD(params, lr=0.5, momentum=0.9)
    for epoch in range(1, max_epochs + 1):
        optimizer.zero_grad()
        loss = ((network(x, *params) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
        if epoch % 50 == 0 and loss.item() < TARGET_LOSS:
            return epoch, loss.item()
    return max_epochs, loss.item()


# ---- (b) gradient penalty ---------------------------------------------------------------------
def gradient_penalty_training(device: str, epochs: int = 600, weight: float = 0.1,
                              report_every: int = 100) -> list[tuple[int, float, float]]:
    """Adam on MSE + weight·penalty; returns (epoch, mse, penalty) every report_every epochs."""
    x = tg.Tensor(X, device=device, dtype=tg.float64, requires_grad=True)
    y = tg.Tensor(Y, device=device, dtype=tg.float64)
    params = [p.requires_grad_() for p in initial_parameters(device, seed=1)]
    optimizer = tg.optim.Adam(params, lr=0.01)
    history = []
    for epoch in range(epochs + 1):
        optimizer.zero_grad()
        out = network(x, *params)
        slope, = tg.grad(out.sum(), x, create_graph=True)  # d out_i / d x_i, one row per sample
        penalty = (((slope * slope).sum(dim=1) + 1e-12).sqrt() - 1.0).pow(2).mean()
        mse = ((out - y) ** 2).mean()
        if epoch % report_every == 0:
            history.append((epoch, mse.item(), penalty.item()))
        if epoch == epochs:
            break
        (mse + weight * penalty).backward()
        optimizer.step()
    return history


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print what they show."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda where available)")
    parser.add_argument("--sgd-epochs", type=int, default=5000, help="SGD's epoch budget (default: 5000)")
    parser.add_argument("--penalty-epochs", type=int, default=600, help="part (b)'s epochs (default: 600)")
    args = parser.parse_args(argv)
    device = args.device or tg.default_device()

    print(f"(a) XOR to loss < {TARGET_LOSS:g} on {device}, from the same start")
    iterations, loss = newton_cg(device)
    print(f"  Newton-CG (Hessian-vector products): {iterations} iterations, loss {loss:.2e}")
    epochs, sgd_loss = sgd(device, args.sgd_epochs)
    verdict = "" if sgd_loss < TARGET_LOSS else f" (not yet below {TARGET_LOSS:g})"
    print(f"  SGD (lr 0.5, momentum 0.9):          {epochs} epochs, loss {sgd_loss:.2e}{verdict}")

    print("(b) Adam on MSE + 0.1 * mean((|d out / d x| - 1)^2)")
    for epoch, mse, penalty in gradient_penalty_training(device, args.penalty_epochs):
        print(f"  epoch {epoch:4d}: mse {mse:.4f}, penalty {penalty:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
