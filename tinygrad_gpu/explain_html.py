"""The seed guide as one self-contained HTML page, drawn from a recorded training step (explain.py).

Jinja2 (the `viz` extra) fills the template templates/explain.html.j2; the graphs, the loss curve
and the matrices are inline SVG and HTML tables made here, and a small script in the page redraws
the network and the decision boundary for each recorded epoch. Nothing is loaded from the
network: the file works opened from disk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .explain import PHASES, GraphPicture, Matrix, Snapshots, StepRecord
from .viz import _is_integral, format_number

PRINTED_CELLS = 64  # larger matrices are drawn as heat maps


def _jinja() -> Any:
    try:
        import jinja2
    except ImportError:
        raise ImportError("tg.viz.explain_html needs Jinja2, which is not installed: "
                          "pip install 'tinygrad_gpu[viz]' (or pip install jinja2)") from None
    return jinja2


def _exact(values: np.ndarray) -> list[float]:
    """The values as JSON numbers that convert back to the same dtype exactly (9 digits for float32)."""
    flat = np.asarray(values).ravel()
    if flat.dtype == np.float32:
        return [float(f"{v:.9g}") for v in flat.tolist()]
    return [float(v) for v in flat.astype(np.float64).tolist()]


def _cells(m: Matrix) -> list[list[str]] | None:
    """The numbers of a small matrix as printed strings, row by row; None when it is too big."""
    values = np.asarray(m.values, dtype=np.float64)
    if values.size > PRINTED_CELLS:
        return None
    rows = values.reshape(1, -1) if values.ndim < 2 else values.reshape(-1, values.shape[-1])
    text = (lambda v: str(int(v))) if _is_integral(values) else format_number
    return [[text(float(v)) for v in row] for row in rows]


def _box(m: Matrix, phase: str) -> dict[str, Any]:
    shape = "×".join(map(str, m.shape)) or "scalar"
    return {"key": f"{phase}:{m.name}", "name": m.name, "shape": shape, "dtype": m.dtype, "device": m.device,
            "kernel": m.kernel, "cells": _cells(m), "notes": m.notes}


# ---- graph layout: layers by depth, each row ordered by its parents' positions -----------------
NODE_H, ROW_GAP, COL_GAP, CHAR_W = 34, 30, 14, 7.2


def _layout(picture: GraphPicture) -> dict[str, Any]:
    n = len(picture.nodes)
    parents: list[list[int]] = [[] for _ in range(n)]
    for a, b in picture.edges:
        parents[b].append(a)
    depth = [0] * n
    for _ in range(n):  # longest path from a source; n passes settle any DAG
        changed = False
        for a, b in picture.edges:
            if depth[b] < depth[a] + 1:
                depth[b], changed = depth[a] + 1, True
        if not changed:
            break
    children: list[list[int]] = [[] for _ in range(n)]
    for a, b in picture.edges:
        children[a].append(b)
    for i in range(n):  # a leaf sits just above the first op that uses it, not all at the top
        if not parents[i] and children[i]:
            depth[i] = min(depth[c] for c in children[i]) - 1
    rows: dict[int, list[int]] = {}
    for i in range(n):
        rows.setdefault(depth[i], []).append(i)
    widths = [max(len(node["label"]), len(node["detail"])) * CHAR_W + 16 for node in picture.nodes]
    x_center: dict[int, float] = {}
    place: dict[int, dict[str, Any]] = {}
    for level in sorted(rows):
        row = rows[level]
        row.sort(key=lambda i: sum(x_center.get(p, 0) for p in parents[i]) / max(1, len(parents[i])))
        x = 10.0
        for i in row:
            x_center[i] = x + widths[i] / 2
            place[i] = {"x": x, "y": 10 + level * (NODE_H + ROW_GAP), "w": widths[i], "h": NODE_H,
                        **picture.nodes[i]}
            x += widths[i] + COL_GAP
    width = max(b["x"] + b["w"] for b in place.values()) + 10
    height = (max(depth) + 1) * (NODE_H + ROW_GAP) + 10
    edges = [{"x1": place[a]["x"] + place[a]["w"] / 2, "y1": place[a]["y"] + NODE_H,
              "x2": place[b]["x"] + place[b]["w"] / 2, "y2": place[b]["y"]} for a, b in picture.edges]
    return {"title": picture.title, "nodes": list(place.values()), "edges": edges, "width": width,
            "height": height,
            "ops": sum(node["kind"] == "op" for node in picture.nodes)}


# ---- the loss curve -------------------------------------------------------------------------
CURVE_W, CURVE_H, CURVE_PAD = 560, 220, 40


def _curve(losses: Sequence[float]) -> dict[str, Any] | None:
    finite = [v for v in losses if v > 0 and math.isfinite(v)]
    if not finite:
        return None
    low, high = math.log10(min(finite)), math.log10(max(finite))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    n = len(losses)
    stride = max(1, n // 1500)  # enough points for the eye, a small file
    points = []
    for i in range(0, n, stride):
        if losses[i] > 0 and math.isfinite(losses[i]):
            x = CURVE_PAD + (i / max(1, n - 1)) * (CURVE_W - CURVE_PAD - 10)
            y = 10 + (high - math.log10(losses[i])) / (high - low) * (CURVE_H - CURVE_PAD - 10)
            points.append(f"{x:.1f},{y:.1f}")
    ticks = [{"y": 10 + (high - e) / (high - low) * (CURVE_H - CURVE_PAD - 10), "label": f"1e{e}"}
             for e in range(math.ceil(low), math.floor(high) + 1)]
    return {"points": " ".join(points), "low": low, "high": high, "n": n, "ticks": ticks,
            "w": CURVE_W, "h": CURVE_H, "pad": CURVE_PAD, "last": losses[-1]}


def _size(nbytes: int) -> str:
    return f"{nbytes} B" if nbytes < 10240 else f"{nbytes / 1024:.1f} KiB"


def explain_html(step: StepRecord, losses: Sequence[float] = (), snapshots: Snapshots | None = None,
                 title: str = "How the network learns", path: str | Path | None = None) -> str:
    """The seed guide's page for a recorded step (tg.viz.explain_step): the four phases with the
    run's numbers, the network, the memory per phase, both graphs and the training history.

    `losses` is the loss of every epoch; `snapshots` the parameters at recorded epochs (the slider).
    Returns the HTML text and writes it to `path` when given.
    """
    if not isinstance(step, StepRecord):
        raise TypeError(f"explain_html: takes the StepRecord of tg.viz.explain_step, "
                        f"got {type(step).__name__}")
    jinja2 = _jinja()
    losses = [float(v) for v in losses] or [step.loss_value]
    before = {b.name.removesuffix(" before"): b.values for b, _, _ in step.update}
    items = list(snapshots.items) if snapshots is not None and len(snapshots) else []
    if not items:  # at least the weights the explained step started from
        items = [{"epoch": 0, "loss": step.loss_value, "params": before}]
    phases = [("forward", step.forward), ("loss", step.loss), ("backward", step.backward)]
    phases += [("update", [m for row in step.update for m in row]), ("result", [step.output_after])]
    matrices, shown = [], {}  # a matrix shown twice (W₁ before = W₁, the gradients) is stored once
    for phase, ms in phases:
        for m in ms:
            key = f"{phase}:{m.name}"
            same = None
            if m.values.size > PRINTED_CELLS:
                same = next((k for k, v in shown.items() if v.dtype == m.values.dtype
                             and v.shape == m.values.shape and np.array_equal(v, m.values)), None)
            entry = {"key": key, "shape": list(m.shape), "dtype": m.dtype}
            matrices.append({**entry, "same_as": same} if same else {**entry, "values": _exact(m.values)})
            shown.setdefault(key, m.values)
    x = step.forward[0].values
    # the slider's weights are drawn, not read: 5 digits, 3 where a network is drawn as heat maps
    digits = 5 if sum(np.size(v) for v in before.values()) <= 2000 else 3
    targets = step.loss[0].values if step.loss and step.loss[0].name == "Y" else None
    data = {
        "matrices": matrices,
        "layers": step.layers,
        "shapes": {name: list(np.shape(v)) for name, v in before.items()},
        "inputs": np.asarray(x, dtype=np.float64).reshape(len(x), -1).round(6).tolist(),
        "targets": None if targets is None else np.asarray(targets, dtype=np.float64).ravel().tolist(),
        "snapshots": [{"epoch": s["epoch"], "loss": float(f"{s['loss']:.6g}"),
                       "params": {k: [float(f"{v:.{digits}g}") for v in np.ravel(a).astype(np.float64)]
                                  for k, a in s["params"].items()}} for s in items],
        "curve": _curve(losses),
        "memory": {"rows": [{"name": r.name, "kind": r.kind, "shape": list(r.shape), "dtype": r.dtype,
                             "nbytes": r.nbytes, "alive": list(r.alive)} for r in step.memory],
                   "phase_bytes": step.phase_bytes, "peak_bytes": step.peak_bytes,
                   "graph_total_bytes": step.fused_memory.total_bytes,
                   "graph_only_bytes": step.fused_memory.graph_only_bytes,
                   "conceptual_total_bytes": step.conceptual_memory.total_bytes,
                   "conceptual_only_bytes": step.conceptual_memory.graph_only_bytes},
    }
    page_json = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    env = jinja2.Environment(loader=jinja2.PackageLoader("tinygrad_gpu", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    text = env.get_template("explain.html.j2").render(
        title=title, step=step, data_json=page_json, phases=PHASES,
        forward=[_box(m, "forward") for m in step.forward], loss=[_box(m, "loss") for m in step.loss],
        backward=[_box(m, "backward") for m in step.backward],
        update=[tuple(_box(m, "update") for m in row) for row in step.update],
        result=_box(step.output_after, "result"),
        graphs=[_layout(step.conceptual_graph), _layout(step.fused_graph)],
        memory=step.memory, size=_size, phase_bytes=step.phase_bytes, curve=data["curve"],
        epochs=len(losses), snapshots=len(items))
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
