"""The distill step: the ONNX->torch interpreter computes what ONNX Runtime computes, training changes initializer
values only, a perturbed or half-pruned student moves back towards its teacher (zeros staying zero), and every
misuse fails with a clear error before any training."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

pytest.importorskip("torch")

from accelopt.data import Dataset  # noqa: E402
from accelopt.errors import ConversionError, MissingExtraError, RecipeError  # noqa: E402
from accelopt.metrics import TaskSpec  # noqa: E402
from accelopt.optimizers import PassContext, get_pass  # noqa: E402
from accelopt.optimizers.distillation import interpreter  # noqa: E402
from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from tests import models  # noqa: E402

ALL_WEIGHT_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization"]


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def finish(nodes: list[onnx.NodeProto], inputs: dict[str, list[int | str]], inits: dict[str, np.ndarray],
           outputs: list[str], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)  # output types, which the checker requires
    onnx.checker.check_model(model)
    return model


def op_model(op: str, x_shape: tuple[int, ...], *consts: np.ndarray | None, opset: int = 17, outputs: int = 1,
             **attrs: Any) -> onnx.ModelProto:
    """One node reading input "x" and constant inputs (None = an empty optional input)."""
    names = ["" if c is None else f"c{i}" for i, c in enumerate(consts)]
    inits = {n: c for n, c in zip(names, consts) if c is not None}
    outs = [f"y{i}" for i in range(outputs)]
    return finish([helper.make_node(op, ["x", *names], outs, name=op.lower(), **attrs)], {"x": list(x_shape)},
                  inits, outs, opset)


def residual_cnn() -> onnx.ModelProto:
    """Stride-2 SAME_UPPER conv, grouped conv, residual Add, MaxPool, AveragePool with asymmetric pads, nearest
    upsampling, Concat and a Clip/HardSwish/Sigmoid tail: the CNN ops beside conv_bn_model's."""
    w = lambda *s, seed: (normal(*s, seed=seed) * 0.3)  # noqa: E731
    inits = {"w1": w(8, 3, 3, 3, seed=1), "b1": w(8, seed=2), "w2": w(8, 2, 3, 3, seed=3),
             "w3": w(8, 8, 1, 1, seed=4),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
             "scales": np.array([1, 1, 2, 2], np.float32), "fc": w(16, 5, seed=5)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="grouped", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c2"], ["h2"], name="hswish"),
        helper.make_node("Conv", ["h2", "w3"], ["c3"], name="pointwise"),
        helper.make_node("Add", ["c3", "r1"], ["res"], name="residual"),
        helper.make_node("MaxPool", ["res"], ["mp"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["res"], ["ap"], name="avgpool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1]),
        helper.make_node("Concat", ["mp", "ap"], ["cat"], name="concat", axis=1),
        helper.make_node("Resize", ["cat", "", "scales"], ["up"], name="upsample", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("GlobalAveragePool", ["up"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", alpha=0.5),
        helper.make_node("Sigmoid", ["logits"], ["y"], name="sigmoid"),
    ]
    return finish(nodes, {"x": ["batch", 3, 16, 16]}, inits, ["y"])


def gelu_mlp() -> onnx.ModelProto:
    """MatMul+Add, Gelu (opset 20), LayerNormalization, Softmax: a transformer MLP block with a classifier."""
    inits = {"w1": normal(6, 12, seed=1) * 0.4, "b1": normal(12, seed=2) * 0.1, "g": 1 + 0.1 * normal(12, seed=3),
             "beta": 0.1 * normal(12, seed=4), "w2": normal(12, 5, seed=5) * 0.4}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["mm"], name="fc1"),
        helper.make_node("Add", ["mm", "b1"], ["h"], name="fc1_bias"),
        helper.make_node("Gelu", ["h"], ["act"], name="gelu", approximate="tanh"),
        helper.make_node("LayerNormalization", ["act", "g", "beta"], ["ln"], name="ln"),
        helper.make_node("MatMul", ["ln", "w2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    return finish(nodes, {"x": ["batch", 4, 6]}, inits, ["y"], opset=20)


def shape_ops() -> onnx.ModelProto:
    """Shape arithmetic (Shape, Gather, Unsqueeze, Concat, Reshape with 0 and -1), Split, Slice with a negative
    step, Transpose, Squeeze, ReduceMean, Cast, Pow/Sqrt/Sub/Div and a Constant."""
    inits = {"idx": np.array(0, np.int64), "minus1": np.array([-1], np.int64), "ax0": np.array([0], np.int64),
             "starts": np.array([-1], np.int64), "ends": np.array([-(2 ** 62)], np.int64),
             "axes": np.array([2], np.int64), "steps": np.array([-2], np.int64), "two": np.array(2.0, np.float32),
             "split": np.array([2, 4], np.int64), "rm_axes": np.array([1], np.int64),
             "rm_axes2": np.array([1, 2], np.int64)}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "idx"], ["batch"], name="gather"),
        helper.make_node("Unsqueeze", ["batch", "ax0"], ["batch1"], name="unsqueeze"),
        helper.make_node("Constant", [], ["zero"], name="const",
                         value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", ["batch1", "zero", "minus1"], ["new_shape"], name="shape_cat", axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["flat"], name="reshape"),  # [N, 6, 16]
        helper.make_node("Split", ["flat", "split"], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Slice", ["s2", "starts", "ends", "axes", "steps"], ["rev"], name="slice"),
        helper.make_node("Transpose", ["rev"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Pow", ["t", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", "rm_axes"], ["ms"], name="reduce_mean", keepdims=1),
        helper.make_node("Sqrt", ["ms"], ["rms"], name="sqrt"),
        helper.make_node("Div", ["t", "rms"], ["normed"], name="div"),
        helper.make_node("ReduceMean", ["s1", "rm_axes2"], ["m1"], name="reduce_mean_s1"),
        helper.make_node("Sub", ["normed", "m1"], ["centered"], name="sub"),
        helper.make_node("Cast", ["centered"], ["d"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["d"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "ax0"], ["u"], name="unsqueeze_front"),
        helper.make_node("Squeeze", ["u", "ax0"], ["y"], name="squeeze"),
    ]
    return finish(nodes, {"x": ["batch", 6, 2, 8]}, inits, ["y"], opset=18)


def assert_matches_ort(model: onnx.ModelProto, x: np.ndarray, train: list[str] = ALL_WEIGHT_OPS) -> None:
    module = interpreter.OnnxModule(model, interpreter.trainable_initializers(model, train))
    feeds = {model.graph.input[0].name: x}
    ref = OrtRunner(model).run(feeds)
    got = interpreter.run(module, feeds)
    for name, value in ref.items():
        assert got[name].shape == value.shape, name
        assert np.abs(got[name].astype(np.float64) - value).max() < 1e-4, name


@pytest.mark.parametrize("build, shape", [
    (models.conv_bn_model, (4, 3, 16, 16)),
    (residual_cnn, (4, 3, 16, 16)),
    (models.bn_fold_targets_model, None),
    (models.tiny_bert_like, (3, 5, 16)),
    (gelu_mlp, (3, 4, 6)),
    (shape_ops, (2, 6, 2, 8)),
], ids=["conv_bn", "residual_cnn", "convtranspose_gemm", "tiny_bert", "gelu_mlp", "shape_ops"])
def test_interpreter_matches_ort(build, shape):
    model = build()
    dims = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert_matches_ort(model, normal(*(shape or dims)))


@pytest.mark.parametrize("model, x", [
    (op_model("LeakyRelu", (2, 7), alpha=0.2), normal(2, 7)),
    (op_model("Tanh", (2, 7)), normal(2, 7)),
    (op_model("HardSigmoid", (2, 7), alpha=0.3, beta=0.4), normal(2, 7)),
    (op_model("Erf", (2, 7)), normal(2, 7)),
    (op_model("Exp", (2, 7)), normal(2, 7)),
    (op_model("Log", (2, 7)), np.abs(normal(2, 7)) + 0.1),
    (op_model("Neg", (2, 7)), normal(2, 7)),
    (op_model("Abs", (2, 7)), normal(2, 7)),
    (op_model("Reciprocal", (2, 7)), np.abs(normal(2, 7)) + 0.5),
    (op_model("Identity", (2, 7)), normal(2, 7)),
    (op_model("Dropout", (2, 7)), normal(2, 7)),
    (op_model("PRelu", (2, 3, 4), normal(3, 1)), normal(2, 3, 4)),
    (op_model("Clip", (2, 7), opset=6, min=-0.5, max=0.5), normal(2, 7)),
    (op_model("Clip", (2, 7), None, np.array(0.3, np.float32)), normal(2, 7)),
    (op_model("Softmax", (2, 3, 4), opset=11, axis=1), normal(2, 3, 4)),
    (op_model("LogSoftmax", (2, 3, 4), axis=1), normal(2, 3, 4)),
    (op_model("Gemm", (3, 5), normal(4, 3), normal(4), transA=1, transB=1, alpha=0.7, beta=0.3), normal(3, 5)),
    (op_model("Conv", (1, 2, 9, 9), normal(4, 2, 3, 3), auto_pad="SAME_LOWER", strides=[2, 2], dilations=[1, 1]),
     normal(1, 2, 9, 9)),
    (op_model("Conv", (1, 2, 9, 9), normal(4, 2, 3, 3), pads=[0, 2, 1, 0], dilations=[2, 1]), normal(1, 2, 9, 9)),
    (op_model("Conv", (1, 2, 11), normal(4, 2, 3), auto_pad="VALID"), normal(1, 2, 11)),
    (op_model("ConvTranspose", (1, 4, 5, 5), normal(4, 3, 3, 3), normal(3), strides=[2, 2], pads=[1, 0, 0, 1],
              output_padding=[1, 1]), normal(1, 4, 5, 5)),
    (op_model("MaxPool", (1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
     normal(1, 2, 7, 7)),
    (op_model("AveragePool", (1, 2, 7, 7), kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
     normal(1, 2, 7, 7)),
    (op_model("GlobalMaxPool", (1, 2, 5, 5)), normal(1, 2, 5, 5)),
    (op_model("ReduceSum", (2, 3, 4), np.array([-1], np.int64), keepdims=0), normal(2, 3, 4)),
    (op_model("ReduceMax", (2, 3, 4), axes=[1], opset=17), normal(2, 3, 4)),
    (op_model("ReduceMean", (2, 3, 4), axes=[0, 2], keepdims=0), normal(2, 3, 4)),
    (op_model("Split", (2, 7), axis=1, num_outputs=3, outputs=3, opset=18), normal(2, 7)),
    (op_model("Squeeze", (2, 1, 3, 1), opset=11, axes=[1, -1]), normal(2, 1, 3, 1)),
    (op_model("Unsqueeze", (2, 3), np.array([0, -1], np.int64)), normal(2, 3)),
    (op_model("Gather", (5, 4), np.array([[0, -1], [2, 3]], np.int64), axis=0), normal(5, 4)),
    (op_model("Slice", (4, 6), np.array([1, -100], np.int64), np.array([100, 5], np.int64),
              np.array([1, 0], np.int64), np.array([2, 1], np.int64)), normal(4, 6)),
    (op_model("Reshape", (2, 3, 4), np.array([0, 0, 2, -1], np.int64)), normal(2, 3, 4)),
    (op_model("Flatten", (2, 3, 4), axis=-1), normal(2, 3, 4)),
    (op_model("Transpose", (2, 3, 4)), normal(2, 3, 4)),
    (op_model("Resize", (1, 2, 4, 4), None, np.array([1, 1, 2, 1.5], np.float32), mode="linear"),
     normal(1, 2, 4, 4)),
    (op_model("Resize", (1, 2, 4, 4), None, None, np.array([1, 2, 6, 7], np.int64), mode="linear",
              coordinate_transformation_mode="align_corners"), normal(1, 2, 4, 4)),
    (op_model("Resize", (1, 2, 4, 4), None, np.array([1, 1, 2, 2], np.float32),
              coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil"), normal(1, 2, 4, 4)),
], ids=lambda v: v.graph.node[0].name if isinstance(v, onnx.ModelProto) else "")
def test_single_ops_match_ort(model, x):
    assert_matches_ort(model, x)


def test_unsupported_ops_are_named_before_any_training(tmp_path):
    model = models.conv_bn_model()
    extra = [helper.make_node("Einsum", ["y", "y"], ["e"], name="my_einsum", equation="ij,ij->i"),
             helper.make_node("FusedConv", ["x", "w1"], ["fc"], name="fused", domain="com.microsoft")]
    model.graph.node.extend(extra)
    listed = r"2 op type\(s\): Einsum \(my_einsum\); com\.microsoft\.FusedConv \(fused\)"
    with pytest.raises(ConversionError, match=listed):
        interpreter.OnnxModule(model, [])
    ctx = context(tmp_path, models.conv_bn_model(), normal(8, 3, 16, 16))
    with pytest.raises(ConversionError, match="my_einsum"):
        get_pass("distill")().apply(model, get_pass("distill").Config(), ctx)
    assert not ctx.notes and not ctx.decisions


def test_interpreter_refuses_op_variants_it_cannot_compute():
    model = op_model("Resize", (1, 2, 4, 4), None, np.array([1, 1, 2, 2], np.float32), mode="cubic")
    module = interpreter.OnnxModule(model, [])
    with pytest.raises(ConversionError, match="Resize node 'resize': mode 'cubic'"):
        interpreter.run(module, {"x": normal(1, 2, 4, 4)})


# --- the step ------------------------------------------------------------------------------------------------------


def context(tmp_path: Path, teacher: onnx.ModelProto | None, x: np.ndarray, labels: np.ndarray | None = None,
            **fields: Any) -> PassContext:
    return PassContext(tmp_dir=tmp_path, calibration=Dataset({"x": x}, labels, "test"), original=teacher, **fields)


def distill(student: onnx.ModelProto, ctx: PassContext, **config: Any) -> onnx.ModelProto:
    """Run the step; it must leave its input untouched and return a checker-valid model."""
    cls = get_pass("distill")
    before = student.SerializeToString()
    out = cls().apply(student, cls.Config(**config), ctx)
    assert student.SerializeToString() == before, "distill mutated its input"
    onnx.checker.check_model(out)
    return out


def perturbed(model: onnx.ModelProto, names: tuple[str, ...], scale: float = 0.3, prune: bool = False,
              seed: int = 1) -> onnx.ModelProto:
    """A student: the named weights with relative noise added, or with their smaller-magnitude half zeroed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for tensor in out.graph.initializer:
        if tensor.name in names:
            w = numpy_helper.to_array(tensor)
            if prune:
                w = np.where(np.abs(w) > np.median(np.abs(w)), w, 0)
            else:
                w = w + scale * np.abs(w).mean() * rng.standard_normal(w.shape)
            tensor.CopyFrom(numpy_helper.from_array(w.astype(np.float32), tensor.name))
    return out


def error(model: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray) -> float:
    """Relative squared error of the model's outputs against the teacher's."""
    t, s = OrtRunner(teacher).run({"x": x})["y"], OrtRunner(model).run({"x": x})["y"]
    return float(np.mean((s - t) ** 2) / np.mean(t ** 2))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_distillation_recovers_a_perturbed_student_and_only_changes_weights(tmp_path):
    teacher = models.conv_bn_model()
    student = perturbed(teacher, ("w1", "w2", "fc_w"))
    x, held_out = normal(128, 3, 16, 16, seed=2), normal(64, 3, 16, 16, seed=3)
    ctx = context(tmp_path, teacher, x)
    out = distill(student, ctx, epochs=6, lr=3e-3)
    assert error(out, teacher, held_out) < 0.3 * error(student, teacher, held_out)
    assert list(out.graph.node) == list(student.graph.node)
    assert (list(out.graph.input), list(out.graph.output)) == (list(student.graph.input), list(student.graph.output))
    before, after = initializers(student), initializers(out)
    assert [(k, v.dtype, v.shape) for k, v in before.items()] == [(k, v.dtype, v.shape) for k, v in after.items()]
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"w1", "b1", "bn1_scale", "bn1_bias", "w2", "bn2_scale", "bn2_bias", "fc_w", "fc_b"}
    d = ctx.decisions
    assert d["trained"]["initializers"] == 9 and d["epochs_run"] == 6 and not d["budget_stopped"]
    assert d["teacher_agreement_after"]["cosine"] > d["teacher_agreement_before"]["cosine"]
    assert d["loss"]["kinds"] == {"y": "mse"} and d["interpreter_max_abs_diff"] < 1e-4


def test_pruned_student_keeps_its_zeros(tmp_path):
    teacher = models.conv_bn_model()
    student = perturbed(teacher, ("w2",), prune=True)
    zeros = initializers(student)["w2"] == 0
    x, held_out = normal(128, 3, 16, 16, seed=2), normal(64, 3, 16, 16, seed=3)
    ctx = context(tmp_path, teacher, x)
    out = distill(student, ctx, epochs=6, lr=3e-3, augment="flip")
    w2 = initializers(out)["w2"]
    assert np.all(w2[zeros] == 0) and np.all(w2[~zeros] != 0)
    assert error(out, teacher, held_out) < 0.5 * error(student, teacher, held_out)
    assert ctx.decisions["trained"]["zero_masked_tensors"] == 1


def test_classification_uses_kl_and_labels(tmp_path):
    teacher = gelu_mlp()
    student = perturbed(teacher, ("w1", "w2"), scale=0.5)
    x = normal(64, 4, 6, seed=2)
    labels = OrtRunner(teacher).run({"x": x})["y"].argmax(-1)
    ctx = context(tmp_path, teacher, x, labels, task=TaskSpec(kind="classification"))
    distill(student, ctx, epochs=3, alpha_labels=0.5, augment="none", lr=3e-3)
    d = ctx.decisions
    assert d["loss"]["kinds"] == {"y": "kl"}
    assert d["loss"]["calibration_after"] < d["loss"]["calibration_before"]
    assert d["teacher_agreement_after"]["top1_agreement"] >= d["teacher_agreement_before"]["top1_agreement"]
    with pytest.raises(RecipeError, match="alpha_labels needs"):
        distill(student, context(tmp_path, teacher, x), alpha_labels=0.5)


def test_same_seed_same_model(tmp_path):
    teacher = models.conv_bn_model()
    student = perturbed(teacher, ("w1",))
    x = normal(32, 3, 16, 16, seed=2)
    runs = [distill(student, context(tmp_path, teacher, x), epochs=2, seed=7) for _ in range(2)]
    assert runs[0].SerializeToString() == runs[1].SerializeToString()


def test_tiny_budget_stops_and_returns_a_valid_model(tmp_path):
    teacher = models.conv_bn_model()
    student = perturbed(teacher, ("w1",))
    ctx = context(tmp_path, teacher, normal(32, 3, 16, 16))
    out = distill(student, ctx, budget_s=1e-6)
    assert ctx.decisions["budget_stopped"] and ctx.decisions["epochs_run"] == 0
    assert initializers(out).keys() == initializers(student).keys()
    OrtRunner(out).run({"x": normal(2, 3, 16, 16)})


def test_static_batch_model_trains_at_its_batch(tmp_path):
    teacher = models.conv_bn_model(dynamic_batch=False)
    ctx = context(tmp_path, teacher, normal(8, 3, 16, 16))
    distill(perturbed(teacher, ("w1",)), ctx, epochs=1)
    assert ctx.decisions["batch_size"] == 1 and ctx.decisions["epochs_run"] == 1


# --- misuse --------------------------------------------------------------------------------------------------------


def test_missing_original_is_a_recipe_error(tmp_path):
    model = models.conv_bn_model()
    with pytest.raises(RecipeError, match="needs the original model as teacher"):
        distill(model, context(tmp_path, None, normal(4, 3, 16, 16)))


def test_quantized_model_is_refused(tmp_path):
    scale, zero = np.array(0.1, np.float32), np.array(0, np.uint8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
             helper.make_node("Relu", ["dq"], ["y"], name="relu")]
    model = finish(nodes, {"x": ["batch", 4]}, {"s": scale, "z": zero}, ["y"])
    with pytest.raises(RecipeError, match=r"quantized \(DequantizeLinear, QuantizeLinear\); distil the float model"):
        distill(model, context(tmp_path, models.conv_bn_model(), normal(4, 4)))


def test_other_misuse(tmp_path, monkeypatch):
    teacher = models.conv_bn_model()
    student = perturbed(teacher, ("w1",))
    x = normal(4, 3, 16, 16)
    with pytest.raises(RecipeError, match="needs calibration data"):
        distill(student, PassContext(tmp_dir=tmp_path, original=teacher))
    with pytest.raises(RecipeError, match="does not run: conv"):
        distill(student, context(tmp_path, teacher, x), train=["conv"])
    with pytest.raises(RecipeError, match="nothing to train"):
        distill(student, context(tmp_path, teacher, x), train=["Relu"])
    with pytest.raises(ValidationError, match="not_a_key"):
        get_pass("distill").Config(not_a_key=1)
    ctx = context(tmp_path, teacher, x)
    distill(teacher, ctx)
    assert ctx.decisions == {"skipped": "the input model equals the original"}
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` meets without the extra
    with pytest.raises(MissingExtraError, match=r"pip install 'accelopt\[torch\]'"):
        distill(student, context(tmp_path, teacher, x))
