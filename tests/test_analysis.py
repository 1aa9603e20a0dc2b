"""`inspect`'s model summary: I/O, op histogram, params, hand-checked MAC counts, ORT loadability."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from accelopt.analysis import estimate_macs, summarize
from tests import models


def _conv_gemm_model() -> onnx.ModelProto:
    """x[batch,3,8,8] -> Conv(4,3x3,pad 1) -> Relu -> Flatten -> Gemm(256->10) -> Relu."""
    weights = [
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W"),
        numpy_helper.from_array(np.zeros(4, np.float32), "B"),
        numpy_helper.from_array(np.ones((10, 256), np.float32), "G"),
        numpy_helper.from_array(np.zeros(10, np.float32), "C"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "G", "C"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test",
                             ir_version=models.IR_VERSION)


CONV_MACS = 4 * 8 * 8 * 3 * 3 * 3  # N*Cout*H*W * Cin*kh*kw
GEMM_MACS = 10 * 256  # M*N*K


def test_summary_of_conv_gemm_model():
    model = _conv_gemm_model()
    before = model.SerializeToString()
    s = summarize(model)
    assert model.SerializeToString() == before  # never mutated
    assert s.op_histogram == {"Relu": 2, "Conv": 1, "Flatten": 1, "Gemm": 1}
    assert list(s.op_histogram)[0] == "Relu" and s.node_count == 5
    assert s.params == 108 + 4 + 2560 + 10 and s.param_bytes == 4 * s.params
    assert s.inputs == [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 8, 8]}]
    assert s.outputs == [{"name": "y", "dtype": "float32", "shape": ["batch", 10]}]
    assert s.dynamic_inputs == ["x"]
    assert s.opsets == {"ai.onnx": 17} and s.producer == "test"
    assert s.macs == CONV_MACS + GEMM_MACS
    assert s.macs_by_op == {"Conv": CONV_MACS, "Gemm": GEMM_MACS}
    assert "batch" in s.macs_note
    assert s.ort_loads and s.ort_error is None
    assert s.size_bytes == model.ByteSize()
    assert s.to_dict()["macs"] == s.macs


def test_input_shapes_pin_the_batch():
    macs, by_op, note = estimate_macs(_conv_gemm_model(), {"x": [4, 3, 8, 8]})
    assert macs == 4 * (CONV_MACS + GEMM_MACS) and by_op["Conv"] == 4 * CONV_MACS
    assert note is None


def test_summary_reads_file_size(tmp_path):
    model = _conv_gemm_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    s = summarize(model, path=str(path))
    assert s.path == str(path) and s.size_bytes == path.stat().st_size


def _matmul_model(a_shape, b_shape, out_shape) -> onnx.ModelProto:
    b = numpy_helper.from_array(np.ones(b_shape, np.float32))
    nodes = [
        helper.make_node("Constant", [], ["b"], value=b),
        helper.make_node("MatMul", ["a", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=models.IR_VERSION)


def test_matmul_with_batch_dims():
    s = summarize(_matmul_model([2, 3, 5, 7], [7, 11], [2, 3, 5, 11]))
    assert s.macs == 2 * 3 * 5 * 11 * 7 and s.macs_note is None
    assert s.params == 77 and s.dynamic_inputs == []


def test_matmul_broadcast_batch_dims():
    macs, by_op, _ = estimate_macs(_matmul_model([2, 1, 5, 7], [3, 7, 11], [2, 3, 5, 11]))
    assert macs == 2 * 3 * 5 * 11 * 7 and by_op == {"MatMul": macs}


def test_model_ort_cannot_load():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="custom.domain")
    graph = helper.make_graph(
        [node], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)],
        ir_version=models.IR_VERSION)
    s = summarize(model)
    assert not s.ort_loads
    assert "Mystery" in s.ort_error and "\n" not in s.ort_error
    assert s.op_histogram == {"custom.domain.Mystery": 1}
    assert s.opsets == {"ai.onnx": 17, "custom.domain": 1}
    assert s.macs == 0


def test_ort_symbolic_inference_fills_what_onnx_cannot():
    """onnx knows nothing of com.microsoft.Gelu, so only ORT's inference reaches the MatMul."""
    nodes = [
        helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "W"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "W")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=models.IR_VERSION)
    assert estimate_macs(model, {"x": [3, 8]}) == (3 * 8 * 4, {"MatMul": 96}, None)


def test_minus_one_dims_are_dynamic_and_pinned():
    """Paddle2ONNX writes the batch dim as -1: it is dynamic, never a negative size in the estimate."""
    s = summarize(models.paddle_style_model(), input_shapes={"x": [2, 3, 8, 8]})
    assert s.dynamic_inputs == ["x"]
    assert s.macs == 2 * 2 * 8 * 8 * 3  # Conv 3->2, 1x1, at 2x8x8
    unpinned = summarize(models.paddle_style_model())
    assert unpinned.macs == 2 * 3 and "x[0]" in unpinned.macs_note


def test_native_stderr_is_silenced_and_restored(capfd):
    import os

    from accelopt.isolation import quiet_native_stderr

    with quiet_native_stderr():
        os.write(2, b"from C++\n")
    os.write(2, b"from us\n")
    err = capfd.readouterr().err
    assert "from C++" not in err and "from us" in err


def test_isolated_cwd_drops_library_files_and_restores_the_directory(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from accelopt.isolation import isolated_cwd

    monkeypatch.chdir(tmp_path)
    with isolated_cwd():
        Path("sym_shape_infer_temp.onnx").write_text("left behind by a library")
        scratch = os.getcwd()
    assert os.getcwd() == str(tmp_path) and list(tmp_path.iterdir()) == []
    assert not os.path.exists(scratch)


def test_failed_symbolic_inference_leaves_no_files_in_the_working_directory(tmp_path, monkeypatch):
    """ORT saves sym_shape_infer_temp.onnx (+ a uuid .data file) into the cwd when it gives up."""
    import pytest

    from accelopt.isolation import symbolic_shape_inference

    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["y"], domain="acme.ops")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme.ops", 1)],
                              ir_version=models.IR_VERSION)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception):
        symbolic_shape_inference(model)
    assert list(tmp_path.iterdir()) == []
