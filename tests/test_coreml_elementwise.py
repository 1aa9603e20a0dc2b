"""The elementwise family of the Core ML lowering against ONNX Runtime: each op translated, converted by
coremltools (its whole pass pipeline) and run by the numpy MIL evaluator, with the ONNX attribute and opset
variants and the places where MIL's op differs from ONNX's (integer Div, Reciprocal's epsilon, Round's ties,
ThresholdedRelu at alpha, one-sided Clip, PRelu slopes, Where's broadcast condition)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("coremltools")

from accelopt.converters.mil.registry import REGISTRY  # noqa: E402
from accelopt.converters.mil.translator import translate  # noqa: E402
from accelopt.converters.registry import Unsupported  # noqa: E402
from accelopt.targets.coreml.convert import to_mlmodel  # noqa: E402
from tests.coreml_util import assert_matches_ort, coreml_outputs  # noqa: E402

RNG = np.random.default_rng(0)
F = np.float32
SHAPE = (2, 3, 4, 5)


def rand(*shape, lo=-3.0, hi=3.0, dtype=F) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(dtype)


def ints(*shape, lo=-20, hi=20, dtype=np.int64) -> np.ndarray:
    return RNG.integers(lo, hi, shape).astype(dtype)


def build(op: str, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
          inputs: list[str] | None = None, opset: int = 17, outputs: int = 1, **attrs) -> onnx.ModelProto:
    """A one-node model: `feeds` become graph inputs, `consts` initializers, `inputs` the node's input order
    ("" for an absent optional input; default: feeds then consts)."""
    consts = consts or {}
    names = inputs if inputs is not None else [*feeds, *consts]
    outs = [f"y{i}" for i in range(outputs)]
    graph = helper.make_graph(
        [helper.make_node(op, names, outs, **attrs)], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
        [onnx.ValueInfoProto(name=o) for o in outs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for out in model.graph.output:
        out.CopyFrom(known[out.name])
    return model


def check(op: str, feeds: dict, consts: dict | None = None, precision: str = "fp32", **kw) -> None:
    assert_matches_ort(build(op, feeds, consts, **kw), feeds, precision)


def check_reference(op: str, feeds: dict, consts: dict | None = None, **kw) -> dict[str, np.ndarray]:
    """Against onnx's reference evaluator, for what onnxruntime lacks (bool Where, int64 Relu) or computes
    otherwise (Dropout's mask before opset 12: zeros in onnxruntime, ones in ONNX). Types are checked where
    shape inference gives them. Returns the outputs."""
    model = build(op, feeds, consts, **kw)
    got = coreml_outputs(model, feeds)
    for out, want in zip(model.graph.output, ReferenceEvaluator(model).run(None, feeds)):
        if out.type.tensor_type.elem_type:
            assert got[out.name].dtype == helper.tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type)
        np.testing.assert_allclose(got[out.name], want, rtol=1e-6)
    return got


def mil_ops(model: onnx.ModelProto, precision: str = "fp32") -> list[str]:
    """The op types of the converted program (after coremltools' passes), casts and consts aside."""
    program = to_mlmodel(translate(model, "iOS17"), precision)._mil_program
    return [op.op_type for op in program.functions["main"].operations if op.op_type not in ("const", "cast")]


# --- arithmetic ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_float_arithmetic_broadcasts(op):
    check(op, {"a": rand(*SHAPE), "b": rand(4, 1, lo=0.5, hi=2)})
    check(op, {"a": rand(*SHAPE)}, {"b": rand(5, lo=0.5, hi=2)})  # constant divisor -> mul by reciprocal


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_integer_arithmetic(op):
    check(op, {"a": ints(3, 4), "b": ints(4)})
    check(op, {"a": ints(3, 4, dtype=np.int32)}, {"b": np.array(7, np.int32)})


def test_integer_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 6, -6, 0, 1, -1, 20], np.int64)
    b = np.array([2, 2, -2, -2, 3, -4, 5, -3, 3, 1], np.int64)
    check("Div", {"a": a, "b": b})
    check("Div", {"a": a}, {"b": np.array(-3, np.int64)})
    check("Div", {"a": a.astype(np.int32)}, {"b": np.array(1, np.int32)})


