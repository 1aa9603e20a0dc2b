"""The TFLite target end to end: recipes through the CLI, every precision, NHWC inputs, the digits example in
full-integer int8, and the one-line errors (missing extra, unsupported op, int8 without calibration data)."""

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
from accelopt.targets.tflite import check_model
from tests import models

FAST = ["--set", "validation.runs=3", "--set", "validation.warmup=1"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "digits"


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_missing_extra_is_named(monkeypatch, cli, tmp_path):
    """Runs without TensorFlow too (CI without the extra): a None in sys.modules hides the package."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingExtraError, match=r"target tflite needs the \[tflite\] extra"):
        get_target("tflite")
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    r = cli("convert", path, "-o", tmp_path / "o", "--recipe", "tflite-fp32")
    assert r.code == 2 and "pip install 'accelopt[tflite]'" in r.err
    assert not (tmp_path / "o").exists()


def test_check_names_unsupported_nodes_and_dynamic_inputs():
    model = models.conv_stack(batch="N")
    model.graph.node.append(helper.make_node("Det", ["y"], ["d"], name="det0"))
    model.graph.node.append(helper.make_node("FusedConv", ["y"], ["f"], name="fused0", domain="com.microsoft"))
    findings = {f.node: f.message for f in check_model(model) if f.severity == "error"}
    assert "ai.onnx::Det has no TFLite lowering" in findings["det0"]
    assert "ort: off" in findings["fused0"]  # names the step option that stops writing ORT-only ops
    assert "dynamic dims" in findings["x"] and "input.shapes" in findings["x"]


tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from accelopt.targets.tflite.inspect import graph_facts  # noqa: E402


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _feeds(n: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def _lower(model: onnx.ModelProto, tmp_path: Path, **options):
    target = get_target("tflite", options)
    artifact = target.lower(model, tmp_path / "art")
    return target, artifact


def test_conv_stack_fp32_through_the_cli(cli, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    out = tmp_path / "out"
    r = cli("convert", path, "--recipe", "tflite-fp32", "-o", out, *FAST)
    assert r.code == 0, r.err
    report = _report(out)
    assert report["final"]["runner"] == "LiteRtRunner"
    assert report["final"]["worst"]["cosine"] >= 0.9999
    lowering = report["target"]["lowering"]
    assert lowering["transposes_between_convs"] == 0 and lowering["transposes_left"] <= 1
    assert {a["path"] for a in report["artifacts"]} == {"model.tflite", "io.json"}
    assert "transposes left in the TFLite graph" in r.out
    layout = next(s for s in report["steps"] if s["name"] == "layout")
    assert layout["within_tolerance"]  # the layout step is checked on ORT like any other
    r = cli("compare", path, out / "model.tflite", "--samples", "4")
    assert r.code == 0 and "MATCH" in r.out  # the artifact, by itself, against the ONNX model
    (out / "io.json").unlink()
    r = cli("compare", path, out / "model.tflite")
    assert r.code == 2 and "no io.json next to it" in r.err


@pytest.mark.parametrize("precision, min_cosine", [("fp16", 0.999), ("dynamic", 0.99)])
def test_weight_precisions_shrink_the_file_and_stay_close(tmp_path, precision, min_cosine):
    model = models.conv_stack(channels=32)
    _, fp32 = _lower(model, tmp_path / "fp32")
    target, artifact = _lower(model, tmp_path / precision, precision=precision)
    assert artifact.path.stat().st_size < 0.6 * fp32.path.stat().st_size
    feeds = _feeds()
    want = OrtRunner(model).run(feeds)["y"]
    got = target.runner(artifact, threads=1).run(feeds)["y"]
    assert _cosine(got, want) >= min_cosine
    assert target.output_precision() == ("fp16" if precision == "fp16" else "int8")


@pytest.mark.parametrize("io_type", ["float", "int8", "uint8"])
def test_full_integer_int8_calibrates_on_the_data(tmp_path, io_type):
    model = models.conv_stack()
    target = get_target("tflite", {"precision": "int8", "io_type": io_type, "calibration_samples": 16})
    from accelopt.data import Dataset

    target.calibration = Dataset(_feeds(16, seed=1), None, "test")
    artifact = target.lower(model, tmp_path / "art")
    facts = graph_facts(artifact.path.read_bytes())
    assert "CONV_2D:int8" in facts["op_types"]
    assert artifact.meta["float_ops_in_int8"] == []
    runner = target.runner(artifact, threads=1)
    feeds = _feeds(1, seed=2)
    assert _cosine(runner.run(feeds)["y"], OrtRunner(model).run(feeds)["y"]) >= 0.98


def test_int8_without_calibration_data_exits_2_before_work(cli, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(), str(path))
    r = cli("convert", path, "--recipe", "tflite-int8", "-o", tmp_path / "out")
    assert r.code == 2 and "calibration data" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_channels_last_inputs(tmp_path):
    model = models.conv_stack()
    target, artifact = _lower(model, tmp_path, channels_last_inputs=True)
    io = json.loads((artifact.path.parent / "io.json").read_text())
    assert io["inputs"][0]["shape"] == [1, 16, 16, 3] and io["inputs"][0]["channels_last"]
    facts = graph_facts(artifact.path.read_bytes())
    assert not facts["transposes"]  # NHWC in: nothing left to transpose at the input either
    runner = target.runner(artifact, threads=1)
    assert runner.inputs[0].shape == [1, 3, 16, 16]  # the runner still takes the ONNX layout
    feeds = _feeds()
    np.testing.assert_allclose(runner.run(feeds)["y"], OrtRunner(model).run(feeds)["y"], rtol=1e-4, atol=1e-4)


def test_bert_block_fuses_gelu_and_matches(tmp_path):
    model = models.tiny_bert_like()
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, [1, 8, 16]):
        dim.Clear()
        dim.dim_value = size
    target, artifact = _lower(model, tmp_path)
    assert "GELU" in graph_facts(artifact.path.read_bytes())["ops"]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 16)).astype(np.float32)}
    assert _cosine(target.runner(artifact, threads=1).run(feeds)["y"], OrtRunner(model).run(feeds)["y"]) >= 0.9999


def test_unsupported_op_exits_3_naming_the_node(cli, tmp_path):
    model = models.conv_stack()
    graph = model.graph
    graph.node.append(helper.make_node("Slice", ["y", "zero", "four", "one"], ["y4"], name="first4"))
    graph.node.append(helper.make_node("Reshape", ["y4", "sq"], ["ysq"], name="to_square"))
    graph.node.append(helper.make_node("Det", ["ysq"], ["det"], name="det0"))
    for name, value in [("zero", [0]), ("four", [4]), ("one", [1]), ("sq", [1, 2, 2])]:
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.int64), name))
    graph.output.append(helper.make_tensor_value_info("det", onnx.TensorProto.FLOAT, [1]))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    r = cli("convert", path, "--recipe", "tflite-fp32", "-o", tmp_path / "out", *FAST)
    assert r.code == 3 and "det0: ai.onnx::Det has no TFLite lowering" in r.err
    assert not (tmp_path / "out").exists()


def test_dynamic_input_without_pin_exits_2(cli, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(models.conv_stack(batch="N"), str(path))
    r = cli("convert", path, "--recipe", "tflite-fp32", "-o", tmp_path / "out")
    assert r.code == 2 and "fix-shapes" in r.err


def test_digits_example_full_int8_within_one_point(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("convert", EXAMPLES / "digits_cnn.onnx", "--recipe", "tflite-int8", "-o", out, *FAST,
            "--set", "input.shapes={input: [1, 1, 8, 8]}", "--set", "task.kind=classification",
            "--set", f"data.calibration={{type: npz, path: {EXAMPLES / 'calibration.npz'}}}",
            "--set", f"data.evaluation={{type: npz, path: {EXAMPLES / 'evaluation.npz'}}}",
            "--set", "validation.samples=450", "--set", "gates.max_accuracy_drop=0.01")
    assert r.code == 0, r.err
    report = _report(out)
    assert report["final"]["accuracy_drop"] <= 0.01
    assert report["target"]["lowering"]["precision"] == "int8"
    assert "CONV_2D:int8" in report["target"]["lowering"]["compute_types"]


def test_int8_softens_float_min_attention_masks(tmp_path):
    """Quantizing a 1e38-wide Add made LiteRT abort while preparing MiniLM; -20 keeps the Softmax."""
    from accelopt.data import Dataset

    model = models.masked_attention()
    rng = np.random.default_rng(0)
    feeds = {"scores": rng.standard_normal((16, 4, 4)).astype(np.float32),
             "mask": np.repeat(np.array([[[1, 1, 1, 0]]], np.int64), 16, axis=0)}
    target = get_target("tflite", {"precision": "int8"})
    target.calibration = Dataset(feeds, None, "test")
    artifact = target.lower(model, tmp_path / "art")
    assert artifact.meta["masks_softened"] == 1
    one = {k: v[:1] for k, v in feeds.items()}
    got = target.runner(artifact, threads=1).run(one)["p"]
    np.testing.assert_allclose(got, OrtRunner(model).run(one)["p"], atol=0.03)
    assert np.all(got[..., 3] < 0.01)  # the masked position still gets (almost) nothing


def test_a_model_litert_cannot_run_is_an_error_not_a_crash(tmp_path):
    from accelopt.errors import ConversionError
    from accelopt.targets.tflite.runner import probe

    broken = tmp_path / "model.tflite"
    broken.write_bytes(b"TFL3" + bytes(64))
    with pytest.raises(ConversionError, match="LiteRT cannot run model.tflite"):
        probe(broken, "AUTO")


def test_int16x8_keeps_int16_activations(tmp_path):
    from accelopt.data import Dataset

    model = models.conv_stack()
    target = get_target("tflite", {"precision": "int16x8"})
    target.calibration = Dataset(_feeds(16, seed=1), None, "test")
    artifact = target.lower(model, tmp_path / "art")
    assert "CONV_2D:int16" in graph_facts(artifact.path.read_bytes())["op_types"]
    feeds = _feeds(1, seed=2)
    got = target.runner(artifact, threads=1).run(feeds)["y"]
    assert _cosine(got, OrtRunner(model).run(feeds)["y"]) >= 0.9999  # int8 activations: ~0.99


def test_io_type_needs_int8_precision():
    from accelopt.errors import RecipeError

    with pytest.raises(RecipeError, match="io_type int8 needs precision int8"):
        get_target("tflite", {"precision": "fp16", "io_type": "int8"})


def test_int8_calibrates_each_input_with_its_own_data(tmp_path):
    """Samples go to the converter keyed by signature name: the converted MiniLM orders its inputs by name
    (attention_mask, input_ids, token_type_ids), and positional samples had calibrated it on the wrong inputs
    (cosine 0.37 -> 0.70 after the fix)."""
    from accelopt.data import Dataset

    T = onnx.TensorProto
    names = ("input_ids", "attention_mask", "token_type_ids")
    nodes = [helper.make_node("Cast", [n], [f"{n}_f"], to=T.FLOAT) for n in names]
    nodes += [helper.make_node("Add", ["input_ids_f", "attention_mask_f"], ["s"]),
              helper.make_node("Add", ["s", "token_type_ids_f"], ["y"])]
    graph = helper.make_graph(nodes, "three", [helper.make_tensor_value_info(n, T.INT64, [1, 8]) for n in names],
                              [helper.make_tensor_value_info(n, T.FLOAT, [1, 8]) for n in ("attention_mask_f", "y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30000, (16, 8)), "attention_mask": rng.integers(0, 2, (16, 8)),
             "token_type_ids": rng.integers(0, 2, (16, 8))}
    target = get_target("tflite", {"precision": "int8"})
    target.calibration = Dataset(feeds, None, "test")
    artifact = target.lower(model, tmp_path / "art")
    one = {k: v[:1] for k, v in feeds.items()}
    got, want = target.runner(artifact, threads=1).run(one), OrtRunner(model).run(one)
    np.testing.assert_allclose(got["attention_mask_f"], want["attention_mask_f"], atol=0.05)
    assert _cosine(got["y"], want["y"]) >= 0.99


def test_float_head_keeps_detection_scores(tmp_path):
    """A YOLO-style head concatenates boxes (0..320) and scores (0..1); one int8 scale rounds the scores away."""
    from accelopt.data import Dataset

    model = models.yolo_like_head()
    rng = np.random.default_rng(0)
    calibration = Dataset({"x": rng.standard_normal((16, 3, 8, 8)).astype(np.float32)}, None, "test")
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    want = OrtRunner(model).run(x)["y"][:, 4:]
    cosines = {}
    for float_head in (False, True):
        target = get_target("tflite", {"precision": "int8", "float_head": float_head})
        target.calibration = calibration
        artifact = target.lower(model, tmp_path / str(float_head))
        cosines[float_head] = _cosine(target.runner(artifact, threads=1).run(x)["y"][:, 4:], want)
    assert cosines[False] < 0.9 and cosines[True] >= 0.999, cosines
    assert "CONV_2D:int8" in artifact.meta["compute_types"] and "CONCATENATION" in artifact.meta["float_ops_in_int8"]


def test_saved_model_is_written_on_request(tmp_path):
    import zipfile

    model = models.conv_stack()
    target, artifact = _lower(model, tmp_path, saved_model=True)
    archive = artifact.path.parent / "saved_model.zip"
    assert archive in artifact.files
    zipfile.ZipFile(archive).extractall(tmp_path / "sm")
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    feeds = _feeds()
    got = serve(x=tf.constant(feeds["x"]))["y"].numpy()
    np.testing.assert_allclose(got, OrtRunner(model).run(feeds)["y"], rtol=1e-4, atol=1e-5)


def test_starter_recipe_for_tflite_takes_tflite_fp32_steps(cli, tmp_path):
    import yaml

    dest = tmp_path / "recipe.yaml"
    assert cli("recipes", "init", "--target", "tflite", "-o", dest).code == 0
    text = dest.read_text()
    assert "# extends: tflite-fp32" in text
    assert [next(iter(s)) for s in yaml.safe_load(text)["steps"]] == ["simplify", "fix-shapes", "fuse", "layout"]
    assert cli("recipes", "validate", dest).code == 0
