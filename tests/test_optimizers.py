"""The simplify, fix-shapes, fuse and fp16 passes: same outputs as the input model in ONNX Runtime, the input
left untouched, decisions recorded, and one-line errors for bad configs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from accelopt.analysis import op_delta, op_histogram
from accelopt.errors import ConversionError, RecipeError
from accelopt.optimizers import REGISTRY, PassContext, get_pass
from accelopt.optimizers import simplify as simplify_module
from tests import models


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def apply(name: str, model: onnx.ModelProto, tmp_path: Path, config: dict[str, Any] | None = None,
          **ctx_fields: Any) -> tuple[onnx.ModelProto, PassContext]:
    """Run one pass; every pass must leave its input untouched and return a checker-valid model."""
    cls = get_pass(name)
    ctx = PassContext(tmp_dir=tmp_path, **ctx_fields)
    before = model.SerializeToString()
    out = cls().apply(model, cls.Config(**(config or {})), ctx)
    assert model.SerializeToString() == before, f"{name} mutated its input"
    assert out is not model
    onnx.checker.check_model(out)
    return out, ctx


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def image(batch: int = 2, shape: tuple[int, ...] = (3, 16, 16)) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)


def static_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value.type.tensor_type.shape.dim]


# --- simplify ------------------------------------------------------------------------------------------------


def test_simplify_lifts_constant_weights_and_keeps_outputs(tmp_path):
    model = models.conv_bn_model(weights_as_constants=True)
    out, ctx = apply("simplify", model, tmp_path)
    assert "Constant" not in ops(out)
    assert ops(out).count("BatchNormalization") == 2  # BN is left to `fuse` by default
    assert len(out.graph.initializer) == 13
    assert op_delta(op_histogram(model), op_histogram(out)) == {"Constant": -13}
    assert (len(model.graph.node), len(out.graph.node)) == (21, 8)
    np.testing.assert_allclose(run(out, image()), run(model, image()), rtol=1e-5, atol=1e-5)


def test_simplify_fold_bn_and_pinned_shapes(tmp_path):
    model = models.conv_bn_model()
    out, ctx = apply("simplify", model, tmp_path, {"fold_bn": True}, input_shapes={"x": [1, 3, 16, 16]})
    assert "BatchNormalization" not in ops(out)
    assert op_delta(op_histogram(model), op_histogram(out))["BatchNormalization"] == -2
    assert static_dims(out.graph.input[0]) == [1, 3, 16, 16]
    assert ctx.decisions["pinned_shapes"] == {"x": [1, 3, 16, 16]}
    np.testing.assert_allclose(run(out, image(1)), run(model, image(1)), rtol=1e-4, atol=1e-5)


def test_simplify_symbolic_pins_are_not_forced(tmp_path):
    out, ctx = apply("simplify", models.conv_bn_model(), tmp_path, input_shapes={"x": ["batch", 3, 16, 16]})
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert "pinned_shapes" not in ctx.decisions


def test_simplify_failures_are_one_line_conversion_errors(tmp_path, monkeypatch):
    model = models.conv_bn_model()
    monkeypatch.setattr(simplify_module.onnxsim, "simplify", lambda m, **kw: (m, False))
    with pytest.raises(ConversionError, match="check found different outputs"):
        apply("simplify", model, tmp_path)

    def boom(m, **kw):
        raise RuntimeError("[ShapeInferenceError] bad node\nsecond line")

    monkeypatch.setattr(simplify_module.onnxsim, "simplify", boom)
    with pytest.raises(ConversionError) as e:
        apply("simplify", model, tmp_path)
    assert str(e.value) == "simplify: onnxsim failed (RuntimeError: [ShapeInferenceError] bad node)"


# --- fix-shapes ----------------------------------------------------------------------------------------------


def test_fix_shapes_pins_dim_param_and_reinfers(tmp_path):
    model = models.conv_bn_model()
    out, ctx = apply("fix-shapes", model, tmp_path, {"dims": {"batch": 2}})
    assert static_dims(out.graph.input[0]) == [2, 3, 16, 16]
    assert static_dims(out.graph.output[0]) == [2, 4]
    assert out.graph.value_info and all(0 not in static_dims(v) for v in out.graph.value_info)
    assert ctx.decisions["input_shapes"] == {"x": [2, 3, 16, 16]}
    assert ctx.decisions["output_shapes"] == {"y": [2, 4]}
    np.testing.assert_array_equal(run(out, image(2)), run(model, image(2)))


def test_fix_shapes_step_config_wins_over_recipe_pins(tmp_path):
    out, _ = apply("fix-shapes", models.conv_bn_model(), tmp_path, {"shapes": {"x": [3, 3, 16, 16]}},
                   input_shapes={"x": [5, 3, 16, 16]})
    assert static_dims(out.graph.input[0]) == [3, 3, 16, 16]
    out, _ = apply("fix-shapes", models.conv_bn_model(), tmp_path, input_shapes={"x": [5, 3, 16, 16]})
    assert static_dims(out.graph.input[0]) == [5, 3, 16, 16]


def test_fix_shapes_paddle_style_dims(tmp_path):
    """dim_value -1 counts as dynamic, and two dims named "?" may get different sizes."""
    model = models.paddle_style_model()
    out, _ = apply("fix-shapes", model, tmp_path, {"shapes": {"x": [1, 3, 48, 192]}})
    assert static_dims(out.graph.input[0]) == [1, 3, 48, 192]
    assert static_dims(out.graph.output[0]) == [1, 2, 48, 192]
    x = image(1, (3, 48, 192))
    np.testing.assert_array_equal(run(out, x), run(model, x))
    out, ctx = apply("fix-shapes", model, tmp_path, {"default": 8})
    assert ctx.decisions["input_shapes"] == {"x": [8, 3, 8, 8]}


@pytest.mark.parametrize("config, ctx_shapes, message", [
    ({"shapes": {"image": [1, 3, 16, 16]}}, {}, "unknown input 'image'; model inputs: x"),
    ({}, {"img": [1, 3, 16, 16]}, "unknown input 'img'"),
    ({"shapes": {"x": [1, 3, 16]}}, {}, "input 'x' has rank 4 but shape [1, 3, 16] has 3 dims"),
    ({"shapes": {"x": [1, 4, 16, 16]}}, {}, "input 'x' dim 1 is static 3, cannot pin it to 4"),
    ({}, {}, "no value for dynamic 'x' dim 0 ('batch')"),
    ({"dims": {"batch_size": 1}}, {}, "dims ['batch_size'] name no dynamic input dim; known: batch"),
])
def test_fix_shapes_errors(tmp_path, config, ctx_shapes, message):
    with pytest.raises(RecipeError) as e:
        apply("fix-shapes", models.conv_bn_model(), tmp_path, config, input_shapes=ctx_shapes)
    assert message in str(e.value) and "\n" not in str(e.value)


# --- fuse ----------------------------------------------------------------------------------------------------


def test_fuse_folds_bn_without_ort(tmp_path):
    model = models.conv_bn_model()
    out, ctx = apply("fuse", model, tmp_path, {"ort": "off"})
    assert ops(out) == ["Conv", "Relu", "Conv", "GlobalAveragePool", "Flatten", "Gemm"]
    assert len(out.graph.node[2].input) == 3  # the bias-less Conv got the BN shift as its bias
    assert ctx.decisions["conv_bn_folded"] == 2
    assert ctx.decisions["ort_level"] == "off"
    assert op_delta(op_histogram(model), op_histogram(out)) == {"BatchNormalization": -2}
    assert {t.name for t in out.graph.initializer}.isdisjoint({"bn1_mean", "w1", "w2"})  # stale weights dropped
    np.testing.assert_allclose(run(out, image(2)), run(model, image(2)), rtol=1e-4, atol=1e-5)


def test_fuse_folds_grouped_convtranspose_and_gemm(tmp_path):
    model = models.bn_fold_targets_model()
    out, ctx = apply("fuse", model, tmp_path, {"ort": "off"})
    assert "BatchNormalization" not in ops(out)
    assert ctx.decisions["conv_bn_folded"] == 2
    assert [o.name for o in out.graph.output] == ["y"]
    x = image(3, (4, 5, 5))
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-4, atol=1e-5)


def test_fuse_leaves_bn_whose_conv_output_is_shared(tmp_path):
    model = models.conv_bn_model(dynamic_batch=False)
    model.graph.node.append(helper.make_node("Relu", ["c1"], ["c1_relu"], name="side"))
    model.graph.output.append(helper.make_tensor_value_info("c1_relu", TensorProto.FLOAT, [1, 8, 16, 16]))
    out, ctx = apply("fuse", model, tmp_path, {"ort": "off"})
    assert ctx.decisions["conv_bn_folded"] == 1
    assert ops(out).count("BatchNormalization") == 1
    np.testing.assert_allclose(run(out, image(1)), run(model, image(1)), rtol=1e-4, atol=1e-5)


def test_fuse_with_ort_on_dynamic_batch(tmp_path):
    """The common real-world case: exported with a dynamic batch, run at several batch sizes."""
    model = models.conv_bn_model(dynamic_batch=True)
    out, ctx = apply("fuse", model, tmp_path)
    assert ctx.decisions["ort_level"] == "extended"
    assert "BatchNormalization" not in ops(out)
    assert op_delta(op_histogram(model), op_histogram(out))["com.microsoft.FusedConv"] == 1  # Conv+Relu, a custom-domain op
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        np.testing.assert_allclose(run(out, image(batch)), run(model, image(batch)), rtol=1e-4, atol=1e-5)


def test_fuse_skips_ort_for_other_targets(tmp_path):
    out, ctx = apply("fuse", models.conv_bn_model(), tmp_path, target=SimpleNamespace(name="tflite"))
    assert ctx.decisions["ort_level"] == "off"
    assert any("target is tflite" in note for note in ctx.notes)
    assert all(n.domain == "" for n in out.graph.node)


def test_fuse_transformer_encoder(tmp_path):
    model = models.tiny_bert_like()
    out, ctx = apply("fuse", model, tmp_path, {"ort": "off"})
    fusions = ctx.decisions["transformer_fusions"]
    assert fusions["Attention"] == 1 and fusions["SkipLayerNormalization"] == 2
    assert "Softmax" not in ops(out)
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-3, atol=1e-4)
    _, ctx = apply("fuse", model, tmp_path, {"ort": "off", "transformer": "off"})
    assert ctx.decisions["transformer_fusions"] == {}


def test_fuse_auto_leaves_cnn_alone(tmp_path):
    _, ctx = apply("fuse", models.conv_bn_model(), tmp_path, {"ort": "off"})
    assert ctx.decisions["transformer_fusions"] == {}


# --- fp16 ----------------------------------------------------------------------------------------------------


def test_fp16_converts_weights_and_runs_on_cpu(tmp_path):
    model = models.conv_bn_model()
    out, ctx = apply("fp16", model, tmp_path)
    assert ctx.decisions["initializers_converted"] == 13
    assert ctx.decisions["initializers_kept_fp32"] == 0
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    ref = run(model, image(2))
    np.testing.assert_allclose(run(out, image(2)), ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def test_fp16_block_lists(tmp_path):
    model = models.conv_bn_model()
    out, ctx = apply("fp16", model, tmp_path, {"op_block_list": ["Gemm"], "node_block_list": ["conv1"]})
    kept = {t.name for t in out.graph.initializer if t.data_type == TensorProto.FLOAT}
    assert kept == {"fc_w", "fc_b", "w1", "b1"}
    assert ctx.decisions["blocked_ops"] == {"Gemm": 1}
    assert ctx.decisions["blocked_nodes"] == ["conv1"]
    assert ctx.decisions["initializers_kept_fp32"] == 4
    ref = run(model, image(2))
    np.testing.assert_allclose(run(out, image(2)), ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())
    with pytest.raises(RecipeError, match="node_block_list names no node of the model: conv9"):
        apply("fp16", model, tmp_path, {"node_block_list": ["conv9"]})


def test_passes_chain_on_constant_weights(tmp_path):
    """fix-shapes -> simplify -> fuse -> fp16 on a Paddle-like export keeps the outputs."""
    model = models.conv_bn_model(weights_as_constants=True)
    out = model
    for name, config in (("fix-shapes", {"dims": {"batch": 2}}), ("simplify", {}), ("fuse", {}), ("fp16", {})):
        out, _ = apply(name, out, tmp_path, config)
    assert ops(out).count("Cast") == 2 and "BatchNormalization" not in ops(out) and "Constant" not in ops(out)
    ref = run(model, image(2))
    np.testing.assert_allclose(run(out, image(2)), ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


# --- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["simplify", "fix-shapes", "fuse", "fp16"])
def test_config_rejects_unknown_keys(name):
    assert name in REGISTRY
    with pytest.raises(ValidationError, match="not_a_key"):
        get_pass(name).Config(not_a_key=1)


def test_config_rejects_bad_values():
    with pytest.raises(ValidationError):
        get_pass("fuse").Config(ort="all")
    with pytest.raises(ValidationError):
        get_pass("fix-shapes").Config(dims={"batch": 0})


def test_simplify_output_stays_standard_onnx(tmp_path):
    """onnxsim 0.8 would fuse attention into com.microsoft.Attention, which only ORT runs."""
    model = models.tiny_bert_like()
    out, _ = apply("simplify", model, tmp_path, input_shapes={"x": [2, 8, 16]})
    assert {n.domain for n in out.graph.node} <= {"", "ai.onnx"}
    assert ops(out).count("MatMul") == 8  # not rewritten into Reshape/Gemm/Reshape
