"""Structured pruning on the CPU, side by side: FP32 vs pruned (with and without the least-squares refit, then
distilled or quantized) (issue 4's "Done when").

    python benchmarks/prune_speed.py [--cases digits,cnn,detector] [--rounds 5] [--runs 50]

Every variant runs the real pipeline (`prune`, `distill`, `quantize` steps, sharing one step cache, so "prune +
INT8" reuses the pruned model), then all variants of a case are timed in this one process, single thread, batch
1, round-robin, best round median each. Quality is measured on held-out inputs, never on the calibration ones.
Cases and the issue's goals:

- The bundled digits CNN (examples/digits): 50% of the channels pruned, accuracy within 1 point of the original
  after the refit (450 labelled digits).
- CNN-56 (the notes' 64-channel Conv+ReLU stack at 56x56, built in benchmarks/quantize_speed.py): >= 1.8x at 40%
  pruning, prune + INT8 >= 5x over FP32 (an int8 goal set on a VNNI CPU; see the INT8-alone row for what int8
  gives on the machine at hand).
- NudeNet's YOLOv8n detector (residual C2f blocks, benchmarks/real_models.py) at 320x320 on real photos: pruning
  keeps the graph valid, and the refit recovers most of the cosine that pruning alone loses (both reported).

Sparsity has no row: ONNX Runtime's CPU EP has no sparse kernels (see the `sparsify` step's docs).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from accelopt import pipeline
from accelopt.latency import batch_feeds, side_by_side
from accelopt.metrics import accuracy
from accelopt.recipes.schema import validate
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import quantize_speed  # noqa: E402  (benchmarks/ is not a package)
import cases  # noqa: E402
import real_models  # noqa: E402

Feeds = dict[str, np.ndarray]
# (reference outputs, candidate outputs, evaluation feeds) -> (what to print, meets the quality goal)
Quality = Callable[[Feeds, Feeds, Feeds], tuple[str, bool]]


@dataclass
class Variant:
    steps: list[dict[str, Any]]
    min_speedup: float | None = None  # the speed goal for this row; None = no goal
    judged: bool = True  # whether the quality goal applies to this row


@dataclass
class Case:
    label: str
    model: Path
    calibration: Feeds
    evaluation: Feeds  # held out; may hold "labels"
    recipe: dict[str, Any]  # task, input shapes...: everything but steps and data
    variants: dict[str, Variant]
    quality: Quality


def prune(ratio: float, **options: Any) -> dict[str, Any]:
    return {"prune": {"ratio": ratio, **options}}


# --- cases ---------------------------------------------------------------------------------------------------


def digits_case(tmp: Path) -> Case:
    digits = ROOT / "examples" / "digits"
    all_groups = prune(0.5, protect_first_last=False)
    return Case("digits CNN (examples/digits)", digits / "digits_cnn.onnx", dict(np.load(digits / "calibration.npz")),
                dict(np.load(digits / "evaluation.npz")), {"task": {"kind": "classification"}},
                {"prune 0.5, no refit": Variant([prune(0.5, refit=False)], judged=False),
                 "prune 0.5 + refit": Variant([prune(0.5)]),
                 "all groups 0.5, no refit": Variant([prune(0.5, refit=False, protect_first_last=False)],
                                                     judged=False),
                 "all groups 0.5 + refit": Variant([all_groups]),
                 "all groups 0.5 + refit + distill": Variant([all_groups, {"distill": {}}])},
                accuracy_within_1pt)


def cnn_case(tmp: Path) -> Case:
    model = tmp / "cnn56.onnx"
    onnx.save(quantize_speed.cnn56(), str(model))
    rng = np.random.default_rng(1)
    int8 = {"quantize": {"speed_guard": False}}
    return Case("CNN-56 Conv+ReLU stack", model, {"input": rng.standard_normal((64, 3, 56, 56), np.float32)},
                {"input": rng.standard_normal((32, 3, 56, 56), np.float32)}, {"task": {"kind": "classification"}},
                {"prune 0.4 + refit": Variant([prune(0.4)], 1.8), "INT8": Variant([int8], judged=False),
                 "prune 0.4 + refit + INT8": Variant([prune(0.4), int8], 5.0)},
                sqnr_text)


def detector_case(tmp: Path) -> Case:
    return Case("NudeNet 320n YOLOv8n @320 (nudenet 3.4.2)", real_models.fetch_detector(),
                real_models.detector_data(32, seed=0, whole=False), real_models.detector_data(24, seed=1),
                {"task": real_models.DETECTOR_TASK,
                 "input": {"shapes": {real_models.DETECTOR_INPUT: [1, 3, 320, 320]}}},
                {"prune 0.3, no refit": Variant([prune(0.3, refit=False)], judged=False),
                 "prune 0.3 + refit": Variant([prune(0.3)])},
                detection_text)


CASES = {"digits": digits_case, "cnn": cnn_case, "detector": detector_case}


# --- quality -------------------------------------------------------------------------------------------------


def accuracy_within_1pt(ref: Feeds, test: Feeds, evaluation: Feeds) -> tuple[str, bool]:
    text, _ = quantize_speed.accuracy_quality(ref, test, evaluation)
    before, after = (accuracy(next(iter(o.values())), evaluation["labels"]) for o in (ref, test))
    return text, (before - after) * 100 <= 1.0


def sqnr_text(ref: Feeds, test: Feeds, evaluation: Feeds) -> tuple[str, bool]:
    text, _ = quantize_speed.sqnr_quality(ref, test, evaluation)
    return text, True  # the issue sets no SQNR bar for pruning: speed is the goal, SQNR is reported


def detection_text(ref: Feeds, test: Feeds, evaluation: Feeds) -> tuple[str, bool]:
    text, _ = quantize_speed.detection_quality(ref, test, evaluation)
    return text, True  # the bar is the comparison of the refit row with the no-refit row, read from the table


# --- measuring -----------------------------------------------------------------------------------------------


def build(case: Case, name: str, variant: Variant, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The variant's artifact through the real pipeline, and its report."""
    data = {"calibration": {"type": "npz", "path": str(real_models.save_npz(case.calibration, tmp / "cal.npz"))},
            "evaluation": {"type": "npz", "path": str(real_models.save_npz(case.evaluation, tmp / "eval.npz"))}}
    raw = {"version": 1, "name": name, **case.recipe, "data": data, "steps": variant.steps,
           "validation": {"latency": False}}
    out = tmp / name.replace(" ", "_").replace("+", "p")
    report = pipeline.run(case.model, validate(raw, tmp, source=name),
                          pipeline.RunOptions(out_dir=out, cache_dir=tmp / "cache"))
    return out / "model.onnx", report


