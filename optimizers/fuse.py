"""`fuse`: fold BatchNormalization into the Conv / ConvTranspose / Gemm before it, fuse BERT-style encoder
blocks with onnxruntime.transformers, then apply ONNX Runtime's offline graph optimizations.

The Conv+BN fold is written here (on onnx-ir) rather than taken from onnxsim or ONNX Runtime so that it runs
for every target, not just ORT, and so the report can say how many BNs were folded. ORT's offline levels
stop at "extended": "all" bakes NCHWc layouts for the CPU it runs on into the file, which would not be
portable to the machine the model ships to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.passes.common import RemoveUnusedNodesPass

from accelopt.converters.onnx_io import copy_model, is_large, save_model
from pydantic import Field

from accelopt.errors import ConversionError, first_line
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register
from accelopt.optimizers.initializers import InitializerWriter

_ORT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")

# What ORT's offline optimization (`ort: basic|extended`) writes for Conv/Gemm/MatMul + activation: contrib ops
# that later steps cannot rescale (equalize) or quantize (ORT's quantizer has no int8 form for them).
ORT_FUSED = frozenset({"FusedConv", "FusedGemm", "FusedMatMul"})


class FuseConfig(PassConfig):
    conv_bn: bool = Field(True, description="fold BatchNormalization into the Conv/ConvTranspose/Gemm before it")
    ort: Literal["off", "basic", "extended"] = Field(
        "extended", description="ONNX Runtime offline graph optimization (ORT target only); never 'all', which "
                                "bakes host-specific NCHWc layouts into the file")
    transformer: Literal["auto", "bert", "off"] = Field(
        "auto", description="onnxruntime.transformers fusions (Attention, SkipLayerNorm, Gelu); auto = only for "
                            "graphs that look like a BERT-style encoder, and only for the onnxruntime target (the "
                            "fused ops are ORT-only)")


# --- Conv + BatchNormalization -------------------------------------------------------------------------------


def _const(value: ir.Value | None) -> np.ndarray | None:
    """A weight that is fixed in the file (initializer or Constant node), not one a caller could feed."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _bn_params(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (scale, shift) of an inference-mode BN, so that bn(y) = y * scale + shift."""
    if len(bn.outputs) != 1 or bn.attributes.get_int("training_mode", 0) or not bn.attributes.get_int("spatial", 1):
        return None
    params = [_const(v) for v in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
    return scale, beta - mean * scale


def _out_channels(node: ir.Node, w: np.ndarray) -> int:
    if node.op_type == "Conv":  # weight [Cout, Cin/g, k...]
        return w.shape[0]
    if node.op_type == "ConvTranspose":  # weight [Cin, Cout/g, k...]
        return node.attributes.get_int("group", 1) * w.shape[1]
    return w.shape[0] if node.attributes.get_int("transB", 0) else w.shape[1]  # Gemm: B [M, K] or [K, M]


def _scaled_weight(node: ir.Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The weight with each output channel multiplied by `scale`, per the op's weight layout."""
    if node.op_type == "Conv":
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    if node.op_type == "ConvTranspose":  # output channel = group * Cout/g + j
        g = node.attributes.get_int("group", 1)
        grouped = w.reshape((g, w.shape[0] // g) + w.shape[1:])
        return (grouped * scale.reshape((g, 1, w.shape[1]) + (1,) * (w.ndim - 2))).reshape(w.shape)
    return w * scale[:, None] if node.attributes.get_int("transB", 0) else w * scale[None, :]


def _folded_bias(node: ir.Node, scale: np.ndarray, shift: np.ndarray) -> np.ndarray | None:
    """New bias (Gemm: new C with beta folded in) so that the node alone computes bn(node(x))."""
    bias_in = node.inputs[2] if len(node.inputs) > 2 else None
    bias = _const(bias_in) if bias_in is not None else np.zeros(1)
    if bias is None:
        return None
    if node.op_type == "Gemm":
        bias = bias * node.attributes.get_float("beta", 1.0)
    return bias * scale + shift


def _fold_one(graph: ir.Graph, bn: ir.Node, writer: InitializerWriter) -> bool:
    x = bn.inputs[0]
    node = x.producer() if x is not None else None
    if node is None or node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx"):
        return False
    if len(x.uses()) != 1 or x.is_graph_output() or len(node.outputs) != 1:
        return False
    params, w = _bn_params(bn), _const(node.inputs[1])
    if params is None or w is None or not np.issubdtype(w.dtype, np.floating) or w.ndim < 2:
        return False
    if (node.op_type == "Gemm" and w.ndim != 2) or _out_channels(node, w) != params[0].size:
        return False
    new_b = _folded_bias(node, *params)
    if new_b is None:
        return False
    new_w = _scaled_weight(node, w.astype(np.float64), params[0])
    node.replace_input_with(1, writer.value(f"{node.inputs[1].name}_bnfold", new_w.astype(w.dtype)))
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, writer.value(f"{bn.name or x.name}_bias", new_b.astype(w.dtype)))
    if node.op_type == "Gemm":
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    y = bn.outputs[0]
    name, was_output = y.name, y.is_graph_output()
    y.replace_all_uses_with(x, replace_graph_outputs=True)
    graph.remove(bn, safe=True)
    if was_output:  # x now stands for the graph output: give it the output's name, type and shape
        x.name, x.type, x.shape = name, y.type, y.shape
    return True


def fold_conv_bn(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold each inference BN whose input comes only from a Conv/ConvTranspose/Gemm with constant weights."""
    m = ir.from_proto(model)
    writer = InitializerWriter(m.graph)
    folded = sum(_fold_one(m.graph, bn, writer) for bn in list(m.graph)
                 if bn.op_type == "BatchNormalization" and bn.domain in ("", "ai.onnx"))
    if not folded:
        return model, 0
    return ir.to_proto(RemoveUnusedNodesPass()(m).model), folded


# --- onnxruntime.transformers --------------------------------------------------------------------------------


def looks_like_encoder(model: onnx.ModelProto) -> bool:
    """MatMul + Softmax attention plus a layer norm (fused, or the ReduceMean/Pow/Sqrt pattern)."""
    ops = {n.op_type for n in model.graph.node}
    return {"MatMul", "Softmax"} <= ops and ("LayerNormalization" in ops or {"ReduceMean", "Pow", "Sqrt"} <= ops)


def fuse_transformer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Attention / SkipLayerNorm / Gelu fusions; opt_level=0 because ORT's own level is a separate switch."""
    from onnxruntime.transformers.optimizer import optimize_model  # slow import, only for encoders

    work = copy_model(model)  # the optimizer edits the proto it is given
    try:
        optimizer = optimize_model(work, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    except Exception as e:
        raise ConversionError(f"fuse: transformer fusion failed ({type(e).__name__}: {str(e)[:200]})") from e
    out = optimizer.model
    if any(n.domain == "com.microsoft" for n in out.graph.node) and all(
            o.domain != "com.microsoft" for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # the optimizer adds it only on save
    return out, {op: n for op, n in optimizer.get_fused_operator_statistics().items() if n}


# --- ONNX Runtime offline optimization -----------------------------------------------------------------------


def ort_optimize(model: onnx.ModelProto, level: str, tmp_dir: Path) -> onnx.ModelProto:
    """Let ORT (CPU EP) optimize the graph and write it back (SessionOptions.optimized_model_filepath)."""
    src = save_model(model, Path(tmp_dir) / "fuse-ort-in.onnx")
    dst = Path(tmp_dir) / "fuse-ort-out.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = _ORT_LEVELS[level]
    options.optimized_model_filepath = str(dst)
    if is_large(model):
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ConversionError(f"fuse: ONNX Runtime could not optimize the model ({first_line(e)})") from e
    return onnx.load(str(dst))


def _ort_level(config: FuseConfig, ctx: PassContext) -> str:
    target = getattr(ctx.target, "name", None)
    if config.ort != "off" and target not in (None, "onnxruntime"):
        ctx.log(f"fuse: ONNX Runtime graph optimization skipped: target is {target}, not onnxruntime")
        return "off"
    return config.ort


@register
class Fuse(Pass):
    name = "fuse"
    summary = "Fold BatchNorm into Conv/Gemm, fuse transformer blocks, apply ONNX Runtime graph optimizations."
    Config = FuseConfig

    def apply(self, model: onnx.ModelProto, config: FuseConfig, ctx: PassContext) -> onnx.ModelProto:
        out, folded = fold_conv_bn(model) if config.conv_bn else (model, 0)
        ctx.decide("conv_bn_folded", folded)
        fusions: dict[str, int] = {}
        ort_target = getattr(ctx.target, "name", None) in (None, "onnxruntime")
        if config.transformer == "bert" or (config.transformer == "auto" and ort_target and looks_like_encoder(out)):
            out, fusions = fuse_transformer(out)
        ctx.decide("transformer_fusions", fusions)
        level = _ort_level(config, ctx)
        if level != "off":
            out = ort_optimize(out, level, ctx.tmp_dir)
        ctx.decide("ort_level", level)
        try:
            onnx.checker.check_model(out)
        except onnx.checker.ValidationError as e:
            raise ConversionError(f"fuse: result fails onnx.checker ({first_line(e)})") from e
        if out is model:  # every step was off or found nothing: still hand back a model of our own
            out = copy_model(model)
        return out
