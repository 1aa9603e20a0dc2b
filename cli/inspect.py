"""`accelopt inspect`: what a model is, before any work: I/O, opsets, ops, parameters, MACs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
import yaml

from accelopt.analysis import summarize
from accelopt.cli.console import out, print_json, table
from accelopt.cli.options import SHAPE_HELP, parse_shapes
from accelopt.converters.onnx_io import copy_model, load_model
from accelopt.errors import BadInputError
from accelopt.targets import get_target


def _dims(shape: list | None) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def inspect(
    model: Path = typer.Argument(..., help="The model to describe (.onnx)."),
    shapes: List[str] = typer.Option([], "--shape", help=SHAPE_HELP),
    top: int = typer.Option(20, "--top", help="Op types shown in the histogram."),
    target: Optional[str] = typer.Option(
        None, "--target", help="Also run this target's check: every node it cannot lower, named (e.g. coreml, "
                               "tflite), as the convert verb would refuse them before any work."),
    target_options: List[str] = typer.Option(
        [], "--target-option", help="KEY=VALUE for --target, repeatable (e.g. deployment_target=iOS16)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Inputs/outputs (dynamic dims marked), opsets, op histogram, parameters, MACs/FLOPs, size, ORT load;
    with --target, what that target would refuse."""
    m = load_model(model, check=False)
    s = summarize(m, str(model), parse_shapes(shapes) or None)
    check = _target_check(m, target, target_options, parse_shapes(shapes)) if target else None
    if as_json:
        print_json({**s.to_dict(), **({"target": check} if check else {})})
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
    if check:
        _print_check(check)


def _target_check(model: Any, name: str, options: list[str], shapes: dict[str, list[int]]) -> dict[str, Any]:
    """The target's findings on the model as it is (before any recipe step: simplify removes some), with the
    --shape pins applied to its inputs as input.shapes would."""
    model = copy_model(model)
    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[value.name]:
                dims.add().dim_value = d
    parsed = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInputError(f"--target-option {item!r}: expected KEY=VALUE")
        parsed[key.strip()] = yaml.safe_load(value)
    findings = get_target(name, parsed).check(model)
    return {"name": name, "options": parsed, "findings": [f.__dict__ for f in findings],
            "errors": sum(f.severity == "error" for f in findings)}


def _print_check(check: dict[str, Any]) -> None:
    title = f"target {check['name']}" + "".join(f", {k} {v}" for k, v in check["options"].items())
    rows = [(f["severity"], f["node"] or "-", f["message"]) for f in check["findings"]]
    if rows:
        out.print(table(f"{title}: {check['errors']} problem(s) before any step", ["severity", "node", "message"],
                        rows))
    else:
        out.print(f"{title}: every node lowers")
