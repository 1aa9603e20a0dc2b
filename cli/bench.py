"""`accelopt bench`: latency percentiles, throughput and peak memory per batch size and thread count."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import Progress

from accelopt.cli.console import err, out, print_json, table
from accelopt.cli.options import SHAPE_HELP, feeds_for, parse_shapes
from accelopt.converters.onnx_io import load_model
from accelopt.errors import BadInputError
from accelopt.latency import batch_feeds
from accelopt.report import fmt
from accelopt.targets.onnxruntime import OrtRunner


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise BadInputError(f"{what} {text!r}: expected positive integers separated by commas, e.g. 1,8,32")
    return values


def bench(
    model: Path = typer.Argument(..., help="The model to time (.onnx)."),
    threads: str = typer.Option("1", "--threads", help="Intra-op thread counts, e.g. 1 or 1,2."),
    batch: str = typer.Option("1", "--batch", help="Batch sizes, e.g. 1,8,32 (needs a dynamic batch dim beyond the model's own)."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed runs first."),
    runs: int = typer.Option(100, "--runs", min=1, help="Timed runs per configuration."),
    data: Optional[Path] = typer.Option(None, "--data", help="An .npz with arrays named after the inputs; seeded random data otherwise."),
    shapes: List[str] = typer.Option([], "--shape", help=SHAPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Time MODEL on ONNX Runtime (CPU): median, p90, p99, throughput and peak memory, per batch x threads."""
    batches, thread_counts = _int_list(batch, "--batch"), _int_list(threads, "--threads")
    m = load_model(model, check=False)
    pins = parse_shapes(shapes)
    probe = OrtRunner(m, threads=thread_counts[0])
    _check_batches(probe, batches)
    feeds, source = feeds_for(probe.inputs, data, pins, max(batches))
    results = []
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(batches) * len(thread_counts))
        for t in thread_counts:
            runner = probe if t == thread_counts[0] else OrtRunner(m, threads=t)
            for b in batches:
                progress.update(task, description=f"batch {b}, {t} thread(s)")
                results.append(runner.bench(batch_feeds(feeds, b), warmup=warmup, runs=runs))
                progress.advance(task)
    if as_json:
        print_json({"model": str(model), "data": source, "results": [r.to_dict() for r in results]})
        return
    rows = [(r.batch, r.threads, fmt(r.median_ms, ".3f"), fmt(r.p90_ms, ".3f"), fmt(r.p99_ms, ".3f"),
             fmt(r.median_ms / r.batch, ".3f"), f"{r.throughput:,.1f}", fmt(r.peak_memory_mb, ".1f")) for r in results]
    out.print(table(f"{model.name} on onnxruntime CPU, {runs} runs after {warmup} warm-up, data: {source}",
                    ["batch", "threads", "median ms", "p90 ms", "p99 ms", "ms/sample", "samples/s", "peak MB"],
                    rows, numeric=set(range(8))))


def _check_batches(runner: OrtRunner, batches: list[int]) -> None:
    dim0 = runner.inputs[0].shape[0] if runner.inputs and runner.inputs[0].shape else None
    if isinstance(dim0, int) and any(b != dim0 for b in batches):
        raise BadInputError(f"the model's batch dimension is fixed at {dim0}; --batch {','.join(map(str, batches))} "
                            "needs a dynamic batch dim (export with one, or bench the model before fix-shapes)")
