"""INT8 lowering of QDQ models for TVM: which ops integer_ops lowers and which it leaves in float, equality with the
float computation (onnxruntime without graph optimizations runs the QDQ graph literally), and whether MetaSchedule's
design spaces tensorize with VNNI on a znver4 target but not on znver3 (compile-only: nothing runs AVX-512)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from accelopt.data import Dataset  # noqa: E402
from accelopt.optimizers import PassContext, get_pass  # noqa: E402
from accelopt.targets.tvm.env import _GPU_INTRINSICS, host_mcpu  # noqa: E402
from accelopt.targets.tvm.frontend import import_onnx  # noqa: E402
from accelopt.targets.tvm.integer import integer_ops, vnni_applies  # noqa: E402
from tests import models  # noqa: E402

HOST = tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu(), "num-cores": 2})  # the untuned builds run here


def _qdq_model() -> onnx.ModelProto:
    """Channels off the 16x4 VNNI grid on purpose: a per-channel int8 QDQ conv (6 -> 20, stride 2) and a Gemm on
    its flattened output, a float conv, and a conv with asymmetric uint8 weights (stays float). No QuantizeLinear
    after them, so the outputs are the float values integer_ops must reproduce."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in {
        "x_s": np.float32(0.05), "x_z": np.uint8(120),
        "wa": rng.integers(-127, 128, (20, 6, 3, 3), dtype=np.int8),
        "wa_s": rng.uniform(0.001, 0.01, 20).astype(np.float32), "wa_z": np.zeros(20, np.int8),
        "ba": rng.standard_normal(20).astype(np.float32),
        "wf": rng.standard_normal((4, 6, 1, 1)).astype(np.float32),
        "wu": rng.integers(0, 256, (4, 6, 3, 3), dtype=np.uint8), "wu_s": np.float32(0.01), "wu_z": np.uint8(128),
        "f_s": np.float32(0.1), "f_z": np.uint8(100),
        "wg": rng.integers(-127, 128, (10, 500), dtype=np.int8),
        "wg_s": rng.uniform(0.001, 0.01, 10).astype(np.float32), "wg_z": np.zeros(10, np.int8),
        "bg": rng.standard_normal(10).astype(np.float32),
    }.items()]
    node = helper.make_node
    nodes = [
        node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]), node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
        node("DequantizeLinear", ["wa", "wa_s", "wa_z"], ["wad"], axis=0),
        node("Conv", ["xd", "wad", "ba"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
        node("Conv", ["x", "wf"], ["float_conv"]),
        node("DequantizeLinear", ["wu", "wu_s", "wu_z"], ["wud"]),
        node("Conv", ["xd", "wud"], ["uint8_conv"], pads=[1, 1, 1, 1]),
        node("Flatten", ["conv"], ["flat"]),
        node("QuantizeLinear", ["flat", "f_s", "f_z"], ["fq"]), node("DequantizeLinear", ["fq", "f_s", "f_z"], ["fd"]),
        node("DequantizeLinear", ["wg", "wg_s", "wg_z"], ["wgd"], axis=0),
        node("Gemm", ["fd", "wgd", "bg"], ["gemm"], transB=1),
    ]
    outputs = {"conv": [1, 20, 5, 5], "float_conv": [1, 4, 9, 9], "uint8_conv": [1, 4, 9, 9], "gemm": [1, 10]}
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 9, 9])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(mod, x: np.ndarray) -> list[np.ndarray]:
    out = relax.VirtualMachine(tvm.compile(mod, target=HOST), tvm.cpu())["main"](tvm.runtime.tensor(x))
    return [o.numpy() for o in out] if type(out).__name__ == "Array" else [out.numpy()]


