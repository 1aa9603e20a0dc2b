"""The `layout` pass: NCHW -> NHWC wrapping plus transpose sinking, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from accelopt.errors import RecipeError
from accelopt.optimizers import PassContext, get_pass
from accelopt.optimizers.transposes import NHWC_DOMAIN, WRAPPABLE, nhwc_op, to_channels_last, transposes_left
from tests.models import IR_VERSION, OPSET


class Builder:
    """A tiny graph builder: seeded random weights, auto-named values."""

    def __init__(self, seed: int = 0, opset: int = OPSET):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.opset = opset
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def input(self, name: str, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def const(self, value: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape: int, lo: float = -0.5, hi: float = 0.5) -> str:
        return self.const(self.rng.uniform(lo, hi, shape).astype(np.float32), "w")

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(f"{op_type}_"), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True, **attrs) -> str:
        ins = [x, self.weight(cout, cin // group, k, k)] + ([self.weight(cout)] if bias else [])
        return self.op("Conv", ins, pads=[k // 2] * 4, group=group, **attrs)

    def bn(self, x: str, c: int) -> str:
        return self.op("BatchNormalization", [x, self.weight(c, lo=0.5, hi=1.5), self.weight(c),
                                              self.weight(c), self.weight(c, lo=0.5, hi=2.0)], epsilon=1e-3)

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=IR_VERSION)
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


# --- models ----------------------------------------------------------------------------------------------------


def mobilenet_v3_block() -> onnx.ModelProto:
    b = Builder(1)
    x = b.input("x", [1, 8, 16, 16])
    h = b.op("HardSwish", [b.conv(x, 8, 16, k=1)])
    d = b.conv(h, 16, 16, group=16)
    se = b.op("GlobalAveragePool", [d])
    se = b.op("Relu", [b.conv(se, 16, 4, k=1)])
    se = b.op("HardSigmoid", [b.conv(se, 4, 16, k=1)])
    m = b.op("Mul", [d, se])
    y = b.op("Add", [x, b.conv(m, 16, 8, k=1)])
    return b.model([y])


def resnet_block() -> onnx.ModelProto:
    b = Builder(2)
    x = b.input("x", [1, 8, 12, 12])
    h = b.op("Relu", [b.bn(b.conv(x, 8, 8, bias=False), 8)])
    h = b.bn(b.conv(h, 8, 8, bias=False), 8)
    h = b.op("Relu", [b.op("Add", [h, x])])
    h2 = b.op("Relu", [b.bn(b.conv(h, 8, 8, bias=False), 8)])
    h2 = b.bn(b.conv(h2, 8, 8, bias=False), 8)
    return b.model([b.op("Relu", [b.op("Add", [h, h2])])])


def concat_split_resize_block() -> onnx.ModelProto:
    b = Builder(3)
    x = b.input("x", [1, 4, 8, 8])
    c = b.op("Concat", [b.conv(x, 4, 6), b.conv(x, 4, 2, k=1)], axis=1)
    r = b.op("Resize", [c, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    s1, s2 = b.op("Split", [r, b.const(np.array([3, 5], np.int64))], n_out=2, axis=1)
    a = b.op("Add", [b.conv(s1, 3, 4), b.conv(s2, 5, 4)])
    y = b.op("Resize", [a, "", "", b.const(np.array([1, 4, 24, 24], np.int64))], mode="linear")
    return b.model([b.conv(y, 4, 2)])


def silu_block() -> onnx.ModelProto:
    b = Builder(4)
    x = b.input("x", [1, 4, 8, 8])
    h = b.conv(x, 4, 8)
    h = b.op("Mul", [h, b.op("Sigmoid", [h])])
    h = b.conv(h, 8, 8)
    return b.model([b.op("Mul", [h, b.op("Sigmoid", [h])])])


def classifier_head() -> onnx.ModelProto:
    b = Builder(5)
    x = b.input("x", [2, 3, 16, 16])
    h = b.op("Relu", [b.conv(x, 3, 8, strides=[2, 2])])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(h, 8, 16)])])
    return b.model([b.op("Gemm", [h, b.weight(10, 16), b.weight(10)], transB=1)])


def pool_block() -> onnx.ModelProto:
    b = Builder(6)
    x = b.input("x", [1, 3, 16, 16])
    h = b.op("MaxPool", [b.conv(x, 3, 8)], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("AveragePool", [b.op("Relu", [h])], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    return b.model([b.conv(h, 8, 4)])


def depth_to_space_block() -> onnx.ModelProto:
    b = Builder(7)
    x = b.input("x", [1, 4, 6, 6])
    h = b.op("DepthToSpace", [b.conv(x, 4, 16)], blocksize=2, mode="DCR")
    h = b.op("SpaceToDepth", [b.op("LeakyRelu", [h], alpha=0.1)], blocksize=2)
    h = b.op("DepthToSpace", [h], blocksize=2, mode="CRD")
    return b.model([b.conv(h, 4, 4)])


def transformer_block() -> onnx.ModelProto:
    b = Builder(8)
    x = b.input("x", [1, 6, 16])
    q, k, v = (b.op("MatMul", [x, b.weight(16, 16)]) for _ in range(3))
    s = b.op("Softmax", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])], axis=-1)
    h = b.op("Add", [x, b.op("MatMul", [s, v])])
    return b.model([b.op("LayerNormalization", [h, b.weight(16), b.weight(16)], axis=-1)])


CNN_BLOCKS = {
    "mobilenet_v3": mobilenet_v3_block, "resnet": resnet_block, "concat_split_resize": concat_split_resize_block,
    "silu": silu_block, "classifier_head": classifier_head, "pools": pool_block, "depth_to_space": depth_to_space_block,
}


# --- helpers ---------------------------------------------------------------------------------------------------


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def check_same(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    onnx.checker.check_model(after, full_check=True)
    feeds = feeds_for(before)
    for a, b in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]


def count(model: onnx.ModelProto, op: str = "Transpose") -> int:
    return sum(n.op_type == op and n.domain in ("", "ai.onnx") for n in model.graph.node)


def transposes_between_nhwc_ops(model: onnx.ModelProto) -> list[str]:
    """Transposes with an NHWC op upstream and another one downstream."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches(node, step) -> bool:
        seen, todo = set(), list(step(node))
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if nhwc_op(n) is not None:
                return True
            todo.extend(step(n))
        return False

    up = lambda n: [producer[i] for i in n.input if i in producer]  # noqa: E731
    down = lambda n: [c for o in n.output for c in consumers.get(o, [])]  # noqa: E731
    return [n.name for n in model.graph.node if n.op_type == "Transpose" and reaches(n, up) and reaches(n, down)]


