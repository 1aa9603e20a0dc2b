"""TVM vs onnxruntime on a real pretrained CNN (PP-OCR text-direction classifier), one process, one thread each.

Prints untuned TVM, tuned TVM (a short MetaSchedule budget) and the tuned rebuild from the saved database
(trials 0) next to ORT, with latency ratios and cosine vs ORT:

    python benchmarks/tvm_speed.py [--trials 128] [--time-s 540] [--out /tmp/tvm_speed]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import real_models  # noqa: E402

from accelopt.converters.onnx_io import load_model  # noqa: E402
from accelopt.latency import side_by_side  # noqa: E402
from accelopt.optimizers import PassContext, get_pass  # noqa: E402
from accelopt.targets import get_target  # noqa: E402
from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from accelopt.targets.tvm.frontend import graph_inputs  # noqa: E402

SHAPE = [1, 3, 48, 192]


def _pinned(path: Path, tmp: Path):
    """The model with input x pinned to SHAPE and simplified, as the tvm-cpu recipe's fix-shapes and simplify
    steps leave it: Relax cannot import PP-OCR's Shape -> Concat -> Reshape subgraph, onnxsim folds it."""
    model = load_model(path)
    for dim, size in zip(graph_inputs(model)[0].type.tensor_type.shape.dim, SHAPE):
        dim.Clear()
        dim.dim_value = size
    simplify = get_pass("simplify")
    return simplify().apply(model, simplify.Config(), PassContext(tmp_dir=tmp))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=128)
    ap.add_argument("--time-s", type=float, default=540)
    ap.add_argument("--out", type=Path, default=Path("/tmp/tvm_speed"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = _pinned(Path(real_models.fetch_ppocr_cls()), args.out)
    name = graph_inputs(model)[0].name
    feeds = {name: np.random.default_rng(0).random(SHAPE, dtype=np.float32)}
    ort = OrtRunner(model, threads=1)
    ref = next(iter(ort.run(feeds).values()))
    builds = {
        "tvm-untuned": {"threads": 1},
        "tvm-tuned": {"threads": 1, "tuning": {"trials": args.trials, "time_s": args.time_s,
                                               "database": str(args.out / "db")}},
        "tvm-from-db": {"threads": 1, "tuning": {"trials": 0, "database": str(args.out / "db")}},
    }
    runners = {"ort": ort}
    for label, options in builds.items():
        target = get_target("tvm", options)
        (args.out / label).mkdir(parents=True, exist_ok=True)
        artifact = target.lower(model, args.out / label)
        runners[label] = target.runner(artifact, threads=1)
        print(f"{label}: built in {artifact.meta['seconds']} s, cosine vs ORT "
              f"{_cosine(next(iter(runners[label].run(feeds).values())), ref):.6f}", flush=True)
    stats = side_by_side(runners, feeds, warmup=5, runs=30)
    base = stats["ort"].median_ms
    for label, s in stats.items():
        print(f"{label:12s} {s.median_ms:9.3f} ms  p90 {s.p90_ms:9.3f}  {s.threads} thread(s)  "
              f"{s.median_ms / base:7.2f}x ORT latency")


if __name__ == "__main__":
    main()
