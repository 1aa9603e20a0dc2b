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


def outlier_conv_model(outlier_layer: int = 3, outlier_channels: tuple[int, ...] = (1, 5, 9, 13),
                       factor: float = 40.0) -> onnx.ModelProto:
    """The quantization notes' "outlier model", small: 6 x (Conv 3x3 16ch + Relu) -> GAP -> Flatten -> Gemm,
    input "x" [N,8,16,16], output "y" [N,10]. Conv `outlier_layer`'s `outlier_channels` (weights and bias) are
    scaled by `factor` and the matching input channels of the next conv divided by it: the float function is
    unchanged (Relu is positively homogeneous) but the tensors between the two convs get a range that per-tensor
    INT8 activations cannot represent, so those two convs are the ones an accuracy fallback must find."""
    rng = np.random.default_rng(4)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    weights = []
    for cin in [8] + [16] * 5:
        w = rng.standard_normal((16, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        weights.append([w.astype(np.float32), (rng.standard_normal(16) * 0.1).astype(np.float32)])
    w, b = weights[outlier_layer - 1]
    w[list(outlier_channels)] *= factor
    b[list(outlier_channels)] *= factor
    weights[outlier_layer][0][:, list(outlier_channels)] /= factor
    prev = "x"
    for i, (w, b) in enumerate(weights, start=1):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    inits += [numpy_helper.from_array((rng.standard_normal((10, 16)) * 0.25).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["p"], name="gap"),
              helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    return _finish(helper.make_graph(nodes, "outlier_conv", [x], [y], initializer=inits))


def conv_stack(channels: int = 16, size: int = 16, layers: int = 4, classes: int = 10,
               batch: int | str = 1) -> onnx.ModelProto:
    """Stem Conv 3->C + Relu, `layers` x (Conv 3x3 C->C + Relu), GAP, Flatten, Gemm: a plain CNN, the case
    INT8 is fastest on. He-scaled weights keep activations in range layer after layer.
    Input "x" [batch,3,size,size], output "y" [batch,classes]."""
    rng = np.random.default_rng(4)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def w(name: str, *shape: int) -> str:
        fan_in = int(np.prod(shape[1:]))
        he = rng.standard_normal(shape) * np.sqrt(2 / fan_in)
        inits.append(numpy_helper.from_array(he.astype(np.float32), name))
        return name

    def b(name: str, n: int) -> str:
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(n)).astype(np.float32), name))
        return name

    x = "x"
    for i in range(layers + 1):
        c_in = 3 if i == 0 else channels
        nodes.append(helper.make_node("Conv", [x, w(f"w{i}", channels, c_in, 3, 3), b(f"b{i}", channels)], [f"c{i}"],
                                      name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", w("fc_w", classes, channels), b("fc_b", classes)], ["y"], name="fc", transB=1),
    ]
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])
    return _finish(helper.make_graph(nodes, "conv_stack", [xi], [yo], initializer=inits))