# --- tests -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CNN_BLOCKS))
def test_cnn_blocks_go_channels_last(name):
    model = CNN_BLOCKS[name]()
    original = model.SerializeToString()
    out, decisions = to_channels_last(model)
    assert model.SerializeToString() == original  # input untouched
    check_same(model, out)
    assert not [n.op_type for n in out.graph.node if n.op_type in WRAPPABLE and n.domain == ""]
    assert sum(decisions["wrapped"].values()) == sum(n.domain == NHWC_DOMAIN for n in out.graph.node)
    assert transposes_between_nhwc_ops(out) == []
    t = decisions["transposes"]
    assert t["after_sink"] == count(out) <= 2
    assert t["after_sink"] <= t["after_wrap"]
    assert len(decisions["transposes_left"]) == count(out)
    inputs = {i.name for i in out.graph.input}
    for left in decisions["transposes_left"]:
        assert left["why"] in ("graph input", "graph output"), left
    assert sum(n.op_type == "Transpose" and n.input[0] in inputs for n in out.graph.node) <= len(inputs)


def test_classifier_head_ends_without_transpose():
    out, decisions = to_channels_last(classifier_head())
    assert count(out) == 1 and decisions["transposes_left"][0]["why"] == "graph input"
    assert decisions["transposes_to_reshape"] == 1
    assert [n.op_type for n in out.graph.node][-3:] == ["Reshape", "Flatten", "Gemm"]


