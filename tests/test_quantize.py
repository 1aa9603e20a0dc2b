"""The quantize step: static U8S8 QDQ accuracy, cached calibration, exclusions, the range guard on a YOLO-style
head, dynamic and INT4 weight-only modes, the speed guard (timing monkeypatched, so the tests do not depend on
this machine's speed), the accuracy search, and the one-line errors for bad input, through PassContext and the
CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from accelopt.data import Dataset
from accelopt.errors import BadInputError, RecipeError
from accelopt.metrics import TaskSpec, compare_outputs
from accelopt.optimizers import PassContext, get_pass
from accelopt.optimizers import quantize as quantize_module
from accelopt.optimizers.quantization import calibration as calibration_module
from accelopt.optimizers.quantization import prepare as prepare_module
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner
from tests import models

Quantize = get_pass("quantize")
FAST = {"speed_runs": 2}
DETECTION = TaskSpec(kind="detection", axis=1, boxes=(0, 4), scores=(4, None))


def cpu(*flags: str, name: str = "onnxruntime") -> SimpleNamespace:
    """A target whose CPU flags the test chooses, so decisions do not depend on the machine running the tests."""
    return SimpleNamespace(name=name, capabilities=lambda: {"int8": bool({"avx512_vnni", "avx_vnni"} & set(flags)),
                                                            "cpu_flags": list(flags)})


VNNI = cpu("avx2", "avx512_vnni")


def data(shape: tuple[int, ...], n: int = 16, seed: int = 0, random: bool = False) -> Dataset:
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return Dataset({"x": x}, None, f"test seed {seed}", random=random)


def quantize(model: onnx.ModelProto, tmp_path: Path, config: dict[str, Any] | None = None,
             **ctx_fields: Any) -> tuple[onnx.ModelProto, PassContext]:
    """Run the step; it must leave its input untouched and return a new checker-valid model."""
    ctx = PassContext(tmp_dir=tmp_path, **{"target": VNNI, **ctx_fields})
    before = model.SerializeToString()
    out = Quantize().apply(model, Quantize.Config(**{**FAST, **(config or {})}), ctx)
    assert model.SerializeToString() == before and out is not model
    onnx.checker.check_model(out)
    return out, ctx


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def float_weights(model: onnx.ModelProto) -> set[str]:
    """Conv/Gemm nodes whose weight is a plain initializer, i.e. that were left in float."""
    inits = {t.name for t in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in inits}


def metrics(ref_model: onnx.ModelProto, model: onnx.ModelProto, ds: Dataset, task: TaskSpec | None = None) -> dict:
    ref, out = (run_all(OrtRunner(m, threads=1), ds.feeds) for m in (ref_model, model))
    return {m.name: m for m in compare_outputs(ref, out, task=task, precision="int8")}


def timing(**ms: float):
    """A stand-in for quantize.medians: fixed milliseconds per candidate name."""
    return lambda models_, ctx, runs: {name: ms[name.replace("-", "_")] for name in models_}


# --- static INT8 -------------------------------------------------------------------------------------------------


def test_static_u8s8_per_channel_on_a_conv_stack(tmp_path):
    model = models.conv_stack()
    out, ctx = quantize(model, tmp_path, {"speed_guard": False}, calibration=data((3, 16, 16)))
    d = ctx.decisions
    assert (d["activation_type"], d["weight_type"], d["per_channel"]) == ("QUInt8", "QInt8", True)
    assert d["reduce_range"]["value"] is False and "avx512_vnni" in d["reduce_range"]["why"]
    assert d["quantized_nodes"]["Conv"] == 5 and d["excluded"] == {} and d["range_guard"] == []
    assert ops(out)["QuantizeLinear"] >= 6 and not float_weights(out)
    scales = {t.name: t for t in out.graph.initializer}
    assert list(scales["w1_scale"].dims) == [16]  # one scale per output channel
    assert metrics(model, out, data((3, 16, 16), seed=1))["y"].sqnr_db >= 25
    assert Quantize().output_precision(Quantize.Config()) == "int8"


@pytest.mark.parametrize("flags, config, expected", [
    (("avx2",), {}, True),  # x86 without VNNI: 7-bit weights avoid saturation
    (("avx2", "avx512_vnni"), {}, False),
    (("asimd", "asimddp"), {}, False),  # not x86
    (("avx2",), {"reduce_range": False}, False),  # the recipe wins
    (("avx2",), {"activation_type": "int8"}, False),  # only U8S8 saturates
])
def test_reduce_range_only_without_vnni(tmp_path, flags, config, expected):
    settings = quantize_module.resolve_settings(Quantize.Config(**config), PassContext(tmp_path, target=cpu(*flags)))
    assert settings.reduce_range is expected and settings.reduce_range_why


def test_tensorrt_profile_emits_symmetric_qdq_with_float_bias(tmp_path):
    out, ctx = quantize(models.conv_stack(), tmp_path, calibration=data((3, 16, 16)), target=cpu(name="tensorrt"))
    d = ctx.decisions
    assert (d["profile"], d["activation_type"], d["weight_type"]) == ("tensorrt", "QInt8", "QInt8")
    assert d["speed"].startswith("not measured")
    inits = {t.name: t for t in out.graph.initializer}
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in out.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(np.all(z == 0) for z in zero_points)
    assert all(n.input[2] in inits for n in out.graph.node if n.op_type == "Conv")  # bias: float initializer


def test_calibration_runs_once_and_is_reused_from_the_cache(tmp_path, monkeypatch):
    calls = []
    real = calibration_module.create_calibrator
    monkeypatch.setattr(calibration_module, "create_calibrator", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, cal, config = models.conv_stack(), data((3, 16, 16)), {"speed_guard": False}
    first, ctx1 = quantize(model, tmp_path / "a", config, calibration=cal, cache_dir=tmp_path / "cache")
    second, ctx2 = quantize(model, tmp_path / "b", config, calibration=cal, cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    assert (ctx1.decisions["calibration"]["cached"], ctx2.decisions["calibration"]["cached"]) == (False, True)
    assert first.SerializeToString() == second.SerializeToString()
    quantize(model, tmp_path / "c", config, calibration=data((3, 16, 16), seed=2), cache_dir=tmp_path / "cache")
    assert len(calls) == 2  # other data, other ranges
    for entry in (tmp_path / "cache").rglob("*.json"):
        entry.write_text("{not json")
    _, ctx = quantize(model, tmp_path / "d", config, calibration=cal, cache_dir=tmp_path / "cache")
    assert len(calls) == 3 and any("damaged calibration cache entry" in n for n in ctx.notes)


def test_exclusions_by_name_op_type_and_regex(tmp_path):
    config = {"speed_guard": False, "exclude_nodes": ["conv1"], "exclude_op_types": ["Gemm"],
              "exclude_regex": "^conv[34]$"}
    out, ctx = quantize(models.conv_stack(), tmp_path, config, calibration=data((3, 16, 16)))
    assert ctx.decisions["excluded"] == {"conv1": "exclude_nodes", "conv3": "exclude_regex: ^conv[34]$",
                                         "conv4": "exclude_regex: ^conv[34]$", "fc": "exclude_op_types: Gemm"}
    assert float_weights(out) == {"conv1", "conv3", "conv4", "fc"}
    only, _ = quantize(models.conv_stack(), tmp_path, {"speed_guard": False, "include_nodes": ["conv2"]},
                       calibration=data((3, 16, 16)))
    assert float_weights(only) == {"conv0", "conv1", "conv3", "conv4", "fc"}
    with pytest.raises(RecipeError, match="exclude_nodes names no node of the model.*: conv9"):
        quantize(models.conv_stack(), tmp_path, {"exclude_nodes": ["conv9"]}, calibration=data((3, 16, 16)))


@pytest.mark.parametrize("guard", [True, False])
def test_range_guard_keeps_the_detection_head_concat_float(tmp_path, guard):
    """Boxes 0..320 and scores 0..1 under one Concat scale: without the guard the scores are crushed."""
    model = models.yolo_like_head()
    out, ctx = quantize(model, tmp_path, {"speed_guard": False, "range_guard": guard},
                        calibration=data((3, 8, 8)), task=DETECTION)
    scores = metrics(model, out, data((3, 8, 8), seed=1), DETECTION)["y[scores]"]
    if guard:
        (found,) = ctx.decisions["range_guard"]
        assert found["node"] == "head_concat" and set(found["input_ranges"]) == {"boxes", "scores"}
        assert ctx.decisions["excluded"] == {"head_concat": f"range_guard: input ranges differ {found['ratio']}x"}
        assert scores.cosine > 0.9
    else:
        assert "range_guard" not in ctx.decisions and scores.cosine < 0.9


def test_contrib_ops_after_fuse_and_failed_symbolic_shapes(tmp_path, monkeypatch):
    """A fused BERT layer (Attention, SkipLayerNormalization) whose symbolic shape inference fails: the step
    retries without it and still quantizes the MatMuls."""
    fuse = get_pass("fuse")
    fused = fuse().apply(models.tiny_bert_like(), fuse.Config(ort="off"), PassContext(tmp_path))
    assert "Attention" in ops(fused)
    real = prepare_module.quant_pre_process

    def no_symbolic(*args, skip_symbolic_shape=False, **kwargs):
        if not skip_symbolic_shape:
            raise RuntimeError("symbolic shape inference failed")
        return real(*args, skip_symbolic_shape=True, **kwargs)

    monkeypatch.setattr(prepare_module, "quant_pre_process", no_symbolic)
    out, ctx = quantize(fused, tmp_path, {"speed_guard": False}, calibration=data((8, 16)))
    assert any("retried without it" in note for note in ctx.notes)
    assert ops(out)["DequantizeLinear"] and metrics(fused, out, data((8, 16), seed=1))["y"].cosine > 0.9


# --- calibration data --------------------------------------------------------------------------------------------


def test_random_or_few_calibration_samples_warn(tmp_path):
    _, ctx = quantize(models.conv_stack(), tmp_path, {"speed_guard": False},
                      calibration=data((3, 16, 16), n=4, random=True))
    assert any("RANDOM" in n for n in ctx.notes) and any("only 4 calibration sample(s)" in n for n in ctx.notes)


def test_nan_or_misshapen_calibration_data_is_bad_input(tmp_path):
    bad = data((3, 16, 16))
    bad.feeds["x"][3, 0, 0, 0] = np.nan
    with pytest.raises(BadInputError, match="calibration data for input 'x' holds 1 NaN/Inf"):
        quantize(models.conv_stack(), tmp_path, calibration=bad)
    with pytest.raises(BadInputError, match="calibration data does not fit the model"):
        quantize(models.conv_stack(), tmp_path, calibration=data((3, 8, 8)))


# --- other modes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, precision, kernel", [("dynamic", "int8", "MatMulInteger"),
                                                      ("weight-only", "int4", "MatMulNBits")])
def test_dynamic_and_weight_only_modes(tmp_path, mode, precision, kernel):
    model = models.matmul_mlp(hidden=128)
    out, ctx = quantize(model, tmp_path, {"mode": mode, "speed_guard": False})
    assert ctx.decisions["quantized_nodes"] == {kernel: 2}
    assert Quantize().output_precision(Quantize.Config(mode=mode)) == precision
    assert metrics(model, out, data((8, 128), n=4))["y"].cosine > 0.98


# --- speed guard -------------------------------------------------------------------------------------------------


def test_speed_guard_keeps_the_float_model_when_int8_is_slower(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "medians", timing(float=1.0, quantized=2.0))
    model = models.conv_stack()
    out, ctx = quantize(model, tmp_path, calibration=data((3, 16, 16)))
    assert "QuantizeLinear" not in ops(out)
    assert metrics(model, out, data((3, 16, 16), n=2))["y"].max_abs == 0
    assert "int8 is not faster than float (0.50x" in ctx.decisions["kept_float"]
    assert ctx.decisions["speed"]["speedup"] == 0.5 and "islands" in ctx.decisions["speed"]["why_slower"]


def test_speed_aware_variant_leaves_island_ops_in_float(tmp_path, monkeypatch):
    """InstanceNormalization has no int8 kernel: a real Q/DQ island, excluded by the speed-aware variant."""
    monkeypatch.setattr(quantize_module, "medians", timing(float=1.0, quantized=2.0, speed_aware=0.5))
    out, ctx = quantize(models.conv_norm_conv(), tmp_path, calibration=data((8, 8, 8)))
    speed = ctx.decisions["speed"]
    assert speed["why_slower"]["islands"] == {"InstanceNormalization": 1}
    assert (speed["fastest"], speed["speedup"]) == ("speed-aware", 2.0)
    assert ctx.decisions["excluded"] == {"norm": "speed-aware: InstanceNormalization ran as a float Q/DQ island"}
    assert not float_weights(out) and "kept_float" not in ctx.decisions


def test_speed_guard_measures_for_real(tmp_path):
    """No stand-in timing: whatever this machine measures, a slower int8 model never ships."""
    out, ctx = quantize(models.conv_norm_conv(), tmp_path, calibration=data((8, 8, 8)))
    speed = ctx.decisions["speed"]
    assert {"float_ms", "quantized_ms", "speedup", "fastest", "batch"} <= set(speed) and speed["batch"] == 1
    if "kept_float" in ctx.decisions:
        assert speed["speedup"] < 1.0 and "QuantizeLinear" not in ops(out)
    else:
        assert speed["speedup"] >= 1.0 and "QuantizeLinear" in ops(out)


# --- accuracy search ---------------------------------------------------------------------------------------------


def test_accuracy_search_finds_the_outlier_convs_and_a_recipe_can_pin_them(tmp_path, monkeypatch):
    calls = []
    real = calibration_module.create_calibrator
    monkeypatch.setattr(calibration_module, "create_calibrator", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, cal, ev = models.outlier_conv_model(), data((8, 16, 16)), data((8, 16, 16), seed=1)
    # The library's full op set: floating conv4 alone lowers SQNR (27.8 -> 22.8 dB); the search must still
    # reach {conv3, conv4} (39 dB) by trying the next culprit together with it.
    base = {"speed_guard": False}
    out, ctx = quantize(model, tmp_path / "a", {**base, "accuracy": {"metric": "sqnr", "min_db": 35}},
                        calibration=cal, evaluation=ev, cache_dir=tmp_path / "cache")
    search = ctx.decisions["accuracy_search"]
    assert search["met"] and search["score"] >= 35 and sorted(search["fallbacks"]) == ["conv3", "conv4"]
    assert [r["nodes"] for r in search["ranking"][:2]] == [["conv4"], ["conv3"]]
    assert float_weights(out) == {"conv3", "conv4"}
    pinned, _ = quantize(model, tmp_path / "b", {**base, "exclude_nodes": search["fallbacks"]},
                         calibration=cal, cache_dir=tmp_path / "cache")
    assert pinned.SerializeToString() == out.SerializeToString()
    assert len(calls) == 1  # every candidate of the search and the pinned rerun read the cached ranges


def sixteen_bit_weights(model: onnx.ModelProto) -> set[str]:
    """Conv/Gemm nodes whose weight comes through a 16-bit DequantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    wide = {TensorProto.INT16, TensorProto.UINT16}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in dq
            and inits[dq[n.input[1]].input[0]].data_type in wide}


