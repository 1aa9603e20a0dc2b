"""Lower an ONNX model to an ML Program in memory and evaluate it (numpy MIL evaluator) next to ONNX Runtime:
what the Core ML op tests share."""

from __future__ import annotations

import numpy as np
import onnx

from accelopt.converters.mil.translator import translate
from accelopt.targets.coreml.convert import to_mlmodel
from accelopt.targets.coreml.runner import MilRunner
from accelopt.targets.onnxruntime import OrtRunner


def coreml_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], precision: str = "fp32",
                   target: str = "iOS17", fp32_ops: list[str] | None = None) -> dict[str, np.ndarray]:
    """The model translated, converted by coremltools (its full pass pipeline) and evaluated."""
    translated = translate(model, target)
    io = {"inputs": [s.to_dict() for s in translated.inputs], "outputs": [s.to_dict() for s in translated.outputs]}
    mlmodel = to_mlmodel(translated, precision, fp32_ops)
    return MilRunner(mlmodel._mil_program, io).run(feeds)


def assert_matches_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], precision: str = "fp32",
                       target: str = "iOS17", rtol: float | None = None, atol: float | None = None) -> None:
    """Every output equal to ORT's within the precision's tolerance (fp32 1e-5, fp16 1e-2 by default)."""
    rtol = rtol if rtol is not None else (1e-5 if precision == "fp32" else 1e-2)
    atol = atol if atol is not None else (1e-5 if precision == "fp32" else 1e-2)
    expected = OrtRunner(model).run(feeds)
    got = coreml_outputs(model, feeds, precision, target)
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].shape == want.shape, (name, got[name].shape, want.shape)
        assert got[name].dtype == want.dtype, (name, got[name].dtype, want.dtype)
        np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol, err_msg=name)
