"""`quantize`: INT8 (static QDQ or dynamic) and INT4 weight-only quantization with onnxruntime.quantization,
guarded so that it never ships a broken or slower model silently.

Why each part is there (measurements: the project's quantization notes, sections 1-8):

- Profiles pick the types per target. ORT CPU: QDQ, uint8 activations / int8 weights, per-channel (3.6x over
  FP32 on a conv stack; QOperator S8S8 was 5x slower); `reduce_range` only on x86 without VNNI, where it
  avoids VPMADDUBSW saturation (on VNNI it costs 6 dB and buys nothing). TensorRT: symmetric int8, float bias
  (its parser rejects an int32 bias DequantizeLinear), explicit Q/DQ around weighted ops.
- `quant_pre_process` first: Conv+BN fusion and the shape inference the quantizer needs.
- Calibration runs once; its ranges are cached by content (pre-processed model, method, options, data) and
  every re-quantization (exclusions, the speed-aware variant, the accuracy search) reads them back.
- Range guard: a Concat/Add/Sum/Sub gives its inputs and output one scale; when their calibrated ranges differ
  by more than `range_ratio` the narrow input is crushed (a YOLOv8 head's scores, 0..1 next to box
  coordinates 0..320, all became 0 while the output's cosine stayed 0.999), so such a node stays float.
- Speed guard: int8 is measured against the float model side by side; when it is not faster, the report says
  why (float "islands" between DequantizeLinear and QuantizeLinear that ORT could not fuse), one speed-aware
  variant without the island op types is tried, and `on_slower` decides what ships. A CPU without VNNI /
  dot-product instructions (the target's `int8` capability) is reported but not skipped: the guard measures on
  that very CPU, and int8 can still win there (a 64-channel conv stack at 56x56: 1.8x on an AVX2-only EPYC).
- Accuracy search (`accuracy:`): quantizer groups fall back to float greedily, ranked by "quantize only this
  group", until the metric meets its target (optimizers/quant_fallback.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      create_calibrator, quant_pre_process, quantize_dynamic, quantize_static)
from onnxruntime.quantization.calibrate import TensorsData, load_tensors_data, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from pydantic import Field, field_validator, model_validator

from accelopt.converters.onnx_io import copy_model, is_large, save_model
from accelopt.data import Dataset, random_feeds
from accelopt.errors import BadInputError, ConversionError, RecipeError, first_line
from accelopt.latency import batch_feeds, side_by_side
from accelopt.metrics import TaskSpec, accuracy, compare_outputs, worst
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register
from accelopt.optimizers.quant_fallback import Group, accuracy_fallback, quantizer_groups
from accelopt.targets import get_target
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner

QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
WEIGHTED = ["Conv", "Gemm", "MatMul"]
# TensorRT-ready explicit QDQ (notes §7): zero points 0, Q/DQ pairs on weights, no int32 bias DequantizeLinear.
TRT_EXTRA = {"ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True,
             "DedicatedQDQPair": True, "OpTypesToExcludeOutputQuantization": WEIGHTED,
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, "QDQKeepRemovableActivations": True,
             "QuantizeBias": False}
# What quantize_static quantizes when no op types are given (its own default).
STATIC_OPS = frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)
# The MatMul-like part of quantize_dynamic's defaults. Conv is left out (ConvInteger: 1.17x, and only with uint8
# weights), and so are Gather, EmbedLayerNormalization and Transpose, which compute nothing in int8.
DYNAMIC_OPS = ["Attention", "LSTM", "MatMul"]
# With asymmetric activations ORT folds these into their producer's output quantization, so they tie no
# quantizer groups together (outlier model: excluding conv3 + conv4 gave 39.0 dB with or without relu3).
REMOVABLE = frozenset({"Relu", "Clip"})
RANGE_GUARDED = frozenset({"Concat", "Add", "Sum", "Sub"})
VNNI = frozenset({"avx512_vnni", "avx_vnni"})
X86 = frozenset({"avx", "avx2", "avx512f"})
# Ops that only appear in a model that is already quantized.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits",
                           "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                           "QGemm", "QAttention", "QOrderedMatMul"})
CONVERTERS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
MIN_SAMPLES = 8
SPEED_ROUNDS, SPEED_WARMUP = 3, 3


class AccuracyConfig(PassConfig):
    metric: Literal["top1", "cosine", "sqnr", "accuracy"] = Field(
        "cosine", description="what the search protects, against the float model on the evaluation data: top1 "
                              "agreement (task classification/detection), worst output cosine, worst output SQNR "
                              "(dB), or task accuracy against labels")
    max_drop: float | None = Field(
        None, ge=0, description="top1/cosine: largest allowed 1 - value (0.01 = 99% agreement / cosine 0.99); "
                                "accuracy: largest drop below the float model's accuracy (0.01 = 1 point)")
    min_db: float | None = Field(None, description="metric sqnr: the worst output's SQNR must reach this (dB)")
    budget_s: float = Field(300.0, gt=0, description="stop searching after this many seconds; the best model "
                                                     "found so far is kept")
    fallback: Literal["float"] = Field(
        "float", description="precision a reverted quantizer group runs in (float; int16 overrides need opset "
                             "21 and run as DequantizeLinear + float op on the CPU EP anyway)")

    @model_validator(mode="after")
    def _has_target(self) -> AccuracyConfig:
        if self.metric == "sqnr" and self.min_db is None:
            raise ValueError("metric sqnr needs min_db")
        if self.metric != "sqnr" and self.max_drop is None:
            raise ValueError(f"metric {self.metric} needs max_drop")
        return self


class QuantizeConfig(PassConfig):
    mode: Literal["static", "dynamic", "weight-only"] = Field(
        "static", description="static: calibrated QDQ int8 (CNNs, fastest on CPU); dynamic: int8 weights, "
                              "activations quantized per call (MatMul-heavy models without calibration data); "
                              "weight-only: int4 MatMulNBits (LLM-style MatMuls)")
    profile: Literal["auto", "ort-cpu", "tensorrt"] = Field(
        "auto", description="type defaults per runtime; auto follows the recipe's target (tensorrt -> tensorrt, "
                            "anything else -> ort-cpu): ort-cpu = U8S8 per-channel, reduce_range only without "
                            "VNNI; tensorrt = symmetric int8, float bias, Q/DQ on Conv/Gemm/MatMul")
    activation_type: Literal["uint8", "int8"] | None = Field(None,
                                                             description="activation type; null = profile default")
    weight_type: Literal["uint8", "int8"] | None = Field(None, description="weight type; null = profile default")
    per_channel: bool | None = Field(None, description="per-channel weight scales; null = profile default (on)")
    reduce_range: bool | None = Field(
        None, description="7-bit weights; null = only for U8S8 on an x86 CPU without VNNI (costs ~6 dB elsewhere)")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="how activation ranges are fitted; entropy/percentile clip outliers, which can also "
                              "clip channels that carry signal")
    percentile: float = Field(99.999, gt=0, le=100, description="calibration percentile: the kept share of values")
    samples: int = Field(128, ge=1, description="use at most this many calibration samples")
    op_types: list[str] | None = Field(
        None, description="op types to quantize; null = the library's default for the mode (tensorrt profile: "
                          "Conv/Gemm/MatMul)")
    exclude_op_types: list[str] = Field(default_factory=list, description="op types left in float")
    exclude_nodes: list[str] = Field(
        default_factory=list, description="node names (after quant_pre_process, as the step's decisions list "
                                          "them) left in float; how a recipe pins the accuracy search's fallbacks")
    exclude_regex: str | None = Field(None, description="regex searched in node names; matches stay float")
    include_nodes: list[str] | None = Field(None, description="quantize only these node names; null = all")
    range_guard: bool = Field(True, description="keep a Concat/Add/Sum/Sub in float when its inputs' calibrated "
                                                "ranges differ by more than range_ratio")
    range_ratio: float = Field(20.0, gt=1, description="largest input range ratio the range guard allows")
    block_size: int = Field(128, ge=16, description="weight-only: weights per int4 scale (a power of two)")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="weight-only: MatMulNBits compute type; 4 = int8 (without it int4 is slower than FP32)")
    symmetric: bool = Field(True, description="weight-only: symmetric int4 weights (no zero points)")
    speed_guard: bool = Field(
        True, description="time the result against the float model side by side (ort-cpu profile); a CPU "
                          "without VNNI is reported but still measured, since int8 can win there too")
    on_slower: Literal["fail", "keep-float", "warn"] = Field(
        "keep-float", description="when int8 is not faster (after one speed-aware retry): fail the step, ship "
                                  "the float model, or ship int8 with a warning")
    speed_runs: int = Field(20, ge=1, description="timed runs per round for the speed guard (3 rounds, interleaved)")
    accuracy: AccuracyConfig | None = Field(
        None, description="accuracy-aware mode: {metric, max_drop | min_db, budget_s}; leaves the fewest quantizer "
                          "groups in float that meet the target")

    @field_validator("exclude_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression ({e})") from None
        return v

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"block_size must be a power of two, got {v}")
        return v

    @model_validator(mode="after")
    def _dynamic_is_uint8(self) -> QuantizeConfig:
        if self.mode == "dynamic" and self.activation_type == "int8":
            raise ValueError("dynamic mode quantizes activations to uint8 only (quantize_dynamic)")
        return self


# --- settings --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The resolved quantizer arguments, each with what decided it."""

    profile: str
    activation_type: QuantType
    weight_type: QuantType
    per_channel: bool
    reduce_range: bool
    reduce_range_why: str
    op_types: list[str] | None
    extra: dict[str, Any]


