"""`accelopt inspect`: what a model is, before any work: I/O, opsets, ops, parameters, MACs."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from accelopt.analysis import summarize
from accelopt.cli.console import out, print_json, table
from accelopt.cli.options import SHAPE_HELP, parse_shapes
from accelopt.converters.onnx_io import load_model


def _dims(shape: list | None) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def inspect(
    model: Path = typer.Argument(..., help="The model to describe (.onnx)."),
    shapes: List[str] = typer.Option([], "--shape", help=SHAPE_HELP),
    top: int = typer.Option(20, "--top", help="Op types shown in the histogram."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Inputs/outputs (dynamic dims marked), opsets, op histogram, parameters, MACs/FLOPs, size, ORT load."""
    m = load_model(model, check=False)
    s = summarize(m, str(model), parse_shapes(shapes) or None)
    if as_json:
        print_json(s.to_dict())
        return
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in s.opsets.items())
    macs = "unknown" if s.macs is None else f"{s.macs:,} MACs = {2 * s.macs / 1e9:.3f} GFLOPs"
    facts = [("file", f"{model} ({s.size_bytes:,} bytes)"), ("ir / opsets", f"{s.ir_version} / {opsets}"),
             ("producer", s.producer or "-"), ("nodes", f"{s.node_count:,}"),
             ("parameters", f"{s.params:,} ({s.param_bytes:,} bytes)"), ("compute", macs + (f"  ({s.macs_note})" if s.macs_note else "")),
             ("onnxruntime", "loads" if s.ort_loads else f"FAILS: {s.ort_error}"),
             ("dynamic inputs", ", ".join(s.dynamic_inputs) or "none")]
    out.print(table(f"{model.name}", ["", ""], facts))
    io_rows = [("input", t["name"], t["dtype"], _dims(t["shape"])) for t in s.inputs] + \
              [("output", t["name"], t["dtype"], _dims(t["shape"])) for t in s.outputs]
    out.print(table("inputs and outputs", ["kind", "name", "dtype", "shape"], io_rows))
    hist = list(s.op_histogram.items())
    rows = [(op, n, f"{s.macs_by_op.get(op, 0):,}" if s.macs_by_op.get(op) else "-") for op, n in hist[:top]]
    if len(hist) > top:
        rows.append((f"... {len(hist) - top} more", sum(n for _, n in hist[top:]), ""))
    out.print(table("operators", ["op", "count", "MACs"], rows, numeric={1, 2}))
