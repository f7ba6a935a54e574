"""Train the seed guide's XOR network (2 -> 4 ReLU -> 1 sigmoid, MSE loss, SGD)."""

import argparse
import time

import tinygrad_gpu as tg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the library's default)")
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--hidden", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tg.manual_seed(args.seed)
    device = args.device or tg.default_device()
    x = tg.Tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=device)
    y = tg.Tensor([[0], [1], [1], [0]], device=device)
    model = tg.nn.Sequential(tg.nn.Linear(2, args.hidden, device=device), tg.nn.ReLU(),
                             tg.nn.Linear(args.hidden, 1, device=device), tg.nn.Sigmoid())
    opt = tg.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = tg.nn.MSELoss()
    start = time.perf_counter()
    for _ in range(args.epochs):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    final = loss.item()
    elapsed = time.perf_counter() - start
    print(f"device {device}: loss {final:.6f} after {args.epochs} epochs "
          f"({elapsed / args.epochs * 1e6:.0f} us/epoch)")
    for inputs, target, prediction in zip(x.tolist(), y.tolist(), model(x).tolist()):
        print(f"  {inputs} -> {prediction[0]:.4f} (target {target[0]:.0f})")


if __name__ == "__main__":
    main()
