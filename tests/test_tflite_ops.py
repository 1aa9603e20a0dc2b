"""TFLite lowering vs onnxruntime, one small graph per op family (the node-test coverage run is
benchmarks/tflite_coverage.py; these are the fast representatives)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _lower(model, tmp_path):
    from accelopt.targets import get_target

    target = get_target("tflite", {"precision": "fp32"})
    artifact = target.lower(model, tmp_path)
    return artifact, target.runner(artifact, threads=1)


def _check(model, feeds, tmp_path, rtol=1e-4, atol=1e-5):
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    artifact, runner = _lower(model, tmp_path)
    got = runner.run(feeds)
    for out, want in zip(model.graph.output, expected):
        np.testing.assert_allclose(got[out.name], want, rtol=rtol, atol=atol, err_msg=out.name)
    from accelopt.targets.tflite.inspect import graph_facts

    return set(graph_facts(artifact.path.read_bytes())["ops"])


def _resize_nearest(rng):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return (_model([node], [("x", F, [1, 3, 4, 5])], [("y", F, [1, 3, 8, 10])],
                   [("scales", np.array([1, 1, 2, 2], np.float32))]),
            {"x": _rand(rng, 1, 3, 4, 5)}, "RESIZE_NEAREST_NEIGHBOR")


def _resize_linear(rng):
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")  # half_pixel
    return (_model([node], [("x", F, [1, 2, 5, 6])], [("y", F, [1, 2, 9, 13])],
                   [("sizes", np.array([1, 2, 9, 13], np.int64))]),
            {"x": _rand(rng, 1, 2, 5, 6)}, "RESIZE_BILINEAR")


def _resize_cubic(rng):  # no TFLite builtin: one matmul per axis
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")
    return (_model([node], [("x", F, [1, 2, 4, 5])], [("y", F, [1, 2, 8, 10])],
                   [("scales", np.array([1, 1, 2, 2], np.float32))]),
            {"x": _rand(rng, 1, 2, 4, 5)}, None)


def _lstm_bidirectional(rng):
    seq, batch, size, hidden = 4, 2, 3, 5
    inits = [("W", _rand(rng, 2, 4 * hidden, size) * 0.5), ("R", _rand(rng, 2, 4 * hidden, hidden) * 0.5),
             ("B", _rand(rng, 2, 8 * hidden) * 0.1)]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"],
                            hidden_size=hidden, direction="bidirectional")
    return (_model([node], [("x", F, [seq, batch, size]), ("h0", F, [2, batch, hidden]),
                            ("c0", F, [2, batch, hidden])],
                   [("y", F, [seq, 2, batch, hidden]), ("yh", F, [2, batch, hidden]), ("yc", F, [2, batch, hidden])],
                   inits),
            {"x": _rand(rng, seq, batch, size), "h0": _rand(rng, 2, batch, hidden),
             "c0": _rand(rng, 2, batch, hidden)}, None)


def _gru(rng, linear_before_reset=1, direction="forward"):
    seq, batch, size, hidden = 3, 2, 4, 3
    inits = [("W", _rand(rng, 1, 3 * hidden, size)), ("R", _rand(rng, 1, 3 * hidden, hidden)),
             ("B", _rand(rng, 1, 6 * hidden) * 0.1)]
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["y", "yh"], hidden_size=hidden, direction=direction,
                            linear_before_reset=linear_before_reset)
    return (_model([node], [("x", F, [seq, batch, size])],
                   [("y", F, [seq, 1, batch, hidden]), ("yh", F, [1, batch, hidden])], inits),
            {"x": _rand(rng, seq, batch, size)}, None)


def _reduce_mean(rng):
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, -1], keepdims=0)
    return _model([node], [("x", F, [2, 3, 4])], [("y", F, [2])]), {"x": _rand(rng, 2, 3, 4)}, None


def _top_k(rng):
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=1)
    return (_model([node], [("x", F, [3, 6, 2])], [("v", F, [3, 2, 2]), ("i", I64, [3, 2, 2])],
                   [("k", np.array([2], np.int64))]),
            {"x": _rand(rng, 3, 6, 2)}, "TOPK_V2")


def _gather_negative(rng):
    node = helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)
    return (_model([node], [("x", F, [2, 5, 3]), ("idx", I64, [4])], [("y", F, [2, 4, 3])]),
            {"x": _rand(rng, 2, 5, 3), "idx": np.array([-1, 0, -5, 2], np.int64)}, "GATHER")


def _slice_negative_steps(rng):
    node = helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])
    inits = [("starts", np.array([-1, 4], np.int64)), ("ends", np.array([-100, 0], np.int64)),
             ("axes", np.array([0, 1], np.int64)), ("steps", np.array([-2, -1], np.int64))]
    return (_model([node], [("x", F, [5, 6])], [("y", F, [3, 4])], inits), {"x": _rand(rng, 5, 6)}, None)


def _pad_reflect(rng):
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")
    return (_model([node], [("x", F, [1, 2, 4, 5])], [("y", F, [1, 2, 7, 7])],
                   [("pads", np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64))]),
            {"x": _rand(rng, 1, 2, 4, 5)}, None)


def _einsum(rng):
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bkj->bik")
    return (_model([node], [("a", F, [2, 3, 4]), ("b", F, [2, 5, 4])], [("y", F, [2, 3, 5])]),
            {"a": _rand(rng, 2, 3, 4), "b": _rand(rng, 2, 5, 4)}, "BATCH_MATMUL")


def _gather_elements(rng):
    node = helper.make_node("GatherElements", ["x", "idx"], ["y"], axis=1)
    return (_model([node], [("x", F, [3, 4]), ("idx", I64, [3, 2])], [("y", F, [3, 2])]),
            {"x": _rand(rng, 3, 4), "idx": np.array([[0, -1], [2, 1], [3, 3]], np.int64)}, None)


def _softmax_axis1(rng):
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    return _model([node], [("x", F, [2, 3, 4, 5])], [("y", F, [2, 3, 4, 5])]), {"x": _rand(rng, 2, 3, 4, 5)}, None


def _layer_norm(rng):
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)
    return (_model([node], [("x", F, [2, 3, 8])], [("y", F, [2, 3, 8])],
                   [("s", _rand(rng, 8)), ("b", _rand(rng, 8))]),
            {"x": _rand(rng, 2, 3, 8)}, None)


def _erf_gelu(rng):
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    inits = [("sqrt2", np.array(math.sqrt(2), np.float32)), ("one", np.array(1, np.float32)),
             ("half", np.array(0.5, np.float32))]
    return _model(nodes, [("x", F, [2, 16])], [("y", F, [2, 16])], inits), {"x": _rand(rng, 2, 16) * 3}, "GELU"


def _cumsum(rng):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1, reverse=1)
    return (_model([node], [("x", F, [3, 5])], [("y", F, [3, 5])], [("axis", np.array(1, np.int64))]),
            {"x": _rand(rng, 3, 5)}, "CUMSUM")


def _conv_transpose_grouped(rng):
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=2, strides=[2, 2], dilations=[2, 1],
                            pads=[1, 0, 0, 1], output_padding=[1, 1])
    return (_model([node], [("x", F, [1, 4, 5, 5])], [("y", F, [1, 6, 13, 11])],
                   [("w", _rand(rng, 4, 3, 3, 2)), ("b", _rand(rng, 6))]),
            {"x": _rand(rng, 1, 4, 5, 5)}, "TRANSPOSE_CONV")


def _max_pool_dilated(rng):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 0, 0])
    return _model([node], [("x", F, [1, 3, 6, 6])], [("y", F, [1, 3, 5, 5])]), {"x": _rand(rng, 1, 3, 6, 6)}, None


def _scatter_nd(rng):
    node = helper.make_node("ScatterND", ["x", "idx", "u"], ["y"])
    return (_model([node], [("x", F, [4, 3]), ("idx", I64, [2, 1]), ("u", F, [2, 3])], [("y", F, [4, 3])]),
            {"x": _rand(rng, 4, 3), "idx": np.array([[2], [-4]], np.int64), "u": _rand(rng, 2, 3)}, None)


def _depth_to_space_crd(rng):
    node = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")
    return _model([node], [("x", F, [1, 8, 3, 2])], [("y", F, [1, 2, 6, 4])]), {"x": _rand(rng, 1, 8, 3, 2)}, None


def _argmax_last(rng):
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=1, select_last_index=1)
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)
    return _model([node], [("x", F, [2, 4])], [("y", I64, [2, 1])]), {"x": x}, None


CASES = {
    "resize_nearest": _resize_nearest, "resize_linear": _resize_linear,
    "resize_cubic": _resize_cubic,
    "lstm_bidirectional": _lstm_bidirectional, "gru_linear_before_reset": _gru,
    "gru_reverse": lambda rng: _gru(rng, 0, "reverse"), "reduce_mean_keepdims0": _reduce_mean, "top_k": _top_k,
    "gather_negative_indices": _gather_negative, "slice_negative_steps": _slice_negative_steps,
    "pad_reflect": _pad_reflect, "einsum": _einsum, "gather_elements": _gather_elements,
    "softmax_axis1": _softmax_axis1, "layer_norm": _layer_norm, "erf_gelu": _erf_gelu, "cumsum": _cumsum,
    "conv_transpose_grouped_dilated": _conv_transpose_grouped, "max_pool_dilated": _max_pool_dilated,
    "scatter_nd": _scatter_nd, "depth_to_space_crd": _depth_to_space_crd, "argmax_last_index": _argmax_last,
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime(case, tmp_path):
    model, feeds, builtin = CASES[case](np.random.default_rng(0))
    ops = _check(model, feeds, tmp_path)
    if builtin is not None:
        assert builtin in ops, f"{builtin} not among {sorted(ops)}"


def test_erf_gelu_becomes_the_gelu_builtin():
    from accelopt.converters.tf.emitter import emit
    from accelopt.targets.tflite.convert import to_tflite
    from accelopt.targets.tflite.inspect import graph_facts

    model, _, _ = _erf_gelu(np.random.default_rng(0))
    ops = graph_facts(to_tflite(emit(model)))["ops"]
    assert "GELU" in ops and not {"EXP", "SIGN"} & set(ops), ops


def test_unsupported_op_names_the_node():
    from accelopt.converters.tf.emitter import emit
    from accelopt.converters.tf.registry import Unsupported

    node = helper.make_node("NonZero", ["x"], ["y"], name="where_are_they")
    model = _model([node], [("x", F, [3, 4])], [("y", I64, [2, None])])
    with pytest.raises(Unsupported) as info:
        emit(model)
    assert info.value.reason == "unsupported_op" and "where_are_they" in str(info.value)


def test_training_dropout_is_refused_not_ignored():
    from accelopt.converters.tf.emitter import emit
    from accelopt.converters.tf.registry import Unsupported

    node = helper.make_node("Dropout", ["x", "ratio", "train"], ["y"], name="drop")
    model = _model([node], [("x", F, [3, 4])], [("y", F, [3, 4])],
                   [("ratio", np.array(0.5, np.float32)), ("train", np.array(True))])
    with pytest.raises(Unsupported, match="drop"):
        emit(model)
