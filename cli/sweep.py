"""`accelopt sweep`: build recipe variants, time them side by side, mark the Pareto frontier, pick one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from accelopt.cli.console import err, out, print_json, table, warn
from accelopt.errors import BadInputError, ConversionError, GateFailed
from accelopt.sweeping.frontier import parse_constraints
from accelopt.report import fmt
from accelopt.sweeping.run import SWEEP_DEFAULTS, SweepOptions, run_sweep
from accelopt.sweeping.variants import EmptyGrid, expand, parse_grid, parse_recipes


def sweep(
    model: Path = typer.Argument(..., help="The input model (.onnx). It is never modified."),
    recipes: Optional[str] = typer.Option(None, "--recipes", help="Comma-separated recipes, one variant each: built-in names or YAML paths, e.g. `cpu-fp32,cpu-int8`."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="The one recipe whose fields the --grid axes vary."),
    grid: List[str] = typer.Option([], "--grid", help="An axis in --set syntax with several values, e.g. `steps.quantize.calibration=minmax,entropy`. Repeatable: the variants are every combination (x each of --recipes)."),
    output: Path = typer.Option(Path("sweep"), "--output", "-o", help="Writes variants/LABEL/, sweep.json, pareto.png and picked/."),
    data: Optional[Path] = typer.Option(None, "--data", help="An .npz (arrays named after the model inputs, optional `labels`) used by every variant instead of each recipe's data."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe field in every variant, e.g. `--set validation.runs=20`. Repeatable."),
    pick: Optional[str] = typer.Option(None, "--pick", help="Copy the fastest variant meeting every constraint to OUTPUT/picked/, e.g. `max_accuracy_drop=0.01` or `min_cosine=0.999,max_latency_ms=2`. Also: min_accuracy, min_speedup, max_size_mb."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Build this many variants at once, in worker processes (capped by the CPU count). Timing always runs afterwards, alone."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads for every variant's checks and for the side-by-side timing (default: the recipe's validation.threads)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Ignore the user step cache; the variants still share a fresh one in OUTPUT/cache."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Step cache shared by every variant (default $ACCELOPT_CACHE_DIR or ~/.cache/accelopt)."),
    as_json: bool = typer.Option(False, "--json", help="Print sweep.json to stdout instead of the table."),
) -> None:
    """Build each variant of MODEL, time every artifact side by side, and mark the accuracy-latency Pareto frontier.

    Variants are `--recipes a,b,c`, or `--recipe R` with `--grid` axes (every combination), e.g.
    `accelopt sweep m.onnx -r cpu-int8 --data calib.npz --grid steps.quantize.calibration=minmax,entropy
    --grid steps.quantize.per_channel=true,false -o sweep/`.
    They share one step cache, so common steps (simplify, a calibration) run once. A variant that fails is
    listed with its error; the others go on. sweep.json is updated after every variant, so Ctrl-C keeps
    what finished. Builds skip per-step timing (`validation.latency=false`; `--set validation.latency=true`
    restores it): the sweep times every artifact itself, and judges each recipe's gates on that timing.

    Exit codes: 0 done, 1 an empty grid or nothing met --pick (the closest variant is named), 2 bad input, 3 every
    variant failed.
    """
    if not model.is_file():
        raise BadInputError(f"model not found: {model}")
    if (recipes is None) == (recipe is None):
        raise BadInputError("give either --recipes a,b,c or --recipe R with --grid key=v1,v2")
    if recipe is not None and not grid:
        raise EmptyGrid("empty grid: --recipe needs at least one --grid key=v1,v2 axis to vary (or use --recipes "
                        "a,b,c)")
    constraints = parse_constraints(pick) if pick else []
    common = [*SWEEP_DEFAULTS, *overrides, *([f"validation.threads={threads}"] if threads else [])]
    specs = expand(parse_recipes(recipes) if recipes else [recipe], [parse_grid(g) for g in grid], common, model,
                   output, data, output / "cache" if no_cache else cache_dir)
    opts = SweepOptions(model=model, out_dir=output, specs=specs, jobs=_workers(jobs, len(specs)),
                        constraints=constraints)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("building", total=len(specs))
        opts.on_event = _progress_events(progress, task, opts.jobs)
        doc = run_sweep(opts)
    if as_json:
        print_json(doc)
    else:
        render(doc, output)
    _exit_status(doc)


def _workers(jobs: int, variants: int) -> int:
    cap = min(jobs, os.cpu_count() or 1, variants)
    if cap < jobs:
        warn(f"--jobs {jobs}: running {cap} at once ({os.cpu_count()} CPU(s), {variants} variant(s))")
    return cap


def _progress_events(progress: Progress, task: Any, jobs: int):
    current = {"label": ""}

    def on_event(kind: str, info: dict[str, Any]) -> None:
        label = current["label"]
        if kind == "variant":
            current["label"] = info["label"]
            progress.update(task, description=f"{info['label']}: loading")
        elif kind == "stage":
            progress.update(task, description=f"{label}: {info['name']}")
        elif kind == "step_start":
            progress.update(task, description=f"{label}: step {info['index'] + 1}/{info['total']} {info['name']}")
        elif kind == "variant_done":
            progress.advance(task)
            if jobs > 1:
                progress.update(task, description=f"building in {jobs} processes")
        elif kind == "timing":
            progress.update(task, description=f"timing {info['models']} models side by side")
    return on_event


ERROR_CHARS = 100  # of a failed variant's error in the table; sweep.json keeps it whole
COLUMNS = ["#", "variant", "status", "size", "latency ms", "speedup", "accuracy", "drop", "cosine", "pareto"]


def render(doc: dict[str, Any], output: Path) -> None:
    data = doc["data"] or {}
    same = "the same for every variant" if data.get("same_for_all") else "DIFFERS between variants"
    out.print(f"sweep  {doc['model']['path']}  {len(doc['variants'])} variant(s)  "
              f"data: {data.get('given', '-')}: {'; '.join(data.get('evaluation', [])) or '-'} ({same})", markup=False)
    inp = doc["input"] or {}
    rows = [["-", "input", "reference", _size(doc["model"]["bytes"]), fmt(inp.get("latency_ms"), ".3f"),
             _times(1.0 if inp.get("latency_ms") else None), _pct(inp.get("accuracy")), "-", "1", "-"]]
    rows += [_row(i + 1, v) for i, v in enumerate(doc["variants"])]
    out.print(table(None, COLUMNS, rows, numeric={0, 3, 4, 5, 6, 7, 8}))
    lat = doc["latency"]
    if lat:
        out.print(f"latency: batch {lat['batch']}, {lat['threads']} thread(s), median of {lat['runs']} runs, best of "
                  f"{lat['rounds']} interleaved rounds; the input and every artifact timed side by side in one process",
                  markup=False)
    front = [f"#{i + 1} {v['label']}" for i, v in enumerate(doc["variants"]) if v["pareto"]]
    if front:
        out.print(f"pareto ({doc['quality']} vs latency): {', '.join(front)}", markup=False)
    for w in doc["warnings"]:
        warn(w)
    if doc["pick"] and doc["pick"]["label"]:
        out.print(f"picked: {doc['pick']['label']} -> {output / 'picked'} (the fastest meeting "
                  f"{', '.join(doc['pick']['constraints'])})", markup=False)
    out.print(f"sweep: {output / 'sweep.json'}" + (f", chart: {output / doc['chart']}" if doc["chart"] else
                                                    "  (no pareto.png: no variant was both timed and scored)"),
              markup=False)


def _row(n: int, v: dict[str, Any]) -> list[Any]:
    m = v["metrics"] or {}
    return [n, v["label"], _status(v), _size(m.get("size_bytes")), fmt(m.get("latency_ms"), ".3f"),
            _times(m.get("speedup")),
            _pct(m.get("accuracy")), _pct(m.get("accuracy_drop")), fmt(m.get("cosine"), ".6f"),
            "yes" if v["pareto"] else ""]


def _status(v: dict[str, Any]) -> Text:
    if v["status"] == "ok":
        return Text("ok", style="green")
    if v["status"] == "gates-failed":
        failed = [g["name"] for g in v["gates"] if not g["passed"]]
        return Text(f"gates failed: {', '.join(failed)}", style="yellow")
    if v["status"] == "failed":
        error = v["error"] if len(v["error"]) <= ERROR_CHARS else v["error"][:ERROR_CHARS - 1] + "…"
        return Text(f"FAILED: {error}", style="red")
    return Text(v["status"])


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} kB"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _times(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _exit_status(doc: dict[str, Any]) -> None:
    """Every variant failed: exit 3. Nothing met --pick: exit 1, naming the closest variant."""
    failed = [v for v in doc["variants"] if v["status"] == "failed"]
    if failed and len(failed) == len(doc["variants"]):
        raise ConversionError(f"all {len(failed)} variant(s) failed; first: {failed[0]['label']}: {failed[0]['error']}")
    chosen = doc["pick"]
    if chosen and not chosen["label"]:
        wanted = ", ".join(chosen["constraints"])
        if chosen["closest"] is None:
            raise GateFailed(f"no variant meets {wanted}: no variant built")
        raise GateFailed(f"no variant meets {wanted}; closest: {chosen['closest']} "
                         f"({'; '.join(chosen['missed'])})")