def _ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """The QDQ graph run literally (DequantizeLinear + float Conv), not through ORT's fused integer kernels."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


def _ops(mod) -> list[str]:
    names: list[str] = []

    def visit(expr):
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            names.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


@pytest.fixture(scope="module")
def cpu_intrinsics():
    """MetaSchedule imports every tensor intrinsic; parsing the GPU ones as TVMScript took 20 of the 24 s here."""
    with pytest.MonkeyPatch.context() as patch:
        for name in _GPU_INTRINSICS:
            patch.setitem(sys.modules, f"tvm.s_tir.tensor_intrin.{name}", ModuleType(name))
        importlib.import_module("tvm.s_tir.tensor_intrin")


@pytest.fixture(scope="module")
def lowered():
    model = _qdq_model()
    mod = import_onnx(model)
    new, stats = integer_ops(mod)
    return model, mod, new, stats


def test_counts_the_lowered_ops_and_leaves_float_and_uint8_weight_convs_alone(lowered):
    _, mod, new, stats = lowered
    assert stats.lowered == {"conv2d": 1, "matmul": 1}
    assert stats.kept_float == {"weight is uint8, not int8": 1}
    assert stats.summary() == "2 of 3 QDQ conv/matmul ops lowered to int8 (float: 1 weight is uint8, not int8)"
    assert _ops(mod).count("relax.nn.conv2d") == 3 and _ops(new).count("relax.nn.conv2d") == 2
    assert "relax.matmul" not in _ops(new)


def test_equals_the_float_computation_on_the_dequantized_tensors(lowered):
    model, mod, new, _ = lowered
    x = np.random.default_rng(1).standard_normal((1, 6, 9, 9)).astype(np.float32)
    ref, stock, ours = _ort(model, x), _run(mod, x), _run(new, x)
    for r, s, o in zip(ref, stock, ours):
        scale = float(r.max() - r.min())
        assert np.abs(o - r).max() < 1e-5 * scale and np.abs(o - s).max() < 1e-5 * scale


def _quantized(tmp_path) -> onnx.ModelProto:
    """conv_stack through accelopt's quantize step (static QDQ, per-channel int8 weights, u8 activations)."""
    model = models.conv_stack(channels=16, size=16, layers=2)
    target = SimpleNamespace(name="onnxruntime", capabilities=lambda: {"int8": True, "cpu_flags": ["avx512_vnni"]})
    calibration = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize = get_pass("quantize")
    ctx = PassContext(tmp_dir=Path(tmp_path), target=target, calibration=Dataset({"x": calibration}, None, "test"))
    return quantize().apply(model, quantize.Config(speed_guard=False), ctx)


def test_a_quantize_step_model_runs_every_conv_and_the_gemm_in_int8(tmp_path):
    qdq = _quantized(tmp_path)
    new, stats = integer_ops(import_onnx(qdq))
    assert stats.lowered == {"conv2d": 3, "matmul": 1} and stats.kept_float == {}
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (ref,), (ours,) = _ort(qdq, x), _run(new, x)
    y_scale = float(numpy_helper.to_array(next(t for t in qdq.graph.initializer if t.name == "y_scale")))
    # The output is quantized: a float rounding difference may move a value by one step. (ORT's optimized graph,
    # with its fused integer kernels, lands up to 3 steps away from its own unoptimized run here.)
    assert np.abs(ours - ref).max() <= y_scale * 1.001


@pytest.mark.parametrize("mcpu, vnni", [("znver4", True), ("znver3", False)])
def test_vnni_tensorizes_the_int8_kernels_only_on_a_vnni_target(cpu_intrinsics, lowered, mcpu, vnni):
    _, mod, new, _ = lowered
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    with target:
        stock, ours = (relax.get_pipeline("zero")(m) for m in (mod, new))
    report = vnni_applies(ours, target)
    assert report["target_has_vnni"] is vnni and report["int8_tiled_tasks"] == 2
    assert report["vnni_tasks"] == (2 if vnni else 0)
    assert all(t["vpdpbusd"] > 0 for t in report["tasks"] if t["vnni"])
    assert vnni_applies(stock, target)["vnni_tasks"] == 0  # imported as is, the convs run in float


def test_the_target_lowers_int8_on_vnni_targets_and_says_so(cpu_intrinsics, tmp_path):
    """auto: int8 kernels on an AVX-512 VNNI target (compiled here, not run), float on this AVX2 host; on
    forces them, and the result still matches ORT."""
    from accelopt.targets import get_target
    from accelopt.targets.onnxruntime import OrtRunner

    qdq = _quantized(tmp_path)
    vnni = get_target("tvm", {"mcpu": "znver4", "threads": 1}).lower(qdq, tmp_path / "znver4")
    [row] = vnni.meta["int8"]
    assert row["target_avx512_vnni"] and row["int8_ops"] == row["qdq_ops"] == 4 and row["vnni_kernels"] == 4
    assert any("VNNI tensorizes 4 of 4 int8 conv/matmul kernels on znver4" in line for line in vnni.meta["log"])

    plain = get_target("tvm", {"mcpu": "znver3", "threads": 1}).lower(qdq, tmp_path / "auto")
    assert plain.meta["int8"][0]["int8_ops"] == 0 and "no AVX-512 VNNI" in " ".join(plain.meta["log"])

    target = get_target("tvm", {"threads": 1, "int8": "on"})
    forced = target.lower(qdq, tmp_path / "on")
    assert forced.meta["int8"][0]["int8_ops"] == 4
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    y_scale = float(numpy_helper.to_array(next(t for t in qdq.graph.initializer if t.name == "y_scale")))
    got, want = target.runner(forced, threads=1).run(x)["y"], OrtRunner(qdq, threads=1).run(x)["y"]
    assert np.abs(got - want).max() <= 3 * y_scale  # ORT's fused integer kernels round differently (see above)
