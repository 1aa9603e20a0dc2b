"""`simplify`: onnxsim's constant folding, shape inference and graph cleanups, then Constant nodes lifted to
initializers so the passes after it find every weight in one place."""

from __future__ import annotations

import inspect
from collections import Counter

import onnx
import onnx_ir as ir
import onnxsim
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from accelopt.errors import ConversionError
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register


def op_histogram(model: onnx.ModelProto) -> Counter[str]:
    """Node count per op type of the main graph; custom-domain ops are written `domain:Op`."""
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}" for n in model.graph.node)


def op_delta(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    """What changed per op type, e.g. {"Constant": -308, "Shape": -20}; unchanged ops are left out."""
    return {op: after[op] - before[op] for op in sorted(before | after) if after[op] != before[op]}


def static_shapes(shapes: dict[str, list[int | str]]) -> dict[str, list[int]]:
    """The pins that are fully static: onnxsim can only overwrite an input with concrete dims."""
    return {name: list(s) for name, s in shapes.items() if all(isinstance(d, int) and d > 0 for d in s)}


def lift_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes -> initializers (onnxsim keeps unfolded Constant nodes, e.g. BN params of Paddle models)."""
    result = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir.from_proto(model))
    return ir.to_proto(result.model)


# onnxsim >= 0.8 may try a z3 proof of equivalence; accelopt validates every step itself, so skip it.
_NO_CERTIFY = {"certify": False} if "certify" in inspect.signature(onnxsim.simplify).parameters else {}


class SimplifyConfig(PassConfig):
    check_n: int = 0  # onnxsim's own random-input check; accelopt validates every step separately
    skip_shape_inference: bool = False
    skip_constant_folding: bool = False
    fold_bn: bool = False  # off: the `fuse` step folds BN and reports what it folded


@register
class Simplify(Pass):
    name = "simplify"
    summary = "Fold constants and clean up the graph with onnxsim; lift Constant nodes to initializers."
    Config = SimplifyConfig

    def apply(self, model: onnx.ModelProto, config: SimplifyConfig, ctx: PassContext) -> onnx.ModelProto:
        pins = static_shapes(ctx.input_shapes)
        try:
            simplified, ok = onnxsim.simplify(
                model,
                check_n=config.check_n,
                skip_fuse_bn=not config.fold_bn,
                skip_shape_inference=config.skip_shape_inference,
                skip_constant_folding=config.skip_constant_folding,
                overwrite_input_shapes=pins or None,
                **_NO_CERTIFY,
            )
        except Exception as e:  # onnxsim raises bare RuntimeErrors from its C++ core
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ConversionError(f"simplify: onnxsim failed ({type(e).__name__}: {first})") from e
        if not ok:
            raise ConversionError("simplify: onnxsim's own check found different outputs after simplifying; "
                                  "set check_n: 0 or skip this step")
        out = lift_constants(simplified)
        if pins:
            ctx.decide("pinned_shapes", pins)
        ctx.decide("nodes_before", len(model.graph.node))
        ctx.decide("nodes_after", len(out.graph.node))
        ctx.decide("op_delta", op_delta(op_histogram(model), op_histogram(out)))
        return out