def _target(ctx: PassContext) -> Any:
    """The recipe's target; passes run outside a pipeline (tests, scripts) judge the local ORT CPU."""
    return ctx.target if ctx.target is not None else get_target("onnxruntime")


def _profile(config: QuantizeConfig, ctx: PassContext) -> str:
    if config.profile != "auto":
        return config.profile
    return "tensorrt" if _target(ctx).name == "tensorrt" else "ort-cpu"


def _reduce_range(config: QuantizeConfig, act: QuantType, weight: QuantType, flags: set[str]) -> tuple[bool, str]:
    """7-bit weights only where 8-bit U8S8 products can saturate: x86 without a VNNI dot-product instruction."""
    if config.reduce_range is not None:
        return config.reduce_range, "set in the recipe"
    if (act, weight) != (QuantType.QUInt8, QuantType.QInt8):
        return False, "only U8S8 risks saturation"
    if VNNI & flags:
        return False, f"CPU has {', '.join(sorted(VNNI & flags))}: no saturation, 7 bits would only cost accuracy"
    if not X86 & flags:
        return False, "not an x86 CPU with known AVX flags"
    return True, "x86 CPU without VNNI: 7-bit weights avoid VPMADDUBSW saturation"


def resolve_settings(config: QuantizeConfig, ctx: PassContext) -> Settings:
    """Profile defaults, then the recipe's overrides."""
    profile = _profile(config, ctx)
    trt = profile == "tensorrt"
    act = QUANT_TYPES[config.activation_type or ("int8" if trt and config.mode != "dynamic" else "uint8")]
    weight = QUANT_TYPES[config.weight_type or "int8"]
    if trt:
        reduce, why = bool(config.reduce_range), "set in the recipe" if config.reduce_range else "TensorRT: full int8"
    else:
        reduce, why = _reduce_range(config, act, weight, set(_target(ctx).capabilities().get("cpu_flags", [])))
    op_types = config.op_types or (WEIGHTED if trt and config.mode == "static" else None)
    return Settings(profile, act, weight, True if config.per_channel is None else config.per_channel,
                    reduce, why, op_types, dict(TRT_EXTRA) if trt else {})


