"""The Core ML lowering of the NN ops (converters/mil/ops/nn.py) against ONNX Runtime, through coremltools'
pass pipeline and the numpy MIL evaluator (converters/mil/kernels/nn.py).

ct.convert costs about a second per model, so each test puts its cases side by side in one model (one node,
input and output per case; a mismatch names the case's output)."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("coremltools")

from accelopt.converters.mil.registry import REGISTRY  # noqa: E402
from accelopt.converters.mil.translator import translate  # noqa: E402
from accelopt.converters.registry import Unsupported  # noqa: E402
from accelopt.targets.coreml.convert import to_mlmodel  # noqa: E402
from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402
from tests.coreml_util import assert_matches_ort, coreml_outputs  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def case(op: str, x: np.ndarray, consts=(), runtime=(), outputs: int = 1, **attrs) -> dict:
    """One node: x and `runtime` become graph inputs, `consts` initializers (None: an absent input), in the
    order x, runtime..., consts..."""
    return dict(op=op, x=x, consts=list(consts), runtime=list(runtime), outputs=outputs, attrs=attrs)


def build(cases: dict[str, dict], opset: int = 17) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model with one node per case (named after it), each with its own inputs and outputs."""
    nodes, inputs, outputs, inits, feeds = [], [], [], [], {}
    for name, c in cases.items():
        name = name.replace("-", "_")
        names = []
        for i, value in enumerate([c["x"], *c["runtime"]]):
            key = f"{name}_x" if i == 0 else f"{name}_r{i - 1}"
            feeds[key] = value
            inputs.append(helper.make_tensor_value_info(key, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
            names.append(key)
        for i, value in enumerate(c["consts"]):
            if value is None:
                names.append("")
                continue
            inits.append(numpy_helper.from_array(np.asarray(value), f"{name}_c{i}"))
            names.append(f"{name}_c{i}")
        outs = [name] + [f"{name}_out{j}" for j in range(1, c["outputs"])]
        nodes.append(helper.make_node(c["op"], names, outs, name=name, **c["attrs"]))
        elem = helper.np_dtype_to_tensor_dtype(c["x"].dtype)
        outputs += [helper.make_tensor_value_info(o, elem, None) for o in outs]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10), feeds


def producers(model: onnx.ModelProto, precision: str = "fp32") -> dict[str, str]:
    """The MIL op type that computes each output of the program coremltools produced."""
    program = to_mlmodel(translate(model, "iOS17"), precision)._mil_program
    return {var.name: var.op.op_type for var in program.functions["main"].outputs}


def check_fails(c: dict, message: str, opset: int = 17, static: bool = True) -> None:
    """The translation names `message`, and so does the node's static check when attributes alone decide."""
    model, _ = build({"n": c}, opset)
    if static:
        check = REGISTRY.facts("", c["op"])["check"]
        assert any(message in m for _, m in check(model.graph.node[0], opset)), message
    with pytest.raises(Unsupported, match=message.replace("[", r"\[").replace("(", r"\(")):
        translate(model)


# ---------------------------------------------------------------------------------------------- convolutions
CONV = {
    "2d": ((1, 4, 9, 9), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "2d-asym-pads-stride": ((2, 3, 10, 11), (5, 3, 3, 2), dict(pads=[0, 1, 2, 1], strides=[2, 3])),
    "dilated": ((1, 3, 12, 12), (4, 3, 3, 3), dict(dilations=[2, 3], pads=[2, 1, 0, 3])),
    "groups": ((1, 6, 8, 8), (4, 3, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": ((1, 4, 8, 8), (4, 1, 3, 3), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),
    "depthwise-multiplier": ((1, 3, 7, 7), (6, 1, 3, 3), dict(group=3)),
    "same-upper": ((1, 3, 9, 10), (4, 3, 4, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same-lower": ((1, 3, 9, 10), (4, 3, 4, 3), dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    "valid": ((1, 3, 9, 10), (4, 3, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    "1d": ((2, 3, 17), (5, 3, 4), dict(pads=[2, 1], strides=[2], dilations=[2])),
    "3d": ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), dict(pads=[1, 0, 1, 1, 1, 0], strides=[1, 2, 2])),
    "3d-groups": ((1, 4, 4, 5, 6), (4, 2, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 0, 1, 1])),
    "pointwise": ((1, 8, 5, 5), (16, 8, 1, 1), {}),
}


def test_conv():
    cases = {}
    for name, (x_shape, w_shape, attrs) in CONV.items():
        cases[name] = case("Conv", rand(*x_shape), [rand(*w_shape), rand(w_shape[0])], **attrs)
        cases[f"{name}-no-bias"] = case("Conv", rand(*x_shape), [rand(*w_shape)], **attrs)
    cases["runtime-weight"] = case("Conv", rand(1, 3, 6, 6), runtime=[rand(4, 3, 3, 3)], pads=[1, 1, 1, 1])
    assert_matches_ort(*build(cases), atol=1e-4, rtol=1e-4)


def test_dilated_conv_with_runtime_weight_fails():
    check_fails(case("Conv", rand(1, 3, 6, 6), runtime=[rand(4, 3, 3, 3)], dilations=[2, 2]), "constant weights",
                static=False)


CONV_TRANSPOSE = {
    "stride2-pads": ((1, 4, 5, 5), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "output-padding-within-pads": ((1, 4, 5, 5), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1],
                                                                    output_padding=[1, 1])),
    "output-padding-past-pads": ((1, 2, 4, 5), (2, 3, 3, 3), dict(strides=[3, 2], output_padding=[2, 1])),
    "output-shape": ((1, 2, 4, 4), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[8, 9])),
    "same-upper": ((1, 2, 4, 5), (2, 3, 4, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same-lower": ((1, 2, 4, 5), (2, 3, 4, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "groups-dilations": ((1, 4, 5, 5), (4, 2, 3, 3), dict(group=2, dilations=[2, 1], pads=[0, 1, 2, 0])),
    "1d": ((2, 3, 7), (3, 2, 4), dict(strides=[2], pads=[1, 2])),
    "3d": ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 1, 0, 1, 0])),
}