def test_int16_fallback_needs_one_group_where_float_needs_two(tmp_path):
    """Floating conv4 alone leaves its input tensor int8 (its neighbour conv3 keeps it quantized); 16 bits on
    conv4's activations and weights fix the outlier by themselves, so the int16 search stops after one group."""
    model, cal, ev = models.outlier_conv_model(), data((8, 16, 16)), data((8, 16, 16), seed=1)
    base = {"speed_guard": False}
    out, ctx = quantize(model, tmp_path / "a", {**base, "accuracy": {"metric": "sqnr", "min_db": 35,
                                                                      "fallback": "int16"}},
                        calibration=cal, evaluation=ev, cache_dir=tmp_path / "cache")
    search = ctx.decisions["accuracy_search"]
    assert search["met"] and search["fallbacks"] == ["conv4"] and search["pin_with"] == "int16_nodes"
    assert sixteen_bit_weights(out) == {"conv4"} and not float_weights(out)
    assert ctx.decisions["int16"] == {"conv4": "accuracy search"} and max(o.version for o in out.opset_import) >= 21
    assert metrics(model, out, ev)["y"].sqnr_db >= 35
    pinned, _ = quantize(model, tmp_path / "b", {**base, "int16_nodes": ["conv4"]}, calibration=cal,
                         cache_dir=tmp_path / "cache")
    assert pinned.SerializeToString() == out.SerializeToString()


