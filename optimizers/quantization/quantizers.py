"""The three quantizers behind one call shape, and the Job that re-quantizes with other node sets."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from accelopt.converters.onnx_io import copy_model
from accelopt.errors import RecipeError
from accelopt.optimizers.base import PassContext
from accelopt.optimizers.quantization.calibration import METHODS
from accelopt.optimizers.quantization.config import QuantizeConfig
from accelopt.optimizers.quantization.prepare import CONVERTERS, extra_options, has_external_data, quant_ops
from accelopt.optimizers.quantization.settings import DYNAMIC_OPS, WEIGHTED, Settings

if TYPE_CHECKING:
    from accelopt.optimizers.quantization.accuracy import Scorer

# (excluded nodes, only these nodes or None = all, nodes in 16 bits) -> quantized model
Quantizer = Callable[[set[str], set[str] | None, set[str]], onnx.ModelProto]
WIDE = {QuantType.QUInt8: QuantType.QUInt16, QuantType.QInt8: QuantType.QInt16}


def static_quantizer(pre_path: Path, base: onnx.ModelProto, ranges: Path, settings: Settings,
                     config: QuantizeConfig, ctx: PassContext) -> Quantizer:
    """QDQ quantize_static that reads the cached ranges: no calibration inference per call."""
    extra, out = extra_options(settings, base), ctx.tmp_dir / "quantized.onnx"

    def run(excluded: set[str], only: set[str] | None, wide: set[str]) -> onnx.ModelProto:
        overrides = {"TensorQuantOverrides": sixteen_bit_overrides(base, wide, settings)} if wide else {}
        quantize_static(str(pre_path), str(out), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=settings.op_types, per_channel=settings.per_channel,
                        reduce_range=settings.reduce_range, activation_type=settings.activation_type,
                        weight_type=settings.weight_type, nodes_to_quantize=sorted(only or []),
                        nodes_to_exclude=sorted(excluded), use_external_data_format=has_external_data(pre_path),
                        calibrate_method=METHODS[config.calibration], extra_options={**extra, **overrides},
                        calibration_cache_path=ranges)
        return onnx.load(str(out))

    return run


def dynamic_quantizer(pre_path: Path, base: onnx.ModelProto, settings: Settings, ctx: PassContext) -> Quantizer:
    """quantize_dynamic: int8 weights offline, uint8 activations quantized per call."""
    extra, out = extra_options(settings, base), ctx.tmp_dir / "quantized.onnx"

    def run(excluded: set[str], only: set[str] | None, wide: set[str]) -> onnx.ModelProto:
        quantize_dynamic(str(pre_path), str(out), op_types_to_quantize=settings.op_types or DYNAMIC_OPS,
                         per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                         weight_type=settings.weight_type, nodes_to_quantize=sorted(only or []),
                         nodes_to_exclude=sorted(excluded), use_external_data_format=has_external_data(pre_path),
                         extra_options=extra)
        return onnx.load(str(out))

    return run


def weight_only_quantizer(base: onnx.ModelProto, config: QuantizeConfig) -> Quantizer:
    """int4 MatMulNBits on MatMuls with constant weights; the quantizer edits the model it is given, so each
    call gets a copy. Imported here: the module calls logging.basicConfig at INFO on import (isolation.library_logs)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    def run(excluded: set[str], only: set[str] | None, wide: set[str]) -> onnx.ModelProto:
        algo = DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=config.symmetric,
                                            accuracy_level=config.accuracy_level, bits=4,
                                            op_types_to_quantize=tuple(config.op_types or ["MatMul"]))
        quantizer = MatMulNBitsQuantizer(copy_model(base), nodes_to_exclude=sorted(excluded),
                                         nodes_to_include=sorted(only) if only is not None else None,
                                         algo_config=algo)
        quantizer.process()
        return quantizer.model.model

    return run


def sixteen_bit_overrides(model: onnx.ModelProto, nodes: set[str], settings: Settings) -> dict[str, list[dict]]:
    """TensorQuantOverrides that give `nodes` 16-bit activations (inputs and outputs) and 16-bit weights, same
    signedness as the 8-bit types, per-channel weights on the axis ORT itself would use. Both halves matter:
    the outlier model's error sits in conv4's weights (its input channels are 40x apart), so 16-bit
    activations alone left it at 28 dB and 16-bit weights too reached 39.6 dB. ORT bumps the model to opset
    21, where QuantizeLinear takes 16-bit types."""
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    act = [{"quant_type": WIDE[settings.activation_type]}]
    overrides: dict[str, list[dict]] = {}
    for node in model.graph.node:
        if node.name not in nodes:
            continue
        for name in [*node.input, *node.output]:
            if name and name not in weights:
                overrides[name] = act
        if node.op_type in _WEIGHT_AXIS and len(node.input) > 1 and node.input[1] in weights:
            wide: dict = {"quant_type": WIDE[settings.weight_type]}
            if settings.per_channel:
                axis = settings.extra.get("QDQOpTypePerChannelSupportToAxis", {}).get(node.op_type)
                wide["axis"] = _WEIGHT_AXIS[node.op_type](node) if axis is None else axis
            overrides[node.input[1]] = [wide]
    return overrides


def _transposed_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


# The weight's channel axis per op type, as onnxruntime.quantization's QDQ operators choose it by default.
_WEIGHT_AXIS: dict[str, Callable[[onnx.NodeProto], int]] = {
    "Conv": lambda node: 0, "ConvTranspose": lambda node: 1, "MatMul": lambda node: 1,
    "Gemm": lambda node: 0 if _transposed_b(node) else 1}


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
    wide: dict[str, str] = field(default_factory=dict)  # node name -> why it gets 16-bit Q/DQ (static mode)

    def quantize(self, extra: Iterable[str] = (), only: set[str] | None = None,
                 wide: Iterable[str] = ()) -> onnx.ModelProto:
        """Quantize all but the excluded nodes (and `extra`), restricted to `only` and include_nodes if given;
        the wide nodes (and `wide`) in 16 bits."""
        wanted = only if self.only is None else (self.only if only is None else only & self.only)
        excluded = set(self.excluded) | set(extra)
        if wanted is not None and not wanted - excluded:  # ORT reads an empty list as "quantize everything"
            return copy_model(self.base)
        sixteen = (set(self.wide) | set(wide)) - excluded
        return self.quantizer(excluded, None if wanted is None else wanted - excluded, sixteen)


def resolve_exclusions(model: onnx.ModelProto, config: QuantizeConfig) -> dict[str, str]:
    """The recipe's exclusions as node name -> reason; a name that matches no node is an error, not a no-op."""
    names = {n.name for n in model.graph.node}
    for key in ("exclude_nodes", "include_nodes", "int16_nodes"):
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
        return Counter({op: k for op, k in quant_ops(model).items() if op not in CONVERTERS})
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
