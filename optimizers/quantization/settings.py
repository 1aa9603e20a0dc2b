"""Quantizer types and options per target profile, each with what decided it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnxruntime.quantization import QuantType
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from accelopt.optimizers.base import PassContext
from accelopt.optimizers.quantization.config import QuantizeConfig
from accelopt.targets import get_target

QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
WEIGHTED = ["Conv", "Gemm", "MatMul"]
# Explicit QDQ for TensorRT (notes §7) and Core ML: zero points 0, Q/DQ pairs on weights, no int32 bias
# DequantizeLinear (Core ML's dequantize takes int8/uint8 only).
EXPLICIT_EXTRA = {"ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True,
                  "DedicatedQDQPair": True, "OpTypesToExcludeOutputQuantization": WEIGHTED,
                  "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, "QDQKeepRemovableActivations": True,
                  "QuantizeBias": False}
# Profiles of runtimes that read Q/DQ as "compute this in int8" (TensorRT, Core ML's W8A8), not as ORT's fusable
# patterns: both want symmetric int8 and Q/DQ pairs on the weights.
EXPLICIT_QDQ = frozenset({"tensorrt", "coreml"})
# What quantize_static quantizes when no op types are given (its own default).
STATIC_OPS = frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)
# The MatMul-like part of quantize_dynamic's defaults. Conv is left out (ConvInteger: 1.17x, and only with uint8
# weights), and so are Gather, EmbedLayerNormalization and Transpose, which compute nothing in int8.
DYNAMIC_OPS = ["Attention", "LSTM", "MatMul"]
# With asymmetric activations ORT folds these into their producer's output quantization, so they tie no
# quantizer groups together (outlier model: excluding conv3 + conv4 gave 39.0 dB with or without relu3).
REMOVABLE = frozenset({"Relu", "Clip"})
VNNI = frozenset({"avx512_vnni", "avx_vnni"})
X86 = frozenset({"avx", "avx2", "avx512f"})


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


def target_of(ctx: PassContext) -> Any:
    """The recipe's target; passes run outside a pipeline (tests, scripts) judge the local ORT CPU."""
    return ctx.target if ctx.target is not None else get_target("onnxruntime")


def _profile(config: QuantizeConfig, ctx: PassContext) -> str:
    if config.profile != "auto":
        return config.profile
    name = target_of(ctx).name
    return name if name in EXPLICIT_QDQ else "ort-cpu"


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
    explicit = profile in EXPLICIT_QDQ
    act = QUANT_TYPES[config.activation_type or ("int8" if explicit and config.mode != "dynamic" else "uint8")]
    weight = QUANT_TYPES[config.weight_type or "int8"]
    if explicit:
        reduce, why = bool(config.reduce_range), "set in the recipe" if config.reduce_range else f"{profile}: full int8"
    else:
        reduce, why = _reduce_range(config, act, weight, set(target_of(ctx).capabilities().get("cpu_flags", [])))
    op_types = config.op_types or (WEIGHTED if explicit and config.mode == "static" else None)
    return Settings(profile, act, weight, True if config.per_channel is None else config.per_channel,
                    reduce, why, op_types, dict(EXPLICIT_EXTRA) if explicit else {})