def yolo_like_head(classes: int = 4, size: int = 8, box_scale: float = 320.0) -> onnx.ModelProto:
    """A YOLOv8-style detector in miniature: Conv + SiLU (Sigmoid*Mul), a 1x1 head Conv, then boxes =
    sigmoid * `box_scale` and scores = sigmoid concatenated along axis 1, the layout [N, 4+classes, anchors]
    whose one shared quantization scale zeroes every score. Input "x" [1,3,size,size], output "y"."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.uniform(-0.2, 0.2, 16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.uniform(-0.3, 0.3, (4 + classes, 16, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.uniform(-0.2, 0.2, 4 + classes).astype(np.float32), "b2"),
        numpy_helper.from_array(np.array([1, 4 + classes, size * size], np.int64), "flat"),
        numpy_helper.from_array(np.array([4, classes], np.int64), "split"),
        numpy_helper.from_array(np.array(box_scale, np.float32), "box_scale"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="silu_sigmoid"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu_mul"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="head_conv"),
        helper.make_node("Reshape", ["c2", "flat"], ["r"], name="head_reshape"),
        helper.make_node("Split", ["r", "split"], ["box_raw", "cls_raw"], name="head_split", axis=1),
        helper.make_node("Sigmoid", ["box_raw"], ["box_sig"], name="box_sigmoid"),
        helper.make_node("Mul", ["box_sig", "box_scale"], ["boxes"], name="box_mul"),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"], name="cls_sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head_concat", axis=1),
    ]
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4 + classes, size * size])
    return _finish(helper.make_graph(nodes, "yolo_like_head", [xi], [yo], initializer=inits))


def matmul_mlp(hidden: int = 64, tokens: int = 8, layers: int = 2) -> onnx.ModelProto:
    """`layers` x (MatMul + Add) with Relu between them and constant weights: the shape weight-only INT4 and dynamic
    INT8 quantize. Input "x" [batch, tokens, hidden], output "y" same shape."""
    rng = np.random.default_rng(6)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    x = "x"
    for i in range(layers):
        w = rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(hidden)).astype(np.float32), f"b{i}")]
        last = i == layers - 1
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"], name=f"add{i}")]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"))
            x = f"h{i}"
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, hidden])
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", tokens, hidden])
    return _finish(helper.make_graph(nodes, "matmul_mlp", [xi], [yo], initializer=inits))


def conv_norm_conv(channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """Conv -> InstanceNormalization ("norm") -> Conv: ONNX Runtime has no int8 InstanceNormalization, so static
    QDQ leaves it as a float island between DequantizeLinear and QuantizeLinear.
    Input "x" [1,C,size,size], output "y" same shape."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array(np.ones(channels, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(channels, np.float32), "beta")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["c1", "gamma", "beta"], ["n"], name="norm"),
             helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, size, size]) for name in ("x", "y")]
    return _finish(helper.make_graph(nodes, "conv_norm_conv", io[:1], io[1:], initializer=inits))


def conv_chain_model(channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """conv0..conv7 (3x3, `channels` ch), consecutive convs joined by Relu, LeakyRelu, PRelu, Clip, Sigmoid, SiLU
    (Sigmoid*Mul) and BatchNormalization in that order: the first three are positively homogeneous, the rest
    are not (or need folding first). Input "x" [N,C,size,size], output "y" same shape."""
    rng = np.random.default_rng(8)
    c = channels
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in [
        ("slope", rng.uniform(0.05, 0.3, (c, 1, 1))), ("clip_min", np.array(0.0)), ("clip_max", np.array(6.0)),
        ("bn_scale", rng.uniform(0.5, 2.0, c)), ("bn_bias", rng.uniform(-1, 1, c)),
        ("bn_mean", rng.uniform(-1, 1, c)), ("bn_var", rng.uniform(0.2, 3.0, c))]]
    nodes: list[onnx.NodeProto] = []
    joins: list[tuple[str, list[str], dict]] = [
        ("Relu", [], {}), ("LeakyRelu", [], {"alpha": 0.1}), ("PRelu", ["slope"], {}),
        ("Clip", ["clip_min", "clip_max"], {}), ("Sigmoid", [], {}), ("SiLU", [], {}),
        ("BatchNormalization", ["bn_scale", "bn_bias", "bn_mean", "bn_var"], {})]
    x = "x"
    for i in range(len(joins) + 1):
        w = rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c)) * rng.uniform(0.2, 5.0, (c, 1, 1, 1))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"b{i}")]
        out = "y" if i == len(joins) else f"c{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [out], name=f"conv{i}", pads=[1, 1, 1, 1]))
        if i == len(joins):
            break
        op, extra, attrs = joins[i]
        if op == "SiLU":
            nodes += [helper.make_node("Sigmoid", [out], [f"s{i}"], name=f"silu_sigmoid{i}"),
                      helper.make_node("Mul", [out, f"s{i}"], [f"j{i}"], name=f"silu_mul{i}")]
        else:
            nodes.append(helper.make_node(op, [out, *extra], [f"j{i}"], name=f"join{i}", **attrs))
        x = f"j{i}"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", c, size, size]) for n in ("x", "y")]
    return _finish(helper.make_graph(nodes, "conv_chain", io[:1], io[1:], initializer=inits))