def test_nhwc_ops_and_functions():
    out, _ = to_channels_last(mobilenet_v3_block())
    ops = {nhwc_op(n) for n in out.graph.node if n.domain == NHWC_DOMAIN}
    assert ops == {("Conv", 4), ("GlobalAveragePool", 4)}
    assert {f.name for f in out.functions} == {"Conv2D", "GlobalAveragePool2D"}
    assert any(o.domain == NHWC_DOMAIN and o.version == 1 for o in out.opset_import)
    conv = next(f for f in out.functions if f.name == "Conv2D")
    assert "pads" in conv.attribute and [n.op_type for n in conv.node] == ["Transpose", "Conv", "Transpose"]
    assert nhwc_op(helper.make_node("Conv3D", ["a"], ["b"], domain=NHWC_DOMAIN)) == ("Conv", 5)
    assert nhwc_op(helper.make_node("Conv", ["a"], ["b"])) is None


def test_rank_3_and_5_convs():
    b = Builder(9)
    x = b.input("x", [1, 3, 10])
    h = b.op("Relu", [b.op("Conv", [x, b.weight(4, 3, 3)], pads=[1, 1])])
    y1 = b.op("Conv", [h, b.weight(4, 4, 3)], pads=[1, 1])
    z = b.input("z", [1, 2, 4, 6, 6])
    y2 = b.op("MaxPool", [b.op("Conv", [z, b.weight(3, 2, 1, 1, 1)])], kernel_shape=[2, 2, 2], strides=[2, 2, 2])
    model = b.model([y1, y2])
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert {nhwc_op(n) for n in out.graph.node if n.domain == NHWC_DOMAIN} == {("Conv", 3), ("Conv", 5),
                                                                               ("MaxPool", 5)}
    assert count(out) == 4 and transposes_between_nhwc_ops(out) == []


def test_every_wrappable_op_runs_channels_last():
    b = Builder(13)
    x = b.input("x", [1, 4, 8, 8])
    h = b.op("ConvTranspose", [x, b.weight(4, 3, 2, 2), b.weight(3)], strides=[2, 2])  # [1, 3, 16, 16]
    h = b.op("InstanceNormalization", [h, b.weight(3, lo=0.5, hi=1.5), b.weight(3)], epsilon=1e-3)
    h = b.op("LRN", [h], size=3, alpha=1e-3, beta=0.75)
    h = b.op("LpPool", [h], kernel_shape=[2, 2], strides=[2, 2], p=2)  # [1, 3, 8, 8]
    h = b.op("Resize", [h, "", "", b.const(np.array([1, 3, 6, 10], np.int64))], mode="cubic")
    h = b.op("SpaceToDepth", [h], blocksize=2)  # [1, 12, 3, 5]
    g1 = b.op("GlobalLpPool", [h], p=1)
    g2 = b.op("GlobalMaxPool", [h])
    z = b.input("z", [1, 2, 4, 6, 6])
    z = b.op("AveragePool", [b.op("BatchNormalization", [z, b.weight(2, lo=0.5, hi=1.5), b.weight(2), b.weight(2),
                                                          b.weight(2, lo=0.5, hi=2.0)])],
             kernel_shape=[2, 2, 2], strides=[2, 2, 2])
    model = b.model([b.op("Add", [g1, g2]), z])
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert set(decisions["wrapped"]) == {"ConvTranspose", "InstanceNormalization", "LRN", "LpPool", "Resize",
                                         "SpaceToDepth", "GlobalLpPool", "GlobalMaxPool", "BatchNormalization",
                                         "AveragePool"}
    assert transposes_between_nhwc_ops(out) == []


