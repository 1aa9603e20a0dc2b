"""`sparsify`: 2:4 semi-structured or unstructured magnitude sparsity, with a masked least-squares refit
(quantization notes §10).

2:4 follows NVIDIA ASP `m4n2_1d` along the GEMM reduction dimension (optimizers/pruning/masks.py): of every 4
consecutive input channels, per output channel and kernel tap, 2 weights stay. Layers whose input channels are not
a multiple of 4 (first convs with 1 or 3 channels), depthwise and grouped convs, and layers under `min_channels`
stay dense. Unstructured zeroes the `ratio` smallest |w| of each layer. The refit then re-solves each layer's kept
weights (and bias) by ridge least squares, in graph order, so that fed from the already sparsified prefix it
reproduces the original layer's output on calibration data; the masked weights stay exactly zero.

Speed: CPU runtimes here gain nothing. ONNX Runtime's CPU EP has no sparse kernels (a sparse_initializer is densified
at load). Measured with accelopt.latency.side_by_side (5 rounds x 50 runs) on tests/models.py conv_stack(channels=64,
size=56), ORT 1.32, one thread, batch 1, median: dense 11.30 ms, 2:4 11.30 ms, 90 % unstructured 11.44 ms (11.30 ms
stored as sparse_initializer); a second run gave 10.65 / 10.14 / 10.06 (10.00) ms: noise, in a changing order.
2:4 speed is a TensorRT feature on Ampere or newer GPUs (trtexec --sparsity=enable; NVIDIA quotes 1.1-1.5x end to
end, mostly at large batch; not measured here).

Accuracy on the digits CNN (450 held-out digits, 98.89 % dense; conv1 has 1 input channel and stays dense), plain
masks -> with the refit on its 128 calibration digits: 2:4 84.7 % -> 98.9 %, unstructured 50 % 93.6 % -> 99.1 %,
75 % 34.9 % -> 98.0 %, 90 % 10.2 % -> 75.3 %.

Size: `storage: sparse_initializer` moves the sparsified weights to ONNX COO sparse initializers (flat int64
indices), which ORT loads; a tensor moves only where COO is smaller, below about 1/3 density for float32, so 2:4
(50 %) never does. The conv stack: 602 kB dense at any sparsity, 454 kB at 75 %, 187 kB at 90 % (gzip of the dense
file: 557 kB unsparsified, 340 kB at 2:4, 113 kB at 90 %). No other step can read sparse initializers (onnx_ir drops
them): use it on the last step only. Run sparsify before `quantize` (weights behind DequantizeLinear are not
constants to it) and after `prune`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper
from onnx_ir.passes.common import RemoveUnusedNodesPass
from pydantic import Field, model_validator

from accelopt.data import Dataset
from accelopt.errors import BadInputError, RecipeError
from accelopt.optimizers.base import Pass, PassConfig, PassContext, register
from accelopt.optimizers.pruning.activations import MIN_SAMPLES, calibration_for
from accelopt.optimizers.pruning.groups import const, node_name
from accelopt.optimizers.pruning.masks import mask_2of4, mask_magnitude
from accelopt.optimizers.pruning.refit import layer_weights, refit_layers, write_layer
from accelopt.optimizers.pruning.rewrite import Writer

_INDEX_BYTES = 8  # ONNX sparse tensors index with int64
SPEED_NOTE = ("CPU runtimes here (ONNX Runtime CPU EP) gain no speed from sparsity (measured: dense vs 2:4 vs 90% "
              "unstructured within noise); 2:4 speed is a TensorRT feature on Ampere or newer GPUs "
              "(trtexec --sparsity=enable)")


class SparsifyConfig(PassConfig):
    pattern: Literal["2:4", "unstructured"] = Field(
        "2:4", description='"2:4" (NVIDIA semi-structured, 50 %, along the input channels; quote it in YAML) or '
                           '"unstructured" (magnitude, `ratio` per layer)')
    ratio: float | None = Field(None, gt=0, lt=1, description="unstructured only: share of each layer's weights "
                                                              "set to zero (smallest |w| first)")
    refit: bool = Field(True, description="masked least-squares refit of each sparsified layer on calibration data, "
                                          "in graph order (training-free accuracy recovery)")
    ridge: float = Field(1e-3, ge=0, description="refit ridge, relative to the mean input energy of each layer")
    samples: int = Field(128, ge=MIN_SAMPLES, description="use at most this many calibration samples")
    op_types: list[Literal["Conv", "Gemm", "MatMul"]] = Field(
        ["Conv", "Gemm", "MatMul"], min_length=1, description="layer types to sparsify (constant weights only)")
    exclude_nodes: list[str] = Field(default_factory=list, description="node names that stay dense")
    min_channels: int = Field(16, ge=1, description="layers with fewer input channels (the reduction dimension) stay "
                                                    "dense: too small to matter")
    storage: Literal["dense", "sparse_initializer"] = Field(
        "dense", description="sparse_initializer: store sparsified weights as ONNX COO sparse initializers where "
                             "smaller (below ~1/3 density); ORT loads them, other steps cannot: last step only")

    @model_validator(mode="after")
    def _ratio_matches_pattern(self) -> SparsifyConfig:
        if self.pattern == "unstructured" and self.ratio is None:
            raise ValueError("pattern unstructured needs a ratio in (0, 1)")
        if self.pattern == "2:4" and self.ratio is not None:
            raise ValueError("ratio is for pattern unstructured; 2:4 always zeroes 2 of every 4 weights")
        return self


def _skip_reason(node: ir.Node, config: SparsifyConfig) -> str | None:
    """Why a Conv/Gemm/MatMul stays dense, or None when it can be sparsified."""
    if node.name in config.exclude_nodes:
        return "exclude_nodes"
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "weight computed at run time"
    group = node.attributes.get_int("group", 1)
    if node.op_type == "Conv" and group != 1:
        return "depthwise conv" if w.shape[1] == 1 and group == w.shape[0] else f"grouped conv (group {group})"
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return "Gemm with transA=1"
    if node.op_type == "MatMul" and w.ndim != 2:
        return f"{w.ndim}-D MatMul weight"
    channels = w.shape[1] if node.op_type == "Conv" else layer_weights(node)[0].shape[1]
    if config.pattern == "2:4" and channels % 4:
        return f"{channels} input channel(s), not a multiple of 4"
    if channels < config.min_channels:
        return f"{channels} input channel(s) < min_channels {config.min_channels}"
    return None


def _select(graph: ir.Graph, config: SparsifyConfig) -> tuple[list[ir.Node], list[tuple[ir.Node, str]]]:
    """(layers to sparsify, (layer, reason) left dense), in graph order."""
    names = {n.name for n in graph}
    if unknown := [n for n in config.exclude_nodes if n not in names]:
        raise RecipeError(f"sparsify: exclude_nodes names unknown node(s) {unknown}; node names look like "
                          f"{sorted(n for n in names if n)[:5]}")
    layers, skipped = [], []
    for node in graph:
        if node.op_type in config.op_types and node.domain in ("", "ai.onnx"):
            reason = _skip_reason(node, config)
            if reason:
                skipped.append((node, reason))
            else:
                layers.append(node)
    return layers, skipped


def _calibration(config: SparsifyConfig, ctx: PassContext) -> Dataset | None:
    return calibration_for("sparsify", ["refit"] if config.refit else [], ctx, config.samples,
                           "set refit: false (plain masks lose far more accuracy)")


def _mask(node: ir.Node, w: np.ndarray, config: SparsifyConfig) -> np.ndarray:
    if config.pattern == "unstructured":
        return mask_magnitude(w, config.ratio)
    return mask_2of4(w, math.prod(const(node.inputs[1]).shape[2:]) if node.op_type == "Conv" else 1)


def _zeros(nodes: list[ir.Node]) -> tuple[int, int]:
    """(zero weights, all weights) of the layers."""
    weights = [const(n.inputs[1]) for n in nodes]
    return sum(int((w == 0).sum()) for w in weights), sum(w.size for w in weights)


def _layer_record(node: ir.Node, pattern: str) -> dict:
    zeros, size = _zeros([node])
    return {"layer": node_name(node), "op": node.op_type, "weight_shape": list(const(node.inputs[1]).shape),
            "pattern": pattern, "sparsity": round(zeros / size, 4)}


def _report(layers: list[ir.Node], skipped: list[tuple[ir.Node, str]], records: list[dict], config: SparsifyConfig,
            ctx: PassContext) -> None:
    """Per layer pattern and achieved sparsity (refit zeros included), skipped layers, totals, and the speed note."""
    pattern = "2:4" if config.pattern == "2:4" else f"unstructured {config.ratio * 100:g}%"
    ctx.decide("layers", [_layer_record(n, pattern) for n in layers])
    ctx.decide("skipped", [{"layer": node_name(n), "op": n.op_type, "reason": r} for n, r in skipped])
    ctx.decide("refit", records)
    dense = [n for n, _ in skipped if len(n.inputs) > 1 and const(n.inputs[1]) is not None]
    (zeros, size), (all_zeros, all_size) = _zeros(layers), _zeros(layers + dense)
    ctx.decide("weight_sparsity", {"sparsified_layers": round(zeros / size, 4),
                                   "all_layers": round(all_zeros / all_size, 4)})
    ctx.decide("speed", SPEED_NOTE)
    ctx.log(f"sparsify: {len(layers)} layer(s) {pattern}, {len(skipped)} left dense; weight sparsity "
            f"{zeros / size:.1%} in the sparsified layers, {all_zeros / all_size:.1%} over all layers")
    ctx.log(f"sparsify: {SPEED_NOTE}")


def _store_sparse(model: onnx.ModelProto, names: set[str]) -> dict:
    """Move the named initializers of `model` (in place) to COO sparse initializers where that is smaller."""
    before = model.ByteSize()
    dense, moved = [], []
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t) if t.name in names else None
        nonzero = np.flatnonzero(w) if w is not None else None
        if w is None or nonzero.size * (w.itemsize + _INDEX_BYTES) >= w.nbytes:
            dense.append(t)
            continue
        moved.append(helper.make_sparse_tensor(numpy_helper.from_array(w.ravel()[nonzero], t.name),
                                               numpy_helper.from_array(nonzero.astype(np.int64), f"{t.name}_indices"),
                                               list(w.shape)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(dense)
    model.graph.sparse_initializer.extend(moved)
    return {"format": "sparse_initializer", "tensors_sparse": len(moved), "tensors_dense": len(names) - len(moved),
            "bytes_dense": before, "bytes": model.ByteSize()}


def _warn_thin(records: list[dict], ctx: PassContext) -> None:
    for r in records:
        if r["rows"] <= r["fan_in"]:
            ctx.log(f"WARNING: sparsify: refit of {r['layer']} solved up to {r['fan_in']} weights per output from only "
                    f"{r['rows']} rows (calibration samples x positions), so the ridge term dominates; give more "
                    "calibration samples (samples, data.calibration)")


@register
class Sparsify(Pass):
    name = "sparsify"
    summary = ("2:4 semi-structured (TensorRT sparse tensor cores) or unstructured magnitude sparsity, with a masked "
               "least-squares refit on calibration data; no CPU speedup, optional sparse storage for size.")
    Config = SparsifyConfig
    uses = frozenset({"calibration"})

    def only_last(self, config: SparsifyConfig) -> str | None:
        if config.storage == "sparse_initializer":
            return "with storage sparse_initializer no later step can read the weights (onnx-ir drops them)"
        return None

    def apply(self, model: onnx.ModelProto, config: SparsifyConfig, ctx: PassContext) -> onnx.ModelProto:
        if len(model.graph.sparse_initializer):
            raise BadInputError("sparsify: the model stores weights as sparse_initializer, which onnx_ir drops; "
                                "sparsify the dense model and keep storage: sparse_initializer for the last step")
        m = ir.from_proto(model)
        layers, skipped = _select(m.graph, config)
        if not layers:
            reasons = "; ".join(f"{node_name(n)}: {r}" for n, r in skipped[:4]) or f"no {'/'.join(config.op_types)}"
            raise BadInputError(f"sparsify: no layer to sparsify ({reasons}{'; ...' if len(skipped) > 4 else ''})")
        data = _calibration(config, ctx)
        writer = Writer(m.graph)
        masks = {}
        for node in layers:
            w, b = layer_weights(node)
            masks[node] = _mask(node, w, config)
            write_layer(node, w * masks[node], b, writer, "sparse")
        records = [] if data is None else refit_layers(m, model, [(n, None) for n in layers], data, config.ridge,
                                                       writer, masks)
        _warn_thin(records, ctx)
        _report(layers, skipped, records, config, ctx)
        names = {str(n.inputs[1].name) for n in layers}
        out = ir.to_proto(RemoveUnusedNodesPass()(m).model)
        if config.storage == "sparse_initializer":
            ctx.decide("storage", _store_sparse(out, names))
        return out
