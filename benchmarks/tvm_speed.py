"""TVM vs onnxruntime, side by side in one process, one thread each (needs pip install 'accelopt[tvm]').

Cases:
  ppocr     a real pretrained CNN: PP-OCR's text-direction classifier (MobileNetV3, from the rapidocr wheel,
            see real_models.py), pinned to 1x3x48x192, simplified and BatchNorm-folded as the tvm-cpu recipe
            does. Untuned TVM, tuned TVM (--trials / --time-s), and the rebuild from the saved database with
            trials 0 (no tuning), each with cosine vs ORT and latency vs ORT.
  winograd  a 3x3 conv stack (stem 3->64, then 64->64 x 3 at 32x32): the same tuning budget with Winograd
            selection off (direct convs only) and on (direct, F(2x2,3x3), F(4x4,3x3) per layer, fastest within
            tolerance), so the latency the selection buys is measured, with the per-layer choices.
  int8      the same stack quantized by accelopt's quantize step (static QDQ): TVM with the QDQ ops as
            dequantize + float (int8: off) and as int8 kernels (int8: on), same budget, next to ORT's QDQ
            model. On AVX2 hosts there is no u8 x s8 dot instruction; on AVX-512 VNNI hosts int8 is the default.

    python benchmarks/tvm_speed.py [--cases ppocr,winograd,int8] [--trials 440] [--time-s 840] [--out /tmp/tvm_speed]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
import real_models  # noqa: E402

from accelopt.converters.onnx_io import load_model  # noqa: E402
from accelopt.latency import side_by_side  # noqa: E402
from accelopt.optimizers import PassContext, get_pass  # noqa: E402
from accelopt.targets import get_target  # noqa: E402
from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from accelopt.targets.tvm.frontend import graph_inputs  # noqa: E402

PPOCR_SHAPE = [1, 3, 48, 192]


def _recipe_steps(model: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
    """simplify and fuse as tvm-cpu runs them (fuse's ORT level is off for a TVM target): Relax cannot import
    PP-OCR's Shape -> Concat -> Reshape subgraph, onnxsim folds it; fuse folds BatchNorm into the convs."""
    for step, config in (("simplify", {}), ("fuse", {"ort": "off"})):
        cls = get_pass(step)
        model = cls().apply(model, cls.Config(**config), PassContext(tmp_dir=tmp))
    return model


def ppocr(tmp: Path) -> onnx.ModelProto:
    model = load_model(Path(real_models.fetch_ppocr_cls()))
    for dim, size in zip(graph_inputs(model)[0].type.tensor_type.shape.dim, PPOCR_SHAPE):
        dim.Clear()
        dim.dim_value = size
    return _recipe_steps(model, tmp)


def conv_stack(tmp: Path, channels: int = 64, size: int = 32, layers: int = 3) -> onnx.ModelProto:
    """Conv 3x3 + Relu layers with He-scaled weights: the shape Winograd is for."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers + 1):
        c_in = 3 if i == 0 else channels
        w = rng.standard_normal((channels, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "conv_stack", [helper.make_tensor_value_info("x", 1, [1, 3, size, size])],
                              [helper.make_tensor_value_info(x, 1, [1, channels, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def quantized_stack(tmp: Path) -> onnx.ModelProto:
    """conv_stack through the quantize step (static QDQ, calibrated on 32 random inputs)."""
    from types import SimpleNamespace

    from accelopt.data import Dataset

    calibration = np.random.default_rng(1).random((32, 3, 32, 32), dtype=np.float32)
    quantize = get_pass("quantize")
    ort_cpu = SimpleNamespace(name="onnxruntime", capabilities=lambda: {"int8": True, "cpu_flags": []})
    ctx = PassContext(tmp_dir=tmp, target=ort_cpu, calibration=Dataset({"x": calibration}, None, "random"))
    return quantize().apply(conv_stack(tmp), quantize.Config(speed_guard=False), ctx)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _compare(model: onnx.ModelProto, builds: dict[str, dict], out: Path, runs: int) -> None:
    """Lower each build, check it against ORT, then time them all side by side."""
    name = graph_inputs(model)[0].name
    shape = [d.dim_value for d in graph_inputs(model)[0].type.tensor_type.shape.dim]
    feeds = {name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    ort = OrtRunner(model, threads=1)
    ref = next(iter(ort.run(feeds).values()))
    runners = {"ort": ort}
    for label, options in builds.items():
        target = get_target("tvm", options)
        start = time.perf_counter()
        artifact = target.lower(model, out / label)
        runners[label] = target.runner(artifact, threads=1)
        cosine = _cosine(next(iter(runners[label].run(feeds).values())), ref)
        print(f"{label}: lowered in {time.perf_counter() - start:.0f} s, cosine vs ORT {cosine:.6f}", flush=True)
        for row in artifact.meta.get("winograd", []):
            print(f"  winograd {row['shape']} {row['nodes']}: {row['choice']}  " + "  ".join(
                f"{k} {v:.3g}" for k, v in row.items() if k.endswith(("_ms", "_error")) and v is not None))
    stats = side_by_side(runners, feeds, warmup=5, runs=runs)
    base = stats["ort"].median_ms
    for label, s in stats.items():
        print(f"{label:22s} {s.median_ms:9.3f} ms  p90 {s.p90_ms:9.3f}  {s.threads} thread(s)  "
              f"{s.median_ms / base:6.2f}x ORT latency")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="ppocr,winograd")
    ap.add_argument("--trials", type=int, default=440, help="tuning budget of the tuned ppocr build")
    ap.add_argument("--time-s", type=float, default=840, help="tuning time limit of the tuned ppocr build")
    ap.add_argument("--winograd-trials", type=int, default=96, help="budget of each winograd-case build")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("/tmp/tvm_speed"))
    args = ap.parse_args()
    for case in args.cases.split(","):
        out = args.out / case
        out.mkdir(parents=True, exist_ok=True)
        print(f"== {case}", flush=True)
        if case == "ppocr":
            db = str(out / "db")
            _compare(ppocr(out), {
                "tvm-untuned": {"threads": 1},
                "tvm-tuned": {"threads": 1, "tuning": {"trials": args.trials, "time_s": args.time_s, "database": db}},
                "tvm-from-database": {"threads": 1, "tuning": {"trials": 0, "database": db}},
            }, out, args.runs)
        elif case == "winograd":
            budget = {"trials": args.winograd_trials, "time_s": args.time_s}
            _compare(conv_stack(out), {
                "tvm-direct-only": {"threads": 1, "tuning": {**budget, "winograd": None}},
                "tvm-winograd-selected": {"threads": 1, "tuning": budget},
            }, out, args.runs)
        elif case == "int8":
            budget = {"trials": args.winograd_trials, "time_s": args.time_s}
            _compare(quantized_stack(out), {
                "tvm-qdq-as-float": {"threads": 1, "int8": "off", "tuning": budget},
                "tvm-int8-kernels": {"threads": 1, "int8": "on", "tuning": budget},
            }, out, args.runs)
        else:
            ap.error(f"unknown case {case!r}: ppocr, winograd, int8")


if __name__ == "__main__":
    main()