def test_mod():
    a = np.array([7, -7, 7, -7, 6, -6, 0, 13], np.int64)
    b = np.array([3, 3, -3, -3, 4, -4, 5, 1], np.int64)
    check("Mod", {"a": a, "b": b})  # fmod=0: the divisor's sign
    check("Mod", {"a": a, "b": b}, fmod=1)  # the dividend's sign
    check("Mod", {"a": a.astype(F) * 1.25, "b": b.astype(F) * 0.5}, fmod=1)
    check("Mod", {"a": rand(3, 4) * 3}, {"b": np.array(1, F)}, fmod=1)  # floor_div(x, 1) would be dropped


def test_float_mod_without_fmod_is_refused():
    with pytest.raises(Unsupported, match="fmod=0 on floats"):
        translate(build("Mod", {"a": rand(3), "b": rand(3)}))


def test_pow():
    check("Pow", {"a": rand(*SHAPE, lo=0.1, hi=3), "b": rand(5, lo=-2, hi=2)})
    check("Pow", {"a": rand(*SHAPE)}, {"b": np.array(3, np.int64)})  # exponent of another type
    check("Pow", {"a": ints(6, lo=-4, hi=5), "b": ints(6, lo=0, hi=4)})
    check("Pow", {"a": ints(6, lo=1, hi=9)}, {"b": np.array(0.5, F)})  # int base, float exponent: truncated


@pytest.mark.parametrize("op", ["Max", "Min", "Sum", "Mean"])
def test_variadic(op):
    check(op, {"a": rand(*SHAPE), "b": rand(4, 1), "c": rand(1, 3, 1, 1)})
    check(op, {"a": rand(3, 4)})  # one input: identity
    if op in ("Max", "Min"):
        check(op, {"a": ints(3, 4, dtype=np.int32)}, {"b": np.array([1, -1, 2, 0], np.int32)})


def test_legacy_broadcast_attribute():
    """Opset < 7 (onnxruntime runs none of these): B broadcasts only with broadcast=1, aligned with A from
    `axis`."""
    a, b = rand(*SHAPE), rand(3, 4)
    got = coreml_outputs(build("Add", {"a": a, "b": b}, opset=6, broadcast=1, axis=1), {"a": a, "b": b})
    np.testing.assert_allclose(got["y0"], a + b[None, :, :, None], rtol=1e-6)
    b = rand(4, 5)
    got = coreml_outputs(build("Mul", {"a": a}, {"b": b}, opset=6, broadcast=1), {"a": a})
    np.testing.assert_allclose(got["y0"], a * b, rtol=1e-6)


# --- unary math -----------------------------------------------------------------------------------------

UNARY_DOMAINS = {
    "Abs": (-3, 3), "Neg": (-3, 3), "Exp": (-5, 5), "Log": (0.01, 10), "Sqrt": (0, 9), "Floor": (-3, 3),
    "Ceil": (-3, 3), "Sign": (-3, 3), "Sin": (-6, 6), "Cos": (-6, 6), "Tan": (-1.4, 1.4), "Asin": (-0.99, 0.99),
    "Acos": (-0.99, 0.99), "Atan": (-5, 5), "Sinh": (-4, 4), "Cosh": (-4, 4), "Tanh": (-4, 4),
    "Asinh": (-50, 50), "Acosh": (1, 50), "Atanh": (-0.99, 0.99), "Erf": (-3, 3), "Sigmoid": (-8, 8),
    "Softplus": (-20, 20), "Softsign": (-5, 5), "Relu": (-3, 3), "Mish": (-5, 5), "HardSwish": (-5, 5),
    "Identity": (-3, 3),
}
OPSET = {"Mish": 18}


@pytest.mark.parametrize("op", sorted(UNARY_DOMAINS))
def test_unary(op):
    lo, hi = UNARY_DOMAINS[op]
    check(op, {"x": rand(*SHAPE, lo=lo, hi=hi)}, opset=OPSET.get(op, 17))


@pytest.mark.parametrize("op", ["Abs", "Neg", "Sign", "Relu"])
def test_unary_integers(op):
    check(op, {"x": ints(3, 4, dtype=np.int32)})
    check_reference(op, {"x": ints(3, 4)})


def test_reciprocal_has_no_epsilon():
    """MIL inverse adds 1e-4 by default: 1 / 1e-3 would be 909."""
    check("Reciprocal", {"x": np.array([1e-3, -1e-3, 0.5, -4, 1e4, 3], F)})


def test_log_of_zero_is_minus_infinity():
    """MIL log adds 1e-45 by default."""
    check("Log", {"x": np.array([0, 1e-30, 1, 5], F)})


def test_round_ties_to_even():
    check("Round", {"x": np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -3.7, 3.2], F)})