def step_facts(report: dict[str, Any]) -> str:
    """What pruning removed, from the prune step's decisions."""
    for step in report["steps"]:
        if step["name"] == "prune":
            d = step["decisions"]
            return (f"{len(d['groups_pruned'])} groups pruned, params {d['params']['before']:,} -> "
                    f"{d['params']['after']:,}")
    return ""


def bench_case(case: Case, args: argparse.Namespace, tmp: Path) -> list[tuple[str, ...]]:
    models, facts = {"FP32": case.model}, {"FP32": ""}
    for name, variant in case.variants.items():
        models[name], report = build(case, name, variant, tmp)
        facts[name] = step_facts(report)
    runners = {name: OrtRunner(path, threads=1) for name, path in models.items()}
    feeds = {k: v for k, v in case.evaluation.items() if k != "labels"}
    outputs = {name: run_all(r, feeds) for name, r in runners.items()}
    stats = side_by_side(runners, batch_feeds(feeds, 1), rounds=args.rounds, warmup=args.warmup, runs=args.runs)
    rows = []
    for name, st in stats.items():
        ratio = stats["FP32"].median_ms / st.median_ms
        variant = case.variants.get(name)
        text, ok = ("reference", True) if variant is None else case.quality(outputs["FP32"], outputs[name],
                                                                             case.evaluation)
        goal = ""
        if variant is not None and (variant.min_speedup is not None or variant.judged):
            goal = "yes" if (not variant.judged or ok) and ratio >= (variant.min_speedup or 0.0) else "no"
        rows.append((case.label, name, f"{st.median_ms:.3f}", f"{ratio:.2f}x", goal,
                     "; ".join(t for t in (text, facts[name]) if t)))
    return rows


if __name__ == "__main__":
    sys.exit(cases.main(__doc__.splitlines()[0], CASES, bench_case, "prune"))
