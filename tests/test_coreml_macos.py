"""Core ML itself (MLModel.predict) against ONNX Runtime and against accelopt's MIL evaluator: the parity checks
only a Mac can run. Linux CI skips this file; on macOS `pytest tests/test_coreml_macos.py` runs it
(CPU_ONLY + fp32 for semantics, ALL + fp16 with fp16 tolerances for what devices compute)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from accelopt.targets import get_target
from accelopt.targets.onnxruntime import OrtRunner
from tests import models

pytestmark = pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML runs only on macOS")
coremltools = pytest.importorskip("coremltools")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _bert():
    model = models.tiny_bert_like()
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, [1, 8, 16]):
        dim.Clear()
        dim.dim_value = size
    return model, {"x": np.random.default_rng(0).standard_normal((1, 8, 16)).astype(np.float32)}


def _cnn():
    return models.conv_stack(), {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}


@pytest.mark.parametrize("build", [_cnn, _bert], ids=["cnn", "bert"])
@pytest.mark.parametrize("precision, units, min_cosine", [("fp32", "CPU_ONLY", 0.9999), ("fp16", "ALL", 0.999)])
def test_core_ml_matches_onnx_runtime_and_the_evaluator(tmp_path: Path, build, precision, units, min_cosine):
    from accelopt.targets.coreml.runner import CoreMLRunner, MilRunner

    model, feeds = build()
    target = get_target("coreml", {"precision": precision, "compute_units": units})
    artifact = target.lower(model, tmp_path / "art")
    runner = target.runner(artifact)
    assert isinstance(runner, CoreMLRunner)
    name = next(iter(OrtRunner(model).run(feeds)))
    core_ml = runner.run(feeds)[name]
    assert _cosine(core_ml, OrtRunner(model).run(feeds)[name]) >= min_cosine
    # The evaluator stands in for Core ML on Linux: it must agree with the real thing.
    assert _cosine(core_ml, MilRunner.from_package(artifact.path).run(feeds)[name]) >= min_cosine