def test_is_nan_and_is_inf():
    x = np.array([0, np.inf, -np.inf, np.nan, -1e30, 3.4e38, 1], F)
    check("IsNaN", {"x": x})
    for pos, neg in ((1, 1), (1, 0), (0, 1), (0, 0)):
        check("IsInf", {"x": x}, detect_positive=pos, detect_negative=neg)


# --- activations ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,attrs", [
    ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.3}), ("Elu", {}), ("Elu", {"alpha": 0.5}), ("Selu", {}),
    ("Selu", {"alpha": 1.5, "gamma": 2.0}), ("Celu", {}), ("Celu", {"alpha": 2.0}), ("HardSigmoid", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("ThresholdedRelu", {}), ("ThresholdedRelu", {"alpha": 0.5}),
])
def test_activations_with_attributes(op, attrs):
    x = rand(*SHAPE)
    x.flat[:3] = [attrs.get("alpha", 1.0), 0.0, -attrs.get("alpha", 1.0)]  # ThresholdedRelu is strict at alpha
    check(op, {"x": x}, **attrs)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    check("Gelu", {"x": rand(*SHAPE, lo=-5, hi=5)}, opset=20, approximate=approximate)


def test_gelu_unknown_approximation_is_a_check_finding():
    proto = helper.make_node("Gelu", ["x"], ["y"], approximate="sigmoid")
    found = REGISTRY.facts("", "Gelu")["check"](proto, 20)
    assert found and "approximate='sigmoid'" in found[0][1]


@pytest.mark.parametrize("slope,expect", [
    (np.array([0.1, 0.2, 0.3], F).reshape(3, 1, 1), "prelu"),  # per channel, rank 4
    (np.array([0.25], F), "leaky_relu"),
    (np.array([0.1, 0.2, 0.3, 0.4, 0.5], F), "maximum"),  # ONNX broadcasts [W] along the last axis
    (rand(4, 5, lo=0, hi=1), "maximum"),
])
def test_prelu_constant_slopes(slope, expect):
    model = build("PRelu", {"x": rand(*SHAPE)}, {"s": slope})
    assert expect in mil_ops(model)
    assert_matches_ort(model, {"x": rand(*SHAPE)})


def test_prelu_runtime_slope_rank3_and_integers():
    check("PRelu", {"x": rand(2, 3, 4), "s": rand(3, 1, lo=0, hi=1)})
    check("PRelu", {"x": rand(2, 3, 4)}, {"s": rand(3, 1, lo=0, hi=1)})  # rank 3: MIL prelu needs one value
    check("PRelu", {"x": ints(3, 4, dtype=np.int32)}, {"s": np.array([1, 2, 3, 0], np.int32)})


# --- Clip -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs", [{"min": -1.0, "max": 2.0}, {"min": 0.0}, {"max": 0.5}, {}])
def test_clip_opset6_attributes(attrs):
    check("Clip", {"x": rand(*SHAPE)}, opset=6, **attrs)


@pytest.mark.parametrize("lo,hi", [(-1.0, 2.0), (0.0, None), (None, 0.5), (None, None), (1.0, 1.0), (2.0, -1.0),
                                   (0.0, np.inf), (-np.inf, 1.0)])
