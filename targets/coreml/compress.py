"""Weight compression of a converted ML Program (`coremltools.optimize.coreml`): linear quantization (int8/int4),
palettization (lookup tables) or magnitude pruning. Weights stay compressed in the .mlpackage as constexpr ops
that Core ML expands at load time or on the fly; activations stay float.

`CompressionConfig` is the `compression` option of the Core ML target; `check_compression` tells what the
deployment target lacks (the target's check reports it, `compress` refuses it before any work), and `compress`
returns the compressed model with what it did: weights compressed and skipped (under `weight_threshold`
elements, or of a kind the mode does not apply to) and their sizes.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from accelopt.converters.mil import target_at_least
from accelopt.errors import BadInputError, ConversionError, RecipeError, first_line
from accelopt.isolation import quiet_native_stderr

# The options each mode reads: setting another mode's option is a mistake worth one line.
_OPTIONS = {"linear": {"dtype", "symmetric", "granularity", "block_size"},
            "palettize": {"nbits", "palette", "granularity", "group_size"},
            "prune": {"target_sparsity", "n_m_ratio"}}
_GRANULARITIES = {"linear": ("per_tensor", "per_channel", "per_block"),
                  "palettize": ("per_tensor", "per_grouped_channel")}
_DEFAULT_GRANULARITY = {"linear": "per_channel", "palettize": "per_tensor"}


class CompressionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "linear", "palettize", "prune"] = Field(
        "none", description="weight compression after conversion (iOS16+; none keeps float weights): linear = int8/"
                            "int4 weights with scales; palettize = each weight an index into a lookup table of "
                            "2^nbits values; prune = the smallest weights set to zero and stored sparse")
    weight_threshold: NonNegativeInt = Field(
        2048, description="weights with at most this many elements stay uncompressed (biases, small convs); the "
                          "report counts what was compressed and skipped")
    dtype: Literal["int8", "int4"] = Field("int8", description="linear: the weight type; int4 needs iOS18")
    symmetric: bool = Field(True, description="linear: scales only, zero at zero (linear_symmetric); false adds "
                                              "a zero point per scale (linear), for weights far from symmetric")
    granularity: Literal["per_tensor", "per_channel", "per_block", "per_grouped_channel"] | None = Field(
        None, description="linear: per_tensor, per_channel (default) or per_block (iOS18, block_size input "
                          "channels per scale); palettize: per_tensor (default, one table per weight) or "
                          "per_grouped_channel (iOS18, one table per group_size output channels)")
    block_size: PositiveInt = Field(32, description="linear per_block: input channels sharing one scale")
    nbits: Literal[1, 2, 3, 4, 6, 8] = Field(
        4, description="palettize: bits per index, a table of 2^nbits values; 3 needs iOS18")
    palette: Literal["kmeans", "uniform"] = Field(
        "kmeans", description="palettize: how the table is built: kmeans (clusters of the weights, more accurate; "
                              "needs scikit-learn) or uniform (evenly spaced between the weight's min and max)")
    group_size: PositiveInt = Field(32, description="palettize per_grouped_channel: output channels per table")
    target_sparsity: float = Field(0.5, ge=0.0, le=1.0, description="prune: fraction of each weight's elements "
                                                                     "set to zero (smallest magnitudes first)")
    n_m_ratio: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="prune: [n, m] = n zeros in every m consecutive input-channel weights (structured, conv "
                          "and linear weights only) instead of target_sparsity")

    @model_validator(mode="after")
    def _options_fit_mode(self):
        if self.mode == "none":  # options stay in the recipe while compression is switched off
            return self
        foreign = sorted(k for k in self.model_fields_set if any(k in o for o in _OPTIONS.values())
                         and k not in _OPTIONS.get(self.mode, ()))
        if foreign:
            raise ValueError(f"{foreign[0]} does not apply to mode {self.mode}")
        if self.granularity is not None and self.granularity not in _GRANULARITIES[self.mode]:
            raise ValueError(f"granularity {self.granularity} does not apply to mode {self.mode} (valid: "
                             f"{', '.join(_GRANULARITIES[self.mode])})")
        if "block_size" in self.model_fields_set and self.granularity != "per_block":
            raise ValueError("block_size needs granularity per_block")
        if "group_size" in self.model_fields_set and self.granularity != "per_grouped_channel":
            raise ValueError("group_size needs granularity per_grouped_channel")
        if self.n_m_ratio is not None:
            if "target_sparsity" in self.model_fields_set:
                raise ValueError("set target_sparsity or n_m_ratio, not both")
            if self.n_m_ratio[0] > self.n_m_ratio[1]:
                raise ValueError(f"n_m_ratio {list(self.n_m_ratio)}: n must be at most m")
        return self

    @property
    def resolved_granularity(self) -> str | None:
        return self.granularity or _DEFAULT_GRANULARITY.get(self.mode)


def _needs(config: CompressionConfig) -> list[tuple[str, str]]:
    """(option, deployment target) for each option the config uses, oldest first."""
    if config.mode == "none":
        return []
    found = [(f"compression mode {config.mode}", "iOS16")]
    if config.mode == "linear" and config.dtype == "int4":
        found.append(("compression dtype int4", "iOS18"))
    if config.resolved_granularity in ("per_block", "per_grouped_channel"):
        found.append((f"compression granularity {config.resolved_granularity}", "iOS18"))
    if config.mode == "palettize" and config.nbits == 3:
        found.append(("compression nbits 3", "iOS18"))
    return found


def check_compression(config: CompressionConfig, target: str) -> list[str]:
    """What the deployment target lacks for this config, one line each (empty when it has everything)."""
    return [f"{option} needs deployment target {need} or newer (have {target})"
            for option, need in _needs(config) if not target_at_least(target, need)]


def _op_config(config: CompressionConfig) -> Any:
    """The coremltools op config for the mode."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OpMagnitudePrunerConfig, OpPalettizerConfig

    if config.mode == "linear":
        return OpLinearQuantizerConfig(mode="linear_symmetric" if config.symmetric else "linear", dtype=config.dtype,
                                       granularity=config.resolved_granularity, block_size=config.block_size,
                                       weight_threshold=config.weight_threshold)
    if config.mode == "palettize":
        return OpPalettizerConfig(mode=config.palette, nbits=config.nbits, granularity=config.resolved_granularity,
                                  group_size=config.group_size, weight_threshold=config.weight_threshold)
    if config.n_m_ratio is not None:
        return OpMagnitudePrunerConfig(n_m_ratio=tuple(config.n_m_ratio), weight_threshold=config.weight_threshold)
    return OpMagnitudePrunerConfig(target_sparsity=float(config.target_sparsity),
                                   weight_threshold=config.weight_threshold)


