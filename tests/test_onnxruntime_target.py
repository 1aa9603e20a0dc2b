"""The ONNX Runtime target: runner numerics and timing, batching, checks, lowering, the target registry."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from accelopt.converters import onnx_io
from accelopt.errors import BadInputError, ConversionError, RecipeError
from accelopt.targets import TARGETS, get_target
from accelopt.targets import onnxruntime as ort_target
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OnnxRuntimeTarget, OrtRunner

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def dense_model(batch: int | str = "batch") -> onnx.ModelProto:
    """y = relu(x @ W + B); input "x" [batch, 4], output "y" [batch, 3]."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "B"], ["lin"], name="add"),
             helper.make_node("Relu", ["lin"], ["y"], name="relu")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
                  [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])


def dense_reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0)


def mistyped_model() -> onnx.ModelProto:
    """Add of a float and an int64 input: valid protobuf, but no kernel binds T to two types."""
    return _model([helper.make_node("Add", ["a", "b"], ["y"], name="add")],
                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
                   helper.make_tensor_value_info("b", TensorProto.INT64, [2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])


def custom_op_model() -> onnx.ModelProto:
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                    helper.make_node("FancyGelu", ["r"], ["y"], name="fancy", domain="com.example")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_run_matches_numpy_and_reports_specs():
    runner = OrtRunner(dense_model(), threads=1)
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    out = runner.run({"x": x})
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], dense_reference(x), rtol=1e-5, atol=1e-6)
    assert runner.threads == 1
    assert [(s.name, s.shape, s.dtype) for s in runner.inputs] == [("x", ["batch", 4], np.dtype(np.float32))]
    assert [(s.name, s.shape) for s in runner.outputs] == [("y", ["batch", 3])]


def test_default_threads_recorded_and_path_input(tmp_path):
    path = onnx_io.save_model(dense_model(), tmp_path / "m.onnx")
    runner = OrtRunner(path, optimization_level="disabled")
    assert runner.threads >= 1
    np.testing.assert_allclose(runner.run({"x": np.ones((1, 4), np.float32)})["y"],
                               dense_reference(np.ones((1, 4), np.float32)), rtol=1e-5)


def test_bad_feeds_and_bad_level():
    runner = OrtRunner(dense_model(), threads=1)
    with pytest.raises(BadInputError, match="onnxruntime rejected the inputs"):
        runner.run({"x": np.ones((1, 4), np.int64)})
    with pytest.raises(ValueError, match="optimization_level"):
        OrtRunner(dense_model(), optimization_level="max")


def test_bench_stats_are_consistent():
    runner = OrtRunner(dense_model(), threads=1)
    stats = runner.bench({"x": np.ones((6, 4), np.float32)}, warmup=2, runs=20)
    assert (stats.batch, stats.threads, stats.warmup, stats.runs) == (6, 1, 2, 20)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.mean_ms >= stats.min_ms
    assert stats.throughput == pytest.approx(6 / (stats.median_ms / 1000))
    assert stats.peak_memory_mb is None or stats.peak_memory_mb >= 0
    assert set(stats.to_dict()) >= {"median_ms", "p99_ms", "throughput", "peak_memory_mb"}


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_run_all_concatenates_batches(batch_size):
    runner = OrtRunner(dense_model(), threads=1)
    x = RNG.standard_normal((7, 4)).astype(np.float32)
    out = run_all(runner, {"x": x}, batch_size=batch_size)
    np.testing.assert_allclose(out["y"], runner.run({"x": x})["y"], rtol=1e-6, atol=1e-7)


def test_run_all_static_batch_pads_the_last_batch():
    runner = OrtRunner(dense_model(batch=2), threads=1)
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    out = run_all(runner, {"x": x})  # batches of 2, 2, then 1 padded to 2
    assert out["y"].shape == (5, 3)
    np.testing.assert_allclose(out["y"], dense_reference(x), rtol=1e-5, atol=1e-6)


def test_unloadable_model_is_a_conversion_error(tmp_path):
    with pytest.raises(ConversionError, match="^onnxruntime cannot load the model: ") as e:
        OrtRunner(mistyped_model())
    assert "\n" not in str(e.value)
    with pytest.raises(BadInputError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx")


def test_large_model_goes_through_external_data(monkeypatch):
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 10)
    runner = OrtRunner(dense_model(), threads=1)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(runner.run({"x": x})["y"], dense_reference(x), rtol=1e-5)


