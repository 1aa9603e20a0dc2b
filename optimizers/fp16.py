"""`fp16`: convert float32 weights and activations to float16 with onnxruntime.transformers.float16.

Ops on the block list (the library's default list covers ops without float16 kernels or with float16
accuracy problems) and named nodes stay float32, behind Cast nodes the converter inserts.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_ir as ir
from onnx import TensorProto
from pydantic import Field
from onnx_ir.passes.common import TopologicalSortPass
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from accelopt.converters.onnx_io import copy_model
from accelopt.errors import ConversionError, RecipeError
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register


class Fp16Config(PassConfig):
    keep_io_types: bool = Field(True, description="keep float32 inputs/outputs (Casts inside) so callers feed the same arrays")
    op_block_list: list[str] | None = Field(None, description="op types kept in float32; null = onnxruntime's default list")
    node_block_list: list[str] = Field(default_factory=list, description="node names kept in float32")
    force_fp16_initializers: bool = Field(False, description="also convert weights used only by blocked nodes")


def _float_initializers(model: onnx.ModelProto, dtype: int) -> set[str]:
    return {t.name for t in model.graph.initializer if t.data_type == dtype}


def _sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter appends its input Casts at the end of the node list, which onnx.checker rejects."""
    return ir.to_proto(TopologicalSortPass()(ir.from_proto(model)).model)


def _check_node_names(model: onnx.ModelProto, names: list[str]) -> None:
    """A misspelt node name would silently leave nothing blocked: say so instead."""
    unknown = sorted(set(names) - {n.name for n in model.graph.node})
    if unknown:
        raise RecipeError(f"fp16: node_block_list names no node of the model: {', '.join(unknown[:10])}")


@register
class Fp16(Pass):
    name = "fp16"
    summary = "Convert float32 weights and activations to float16, keeping blocked ops in float32."
    Config = Fp16Config
    precision = "fp16"

    def apply(self, model: onnx.ModelProto, config: Fp16Config, ctx: PassContext) -> onnx.ModelProto:
        _check_node_names(model, config.node_block_list)
        op_block = DEFAULT_OP_BLOCK_LIST if config.op_block_list is None else config.op_block_list
        work = copy_model(model)  # the converter edits the proto it is given in place
        try:
            out = _sorted(convert_float_to_float16(
                work,
                keep_io_types=config.keep_io_types,
                op_block_list=op_block,
                node_block_list=config.node_block_list,
                force_fp16_initializers=config.force_fp16_initializers,
            ))
        except Exception as e:
            raise ConversionError(f"fp16: conversion failed ({type(e).__name__}: {str(e)[:200]})") from e
        fp32 = _float_initializers(model, TensorProto.FLOAT)
        converted = fp32 & _float_initializers(out, TensorProto.FLOAT16)
        blocked_ops = Counter(n.op_type for n in model.graph.node if n.op_type in op_block)
        ctx.decide("initializers_converted", len(converted))
        ctx.decide("initializers_kept_fp32", len(fp32 - converted))
        ctx.decide("blocked_ops", dict(sorted(blocked_ops.items())))
        ctx.decide("blocked_nodes", sorted(config.node_block_list))
        return out