# --- input checks ----------------------------------------------------------------------------------------------


def _quant_ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear"))


def refuse_quantized(model: onnx.ModelProto) -> None:
    """Quantizing Q/DQ or integer kernels again would stack scales on scales."""
    found = _quant_ops(model)
    if found:
        listed = ", ".join(f"{n} {op}" for op, n in found.most_common(3))
        raise BadInputError(f"model is already quantized ({listed} nodes); quantize the float model")


def _calibration_set(config: QuantizeConfig, ctx: PassContext) -> Dataset:
    """The calibration samples, refused when missing or non-finite, flagged when random or few."""
    data = ctx.calibration
    if data is None:
        raise RecipeError("quantize mode static needs calibration data: declare data.calibration or pass --data")
    if data.random:
        ctx.log("WARNING: calibrating on RANDOM data: the int8 ranges fit noise, not real inputs, and accuracy "
                "will not hold on real data; declare data.calibration")
    data = data.take(config.samples)
    if len(data) < MIN_SAMPLES:
        ctx.log(f"WARNING: only {len(data)} calibration sample(s): ranges from fewer than {MIN_SAMPLES} rarely "
                "cover real inputs")
    for name, arr in data.feeds.items():
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise BadInputError(f"calibration data for input {name!r} holds {bad} NaN/Inf value(s); clean the data")
    return data


# --- preparing the model ---------------------------------------------------------------------------------------


