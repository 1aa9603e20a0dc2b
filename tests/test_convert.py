"""`accelopt convert` end to end on small models: outputs, reports, cache, gates and bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from accelopt.errors import ConversionError
from accelopt.optimizers import REGISTRY, Pass
from tests import models
from tests.conftest import sha256

FAST = ["--set", "validation.runs=3", "--set", "validation.warmup=1"]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_convert_simplifies_fuses_and_reports(cli, conv_bn_path, tmp_path):
    before = sha256(conv_bn_path)
    out = tmp_path / "out"
    r = cli("convert", conv_bn_path, "--recipe", "cpu-fp32", "-o", out, "--junit", *FAST)
    assert r.code == 0, r.err
    assert sha256(conv_bn_path) == before  # the input is never modified
    rep = _report(out)
    assert rep["schema"] == "accelopt.report/1"
    assert rep["input"]["sha256"] == before
    assert rep["input"]["flops"] == 2 * rep["input"]["macs"] > 0
    assert [s["name"] for s in rep["steps"]] == ["simplify", "fuse"]
    fuse = rep["steps"][1]
    assert fuse["decisions"]["conv_bn_folded"] == 2
    assert fuse["nodes_after"] < rep["input"]["node_count"]
    assert fuse["ops_delta"].get("BatchNormalization") == -2
    assert rep["final"]["worst"]["cosine"] > 0.9999
    assert rep["final"]["latency"]["median_ms"] > 0 and rep["final"]["speedup"] > 0
    assert rep["passed"] and rep["gates"][0]["name"] == "min_cosine" and rep["gates"][0]["passed"]
    art = {a["path"]: a for a in rep["artifacts"]}
    assert sha256(out / "model.onnx") == art["model.onnx"]["sha256"]
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "| fuse |" in (out / "report.md").read_text()
    junit = (out / "junit.xml").read_text()
    assert 'name="step.fuse"' in junit and 'failures="0"' in junit
    assert "PASSED" in r.out and "fuse" in r.out
    # random data is called out, since it proves little
    assert "random" in r.err


def test_convert_json_and_cache(cli, conv_bn_path, tmp_path):
    r1 = cli("convert", conv_bn_path, "-o", tmp_path / "a", "--json", *FAST)
    assert r1.code == 0
    rep1 = json.loads(r1.out)
    assert [s["cached"] for s in rep1["steps"]] == [False, False]
    r2 = cli("convert", conv_bn_path, "-o", tmp_path / "b", "--json", *FAST)
    assert r2.code == 0 and r2.out, (r2.err, r2.out)
    rep2 = json.loads(r2.out)
    assert [s["cached"] for s in rep2["steps"]] == [True, True]
    assert rep2["artifacts"][0]["sha256"] == rep1["artifacts"][0]["sha256"]
    # a changed config is a different key; --no-cache runs everything
    rep3 = json.loads(cli("convert", conv_bn_path, "-o", tmp_path / "c", "--json", "--set", "steps.fuse.ort=off", *FAST).out)
    assert [s["cached"] for s in rep3["steps"]] == [True, False]
    rep4 = json.loads(cli("convert", conv_bn_path, "-o", tmp_path / "d", "--json", "--no-cache", *FAST).out)
    assert [s["cached"] for s in rep4["steps"]] == [False, False]


def test_data_labels_accuracy_and_gates(cli, conv_bn_path, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 4, 20)
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nname: mine\nextends: cpu-fp32\ntask: {kind: classification}\n"
                      "data: {evaluation: {type: npz, path: eval.npz}}\n"
                      "gates: {max_accuracy_drop: 0.0, max_size_mb: 1}\n")
    r = cli("convert", conv_bn_path, "-r", recipe, "-o", tmp_path / "out", "--json", *FAST)
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["data"]["evaluation"]["samples"] == 20 and rep["data"]["evaluation"]["labels"]
    assert rep["reference"]["accuracy"] == pytest.approx(rep["final"]["accuracy"])
    assert {g["name"] for g in rep["gates"]} == {"min_cosine", "max_accuracy_drop", "max_size_mb"}
    assert rep["steps"][1]["worst"]["top1_agreement"] == 1.0
    # --data stands in for the recipe's data
    np.savez(tmp_path / "other.npz", x=x[:5])
    rep = json.loads(cli("convert", conv_bn_path, "-o", tmp_path / "o2", "--data", tmp_path / "other.npz", "--json", *FAST).out)
    assert rep["data"]["evaluation"]["samples"] == 5


def test_gate_failure_exits_1_and_still_writes(cli, conv_bn_path, tmp_path):
    out = tmp_path / "out"
    r = cli("convert", conv_bn_path, "-o", out, "--set", "gates.max_size_mb=0.000001", *FAST)
    assert r.code == 1
    rep = _report(out)
    assert not rep["passed"]
    assert [g["passed"] for g in rep["gates"] if g["name"] == "max_size_mb"] == [False]
    assert "GATE FAILED" in r.out


def test_unmeasurable_gate_fails_with_reason(cli, conv_bn_path, tmp_path):
    r = cli("convert", conv_bn_path, "-o", tmp_path / "out", "--json", "--set", "gates.max_accuracy_drop=0.01", *FAST)
    assert r.code == 1
    gate = [g for g in json.loads(r.out)["gates"] if g["name"] == "max_accuracy_drop"][0]
    assert not gate["passed"] and "labels" in gate["reason"]


def test_emit_recipe_applies_overrides(cli, tmp_path):
    r = cli("convert", "unused.onnx", "--recipe", "cpu-fp32", "--emit-recipe", "--set", "steps.fuse.ort=basic",
            "--set", "gates.min_cosine=0.99")
    assert r.code == 0
    import yaml

    resolved = yaml.safe_load(r.out)
    assert resolved["steps"][1]["fuse"]["ort"] == "basic"
    assert resolved["gates"]["min_cosine"] == 0.99
    assert resolved["target"]["name"] == "onnxruntime"


@pytest.mark.parametrize("args, message", [
    (["--set", "gates.min_cosin=0.9"], "unknown key 'gates.min_cosin'; valid keys: max_accuracy_drop"),
    (["--set", "steps.fuse.orrt=off"], "unknown key 'steps[1].fuse.orrt'"),
    (["--set", "steps.quantize.x=1"], "no step 'quantize' in this recipe"),
    (["--set", "steps.fuse.ort=sometimes"], "invalid steps[1].fuse.ort"),
    (["--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'; built-in recipes: coreml-fp16, coreml-fp32, cpu-fp32"),
    (["--set", "target.name=nowhere"], "unknown target 'nowhere'"),
    (["--set", "target.options.thread=2"], "unknown option 'thread'"),
    (["--data", "missing.npz"], "missing.npz"),
])
def test_bad_recipe_or_options_exit_2(cli, conv_bn_path, tmp_path, args, message):
    out = tmp_path / "out"
    r = cli("convert", conv_bn_path, "-o", out, *args)
    assert r.code == 2, r.err
    assert message in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not out.exists()


def test_unknown_step_lists_valid_ones(cli, conv_bn_path, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nsteps:\n  - simplfy: {}\n")
    r = cli("convert", conv_bn_path, "-r", recipe, "-o", tmp_path / "o")
    assert r.code == 2
    assert "unknown step 'simplfy'; valid steps:" in r.err and "simplify" in r.err


@pytest.mark.parametrize("content, message", [
    (None, "model not found"),
    (b"\x08\x07garbage-not-a-protobuf\xff\xfe" * 10, "ONNX"),
    (b'{"this": "is json"}', "ONNX"),
])
def test_bad_model_exit_2(cli, tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    r = cli("convert", path, "-o", tmp_path / "out")
    assert r.code == 2
    assert message in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    if content is not None:
        assert path.read_bytes() == content


def test_missing_extra_is_named(cli, conv_bn_path, tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    r = cli("convert", conv_bn_path, "-o", tmp_path / "o", "--set", "target.name=tensorrt")
    assert r.code == 2
    assert "[tensorrt] extra" in r.err


@pytest.fixture
def temp_pass():
    """Register a pass for one test only."""
    added = []

    def add(cls):
        REGISTRY[cls.name] = cls
        added.append(cls.name)
        return cls

    yield add
    for name in added:
        del REGISTRY[name]


def test_failing_step_exits_3_without_output(cli, conv_bn_path, tmp_path, temp_pass):
    @temp_pass
    class Boom(Pass):
        name = "boom"
        summary = "always fails (test)"

        def apply(self, model, config, ctx):
            raise RuntimeError("kernel exploded")

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nsteps: [simplify, boom]\n")
    out = tmp_path / "out"
    r = cli("convert", conv_bn_path, "-r", recipe, "-o", out)
    assert r.code == 3
    assert "step 'boom' failed: RuntimeError: kernel exploded" in r.err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    with pytest.raises(ConversionError) as info:  # --debug: the traceback, original cause chained
        cli("--debug", "convert", conv_bn_path, "-r", recipe, "-o", out)
    assert isinstance(info.value.__cause__, RuntimeError)


def _detector_head() -> onnx.ModelProto:
    """y = x * scale: rows 0..3 are box coordinates (x320), rows 4..83 class scores, like a YOLOv8 head."""
    scale = np.ones((1, 84, 1), np.float32)
    scale[:, :4] = 320.0
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"], name="head")], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 84, 100])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 84, 100])],
        initializer=[numpy_helper.from_array(scale, "scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("task, code", [("{kind: raw}", 0), ("{kind: detection, axis: 1, boxes: [0, 4], scores: [4, null]}", 1)])
def test_detection_task_catches_zeroed_scores(cli, tmp_path, temp_pass, task, code):
    """A step that zeroes every class score keeps the whole-output cosine at 0.999+; only the
    task-aware split exposes it and fails the gate."""

    @temp_pass
    class ZeroScores(Pass):
        name = "zero-scores"
        summary = "breaks the scores like a shared quantization scale would (test)"

        def apply(self, model, config, ctx):
            out = onnx.ModelProto()
            out.CopyFrom(model)
            scale = numpy_helper.to_array(out.graph.initializer[0]).copy()
            scale[:, 4:] = 0.0
            out.graph.initializer[0].CopyFrom(numpy_helper.from_array(scale, "scale"))
            return out

    src = tmp_path / "head.onnx"
    onnx.save(_detector_head(), str(src))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\ntask: {task}\ninput: {{shapes: {{x: [2, 84, 100]}}}}\n"
                      "steps: [zero-scores]\nvalidation: {latency: false}\ngates: {min_cosine: 0.99}\n")
    r = cli("convert", src, "-r", recipe, "-o", tmp_path / "out", "--json")
    assert r.code == code, r.err
    metrics = {m["name"]: m for m in json.loads(r.out)["final"]["metrics"]}
    if code == 0:
        assert metrics["y"]["cosine"] > 0.99  # the blind spot: one cosine over boxes and scores
    else:
        assert metrics["y[boxes]"]["cosine"] == pytest.approx(1.0)
        assert metrics["y[scores]"]["cosine"] < 0.01


def test_input_model_ort_cannot_run_is_bad_input(cli, tmp_path):
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="acme.ops")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme.ops", 1)],
                              ir_version=8)
    src = tmp_path / "custom.onnx"
    onnx.save(model, str(src))
    r = cli("convert", src, "-o", tmp_path / "out")
    assert r.code == 2 and "onnxruntime cannot load the input model" in r.err


def test_recipe_data_file_missing(cli, conv_bn_path, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nextends: cpu-fp32\ndata: {evaluation: {type: npz, path: nowhere.npz}}\n")
    r = cli("convert", conv_bn_path, "-r", recipe, "-o", tmp_path / "out")
    assert r.code == 2 and "nowhere.npz" in r.err and len(r.err.strip().splitlines()) == 1


def test_external_data_end_to_end(cli, tmp_path, monkeypatch):
    """Models over 2 GB go through ONNX external data; a tiny threshold exercises the same path."""
    from accelopt.converters import onnx_io

    src = tmp_path / "big.onnx"
    onnx.save_model(models.conv_bn_model(), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    out = tmp_path / "out"
    r = cli("convert", src, "-o", out, *FAST)
    assert r.code == 0, r.err
    assert (out / "model.onnx.data").exists()
    names = {a["path"] for a in _report(out)["artifacts"]}
    assert names == {"model.onnx", "model.onnx.data"}
    assert _report(out)["final"]["worst"]["cosine"] > 0.9999


def test_rerun_into_same_dir_leaves_no_stale_outputs(cli, conv_bn_path, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "out").mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli("convert", conv_bn_path, "-o", out, "--junit", *FAST).code == 0
    assert (out / "junit.xml").exists()
    assert cli("convert", conv_bn_path, "-o", out, *FAST).code == 0
    assert not (out / "junit.xml").exists()  # from the earlier run: gone
    assert (out / "notes.txt").read_text() == "mine"  # not ours: untouched
    assert {p.name for p in out.iterdir()} == {"model.onnx", "report.json", "report.md", "notes.txt"}


def test_cpu_fp32_keeps_bert_attention_fusable(cli, tmp_path):
    """simplify must not rewrite a transformer so that fuse can no longer find its attention."""
    src = tmp_path / "bert.onnx"
    onnx.save(models.tiny_bert_like(), str(src))
    r = cli("convert", src, "-o", tmp_path / "out", "--json", "--set", "input.shapes.x=[2,8,16]", *FAST)
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    fusions = rep["steps"][1]["decisions"]["transformer_fusions"]
    assert fusions.get("Attention") == 1 and fusions.get("SkipLayerNormalization") == 2
    assert rep["final"]["worst"]["cosine"] > 0.9999


@pytest.mark.parametrize("name, message", [("model.tflite", "is a TFLite model"), ("model.pt", "is a PyTorch model")])
def test_other_formats_are_named(cli, tmp_path, name, message):
    path = tmp_path / name
    path.write_bytes(b"\x00" * 64)
    r = cli("inspect", path)
    assert r.code == 2 and message in r.err and "export it to ONNX" in r.err


def test_output_path_that_is_a_file(cli, conv_bn_path, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    r = cli("convert", conv_bn_path, "-o", target)
    assert r.code == 2 and "not a folder" in r.err and target.read_text() == "x"


def test_ctrl_c_exits_130_and_writes_nothing(cli, conv_bn_path, tmp_path, temp_pass):
    import os
    import signal

    @temp_pass
    class Interrupt(Pass):
        name = "interrupt"
        summary = "a user pressing Ctrl-C mid-step (test)"

        def apply(self, model, config, ctx):
            os.kill(os.getpid(), signal.SIGINT)
            return model

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nsteps: [interrupt]\n")
    out = tmp_path / "out"
    r = cli("convert", conv_bn_path, "-r", recipe, "-o", out)
    assert r.code == 130 and "interrupted" in r.err
    assert not out.exists()


def test_images_data_source_end_to_end(cli, conv_bn_path, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nextends: cpu-fp32\ntask: {kind: classification}\n"
                      "data: {evaluation: {type: images, path: imgs, size: [16, 16], mean: [0.5], std: [0.25], "
                      "labels: folders}}\n")
    r = cli("convert", conv_bn_path, "-r", recipe, "-o", tmp_path / "out", "--json", *FAST)
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["data"]["evaluation"]["samples"] == 6 and rep["data"]["evaluation"]["labels"]
    assert rep["reference"]["accuracy"] is not None and rep["final"]["accuracy_drop"] == 0.0


def test_cache_key_holds_only_the_context_a_pass_uses(cli, conv_bn_path, tmp_path, temp_pass):
    @temp_pass
    class Calibrated(Pass):
        name = "calibrated"
        summary = "reads calibration data (test)"
        uses = frozenset({"calibration"})

        def apply(self, model, config, ctx):
            ctx.decide("samples", len(ctx.calibration))
            return model

    rng = np.random.default_rng(0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nsteps: [simplify, calibrated]\nvalidation: {latency: false}\n"
                      "data: {calibration: {type: npz, path: cal.npz}, evaluation: {type: npz, path: ev.npz}}\n")
    np.savez(tmp_path / "ev.npz", x=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))

    def run(n_cal: int) -> list[bool]:
        np.savez(tmp_path / "cal.npz", x=rng.standard_normal((n_cal, 3, 16, 16)).astype(np.float32))
        r = cli("convert", conv_bn_path, "-r", recipe, "-o", tmp_path / f"o{n_cal}", "--json")
        assert r.code == 0, r.err
        return [s["cached"] for s in json.loads(r.out)["steps"]]

    assert run(5) == [False, False]
    assert run(6) == [True, False]  # new calibration data: only the pass that reads it reruns


def test_step_notes_reach_terminal_and_report(cli, conv_bn_path, tmp_path, temp_pass):
    @temp_pass
    class Talks(Pass):
        name = "talks"
        summary = "explains itself (test)"

        def apply(self, model, config, ctx):
            ctx.log("talks: kept the float model because it is faster")
            return model

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nsteps: [talks]\nvalidation: {latency: false}\n")
    r = cli("convert", conv_bn_path, "-r", recipe, "-o", tmp_path / "out")
    assert r.code == 0
    assert "note: talks: kept the float model because it is faster" in r.out
    assert "- **talks**: kept the float model because it is faster" in (tmp_path / "out" / "report.md").read_text()


def test_a_target_that_fails_to_lower_gives_one_line_and_no_output(cli, conv_bn_path, tmp_path, monkeypatch):
    """A compiler's own exception (TVM raises TypeErrors from C++) becomes exit 3 and one line."""
    from accelopt.targets.onnxruntime import OnnxRuntimeTarget

    def broken(self, model, out_dir):
        raise TypeError("Reshape requires the input new shape to be Shape")

    monkeypatch.setattr(OnnxRuntimeTarget, "lower", broken)
    r = cli("convert", conv_bn_path, "-r", "cpu-fp32", "-o", tmp_path / "out")
    assert r.code == 3 and len(r.err.strip().splitlines()) == 1
    assert "target onnxruntime failed to lower the model: TypeError: Reshape requires" in r.err
    assert not (tmp_path / "out").exists()


