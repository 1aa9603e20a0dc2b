"""`equalize`: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization") and optional empirical
bias correction, to run before `quantize`.

Equalization rescales the output channels of a Conv/Gemm/MatMul by 1/s and the matching input channels of the
next one by s, across a positively homogeneous activation (Relu, LeakyRelu, PRelu: f(s*x) = s*f(x) for s > 0),
so that both layers' per-channel weight ranges become sqrt(r1*r2). The float function is unchanged, but an
outlier channel no longer forces a coarse activation scale on the tensor between the two layers: on the
outlier model of the quantization notes (§8.2-8.3) all-INT8 went from 23.6 dB to 39.1 dB. Clip (Relu6),
HardSwish, Sigmoid, SiLU and the like are not homogeneous, so pairs across them are skipped and reported.
Order in a recipe: fold BatchNorm first (`fuse: {ort: off}` or `simplify: {fold_bn: true}`), then `equalize`,
then `quantize`; ONNX Runtime's own fused layers (FusedConv, which `fuse` writes at its ORT levels) are left
alone and reported, as ORT's quantizer leaves them float anyway.

Bias correction changes the float model on purpose: it adds -E[(W_q - W) x] to each layer's bias, where W_q is
W after symmetric per-output-channel int8 rounding and E[x] the per-channel mean of the layer's input on the
calibration data, so that the expected pre-activation output survives weight quantization. It only helps when
a `quantize` step with per-channel symmetric int8 weights follows (ORT's QDQ default for QInt8 weights);
validation of this step then shows a small, expected float error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper
from onnx_ir.passes.common import RemoveUnusedNodesPass
from pydantic import Field

from accelopt.errors import RecipeError
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register
from accelopt.optimizers.fuse import ORT_FUSED
from accelopt.optimizers.initializers import InitializerWriter
from accelopt.targets.base import run_all
from accelopt.targets.onnxruntime import OrtRunner

_WEIGHT_OPS = frozenset({"Conv", "Gemm", "MatMul"})
# f(s*x) = s*f(x) for s > 0, element-wise, whatever the slope: equalization may cross these.
_HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu"})
# Element-wise but not homogeneous: a chain through one of these is reported, never rescaled.
_NOT_HOMOGENEOUS = frozenset({"Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu", "Selu", "Celu",
                              "Gelu", "Softplus", "Softsign", "Mish", "Erf", "ThresholdedRelu", "BatchNormalization"})
_ELEMENTWISE = _HOMOGENEOUS | _NOT_HOMOGENEOUS
_EPS = 1e-12
_INT8_MAX = 127  # symmetric int8 weights use [-127, 127], as ORT's QInt8 weight quantization does
_STATS_BATCH = 8  # samples per ORT call when gathering input means: bounds the memory of exposed activations


class EqualizeConfig(PassConfig):
    iterations: int = Field(3, ge=1, description="sweeps over all equalizable pairs; chains converge in a few")
    bias_correction: bool = Field(
        False, description="add -E[(W_q - W) x] to each Conv/Gemm/MatMul bias (needs calibration data); only "
                           "useful before a quantize step with per-channel symmetric int8 weights, and changes "
                           "the float outputs slightly by design")


# --- layers ----------------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """A Conv/Gemm/MatMul with a constant float weight, as float64 arrays to rescale and write back.

    `b` has the output channels on its last axis (Gemm: beta * C broadcast to that), or is None.
    """

    node: ir.Node
    w: np.ndarray
    b: np.ndarray | None
    dtype: np.dtype
    out_axis: int  # output-channel axis of w
    in_axis: int  # input-channel axis of w
    x_axis: int  # channel axis of the activation input
    group: int = 1
    # Where b lives, as (node, input index): the layer itself (Conv, Gemm), the Add after a MatMul, or None for a
    # bare MatMul, which gets an Add only if bias correction gives it a bias.
    bias_at: tuple[ir.Node, int] | None = None

    @property
    def output(self) -> ir.Value:
        """The layer's result, bias included: what the next op sees."""
        holder = self.bias_at[0] if self.bias_at else self.node
        return holder.outputs[0]


_Pair = tuple[_Layer, _Layer, list[str]]  # producer, consumer, op types between