@contextmanager
def _library_logs(ctx: PassContext) -> Iterator[None]:
    """onnxruntime.quantization talks through `logging` (and matmul_nbits_quantizer calls basicConfig at INFO on
    import); a pass never prints, so while it runs, warnings go to the step's notes once each and the rest is
    dropped."""
    seen: set[str] = set()

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines = record.getMessage().strip().splitlines()
            if lines and lines[0] not in seen:
                seen.add(lines[0])
                ctx.log(f"onnxruntime.quantization: {lines[0][:300]}")

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers, root.level = [Forward(logging.WARNING)], logging.WARNING
    try:
        yield
    finally:
        root.handlers, root.level = handlers, level


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Exclusions and the accuracy search address nodes by name: give unnamed or duplicate ones a unique name."""
    taken: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
    return model


def pre_process(model: onnx.ModelProto, ctx: PassContext) -> Path:
    """quant_pre_process (ORT optimizer + shape inference); symbolic shape inference is retried without when
    it fails (it does on some custom and contrib ops). Returns the file of the named, pre-processed model."""
    src = save_model(model, ctx.tmp_dir / "float.onnx")
    dst = ctx.tmp_dir / "pre.onnx"
    external = {"save_as_external_data": is_large(model), "external_data_location": dst.name + ".data"}
    try:
        quant_pre_process(str(src), str(dst), **external)
    except Exception as e:
        ctx.log(f"quant_pre_process failed with symbolic shape inference ({first_line(e, with_type=True)}); retried without it")
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **external)
        except Exception as e2:
            raise ConversionError(f"quantize: quant_pre_process failed ({first_line(e2, with_type=True)})") from e2
    return save_model(name_nodes(onnx.load(str(dst))), dst)


def _external(path: Path) -> bool:
    """Whether the model at `path` keeps its weights in external data (save_model's layout for > 2 GB)."""
    return path.with_name(path.name + ".data").exists()


def _extra_options(settings: Settings, model: onnx.ModelProto) -> dict[str, Any]:
    """Profile options, plus DefaultTensorType when contrib ops (after `fuse`) hide tensor types from ONNX
    shape inference: the quantizer otherwise fails on the tensors it cannot type."""
    extra = dict(settings.extra)
    if any(n.domain == "com.microsoft" for n in model.graph.node):
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    return extra


# --- calibration -----------------------------------------------------------------------------------------------


class _Reader(CalibrationDataReader):
    """Feeds calibration batches once (ORT's readers are single-use)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _static_batch(model: onnx.ModelProto) -> int:
    """The first input's static batch size, or 1 when it is dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[0].dim_value if dims and dims[0].dim_value > 0 else 1


def _calibration_options(config: QuantizeConfig) -> dict[str, Any]:
    return {"percentile": config.percentile} if config.calibration == "percentile" else {}


def calibrate(pre_path: Path, batch: int, config: QuantizeConfig, data: Dataset,
              ctx: PassContext) -> tuple[Path, TensorsData, bool]:
    """Tensor ranges of every float activation of the pre-processed model, from the cache when the same model,
    method, options and data were calibrated before (a damaged entry counts as a miss).
    Returns (ranges JSON, the ranges, reused from cache)."""
    options = _calibration_options(config)
    key = hashlib.sha256(pre_path.read_bytes())
    key.update(json.dumps([config.calibration, options, data.fingerprint()]).encode())
    folder = ctx.cache_dir / "quantize-ranges" if ctx.cache_dir is not None else ctx.tmp_dir
    path = folder / f"{key.hexdigest()[:40]}.json"
    if path.is_file():
        try:
            return path, load_tensors_data(path), True
        except (ValueError, KeyError, TypeError) as e:
            ctx.log(f"quantize: damaged calibration cache entry {path.name} ({first_line(e, with_type=True)}); calibrating again")
    calibrator = create_calibrator(pre_path, None, augmented_model_path=str(ctx.tmp_dir / "augmented.onnx"),
                                   calibrate_method=METHODS[config.calibration],
                                   use_external_data_format=_external(pre_path), extra_options=options)
    usable = data.take(max(len(data) // batch, 1) * batch)
    try:
        calibrator.collect_data(_Reader(list(usable.batches(batch))))
    except Exception as e:
        raise BadInputError(f"calibration data does not fit the model ({first_line(e, with_type=True)})") from e
    ranges = calibrator.compute_data()
    save_tensors_data(ranges, path)
    return path, ranges, False


def range_mismatches(model: onnx.ModelProto, ranges: TensorsData, ratio: float) -> list[dict[str, Any]]:
    """Concat/Add/Sum/Sub nodes whose calibrated input ranges (max - min) differ by more than `ratio`: one
    scale for all of them would crush the narrow inputs."""
    found = []
    for node in model.graph.node:
        if node.op_type not in RANGE_GUARDED:
            continue
        spans = {name: [float(np.min(ranges[name].range_value[0])), float(np.max(ranges[name].range_value[1]))]
                 for name in node.input if name in ranges}
        widths = [hi - lo for lo, hi in spans.values()]
        if len(widths) > 1 and max(widths) > ratio * max(min(widths), 1e-12):
            found.append({"node": node.name, "op": node.op_type, "input_ranges": spans,
                          "ratio": round(max(widths) / max(min(widths), 1e-12), 1)})
    return found


# --- quantizers ------------------------------------------------------------------------------------------------

# (excluded nodes, only these nodes or None = all) -> quantized model
Quantizer = Callable[[set[str], set[str] | None], onnx.ModelProto]


def static_quantizer(pre_path: Path, base: onnx.ModelProto, ranges: Path, settings: Settings,
                     config: QuantizeConfig, ctx: PassContext) -> Quantizer:
    """QDQ quantize_static that reads the cached ranges: no calibration inference per call."""
    extra, out = _extra_options(settings, base), ctx.tmp_dir / "quantized.onnx"

    def run(excluded: set[str], only: set[str] | None) -> onnx.ModelProto:
        quantize_static(str(pre_path), str(out), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=settings.op_types, per_channel=settings.per_channel,
                        reduce_range=settings.reduce_range, activation_type=settings.activation_type,
                        weight_type=settings.weight_type, nodes_to_quantize=sorted(only or []),
                        nodes_to_exclude=sorted(excluded), use_external_data_format=_external(pre_path),
                        calibrate_method=METHODS[config.calibration], extra_options=extra,
                        calibration_cache_path=ranges)
        return onnx.load(str(out))

    return run


def dynamic_quantizer(pre_path: Path, base: onnx.ModelProto, settings: Settings, ctx: PassContext) -> Quantizer:
    """quantize_dynamic: int8 weights offline, uint8 activations quantized per call."""
    extra, out = _extra_options(settings, base), ctx.tmp_dir / "quantized.onnx"

    def run(excluded: set[str], only: set[str] | None) -> onnx.ModelProto:
        quantize_dynamic(str(pre_path), str(out), op_types_to_quantize=settings.op_types or DYNAMIC_OPS,
                         per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                         weight_type=settings.weight_type, nodes_to_quantize=sorted(only or []),
                         nodes_to_exclude=sorted(excluded), use_external_data_format=_external(pre_path),
                         extra_options=extra)
        return onnx.load(str(out))

    return run


def weight_only_quantizer(base: onnx.ModelProto, config: QuantizeConfig) -> Quantizer:
    """int4 MatMulNBits on MatMuls with constant weights; the quantizer edits the model it is given, so each
    call gets a copy. Imported here: the module calls logging.basicConfig at INFO on import (see _library_logs)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    def run(excluded: set[str], only: set[str] | None) -> onnx.ModelProto:
        algo = DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric,
                                            accuracy_level=config.accuracy_level, bits=4,
                                            op_types_to_quantize=tuple(config.op_types or ["MatMul"]))
        quantizer = MatMulNBitsQuantizer(copy_model(base), nodes_to_exclude=sorted(excluded),
                                         nodes_to_include=sorted(only) if only is not None else None,
                                         algo_config=algo)
        quantizer.process()
        return quantizer.model.model

    return run


@dataclass
class Job:
    """A model prepared for quantization: the accuracy search and the speed-aware variant re-quantize it with
    other node sets, always on top of the recipe's and the guards' exclusions."""

    base: onnx.ModelProto  # what the quantizer reads (pre-processed for static and dynamic)
    quantizer: Quantizer
    excluded: dict[str, str]  # node name -> why it stays float
    only: set[str] | None  # include_nodes
    # Op types the quantizer quantizes, less the activations ORT folds away: they form the accuracy search's
    # quantizer groups and bound what the speed-aware variant can leave out.
    op_types: frozenset[str]
    # Set by the accuracy search: later variants (speed-aware) must not score below min(target, score).
    scorer: Scorer | None = None
    target: float = -math.inf
    score: float = -math.inf

    def quantize(self, extra: Iterable[str] = (), only: set[str] | None = None) -> onnx.ModelProto:
        """Quantize all but the excluded nodes (and `extra`), restricted to `only` and include_nodes if given."""
        wanted = only if self.only is None else (self.only if only is None else only & self.only)
        excluded = set(self.excluded) | set(extra)
        if wanted is not None and not wanted - excluded:  # ORT reads an empty list as "quantize everything"
            return copy_model(self.base)
        return self.quantizer(excluded, None if wanted is None else wanted - excluded)


def resolve_exclusions(model: onnx.ModelProto, config: QuantizeConfig) -> dict[str, str]:
    """The recipe's exclusions as node name -> reason; a name that matches no node is an error, not a no-op."""
    names = {n.name for n in model.graph.node}
    for key in ("exclude_nodes", "include_nodes"):
        unknown = sorted(set(getattr(config, key) or []) - names)
        if unknown:
            raise RecipeError(f"quantize: {key} names no node of the model (after quant_pre_process): "
                              f"{', '.join(unknown[:10])}")
    pattern = re.compile(config.exclude_regex) if config.exclude_regex else None
    excluded = {}
    for node in model.graph.node:
        if node.name in config.exclude_nodes:
            excluded[node.name] = "exclude_nodes"
        elif node.op_type in config.exclude_op_types:
            excluded[node.name] = f"exclude_op_types: {node.op_type}"
        elif pattern is not None and pattern.search(node.name):
            excluded[node.name] = f"exclude_regex: {config.exclude_regex}"
    return excluded


def quantized_nodes(model: onnx.ModelProto, excluded: dict[str, str] | set[str]) -> Counter:
    """Op types that run quantized. QDQ: a node (not excluded) reading an activation through
    DequantizeLinear whose outputs are all re-quantized (weighted ops: any output). Otherwise the integer
    kernels themselves (MatMulInteger, MatMulNBits...)."""
    if "QuantizeLinear" not in {n.op_type for n in model.graph.node}:
        return Counter({op: k for op, k in _quant_ops(model).items() if op not in CONVERTERS})
    producers = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n.op_type)

    def activation_dq(name: str) -> bool:
        p = producers.get(name)
        return p is not None and p.op_type == "DequantizeLinear" and p.input[0] in producers

    counts: Counter = Counter()
    for n in model.graph.node:
        if n.op_type in CONVERTERS or n.name in excluded or not any(activation_dq(i) for i in n.input):
            continue
        if n.op_type in WEIGHTED or all(set(consumers.get(o, [])) == {"QuantizeLinear"} for o in n.output):
            counts[n.op_type] += 1
    return counts


# --- speed -----------------------------------------------------------------------------------------------------


def _timing_feeds(runner: OrtRunner, model: onnx.ModelProto, ctx: PassContext) -> dict[str, np.ndarray]:
    """One batch (the model's static batch, else 1) of calibration or evaluation data, else seeded random."""
    data = ctx.calibration if ctx.calibration is not None else ctx.evaluation
    batch = _static_batch(model)
    feeds = data.feeds if data is not None else random_feeds(runner.inputs, batch, input_shapes=ctx.input_shapes)
    return batch_feeds(feeds, batch)


def medians(models: dict[str, onnx.ModelProto], ctx: PassContext, runs: int) -> dict[str, float]:
    """Median ms per model, timed side by side in interleaved rounds (best round kept) at ctx.threads."""
    runners = {name: OrtRunner(m, threads=ctx.threads) for name, m in models.items()}
    first = next(iter(models))
    feeds = _timing_feeds(runners[first], models[first], ctx)
    stats = side_by_side(runners, feeds, rounds=SPEED_ROUNDS, warmup=SPEED_WARMUP, runs=runs)
    return {name: s.median_ms for name, s in stats.items()}


def islands(model: onnx.ModelProto, tmp_dir: Path) -> tuple[Counter, Counter]:
    """(float-only ops sandwiched between DequantizeLinear and QuantizeLinear after ORT's own QDQ fusions,
    every op ORT runs), read from ORT's 'extended'-optimized graph (portable, unlike 'all')."""
    path = save_model(model, tmp_dir / "speed-check.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_dir / "speed-check-ort.onnx")
    options.log_severity_level = 3
    if is_large(model):
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         "speed-check-ort.onnx.data")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    producers = {out: n.op_type for n in graph.node for out in n.output}
    consumers: dict[str, set[str]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, set()).add(n.op_type)
    found = Counter(n.op_type for n in graph.node if n.op_type not in CONVERTERS
                    and any(producers.get(i) == "DequantizeLinear" for i in n.input)
                    and any("QuantizeLinear" in consumers.get(o, ()) for o in n.output))
    return found, Counter(n.op_type for n in graph.node)


def _why_slower(model: onnx.ModelProto, label: str, ctx: PassContext) -> dict[str, Any]:
    found, ops = islands(model, ctx.tmp_dir)
    if found:
        text = (f"{sum(found.values())} Q/DQ island(s): float-only ops between DequantizeLinear and QuantizeLinear "
                f"({', '.join(f'{op} x{n}' for op, n in found.most_common(5))}) pay a dequantize + quantize each")
    else:
        text = f"no Q/DQ islands: the {label} kernels themselves are not faster than float for these layers here"
    return {"reason": text, "islands": dict(found.most_common()), "top_ops": dict(ops.most_common(8))}


# --- accuracy --------------------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """One metric of a candidate against the float model's outputs on the evaluation data; higher is better."""

    metric: str
    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    labels: np.ndarray | None
    task: TaskSpec
    threads: int | None

    def __call__(self, model: onnx.ModelProto) -> float:
        outputs = run_all(OrtRunner(model, threads=self.threads), self.feeds)
        return self.value(outputs)

    def value(self, outputs: dict[str, np.ndarray]) -> float:
        if self.metric == "accuracy":
            name = self.task.output or next(iter(outputs))
            return accuracy(outputs[name], self.labels, axis=self.task.axis)
        summary = worst(compare_outputs(self.reference, outputs, task=self.task, precision="int8", feeds=self.feeds))
        key = {"top1": "top1_agreement", "cosine": "cosine", "sqnr": "sqnr_db"}[self.metric]
        return -math.inf if summary[key] is None else float(summary[key])


def make_scorer(float_model: onnx.ModelProto, acc: AccuracyConfig, ctx: PassContext) -> tuple[Scorer, float]:
    """The scorer and the target score the search must reach, from max_drop / min_db."""
    data = ctx.evaluation if ctx.evaluation is not None else ctx.calibration
    if data is None:
        raise RecipeError("quantize accuracy search needs evaluation or calibration data: declare data or pass --data")
    task = ctx.task if ctx.task is not None else TaskSpec()
    if acc.metric == "accuracy" and data.labels is None:
        raise RecipeError("quantize accuracy metric 'accuracy' needs labels in the evaluation data")
    if acc.metric == "top1" and task.kind not in ("classification", "detection"):
        raise RecipeError("quantize accuracy metric 'top1' needs task kind classification or detection")
    reference = run_all(OrtRunner(float_model, threads=ctx.threads), data.feeds)
    scorer = Scorer(acc.metric, data.feeds, reference, data.labels, task, ctx.threads)
    if acc.metric == "sqnr":
        return scorer, float(acc.min_db)
    if acc.metric == "accuracy":
        return scorer, scorer.value(reference) - float(acc.max_drop)
    return scorer, 1.0 - float(acc.max_drop)


def _groups(job: Job, mode: str) -> list[Group]:
    """Static QDQ: nodes around a shared activation leave quantization together. Dynamic and weight-only
    quantize per node, so every node is its own group."""
    if mode == "static":
        return quantizer_groups(job.base, set(job.op_types))
    return [Group(n.output[0], [n.name]) for n in job.base.graph.node if n.op_type in job.op_types]


# --- the pass --------------------------------------------------------------------------------------------------


@register
class Quantize(Pass):
    name = "quantize"
    summary = "INT8 static/dynamic or INT4 weight-only quantization, guarded for range mismatches, speed and accuracy."
    Config = QuantizeConfig
    precision = "int8"
    uses = frozenset({"calibration", "evaluation", "task", "threads"})

    def output_precision(self, config: QuantizeConfig) -> str:
        return "int4" if config.mode == "weight-only" else "int8"

    def apply(self, model: onnx.ModelProto, config: QuantizeConfig, ctx: PassContext) -> onnx.ModelProto:
        refuse_quantized(model)
        settings = resolve_settings(config, ctx)
        self._decide_settings(config, settings, ctx)
        self._note_int8_kernels(config, settings, ctx)
        with _library_logs(ctx):
            job = self._prepare(model, config, settings, ctx)
            out = self._search(model, job, config, ctx)
            if config.speed_guard and settings.profile == "ort-cpu":
                out = self._speed_guard(model, out, job, config, ctx)
            else:
                ctx.decide("speed", "not measured: " + ("speed_guard is off" if not config.speed_guard else
                                                        "int8 speed of the tensorrt profile is measured on the GPU"))
        ctx.decide("excluded", job.excluded)
        ctx.decide("quantized_nodes", dict(sorted(quantized_nodes(out, job.excluded).items())))
        return out

    # -- steps of apply ------------------------------------------------------------------------------------------

    def _decide_settings(self, config: QuantizeConfig, s: Settings, ctx: PassContext) -> None:
        ctx.decide("mode", config.mode)
        ctx.decide("profile", s.profile)
        if config.mode == "weight-only":
            ctx.decide("weights", {"bits": 4, "block_size": config.block_size, "symmetric": config.symmetric,
                                   "accuracy_level": config.accuracy_level})
            return
        ctx.decide("activation_type", "dynamic uint8" if config.mode == "dynamic" else s.activation_type.name)
        ctx.decide("weight_type", s.weight_type.name)
        ctx.decide("per_channel", s.per_channel)
        ctx.decide("reduce_range", {"value": s.reduce_range, "why": s.reduce_range_why})
        ctx.decide("op_types", s.op_types or (DYNAMIC_OPS if config.mode == "dynamic" else "library default"))

    def _note_int8_kernels(self, config: QuantizeConfig, s: Settings, ctx: PassContext) -> None:
        """Say so when the CPU lacks dot-product int8 instructions. It does not skip quantizing: the speed guard
        measures on this very CPU, and int8 can still win without them (a 64-channel conv stack at 56x56: 1.8x
        on an AVX2-only EPYC), so the measurement and on_slower decide, not the flag."""
        if s.profile != "ort-cpu" or _target(ctx).capabilities().get("int8", True):
            return
        then = "the speed guard measures it" if config.speed_guard else "speed_guard is off: it ships unmeasured"
        ctx.log(f"quantize: this CPU has no VNNI / dot-product int8 instructions, so int8 may not beat float; {then}")

    def _prepare(self, model: onnx.ModelProto, config: QuantizeConfig, s: Settings, ctx: PassContext) -> Job:
        """The model the quantizer reads, its quantizer, and the recipe's and the range guard's exclusions."""
        if config.mode == "static":
            job = self._prepare_static(model, config, s, ctx)
        elif config.mode == "dynamic":
            pre_path = pre_process(model, ctx)
            base = onnx.load(str(pre_path))
            job = Job(base, dynamic_quantizer(pre_path, base, s, ctx), {}, None, frozenset(s.op_types or DYNAMIC_OPS))
        else:
            base = name_nodes(copy_model(model))
            job = Job(base, weight_only_quantizer(base, config), {}, None, frozenset(config.op_types or ["MatMul"]))
        job.excluded.update(resolve_exclusions(job.base, config))
        job.only = set(config.include_nodes) if config.include_nodes is not None else None
        return job

    def _prepare_static(self, model: onnx.ModelProto, config: QuantizeConfig, s: Settings, ctx: PassContext) -> Job:
        """Check the data, pre-process, calibrate once (or reuse cached ranges), apply the range guard."""
        data = _calibration_set(config, ctx)
        pre_path = pre_process(model, ctx)
        base = onnx.load(str(pre_path))
        ranges_path, ranges, cached = calibrate(pre_path, _static_batch(base), config, data, ctx)
        ctx.decide("calibration", {"method": config.calibration, "samples": len(data), "cached": cached,
                                   **_calibration_options(config)})
        guarded = self._range_guard(base, ranges, config, ctx) if config.range_guard else {}
        removable = frozenset() if s.extra.get("QDQKeepRemovableActivations") else REMOVABLE
        return Job(base, static_quantizer(pre_path, base, ranges_path, s, config, ctx), guarded, None,
                   frozenset(s.op_types or STATIC_OPS) - removable)

    def _range_guard(self, base: onnx.ModelProto, ranges: TensorsData, config: QuantizeConfig,
                     ctx: PassContext) -> dict[str, str]:
        found = range_mismatches(base, ranges, config.range_ratio)
        ctx.decide("range_guard", found)
        for f in found:
            ctx.log(f"quantize: range guard keeps {f['op']} {f['node']!r} in float: its inputs' ranges differ "
                    f"{f['ratio']}x ({f['input_ranges']}); one int8 scale would crush the narrow ones")
        return {f["node"]: f"range_guard: input ranges differ {f['ratio']}x" for f in found}

    def _search(self, model: onnx.ModelProto, job: Job, config: QuantizeConfig, ctx: PassContext) -> onnx.ModelProto:
        """Full quantization, or the accuracy search's best model (its fallbacks join job.excluded)."""
        if config.accuracy is None:
            return job.quantize()
        job.scorer, job.target = make_scorer(model, config.accuracy, ctx)
        pinned = frozenset(job.excluded)
        result = accuracy_fallback(_groups(job, config.mode), job.quantize, lambda nodes: job.quantize(only=nodes),
                                   job.scorer, job.target,
                                   budget_s=config.accuracy.budget_s, pinned=pinned)
        job.score = result.score
        fallbacks = [n for n in result.excluded if n not in pinned]
        job.excluded.update({n: "accuracy search" for n in fallbacks})
        ctx.decide("accuracy_search", {
            "metric": config.accuracy.metric, "target": job.target, "score": result.score, "met": result.met,
            "fallbacks": fallbacks, "ranking": result.ranking, "history": result.history,
            "seconds": round(result.seconds, 3)})
        if not result.met:
            ctx.log(f"WARNING: quantize accuracy search did not reach {config.accuracy.metric} >= {job.target:.4g} "
                    f"(best {result.score:.4g} with {len(fallbacks)} node(s) in float); the best model is kept")
        return result.model

    def _speed_guard(self, model: onnx.ModelProto, out: onnx.ModelProto, job: Job, config: QuantizeConfig,
                     ctx: PassContext) -> onnx.ModelProto:
        """Ship the quantized model only when it is faster than float; else explain why, try the speed-aware
        variant once, keep the fastest candidate, and let on_slower decide if even that is not faster."""
        candidates = {"quantized": (out, dict(job.excluded))}
        timed = medians({"float": model, "quantized": out}, ctx, config.speed_runs)
        speed: dict[str, Any] = {"threads": ctx.threads, "batch": _static_batch(model)}
        if timed["quantized"] > timed["float"]:
            label = self.output_precision(config)
            speed["why_slower"] = _why_slower(out, label, ctx)
            ctx.log(f"quantize: {label} is slower than float ({timed['float'] / timed['quantized']:.2f}x): "
                    f"{speed['why_slower']['reason']}")
            variant = self._speed_aware(job, speed["why_slower"]["islands"], config, ctx)
            if variant is not None:
                candidates["speed-aware"] = variant
                timed = medians({"float": model, "quantized": out, "speed-aware": variant[0]}, ctx, config.speed_runs)
        best = min(candidates, key=timed.__getitem__)
        out, job.excluded = candidates[best]
        ratio = timed["float"] / timed[best]
        speed.update({f"{name}_ms": round(ms, 4) for name, ms in timed.items()}, fastest=best, speedup=round(ratio, 3))
        ctx.decide("speed", speed)
        return out if ratio >= 1.0 else self._on_slower(model, out, speed, config, ctx)

    def _speed_aware(self, job: Job, island_ops: dict[str, int], config: QuantizeConfig,
                     ctx: PassContext) -> tuple[onnx.ModelProto, dict[str, str]] | None:
        """The model re-quantized (from the cached ranges) with the island op types left in float. None when no
        island op is quantized itself (a Tanh between two quantized convs sits between their Q/DQ whatever
        its own setting), or when the variant would break the accuracy target."""
        if config.mode != "static":
            return None
        extra = {n.name: f"speed-aware: {n.op_type} ran as a float Q/DQ island" for n in job.base.graph.node
                 if n.op_type in island_ops and n.op_type in job.op_types and n.name not in job.excluded}
        if not extra:
            if island_ops:
                ctx.log("quantize: no speed-aware variant: the island ops are not quantized themselves, their "
                        "neighbours' Q/DQ surround them")
            return None
        excluded = {**job.excluded, **extra}
        variant = job.quantize(excluded)
        if job.scorer is not None and job.scorer(variant) < min(job.target, job.score):
            ctx.log("quantize: the speed-aware variant misses the accuracy target; not used")
            return None
        return variant, excluded

    def _on_slower(self, model: onnx.ModelProto, out: onnx.ModelProto, speed: dict[str, Any],
                   config: QuantizeConfig, ctx: PassContext) -> onnx.ModelProto:
        """Not faster even after the speed-aware retry: stop, ship float, or ship it with a loud warning."""
        summary = (f"{self.output_precision(config)} is not faster than float ({speed['speedup']:.2f}x: "
                   f"{speed[speed['fastest'] + '_ms']:.3f} ms vs {speed['float_ms']:.3f} ms at {ctx.threads} "
                   f"thread(s)); {speed['why_slower']['reason']}")
        if config.on_slower == "fail":
            raise ConversionError(f"quantize: {summary}; set on_slower: keep-float or warn")
        if config.on_slower == "warn":
            ctx.log(f"WARNING: quantize: shipping the SLOWER {self.output_precision(config)} model (on_slower: warn): "
                    f"{summary}")
            return out
        ctx.decide("kept_float", summary)
        ctx.log(f"quantize: kept the float model: {summary}")
        return copy_model(model)