def test_check_finds_custom_ops_and_load_failures():
    target = OnnxRuntimeTarget()
    assert target.check(dense_model()) == []
    (finding,) = target.check(custom_op_model())
    assert (finding.severity, finding.node) == ("error", "fancy")
    assert "com.example:FancyGelu" in finding.message
    (finding,) = target.check(mistyped_model())
    assert finding.severity == "error" and finding.message.startswith("onnxruntime cannot load the model")


def test_check_accepts_model_local_functions():
    model = custom_op_model()
    model.functions.append(helper.make_function("com.example", "FancyGelu", ["i"], ["o"],
                                                [helper.make_node("Relu", ["i"], ["o"])],
                                                [helper.make_opsetid("", 17)]))
    assert OnnxRuntimeTarget().check(model) == []


def test_lower_writes_model_and_runner_uses_it(tmp_path):
    target = get_target("onnxruntime", {"threads": 1})
    artifact = target.lower(dense_model(), tmp_path / "out")
    assert artifact.path == tmp_path / "out" / "model.onnx" and artifact.files == [artifact.path]
    assert onnx.load(str(artifact.path)).graph.node[0].op_type == "MatMul"
    runner = target.runner(artifact)
    assert runner.threads == 1
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(runner.run({"x": x})["y"], dense_reference(x), rtol=1e-5)


def test_lower_saves_optimized_copy(tmp_path):
    target = get_target("onnxruntime", {"save_optimized": True})
    artifact = target.lower(dense_model(), tmp_path)
    optimized = tmp_path / "model.ort.onnx"
    assert artifact.files == [tmp_path / "model.onnx", optimized] and artifact.meta["optimized"] == optimized.name
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(OrtRunner(optimized).run({"x": x})["y"], dense_reference(x), rtol=1e-5)


def test_lower_optimized_copy_of_large_model_uses_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 10)
    bias = np.arange(512, dtype=np.float32)  # 2 KiB: over the 1 KiB floor for external tensors
    model = _model([helper.make_node("Add", ["x", "bias"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])],
                   [numpy_helper.from_array(bias, "bias")])
    artifact = OnnxRuntimeTarget(OnnxRuntimeTarget.Config(save_optimized=True)).lower(model, tmp_path)
    names = sorted(p.name for p in artifact.files)
    assert names == ["model.onnx", "model.onnx.data", "model.ort.onnx", "model.ort.onnx.data"]
    x = np.ones((1, 512), np.float32)
    np.testing.assert_array_equal(OrtRunner(tmp_path / "model.ort.onnx").run({"x": x})["y"], x + bias)


def test_get_target_validates_options_and_names():
    assert "onnxruntime" in TARGETS
    assert get_target("onnxruntime", {"graph_optimization_level": "basic"}).config.graph_optimization_level == "basic"
    with pytest.raises(RecipeError, match="unknown option 'thread'; valid options: threads, "):
        get_target("onnxruntime", {"thread": 2})
    with pytest.raises(RecipeError, match="option 'graph_optimization_level'.*valid options"):
        get_target("onnxruntime", {"graph_optimization_level": "max"})
    with pytest.raises(RecipeError, match="unknown target 'tvmm'; valid targets: coreml, onnxruntime"):
        get_target("tvmm")


def test_capabilities_report_cpu_facts(monkeypatch):
    monkeypatch.setattr(ort_target, "_cpu_flags", lambda: {"avx2", "avx512_vnni", "sse2"})
    caps = OnnxRuntimeTarget().capabilities()
    assert caps == {"int8": True, "layout": "NCHW", "alignment": 1, "cpu_flags": ["avx2", "avx512_vnni"]}
    monkeypatch.setattr(ort_target, "_cpu_flags", lambda: {"avx2"})
    assert OnnxRuntimeTarget().capabilities()["int8"] is False


def test_one_line_errors_drop_cpp_source_locations():
    """ORT's C++ location and signature used to fill the whole line and hide the reason."""
    from accelopt.errors import first_line
    e = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model.cc:192 "
                     "onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&, "
                     "const onnxruntime::ModelOptions&) Unsupported model IR version: 14, max supported IR version: 13")
    assert first_line(e) == "[ONNXRuntimeError] : 1 : FAIL : Unsupported model IR version: 14, max supported IR version: 13"
