"""Real models through the TFLite recipes: accuracy against the ONNX model, transposes left, size, and LiteRT's
latency next to ONNX Runtime's on this CPU, measured side by side in one process by the pipeline.

    python benchmarks/tflite_export.py [--cases digits,ppocr,minilm,yolo] [--precisions fp32,fp16,int8] [--threads 1]
                                       [--set target.options.float_head=true]

Models and data: benchmarks/export_cases.py (fetched once into benchmarks/.models, never committed).

Each (model, precision) runs the pipeline with the built-in recipe tflite-fp32, tflite-fp16 or tflite-int8
(dynamic: tflite-fp32's steps, int16x8: tflite-int8's, with target.options.precision set); the figures are the
pipeline's own: worst cosine over outputs against the ONNX input model, task accuracy where labels exist, the
TFLite graph's transposes (all / between two convolutions), and the input model on ONNX Runtime vs the
.tflite on LiteRT (XNNPACK), both with `--threads` threads, timed side by side.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from accelopt import pipeline
from accelopt.recipes.schema import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_cases import CASES, Case  # noqa: E402


def run_case(case: Case, precision: str, threads: int, tmp: Path, extra: list[str]) -> dict:
    label, model, cal, ev, overrides = case
    base = {"fp16": "tflite-fp16", "int8": "tflite-int8", "int16x8": "tflite-int8"}.get(precision, "tflite-fp32")
    recipe = load_recipe(base, [
        *overrides, *extra, f"target.options.precision={precision}", f"validation.threads={threads}", "validation.runs=100", "validation.warmup=20",
        f"data.calibration={{type: npz, path: {cal}}}", f"data.evaluation={{type: npz, path: {ev}}}"])
    report = pipeline.run(model, recipe, pipeline.RunOptions(out_dir=tmp / f"{model.stem}-{precision}",
                                                             use_cache=False))
    final, lowering = report["final"], report["target"]["lowering"]
    ref = report["reference"]["latency"] or {}
    return {"model": label, "precision": precision, "cosine": final["worst"]["cosine"],
            "accuracy": final.get("accuracy"), "ref_accuracy": report["reference"]["accuracy"],
            "transposes": lowering["transposes_left"], "between_convs": lowering["transposes_between_convs"],
            "float_ops": ",".join(lowering["float_ops_in_int8"]) or "-", "kb": final["size_bytes"] / 1024,
            "ort_ms": ref.get("median_ms"), "litert_ms": (final.get("latency") or {}).get("median_ms"),
            "gates": report["passed"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--precisions", default="fp32,fp16,int8", help="any of fp32,fp16,dynamic,int8,int16x8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every run, e.g. target.options.float_head=true")
    args = ap.parse_args()
    rows = []
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory(prefix=f"tflite-{name}-") as d:
            case = CASES[name](Path(d))
            for precision in args.precisions.split(","):
                rows.append(run_case(case, precision, args.threads, Path(d), args.set))
                print(rows[-1], flush=True)
    print(f"\nLiteRT (XNNPACK) vs onnxruntime CPU, batch 1, {args.threads} thread(s), side by side in one process")
    print(f"{'model':24} {'prec':5} {'cosine':>9} {'accuracy':>15} {'T':>3} {'T conv':>6} {'size kB':>9} "
          f"{'ORT ms':>8} {'LiteRT ms':>9} {'ORT/LiteRT':>10}  float ops in int8")
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}% ({100 * r['ref_accuracy']:.2f})"
        ratio = r["ort_ms"] / r["litert_ms"] if r["ort_ms"] and r["litert_ms"] else float("nan")
        print(f"{r['model']:24} {r['precision']:5} {r['cosine']:9.6f} {acc:>15} {r['transposes']:3d} "
              f"{r['between_convs']:6d} {r['kb']:9.1f} {r['ort_ms'] or float('nan'):8.3f} "
              f"{r['litert_ms'] or float('nan'):9.3f} {ratio:9.2f}x  {r['float_ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