def _bits(var: Any) -> int:
    """Bits per element of a MIL var's type (int4 -> 4, fp16 -> 16, bool -> 8)."""
    from coremltools.converters.mil.mil import types

    digits = re.sub(r"\D", "", types.builtin_to_string(var.dtype))
    return int(digits) if digits else 8


def _weights(program: Any) -> dict[str, int]:
    """The constants compression considers (float, rank >= 2, at least 10 elements, not already compressed),
    name -> bytes."""
    found = {}
    for fn in program.functions.values():
        for op in fn.operations:
            var = op.outputs[0]
            if op.op_type != "const" or var.val is None or getattr(var.val, "ndim", 0) < 2 or var.val.size < 10 \
                    or var.val.dtype.kind != "f" or any(c.op_type.startswith("constexpr_") for c in var.child_ops):
                continue
            found[op.name] = var.val.size * _bits(var) // 8
    return found


def _compressed_bytes(program: Any) -> int:
    """What the program's constexpr ops store: the bytes of their constant inputs."""
    total = 0
    for fn in program.functions.values():
        for op in fn.operations:
            if op.op_type.startswith("constexpr_"):
                total += sum(v.val.size * _bits(v) // 8 for v in op.inputs.values()
                             if getattr(v, "op", None) is not None and v.op.op_type == "const"
                             and isinstance(v.val, np.ndarray))
    return total


def compress(mlmodel: Any, config: CompressionConfig, target: str) -> tuple[Any, dict[str, Any]]:
    """The model with its weights compressed as `config` says, and what was done (`info`). Raises RecipeError
    before any work when the deployment target lacks an option, BadInputError when k-means lacks
    scikit-learn."""
    if config.mode == "none":
        return mlmodel, {"mode": "none"}
    problems = check_compression(config, target)
    if problems:
        raise RecipeError(problems[0])
    if config.mode == "palettize" and config.palette == "kmeans" and importlib.util.find_spec("sklearn") is None:
        raise BadInputError("compression palette kmeans needs scikit-learn: pip install scikit-learn "
                            "(or palette: uniform)")
    from coremltools.optimize import coreml as cto

    before = _weights(mlmodel._mil_program)
    stored_before = _compressed_bytes(mlmodel._mil_program)
    apply = {"linear": cto.linear_quantize_weights, "palettize": cto.palettize_weights,
             "prune": cto.prune_weights}[config.mode]
    try:
        with quiet_native_stderr():
            compressed = apply(mlmodel, cto.OptimizationConfig(global_config=_op_config(config)))
    except (ValueError, TypeError, AssertionError) as e:
        raise ConversionError(f"compression ({config.mode}) failed: {first_line(e)}") from e
    after = _weights(compressed._mil_program)
    done = [name for name in before if name not in after]
    skipped = [name for name in before if name in after]
    info: dict[str, Any] = {"mode": config.mode, "weight_threshold": config.weight_threshold,
                            **{k: v for k, v in config.model_dump().items() if k in _OPTIONS[config.mode]}}
    if config.mode in _GRANULARITIES:
        info["granularity"] = config.resolved_granularity
    info.update(weights_compressed=len(done), weights_skipped=len(skipped), bytes_before=sum(before[n] for n in done),
                bytes_after=_compressed_bytes(compressed._mil_program) - stored_before,
                bytes_skipped=sum(before[n] for n in skipped))
    return compressed, info