def _const(value: ir.Value | None) -> np.ndarray | None:
    """A tensor fixed in the file (initializer or Constant node), not one a caller could feed."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _name(node: ir.Node) -> str:
    return node.name or f"{node.op_type}({node.outputs[0].name})"


def _bias(value: ir.Value | None, n_out: int, scale: float = 1.0) -> tuple[bool, np.ndarray | None]:
    """(usable, the bias times `scale` with the `n_out` output channels on its last axis)."""
    if value is None:
        return True, None
    c = _const(value)
    if c is None or not np.issubdtype(c.dtype, np.floating) or (c.ndim and c.shape[-1] not in (1, n_out)):
        return False, None
    c = c.astype(np.float64) * scale
    return True, np.broadcast_to(c, c.shape[:-1] + (n_out,)).copy() if c.ndim else np.full(n_out, c)


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _matmul_add(node: ir.Node) -> tuple[ir.Node, int] | None:
    """(Add, index of its constant input) when the MatMul's only consumer adds a constant: the layer's bias."""
    y = node.outputs[0]
    uses = y.uses()
    if y.is_graph_output() or len(uses) != 1 or uses[0][0].op_type != "Add" or len(uses[0][0].inputs) != 2:
        return None
    add, index = uses[0][0], 1 - uses[0][1]
    return (add, index) if _const(add.inputs[index]) is not None else None


def _layer(node: ir.Node) -> _Layer | None:
    """The node as a rescalable layer, or None when its weight or bias is not a constant float tensor."""
    if node.op_type not in _WEIGHT_OPS or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    w = _const(_input(node, 1))
    if w is None or not np.issubdtype(w.dtype, np.floating) or w.ndim < 2:
        return None
    if node.inputs[0] is None or _const(node.inputs[0]) is not None:  # nothing to equalize or measure
        return None
    if node.op_type == "Conv":
        out_axis, in_axis, x_axis, bias_at, scale = 0, 1, 1, (node, 2), 1.0
    elif w.ndim != 2:
        return None
    elif node.op_type == "Gemm":
        out_axis, in_axis = (0, 1) if node.attributes.get_int("transB", 0) else (1, 0)
        x_axis, bias_at = 0 if node.attributes.get_int("transA", 0) else 1, (node, 2)
        scale = node.attributes.get_float("beta", 1.0)
    else:
        out_axis, in_axis, x_axis, bias_at, scale = 1, 0, -1, _matmul_add(node), 1.0
    usable, b = _bias(_input(*bias_at) if bias_at else None, w.shape[out_axis], scale)
    if not usable:
        return None
    return _Layer(node, w.astype(np.float64), b, w.dtype, out_axis, in_axis, x_axis,
                  node.attributes.get_int("group", 1), bias_at)


def _channel_max(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| per slice along `axis` (per output or per input channel)."""
    return np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)


