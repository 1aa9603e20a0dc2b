"""`accelopt bench`: latency percentiles, throughput and peak memory per batch size and thread count, and the
batch size a server should use (the throughput knee, the largest batch within a latency budget)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import Progress

from accelopt.batching import PERCENTILES, BatchingAdvice, advise, parse_budget
from accelopt.cli.console import err, out, print_json, table
from accelopt.cli.options import SHAPE_HELP, feeds_for, parse_shapes
from accelopt.converters.onnx_io import load_model
from accelopt.errors import BadInputError, GateFailed
from accelopt.latency import batch_feeds
from accelopt.report import fmt
from accelopt.targets.onnxruntime import OrtRunner


def _int_list(text: str, what: str) -> list[int]:
    """'1,8,32', or 'A-B' for the powers of two from A to B (a batching study: 1-64 = 1,2,4,...,64)."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-"))
            values = [v for v in (2 ** k for k in range(hi.bit_length() + 1)) if lo <= v <= hi] if 0 < lo <= hi else []
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise BadInputError(f"{what} {text!r}: expected positive integers separated by commas (1,8,32) or a "
                            "range of powers of two (1-64)")
    return values


def bench(
    model: Path = typer.Argument(..., help="The model to time (.onnx)."),
    threads: str = typer.Option("1", "--threads", help="Intra-op thread counts, e.g. 1 or 1,2."),
    batch: str = typer.Option("1", "--batch", help="Batch sizes, e.g. 1,8,32, or 1-64 for every power of two in "
                                                   "between (needs a dynamic batch dim beyond the model's own)."),
    latency_budget: Optional[str] = typer.Option(
        None, "--latency-budget", help="e.g. 10ms: report the largest batch whose latency (see --percentile) fits, "
                                       "per thread count: what a server's dynamic batcher should be set to. "
                                       "Exit 1 when no batch fits."),
    percentile: str = typer.Option("p90", "--percentile", help="Latency the budget applies to: median, p90 or p99."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed runs first."),
    runs: int = typer.Option(100, "--runs", min=1, help="Timed runs per configuration."),
    data: Optional[Path] = typer.Option(None, "--data", help="An .npz with arrays named after the inputs; seeded random data otherwise."),
    shapes: List[str] = typer.Option([], "--shape", help=SHAPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Time MODEL on ONNX Runtime (CPU): median, p90, p99, throughput and peak memory, per batch x threads.

    With several batch sizes it also finds, per thread count, the knee of the throughput curve (the smallest batch
    within 90% of the best throughput) and, with --latency-budget, the largest batch that meets the budget.
    """
    batches, thread_counts = _int_list(batch, "--batch"), _int_list(threads, "--threads")
    if percentile not in PERCENTILES:
        raise BadInputError(f"--percentile {percentile!r}: choose one of {', '.join(PERCENTILES)}")
    budget_ms = parse_budget(latency_budget) if latency_budget is not None else None
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
    advice = advise(results, budget_ms, percentile)
    if as_json:
        print_json({"model": str(model), "data": source, "results": [r.to_dict() for r in results],
                    "batching": [a.to_dict() for a in advice]})
    else:
        best = max(r.throughput for r in results)
        rows = [(r.batch, r.threads, fmt(r.median_ms, ".3f"), fmt(r.p90_ms, ".3f"), fmt(r.p99_ms, ".3f"),
                 fmt(r.median_ms / r.batch, ".3f"), f"{r.throughput:,.1f}", _bar(r.throughput / best),
                 fmt(r.peak_memory_mb, ".1f")) for r in results]
        out.print(table(f"{model.name} on onnxruntime CPU, {runs} runs after {warmup} warm-up, data: {source}",
                        ["batch", "threads", "median ms", "p90 ms", "p99 ms", "ms/sample", "samples/s", "throughput",
                         "peak MB"], rows, numeric={0, 1, 2, 3, 4, 5, 6, 8}))
        if len(batches) > 1:
            for a in advice:
                out.print(_advice_line(a))
    if budget_ms is not None and all(a.within_budget is None for a in advice):
        fastest = min(results, key=lambda r: r.median_ms)
        raise GateFailed(f"no batch size meets {percentile} <= {budget_ms:g} ms (batch {fastest.batch} at "
                         f"{fastest.threads} thread(s): median {fastest.median_ms:.3f} ms)")


def _bar(share: float, width: int = 20) -> str:
    """A text bar: the throughput curve, readable in a terminal and in CI logs alike."""
    return "#" * max(1, round(share * width))


def _advice_line(a: BatchingAdvice) -> str:
    """One greppable line per thread count."""
    line = (f"threads {a.threads}: throughput knee at batch {a.knee_batch} (>= 90% of the best, "
            f"{a.best_throughput:,.1f} samples/s at batch {a.best_batch})")
    if a.budget_ms is not None:
        fit = f"batch {a.within_budget}" if a.within_budget is not None else "none"
        line += f"; largest batch with {a.percentile} <= {a.budget_ms:g} ms: {fit}"
    return line


def _check_batches(runner: OrtRunner, batches: list[int]) -> None:
    dim0 = runner.inputs[0].shape[0] if runner.inputs and runner.inputs[0].shape else None
    if isinstance(dim0, int) and any(b != dim0 for b in batches):
        raise BadInputError(f"the model's batch dimension is fixed at {dim0}; --batch {','.join(map(str, batches))} "
                            "needs a dynamic batch dim (export with one, or bench the model before fix-shapes)")
