"""The Core ML target end to end: recipes through the CLI, fp16/fp32, the digits example with fp16 and with
int8 weight compression, `compare` on an .mlpackage, the compatibility check per deployment target, and the
one-line errors (missing extra, unsupported op, too-old deployment target, dynamic input)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from accelopt.errors import MissingExtraError
from accelopt.targets import get_target
from accelopt.targets.coreml import check_model
from tests import models

FAST = ["--set", "validation.runs=3", "--set", "validation.warmup=1"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "digits"
DIGITS = [EXAMPLES / "digits_cnn.onnx", "--set", "input.shapes={input: [1, 1, 8, 8]}",
          "--set", "task.kind=classification",
          "--set", f"data.evaluation={{type: npz, path: {EXAMPLES / 'evaluation.npz'}}}",
          "--set", "validation.samples=450", "--set", "gates.max_accuracy_drop=0.01"]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_missing_extra_is_named(monkeypatch, cli, tmp_path):
    """Runs without coremltools too (CI without the extra): a None in sys.modules hides the package."""
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(MissingExtraError, match=r"target coreml needs the \[coreml\] extra"):
        get_target("coreml")
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    r = cli("convert", path, "-o", tmp_path / "o", "--recipe", "coreml-fp16")
    assert r.code == 2 and "pip install 'accelopt[coreml]'" in r.err
    assert not (tmp_path / "o").exists()


def test_check_names_unsupported_nodes_dynamic_inputs_and_deep_tensors():
    model = models.conv_stack(batch="N")
    model.graph.node.append(helper.make_node("Det", ["y"], ["d"], name="det0"))
    model.graph.node.append(helper.make_node("FusedConv", ["y"], ["f"], name="fused0", domain="com.microsoft"))
    findings = {f.node: f.message for f in check_model(model, "iOS17") if f.severity == "error"}
    assert "ai.onnx::Det has no Core ML lowering" in findings["det0"]
    assert "ort: off" in findings["fused0"]  # names the step option that stops writing ORT-only ops
    assert "dynamic dims" in findings["x"] and "input.shapes" in findings["x"]
    deep = helper.make_model(helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="to6d")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([2] * 6, np.int64), "s")]), opset_imports=[helper.make_opsetid("", 17)])
    assert "rank <= 5" in {f.node: f.message for f in check_model(deep, "iOS17")}["to6d"]


coremltools = pytest.importorskip("coremltools")

from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)}


def _lower(model: onnx.ModelProto, tmp_path: Path, **options):
    target = get_target("coreml", options)
    assert not [f for f in target.check(model) if f.severity == "error"]
    return target, target.lower(model, tmp_path / "art")


def test_conv_stack_through_the_cli_and_compare(cli, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    out = tmp_path / "out"
    r = cli("convert", path, "--recipe", "coreml-fp16", "-o", out, *FAST)
    assert r.code == 0, r.err
    report = _report(out)
    assert report["final"]["runner"] == "MilRunner" and "MIL evaluator" in report["final"]["numerics_by"]
    assert report["final"]["worst"]["cosine"] >= 0.999
    assert "latency" not in report["final"]  # the evaluator's speed is not Core ML's: not timed
    assert [a["path"] for a in report["artifacts"]] == ["model.mlpackage"]
    assert (out / "model.mlpackage" / "Manifest.json").is_file()
    assert "numerics checked by: numpy MIL evaluator" in (out / "report.md").read_text()
    lowering = report["target"]["lowering"]
    assert lowering["deployment_target"] == "iOS17" and {"conv", "relu"} <= {o["op"] for o in lowering["ops"]}
    r = cli("compare", path, out / "model.mlpackage", "--samples", "4")
    assert r.code == 0 and "MATCH" in r.out, r.out + r.err  # the saved package, by itself, against ONNX
    assert "0.01/0.01" in r.out  # fp16 tolerances: the package says it computes in fp16


@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.99999), ("fp16", 0.999)])
def test_precisions_match_onnx_runtime(tmp_path, precision, min_cosine):
    model = models.conv_stack(channels=32)
    target, artifact = _lower(model, tmp_path, precision=precision)
    feeds = _feeds()
    got = target.runner(artifact).run(feeds)["y"]
    assert got.dtype == np.float32
    assert _cosine(got, OrtRunner(model).run(feeds)["y"]) >= min_cosine
    compute = {"fp32": [], "fp16": []}[precision]
    assert artifact.meta["fp32_ops_in_fp16"] == compute


def test_fp32_ops_keep_the_named_ops_in_fp32(tmp_path):
    model = models.tiny_bert_like()
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, [1, 8, 16]):
        dim.Clear()
        dim.dim_value = size
    target, artifact = _lower(model, tmp_path, fp32_ops=["softmax"])
    assert any(op.startswith("softmax") for op in artifact.meta["fp32_ops_in_fp16"])
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 16)).astype(np.float32)}
    assert _cosine(target.runner(artifact).run(feeds)["y"], OrtRunner(model).run(feeds)["y"]) >= 0.999


def test_unsupported_op_exits_3_naming_the_node(cli, tmp_path):
    model = models.conv_stack()
    model.graph.node.append(helper.make_node("Slice", ["y", "zero", "four", "one"], ["y4"], name="first4"))
    model.graph.node.append(helper.make_node("Reshape", ["y4", "square"], ["ysq"], name="to_square"))
    model.graph.node.append(helper.make_node("Det", ["ysq"], ["det"], name="det0"))
    for name, value in [("zero", [0]), ("four", [4]), ("one", [1]), ("square", [1, 2, 2])]:
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.int64), name))
    model.graph.output.append(helper.make_tensor_value_info("det", onnx.TensorProto.FLOAT, [1]))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    r = cli("convert", path, "--recipe", "coreml-fp16", "-o", tmp_path / "out", *FAST)
    assert r.code == 3 and "det0: ai.onnx::Det has no Core ML lowering" in r.err
    assert not (tmp_path / "out").exists()


def test_dynamic_input_without_pin_exits_2(cli, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(batch="N"), str(path))
    r = cli("convert", path, "--recipe", "coreml-fp16", "-o", tmp_path / "out")
    assert r.code == 2 and "fix-shapes" in r.err


def test_compression_newer_than_the_deployment_target_is_refused_before_work(cli, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    r = cli("convert", path, "--recipe", "coreml-fp16", "-o", tmp_path / "out", *FAST,
            "--set", "target.options.deployment_target=iOS15", "--set", "target.options.compression.mode=linear")
    assert r.code == 3 and "iOS16" in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_digits_example_fp16_within_one_point(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("convert", *DIGITS, "--recipe", "coreml-fp16", "-o", out, *FAST)
    assert r.code == 0, r.err
    final = _report(out)["final"]
    assert final["accuracy_drop"] <= 0.01 and final["accuracy"] >= 0.95


def test_digits_example_int8_weight_compression_within_one_point(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("convert", *DIGITS, "--recipe", "coreml-fp16", "-o", out, *FAST,
            "--set", "target.options.compression={mode: linear, dtype: int8, weight_threshold: 0}")
    assert r.code == 0, r.err
    report = _report(out)
    assert report["final"]["accuracy_drop"] <= 0.01
    assert report["target"]["lowering"]["compressed_weights"]  # constexpr int8 weights in the package
    fp16 = tmp_path / "fp16"
    assert cli("convert", *DIGITS, "--recipe", "coreml-fp16", "-o", fp16, *FAST).code == 0
    assert report["artifacts"][0]["bytes"] < 0.7 * _report(fp16)["artifacts"][0]["bytes"]


def test_starter_recipe_for_coreml_takes_coreml_fp16_steps(cli, tmp_path):
    import yaml

    dest = tmp_path / "recipe.yaml"
    assert cli("recipes", "init", "--target", "coreml", "-o", dest).code == 0
    text = dest.read_text()
    assert "# extends: coreml-fp16" in text
    assert [next(iter(s)) for s in yaml.safe_load(text)["steps"]] == ["simplify", "fix-shapes", "fuse"]
    assert cli("recipes", "validate", dest).code == 0


def test_accelopt_quantized_model_stays_int8_on_core_ml(cli, tmp_path):
    """The quantize step picks the coreml profile (symmetric int8 Q/DQ on Conv/Gemm/MatMul) for this target;
    the lowering keeps the weights int8 (constexpr) and the activations as quantize/dequantize."""
    recipe = tmp_path / "w8a8.yaml"
    recipe.write_text("version: 1\nname: coreml-w8a8\nextends: coreml-fp16\nsteps:\n  - simplify: {}\n"
                      "  - fix-shapes: {}\n  - fuse: {ort: 'off', transformer: 'off'}\n  - quantize: {mode: static}\n")
    out = tmp_path / "out"
    r = cli("convert", *DIGITS, "--recipe", recipe, "-o", out, *FAST,
            "--set", f"data.calibration={{type: npz, path: {EXAMPLES / 'calibration.npz'}}}")
    assert r.code == 0, r.err
    report = _report(out)
    quantize = next(s for s in report["steps"] if s["name"] == "quantize")
    assert quantize["decisions"]["profile"] == "coreml" and quantize["decisions"]["activation_type"] == "QInt8"
    lowering = report["target"]["lowering"]
    ops = {o["op"] for o in lowering["ops"]}
    assert {"quantize", "dequantize"} <= ops
    assert lowering["compressed_weights"]
    assert report["final"]["accuracy_drop"] <= 0.01


def test_deployment_target_too_old_for_an_op_exits_3_naming_the_node(cli, tmp_path):
    """Activation quantize/dequantize came with iOS17: the check refuses the QDQ model for iOS16 before any
    conversion, naming each node."""
    recipe = tmp_path / "w8a8.yaml"
    recipe.write_text("version: 1\nname: coreml-w8a8\nextends: coreml-fp16\nsteps:\n  - simplify: {}\n"
                      "  - fix-shapes: {}\n  - quantize: {mode: static}\ntarget:\n  name: coreml\n  options:\n"
                      "    deployment_target: iOS16\n")
    out = tmp_path / "out"
    r = cli("convert", *DIGITS, "--recipe", recipe, "-o", out, *FAST,
            "--set", f"data.calibration={{type: npz, path: {EXAMPLES / 'calibration.npz'}}}")
    assert r.code == 3, r.err
    assert "target coreml cannot take the model" in r.err
    assert "QuantizeLinear needs deployment target iOS17 or newer (have iOS16)" in r.err
    assert "_QuantizeLinear: " in r.err  # the node's name leads each problem
    assert not out.exists()


def test_macos_runner_maps_names_and_types_through_predict(monkeypatch, tmp_path):
    """On macOS the runner calls MLModel.predict. No Mac here: a stand-in MLModel whose predict runs the MIL
    evaluator checks the wiring (feature names, array types, scalar and output reshapes) of that path."""
    import platform

    from accelopt.converters.mil.evaluate import run_program
    from accelopt.targets.coreml import runner as coreml_runner

    model = models.conv_stack()
    target, artifact = _lower(model, tmp_path)
    evaluator = coreml_runner.MilRunner.from_package(artifact.path)
    real_mlmodel = coremltools.models.MLModel

    class PredictingModel:
        def __init__(self, path: str, compute_units=None):
            self.compute_units = compute_units
            self.user_defined_metadata = real_mlmodel(path, skip_model_load=True).user_defined_metadata

        def predict(self, features: dict) -> dict:
            assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in features.values())
            return run_program(evaluator.program, features)

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(coremltools.models, "MLModel", PredictingModel)
    runner = target.runner(artifact)
    assert isinstance(runner, coreml_runner.CoreMLRunner) and runner.timed
    assert runner.model.compute_units == coremltools.ComputeUnit.ALL
    feeds = _feeds()
    np.testing.assert_array_equal(runner.run(feeds)["y"], evaluator.run(feeds)["y"])


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_float_min_attention_masks_do_not_become_nan_in_fp16(tmp_path, precision):
    """HF exporters' (1 - mask) * float32.min: coremltools casts the constant to -inf in fp16, and the unmasked
    positions then compute 0 * -inf = NaN (all-MiniLM-L6-v2 gave NaN everywhere). fp16 raises it to -1e4."""
    model = models.masked_attention()
    target, artifact = _lower(model, tmp_path, precision=precision)
    assert artifact.meta["masks_softened"] == (1 if precision == "fp16" else 0)
    rng = np.random.default_rng(0)
    feeds = {"scores": rng.standard_normal((1, 4, 4)).astype(np.float32), "mask": np.array([[[1, 1, 1, 0]]], np.int64)}
    got = target.runner(artifact).run(feeds)["p"]
    assert np.isfinite(got).all() and np.all(got[..., 3] == 0)
    np.testing.assert_allclose(got, OrtRunner(model).run(feeds)["p"], atol=2e-3)