def test_speed_guard_names_16_bit_nodes_and_floats_them_in_the_speed_aware_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "medians", timing(float=1.0, quantized=2.0, speed_aware=0.5))
    out, ctx = quantize(models.outlier_conv_model(), tmp_path, {"int16_nodes": ["conv4"]},
                        calibration=data((8, 16, 16)))
    why = ctx.decisions["speed"]["why_slower"]
    # conv4, and conv3, whose output is conv4's 16-bit input (ORT converts back to 8 bits after conv4)
    assert why["int16_islands"] == 2 and "Conv" not in why["islands"] and "16-bit Q/DQ" in why["reason"]
    assert ctx.decisions["speed"]["fastest"] == "speed-aware" and "int16" not in ctx.decisions
    assert float_weights(out) == {"conv4"} and not sixteen_bit_weights(out)


def test_int16_nodes_must_exist_and_need_static_mode(tmp_path):
    with pytest.raises(RecipeError, match="int16_nodes names no node"):
        quantize(models.conv_stack(), tmp_path, {"int16_nodes": ["nope"], "speed_guard": False},
                 calibration=data((3, 16, 16)))
    for config in ({"mode": "dynamic", "int16_nodes": ["a"]},
                   {"mode": "dynamic", "accuracy": {"metric": "cosine", "max_drop": 0.01, "fallback": "int16"}}):
        with pytest.raises(ValidationError, match="int16 fallback needs mode static"):
            Quantize.Config(**config)