def _scale_along(w: np.ndarray, s: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    return w * s.reshape(shape)


def _grouped(layer: _Layer) -> np.ndarray:
    """A Conv weight [Cout, Cin/g, k...] as [g, Cout/g, Cin/g, k...]: input channel g*Cin/g + j is [g, :, j]."""
    return layer.w.reshape((layer.group, layer.w.shape[0] // layer.group) + layer.w.shape[1:])


def _input_ranges(layer: _Layer) -> np.ndarray:
    """max |w| per input channel; for a grouped (e.g. depthwise) Conv, over the outputs that channel feeds."""
    if layer.node.op_type != "Conv":
        return _channel_max(layer.w, layer.in_axis)
    per_input = np.abs(_grouped(layer)).swapaxes(1, 2)  # [g, Cin/g, Cout/g, k...]
    return per_input.reshape(layer.group * layer.w.shape[1], -1).max(axis=1)


def _scale_inputs(layer: _Layer, s: np.ndarray) -> np.ndarray:
    """The weight with input channel i multiplied by s[i]."""
    if layer.node.op_type != "Conv":
        return _scale_along(layer.w, s, layer.in_axis)
    shape = (layer.group, 1, layer.w.shape[1]) + (1,) * (layer.w.ndim - 2)
    return (_grouped(layer) * s.reshape(shape)).reshape(layer.w.shape)


# --- chains ----------------------------------------------------------------------------------------------------


@dataclass
class _Chain:
    producer: ir.Node
    consumer: ir.Node
    via: list[str]  # op types between the two
    blocker: str | None  # why the chain cannot be equalized, if it cannot


def _silu_output(value: ir.Value) -> ir.Value | None:
    """Output of x * Sigmoid(x) when `value` (x) feeds exactly that pattern, else None."""
    uses = value.uses()
    if len(uses) != 2:
        return None
    sig = next((n for n, i in uses if n.op_type == "Sigmoid" and i == 0), None)
    mul = next((n for n, _ in uses if n.op_type == "Mul"), None)
    if sig is None or mul is None or len(sig.outputs[0].uses()) != 1 or sig.outputs[0] not in mul.inputs:
        return None
    return mul.outputs[0]


def _follow(producer: _Layer) -> _Chain | None:
    """Walk from a layer's output through single-consumer element-wise ops to the next weight layer.

    Non-homogeneous ops are walked through so that the pair they break can be reported.
    """
    value, via, blocker = producer.output, [], None
    while not value.is_graph_output():
        if (silu := _silu_output(value)) is not None:
            via.append("SiLU")
            blocker = blocker or "SiLU (x*Sigmoid(x)) between is not positively homogeneous"
            value = silu
            continue
        uses = value.uses()
        if len(uses) != 1 or uses[0][1] != 0:
            return None
        node = uses[0][0]
        if node.op_type in _WEIGHT_OPS:
            return _Chain(producer.node, node, via, blocker)
        if node.op_type not in _ELEMENTWISE or len(node.outputs) != 1:
            return None
        via.append(node.op_type)
        if node.op_type == "BatchNormalization":
            blocker = blocker or "BatchNormalization between: fold it first (`fuse: {ort: off}` before `equalize`)"
        elif node.op_type in _NOT_HOMOGENEOUS:
            blocker = blocker or f"{node.op_type} between is not positively homogeneous"
        value = node.outputs[0]
    return None


def _mismatch(p: _Layer, c: _Layer) -> str | None:
    """Why two layers joined by homogeneous ops still cannot be equalized, or None."""
    if (p.node.op_type == "Conv") != (c.node.op_type == "Conv"):
        return "producer and consumer keep channels on different axes (Conv vs Gemm/MatMul)"
    if c.x_axis == 0:
        return "consumer Gemm has transA=1"
    if c.w.shape[0] % c.group or p.w.shape[p.out_axis] != _input_ranges(c).size:
        return "channel counts differ"
    return None


# --- cross-layer equalization ------------------------------------------------------------------------------------


def _equalize_pair(p: _Layer, c: _Layer) -> np.ndarray:
    """Rescale so both per-channel ranges become sqrt(r1*r2); dead channels (range ~0) keep scale 1."""
    r1, r2 = _channel_max(p.w, p.out_axis), _input_ranges(c)
    live = (r1 > _EPS) & (r2 > _EPS)
    s = np.where(live, np.sqrt(np.maximum(r1, _EPS) / np.maximum(r2, _EPS)), 1.0)
    p.w = _scale_along(p.w, 1 / s, p.out_axis)
    if p.b is not None:
        p.b = p.b / s
    c.w = _scale_inputs(c, s)
    return s


def _range_ratio(layer: _Layer) -> float:
    """max/min of the per-output-channel weight ranges: what per-tensor activation scales suffer from."""
    r = _channel_max(layer.w, layer.out_axis)
    r = r[r > _EPS]
    return float(r.max() / r.min()) if r.size else 1.0


def _equalize(pairs: list[_Pair], iterations: int) -> list[dict]:
    """Sweep all pairs `iterations` times, in graph order; report each pair's total scale."""
    total = [np.ones(p.w.shape[p.out_axis]) for p, _, _ in pairs]
    before = [_range_ratio(p) for p, _, _ in pairs]
    for _ in range(iterations):
        for k, (p, c, _) in enumerate(pairs):
            total[k] = total[k] * _equalize_pair(p, c)
    return [{"producer": _name(p.node), "consumer": _name(c.node), "via": via,
             "scale_min": float(s.min()), "scale_max": float(s.max()),
             "range_ratio_before": round(r, 3), "range_ratio_after": round(_range_ratio(p), 3)}
            for (p, c, via), s, r in zip(pairs, total, before)]


# --- bias correction -------------------------------------------------------------------------------------------


def _input_means(model: onnx.ModelProto, layers: list[_Layer], ctx: PassContext) -> dict[tuple[str, int], np.ndarray]:
    """Per-channel mean of each layer's activation input on the calibration data (mean over N and spatial axes).

    The inputs are exposed as extra graph outputs and the model is run with ORT in small chunks.
    """
    wanted = {(layer.node.inputs[0].name, layer.x_axis) for layer in layers}
    graph_inputs = {i.name for i in model.graph.input}
    have = graph_inputs | {o.name for o in model.graph.output}
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for name in sorted({n for n, _ in wanted} - have):
        dtype = next(layer.dtype for layer in layers if layer.node.inputs[0].name == name)
        work.graph.output.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), None))
    runner = OrtRunner(work, threads=ctx.threads)
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    for feeds in ctx.calibration.batches(_STATS_BATCH):
        outputs = {**run_all(runner, feeds), **{k: v for k, v in feeds.items() if k in graph_inputs}}
        for name, axis in wanted:
            a = np.moveaxis(outputs[name].astype(np.float64), axis, 0).reshape(outputs[name].shape[axis], -1)
            sums[name, axis] = sums.get((name, axis), 0) + a.sum(axis=1)
            counts[name, axis] = counts.get((name, axis), 0) + a.shape[1]
    return {key: sums[key] / counts[key] for key in wanted}


