"""`accelopt convert`: run a recipe on a model and report every step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from accelopt import pipeline
from accelopt.cli.console import err, out, print_json, table, verdict, warn
from accelopt.errors import EXIT_GATE_FAILED
from accelopt.recipes.schema import dump_yaml, load_recipe
from accelopt.report import (COLUMNS, WATERFALL, fmt, lowering_log, lowering_tables, step_notes, step_rows,
                             waterfall_rows)


def convert(
    model: Path = typer.Argument(..., help="The input model (.onnx). It is never modified."),
    recipe: str = typer.Option("cpu-fp32", "--recipe", "-r", help="A built-in recipe name (`accelopt recipes list`) or a path to a YAML recipe."),
    output: Path = typer.Option(Path("out"), "--output", "-o", help="Where the artifact and reports go; written only when the run completes."),
    data: Optional[Path] = typer.Option(None, "--data", help="An .npz whose arrays are named after the model inputs (first axis = samples; optional `labels`). Replaces the recipe's data."),
    overrides: List[str] = typer.Option([], "--set", help="Override any recipe field, e.g. `--set steps.fuse.ort=off` or `--set gates.min_cosine=0.999`. Repeatable."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every step even if an identical one is cached."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Step cache location (default $ACCELOPT_CACHE_DIR or ~/.cache/accelopt)."),
    junit: bool = typer.Option(False, "--junit", help="Also write junit.xml (one test case per step and gate)."),
    emit_recipe: bool = typer.Option(False, "--emit-recipe", help="Print the fully resolved recipe (after extends and --set) and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout instead of tables."),
) -> None:
    """Run the recipe's steps on MODEL, check each against the original, lower to the target.

    Exit codes: 0 all gates passed, 1 a gate failed, 2 bad input, 3 conversion failed.
    """
    resolved = load_recipe(recipe, overrides)
    if emit_recipe:
        out.print(dump_yaml(resolved), end="", markup=False)
        return
    opts = pipeline.RunOptions(out_dir=output, data=data, use_cache=not no_cache, cache_dir=cache_dir, junit=junit)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(f"{resolved.name}: loading", total=len(resolved.steps) + 1)
        opts.on_event = _progress_events(progress, task, resolved.name)
        report = pipeline.run(model, resolved, opts)
    if as_json:
        print_json(report)
    else:
        render(report, output)
    if not report["passed"]:
        raise typer.Exit(EXIT_GATE_FAILED)


def _progress_events(progress: Progress, task: Any, name: str):
    target_task = None

    def on_event(kind: str, info: dict[str, Any]) -> None:
        nonlocal target_task
        if kind == "target_progress":  # e.g. TVM tuning: trials done of the budget, best time so far
            if target_task is None:
                target_task = progress.add_task(info["description"], total=info["total"])
            progress.update(target_task, completed=info["done"], total=info["total"], description=info["description"])
        elif kind == "stage":
            progress.update(task, description=f"{name}: {info['name']}")
            if info["name"].startswith("target"):
                progress.advance(task)
        elif kind == "step_start":
            progress.update(task, description=f"{name}: step {info['index'] + 1}/{info['total']} {info['name']}")
        elif kind == "step_done":
            progress.advance(task)
    return on_event


def render(report: dict[str, Any], output: Path) -> None:
    inp = report["input"]
    out.print(f"{report['recipe']['name']}  {inp['path']}  ({inp['node_count']} nodes, "
              f"{inp.get('params', 0):,} params)  data: {report['data']['evaluation']['source']}", markup=False)
    rows = step_rows(report)
    out.print(table(None, [h for _, h in COLUMNS], ([r[k] for k, _ in COLUMNS] for r in rows),
                    numeric=set(range(1, len(COLUMNS)))))
    lat = report["final"].get("latency")
    if lat:
        out.print(f"latency: batch {lat['batch']}, {lat['threads']} thread(s), median of {lat['runs']} runs, "
                  "input and output timed side by side")
    waterfall = waterfall_rows(report)
    if len(waterfall) > 2:  # with one step the step table already says it all
        out.print(table("waterfall: each step against the one before", [h for _, h in WATERFALL],
                        ([r[k] for k, _ in WATERFALL] for r in waterfall), numeric={1, 2, 3, 4, 5, 6}))
    if report["gates"]:
        out.print(table("gates", ["gate", "threshold", "value", "result"],
                        ([g["name"], g["threshold"], fmt(g["value"]),
                          verdict(g["passed"], detail=g["reason"])] for g in report["gates"])))
    for name, note in step_notes(report):  # decisions in words, e.g. why quantize kept the float model
        out.print(f"note: {name}: {note}", markup=False)
    for line in lowering_log(report):
        out.print(f"target: {line}", markup=False)
    for title, header, rows in lowering_tables(report):
        out.print(table(f"{report['target']['name']}: {title}", header, rows))
    for w in report["warnings"]:
        warn(w)
    for a in report["artifacts"]:
        out.print(f"artifact: {output / a['path']}  {a['bytes']:,} bytes  sha256 {a['sha256'][:16]}", markup=False)
    out.print(f"report: {output / 'report.md'}, {output / 'report.json'}", markup=False)
    out.print(verdict(report["passed"], "PASSED", "GATE FAILED"))