def test_resize_changing_channels_is_not_wrapped():
    b = Builder(14)
    x = b.input("x", [1, 4, 8, 8])
    y = b.op("Resize", [b.conv(x, 4, 4), "", b.const(np.array([1, 0.5, 2, 2], np.float32))], mode="nearest")
    model = b.model([y])
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert decisions["wrapped"] == {"Conv": 1}
    assert decisions["not_wrapped"][0]["why"] == "Resize scales change N or C"


def test_dynamic_batch_and_idempotence():
    from tests.models import conv_bn_model

    model = conv_bn_model(dynamic_batch=True)
    out, decisions = to_channels_last(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)}
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-4, atol=1e-5)
    assert decisions["wrapped"] == {"BatchNormalization": 2, "Conv": 2, "GlobalAveragePool": 1}
    assert count(out) == 1 and decisions["transposes_to_reshape"] == 1
    again, decisions = to_channels_last(out)
    assert decisions["wrapped"] == {} and count(again) == 1 and len(again.functions) == len(out.functions)
    np.testing.assert_allclose(run(again, feeds)[0], run(model, feeds)[0], rtol=1e-4, atol=1e-5)


def test_transformer_block_untouched():
    model = transformer_block()
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert decisions["wrapped"] == {}
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
    assert count(out) == count(model) == 1 and not out.functions


def test_wrap_only_and_ops_filter():
    model = resnet_block()
    out, decisions = to_channels_last(model, sink=False)
    check_same(model, out)
    assert decisions["wrapped"] == {"BatchNormalization": 4, "Conv": 4}
    assert count(out) == decisions["transposes"]["after_wrap"] == 16
    out, decisions = to_channels_last(model, ops={"Conv"})
    check_same(model, out)
    assert decisions["wrapped"] == {"Conv": 4}
    assert {s["op"] for s in decisions["not_wrapped"]} == {"BatchNormalization"}


def test_layout_barriers_and_edge_ops():
    """Ops the sinking must get right: reduce keepdims=0, Pad, Slice, Squeeze, per-axis lower-rank constants,
    MaxPool with Indices (not wrapped), and a Reshape barrier."""
    b = Builder(10)
    x = b.input("x", [1, 4, 8, 8])
    h = b.conv(x, 4, 6)
    h = b.op("Add", [h, b.const(np.arange(6, dtype=np.float32).reshape(6, 1, 1))])
    h = b.op("Pad", [h, b.const(np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64))], mode="reflect")
    h = b.op("Slice", [h, b.const(np.array([1, 0], np.int64)), b.const(np.array([8, 9], np.int64)),
                       b.const(np.array([2, 3], np.int64))])
    p, idx = b.op("MaxPool", [h], n_out=2, kernel_shape=[2, 2])
    r = b.op("ReduceMean", [b.conv(h, 6, 5)], axes=[1], keepdims=0)
    s = b.op("Reshape", [b.conv(h, 6, 2), b.const(np.array([1, -1], np.int64))])
    q = b.op("Squeeze", [b.op("GlobalMaxPool", [b.conv(h, 6, 3)]), b.const(np.array([3], np.int64))])
    model = b.model([p, r, s, q])
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert {s_["node"] for s_ in decisions["not_wrapped"]} == {model.graph.node[4].name}
    assert transposes_between_nhwc_ops(out) == []
    whys = {t["why"] for t in decisions["transposes_left"]}
    assert "before Reshape (barrier)" in whys
    assert count(out) <= decisions["transposes"]["after_wrap"]


