"""Classify scikit-learn's bundled 8x8 handwritten digits with an MLP (softmax cross-entropy, Adam).

    python examples/digits.py                 # default device, 30 epochs
    python examples/digits.py --device cpu --plot digits.png
    python examples/digits.py --html digits.html   # the first step explained, as a page
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

import tinygrad_gpu as tg

N_CLASSES = 10
HTML_SNAPSHOTS = 6  # epochs whose weights --html records for its slider


def load_data(seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a seeded stratified split."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, digits.target, test_size=test_fraction, random_state=seed,
                                  stratify=digits.target))


def build_model(hidden: int, device: str) -> tg.nn.Module:
    """64 pixels -> hidden -> hidden -> 10 logits, ReLU between."""
    return tg.nn.Sequential(tg.nn.Linear(64, hidden, device=device), tg.nn.ReLU(),
                            tg.nn.Linear(hidden, hidden, device=device), tg.nn.ReLU(),
                            tg.nn.Linear(hidden, N_CLASSES, device=device))


@tg.no_grad()
def evaluate(model: tg.nn.Module, x: tg.Tensor, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, predicted classes) on a whole set, in eval mode (dropout off, running
    batch-norm statistics); the model's mode is given back afterwards."""
    training = model.training
    model.eval()
    logits = model(x)
    predictions = logits.argmax(1).numpy()
    loss = tg.nn.functional.cross_entropy(logits, y).item()
    model.train(training)
    return loss, float((predictions == y).mean()), predictions


def record_epoch(history: dict[str, Any], model: tg.nn.Module, train: tuple, test: tuple, epochs_iter: Any,
                 epoch: int, quiet: bool) -> np.ndarray:
    """Evaluate on both sets after an epoch, append to `history`, report progress; the test predictions."""
    train_loss, train_accuracy, _ = evaluate(model, *train)
    test_loss, test_accuracy, predictions = evaluate(model, *test)
    for key, value in zip(("train_loss", "test_loss", "train_accuracy", "test_accuracy"),
                          (train_loss, test_loss, train_accuracy, test_accuracy)):
        history[key].append(value)
    if hasattr(epochs_iter, "set_postfix"):
        epochs_iter.set_postfix(loss=f"{train_loss:.4f}", test_acc=f"{test_accuracy:.3f}")
    elif not quiet and (epoch + 1) % 5 == 0:
        print(f"epoch {epoch + 1:3d}: train loss {train_loss:.4f}, test accuracy {test_accuracy:.4f}")
    return predictions


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def _progress(epochs: int, quiet: bool) -> Any:
    """A tqdm bar over the epochs when tqdm is installed (none when quiet), else a plain range."""
    if quiet:
        return range(epochs)
    try:
        from tqdm import tqdm
    except ImportError:
        return range(epochs)
    return tqdm(range(epochs), desc="epochs", unit="epoch")


