"""The quantize step's config: declared once, read by recipes, `accelopt recipes steps` and the docs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from accelopt.optimizers.base import PassConfig


class AccuracyConfig(PassConfig):
    metric: Literal["top1", "cosine", "cosine_mean", "sqnr", "accuracy"] = Field(
        "cosine", description="what the search protects, against the float model on the evaluation data: top1 "
                              "agreement (task classification/detection), worst output cosine (embeddings: the "
                              "worst token's), mean per-sample cosine (embeddings: per valid token), worst output "
                              "SQNR (dB), or task accuracy against labels")
    max_drop: float | None = Field(
        None, ge=0, description="top1/cosine/cosine_mean: largest allowed 1 - value (0.01 = 99% agreement / "
                                "cosine 0.99); "
                                "accuracy: largest drop below the float model's accuracy (0.01 = 1 point)")
    min_db: float | None = Field(None, description="metric sqnr: the worst output's SQNR must reach this (dB)")
    budget_s: float = Field(300.0, gt=0, description="stop searching after this many seconds; the best model "
                                                     "found so far is kept")
    fallback: Literal["float", "int16"] = Field(
        "float", description="precision a reverted quantizer group runs in: float, or int16 (16-bit activations "
                             "and weights, static mode, opset 21): for runtimes with native 16-bit kernels (NPUs "
                             "such as Qualcomm HTP); ORT's CPU runs it as DequantizeLinear + float op, slower "
                             "than float")

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
    profile: Literal["auto", "ort-cpu", "tensorrt", "coreml"] = Field(
        "auto", description="type defaults per runtime; auto follows the recipe's target (tensorrt, coreml, anything "
                            "else -> ort-cpu): ort-cpu = U8S8 per-channel, reduce_range only without VNNI; tensorrt "
                            "and coreml = symmetric int8, float bias, Q/DQ on Conv/Gemm/MatMul (Core ML: weights "
                            "become int8 constexpr weights, activations quantize/dequantize, iOS17+)")
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
        None, description="op types to quantize; null = the library's default for the mode (tensorrt and "
                          "coreml profiles: Conv/Gemm/MatMul)")
    exclude_op_types: list[str] = Field(default_factory=list, description="op types left in float")
    exclude_nodes: list[str] = Field(
        default_factory=list, description="node names (after quant_pre_process, as the step's decisions list "
                                          "them) left in float; how a recipe pins the accuracy search's fallbacks")
    exclude_regex: str | None = Field(None, description="regex searched in node names; matches stay float")
    include_nodes: list[str] | None = Field(None, description="quantize only these node names; null = all")
    int16_nodes: list[str] = Field(
        default_factory=list, description="static: node names whose activations and weights get 16-bit Q/DQ "
                                          "(how a recipe pins an int16 accuracy search's fallbacks)")
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

    @model_validator(mode="after")
    def _int16_is_static(self) -> QuantizeConfig:
        wants = self.int16_nodes or (self.accuracy is not None and self.accuracy.fallback == "int16")
        if wants and self.mode != "static":
            raise ValueError(f"int16 fallback needs mode static (16-bit Q/DQ); mode {self.mode} quantizes per node "
                             f"with integer kernels that have no 16-bit form")
        return self
