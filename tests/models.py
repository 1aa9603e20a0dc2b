"""Small ONNX models built in code for the tests: seeded, fast, no files on disk."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what every ONNX Runtime we support can load


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _as_graph_constants(inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Weights as Constant nodes, the way Paddle2ONNX and older exporters write them."""
    return [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in inits]


def conv_bn_model(dynamic_batch: bool = True, weights_as_constants: bool = False) -> onnx.ModelProto:
    """Conv->BN->Relu->Conv(no bias)->BN->GAP->Flatten->Gemm; input "x" [N,3,16,16], output "y" [N,4].

    BN statistics are far from identity so a wrong fold shows up in the outputs.
    """
    rng = np.random.default_rng(0)

    def t(name: str, *shape: int, lo: float = -1.0, hi: float = 1.0) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(np.float32), name)

    inits = [
        t("w1", 8, 3, 3, 3), t("b1", 8),
        t("bn1_scale", 8, lo=0.5, hi=2.0), t("bn1_bias", 8), t("bn1_mean", 8), t("bn1_var", 8, lo=0.2, hi=3.0),
        t("w2", 8, 8, 3, 3),
        t("bn2_scale", 8, lo=0.5, hi=2.0), t("bn2_bias", 8), t("bn2_mean", 8), t("bn2_var", 8, lo=0.2, hi=3.0),
        t("fc_w", 4, 8), t("fc_b", 4),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["n1"],
                         name="bn1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["n2"],
                         name="bn2"),
        helper.make_node("GlobalAveragePool", ["n2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    batch: int | str = "batch" if dynamic_batch else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    if weights_as_constants:
        graph = helper.make_graph(_as_graph_constants(inits) + nodes, "conv_bn", [x], [y])
    else:
        graph = helper.make_graph(nodes, "conv_bn", [x], [y], initializer=inits)
    return _finish(graph)


def tiny_bert_like(hidden: int = 16, heads: int = 2) -> onnx.ModelProto:
    """One BERT encoder layer: Q/K/V MatMul+Add, scaled Softmax attention, residual Add, LayerNormalization,
    Gelu(Erf) feed-forward. Input "x" [batch, seq, hidden] float, output "y" same shape."""
    rng = np.random.default_rng(1)
    head = hidden // heads
    inits: list[onnx.TensorProto] = []

    def w(name: str, *shape: int, scale: float = 0.2) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    split_shape = const("split_shape", np.array([0, 0, heads, head], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], np.int64))
    nodes: list[onnx.NodeProto] = []

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        nodes.append(helper.make_node("MatMul", [x, w(f"{name}_w", n_in, n_out)], [f"{name}_mm"], name=f"{name}_mm"))
        nodes.append(helper.make_node("Add", [f"{name}_mm", w(f"{name}_b", n_out)], [name], name=f"{name}_add"))
        return name

    def layer_norm(x: str, name: str) -> str:
        gamma = const(f"{name}_g", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        nodes.append(helper.make_node("LayerNormalization", [x, gamma, w(f"{name}_b", hidden)], [name], name=name,
                                      axis=-1, epsilon=1e-12))
        return name

    for p in ("q", "k", "v"):
        linear("x", p, hidden, hidden)
        nodes.append(helper.make_node("Reshape", [p, split_shape], [f"{p}_4d"], name=f"{p}_reshape"))
    nodes += [
        helper.make_node("Transpose", ["q_4d"], ["q_t"], name="q_transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k_4d"], ["k_t"], name="k_transpose", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v_4d"], ["v_t"], name="v_transpose", perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores"], name="qk"),
        helper.make_node("Div", ["scores", const("sqrt_d", np.array(np.sqrt(head), np.float32))], ["scaled"],
                         name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v_t"], ["ctx"], name="pv"),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], name="ctx_transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", merge_shape], ["ctx_2d"], name="ctx_reshape"),
    ]
    linear("ctx_2d", "attn_out", hidden, hidden)
    nodes.append(helper.make_node("Add", ["attn_out", "x"], ["res1"], name="res1"))
    ln1 = layer_norm("res1", "ln1")
    linear(ln1, "ff1", hidden, 4 * hidden)
    nodes += [
        helper.make_node("Div", ["ff1", const("sqrt2", np.array(np.sqrt(2.0), np.float32))], ["g_div"], name="g_div"),
        helper.make_node("Erf", ["g_div"], ["g_erf"], name="g_erf"),
        helper.make_node("Add", ["g_erf", const("one", np.array(1.0, np.float32))], ["g_add"], name="g_add"),
        helper.make_node("Mul", ["ff1", "g_add"], ["g_mul"], name="g_mul"),
        helper.make_node("Mul", ["g_mul", const("half", np.array(0.5, np.float32))], ["gelu"], name="g_half"),
    ]
    linear("gelu", "ff2", 4 * hidden, hidden)
    nodes.append(helper.make_node("Add", ["ff2", ln1], ["res2"], name="res2"))
    nodes.append(helper.make_node("LayerNormalization", ["res2", const("ln2_g", np.ones(hidden, np.float32)),
                                                         const("ln2_b", np.zeros(hidden, np.float32))], ["y"],
                                  name="ln2", axis=-1, epsilon=1e-12))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])
    return _finish(helper.make_graph(nodes, "tiny_bert", [x], [y], initializer=inits))


def bn_fold_targets_model() -> onnx.ModelProto:
    """The less common BN folds: grouped ConvTranspose (no bias) -> BN, and Gemm (transB=0, beta=0.5) -> BN on
    the 2-D output, whose result is the graph output. Input "x" [N,4,5,5], output "y" [N,3]."""
    rng = np.random.default_rng(2)

    def t(name: str, *shape: int, lo: float = -1.0, hi: float = 1.0) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(np.float32), name)

    def bn_params(prefix: str, c: int) -> list[onnx.TensorProto]:
        return [t(f"{prefix}_scale", c, lo=0.5, hi=2.0), t(f"{prefix}_bias", c), t(f"{prefix}_mean", c),
                t(f"{prefix}_var", c, lo=0.2, hi=3.0)]

    inits = [t("wt", 4, 3, 3, 3), *bn_params("bn1", 6), t("fc_w", 6, 3), t("fc_c", 3), *bn_params("bn2", 3)]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["ct"], name="deconv", group=2, strides=[2, 2]),
        helper.make_node("BatchNormalization", ["ct", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["n1"],
                         name="bn1"),
        helper.make_node("GlobalAveragePool", ["n1"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_c"], ["g"], name="fc", beta=0.5),
        helper.make_node("BatchNormalization", ["g", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["y"],
                         name="bn2"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    return _finish(helper.make_graph(nodes, "bn_fold_targets", [x], [y], initializer=inits))


def paddle_style_model() -> onnx.ModelProto:
    """Input dims the way Paddle2ONNX writes them: batch as dim_value -1, height and width both named "?".
    Input "x" [-1,3,?,?] -> Relu -> Conv(2, 1x1) -> output "y"."""
    w = numpy_helper.from_array(np.random.default_rng(3).uniform(-1, 1, (2, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2, "?", "?"])
    return _finish(helper.make_graph(nodes, "paddle_style", [x], [y], initializer=[w]))
