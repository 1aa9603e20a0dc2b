"""`accelopt compare`: run two models on the same inputs and report per-output error statistics."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from accelopt.cli.console import out, print_json, table, verdict
from accelopt.cli.options import SHAPE_HELP, feeds_for, parse_shapes
from accelopt.errors import EXIT_GATE_FAILED, BadInputError
from accelopt.metrics import TaskSpec, compare_outputs
from accelopt.report import fmt
from accelopt.targets.base import run_all
from accelopt.targets.artifacts import open_runner


def compare(
    reference: Path = typer.Argument(..., help="The reference model (e.g. the original .onnx)."),
    candidate: Path = typer.Argument(..., help="The model to check against it: .onnx, a .tflite (with its io.json), "
                                               "a Core ML .mlpackage (Core ML on macOS, accelopt's MIL evaluator "
                                               "elsewhere) or a TVM model.so, as accelopt convert writes them."),
    data: Optional[Path] = typer.Option(None, "--data", help="An .npz with arrays named after the inputs; seeded random data otherwise."),
    samples: int = typer.Option(16, "--samples", help="How many samples to compare."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Absolute tolerance (default: per --precision)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Relative tolerance (default: per --precision)."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="Picks default tolerances: fp32, fp16, int8, int4. Default: the precision accelopt "
                                  "recorded in the candidate (a Core ML package), else fp32."),
    task: str = typer.Option("auto", "--task", help="auto | raw | classification | embedding. auto: classification (top-1 agreement) when the first output is [samples, classes], raw otherwise. Detection needs a recipe's task section."),
    shapes: List[str] = typer.Option([], "--shape", help=SHAPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Per output: max abs/rel error, cosine, SQNR, top-1 agreement, and the minimum tolerances that
    would pass. An element fails only where both atol and rtol are exceeded. Exit 1 on mismatch."""
    if task not in ("auto", "raw", "classification", "embedding"):
        raise BadInputError(f"--task {task!r}: expected auto, raw, classification or embedding")
    ref, cand = open_runner(reference), open_runner(candidate)
    feeds, source = feeds_for(ref.inputs, data, parse_shapes(shapes), samples)
    ref_out = run_all(ref, feeds)
    spec = TaskSpec(kind=_guess_task(ref_out) if task == "auto" else task)
    precision = precision or getattr(cand, "precision", None) or "fp32"
    metrics = compare_outputs(ref_out, run_all(cand, feeds), task=spec, precision=precision, atol=atol, rtol=rtol)
    passed = all(m.passed for m in metrics)
    if as_json:
        print_json({"reference": str(reference), "candidate": str(candidate), "data": source,
                    "passed": passed, "outputs": [m.to_dict() for m in metrics]})
    else:
        rows = [(m.name, fmt(m.max_abs, ".3e"), fmt(m.max_rel, ".3e"), fmt(m.cosine, ".6f"), fmt(m.sqnr_db, ".1f"),
                 "-" if m.top1_agreement is None else f"{100 * m.top1_agreement:.1f}%",
                 f"{m.atol:g}/{m.rtol:g}", f"{m.min_atol:.3g}/{m.min_rtol:.3g}",
                 verdict(m.passed)) for m in metrics]
        out.print(table(f"{candidate.name} vs {reference.name} on {source}",
                        ["output", "max abs", "max rel", "cosine", "SQNR dB", "top-1", "atol/rtol", "min atol/rtol", "result"],
                        rows, numeric={1, 2, 3, 4, 5}))
        out.print(verdict(passed, "MATCH", "MISMATCH"))
    if not passed:
        raise typer.Exit(EXIT_GATE_FAILED)


def _guess_task(outputs: dict) -> str:
    """Top-1 agreement applies when the first output looks like class scores: [samples, classes] floats."""
    first = next(iter(outputs.values()))
    is_scores = first.ndim == 2 and first.shape[1] > 1 and first.dtype.kind == "f"
    return "classification" if is_scores else "raw"