def mlp_chain_model(features: int = 16, outputs: int = 8) -> onnx.ModelProto:
    """fc1 (Gemm, transB=1, a few output rows x50) -> Relu -> fc2 (Gemm, transB=1) -> Relu -> mm3 (MatMul + Add
    bias) -> Relu -> mm4 (bare MatMul, no bias) = "y": every Gemm/MatMul layout equalization and bias correction
    must handle. Input "x" [N,features], output "y" [N,outputs]."""
    rng = np.random.default_rng(9)
    f = features

    def t(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(a.astype(np.float32), name)

    w1 = rng.standard_normal((f, f)) / np.sqrt(f)
    w1[[1, 6, 11]] *= 50.0
    inits = [t("w1", w1), t("b1", 0.1 * rng.standard_normal(f)), t("w2", rng.standard_normal((f, f)) / np.sqrt(f)),
             t("b2", 0.1 * rng.standard_normal(f)), t("w3", rng.standard_normal((f, f)) / np.sqrt(f)),
             t("b3", 0.1 * rng.standard_normal(f)), t("w4", rng.standard_normal((f, outputs)) / np.sqrt(f))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", transB=1),
             helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
             helper.make_node("MatMul", ["a2", "w3"], ["m3"], name="mm3"),
             helper.make_node("Add", ["m3", "b3"], ["h3"], name="add3"),
             helper.make_node("Relu", ["h3"], ["a3"], name="relu3"),
             helper.make_node("MatMul", ["a3", "w4"], ["y"], name="mm4")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", f])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])
    return _finish(helper.make_graph(nodes, "mlp_chain", [x], [y], initializer=inits))


def spiky_depthwise_model(channels: int = 8, size: int = 16) -> onnx.ModelProto:
    """conv1 (3x3) -> Relu -> dw (depthwise 3x3) -> Relu -> pw (1x1) = "y", each weight with one large tap per
    output channel, so per-channel int8 rounds the small taps coarsely and shifts the mean output (what bias
    correction removes). Input "x" [N,C,size,size], output "y" same shape."""
    rng = np.random.default_rng(10)
    c = channels

    def spiky(*shape: int) -> np.ndarray:
        w = rng.standard_normal(shape) * 0.1
        flat = w.reshape(shape[0], -1)
        flat[np.arange(shape[0]), rng.integers(0, flat.shape[1], shape[0])] = rng.choice([-1.0, 1.0], shape[0])
        return flat.reshape(shape)

    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in [
        ("w1", spiky(c, c, 3, 3)), ("b1", 0.1 * rng.standard_normal(c)), ("wd", spiky(c, 1, 3, 3)),
        ("bd", 0.1 * rng.standard_normal(c)), ("wp", spiky(c, c, 1, 1)), ("bp", 0.1 * rng.standard_normal(c))]]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wd", "bd"], ["d"], name="dw", pads=[1, 1, 1, 1], group=c),
             helper.make_node("Relu", ["d"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "wp", "bp"], ["y"], name="pw")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", c, size, size]) for n in ("x", "y")]
    return _finish(helper.make_graph(nodes, "spiky_depthwise", io[:1], io[1:], initializer=inits))


def masked_attention() -> onnx.ModelProto:
    """scores [1,4,4] + (1 - mask) * float32.min -> Softmax: the additive mask HF exporters write."""
    T = TensorProto
    nodes = [helper.make_node("Cast", ["mask"], ["maskf"], to=T.FLOAT),
             helper.make_node("Sub", ["one", "maskf"], ["inv"]),
             helper.make_node("Mul", ["inv", "fmin"], ["bias"]),
             helper.make_node("Add", ["scores", "bias"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1)]
    inits = [onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             onnx.numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "fmin")]
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("scores", T.FLOAT, [1, 4, 4]),
                                              helper.make_tensor_value_info("mask", T.INT64, [1, 1, 4])],
                              [helper.make_tensor_value_info("p", T.FLOAT, [1, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