def test_cosine_mean_scores_the_mean_per_token_cosine_of_an_embedding(tmp_path):
    """A dynamic search for mean token cosine: its score is the per-token mean, which lies above the worst
    token's cosine, and a target below the all-int8 score means nothing falls back."""
    model, ev = models.matmul_mlp(hidden=32), data((8, 32), n=8, seed=2)
    task = TaskSpec(kind="embedding")
    out, ctx = quantize(model, tmp_path, {"mode": "dynamic", "speed_guard": False,
                                          "accuracy": {"metric": "cosine_mean", "max_drop": 0.5}},
                        evaluation=ev, task=task)
    search = ctx.decisions["accuracy_search"]
    m = metrics(model, out, ev, task)["y"]
    assert search["score"] == pytest.approx(m.cosine_mean) and m.cosine_mean > m.cosine
    assert search["met"] and search["fallbacks"] == []


def test_static_quantize_after_ort_fusion_types_the_tensors_behind_contrib_ops(tmp_path):
    """After `fuse` at ORT's 'extended' level the digits CNN holds FusedConv (com.microsoft): ONNX shape inference
    cannot type anything downstream, the calibrator skipped those tensors and quantize_static failed on the
    head's bias. With ORT's own types filled in, the head quantizes and the fused convs are named as float."""
    root = Path(__file__).resolve().parents[1] / "examples" / "digits"
    Fuse = get_pass("fuse")
    fused = Fuse().apply(onnx.load(str(root / "digits_cnn.onnx")), Fuse.Config(), PassContext(tmp_dir=tmp_path))
    assert "FusedConv" in ops(fused)
    x = np.load(root / "calibration.npz")["input"][:16]
    out, ctx = quantize(fused, tmp_path / "q", {"speed_guard": False}, calibration=Dataset({"input": x}, None, "digits"))
    assert ctx.decisions["quantized_nodes"].get("Gemm") == 1
    assert any("fused layer(s)" in note and "stay float" in note for note in ctx.notes)