def axis_ops_block() -> onnx.ModelProto:
    """Axis-carrying ops between convs: each must be remapped so that no transpose stays between them."""
    b = Builder(12)
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Clip", [b.conv(x, 3, 4), b.const(np.float32(-1.0)), b.const(np.float32(1.5))])
    h = b.op("Softmax", [h], axis=1)
    h = b.op("QuantizeLinear", [h, b.const(np.array([0.01, 0.02, 0.03, 0.04], np.float32)),
                                b.const(np.array([0, 1, 2, 3], np.uint8))], axis=1)
    h = b.op("DequantizeLinear", [h, b.const(np.array([0.01, 0.02, 0.03, 0.04], np.float32)),
                                  b.const(np.array([0, 1, 2, 3], np.uint8))], axis=1)
    h = b.op("Concat", [h, b.weight(1, 2, 8, 8)], axis=-3)
    h = b.op("Tile", [h, b.const(np.array([1, 1, 2, 1], np.int64))])  # [1, 6, 16, 8]
    h = b.conv(h, 6, 4)
    se = b.op("ReduceMean", [h], axes=[2, 3], keepdims=0)  # [1, 4]
    se = b.op("Unsqueeze", [b.op("Sigmoid", [se]), b.const(np.array([2, 3], np.int64))])
    h = b.op("Mul", [h, b.conv(se, 4, 4, k=1)])
    h = b.op("Gather", [h, b.const(np.array([0, 2, 3], np.int64))], axis=1)
    h = b.op("ReduceMax", [h, ], axes=[3], keepdims=1)
    h = b.op("Pad", [h, b.const(np.array([0, 0, 1, 0, 0, 0, 1, 0], np.int64))])
    h = b.op("Slice", [h, b.const(np.array([1], np.int64)), b.const(np.array([-1], np.int64)),
                       b.const(np.array([-2], np.int64))])
    return b.model([b.conv(h, 3, 2, k=1)])


def test_axis_ops_between_convs():
    model = axis_ops_block()
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert transposes_between_nhwc_ops(out) == []
    assert count(out) == 2, decisions["transposes_left"]
    assert decisions["transposes_to_reshape"] == 1  # the [N, 1, 1, C] SE vector feeding the 1x1 conv


def test_wrong_cost_estimates_are_rolled_back(monkeypatch):
    """The safety net: even if every move is estimated as a win, the count never goes up."""
    from accelopt.optimizers.transposes import sink

    monkeypatch.setattr(sink, "_cost", lambda *a: (-1, True))
    for build in (mobilenet_v3_block, resnet_block, axis_ops_block, lambda: _random_model(3)):
        model = build()
        out, decisions = to_channels_last(model)
        check_same(model, out)
        assert count(out) <= decisions["transposes"]["after_wrap"]


def test_shared_constant_is_copied_not_edited():
    b = Builder(11)
    x = b.input("x", [1, 4, 5, 5])
    bias = b.const(np.arange(4 * 5 * 5, dtype=np.float32).reshape(1, 4, 5, 5))
    y1 = b.conv(b.op("Add", [b.conv(x, 4, 4), bias]), 4, 4)
    y2 = b.op("Add", [x, bias])
    model = b.model([y1, y2])
    out, _ = to_channels_last(model)
    check_same(model, out)
    assert any(t.name == bias and list(t.dims) == [1, 4, 5, 5] for t in out.graph.initializer)


# --- x * f(x) diamonds: pushing one Transpose below both consumers only pays off a few moves later ------------


def scalar(b: Builder, v: float) -> str:
    return b.const(np.array(v, np.float32))


def paddle_hardswish(b: Builder, x: str) -> str:
    """Paddle's export of HardSwish: x * clip(x + 3, 0, 6) / 6."""
    r = b.op("Clip", [b.op("Add", [x, scalar(b, 3.0)]), scalar(b, 0.0), scalar(b, 6.0)])
    return b.op("Div", [b.op("Mul", [x, r]), scalar(b, 6.0)])


def paddle_hardsigmoid(b: Builder, x: str) -> str:
    """Paddle's hardsigmoid (slope 0.2, offset 0.5) written out: clip(x * 0.2 + 0.5, 0, 1)."""
    h = b.op("Add", [b.op("Mul", [x, scalar(b, 0.2)]), scalar(b, 0.5)])
    return b.op("Clip", [h, scalar(b, 0.0), scalar(b, 1.0)])


