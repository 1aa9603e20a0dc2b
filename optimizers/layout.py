"""`layout`: NCHW -> NHWC for channels-last targets (TFLite), as a semantics-preserving ONNX -> ONNX step.

Layout-sensitive ops move into the `accelopt.nhwc` function domain (each still runs in onnxruntime through a
model-local function), then transposes are sunk and cancelled; see optimizers/transposes/.
"""

from __future__ import annotations

import onnx
from pydantic import Field

from accelopt.errors import RecipeError
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register
from accelopt.optimizers.transposes import WRAPPABLE, to_channels_last


class LayoutConfig(PassConfig):
    sink: bool = Field(True, description="push transposes through layout-agnostic ops and cancel them; "
                                         "false only wraps (for debugging)")
    ops: list[str] | None = Field(None, description="op types to make channels-last (default: every "
                                                    "layout-sensitive op that can be wrapped)")


@register
class Layout(Pass):
    name = "layout"
    summary = "Make layout-sensitive ops channels-last (NHWC) and sink the transposes around them."
    Config = LayoutConfig

    def apply(self, model: onnx.ModelProto, config: LayoutConfig, ctx: PassContext) -> onnx.ModelProto:
        ops = None
        if config.ops is not None:
            unknown = sorted(set(config.ops) - WRAPPABLE)
            if unknown:
                raise RecipeError(f"layout: ops {unknown} are not layout-sensitive ops it can wrap; "
                                  f"valid: {', '.join(sorted(WRAPPABLE))}")
            ops = set(config.ops)
        out, decisions = to_channels_last(model, sink=config.sink, ops=ops)
        for key, value in decisions.items():
            ctx.decide(key, value)
        return out