def test_an_old_opset_model_is_converted_for_per_channel_weights(tmp_path):
    """PP-OCR's classifier is opset 10: ORT's quantizer wrote DequantizeLinear with `axis` anyway and the model did
    not load. The step converts it to opset 13 first."""
    model = models.conv_stack()
    model.opset_import[0].version = 11
    out, ctx = quantize(model, tmp_path, {"speed_guard": False}, calibration=data((3, 16, 16)))
    assert ctx.decisions["opset"]["from"] == 11 and ctx.decisions["per_channel"] is True
    assert any(a.name == "axis" for n in out.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute)
    assert metrics(model, out, data((3, 16, 16), seed=1))["y"].sqnr_db > 20


def test_accuracy_metric_needs_labels(tmp_path):
    with pytest.raises(RecipeError, match="needs labels"):
        quantize(models.conv_stack(), tmp_path, {"accuracy": {"metric": "accuracy", "max_drop": 0.01}},
                 calibration=data((3, 16, 16)))


@pytest.mark.parametrize("config, message", [
    ({"accuracy": {"metric": "sqnr"}}, "metric sqnr needs min_db"),
    ({"accuracy": {"metric": "cosine"}}, "metric cosine needs max_drop"),
    ({"exclude_regex": "conv["}, "not a regular expression"),
    ({"block_size": 100}, "power of two"),
    ({"mode": "dynamic", "activation_type": "int8"}, "uint8 only"),
    ({"modes": "static"}, "Extra inputs are not permitted"),
])
def test_config_errors(config, message):
    with pytest.raises(ValidationError, match=message):
        Quantize.Config(**config)


# --- through the CLI ---------------------------------------------------------------------------------------------

CLI_FAST = ["--set", "validation.runs=2", "--set", "validation.warmup=1", "--set", "steps.quantize.speed_runs=2"]