def test_clip_inputs(lo, hi):
    consts = {k: np.array(v, F) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    inputs = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    check("Clip", {"x": rand(*SHAPE)}, consts, inputs=inputs)


def test_clip_runtime_bounds_and_integers():
    """Runtime bounds (Core ML has no rank-0 inputs: [1]-shaped ones, which onnxruntime accepts too)."""
    check("Clip", {"x": rand(*SHAPE), "lo": np.array([-0.5], F), "hi": np.array([1.5], F)})
    check("Clip", {"x": rand(*SHAPE), "hi": np.array([1.5], F)}, inputs=["x", "", "hi"])
    check("Clip", {"x": ints(3, 4)}, {"lo": np.array(-5, np.int64), "hi": np.array(5, np.int64)})


# --- comparisons, logic, Where ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_comparisons(op):
    a = RNG.integers(-2, 3, SHAPE).astype(F)
    check(op, {"a": a, "b": RNG.integers(-2, 3, (4, 5)).astype(F)})
    check(op, {"a": ints(3, 4, lo=-2, hi=3)}, {"b": np.array(0, np.int64)})


@pytest.mark.parametrize("op", ["And", "Or", "Xor", "Equal"])
def test_logic(op):
    check(op, {"a": RNG.random((3, 4)) > 0.5, "b": RNG.random(4) > 0.5})


def test_not():
    check("Not", {"x": RNG.random((3, 4)) > 0.5})


def test_where():
    cond = RNG.random(SHAPE) > 0.5
    check("Where", {"c": cond, "a": rand(*SHAPE), "b": rand(4, 5)})
    check("Where", {"c": cond, "a": rand(4, 1)}, {"b": np.array(-1, F)})  # the condition is the largest
    check("Where", {"c": cond, "a": rand(5), "b": rand(4, 1)})
    check("Where", {"c": cond, "a": ints(5, dtype=np.int32), "b": ints(4, 1, dtype=np.int32)})
    check_reference("Where", {"c": cond[0, 0], "a": RNG.random((4, 5)) > 0.5, "b": RNG.random(5) > 0.5})


# --- Cast, CastLike, Identity, Dropout --------------------------------------------------------------------

@pytest.mark.parametrize("source,to", [
    (F, TensorProto.INT32), (F, TensorProto.INT64), (F, TensorProto.BOOL), (F, TensorProto.DOUBLE),
    (F, TensorProto.FLOAT16), (np.int64, TensorProto.FLOAT), (np.int32, TensorProto.INT8),
    (np.int64, TensorProto.UINT8), (np.int32, TensorProto.INT16), (np.bool_, TensorProto.FLOAT),
    (np.int32, TensorProto.INT64),
])
def test_cast(source, to):
    x = (rand(3, 4, lo=-300, hi=300) if source == F else ints(3, 4, lo=-70000, hi=70000)).astype(source) \
        if source != np.bool_ else RNG.random((3, 4)) > 0.5
    check("Cast", {"x": x}, to=to)


def test_cast_opset5_names_the_type():
    """Before opset 6, `to` is a type name; onnxruntime runs no such model, shape inference types no output."""
    x = rand(3, 4, lo=-9, hi=9)
    model = build("Cast", {"x": x}, opset=5, to="INT32")
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y0", TensorProto.INT32, [3, 4]))
    got = coreml_outputs(model, {"x": x})["y0"]
    assert got.dtype == np.int32 and np.array_equal(got, np.trunc(x))


def test_cast_refuses_strings_in_check():
    proto = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)
    assert REGISTRY.facts("", "Cast")["check"](proto, 17)[0][0] == "unsupported_type"


def test_cast_like():
    check("CastLike", {"x": rand(3, 4, lo=-9, hi=9)}, {"t": np.array([0], np.int64)}, opset=15)
    check("CastLike", {"x": ints(3, 4, lo=-300, hi=300), "t": np.zeros(1, np.int8)}, opset=15)


@pytest.mark.parametrize("opset,extra,mask", [(7, {}, F), (10, {"ratio": 0.3}, bool), (13, {}, bool)])
def test_dropout_is_identity_with_a_mask_of_ones(opset, extra, mask):
    """The mask has the input's type before opset 10 (shape inference leaves it untyped), bool after."""
    got = check_reference("Dropout", {"x": rand(*SHAPE)}, opset=opset, outputs=2, **extra)
    assert got["y1"].dtype == mask


def test_dropout_opset13_inputs():
    consts = {"r": np.array(0.4, F), "t": np.array(False)}
    check("Dropout", {"x": rand(*SHAPE)}, consts, opset=13, outputs=2)
    check("Dropout", {"x": rand(*SHAPE)}, {"r": np.array(0.0, F), "t": np.array(True)}, opset=13)
    with pytest.raises(Unsupported, match="training_mode=1"):
        translate(build("Dropout", {"x": rand(3)}, {"r": np.array(0.5, F), "t": np.array(True)}, opset=13))


# --- fp16 and coremltools' fusions ------------------------------------------------------------------------

@pytest.mark.parametrize("op,attrs,lo,hi", [
    ("Add", {}, -3, 3), ("Div", {}, 0.5, 3), ("Exp", {}, -3, 3), ("Log", {}, 0.1, 9), ("Reciprocal", {}, 0.5, 4),
    ("Sigmoid", {}, -6, 6), ("HardSwish", {}, -5, 5), ("Erf", {}, -3, 3), ("Softplus", {}, -5, 5),
    ("Mish", {}, -5, 5), ("Tanh", {}, -3, 3), ("LeakyRelu", {"alpha": 0.2}, -3, 3), ("Elu", {}, -3, 3),
    ("HardSigmoid", {}, -4, 4), ("Asinh", {}, -10, 10),
])
def test_fp16(op, attrs, lo, hi):
    feeds = {"x": rand(*SHAPE, lo=lo, hi=hi)}
    if op in ("Add", "Div"):
        feeds["b"] = rand(5, lo=0.5, hi=2)
    check(op, feeds, precision="fp16", opset=OPSET.get(op, 17), **attrs)


