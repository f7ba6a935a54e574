"""Results: one Row per measurement, the environment they came from, the table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

import tinygrad_gpu as tg


@dataclass
class Row:
    """One line of the table: our figure, the peers' figures, and how ours compares with a target."""

    job: str
    unit: str  # "us", "ms", "TB/s", "GB/s" or "x"
    ours: float | None
    peers: dict[str, float] = field(default_factory=dict)
    reference: str = ""  # the peer the ratio is taken against
    ratio_kind: str = "times"  # "times": ours / reference (lower is better); "percent": of reference
    target: tuple[str, float] | None = None  # ("<=" or ">=", bound on the ratio)
    problem: str = ""  # set when the figures cannot be trusted (an error, values that disagree)
    # ours / reference as the median of per-repeat ratios (timing.Timings.paired), when both were
    # timed in turns; the ratio then reads it rather than the ratio of the two medians
    paired_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        """Ours relative to the reference peer, as the target reads it."""
        base = self.peers.get(self.reference)
        if self.ours is None or not base:
            return None
        if self.ratio_kind == "percent":
            return 100.0 * self.ours / base
        return self.paired_ratio if self.paired_ratio is not None else self.ours / base

    @property
    def passed(self) -> bool | None:
        """Whether the ratio meets the target; None when there is no target or nothing to compare."""
        if self.target is None or self.ratio is None or self.problem:
            return None
        op, bound = self.target
        return self.ratio <= bound if op == "<=" else self.ratio >= bound

    def as_dict(self) -> dict[str, Any]:
        """The row for the JSON file, ratio and verdict included."""
        data = asdict(self)
        data["target"] = self.target_text() or None
        data.update(ratio=self.ratio, passed=self.passed)
        return data

    def ratio_text(self) -> str:
        """The ratio as the table shows it, e.g. '0.48x torch' or '97% of copy'."""
        if self.ratio is None:
            return "-"
        if self.ratio_kind == "percent":
            return f"{self.ratio:.0f}% of {self.reference}"
        return f"{self.ratio:.2f}x {self.reference}"

    def target_text(self) -> str:
        """The target as the table shows it."""
        if self.target is None:
            return ""
        op, bound = self.target
        if self.ratio_kind == "percent":
            return f"{op} {bound:.0f}% of {self.reference}"
        return f"{op} {bound:g}x {self.reference}"

    def result_text(self) -> str:
        """pass / FAIL, or why there is no verdict."""
        if self.problem:
            return self.problem
        if self.ours is None:
            return "skipped"
        if self.target is None:
            return "-"
        if self.passed is None:
            return "no peer"
        return "pass" if self.passed else "FAIL"


def format_value(value: float | None, unit: str) -> str:
    """A figure with a sensible number of digits for its unit."""
    if value is None:
        return "-"
    digits = {"us": 1, "ms": 2, "TB/s": 2, "GB/s": 1, "x": 0}.get(unit, 2)
    return f"{value:.{digits}f}{unit}" if unit == "x" else f"{value:.{digits}f} {unit}"


def table(rows: list[Row]) -> str:
    """The plain-text table: job | ours | peers | ratio | target | result."""
    header = ["job", "ours", "peers", "ratio", "target (issue)", "result"]
    lines = [header]
    for row in rows:
        peers = ", ".join(f"{name} {format_value(v, row.unit)}" for name, v in row.peers.items())
        lines.append([row.job, format_value(row.ours, row.unit), peers or "-", row.ratio_text(),
                      row.target_text() or "-", row.result_text()])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """HEAD's short hash, marked "+changes" when the library or benchmarks differ from it."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=5)
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = commit and git("status", "--porcelain", "--", "../tinygrad_gpu", "../benchmarks")
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + " +changes" if changed else commit) or None


def environment(device: str, cpu_threads: int, torch_module: Any) -> dict[str, Any]:
    """Where the figures come from: date, device, library versions, thread count, TF32 setting."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "device_name": _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_threads": cpu_threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cupy": None,
        "cuda_runtime": None,
        "torch": getattr(torch_module, "__version__", None),
        "torch_cuda": getattr(getattr(torch_module, "version", None), "cuda", None),
        "tinygrad_gpu": tg.__version__,
        "commit": _git_commit(),
    }
    if tg.cuda_available():
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = properties["name"]
        gpu_name = name.decode() if isinstance(name, bytes) else str(name)
        version = cupy.cuda.runtime.runtimeGetVersion()
        info.update(cupy=cupy.__version__, cuda_runtime=f"{version // 1000}.{version % 1000 // 10}",
                    gpu=gpu_name)
        if device == "cuda":
            info["device_name"] = gpu_name
    if device == "cuda":
        # CuPy turns TF32 on only when CUPY_TF32=1 (cleared before CuPy was imported);
        # PyTorch's flags are set to False by the suite.
        info["tf32"] = "off (CUPY_TF32 unset; torch allow_tf32=False for matmul and cuDNN)"
    return info


def header(info: dict[str, Any]) -> str:
    """The lines printed above the table."""
    versions = f"numpy {info['numpy']}"
    if info["cupy"]:
        versions += f", cupy {info['cupy']} (CUDA runtime {info['cuda_runtime']})"
    versions += f", torch {info['torch']}" if info["torch"] else ", torch not installed"
    if info["torch_cuda"]:
        versions += f" (CUDA {info['torch_cuda']})"
    lines = [
        f"tinygrad_gpu {info['tinygrad_gpu']} benchmarks, {info['date']}, commit {info['commit'] or '?'}",
        f"device: {info['device']} ({info['device_name']}); CPU: {info['cpu']}, "
        f"{info['cpu_threads']} thread(s) for NumPy and PyTorch",
        f"python {info['python']}, {versions}",
    ]
    if "tf32" in info:
        lines.append(f"fp32 matmul: TF32 {info['tf32']}")
    return "\n".join(lines)


def write_json(path: str, info: dict[str, Any], settings: dict[str, Any], rows: list[Row],
               notes: list[str]) -> None:
    """Everything the table shows, plus settings and notes, as one JSON document."""
    document = {"environment": info, "settings": settings, "rows": [r.as_dict() for r in rows],
                "notes": notes}
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def markdown_table(path: str) -> str:
    """The rows of a results file (written by --json) as the Markdown table README shows."""
    with open(path, encoding="utf-8") as file:
        rows = json.load(file)["rows"]
    lines = ["| job | ours | peers | ratio | target | result |", "|---|---|---|---|---|---|"]
    for data in rows:
        target = data["target"]
        row = Row(data["job"], data["unit"], data["ours"], data["peers"], data["reference"],
                  data["ratio_kind"], None, data["problem"], data.get("paired_ratio"))
        peers = ", ".join(f"{name} {format_value(v, row.unit)}" for name, v in row.peers.items())
        verdict = {True: "met", False: "**not met**", None: ""}[data.get("passed")]
        lines.append(f"| {row.job} | {format_value(row.ours, row.unit)} | {peers or '-'} "
                     f"| {row.ratio_text()} | {target or '-'} | {row.problem or verdict} |")
    return "\n".join(lines)