def test_folder_artifacts_are_hashed_sized_and_replaced(cli, conv_bn_path, tmp_path, monkeypatch):
    """A target may ship a folder (Core ML's .mlpackage): the report hashes and sizes its files, and a rerun
    that no longer writes it removes it."""
    from accelopt.converters.onnx_io import sha256_path
    from accelopt.targets.onnxruntime import OnnxRuntimeTarget

    original = OnnxRuntimeTarget.lower

    def with_folder(self, model, out_dir):
        artifact = original(self, model, out_dir)
        folder = out_dir / "bundle.pkg"
        (folder / "Data").mkdir(parents=True)
        (folder / "Manifest.json").write_text("{}")
        (folder / "Data" / "weights.bin").write_bytes(b"\0" * 100)
        artifact.files.append(folder)
        return artifact

    monkeypatch.setattr(OnnxRuntimeTarget, "lower", with_folder)
    out = tmp_path / "out"
    assert cli("convert", conv_bn_path, "-r", "cpu-fp32", "-o", out, *FAST).code == 0
    entry = next(a for a in _report(out)["artifacts"] if a["path"] == "bundle.pkg")
    assert entry["bytes"] == 102 and entry["sha256"] == sha256_path(out / "bundle.pkg")
    monkeypatch.setattr(OnnxRuntimeTarget, "lower", original)
    assert cli("convert", conv_bn_path, "-r", "cpu-fp32", "-o", out, *FAST).code == 0
    assert not (out / "bundle.pkg").exists()
