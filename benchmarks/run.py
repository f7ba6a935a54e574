"""tinygrad_gpu benchmark suite: ours side by side with PyTorch and a hand-written NumPy/CuPy baseline.

    PYTHONPATH=. python3 benchmarks/run.py [--device cpu|cuda] [--quick] [--json PATH]

Prints a line per measurement as it goes, then the table (job | ours | peers | ratio | target |
result). Times are medians over repeats; every ratio comes from figures of this same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

JOBS = ("xor", "captured", "mlp", "wide", "conv", "lenet", "lenet-captured", "classifier",
        "classifier-captured", "bandwidth", "reductions")
MLP_SIZES = {"cuda": ((1024, 4096, 4096, 1024), 4096), "cpu": ((256, 512, 512, 256), 256)}
ELEMENTS = {"cuda": 256 * 2**20, "cpu": 16 * 2**20}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to measure (default: the library's default device)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--jobs", default=",".join(JOBS),
                        help=f"comma-separated subset of {','.join(JOBS)} (default: all)")
    parser.add_argument("--size", metavar="W0,W1,...",
                        help="MLP layer widths (default 1024,4096,4096,1024 on cuda, 256,512,512,256 on cpu)")
    parser.add_argument("--batch", type=int, help="MLP batch size (default 4096 on cuda, 256 on cpu)")
    parser.add_argument("--elements", type=int,
                        help="array length for the bandwidth and reductions jobs "
                             "(default 256M on cuda, 16M on cpu)")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="threads for NumPy and PyTorch on the CPU (default 1, as the issue's CPU row)")
    args = parser.parse_args(argv)
    args.jobs = [job.strip() for job in args.jobs.split(",") if job.strip()]
    unknown = sorted(set(args.jobs) - set(JOBS))
    if unknown:
        parser.error(f"unknown job(s) {unknown}; choose from {JOBS}")
    if args.size:
        args.size = tuple(int(w) for w in args.size.split(","))
        if len(args.size) < 2:
            parser.error("--size needs at least two widths")
    return args


def configure_environment(cpu_threads: int) -> None:
    """Set what NumPy, CuPy and PyTorch read from the environment when they are imported."""
    threads = str(cpu_threads)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = threads
    # CuPy uses TF32 for fp32 matmuls only when CUPY_TF32=1: compare full fp32 with full fp32
    os.environ.pop("CUPY_TF32", None)


def import_torch(device: str, cpu_threads: int) -> tuple[object, str | None, str]:
    """PyTorch set up like ours (threads, TF32 off), the device it runs on here, and a note."""
    try:
        import torch
    except Exception as exc:  # not installed, or a build that cannot load here
        return None, None, f"PyTorch unavailable ({type(exc).__name__}: {exc}); no PyTorch column"
    torch.set_num_threads(cpu_threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "cuda" and not torch.cuda.is_available():
        return torch, None, f"PyTorch {torch.__version__} has no CUDA here; no PyTorch column on the GPU"
    return torch, device, ""


def main(argv: list[str]) -> int:
    """Run the selected jobs, print the table, write the JSON file when asked."""
    args = parse_args(argv)
    configure_environment(args.cpu_threads)
    # Imported only now: NumPy's BLAS reads its thread count when it is loaded.
    import bandwidth
    import classifier
    import cnn
    import report
    import training

    import tinygrad_gpu as tg

    device = args.device or tg.default_device()
    if device == "cuda" and not tg.cuda_available():
        print("--device cuda: no usable GPU here (CuPy missing or no device)", file=sys.stderr)
        return 2
    torch, torch_device, torch_note = import_torch(device, args.cpu_threads)
    widths, batch = MLP_SIZES[device]
    widths, batch = args.size or widths, args.batch or batch
    elements = args.elements or ELEMENTS[device]
    ctx = training.Context(device, torch, torch_device, args.quick, [torch_note] if torch_note else [])
    info = report.environment(device, args.cpu_threads, torch)
    print(report.header(info), flush=True)
    if device == "cpu":
        ctx.notes.append(f"CPU sizes: MLP {'-'.join(map(str, widths))} batch {batch}, "
                         f"bandwidth over {elements:,} elements (the GPU runs use bigger ones)")

    jobs = {
        "xor": lambda: training.xor_eager(ctx),
        "captured": lambda: training.xor_captured(ctx),
        "mlp": lambda: training.mlp_step(ctx, widths, batch),
        "wide": lambda: training.wide_layer(ctx),
        "conv": lambda: cnn.conv_layer(ctx),
        "lenet": lambda: cnn.lenet_eager(ctx),
        "lenet-captured": lambda: cnn.lenet_captured(ctx),
        "classifier": lambda: classifier.classifier_eager(ctx),
        "classifier-captured": lambda: classifier.classifier_captured(ctx),
        "bandwidth": lambda: bandwidth.bandwidth(ctx, elements),
        "reductions": lambda: bandwidth.reductions(ctx, elements),
    }
    rows: list[report.Row] = []
    for name in JOBS:  # a fixed order: the bandwidth job's large arrays come last
        if name not in args.jobs:
            continue
        print(f"\n[{name}]", flush=True)
        try:
            new_rows = jobs[name]()
        except Exception as exc:  # one broken job must not hide the others' figures
            sys.stdout.flush()
            traceback.print_exc()
            sys.stderr.flush()
            ctx.notes.append(f"{name}: failed with {type(exc).__name__}: {exc}")
            new_rows = [report.Row(name, "", None, problem="error")]
        for row in new_rows:
            print(f"  {row.job}: ours {report.format_value(row.ours, row.unit)}; "
                  + ", ".join(f"{p} {report.format_value(v, row.unit)}" for p, v in row.peers.items()),
                  flush=True)
        rows.extend(new_rows)

    print()
    for note in ctx.notes:
        print(f"note: {note}")
    if args.json:
        settings = {"quick": args.quick, "jobs": args.jobs, "mlp_widths": list(widths), "mlp_batch": batch,
                    "elements": elements, "cpu_threads": args.cpu_threads}
        report.write_json(args.json, info, settings, rows, ctx.notes)
        print(f"wrote {args.json}")
    print()
    print(report.header(info))
    print(report.table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
