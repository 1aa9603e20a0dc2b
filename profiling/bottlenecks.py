"""The bottleneck table of `accelopt profile`: which recipe step addresses the time a profile found.

The rules are data: each names the kernels it is about (by the op they run, the input-model ops they compute,
and tags profiling/report.py sets), the share of the measured latency above which it is worth a line, and the step to
try. A kernel can match several rules (a 3x3 FP32 conv is both a quantization and a Winograd candidate), so
bottleneck shares overlap and do not add up to 100%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelopt.profiling.report import NodeRow

_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Neg", "Abs", "Max", "Min", "Where", "Relu", "LeakyRelu", "Clip",
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Softplus", "Mish", "Gelu", "FastGelu", "BiasGelu",
    "QuickGelu", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
})
_SHAPE_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Size", "Gather", "Slice",
                        "Expand", "Tile", "Cast", "Range", "ConstantOfShape", "Identity"})


@dataclass(frozen=True)
class Rule:
    what: str
    step: str  # the recipe step (or target) that addresses it
    kernel_ops: frozenset[str] = frozenset()  # a kernel matches when it runs one of these ops...
    source_ops: frozenset[str] = frozenset()  # ...or computes an input-model node of one of these (both empty: any)
    tags: frozenset[str] = frozenset()  # and carries every one of these tags
    unless: frozenset[str] = frozenset()  # and none of these
    min_share: float = 0.05  # of the measured latency, to be reported
    min_kernels: int = 1

    def matches(self, row: NodeRow) -> bool:
        by_op = not (self.kernel_ops or self.source_ops) or row.op_type in self.kernel_ops \
            or not self.source_ops.isdisjoint(row.ops)
        return by_op and self.tags <= set(row.tags) and self.unless.isdisjoint(row.tags)


RULES: tuple[Rule, ...] = (
    Rule("QuantizeLinear/DequantizeLinear kernels: int8<->float conversions (Q/DQ islands around float ops)",
         "quantize with the speed guard (it names the islands and keeps float what int8 does not speed up)",
         kernel_ops=frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})),
    Rule("3x3 convolutions (stride 1, one group)", "try winograd on tvm (issue 6)",
         tags=frozenset({"conv3x3"}), min_share=0.10),
    Rule("FP32 convolutions", "quantize: recipe cpu-int8 (cpu-int8-detector for YOLO-style detectors)",
         source_ops=frozenset({"Conv", "ConvTranspose"}), tags=frozenset({"float"}), min_share=0.10),
    Rule("FP32 MatMul/Gemm", "quantize: recipe cpu-int8-transformer (per-channel dynamic INT8)",
         source_ops=frozenset({"MatMul", "Gemm"}), tags=frozenset({"float"}), min_share=0.10),
    Rule("small elementwise kernels (activations, Add/Mul)",
         "fuse (ORT folds Relu/Clip into the conv before them; other activations need a compiling target)",
         kernel_ops=_ELEMENTWISE, min_kernels=3),
    Rule("shape and layout ops of the model (Transpose, Reshape, Shape, Gather...)",
         "simplify (folds shape computations, cancels transposes; fix-shapes first pins dynamic dims)",
         kernel_ops=_SHAPE_OPS, unless=frozenset({"inserted"}), min_share=0.03),
    Rule("layout conversions the runtime inserted (NCHWc reorders, NHWC transposes)",
         "no recipe step: ORT converts layouts around ops without blocked kernels (Split, Concat, Add)",
         kernel_ops=frozenset({"ReorderInput", "ReorderOutput", "Transpose"}), tags=frozenset({"inserted"}),
         min_share=0.03),
    Rule("BatchNormalization in the model", "fuse (folds BN into the conv before it, for every target)",
         source_ops=frozenset({"BatchNormalization"}), min_share=0.0),
    Rule("compute-heavy kernels far below the best GFLOP/s reached", "prune (structured: fewer channels)",
         tags=frozenset({"low_efficiency"})),
)


@dataclass
class Bottleneck:
    what: str
    share: float  # of the measured latency
    ms: float
    kernels: int
    top: list[str]  # the costliest matching nodes
    step: str


def find_bottlenecks(rows: list[NodeRow], total_ms: float, rules: tuple[Rule, ...] = RULES) -> list[Bottleneck]:
    """Every rule whose kernels reach its share and count, costliest first."""
    found = []
    for rule in rules:
        matched = sorted((r for r in rows if rule.matches(r)), key=lambda r: -r.ms)
        ms = sum(r.ms for r in matched)
        if matched and len(matched) >= rule.min_kernels and ms >= rule.min_share * total_ms:
            found.append(Bottleneck(rule.what, ms / total_ms, ms, len(matched), [r.label for r in matched[:3]],
                                    rule.step))
    return sorted(found, key=lambda b: -b.share)