DIAMONDS = {
    "paddle_hardswish": paddle_hardswish,
    "x_hardsigmoid": lambda b, x: b.op("Mul", [x, b.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)]),
    "swish_with_extra_ops": lambda b, x: b.op("Mul", [b.op("Sigmoid", [b.op("Add", [b.op(
        "Mul", [x, scalar(b, 1.702)]), b.weight(4, 1, 1)])]), x]),
    "residual_add": lambda b, x: b.op("Relu", [b.op("Add", [b.op("Relu", [b.op("Mul", [x, b.weight(4, 1, 1)])]), x])]),
}


@pytest.mark.parametrize("name", sorted(DIAMONDS))
def test_diamond_between_convs(name):
    """Conv -> x * f(x) -> Conv -> Relu -> Conv: nothing left between the convs."""
    b = Builder(21)
    x = b.input("x", [1, 3, 12, 20])
    h = DIAMONDS[name](b, b.conv(x, 3, 4))
    h = b.conv(b.op("Relu", [b.conv(h, 4, 6, k=1)]), 6, 4, group=2)
    model = b.model([DIAMONDS[name](b, h)])
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert transposes_between_nhwc_ops(out) == []
    assert count(out) == decisions["transposes"]["after_sink"] <= 2, decisions["transposes_left"]


def paddle_mobilenet_v3(gate: str) -> onnx.ModelProto:
    """Two MobileNetV3 bottlenecks as PaddleOCR exports them: Paddle HardSwish everywhere, an SE block gated by
    HardSigmoid(0.2, 0.5) (`gate="op"`) or its written-out form, a residual Add."""
    b = Builder(22)
    x = b.input("x", [1, 3, 16, 32])
    h = paddle_hardswish(b, b.conv(x, 3, 8, strides=[2, 2]))
    for _ in range(2):
        e = paddle_hardswish(b, b.conv(h, 8, 16, k=1))
        d = paddle_hardswish(b, b.conv(e, 16, 16, group=16))
        s = b.op("Relu", [b.conv(b.op("GlobalAveragePool", [d]), 16, 4, k=1)])
        s = b.conv(s, 4, 16, k=1)
        s = b.op("HardSigmoid", [s], alpha=0.2, beta=0.5) if gate == "op" else paddle_hardsigmoid(b, s)
        h = b.op("Add", [h, b.conv(b.op("Mul", [d, s]), 16, 8, k=1)])
    return b.model([paddle_hardswish(b, b.conv(h, 8, 8, k=1))])


@pytest.mark.parametrize("gate", ["op", "written_out"])
def test_paddle_mobilenet_v3_se_blocks(gate):
    model = paddle_mobilenet_v3(gate)
    out, decisions = to_channels_last(model)
    check_same(model, out)
    assert transposes_between_nhwc_ops(out) == []
    assert count(out) == decisions["transposes"]["after_sink"] <= 2, decisions["transposes_left"]
    assert decisions["transposes_left"][0]["why"] == "graph input"
    # without the lookahead the HardSwish diamonds keep a transpose pair between the convs
    from accelopt.optimizers.transposes import sink

    before = sink.LOOKAHEAD_STEPS
    try:
        sink.LOOKAHEAD_STEPS = 0
        greedy, _ = to_channels_last(model)
    finally:
        sink.LOOKAHEAD_STEPS = before
    assert count(greedy) > 2


