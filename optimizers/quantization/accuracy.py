"""What the accuracy search scores and which nodes it may leave in float together."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from accelopt.errors import RecipeError
from accelopt.metrics import TaskSpec, accuracy, compare_outputs, worst
from accelopt.optimizers.base import PassContext
from accelopt.optimizers.quantization.config import AccuracyConfig
from accelopt.optimizers.quantization.fallback import Group, quantizer_groups
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner

if TYPE_CHECKING:
    from accelopt.optimizers.quantization.quantizers import Job


@dataclass
class Scorer:
    """One metric of a candidate against the float model's outputs on the evaluation data; higher is better."""

    metric: str
    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    labels: np.ndarray | None
    task: TaskSpec
    threads: int | None

    def __call__(self, model: onnx.ModelProto) -> float:
        outputs = run_all(OrtRunner(model, threads=self.threads), self.feeds)
        return self.value(outputs)

    def value(self, outputs: dict[str, np.ndarray]) -> float:
        if self.metric == "accuracy":
            name = self.task.output or next(iter(outputs))
            return accuracy(outputs[name], self.labels, axis=self.task.axis)
        compared = compare_outputs(self.reference, outputs, task=self.task, precision="int8", feeds=self.feeds)
        if self.metric == "cosine_mean":  # per-sample (embeddings: per-token) mean, else the whole output's
            return min(m.cosine if m.cosine_mean is None else m.cosine_mean for m in compared)
        summary = worst(compared)
        key = {"top1": "top1_agreement", "cosine": "cosine", "sqnr": "sqnr_db"}[self.metric]
        return -math.inf if summary[key] is None else float(summary[key])


def make_scorer(float_model: onnx.ModelProto, acc: AccuracyConfig, ctx: PassContext) -> tuple[Scorer, float]:
    """The scorer and the target score the search must reach, from max_drop / min_db."""
    data = ctx.evaluation if ctx.evaluation is not None else ctx.calibration
    if data is None:
        raise RecipeError("quantize accuracy search needs evaluation or calibration data: declare data or pass --data")
    task = ctx.task if ctx.task is not None else TaskSpec()
    if acc.metric == "accuracy" and data.labels is None:
        raise RecipeError("quantize accuracy metric 'accuracy' needs labels in the evaluation data")
    if acc.metric == "top1" and task.kind not in ("classification", "detection"):
        raise RecipeError("quantize accuracy metric 'top1' needs task kind classification or detection")
    reference = run_all(OrtRunner(float_model, threads=ctx.threads), data.feeds)
    scorer = Scorer(acc.metric, data.feeds, reference, data.labels, task, ctx.threads)
    if acc.metric == "sqnr":
        return scorer, float(acc.min_db)
    if acc.metric == "accuracy":
        return scorer, scorer.value(reference) - float(acc.max_drop)
    return scorer, 1.0 - float(acc.max_drop)


# Static groups tie only the ops that compute: through every activation op (Sigmoid, Mul, Add, Concat...) a
# YOLOv8n merged into one 230-node group, and the search could only float the whole model.
GROUPED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU"})


def quantizer_groups_for(job: Job, mode: str) -> list[Group]:
    """Static QDQ: compute nodes around a shared activation leave quantization together. Dynamic and
    weight-only quantize per node, so every node is its own group."""
    if mode == "static":
        return quantizer_groups(job.base, set(job.op_types) & GROUPED)
    return [Group(n.output[0], [n.name]) for n in job.base.graph.node if n.op_type in job.op_types]
