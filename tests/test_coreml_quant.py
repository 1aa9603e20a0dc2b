"""Quantization on the Core ML target: ONNX QDQ graphs lowered to MIL (converters/mil/ops/quant.py: int8 weights
as constexpr ops, activations as quantize/dequantize, evaluated by converters/mil/kernels/quant.py) and weight
compression of a converted model (targets/coreml/compress.py)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("coremltools")

from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from accelopt.converters.mil.registry import REGISTRY  # noqa: E402
from accelopt.converters.mil.translator import translate  # noqa: E402
from accelopt.converters.registry import Unsupported  # noqa: E402
from accelopt.errors import BadInputError, RecipeError  # noqa: E402
from accelopt.recipes.schema import _one_line  # noqa: E402
from accelopt.targets.coreml.compress import CompressionConfig, check_compression, compress  # noqa: E402
from accelopt.targets.coreml.convert import to_mlmodel  # noqa: E402
from accelopt.targets.coreml.runner import IO_KEY, MilRunner, io_metadata  # noqa: E402
from accelopt.targets.onnxruntime import OrtRunner  # noqa: E402

SAMPLES = [{"x": np.random.default_rng(100 + i).standard_normal((1, 8, 8, 8)).astype(np.float32)} for i in range(6)]


def conv_gemm_model() -> onnx.ModelProto:
    """Conv(8->32, 3x3) -> Relu -> Flatten -> Gemm(2048->16): both weights above coremltools' 2048-element
    compression threshold (2304 and 32768 elements)."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Flatten", ["r1"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "conv_gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [init("w1", 32, 8, 3, 3), init("b1", 32), init("fc_w", 16, 2048), init("fc_b", 16)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class _Calibration(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(1)
        self._samples = iter([{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self._samples, None)


def qdq_model(tmp_path: Path, per_channel: bool) -> onnx.ModelProto:
    """onnxruntime's U8S8 QDQ quantization of conv_gemm_model. Per channel with reduce_range (7-bit weights):
    ORT's AVX2 u8s8 kernels add pairs of u8*s8 products in int16 and saturate with full-range per-channel
    weights (3 output steps off here), which is ORT's arithmetic, not QDQ's; reduce_range is ORT's remedy."""
    src, out = tmp_path / "float.onnx", tmp_path / f"qdq_{per_channel}.onnx"
    onnx.save(conv_gemm_model(), src)
    quantize_static(str(src), str(out), _Calibration(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(out)


def io_of(translated) -> dict:
    return {"inputs": [s.to_dict() for s in translated.inputs], "outputs": [s.to_dict() for s in translated.outputs]}


def lower(model: onnx.ModelProto, target: str, precision: str = "fp32"):
    """(ML model, io map) after coremltools' pass pipeline."""
    translated = translate(model, target)
    return to_mlmodel(translated, precision), io_of(translated)


def op_types(mlmodel) -> Counter:
    return Counter(op.op_type for op in mlmodel._mil_program.functions["main"].operations if op.op_type != "const")


def constexpr_ops(mlmodel) -> list:
    return [op for op in mlmodel._mil_program.functions["main"].operations if op.op_type.startswith("constexpr_")]


def run_all(runner, samples=SAMPLES) -> np.ndarray:
    return np.concatenate([runner.run(s)["y"] for s in samples])


def output_scale(model: onnx.ModelProto) -> float:
    """The scale of the QuantizeLinear in front of the graph output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer[model.graph.output[0].name]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return float(inits[dq.input[1]])


def package_size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


# ---------------------------------------------------------------------------------------------- QDQ lowering
@pytest.mark.parametrize("target, weight_op", [("iOS17", "constexpr_affine_dequantize"),
                                               ("iOS18", "constexpr_blockwise_shift_scale")])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qdq_model_keeps_int8_weights_and_matches_ort(tmp_path, per_channel, target, weight_op):
    """Weights stay int8 constexpr ops, activations quantize/dequantize pairs, after coremltools' passes (which
    keep both: nothing fuses them into conv/matmul, and the int32 casts between each pair are dead code it
    drops). Tolerance: 2 steps of the output's quantization scale. ORT runs the graph with int8 kernels
    (requantizing the int32 accumulator), the evaluator dequantizes and computes in fp32: the two round a
    value near a step boundary differently, and the output QuantizeLinear turns that into a whole step."""
    model = qdq_model(tmp_path, per_channel)
    mlmodel, io = lower(model, target)
    ops = op_types(mlmodel)
    # coremltools moves Flatten's reshape onto the uint8 tensor (int_op_canonicalization) and drops the
    # dequantize -> quantize pair that is left around it (same scale): one pair fewer than the ONNX graph's
    pairs = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert ops[weight_op] == 2 and ops["quantize"] == ops["dequantize"] == pairs - 1, ops
    reshape = next(op for op in mlmodel._mil_program.functions["main"].operations if op.op_type == "reshape")
    assert reshape.x.op.op_type == "quantize"
    assert "cast" not in ops
    data = "quantized_data" if target == "iOS17" else "data"
    weights = [op.inputs[data].val for op in constexpr_ops(mlmodel)]
    assert sorted(w.shape for w in weights) == [(16, 2048), (32, 8, 3, 3)]
    assert {w.dtype for w in weights} == {np.dtype(np.int8)}
    got = run_all(MilRunner(mlmodel._mil_program, io))
    want = run_all(OrtRunner(model))
    step = output_scale(model)
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * step)
    assert np.mean(np.abs(got - want) < step / 2) > 0.9  # mostly the very same quantized values


def test_qdq_package_stores_int8_weights(tmp_path):
    """The saved .mlpackage holds the weights as int8 (about a quarter of the fp32 bytes) and evaluates the same
    after loading back."""
    model = qdq_model(tmp_path, per_channel=True)
    mlmodel, io = lower(model, "iOS17")
    mlmodel.user_defined_metadata[IO_KEY] = io_metadata(io["inputs"], io["outputs"])
    mlmodel.save(str(tmp_path / "qdq.mlpackage"))
    float_model, _ = lower(conv_gemm_model(), "iOS17")
    float_model.save(str(tmp_path / "float.mlpackage"))
    assert package_size(tmp_path / "qdq.mlpackage") < 0.35 * package_size(tmp_path / "float.mlpackage")
    loaded = MilRunner.from_package(tmp_path / "qdq.mlpackage")
    np.testing.assert_array_equal(run_all(loaded), run_all(MilRunner(mlmodel._mil_program, io)))


def test_activation_qdq_needs_ios17(tmp_path):
    model = qdq_model(tmp_path, per_channel=False)
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert REGISTRY.facts("", "QuantizeLinear")["since"] == "iOS17"  # what the target's check reads
    with pytest.raises(Unsupported) as e:
        translate(model, "iOS16")
    assert e.value.reason == "deployment_target"
    assert f"node {first_q.name!r}" in str(e.value) and "needs deployment target iOS17" in str(e.value)
    assert "have iOS16" in str(e.value)


def weight_only_model(opset: int = 13, block: int = 0) -> tuple[onnx.ModelProto, dict]:
    """x -> Gemm with int8 weights behind a DequantizeLinear (weight-only quantization): per output channel,
    or in blocks of `block` input channels (opset 21)."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (16, 64)).astype(np.int8)
    zero = rng.integers(-3, 4, (16, 64 // block) if block else (16,)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, zero.shape).astype(np.float32)
    attrs = {"axis": 1, "block_size": block} if block else {"axis": 0}
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], **attrs),
             helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "weight_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])],
                              [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(scale, "ws"),
                               numpy_helper.from_array(zero, "wz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return model, {"x": rng.standard_normal((2, 64)).astype(np.float32)}


@pytest.mark.parametrize("opset, block, target, compressed", [
    (13, 0, "iOS15", None),  # no compressed weights before iOS16: the weight folds to fp32
    (13, 0, "iOS16", "constexpr_affine_dequantize"),
    (13, 0, "iOS18", "constexpr_blockwise_shift_scale"),
    (21, 16, "iOS17", None),  # blocked scales need iOS18's op: folds
    (21, 16, "iOS18", "constexpr_blockwise_shift_scale"),
])
def test_weight_only_dequantize(opset, block, target, compressed):
    model, feeds = weight_only_model(opset, block)
    mlmodel, io = lower(model, target)
    kinds = {op.op_type for op in constexpr_ops(mlmodel)}
    assert kinds == ({compressed} if compressed else set())
    assert "quantize" not in op_types(mlmodel) and "dequantize" not in op_types(mlmodel)
    got = MilRunner(mlmodel._mil_program, io).run(feeds)["y"]
    np.testing.assert_allclose(got, OrtRunner(model).run(feeds)["y"], rtol=1e-5, atol=1e-5)


def quantize_node_model(**attrs) -> onnx.ModelProto:
    zero = numpy_helper.from_array(np.array(0, np.int16), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q16", **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s"), zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_quantize_to_int16_is_unsupported():
    with pytest.raises(Unsupported, match="node 'q16': QuantizeLinear: quantizing to int16"):
        translate(quantize_node_model(), "iOS17")


@pytest.mark.parametrize("attrs, reason, words", [
    ({"block_size": 2, "axis": 1}, "unsupported_attribute_value", "block_size=2"),
    ({"output_dtype": TensorProto.INT16}, "unsupported_type", "output_dtype=INT16"),
    ({}, None, None),
])
def test_quantize_check_names_the_attribute(attrs, reason, words):
    check = REGISTRY.facts("", "QuantizeLinear")["check"]
    proto = helper.make_node("QuantizeLinear", ["x", "s"], ["q"], **attrs)
    found = check(proto, 21)
    assert [r for r, _ in found] == ([reason] if reason else [])
    assert all(words in message for _, message in found)


def test_dequantize_of_a_runtime_int_tensor_computes_in_float():
    """A uint8 graph input (computed as int32 in MIL) dequantizes exactly on any target, without iOS17's op."""
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.UINT8, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
                              [numpy_helper.from_array(np.array([0.1, 0.2, 0.5], np.float32), "s"),
                               numpy_helper.from_array(np.array([0, 128, 255], np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)
    feeds = {"x": np.random.default_rng(0).integers(0, 256, (2, 3, 4)).astype(np.uint8)}
    mlmodel, io = lower(model, "iOS15")
    np.testing.assert_allclose(MilRunner(mlmodel._mil_program, io).run(feeds)["y"], OrtRunner(model).run(feeds)["y"],
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------- compression
# (config, target, the constexpr op kinds it produces, the lowest cosine to the uncompressed model's outputs).
# Bounds come from this seeded model (measured: int8 0.99997, int4 blocks 0.997, 4-bit LUTs 0.988 uniform /
# 0.993 k-means, 3-bit grouped 0.984, 50% pruning 0.979, 2:4 pruning 0.954) with some margin.
COMPRESSION = {
    "linear-int8": ({"mode": "linear"}, "iOS16", {"constexpr_affine_dequantize"}, 0.999),
    "linear-int8-ios18": ({"mode": "linear", "symmetric": False}, "iOS18", {"constexpr_blockwise_shift_scale"}, 0.999),
    "linear-int4-block": ({"mode": "linear", "dtype": "int4", "granularity": "per_block", "block_size": 16}, "iOS18",
                          {"constexpr_blockwise_shift_scale"}, 0.99),
    "palettize-4bit-uniform": ({"mode": "palettize", "palette": "uniform"}, "iOS16", {"constexpr_lut_to_dense"}, 0.98),
    "palettize-4bit-kmeans": ({"mode": "palettize"}, "iOS16", {"constexpr_lut_to_dense"}, 0.98),
    "palettize-3bit-grouped": ({"mode": "palettize", "nbits": 3, "granularity": "per_grouped_channel",
                                "group_size": 4}, "iOS18", {"constexpr_lut_to_dense"}, 0.97),
    "prune-50": ({"mode": "prune"}, "iOS16", {"constexpr_sparse_to_dense"}, 0.95),
    "prune-2of4": ({"mode": "prune", "n_m_ratio": [2, 4]}, "iOS18", {"constexpr_sparse_to_dense"}, 0.9),
}


@pytest.fixture(scope="module")
def float_models() -> dict:
    """The uncompressed model per deployment target, with its io map and outputs (coremltools' compression
    works on a copy: the model is reused)."""
    models = {}
    for target in ("iOS16", "iOS18"):
        mlmodel, io = lower(conv_gemm_model(), target)
        mlmodel.user_defined_metadata[IO_KEY] = io_metadata(io["inputs"], io["outputs"])
        models[target] = (mlmodel, io, run_all(MilRunner(mlmodel._mil_program, io)))
    return models


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(min(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)))


@pytest.mark.parametrize("case", list(COMPRESSION))
def test_compression_modes(case, float_models, tmp_path):
    options, target, kinds, bound = COMPRESSION[case]
    if options.get("palette", "kmeans") == "kmeans" and options["mode"] == "palettize":
        pytest.importorskip("sklearn")
    mlmodel, io, reference = float_models[target]
    compressed, info = compress(mlmodel, CompressionConfig(**options), target)
    assert {op.op_type for op in constexpr_ops(compressed)} == kinds
    # conv's 8 input channels hold no 16-channel block: per_block skips that weight, as coremltools documents
    expect = (1, 1) if case == "linear-int4-block" else (2, 0)
    assert (info["weights_compressed"], info["weights_skipped"]) == expect, info
    assert 0 < info["bytes_after"] < info["bytes_before"]
    got = run_all(MilRunner(compressed._mil_program, io))
    assert min_cosine(got, reference) >= bound
    mlmodel.save(str(tmp_path / "float.mlpackage"))
    compressed.save(str(tmp_path / "compressed.mlpackage"))
    assert package_size(tmp_path / "compressed.mlpackage") < package_size(tmp_path / "float.mlpackage")
    np.testing.assert_array_equal(run_all(MilRunner.from_package(tmp_path / "compressed.mlpackage")), got)


def test_small_weights_are_skipped_and_counted(float_models):
    mlmodel, _, _ = float_models["iOS16"]
    _, info = compress(mlmodel, CompressionConfig(mode="linear", weight_threshold=4096), "iOS16")
    assert (info["weights_compressed"], info["weights_skipped"]) == (1, 1)  # conv's 2304 elements stay fp32
    assert info["bytes_skipped"] == 32 * 8 * 3 * 3 * 4
    _, info = compress(mlmodel, CompressionConfig(mode="linear", weight_threshold=100_000), "iOS16")
    assert (info["weights_compressed"], info["bytes_after"]) == (0, 0)


def test_compression_none_is_the_model_itself(float_models):
    mlmodel, _, _ = float_models["iOS16"]
    assert compress(mlmodel, CompressionConfig(), "iOS15") == (mlmodel, {"mode": "none"})
    assert CompressionConfig(mode="none", nbits=3).nbits == 3  # switched off with --set, its options may stay


@pytest.mark.parametrize("options, target, problems", [
    ({"mode": "linear"}, "iOS15", ["compression mode linear needs deployment target iOS16 or newer (have iOS15)"]),
    ({"mode": "linear", "dtype": "int4", "granularity": "per_block"}, "iOS17",
     ["compression dtype int4 needs deployment target iOS18 or newer (have iOS17)",
      "compression granularity per_block needs deployment target iOS18 or newer (have iOS17)"]),
    ({"mode": "palettize", "nbits": 3}, "macOS14", ["compression nbits 3 needs deployment target iOS18 or newer "
                                                    "(have macOS14)"]),
    ({"mode": "palettize", "granularity": "per_grouped_channel"}, "iOS16",
     ["compression granularity per_grouped_channel needs deployment target iOS18 or newer (have iOS16)"]),
    ({"mode": "prune", "n_m_ratio": [2, 4]}, "iOS16", []),
    ({"mode": "linear", "dtype": "int4"}, "iOS18", []),
])
def test_deployment_target_checks(options, target, problems):
    config = CompressionConfig(**options)
    assert check_compression(config, target) == problems
    if problems:
        with pytest.raises(RecipeError) as e:
            compress(object(), config, target)  # refused before the model is touched
        assert str(e.value) == problems[0]


def test_kmeans_without_scikit_learn_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(BadInputError, match=r"needs scikit-learn: pip install scikit-learn"):
        compress(object(), CompressionConfig(mode="palettize"), "iOS16")


@pytest.mark.parametrize("options, words", [
    ({"mode": "zip"}, "invalid target.options.compression.mode: Input should be 'none', 'linear'"),
    ({"mode": "linear", "modes": 1}, "unknown key 'target.options.compression.modes'; valid keys: block_size"),
    ({"mode": "palettize", "nbits": 5}, "compression.nbits: Input should be 1, 2, 3, 4, 6 or 8"),
    ({"mode": "linear", "nbits": 4}, "nbits does not apply to mode linear"),
    ({"mode": "linear", "granularity": "per_grouped_channel"},
     "granularity per_grouped_channel does not apply to mode linear (valid: per_tensor, per_channel, per_block)"),
    ({"mode": "linear", "block_size": 16}, "block_size needs granularity per_block"),
    ({"mode": "prune", "target_sparsity": 1.5}, "target_sparsity: Input should be less than or equal to 1"),
    ({"mode": "prune", "n_m_ratio": [4, 2]}, "n_m_ratio [4, 2]: n must be at most m"),
    ({"mode": "prune", "n_m_ratio": [2, 4], "target_sparsity": 0.5}, "set target_sparsity or n_m_ratio, not both"),
])
def test_config_errors_are_one_line(options, words):
    with pytest.raises(ValidationError) as e:
        CompressionConfig.model_validate(options)
    line = _one_line(e.value, "target.options.compression", CompressionConfig)
    assert "\n" not in line and words in line, line


def test_every_option_is_described():
    """`accelopt recipes steps` shows these descriptions: each names what it applies to."""
    assert all(field.description for field in CompressionConfig.model_fields.values())