@pytest.fixture
def conv_files(tmp_path) -> tuple[Path, Path]:
    model, npz = tmp_path / "conv.onnx", tmp_path / "data.npz"
    onnx.save(models.conv_stack(), str(model))
    np.savez(npz, x=data((3, 16, 16)).feeds["x"])
    return model, npz


def _quantize_step(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return next(s for s in report["steps"] if s["name"] == "quantize")


def test_cpu_int8_recipe_end_to_end(cli, conv_files, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "medians", timing(float=2.0, quantized=1.0))
    model, npz = conv_files
    out = tmp_path / "out"
    r = cli("convert", model, "-r", "cpu-int8", "--data", npz, "-o", out, "--json", *CLI_FAST,
            "--set", "gates.min_speedup=null")  # real timing of a 0.1 ms model is noise here
    assert r.code == 0, r.err
    step = _quantize_step(out)
    assert step["precision"] == "int8" and step["decisions"]["speed"]["fastest"] == "quantized"
    assert step["worst"]["cosine"] > 0.99
    assert "QuantizeLinear" in ops(onnx.load(str(out / "model.onnx")))


def test_int4_recipe_records_int4_precision(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "medians", timing(float=2.0, quantized=1.0))
    model = tmp_path / "mlp.onnx"
    onnx.save(models.matmul_mlp(hidden=128), str(model))
    out = tmp_path / "out"
    r = cli("convert", model, "-r", "int4-weight-only", "-o", out, "--json", *CLI_FAST)
    assert r.code == 0, r.err
    assert _quantize_step(out)["precision"] == "int4"
    assert ops(onnx.load(str(out / "model.onnx")))["MatMulNBits"] == 2


def test_on_slower_fail_exits_3(cli, conv_files, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "medians", timing(float=1.0, quantized=2.0))
    model, npz = conv_files
    r = cli("convert", model, "-r", "cpu-int8", "--data", npz, "-o", tmp_path / "out", *CLI_FAST,
            "--set", "steps.quantize.on_slower=fail")
    assert r.code == 3, r.err
    assert "int8 is not faster than float" in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("quantized_input, message", [
    (True, "model is already quantized ("),
    (False, "quantize mode static needs calibration data: declare data.calibration or pass --data"),
])
def test_bad_input_exits_2(cli, tmp_path, quantized_input, message):
    model = models.conv_stack()
    if quantized_input:
        model, _ = quantize(model, tmp_path, {"speed_guard": False}, calibration=data((3, 16, 16)))
    path, recipe = tmp_path / "m.onnx", tmp_path / "r.yaml"
    onnx.save(model, str(path))
    recipe.write_text("version: 1\nsteps:\n  - quantize: {}\n")
    args = ["--data", tmp_path / "d.npz"] if quantized_input else []
    np.savez(tmp_path / "d.npz", x=data((3, 16, 16)).feeds["x"])
    r = cli("convert", path, "-r", recipe, "-o", tmp_path / "out", *args)
    assert r.code == 2, r.err
    assert message in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_keeps_json_stdout_clean_and_differs_from_minmax(cli, conv_files, tmp_path,
                                                                              monkeypatch, method):
    """ORT's histogram calibrators print() progress; entropy with ORT's default bins equals minmax."""
    monkeypatch.setattr(quantize_module, "medians", timing(float=2.0, quantized=1.0))
    model, npz = conv_files
    outs = {}
    for m in ("minmax", method):
        r = cli("convert", model, "-r", "cpu-int8", "--data", npz, "-o", tmp_path / m, "--json", *CLI_FAST,
                "--set", f"steps.quantize.calibration={m}", "--set", "gates.min_speedup=null")
        assert r.code == 0, r.err
        json.loads(r.out)  # nothing but the report on stdout
        outs[m] = (tmp_path / m / "model.onnx").read_bytes()
    assert outs[method] != outs["minmax"]


def test_search_groups_stay_per_conv_through_silu():
    """YOLO-style SiLU (Sigmoid * Mul) between convs must not merge every conv into one quantizer group."""
    from accelopt.optimizers.quantization.accuracy import quantizer_groups_for
    from accelopt.optimizers.quantization.quantizers import Job
    from accelopt.optimizers.quantization.settings import REMOVABLE, STATIC_OPS

    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(3):
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"y{i}"], name=f"mul{i}")]
        x = f"y{i}"
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 8, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    job = Job(model, None, {}, None, frozenset(STATIC_OPS) - REMOVABLE)
    assert sorted(g.nodes for g in quantizer_groups_for(job, "static")) == [["conv0"], ["conv1"], ["conv2"]]
