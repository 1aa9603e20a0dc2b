"""`simplify`: onnxsim's constant folding, shape inference and graph cleanups, then Constant nodes lifted to
initializers so the passes after it find every weight in one place."""

from __future__ import annotations

import inspect

import onnx
import onnx_ir as ir
import onnxsim
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from pydantic import Field

from accelopt.converters.onnx_io import copy_model
from accelopt.errors import ConversionError, first_line
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register


def static_shapes(shapes: dict[str, list[int | str]]) -> dict[str, list[int]]:
    """The pins that are fully static: onnxsim can only overwrite an input with concrete dims."""
    return {name: list(s) for name, s in shapes.items() if all(isinstance(d, int) and d > 0 for d in s)}


def lift_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes -> initializers (onnxsim keeps unfolded Constant nodes, e.g. BN params of Paddle models)."""
    result = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir.from_proto(model))
    return ir.to_proto(result.model)


# onnxsim >= 0.8 may try a z3 proof of equivalence; accelopt validates every step itself, so skip it.
_NO_CERTIFY = {"certify": False} if "certify" in inspect.signature(onnxsim.simplify).parameters else {}


# onnxsim passes simplify must not run, so its output stays portable standard ONNX that `fuse` can
# still read: onnxsim 0.8 fuses attention into ORT-only com.microsoft ops (Attention, GroupQueryAttention),
# which TFLite, Core ML and TVM cannot take, and its batched MatMul+Add -> Reshape/Gemm/Reshape and
# Unsqueeze merging hide BERT attention from onnxruntime.transformers. Unknown names are ignored by
# older onnxsim versions.
PORTABILITY_SKIPS = ("fuse_attention", "fuse_gqa", "fuse_matmul_add_bias_into_gemm_batched",
                     "fuse_consecutive_unsqueezes")


class SimplifyConfig(PassConfig):
    check_n: int = Field(0, ge=0, description="onnxsim's own random-input check runs; accelopt validates every step anyway")
    skip_shape_inference: bool = Field(False, description="skip onnxsim's shape inference (for models it cannot infer)")
    skip_constant_folding: bool = Field(False, description="keep constant subgraphs as they are")
    fold_bn: bool = Field(False, description="let onnxsim fold BatchNorm; off because `fuse` folds and reports it")
    skipped_optimizers: list[str] = Field(
        default_factory=lambda: list(PORTABILITY_SKIPS),
        description="onnxsim passes not to run; the defaults keep the output standard ONNX (no ORT-only "
                    "Attention ops) and keep BERT attention recognizable for `fuse` (without them "
                    "all-MiniLM-L6-v2 lost all 6 Attention fusions)")


@register
class Simplify(Pass):
    name = "simplify"
    summary = "Fold constants and clean up the graph with onnxsim; lift Constant nodes to initializers."
    Config = SimplifyConfig

    def apply(self, model: onnx.ModelProto, config: SimplifyConfig, ctx: PassContext) -> onnx.ModelProto:
        pins = static_shapes(ctx.input_shapes)
        try:
            simplified, ok = onnxsim.simplify(
                copy_model(model),
                check_n=config.check_n,
                skip_fuse_bn=not config.fold_bn,
                skip_shape_inference=config.skip_shape_inference,
                skip_constant_folding=config.skip_constant_folding,
                skipped_optimizers=list(config.skipped_optimizers) or None,  # onnxsim appends to it
                overwrite_input_shapes=pins or None,
                **_NO_CERTIFY,
            )
        except Exception as e:  # onnxsim raises bare RuntimeErrors from its C++ core
            raise ConversionError(f"simplify: onnxsim failed ({first_line(e, with_type=True)})") from e
        if not ok:
            raise ConversionError("simplify: onnxsim's own check found different outputs after simplifying; "
                                  "set check_n: 0 or skip this step")
        out = lift_constants(simplified)
        if pins:
            ctx.decide("pinned_shapes", pins)
        return out