def _weight_rounding_error(layer: _Layer) -> np.ndarray:
    """W_q - W for symmetric per-output-channel int8 weights, scale = max|W_c| / 127."""
    scale = _channel_max(layer.w, layer.out_axis) / _INT8_MAX
    scale = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round(_scale_along(layer.w, 1 / scale, layer.out_axis)), -_INT8_MAX, _INT8_MAX)
    return _scale_along(q, scale, layer.out_axis) - layer.w


def _output_shift(layer: _Layer, mean: np.ndarray) -> np.ndarray | None:
    """E[(W_q - W) x] per output channel (conv taps summed: each tap sees the same channel mean)."""
    dw = _weight_rounding_error(layer)
    if layer.node.op_type == "Conv":
        cout, cin_g = dw.shape[:2]
        if mean.size != layer.group * cin_g:
            return None
        per_out = mean.reshape(layer.group, cin_g)[np.arange(cout) // (cout // layer.group)]
        return (dw.reshape(cout, cin_g, -1).sum(axis=2) * per_out).sum(axis=1)
    dw_ok = np.moveaxis(dw, layer.out_axis, 0)  # [out, in]
    if mean.size != dw_ok.shape[1]:
        return None
    alpha = layer.node.attributes.get_float("alpha", 1.0) if layer.node.op_type == "Gemm" else 1.0
    return alpha * (dw_ok @ mean)


# --- writing back ----------------------------------------------------------------------------------------------


class _Writer(InitializerWriter):
    """Writes rescaled weights and biases as fresh initializers."""

    def weight(self, layer: _Layer) -> None:
        node = layer.node
        node.replace_input_with(1, self.value(f"{node.inputs[1].name}_eq", layer.w.astype(layer.dtype)))

    def bias(self, layer: _Layer) -> None:
        value = self.value(f"{_name(layer.node)}_bias", layer.b.astype(layer.dtype))
        if layer.bias_at is None:
            layer.bias_at = (self._add_after(layer.node, value), 1)
            return
        node, index = layer.bias_at
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        if node.op_type == "Gemm":  # beta is folded into the new C
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

    def _add_after(self, node: ir.Node, bias: ir.Value) -> ir.Node:
        """A bare MatMul has nowhere to keep a bias: y = MatMul(...) becomes y = Add(MatMul(...), bias)."""
        y = node.outputs[0]
        z = ir.Value(name=y.name, type=y.type, shape=y.shape)
        y.replace_all_uses_with(z, replace_graph_outputs=True)
        y.name = self.name(f"{y.name}_matmul")
        add = ir.Node("", "Add", [y, bias], outputs=[z], name=self.name(f"{_name(node)}_bias_add"))
        self.graph.insert_after(node, add)
        return add


# --- the pass --------------------------------------------------------------------------------------------------


def _find_pairs(layers: dict[ir.Node, _Layer]) -> tuple[list[_Pair], list[dict]]:
    """Equalizable (producer, consumer, ops between) in graph order, and the skipped chains with reasons."""
    pairs, skipped = [], []
    for node, p in layers.items():
        chain = _follow(p)
        if chain is None or chain.consumer not in layers:
            continue
        c = layers[chain.consumer]
        reason = chain.blocker or _mismatch(p, c)
        if reason:
            skipped.append({"producer": _name(node), "consumer": _name(chain.consumer), "via": chain.via,
                            "reason": reason})
        else:
            pairs.append((p, c, chain.via))
    return pairs, skipped


def _write_equalized(pairs: list[_Pair], layers: dict[ir.Node, _Layer], writer: _Writer) -> None:
    """Rescaled weights of both sides, biases of the producers; in graph order, so the file is deterministic."""
    producers = {p.node for p, _, _ in pairs}
    rescaled = producers | {c.node for _, c, _ in pairs}
    for node, layer in layers.items():
        if node in rescaled:
            writer.weight(layer)
        if node in producers and layer.b is not None:
            writer.bias(layer)


def _report_limits(graph: ir.Graph, skipped: list[dict], ctx: PassContext) -> None:
    """Say what kept layers from being equalized and what the user can do about it."""
    if any("BatchNormalization" in s["via"] for s in skipped):
        ctx.log("equalize: BatchNormalization sits between some pairs; fold it with `fuse: {ort: off}` first")
    fused = [_name(n) for n in graph if n.domain == "com.microsoft" and n.op_type in ORT_FUSED]
    ctx.decide("ort_fused_layers_left", fused)
    if fused:
        ctx.log(f"equalize: {len(fused)} ONNX Runtime fused layer(s) (FusedConv/FusedGemm/FusedMatMul) left "
                "as they are; equalize before ORT graph optimization (fuse: {ort: off})")


def _bias_correct(m: ir.Model, layers: list[_Layer], writer: _Writer, ctx: PassContext) -> dict[str, float]:
    """Correct every layer's bias for int8 weight rounding, from means measured on the equalized model."""
    if ctx.calibration.random:
        ctx.log("equalize: the calibration data is random; bias correction fitted on it will not match real inputs")
    means = _input_means(ir.to_proto(RemoveUnusedNodesPass()(m).model), layers, ctx)
    corrected = {}
    for layer in layers:
        shift = _output_shift(layer, means[layer.node.inputs[0].name, layer.x_axis])
        if shift is None:
            continue
        layer.b = (np.zeros_like(shift) if layer.b is None else layer.b) - shift
        writer.bias(layer)
        corrected[_name(layer.node)] = float(np.abs(shift).max())
    ctx.log(f"equalize: bias-corrected {len(corrected)} layer(s) for per-channel int8 weights; "
            "the float outputs move slightly by design")
    return corrected


@register
class Equalize(Pass):
    name = "equalize"
    summary = ("Cross-layer equalization of Conv/Gemm/MatMul pairs across Relu-like activations (float function "
               "unchanged), optionally with empirical bias correction; run before quantize.")
    Config = EqualizeConfig
    uses = frozenset({"calibration"})

    def apply(self, model: onnx.ModelProto, config: EqualizeConfig, ctx: PassContext) -> onnx.ModelProto:
        if config.bias_correction and ctx.calibration is None:
            raise RecipeError("equalize: bias_correction needs calibration data; declare data.calibration "
                              "or set bias_correction: false")
        m = ir.from_proto(model)
        writer = _Writer(m.graph)
        layers = {node: layer for node in m.graph if (layer := _layer(node)) is not None}
        pairs, skipped = _find_pairs(layers)
        equalized = _equalize(pairs, config.iterations)
        _write_equalized(pairs, layers, writer)
        ctx.decide("pairs_equalized", equalized)
        ctx.decide("pairs_skipped", skipped)
        ctx.log(f"equalize: {len(equalized)} pair(s) equalized over {config.iterations} sweep(s), "
                f"{len(skipped)} skipped")
        _report_limits(m.graph, skipped, ctx)
        if config.bias_correction:
            ctx.decide("bias_corrected", _bias_correct(m, list(layers.values()), writer, ctx))
        return ir.to_proto(RemoveUnusedNodesPass()(m).model)