def _random_model(seed: int) -> onnx.ModelProto:
    b = Builder(100 + seed)
    rng = np.random.default_rng(seed)
    c0 = int(rng.integers(2, 5))
    x = b.input("x", [1, c0, 8, 8])
    values = [(x, c0, 8)]  # (name, channels, spatial size)
    for _ in range(int(rng.integers(4, 12))):
        name, c, s = values[int(rng.integers(len(values)))] if rng.random() < 0.4 else values[-1]
        kind = rng.choice(["conv", "dw", "relu", "sigmoid", "silu", "add_const", "add", "concat", "maxpool",
                           "avgpool", "gap_mul", "bn", "reduce"])
        if kind == "conv":
            cout = int(rng.integers(2, 7))
            values.append((b.conv(name, c, cout, k=int(rng.choice([1, 3]))), cout, s))
        elif kind == "dw":
            values.append((b.conv(name, c, c, group=c), c, s))
        elif kind in ("relu", "sigmoid"):
            values.append((b.op(kind.capitalize(), [name]), c, s))
        elif kind == "silu":
            values.append((b.op("Mul", [name, b.op("Sigmoid", [name])]), c, s))
        elif kind == "add_const":
            shape = [[c, 1, 1], [1], [1, c, s, s], [s]][int(rng.integers(4))]
            values.append((b.op(str(rng.choice(["Add", "Mul", "Sub"])), [name, b.weight(*shape)]), c, s))
        elif kind in ("add", "concat"):
            same = [v for v in values if v[2] == s and (kind == "concat" or v[1] == c)]
            other = same[int(rng.integers(len(same)))]
            if kind == "add":
                values.append((b.op("Add", [name, other[0]]), c, s))
            else:
                values.append((b.op("Concat", [name, other[0]], axis=1), c + other[1], s))
        elif kind in ("maxpool", "avgpool") and s >= 4:
            op = "MaxPool" if kind == "maxpool" else "AveragePool"
            values.append((b.op(op, [name], kernel_shape=[2, 2], strides=[2, 2]), c, s // 2))
        elif kind == "gap_mul":
            values.append((b.op("Mul", [name, b.op("Sigmoid", [b.op("GlobalAveragePool", [name])])]), c, s))
        elif kind == "bn":
            values.append((b.bn(name, c), c, s))
        elif kind == "reduce":
            values.append((b.op("ReduceMax", [name], axes=[1], keepdims=1), 1, s))
    outputs = [values[-1][0]]
    if rng.random() < 0.5 and values[-2][0] not in outputs and values[-2][0] != "x":
        outputs.append(values[-2][0])
    return b.model(outputs)


@pytest.mark.parametrize("seed", range(30))
def test_random_graphs(seed, monkeypatch):
    from accelopt.optimizers.transposes import sink

    counts: list[tuple[int, int]] = []

    def watching(real):
        def watched(g, *args):
            before = g.count()
            result = real(g, *args)
            counts.append((before, g.count()))
            return result
        return watched

    monkeypatch.setattr(sink, "_try_push", watching(sink._try_push))
    monkeypatch.setattr(sink, "_try_look_ahead", watching(sink._try_look_ahead))
    model = _random_model(seed)
    out, decisions = to_channels_last(model)
    assert all(after <= before for before, after in counts)  # no sinking step ever adds a transpose
    check_same(model, out)
    t = decisions["transposes"]
    assert count(out) == t["after_sink"] <= t["after_wrap"]
    assert decisions["sink_steps"] < 20 * len(out.graph.node) + 100  # terminated on its own
    # sinking never beats wrapping's count by adding transposes, and ends no worse than not sinking
    wrapped, _ = to_channels_last(model, sink=False)
    assert count(out) <= count(wrapped)


def test_registered_pass(tmp_path):
    cls = get_pass("layout")
    ctx = PassContext(tmp_dir=tmp_path)
    model = mobilenet_v3_block()
    out = cls().apply(model, cls.Config(), ctx)
    check_same(model, out)
    assert ctx.decisions["wrapped"] == {"Conv": 5, "GlobalAveragePool": 1}
    assert ctx.decisions["transposes"]["after_sink"] == 2
    assert all({"name", "perm", "why"} <= set(t) for t in ctx.decisions["transposes_left"])
    assert transposes_left(out) == ctx.decisions["transposes_left"]
    with pytest.raises(RecipeError, match="not layout-sensitive"):
        cls().apply(model, cls.Config(ops=["Relu"]), ctx)
    with pytest.raises(ValidationError):
        cls.Config.model_validate({"unknown": 1})
    ctx = PassContext(tmp_dir=tmp_path)
    cls().apply(model, cls.Config.model_validate({"sink": False, "ops": ["Conv"]}), ctx)
    assert ctx.decisions["wrapped"] == {"Conv": 5} and ctx.decisions["transposes"]["after_sink"] == 10