def train(epochs: int = 30, batch_size: int = 32, lr: float = 2e-3, hidden: int = 128, seed: int = 0,
          device: str | None = None, quiet: bool = False, html: str | None = None) -> dict[str, Any]:
    """Train and evaluate after every epoch; returns the curves, final predictions and timing.

    With `html`, the first step is run op by op and written with the training history to that page.
    """
    device = device or tg.default_device()
    tg.manual_seed(seed)
    x_train, x_test, y_train, y_test = load_data(seed)
    x_train_t, x_test_t = tg.Tensor(x_train, device=device), tg.Tensor(x_test, device=device)
    model = build_model(hidden, device)
    opt = tg.optim.Adam(model.parameters(), lr=lr)
    loss_fn = tg.nn.CrossEntropyLoss()
    shuffle = np.random.default_rng(seed)
    history: dict[str, Any] = {"train_loss": [], "test_loss": [], "train_accuracy": [], "test_accuracy": []}
    record = snapshots = None
    every = max(1, epochs // HTML_SNAPSHOTS)  # a few snapshots: each holds every weight
    start = time.perf_counter()
    epochs_iter: Iterable[int] = _progress(epochs, quiet)
    for epoch in epochs_iter:
        order = shuffle.permutation(len(x_train))
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            if html and record is None:  # the first step, op by op, recorded for the page
                record = tg.viz.explain_step(model, x_train_t[batch], y_train[batch], opt,
                                             loss="cross_entropy")
                snapshots = tg.viz.snapshots(model)
                snapshots.record(0, record.loss_value, {b.name.removesuffix(" before"): b.values
                                                        for b, _, _ in record.update})
                continue
            opt.zero_grad()
            loss = loss_fn(model(x_train_t[batch]), y_train[batch])
            loss.backward()
            opt.step()
        predictions = record_epoch(history, model, (x_train_t, y_train), (x_test_t, y_test), epochs_iter,
                                   epoch, quiet)
        if snapshots is not None and ((epoch + 1) % every == 0 or epoch == epochs - 1):
            snapshots.record(epoch + 1, history["train_loss"][-1])
    history.update(seconds=time.perf_counter() - start, device=device, epochs=epochs,
                   y_test=y_test, predictions=predictions, n_train=len(x_train))
    if html:
        tg.viz.explain_html(record, history["train_loss"], snapshots, path=html,
                            title=f"Digits 64 → {hidden} → {hidden} → 10, Adam lr {lr:g}, {device}")
    return history


def plot_curves(history: dict[str, Any], loss_ax: Any, loss_title: str, acc_ax: Any, acc_title: str) -> None:
    """Train and test loss (log scale) and accuracy per epoch, on two matplotlib axes."""
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    loss_ax.plot(epochs, history["train_loss"], label="train")
    loss_ax.plot(epochs, history["test_loss"], label="test")
    loss_ax.set(title=loss_title, xlabel="epoch", yscale="log")
    loss_ax.legend()
    acc_ax.plot(epochs, history["train_accuracy"], label="train")
    acc_ax.plot(epochs, history["test_accuracy"], label="test")
    acc_ax.set(title=acc_title, xlabel="epoch")
    acc_ax.set_ylim(top=1.0)
    acc_ax.legend()


def plot(history: dict[str, Any], path: str) -> None:
    """Write loss and accuracy curves and the test confusion matrix to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax, cm_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    plot_curves(history, loss_ax, "cross-entropy loss", acc_ax, "accuracy")
    counts = confusion_matrix(history["y_test"], history["predictions"])
    cm_ax.imshow(counts, cmap="Blues")
    for (true, predicted), n in np.ndenumerate(counts):
        if n:
            cm_ax.text(predicted, true, str(n), ha="center", va="center",
                       color="white" if n > counts.max() / 2 else "black", fontsize=8)
    cm_ax.set(title=f"test confusion matrix (accuracy {history['test_accuracy'][-1]:.2%})",
              xlabel="predicted", ylabel="true", xticks=range(N_CLASSES), yticks=range(N_CLASSES))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, train, report, and optionally plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the library's default)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE.png",
                        help="write loss and accuracy curves and a confusion matrix to this PNG file")
    parser.add_argument("--html", metavar="FILE.html",
                        help="write the first step explained (matrices as heat maps) and the training "
                             "history to this self-contained page (needs Jinja2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    history = train(args.epochs, args.batch_size, args.lr, args.hidden, args.seed, args.device, args.quiet,
                    args.html)
    correct = int((history["predictions"] == history["y_test"]).sum())
    print(f"device {history['device']}: test accuracy {history['test_accuracy'][-1]:.2%} "
          f"({correct}/{len(history['y_test'])}) after {args.epochs} epochs, "
          f"train loss {history['train_loss'][-1]:.4f}, {history['seconds']:.1f} s")
    if args.plot:
        plot(history, args.plot)
        print(f"wrote {args.plot}")
    if args.html:
        print(f"wrote {args.html}")
    return history


if __name__ == "__main__":
    main()
