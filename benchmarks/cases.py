"""The command line both side-by-side benchmarks share: pick cases, run each in its own temp folder, print one
table. A case builder gets the folder and returns rows (model, variant, median ms, vs FP32, goal, quality)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Callable

Row = tuple[str, str, str, str, str, str]
# (the case builder's output, the parsed arguments, the case's temp folder) -> rows
Bench = Callable[[Any, argparse.Namespace, Path], list[Row]]


def main(description: str, cases: dict[str, Callable[[Path], Any]], bench_case: Bench, prefix: str) -> int:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--cases", default=",".join(cases), help=f"comma-separated subset of {','.join(cases)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    unknown = set(args.cases.split(",")) - set(cases)
    if unknown:
        ap.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(cases)}")
    rows: list[Row] = []
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-{name}-") as d:
            rows += bench_case(cases[name](Path(d)), args, Path(d))
    width = max(len(r[1]) for r in rows) if rows else 30
    print(f"onnxruntime CPU, batch 1, 1 thread, best of {args.rounds} interleaved rounds x {args.runs} runs")
    print(f"{'model':42} {'variant':{width}} {'median ms':>10} {'vs FP32':>8}  {'goal':4}  quality (held-out inputs)")
    for label, variant, ms, ratio, goal, text in rows:
        print(f"{label:42} {variant:{width}} {ms:>10} {ratio:>8}  {goal:4}  {text}")
    return 0