def test_conv_transpose():
    cases = {}
    for name, (x_shape, w_shape, attrs) in CONV_TRANSPOSE.items():
        bias = rand(w_shape[1] * attrs.get("group", 1))
        cases[name] = case("ConvTranspose", rand(*x_shape), [rand(*w_shape), bias], **attrs)
    cases["no-bias"] = case("ConvTranspose", rand(1, 2, 3, 3), [rand(2, 2, 3, 3)], strides=[2, 2],
                            output_padding=[1, 1])
    assert_matches_ort(*build(cases), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- pools
POOLS = {
    "plain": ((1, 3, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "pads": ((1, 2, 7, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2])),
    "same-upper": ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_UPPER")),
    "same-lower": ((1, 2, 7, 8), dict(kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_LOWER")),
    "ceil": ((1, 2, 8, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "ceil-pads": ((1, 2, 8, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "1d": ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "3d": ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 2], strides=[2, 2, 1], pads=[1, 0, 0, 0, 1, 1])),
}


def test_pools():
    """MaxPool, AveragePool (count_include_pad 0 and 1) and LpPool (p=2; no 3-D l2_pool) over every geometry."""
    cases = {}
    for name, (x_shape, attrs) in POOLS.items():
        cases[f"max-{name}"] = case("MaxPool", rand(*x_shape), **attrs)
        cases[f"avg-{name}"] = case("AveragePool", rand(*x_shape), **attrs)
        cases[f"avg-include-pad-{name}"] = case("AveragePool", rand(*x_shape), count_include_pad=1, **attrs)
        if len(x_shape) < 5:
            cases[f"lp-{name}"] = case("LpPool", rand(*x_shape), **attrs)
    cases["max-uint8"] = case("MaxPool", RNG.integers(0, 255, (1, 2, 6, 6)).astype(np.uint8), kernel_shape=[2, 2],
                              strides=[2, 2])
    assert_matches_ort(*build(cases, opset=19))


def test_global_pools():
    cases = {}
    for shape in [(2, 3, 7), (1, 4, 5, 6), (1, 2, 3, 4, 5)]:
        for op in ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"][:3 if len(shape) < 5 else 2]:
            cases[f"{op}-{len(shape)}"] = case(op, rand(*shape))
    assert_matches_ort(*build(cases))


UNSUPPORTED = {
    "max-pool-dilations": (case("MaxPool", rand(1, 3, 8, 8), kernel_shape=[2, 2], dilations=[2, 2]),
                           "dilations=[2, 2]"),
    "average-pool-dilations": (case("AveragePool", rand(1, 3, 8, 8), kernel_shape=[2, 2], dilations=[1, 2]),
                               "dilations=[1, 2]"),
    "max-pool-indices": (case("MaxPool", rand(1, 3, 8, 8), outputs=2, kernel_shape=[2, 2]), "Indices"),
    "lp-pool-p1": (case("LpPool", rand(1, 3, 8, 8), kernel_shape=[2, 2], p=1), "p=1"),
    "lp-pool-3d": (case("LpPool", rand(1, 3, 4, 4, 4), kernel_shape=[2, 2, 2]), "3-D LpPool", False),
    "global-lp-pool-p3": (case("GlobalLpPool", rand(1, 3, 8, 8), p=3), "p=3"),
    "global-lp-pool-3d": (case("GlobalLpPool", rand(1, 3, 4, 4, 4)), "3-D GlobalLpPool", False),
    "lrn-even": (case("LRN", rand(1, 3, 8, 8), size=4), "size=4"),
    "batch-norm-training": (case("BatchNormalization", rand(2, 3, 4), [np.ones(3, np.float32)] * 4,
                                 training_mode=1), "training"),
    "depth-to-space-3d": (case("DepthToSpace", rand(1, 8, 2, 2, 2), blocksize=2), "3-D DepthToSpace", False),
    "resize-crop-and-resize": (case("Resize", rand(1, 1, 4, 4), [np.zeros(8, np.float32),
                                                                 np.asarray([1, 1, 2, 2], np.float32)],
                                    coordinate_transformation_mode="tf_crop_and_resize"), "tf_crop_and_resize"),
    "resize-channels": (case("Resize", rand(1, 2, 4, 4), [None, np.asarray([1, 2, 1, 1], np.float32)]),
                        "resizing axes [1]", False),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_cases_are_named(name):
    c, message, *static = UNSUPPORTED[name]
    check_fails(c, message, 19, *static)


# ---------------------------------------------------------------------------------------------- normalizations
def test_normalizations():
    cases = {}
    for shape in [(4, 3), (2, 3, 5), (1, 3, 4, 5), (1, 3, 2, 3, 4)]:
        var = RNG.uniform(0.5, 2, 3).astype(np.float32)
        cases[f"batch-norm-{len(shape)}"] = case("BatchNormalization", rand(*shape), [rand(3), rand(3), rand(3), var],
                                                 epsilon=1e-3)
    for shape in [(2, 3, 7), (1, 3, 4, 5), (1, 2, 3, 4, 5)]:
        cases[f"instance-norm-{len(shape)}"] = case("InstanceNormalization", rand(*shape),
                                                    [rand(shape[1]), rand(shape[1])], epsilon=1e-4)
    for name, (shape, axis, scale_shape, bias) in {
        "last": ((2, 5, 8), -1, (8,), True),
        "axis1": ((2, 3, 4, 5), 1, (3, 4, 5), True),
        "broadcast-scale": ((2, 3, 4, 5), 2, (1, 5), True),
        "no-bias": ((3, 16), -1, (16,), False),
    }.items():
        consts = [rand(*scale_shape)] + ([rand(*scale_shape)] if bias else [])
        cases[f"layer-norm-{name}"] = case("LayerNormalization", rand(*shape), consts, axis=axis, epsilon=1e-5)
    cases["layer-norm-runtime-scale"] = case("LayerNormalization", rand(2, 4, 6), runtime=[rand(6)])
    cases["layer-norm-statistics"] = case("LayerNormalization", rand(2, 3, 4, 5), [rand(4, 5)], outputs=3, axis=2)
    for size in [1, 3, 5]:
        cases[f"lrn-{size}"] = case("LRN", rand(2, 7, 4, 5), size=size, alpha=0.01, beta=0.6, bias=2.0)
    model, feeds = build(cases)
    assert_matches_ort(model, feeds, atol=1e-4, rtol=1e-4)
    ops = producers(model)
    assert all(ops[name.replace("-", "_")] == "layer_norm" for name in cases if name.startswith("layer-norm-") and
               "runtime" not in name and "statistics" not in name)
    assert ops["instance_norm_4"] == "instance_norm" and ops["batch_norm_4"] == "batch_norm"


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm(opset):
    """Opset 18 scales per group, opset 21 per channel."""
    cases = {}
    for groups, shape in [(2, (2, 6, 3, 4)), (3, (1, 3, 5)), (1, (1, 4, 2, 2, 3))]:
        per = groups if opset == 18 else shape[1]
        cases[f"groups-{groups}"] = case("GroupNormalization", rand(*shape), [rand(per), rand(per)],
                                         num_groups=groups, epsilon=1e-4)
    assert_matches_ort(*build(cases, opset), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- dense math
def test_gemm():
    a, at, b, bt = rand(3, 4), rand(4, 3), rand(4, 5), rand(5, 4)
    cases = {
        "plain": case("Gemm", a, [b, rand(5)]),
        "transB-alpha-beta": case("Gemm", a, [bt, rand(1, 5)], transB=1, alpha=0.5, beta=2.0),
        "transA": case("Gemm", at, [b, rand(3, 5)], transA=1),
        "transA-transB": case("Gemm", at, [bt, rand(5)], transA=1, transB=1, alpha=2.0),
        "c-column": case("Gemm", a, [b, rand(3, 1)], beta=0.5),
        "c-scalar": case("Gemm", a, [b, rand()]),
        "no-c": case("Gemm", a, [b], alpha=3.0),
        "runtime-b": case("Gemm", a, [rand(5)], runtime=[bt], transB=1, alpha=2.0),
        "runtime-c": case("Gemm", a, runtime=[b, rand(3, 5)], beta=0.5),
    }
    model, feeds = build(cases)
    assert_matches_ort(model, feeds, atol=1e-5, rtol=1e-5)
    ops = producers(model)
    assert ops["plain"] == ops["transB_alpha_beta"] == ops["c_scalar"] == "linear"


def test_matmul():
    cases = {
        "2d-const": case("MatMul", rand(3, 4), [rand(4, 5)]),
        "batched": case("MatMul", rand(2, 3, 4, 5), runtime=[rand(2, 3, 5, 6)]),
        "broadcast": case("MatMul", rand(2, 1, 4, 5), runtime=[rand(3, 5, 2)]),
        "x-1d": case("MatMul", rand(4), runtime=[rand(2, 4, 3)]),
        "y-1d": case("MatMul", rand(2, 3, 4), runtime=[rand(4)]),
        "y-1d-const": case("MatMul", rand(2, 3, 4), [rand(4)]),
        "both-1d": case("MatMul", rand(4), runtime=[rand(4)]),
        "ints": case("MatMul", RNG.integers(-5, 5, (2, 3)).astype(np.int32),
                      runtime=[RNG.integers(-5, 5, (3, 4)).astype(np.int32)]),
    }
    assert_matches_ort(*build(cases), atol=1e-5, rtol=1e-5)


def compressed_dense_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Gemm (transB=1 with a bias, transB=0) and MatMul whose weights are DequantizeLinear of int8 constants
    (per output channel): each weight becomes a constexpr op, so B is a compressed Var, not a constant."""
    nodes, inits, inputs, outputs, feeds = [], [], [], [], {}
    for name, op, shape, axis, attrs in [("gemm_t", "Gemm", (16, 32), 0, {"transB": 1}),
                                         ("gemm", "Gemm", (32, 16), 1, {}),
                                         ("matmul", "MatMul", (32, 16), 1, {})]:
        q = RNG.integers(-127, 128, shape).astype(np.int8)
        scale = RNG.uniform(0.001, 0.01, shape[axis]).astype(np.float32)
        zero = RNG.integers(-3, 4, shape[axis]).astype(np.int8)
        inits += [numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_s"),
                  numpy_helper.from_array(zero, f"{name}_z")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_w"],
                                      axis=axis))
        operands = [f"{name}_x", f"{name}_w"]
        if name == "gemm_t":
            inits.append(numpy_helper.from_array(rand(16), f"{name}_c"))
            operands.append(f"{name}_c")
        nodes.append(helper.make_node(op, operands, [name], name=name, **attrs))
        feeds[f"{name}_x"] = rand(3, 32)
        inputs.append(helper.make_tensor_value_info(f"{name}_x", TensorProto.FLOAT, [3, 32]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [3, 16]))
    graph = helper.make_graph(nodes, "compressed_dense", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10), feeds


@pytest.mark.parametrize("target", ["iOS17", "iOS18"])
def test_compressed_weights_make_linear(target):
    """A compressed B (iOS17: constexpr_affine_dequantize, iOS18: constexpr_blockwise_shift_scale) is linear's
    weight as a constant B is; B [K, N] (Gemm transB=0, MatMul) as a constexpr op of the transposed data. ORT runs
    unoptimized: its QDQ fusions turn DequantizeLinear -> MatMul into an integer matmul of x quantized on the fly,
    which is not the float product ONNX defines."""
    model, feeds = compressed_dense_model()
    program = to_mlmodel(translate(model, target), "fp32")._mil_program
    ops = program.functions["main"].operations
    assert [op.op_type for op in ops].count("linear") == 3
    assert {op.op_type for op in ops if op.op_type.startswith("constexpr_")}
    got = coreml_outputs(model, feeds, target=target)
    for name, want in OrtRunner(model, optimization_level="disabled").run(feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------------------- softmax family
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_family(opset):
    """Opset 11 normalizes the tail flattened from axis (default 1), opset 13 one axis (default -1)."""
    cases = {}
    for op in ["Softmax", "LogSoftmax", "Hardmax"]:
        for axis in [1, -1, -2, None]:
            x = rand(2, 3, 4, 5) * 4
            x = np.round(x) if op == "Hardmax" else x  # ties: the first maximum wins
            cases[f"{op}-{axis}"] = case(op, x, **({} if axis is None else {"axis": axis}))
    cases["log-softmax-finite"] = case("LogSoftmax", np.array([[0.0, -200.0, 300.0]], np.float32))
    assert_matches_ort(*build(cases, opset), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- depth <-> space
def test_depth_space():
    cases = {"dcr": case("DepthToSpace", rand(2, 8, 3, 4), blocksize=2, mode="DCR"),
             "crd": case("DepthToSpace", rand(2, 18, 3, 4), blocksize=3, mode="CRD"),
             "default": case("DepthToSpace", rand(1, 4, 2, 2), blocksize=2),
             "space-to-depth": case("SpaceToDepth", rand(2, 3, 6, 4), blocksize=2)}
    model, feeds = build(cases, opset=13)
    assert_matches_ort(model, feeds)
    assert producers(model) == {"dcr": "depth_to_space", "crd": "pixel_shuffle", "default": "depth_to_space",
                                "space_to_depth": "space_to_depth"}


# ---------------------------------------------------------------------------------------------- Resize / Upsample
def resize(x: np.ndarray, scales=None, sizes=None, **attrs) -> dict:
    consts = [None, None if scales is None else np.asarray(scales, np.float32),
              None if sizes is None else np.asarray(sizes, np.int64)]
    while consts[-1] is None:
        consts.pop()
    return case("Resize", x, consts, **attrs)


RESIZE = {  # case: (the node, the MIL op expected to compute it: a native resize when it samples exactly so)
    "nearest-x2-asymmetric-floor": (resize(rand(1, 2, 4, 5), [1, 1, 2, 2], coordinate_transformation_mode="asymmetric",
                                           nearest_mode="floor"), "upsample_nearest_neighbor"),
    "nearest-x3-half-pixel": (resize(rand(1, 2, 4, 5), [1, 1, 3, 3]), "upsample_nearest_neighbor"),
    "nearest-down-prefer-ceil": (resize(rand(1, 2, 8, 9), sizes=[1, 2, 4, 3], nearest_mode="round_prefer_ceil"),
                                 "resize_nearest_neighbor"),
    "nearest-down-prefer-floor": (resize(rand(1, 2, 8, 8), [1, 1, 0.5, 0.5]), "gather"),
    "nearest-fraction-floor": (resize(rand(1, 2, 5, 7), sizes=[1, 2, 8, 9], coordinate_transformation_mode="asymmetric",
                                      nearest_mode="floor"), None),
    "nearest-ceil": (resize(rand(1, 2, 4, 5), [1, 1, 1.5, 2.5], nearest_mode="ceil"), None),
    "nearest-align-corners": (resize(rand(1, 1, 4, 5), sizes=[1, 1, 7, 9],
                                     coordinate_transformation_mode="align_corners"), None),
    "nearest-half-pixel-symmetric": (resize(rand(1, 1, 4, 5), [1, 1, 1.7, 2.3],
                                            coordinate_transformation_mode="half_pixel_symmetric"), None),
    "nearest-uint8": (resize(RNG.integers(0, 100, (1, 1, 3, 4)).astype(np.uint8), [1, 1, 2, 2]), None),
    "linear-half-pixel-x2": (resize(rand(1, 2, 4, 5), [1, 1, 2, 2], mode="linear"), "resize_bilinear"),
    "linear-pytorch-half-pixel": (resize(rand(1, 2, 4, 5), sizes=[1, 2, 7, 11], mode="linear",
                                         coordinate_transformation_mode="pytorch_half_pixel"), "resize_bilinear"),
    "linear-align-corners": (resize(rand(1, 2, 4, 5), sizes=[1, 2, 7, 9], mode="linear",
                                    coordinate_transformation_mode="align_corners"), "resize_bilinear"),
    "linear-asymmetric": (resize(rand(1, 2, 4, 5), [1, 1, 2, 3], mode="linear",
                                 coordinate_transformation_mode="asymmetric"), "resize_bilinear"),
    "linear-down": (resize(rand(1, 2, 8, 9), sizes=[1, 2, 4, 3], mode="linear"), "resize_bilinear"),
    "linear-fraction-scales": (resize(rand(1, 2, 4, 5), [1, 1, 1.3, 1.7], mode="linear"), None),
    "linear-antialias-down": (resize(rand(1, 2, 8, 9), sizes=[1, 2, 3, 4], mode="linear", antialias=1), "matmul"),
    "linear-width-only": (resize(rand(1, 2, 4, 5), [1, 1, 1, 2], mode="linear"), "resize_bilinear"),
    "cubic": (resize(rand(1, 2, 4, 5), [1, 1, 2, 2], mode="cubic"), "matmul"),
    "cubic-align-corners-exclude": (resize(rand(1, 1, 5, 4), sizes=[1, 1, 7, 6], mode="cubic", exclude_outside=1,
                                           coordinate_transformation_mode="align_corners", cubic_coeff_a=-0.5),
                                    "matmul"),
    "sizes-axes-not-larger": (resize(rand(1, 2, 4, 6), sizes=[8, 8], axes=[2, 3],
                                     keep_aspect_ratio_policy="not_larger"), None),
    "rank3-linear": (resize(rand(3, 4, 5), [1, 2, 2], mode="linear"), "resize_bilinear"),
    "identity": (resize(rand(1, 2, 3, 3), [1, 1, 1, 1]), None),
}


def test_resize():
    model, feeds = build({name: c for name, (c, _) in RESIZE.items()}, opset=19)
    assert_matches_ort(model, feeds, atol=1e-5, rtol=1e-5)
    ops = producers(model)
    for name, (_, expected) in RESIZE.items():
        if expected is not None:
            assert ops[name.replace("-", "_")] == expected, name


def test_resize_older_opsets_and_upsample():
    """Resize-10 (scales only, asymmetric), Resize-11's tf_half_pixel_for_nn, Upsample-9 (nearest floors) and
    Upsample-7 (scales as an attribute)."""
    for opset, cases in {
        10: {f"{mode}-{i}": case("Resize", rand(1, 2, 4, 6), [np.asarray(s, np.float32)], mode=mode)
             for mode in ["nearest", "linear"] for i, s in enumerate([[1, 1, 2, 2], [1, 1, 0.5, 0.5], [1, 1, 1.5, 3]])},
        11: {"tf-half-pixel-for-nn": case("Resize", rand(1, 1, 4, 5), [np.zeros(0, np.float32),
                                                                        np.asarray([1, 1, 1.5, 2.5], np.float32)],
                                          coordinate_transformation_mode="tf_half_pixel_for_nn")},
        9: {f"upsample-{mode}": case("Upsample", rand(1, 2, 3, 4), [np.asarray([1, 1, 2, 3], np.float32)], mode=mode)
            for mode in ["nearest", "linear"]},
        7: {"upsample-7": case("Upsample", rand(1, 2, 3, 4), scales=[1.0, 1.0, 2.0, 2.0], mode="linear")},
    }.items():
        assert_matches_ort(*build(cases, opset), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- fp16
def test_fp16():
    cases = {
        "conv": case("Conv", rand(1, 4, 9, 9), [rand(6, 4, 3, 3) * 0.3, rand(6)], pads=[1, 1, 1, 1]),
        "depthwise": case("Conv", rand(1, 4, 8, 8), [rand(4, 1, 3, 3) * 0.3], group=4, strides=[2, 2]),
        "conv-transpose": case("ConvTranspose", rand(1, 2, 4, 4), [rand(2, 3, 3, 3) * 0.3, rand(3)], strides=[2, 2]),
        "matmul": case("MatMul", rand(2, 3, 8) * 0.5, runtime=[rand(2, 8, 5) * 0.5]),
        "gemm": case("Gemm", rand(3, 8) * 0.5, [rand(5, 8) * 0.3, rand(5)], transB=1),
        "softmax": case("Softmax", rand(2, 3, 10) * 3, axis=1),
        "log-softmax": case("LogSoftmax", rand(2, 10) * 3),
        "layer-norm": case("LayerNormalization", rand(2, 5, 16), [rand(16), rand(16)]),
        "group-norm": case("GroupNormalization", rand(1, 4, 3, 3), [rand(4), rand(4)], num_groups=2),
        "max-pool": case("MaxPool", rand(1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        "avg-pool": case("AveragePool", rand(1, 2, 8, 8), kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        "batch-norm": case("BatchNormalization", rand(1, 3, 4, 4), [rand(3), rand(3), rand(3),
                                                                    np.full(3, 1.5, np.float32)]),
        "instance-norm": case("InstanceNormalization", rand(1, 3, 4, 4), [rand(3), rand(3)]),
        "resize-linear": resize(rand(1, 2, 4, 5), [1, 1, 2, 2], mode="linear"),
        "resize-cubic": resize(rand(1, 2, 4, 5), [1, 1, 2, 2], mode="cubic"),
    }
    assert_matches_ort(*build(cases, opset=21), precision="fp16", atol=2e-2, rtol=2e-2)


def test_float16_model():
    """An ONNX model in float16 (fp16 inputs, outputs and constants) computes in fp16 throughout."""
    def h(*shape):
        return rand(*shape).astype(np.float16)

    cases = {
        "conv": case("Conv", h(1, 4, 9, 9), [h(6, 4, 3, 3), h(6)], pads=[1, 1, 1, 1]),
        "conv-transpose": case("ConvTranspose", h(1, 2, 4, 4), [h(2, 3, 3, 3), h(3)], strides=[2, 2],
                               output_padding=[1, 1]),
        "matmul": case("MatMul", h(2, 3, 8), runtime=[h(2, 8, 5)]),
        "gemm": case("Gemm", h(3, 8), [h(5, 8), h(5)], transB=1, alpha=0.5),
        "softmax": case("Softmax", h(2, 10)),
        "layer-norm": case("LayerNormalization", h(2, 5, 16), [h(16), h(16)]),
        "group-norm": case("GroupNormalization", h(1, 4, 3, 3), [h(4), h(4)], num_groups=2),
        "instance-norm-3d": case("InstanceNormalization", h(1, 3, 2, 3, 4), [h(3), h(3)]),
        "batch-norm-2d": case("BatchNormalization", h(4, 3), [h(3), h(3), h(3), np.full(3, 1.5, np.float16)]),
        "avg-pool-ceil": case("AveragePool", h(1, 2, 8, 7), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                              count_include_pad=1, pads=[1, 1, 1, 1]),
        "resize-cubic": resize(h(1, 2, 4, 5), [1, 1, 2, 2], mode="cubic"),
    }
    assert_matches_ort(*build(cases, opset=21), precision="fp16", atol=2e-2, rtol=2e-2)


def test_ios15():
    """Everything here is in the first ML Program opset."""
    cases = {
        "conv": case("Conv", rand(1, 4, 9, 9), [rand(6, 4, 3, 3)], auto_pad="SAME_LOWER", strides=[2, 2]),
        "pool": case("MaxPool", rand(1, 2, 8, 7), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        "layer-norm": case("LayerNormalization", rand(2, 5, 16), [rand(16)]),
        "gemm": case("Gemm", rand(3, 8), [rand(5, 8), rand(5)], transB=1),
        "resize": resize(rand(1, 2, 4, 5), [1, 1, 2, 2], mode="linear"),
        "depth-to-space": case("DepthToSpace", rand(1, 8, 2, 2), blocksize=2, mode="CRD"),
    }
    assert_matches_ort(*build(cases), target="iOS15", atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- a whole network
def mobilenet_like(size: int = 224, width: int = 32) -> onnx.ModelProto:
    """MobileNetV2-shaped: a strided stem, inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project) with
    BatchNorm after every conv, then global pooling and a 1x1-conv classifier."""
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn(x, c_in, c_out, k, stride=1, group=1, relu=True):
        i = len(nodes)
        w = const(f"w{i}", rand(c_out, c_in // group, k, k) * np.sqrt(2 / (c_in // group * k * k)))
        nodes.append(helper.make_node("Conv", [x, w], [f"c{i}"], pads=[k // 2] * 4, strides=[stride] * 2, group=group))
        stats = [const(f"bn{i}_{j}", v) for j, v in enumerate(
            [RNG.uniform(0.5, 1.5, c_out), rand(c_out) * 0.1, rand(c_out) * 0.1, RNG.uniform(0.5, 1.5, c_out)])]
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *stats], [f"b{i}"]))
        if not relu:
            return f"b{i}"
        nodes.append(helper.make_node("Relu", [f"b{i}"], [f"r{i}"]))
        return f"r{i}"

    x = conv_bn("x", 3, width, 3, stride=2)
    c = width
    for c_out, stride in [(16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (64, 2), (64, 1), (96, 1), (160, 2), (320, 1)]:
        h = conv_bn(x, c, c * 6, 1)
        h = conv_bn(h, c * 6, c * 6, 3, stride=stride, group=c * 6)
        h = conv_bn(h, c * 6, c_out, 1, relu=False)
        if stride == 1 and c == c_out:
            nodes.append(helper.make_node("Add", [x, h], [f"add{len(nodes)}"]))
            h = nodes[-1].output[0]
        x, c = h, c_out
    x = conv_bn(x, c, 1280, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    fc = const("fc", rand(1000, 1280, 1, 1) * 0.03)
    nodes.append(helper.make_node("Conv", ["gap", fc, const("fcb", rand(1000))], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    graph = helper.make_graph(nodes, "mobilenet", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, 3, size, size])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_mobilenet_evaluates_in_seconds():
    """The evaluator must run a MobileNet quickly: the fp16 program at 224x224, against ORT."""
    model = mobilenet_like()
    feeds = {"x": rand(1, 3, 224, 224)}
    start = time.perf_counter()
    got = coreml_outputs(model, feeds, precision="fp16")
    took = time.perf_counter() - start
    from accelopt.targets.onnxruntime import OrtRunner

    want = OrtRunner(model).run(feeds)["probs"]
    np.testing.assert_allclose(got["probs"], want, atol=2e-3)
    assert took < 30, f"translate + convert + evaluate took {took:.1f} s"


# ---------------------------------------------------------------------------------------------- kernels alone
def _mil(build_op, x: np.ndarray, target: str = "iOS17") -> np.ndarray:
    """A one-op MIL program evaluated by the numpy kernels (for op forms the ONNX handlers do not emit)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from accelopt.converters.mil.evaluate import run_program

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=getattr(ct.target, target))
    def program(x):
        return build_op(mb, x)

    return next(iter(run_program(program, {"x": x}).values()))


def _ort(c: dict, opset: int = 19) -> np.ndarray:
    from accelopt.targets.onnxruntime import OrtRunner

    model, feeds = build({"y": c}, opset)
    return OrtRunner(model).run(feeds)["y"]


def test_kernels_of_forms_the_handlers_do_not_emit():
    """pad_type same / same_lower, pool ceil_mode, upsample_bilinear, iOS17 resize and pixel_unshuffle, checked
    against the ONNX node that means the same."""
    x, w = rand(1, 3, 9, 10), rand(4, 3, 3, 4)
    for pad_type, auto_pad in [("same", "SAME_UPPER"), ("same_lower", "SAME_LOWER")]:
        got = _mil(lambda mb, v: mb.conv(x=v, weight=w, strides=[2, 3], pad_type=pad_type), x)
        np.testing.assert_allclose(got, _ort(case("Conv", x, [w], strides=[2, 3], auto_pad=auto_pad)), atol=1e-4)
        got = _mil(lambda mb, v: mb.max_pool(x=v, kernel_sizes=[3, 2], strides=[2, 2], pad_type=pad_type), x)
        np.testing.assert_allclose(got, _ort(case("MaxPool", x, kernel_shape=[3, 2], strides=[2, 2],
                                                  auto_pad=auto_pad)))
    got = _mil(lambda mb, v: mb.avg_pool(x=v, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                         pad=[1, 1, 1, 1], ceil_mode=True, exclude_padding_from_average=True), x)
    np.testing.assert_allclose(got, _ort(case("AveragePool", x, kernel_shape=[3, 3], strides=[2, 2],
                                              pads=[1, 1, 1, 1], ceil_mode=1)), atol=1e-6)
    wt = rand(3, 2, 3, 3)
    got = _mil(lambda mb, v: mb.conv_transpose(x=v, weight=wt, strides=[2, 2], pad_type="same"), x)
    np.testing.assert_allclose(got, _ort(case("ConvTranspose", x, [wt], strides=[2, 2], auto_pad="SAME_UPPER")),
                               atol=1e-4)
    small = rand(1, 2, 3, 4)
    for align, coord in [(True, "align_corners"), (False, "half_pixel")]:
        got = _mil(lambda mb, v: mb.upsample_bilinear(x=v, scale_factor_height=2, scale_factor_width=3,
                                                      align_corners=align), small, "iOS15")
        np.testing.assert_allclose(got, _ort(resize(small, sizes=[1, 2, 6, 12], mode="linear",
                                                    coordinate_transformation_mode=coord)), atol=1e-5)
    got = _mil(lambda mb, v: mb.resize(x=v, shape=np.array([5, 7], np.int32), resized_dims=np.uint32(2),
                                       sampling_mode="UNALIGN_CORNERS"), small)
    np.testing.assert_allclose(got, _ort(resize(small, sizes=[1, 2, 5, 7], mode="linear")), atol=1e-5)
    x = rand(2, 3, 4, 6)
    got = _mil(lambda mb, v: mb.pixel_shuffle(x=mb.pixel_unshuffle(x=v, downscale_factor=np.uint32(2)),
                                              upscale_factor=2), x, "iOS16")
    np.testing.assert_array_equal(got, x)
    got = _mil(lambda mb, v: mb.pixel_unshuffle(x=v, downscale_factor=np.uint32(2)), x, "iOS16")
    np.testing.assert_array_equal(got[:, 1], x[:, 0, ::2, 1::2])  # channel c*4 + i*2 + j holds x[c, i::2, j::2]