def test_fp16_clip_where_isinf_gelu_and_ops_kept_fp32():
    check("Clip", {"x": rand(*SHAPE)}, {"lo": np.array(-1, F), "hi": np.array(1, F)}, precision="fp16")
    # a constant beyond fp16's range keeps its op in fp32 (coremltools' FP16ComputePrecision): 1e5 * x stays finite
    check("Mul", {"x": rand(*SHAPE)}, {"k": np.array(1e5, F)}, precision="fp16")
    check("Where", {"c": RNG.random(SHAPE) > 0.5, "a": rand(*SHAPE)}, {"b": np.array(-np.inf, F)},
          precision="fp16")
    check("IsInf", {"x": np.array([1, np.inf, -np.inf, np.nan], F)}, precision="fp16")
    check("Gelu", {"x": rand(*SHAPE)}, opset=20, precision="fp16", approximate="tanh")


FP16_MODEL = [
    ("Add", {"a": rand(2, 3)}, {"b": rand(3)}, {}), ("Reciprocal", {"x": rand(2, 3, lo=0.5, hi=2)}, {}, {}),
    ("Log", {"x": rand(2, 3, lo=0.5, hi=2)}, {}, {}), ("Elu", {"x": rand(2, 3)}, {}, {}),
    ("Clip", {"x": rand(2, 3)}, {"lo": np.array(-1, F), "hi": np.array(1, F)}, {}),
    ("LeakyRelu", {"x": rand(2, 3)}, {}, {"alpha": 0.2}), ("HardSwish", {"x": rand(2, 3)}, {}, {}),
    ("PRelu", {"x": rand(1, 3, 2, 2)}, {"s": rand(3, 1, 1, lo=0, hi=1)}, {}),
    ("Where", {"c": RNG.random((2, 3)) > 0.5, "a": rand(2, 3)}, {"b": np.array(0, F)}, {}),
    ("Mod", {"a": rand(2, 3)}, {"b": np.array(0.7, F)}, {"fmod": 1}), ("Cast", {"x": rand(2, 3)}, {}, {"to": 6}),
]


@pytest.mark.parametrize("target", ["iOS15", "iOS17"])
@pytest.mark.parametrize("case", FP16_MODEL, ids=[c[0] for c in FP16_MODEL])
def test_float16_models(case, target):
    """A float16 ONNX model: its inputs cross as fp16 from iOS16, as fp32 before, and its constants and
    alpha/beta/epsilon values follow the runtime type."""
    op, feeds, consts, attrs = case
    feeds, consts = ({k: v.astype(np.float16) if v.dtype == F else v for k, v in d.items()} for d in (feeds, consts))
    assert_matches_ort(build(op, feeds, consts, **attrs), feeds, target=target, rtol=2e-3, atol=2e-3)


def _chain(nodes: list, x_shape=SHAPE, consts: dict | None = None, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)],
                              [numpy_helper.from_array(v, k) for k, v in (consts or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_coremltools_fusions_have_kernels(precision):
    """Patterns coremltools' passes rewrite: Erf-GELU -> gelu, max(x, a*x) -> leaky_relu, x * sigmoid(x)
    -> silu, a per-channel x * s + b on rank 4 -> batch_norm (the normalization family's kernel)."""
    gelu = _chain([helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                   helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["m"]),
                   helper.make_node("Mul", ["m", "half"], ["y"])],
                  consts={"sqrt2": np.array(np.sqrt(2), F), "one": np.array(1, F), "half": np.array(0.5, F)})
    leaky = _chain([helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Max", ["x", "m"], ["y"])],
                   consts={"a": np.array(0.1, F)})
    silu = _chain([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])])
    affine = _chain([helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                    consts={"s": rand(1, 3, 1, 1), "b": rand(1, 3, 1, 1)})
    for model, fused in ((gelu, "gelu"), (leaky, "leaky_relu"), (silu, "silu"), (affine, "batch_norm")):
        assert fused in mil_ops(model, precision)
        assert_matches_ort(model, {"x": rand(*SHAPE)}, precision)
