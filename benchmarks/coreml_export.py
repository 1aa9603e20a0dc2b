"""Real models through the Core ML recipes: the .mlpackage's numerics against the ONNX model (task accuracy
where labels exist), its size, and what the conversion left in fp32 or compressed.

    python benchmarks/coreml_export.py [--cases digits,ppocr,minilm,yolo] [--variants fp32,fp16,int8w]
                                       [--set target.options.deployment_target=iOS18]

Models and data: benchmarks/export_cases.py (fetched once into benchmarks/.models, never committed).

Variants: fp32 = the built-in recipe coreml-fp32; fp16 = coreml-fp16; int8w = coreml-fp16 with int8 linear
weight compression (per channel, coremltools.optimize.coreml); int4w = int4 per-block (32) weights, needs
deployment target iOS18; pal4 = 4-bit k-means palettization. The figures are the pipeline's own: worst cosine
over outputs against the ONNX input model on the evaluation data, accuracy where labels exist, the package size.
On Linux the package is run by accelopt's numpy MIL evaluator (Core ML's predict needs macOS), which checks
numerics, not speed: no latency is reported, and the `numerics` column says which runner produced the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from accelopt import pipeline
from accelopt.recipes.schema import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_cases import CASES, Case  # noqa: E402

VARIANTS = {
    "fp32": ("coreml-fp32", []),
    "fp16": ("coreml-fp16", []),
    "int8w": ("coreml-fp16", ["target.options.compression={mode: linear, dtype: int8, granularity: per_channel}"]),
    "int4w": ("coreml-fp16", ["target.options.deployment_target=iOS18",
                              "target.options.compression={mode: linear, dtype: int4, granularity: per_block, "
                              "block_size: 32}"]),
    "pal4": ("coreml-fp16", ["target.options.compression={mode: palettize, nbits: 4, palette: kmeans}"]),
}


def run_case(case: Case, variant: str, tmp: Path, extra: list[str]) -> dict:
    label, model, _, ev, overrides = case
    recipe_name, options = VARIANTS[variant]
    recipe = load_recipe(recipe_name, [*overrides, *options, *extra, "validation.latency=false",
                                       f"data.evaluation={{type: npz, path: {ev}}}"])
    start = time.perf_counter()
    report = pipeline.run(model, recipe, pipeline.RunOptions(out_dir=tmp / f"{model.stem}-{variant}", use_cache=False))
    final, lowering = report["final"], report["target"]["lowering"]
    return {"model": label, "variant": variant, "cosine": final["worst"]["cosine"],
            "accuracy": final.get("accuracy"), "ref_accuracy": report["reference"]["accuracy"],
            "mb": final["size_bytes"] / (1 << 20), "mil_ops": sum(o["count"] for o in lowering["ops"]),
            "fp32_ops": ", ".join(lowering["fp32_ops_in_fp16"]) or "-", "numerics": final.get("numerics_by", "-"),
            "seconds": time.perf_counter() - start, "gates": report["passed"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="digits,ppocr,minilm", help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--variants", default="fp32,fp16,int8w", help=f"any of {','.join(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every run, e.g. target.options.deployment_target=iOS18")
    args = ap.parse_args()
    for name, known in [("case", CASES), ("variant", VARIANTS)]:
        unknown = set(getattr(args, f"{name}s").split(",")) - set(known)
        if unknown:
            ap.error(f"unknown {name}(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    rows = []
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory(prefix=f"coreml-{name}-") as d:
            case = CASES[name](Path(d))
            for variant in args.variants.split(","):
                rows.append(run_case(case, variant, Path(d), args.set))
                print(rows[-1], flush=True)
    print(f"\nCore ML packages vs the ONNX model; numerics by: {rows[0]['numerics'] if rows else '-'}")
    print(f"{'model':24} {'variant':7} {'cosine':>9} {'accuracy':>17} {'size MB':>8} {'MIL ops':>7} {'s':>6}  "
          "ops left in fp32 (fp16 models)")
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}% ({100 * r['ref_accuracy']:.2f})"
        print(f"{r['model']:24} {r['variant']:7} {r['cosine']:9.6f} {acc:>17} {r['mb']:8.2f} {r['mil_ops']:7d} "
              f"{r['seconds']:6.1f}  {r['fp32_ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
